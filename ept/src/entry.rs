//! EPT paging-structure entries (SDM Vol. 3C, 29.3.2, tables 29-1 to 29-6).

use bitflags::bitflags;
use vmx::MemoryType;

use crate::addr::HostPhysAddr;

bitflags! {
    /// Access permissions of an EPT mapping (bits 2:0 of every entry).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EptPerms: u64 {
        /// Reads allowed (bit 0).
        const READ = 1 << 0;
        /// Writes allowed (bit 1).
        const WRITE = 1 << 1;
        /// Instruction fetches allowed (bit 2; supervisor-mode fetches with mode-based control).
        const EXECUTE = 1 << 2;
        /// Read and write.
        const RW = Self::READ.bits() | Self::WRITE.bits();
        /// Read and execute.
        const RX = Self::READ.bits() | Self::EXECUTE.bits();
        /// Read, write and execute.
        const RWX = Self::READ.bits() | Self::WRITE.bits() | Self::EXECUTE.bits();
    }
}

impl EptPerms {
    /// True if the processor accepts these permissions in a present entry: writable without
    /// readable is an EPT misconfiguration (SDM 29.3.3.1), and execute-only needs
    /// IA32_VMX_EPT_VPID_CAP bit 0.
    pub const fn is_valid(self, execute_only_supported: bool) -> bool {
        let r = self.contains(EptPerms::READ);
        let w = self.contains(EptPerms::WRITE);
        let x = self.contains(EptPerms::EXECUTE);
        let write_needs_read = !w || r;
        let exec_only_ok = r || !x || execute_only_supported;
        !self.is_empty() && write_needs_read && exec_only_ok
    }
}

/// Bit 6 of a leaf: ignore the guest PAT memory type.
pub const IGNORE_PAT: u64 = 1 << 6;
/// Bit 7: this PDPTE/PDE maps a 1 GiB/2 MiB page.
pub const LARGE_PAGE: u64 = 1 << 7;
/// Bit 8: accessed flag (with A/D enabled in the EPTP).
pub const ACCESSED: u64 = 1 << 8;
/// Bit 9: dirty flag (leaves only).
pub const DIRTY: u64 = 1 << 9;
/// Bits 51:12: the physical address field.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// One 64-bit EPT entry of any level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct EptEntry(pub u64);

impl EptEntry {
    /// The not-present entry.
    pub const EMPTY: EptEntry = EptEntry(0);

    /// An entry pointing to the next-level table at `table` with full permissions (the leaf
    /// decides the effective ones).
    pub const fn table(table: HostPhysAddr) -> EptEntry {
        EptEntry((table.as_u64() & ADDR_MASK) | EptPerms::RWX.bits())
    }

    /// A leaf mapping `frame` with `perms` and `memory_type`; `large` for a 2 MiB PDE or 1 GiB
    /// PDPTE (bit 7). The caller aligns `frame` to the page size.
    pub const fn leaf(
        frame: HostPhysAddr,
        perms: EptPerms,
        memory_type: MemoryType,
        ignore_pat: bool,
        large: bool,
    ) -> EptEntry {
        let mut v = (frame.as_u64() & ADDR_MASK) | perms.bits() | ((memory_type as u64) << 3);
        if ignore_pat {
            v |= IGNORE_PAT;
        }
        if large {
            v |= LARGE_PAGE;
        }
        EptEntry(v)
    }

    /// Present: any of R/W/X set (SDM 29.3.2).
    pub const fn is_present(self) -> bool {
        self.0 & 0b111 != 0
    }

    /// The permission bits.
    pub const fn perms(self) -> EptPerms {
        EptPerms::from_bits_truncate(self.0 & 0b111)
    }

    /// Bit 7 (meaningful in PDPTEs and PDEs).
    pub const fn is_large(self) -> bool {
        self.0 & LARGE_PAGE != 0
    }

    /// The physical address field.
    pub fn addr(self) -> HostPhysAddr {
        // Bits 51:12 are always below HPA_LIMIT, so this cannot fail; fall back to 0 regardless.
        HostPhysAddr::new(self.0 & ADDR_MASK).unwrap_or(HostPhysAddr::ZERO)
    }

    /// The leaf memory type (bits 5:3); `Err` with the raw value for a reserved encoding.
    pub fn memory_type(self) -> Result<MemoryType, u8> {
        MemoryType::try_from(((self.0 >> 3) & 0x7) as u8)
    }

    /// Bit 6 of a leaf.
    pub const fn ignore_pat(self) -> bool {
        self.0 & IGNORE_PAT != 0
    }

    /// The accessed flag (bit 8).
    pub const fn accessed(self) -> bool {
        self.0 & ACCESSED != 0
    }

    /// The dirty flag (bit 9, leaves only).
    pub const fn dirty(self) -> bool {
        self.0 & DIRTY != 0
    }

    /// The same entry with other permissions.
    pub const fn with_perms(self, perms: EptPerms) -> EptEntry {
        EptEntry((self.0 & !0b111) | perms.bits())
    }
}

impl HostPhysAddr {
    /// Host-physical address 0.
    pub const ZERO: HostPhysAddr = match HostPhysAddr::new(0) {
        Ok(a) => a,
        Err(_) => panic!("0 is a valid address"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_layout() {
        let f = HostPhysAddr::new(0x1234_5000).unwrap();
        let e = EptEntry::leaf(f, EptPerms::RW, MemoryType::WriteBack, true, false);
        assert_eq!(e.0, 0x1234_5000 | 0b011 | (6 << 3) | (1 << 6));
        assert!(e.is_present() && !e.is_large() && e.ignore_pat());
        assert_eq!(e.addr(), f);
        assert_eq!(e.memory_type(), Ok(MemoryType::WriteBack));
        assert_eq!(e.perms(), EptPerms::RW);
        let big = EptEntry::leaf(
            HostPhysAddr::new(0x4000_0000).unwrap(),
            EptPerms::READ,
            MemoryType::Uncacheable,
            false,
            true,
        );
        assert_eq!(big.0, 0x4000_0000 | 1 | (1 << 7));
        assert_eq!(
            big.with_perms(EptPerms::RX).0,
            0x4000_0000 | 0b101 | (1 << 7)
        );
        assert!(!EptEntry::EMPTY.is_present());
        assert!(EptEntry(ACCESSED | DIRTY | 1).accessed() && EptEntry(DIRTY | 1).dirty());
        assert_eq!(EptEntry(2 << 3).memory_type(), Err(2));
    }

    #[test]
    fn table_entry() {
        let t = EptEntry::table(HostPhysAddr::new(0xabc000).unwrap());
        assert_eq!(t.0, 0xabc000 | 7);
        assert!(!t.is_large());
    }

    #[test]
    fn permission_validity() {
        assert!(EptPerms::READ.is_valid(false));
        assert!(EptPerms::RW.is_valid(false));
        assert!(EptPerms::RWX.is_valid(false));
        assert!(EptPerms::RX.is_valid(false));
        assert!(!EptPerms::empty().is_valid(true));
        assert!(
            !EptPerms::WRITE.is_valid(true),
            "write-only is a misconfiguration"
        );
        assert!(!(EptPerms::WRITE | EptPerms::EXECUTE).is_valid(true));
        assert!(!EptPerms::EXECUTE.is_valid(false));
        assert!(EptPerms::EXECUTE.is_valid(true));
    }
}
