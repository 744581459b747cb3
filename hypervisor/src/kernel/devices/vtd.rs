//! The VT-d driver: one remapping unit, its root/context tables and one second-level domain per
//! owner, register-based invalidation, and fault reporting by polling the fault-recording
//! registers (fault interrupts stay masked).

use super::dma::TableFrames;
use super::mmio::{poll, Mmio};
use iommu::fault::FaultRecord;
use iommu::regs::{self, offset, Capability, ExtCapability, FaultEventControl, FaultStatus, Global, Granularity, Version};
use iommu::tables::{AddressWidth, ContextTables, Domain, DomainId, MapError, Perms};
use iommu::{HostPhys, Iova, SourceId};

/// Why the unit could not be brought up or changed.
// Fields are read through `Debug` when the error is logged.
#[allow(dead_code)]
#[derive(Debug)]
pub enum VtdError {
    Map(hypervisor::paging::MapError),
    /// Neither 39- nor 48-bit second-level tables are supported (SAGAW).
    NoUsableWidth { sagaw: u8 },
    /// The fault-recording or IOTLB registers lie outside the unit's register set.
    RegistersOutsideWindow { fault_records: usize, iotlb: usize, window: usize },
    /// The unit did not acknowledge a command in time.
    Timeout(&'static str),
    Tables(MapError),
    /// No remapping unit is under the hypervisor's control.
    NoUnit,
    /// An address the second-level tables cannot hold.
    BadAddress(u64),
}

impl From<MapError> for VtdError {
    fn from(e: MapError) -> Self {
        Self::Tables(e)
    }
}

const TIMEOUT_US: u64 = 100_000;

/// One remapping unit under the hypervisor's control.
pub struct Unit {
    regs: Mmio,
    pub cap: Capability,
    pub ecap: ExtCapability,
    pub width: AddressWidth,
    frames: TableFrames,
    context: ContextTables,
    next_domain: u16,
}

impl Unit {
    /// Maps the unit's registers and reads its capabilities; translation stays off.
    pub fn probe(base: u64, size_pages_log2: u8) -> Result<Self, VtdError> {
        let window = 4096usize << size_pages_log2.min(8);
        let regs = Mmio::map(base, window).map_err(VtdError::Map)?;
        let cap = Capability(regs.read64(offset::CAP));
        let ecap = ExtCapability(regs.read64(offset::ECAP));
        let width = AddressWidth::from_sagaw(cap.sagaw()).ok_or(VtdError::NoUsableWidth { sagaw: cap.sagaw() })?;
        let fr_end = cap.fault_recording_offset() + 16 * cap.fault_records();
        if fr_end > window || ecap.iotlb_offset() + 16 > window {
            return Err(VtdError::RegistersOutsideWindow { fault_records: fr_end, iotlb: ecap.iotlb_offset(), window });
        }
        let mut frames = TableFrames::default();
        let context = ContextTables::new(&mut frames)?;
        Ok(Self { regs, cap, ecap, width, frames, context, next_domain: 1 })
    }

    pub fn version(&self) -> Version {
        Version::from_bits(self.regs.read32(offset::VER))
    }

    fn status(&self) -> Global {
        Global::from_bits_retain(self.regs.read32(offset::GSTS))
    }

    /// Issues a global command and waits until the status shows `done(status)`.
    fn command(&self, cmd: Global, what: &'static str, done: impl Fn(Global) -> bool) -> Result<(), VtdError> {
        self.regs.write32(offset::GCMD, Global::command(self.status(), cmd).bits());
        if poll(TIMEOUT_US, || done(self.status())) { Ok(()) } else { Err(VtdError::Timeout(what)) }
    }

    /// Writes back the CPU caches when the unit does not snoop them while walking tables.
    fn flush_tables(&self) {
        if !self.ecap.coherent() {
            // SAFETY: WBINVD writes back and invalidates caches; it has no memory-safety effect
            // and the hypervisor runs at CPL 0.
            unsafe { core::arch::asm!("wbinvd", options(nostack, preserves_flags)) };
        }
        if self.cap.rwbf() {
            let _ = self.command(Global::WBF, "write-buffer flush", |s| !s.contains(Global::WBF));
        }
    }

    /// Register-based invalidation of the context cache and the IOTLB.
    fn invalidate(&self, g: Granularity) -> Result<(), VtdError> {
        self.flush_tables();
        self.regs.write64(offset::CCMD, regs::context_invalidate(g));
        if !poll(TIMEOUT_US, || regs::invalidation_done(self.regs.read64(offset::CCMD))) {
            return Err(VtdError::Timeout("context-cache invalidation"));
        }
        let iotlb = self.ecap.iotlb_offset() + 8;
        self.regs.write64(iotlb, regs::iotlb_invalidate(g));
        if !poll(TIMEOUT_US, || regs::invalidation_done(self.regs.read64(iotlb))) {
            return Err(VtdError::Timeout("IOTLB invalidation"));
        }
        Ok(())
    }

