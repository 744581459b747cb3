//! The EPT pointer (SDM Vol. 3C, 25.6.11 "Extended-Page-Table Pointer (EPTP)", table 25-9).

use vmx::{EptVpidCap, MemoryType};

use crate::addr::HostPhysAddr;

/// Bit 6: accessed and dirty flags are enabled for this EPT.
pub const EPTP_AD_ENABLE: u64 = 1 << 6;

/// An EPTP value for the VMCS's EPT-pointer field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Eptp(pub u64);

/// Why no EPTP could be built for this processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptpError {
    /// The processor does not support a page-walk length of 4 (IA32_VMX_EPT_VPID_CAP bit 6).
    NoFourLevelWalk,
    /// Neither WB nor UC is allowed for the paging structures (bits 14 and 8).
    NoMemoryType,
    /// The PML4 address is not 4 KiB aligned.
    MisalignedRoot(HostPhysAddr),
}

impl Eptp {
    /// Builds the EPTP for a 4-level hierarchy rooted at `pml4`: memory type WB if the processor
    /// allows it, else UC; page-walk length 4; A/D flags if `want_accessed_dirty` and supported.
    pub fn new(
        pml4: HostPhysAddr,
        caps: EptVpidCap,
        want_accessed_dirty: bool,
    ) -> Result<Eptp, EptpError> {
        if !caps.contains(EptVpidCap::PAGE_WALK_4) {
            return Err(EptpError::NoFourLevelWalk);
        }
        if !pml4.is_aligned(4096) {
            return Err(EptpError::MisalignedRoot(pml4));
        }
        let mt = if caps.contains(EptVpidCap::MEMORY_TYPE_WB) {
            MemoryType::WriteBack
        } else if caps.contains(EptVpidCap::MEMORY_TYPE_UC) {
            MemoryType::Uncacheable
        } else {
            return Err(EptpError::NoMemoryType);
        };
        let mut v = pml4.as_u64() | mt as u64 | (3 << 3);
        if want_accessed_dirty && caps.contains(EptVpidCap::ACCESSED_DIRTY) {
            v |= EPTP_AD_ENABLE;
        }
        Ok(Eptp(v))
    }

    /// The PML4 address (bits 51:12).
    pub fn pml4(self) -> u64 {
        self.0 & crate::entry::ADDR_MASK
    }

    /// The paging-structure memory type (bits 2:0).
    pub fn memory_type(self) -> Result<MemoryType, u8> {
        MemoryType::try_from((self.0 & 7) as u8)
    }

    /// The page-walk length (bits 5:3 plus one).
    pub fn walk_length(self) -> u8 {
        ((self.0 >> 3) & 7) as u8 + 1
    }

    /// A/D flags enabled (bit 6).
    pub fn accessed_dirty(self) -> bool {
        self.0 & EPTP_AD_ENABLE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_from_caps() {
        let root = HostPhysAddr::new(0x12_3000).unwrap();
        let all = EptVpidCap::PAGE_WALK_4
            | EptVpidCap::MEMORY_TYPE_WB
            | EptVpidCap::MEMORY_TYPE_UC
            | EptVpidCap::ACCESSED_DIRTY;
        let e = Eptp::new(root, all, true).unwrap();
        assert_eq!(e.0, 0x12_3000 | 6 | (3 << 3) | (1 << 6));
        assert_eq!(
            (
                e.walk_length(),
                e.memory_type(),
                e.accessed_dirty(),
                e.pml4()
            ),
            (4, Ok(MemoryType::WriteBack), true, 0x12_3000)
        );
        assert!(!Eptp::new(root, all, false).unwrap().accessed_dirty());
        // A/D only if supported.
        let no_ad = all - EptVpidCap::ACCESSED_DIRTY;
        assert!(!Eptp::new(root, no_ad, true).unwrap().accessed_dirty());
        // UC fallback.
        let uc = EptVpidCap::PAGE_WALK_4 | EptVpidCap::MEMORY_TYPE_UC;
        assert_eq!(
            Eptp::new(root, uc, false).unwrap().memory_type(),
            Ok(MemoryType::Uncacheable)
        );
        assert_eq!(
            Eptp::new(root, EptVpidCap::PAGE_WALK_4, false),
            Err(EptpError::NoMemoryType)
        );
        assert_eq!(
            Eptp::new(root, EptVpidCap::MEMORY_TYPE_WB, false),
            Err(EptpError::NoFourLevelWalk)
        );
        let bad = HostPhysAddr::new(0x12_3008).unwrap();
        assert_eq!(
            Eptp::new(bad, all, false),
            Err(EptpError::MisalignedRoot(bad))
        );
    }
}
