//! The remapping unit's registers (VT-d spec chapter 11): offsets, and typed values for the ones
//! the hypervisor reads or writes. Register *accesses* are the hypervisor's (it maps the unit
//! uncached); this module only encodes and decodes.

use bitflags::bitflags;

/// Register offsets from the unit's base (11.4).
pub mod offset {
    /// Version (32-bit, RO).
    pub const VER: usize = 0x00;
    /// Capability (64-bit, RO).
    pub const CAP: usize = 0x08;
    /// Extended capability (64-bit, RO).
    pub const ECAP: usize = 0x10;
    /// Global command (32-bit, WO).
    pub const GCMD: usize = 0x18;
    /// Global status (32-bit, RO).
    pub const GSTS: usize = 0x1c;
    /// Root table address (64-bit).
    pub const RTADDR: usize = 0x20;
    /// Context command (64-bit).
    pub const CCMD: usize = 0x28;
    /// Fault status (32-bit, RW1C).
    pub const FSTS: usize = 0x34;
    /// Fault event control (32-bit).
    pub const FECTL: usize = 0x38;
    /// Protected memory enable (32-bit).
    pub const PMEN: usize = 0x64;
    /// Invalidation queue head, tail, address (64-bit each) and completion status (32-bit).
    pub const IQH: usize = 0x80;
    pub const IQT: usize = 0x88;
    pub const IQA: usize = 0x90;
    pub const ICS: usize = 0x9c;
}

/// The version register: major.minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl Version {
    pub const fn from_bits(v: u32) -> Self {
        Self { major: ((v >> 4) & 0xf) as u8, minor: (v & 0xf) as u8 }
    }
}

/// The capability register (11.4.2), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability(pub u64);

impl Capability {
    /// Number of domain ids supported: 2^(4 + 2*ND).
    pub const fn domains(self) -> u32 {
        let nd = (self.0 & 7) as u32;
        if nd > 6 { 0 } else { 1 << (4 + 2 * nd) }
    }
    /// Required write-buffer flushing.
    pub const fn rwbf(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Caching mode: not-present entries may be cached (invalidate after making present).
    pub const fn caching_mode(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Supported adjusted guest address widths (SAGAW, bits 12:8): bit 1 = 39-bit (3-level),
    /// bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level).
    pub const fn sagaw(self) -> u8 {
        ((self.0 >> 8) & 0x1f) as u8
    }
    /// Maximum guest address width in bits (MGAW + 1).
    pub const fn mgaw(self) -> u8 {
        (((self.0 >> 16) & 0x3f) + 1) as u8
    }
    /// Offset of the first fault-recording register from the unit's base (FRO * 16).
    pub const fn fault_recording_offset(self) -> usize {
        (((self.0 >> 24) & 0x3ff) * 16) as usize
    }
    /// Second-level large pages: bit 0 = 2 MiB, bit 1 = 1 GiB.
    pub const fn sllps(self) -> u8 {
        ((self.0 >> 34) & 0xf) as u8
    }
    /// Number of fault-recording registers (NFR + 1).
    pub const fn fault_records(self) -> usize {
        (((self.0 >> 40) & 0xff) + 1) as usize
    }
}

/// The extended capability register (11.4.3), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtCapability(pub u64);

impl ExtCapability {
    /// Page-walk coherency: hardware snoops the processor caches when reading tables.
    pub const fn coherent(self) -> bool {
        self.0 & 1 != 0
    }
    /// Queued invalidation.
    pub const fn queued_invalidation(self) -> bool {
        self.0 & 2 != 0
    }
    /// Device-TLBs.
    pub const fn device_tlb(self) -> bool {
        self.0 & 4 != 0
    }
    pub const fn interrupt_remapping(self) -> bool {
        self.0 & 8 != 0
    }
    /// Pass-through translation type in context entries.
    pub const fn pass_through(self) -> bool {
        self.0 & (1 << 6) != 0
    }
    /// Offset of the IOTLB registers from the unit's base (IRO * 16); the invalidate register
    /// is 8 bytes above it.
    pub const fn iotlb_offset(self) -> usize {
        (((self.0 >> 8) & 0x3ff) * 16) as usize
    }
}

bitflags! {
    /// Global command (write) and status (read) bits (11.4.4, 11.4.5): the same positions.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Global: u32 {
        /// Translation enable / status.
        const TE = 1 << 31;
        /// Set root table pointer (one-shot) / root table pointer status.
        const SRTP = 1 << 30;
        /// Set fault log (one-shot).
        const SFL = 1 << 29;
        /// Advanced fault logging.
        const EAFL = 1 << 28;
        /// Write buffer flush (one-shot).
        const WBF = 1 << 27;
        /// Queued invalidation enable.
        const QIE = 1 << 26;
        /// Interrupt remapping enable.
        const IRE = 1 << 25;
        /// Set interrupt remap table pointer (one-shot).
        const SIRTP = 1 << 24;
        /// Compatibility format interrupts.
        const CFI = 1 << 23;
    }
}

impl Global {
    /// The bits that are one-shot commands: they must not be echoed back from the status when
    /// issuing another command (11.4.4: software reads GSTS, clears these, sets one command).
    pub const ONE_SHOT: Self = Self::SRTP.union(Self::SFL).union(Self::WBF).union(Self::SIRTP);