    /// A new, empty domain: every address in it faults until mapped.
    pub fn new_domain(&mut self) -> Result<Domain, VtdError> {
        let id = DomainId::new(self.next_domain).ok_or(VtdError::Tables(MapError::OutOfFrames))?;
        self.next_domain += 1;
        Ok(Domain::new(&mut self.frames, id, self.width)?)
    }

    /// Maps `[phys, phys + len)` at the same I/O-virtual address in `domain`, then invalidates.
    pub fn map_identity(&mut self, domain: &mut Domain, phys: u64, len: u64, perms: Perms) -> Result<u64, VtdError> {
        let p = HostPhys::try_new(phys).map_err(|_| MapError::BeyondWidth { iova: phys, width: 52 })?;
        let v = Iova::try_new(phys).map_err(|_| MapError::BeyondWidth { iova: phys, width: 52 })?;
        domain.map_range(&mut self.frames, v, p, len, perms)?;
        self.invalidate(Granularity::Domain(domain.id().get()))?;
        Ok(phys)
    }

    /// Maps `[phys, phys + len)` at I/O-virtual `iova` in `domain`, then invalidates.
    pub fn map(&mut self, domain: &mut Domain, iova: Iova, phys: HostPhys, len: u64, perms: Perms) -> Result<(), VtdError> {
        domain.map_range(&mut self.frames, iova, phys, len, perms)?;
        self.invalidate(Granularity::Domain(domain.id().get()))
    }

    /// Takes `sid` out of `domain` (its DMA is blocked again) and frees the domain's tables.
    pub fn detach(&mut self, sid: SourceId, domain: Domain) -> Result<(), VtdError> {
        self.context.remove(&mut self.frames, sid)?;
        self.invalidate(Granularity::Global)?;
        domain.destroy(&mut self.frames);
        Ok(())
    }

    /// Removes the mappings of `[iova, iova + len)` and invalidates: the device loses access.
    pub fn unmap(&mut self, domain: &mut Domain, iova: u64, len: u64) -> Result<(), VtdError> {
        let mut at = iova;
        while at < iova + len {
            let v = Iova::try_new(at).map_err(|_| MapError::NotMapped { iova: at })?;
            let t = domain.unmap(&mut self.frames, v)?;
            at += t.size.bytes();
        }
        self.invalidate(Granularity::Domain(domain.id().get()))
    }

    /// Puts `sid` in `domain`.
    pub fn attach(&mut self, sid: SourceId, domain: &Domain) -> Result<(), VtdError> {
        self.context.assign(&mut self.frames, sid, domain)?;
        self.invalidate(Granularity::Global)
    }

    /// Installs the root table and turns translation on. Devices without a context entry get no
    /// DMA from here on.
    pub fn enable(&mut self) -> Result<(), VtdError> {
        // Faults are polled: keep the fault event interrupt masked.
        self.regs.write32(offset::FECTL, FaultEventControl::IM.bits());
        self.clear_faults();
        self.flush_tables();
        self.regs.write64(offset::RTADDR, self.context.root().as_u64());
        self.command(Global::SRTP, "set root table pointer", |s| s.contains(Global::SRTP))?;
        self.invalidate(Granularity::Global)?;
        self.command(Global::TE, "translation enable", |s| s.contains(Global::TE))
    }

    pub fn translation_enabled(&self) -> bool {
        self.status().contains(Global::TE)
    }

    /// Reads, logs and clears every pending fault record; returns them.
    pub fn poll_faults(&self) -> alloc::vec::Vec<FaultRecord> {
        let mut out = alloc::vec::Vec::new();
        let fsts = self.regs.read32(offset::FSTS);
        let st = FaultStatus::from_bits_truncate(fsts);
        if !st.intersects(FaultStatus::PPF | FaultStatus::PFO) {
            return out;
        }
        let n = self.cap.fault_records();
        let first = FaultStatus::fault_record_index(fsts) % n;
        for k in 0..n {
            let at = self.cap.fault_recording_offset() + 16 * ((first + k) % n);
            let (lo, hi) = (self.regs.read64(at), self.regs.read64(at + 8));
            if let Some(r) = FaultRecord::decode(lo, hi) {
                log::error!("iommu: DMA fault: {r}");
                out.push(r);
                self.regs.write64(at + 8, FaultRecord::CLEAR_HIGH);
            }
        }
        if st.contains(FaultStatus::PFO) {
            log::error!("iommu: fault records overflowed: some faults were not recorded");
        }
        self.regs.write32(offset::FSTS, (FaultStatus::PFO | FaultStatus::PPF).bits());
        out
    }

    fn clear_faults(&self) {
        let n = self.cap.fault_records();
        for i in 0..n {
            self.regs.write64(self.cap.fault_recording_offset() + 16 * i + 8, FaultRecord::CLEAR_HIGH);
        }
        self.regs.write32(offset::FSTS, 0x7f);
    }
}