    /// The value to write to GCMD to issue `cmd` while keeping the persistent state in `status`.
    pub fn command(status: Self, cmd: Self) -> Self {
        status.difference(Self::ONE_SHOT).union(cmd)
    }
}

bitflags! {
    /// Fault status (11.4.9.1); the low bits are write-1-to-clear.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FaultStatus: u32 {
        /// Primary fault overflow.
        const PFO = 1 << 0;
        /// Primary pending fault: at least one fault-recording register has F set.
        const PPF = 1 << 1;
        const AFO = 1 << 2;
        const APF = 1 << 3;
        /// Invalidation queue error.
        const IQE = 1 << 4;
        /// Invalidation completion error.
        const ICE = 1 << 5;
        /// Invalidation time-out error.
        const ITE = 1 << 6;
    }
}

impl FaultStatus {
    /// The fault record index (FRI) hardware will use next / used first.
    pub const fn fault_record_index(raw: u32) -> usize {
        ((raw >> 8) & 0xff) as usize
    }
}

bitflags! {
    /// Fault event control (11.4.9.2).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FaultEventControl: u32 {
        /// Interrupt mask: the hypervisor polls, so it keeps this set.
        const IM = 1 << 31;
        const IP = 1 << 30;
    }
}

/// Invalidation granularity for the register-based commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Global,
    Domain(u16),
}

/// The context-command register value (11.4.4.4): invalidate the context cache.
pub const fn context_invalidate(g: Granularity) -> u64 {
    const ICC: u64 = 1 << 63;
    match g {
        Granularity::Global => ICC | (1 << 61),
        Granularity::Domain(did) => ICC | (2 << 61) | did as u64,
    }
}

/// The IOTLB-invalidate register value (11.4.8.1), draining reads and writes first.
pub const fn iotlb_invalidate(g: Granularity) -> u64 {
    const IVT: u64 = 1 << 63;
    const DRAIN: u64 = (1 << 49) | (1 << 48);
    match g {
        Granularity::Global => IVT | DRAIN | (1 << 60),
        Granularity::Domain(did) => IVT | DRAIN | (2 << 60) | ((did as u64) << 32),
    }
}

/// Whether a context-command or IOTLB register value read back shows the invalidation done
/// (ICC / IVT cleared by hardware).
pub const fn invalidation_done(v: u64) -> bool {
    v & (1 << 63) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_qemus_capabilities() {
        // ND=2, SAGAW=39-bit only, MGAW=39, FRO=0x22 (records at 0x220), NFR=0: the shape of
        // QEMU 7.2's intel-iommu with aw-bits=39.
        let cap = Capability(0x2226_0202);
        assert_eq!(cap.domains(), 256);
        assert_eq!(cap.sagaw(), 0b00010);
        assert_eq!(cap.mgaw(), 39);
        assert_eq!(cap.fault_recording_offset(), 0x220);
        assert_eq!(cap.fault_records(), 1);
        assert!(!cap.caching_mode());
        let ecap = ExtCapability(0xf0_0f5e);
        assert_eq!(ecap.iotlb_offset(), 0xf0);
        assert!(ecap.queued_invalidation() && !ecap.coherent() && ecap.pass_through());
    }

    #[test]
    fn global_commands_keep_state_but_not_one_shots() {
        let status = Global::TE | Global::QIE | Global::SRTP | Global::WBF;
        assert_eq!(Global::command(status, Global::SFL), Global::TE | Global::QIE | Global::SFL);
        assert_eq!(Global::command(Global::SRTP, Global::TE), Global::TE);
        assert_eq!(Version::from_bits(0x10), Version { major: 1, minor: 0 });
    }

    #[test]
    fn invalidation_encodings() {
        assert_eq!(context_invalidate(Granularity::Global), 0xa000_0000_0000_0000);
        assert_eq!(context_invalidate(Granularity::Domain(5)), 0xc000_0000_0000_0005);
        assert_eq!(iotlb_invalidate(Granularity::Global), 0x9003_0000_0000_0000);
        assert_eq!(iotlb_invalidate(Granularity::Domain(3)), 0xa003_0003_0000_0000);
        assert!(!invalidation_done(iotlb_invalidate(Granularity::Global)));
        assert!(invalidation_done(0x1000_0000_0000_0000));
        assert_eq!(FaultStatus::fault_record_index(0x0302), 3);
    }
}
