//! Virtual-processor identifiers (SDM Vol. 3C, 29.1) and the choice of INVEPT/INVVPID types
//! (SDM 29.4.3.1), plus thin wrappers over vmx's instructions.

use core::num::NonZeroU16;

use vmx::instr::{InveptType, InvvpidType};
use vmx::EptVpidCap;

/// A VPID: 1..=0xFFFF (0 is the host's and never given to a guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vpid(NonZeroU16);

impl Vpid {
    /// The VPID `v`, unless 0.
    pub const fn new(v: u16) -> Option<Vpid> {
        match NonZeroU16::new(v) {
            Some(n) => Some(Vpid(n)),
            None => None,
        }
    }

    /// The value for the VMCS's VPID field.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

/// Hands out VPIDs 1..=0xFFFF, never 0, each at most once until freed. 8 KiB of bitmap.
pub struct VpidAllocator {
    used: [u64; 1024],
    next: u16,
    live: u32,
}

impl Default for VpidAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl VpidAllocator {
    /// All VPIDs free.
    pub const fn new() -> Self {
        let mut used = [0u64; 1024];
        used[0] = 1; // VPID 0 belongs to VMX root operation.
        VpidAllocator {
            used,
            next: 1,
            live: 0,
        }
    }

    fn is_used(&self, v: u16) -> bool {
        self.used[usize::from(v / 64)] & (1 << (v % 64)) != 0
    }

    /// A free VPID, or `None` when all 65535 are in use.
    pub fn allocate(&mut self) -> Option<Vpid> {
        if self.live >= 0xFFFF {
            return None;
        }
        let mut v = self.next;
        for _ in 0..0x1_0000u32 {
            if v != 0 && !self.is_used(v) {
                self.used[usize::from(v / 64)] |= 1 << (v % 64);
                self.live += 1;
                self.next = v.wrapping_add(1);
                return Vpid::new(v);
            }
            v = v.wrapping_add(1);
        }
        None
    }

    /// Frees `vpid`; `false` if it was not allocated. Run INVVPID single-context for it before
    /// it is reused (the allocator hands out other VPIDs first).
    pub fn free(&mut self, vpid: Vpid) -> bool {
        let v = vpid.get();
        if !self.is_used(v) {
            return false;
        }
        self.used[usize::from(v / 64)] &= !(1 << (v % 64));
        self.live -= 1;
        true
    }

    /// VPIDs in use.
    pub fn live(&self) -> u32 {
        self.live
    }
}

/// The narrowest INVEPT type the processor supports for invalidating one EPTP:
/// single-context, else all-context; `None` without INVEPT.
pub fn invept_type(caps: EptVpidCap) -> Option<InveptType> {
    if !caps.contains(EptVpidCap::INVEPT) {
        None
    } else if caps.contains(EptVpidCap::INVEPT_SINGLE_CONTEXT) {
        Some(InveptType::SingleContext)
    } else if caps.contains(EptVpidCap::INVEPT_ALL_CONTEXT) {
        Some(InveptType::AllContext)
    } else {
        None
    }
}

/// The narrowest INVVPID type for invalidating one VPID: single-context, else all-context;
/// `None` without INVVPID.
pub fn invvpid_type(caps: EptVpidCap) -> Option<InvvpidType> {
    if !caps.contains(EptVpidCap::INVVPID) {
        None
    } else if caps.contains(EptVpidCap::INVVPID_SINGLE_CONTEXT) {
        Some(InvvpidType::SingleContext)
    } else if caps.contains(EptVpidCap::INVVPID_ALL_CONTEXT) {
        Some(InvvpidType::AllContext)
    } else {
        None
    }
}

/// Invalidates the translations derived from `eptp` with the type [`invept_type`] picked.
///
/// # Safety
/// - In VMX root operation at CPL 0 (else #UD/#GP); `kind` was chosen by [`invept_type`] from
///   this processor's capabilities, so INVEPT exists.
#[cfg(target_arch = "x86_64")]
pub unsafe fn invept(kind: InveptType, eptp: crate::eptp::Eptp) -> Result<(), vmx::VmFail> {
    // SAFETY: forwarded preconditions: VMX root operation at CPL 0 and INVEPT supported.
    unsafe { vmx::instr::invept(kind, eptp.0) }
}

/// Invalidates the linear translations tagged with `vpid` with the type [`invvpid_type`] picked.
///
/// # Safety
/// - In VMX root operation at CPL 0 (else #UD/#GP); `kind` was chosen by [`invvpid_type`] from
///   this processor's capabilities, so INVVPID exists.
#[cfg(target_arch = "x86_64")]
pub unsafe fn invvpid(kind: InvvpidType, vpid: Vpid) -> Result<(), vmx::VmFail> {
    // SAFETY: forwarded preconditions: VMX root operation at CPL 0 and INVVPID supported.
    unsafe { vmx::instr::invvpid(kind, vpid.get(), 0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn never_zero_and_exhausts_at_65535() {
        let mut a = VpidAllocator::new();
        let mut seen = HashSet::new();
        while let Some(v) = a.allocate() {
            assert_ne!(v.get(), 0);
            assert!(seen.insert(v.get()), "duplicate {v:?}");
        }
        assert_eq!(seen.len(), 0xFFFF);
        assert_eq!(a.live(), 0xFFFF);
        let v = Vpid::new(1234).unwrap();
        assert!(a.free(v));
        assert!(!a.free(v), "double free is refused");
        assert_eq!(a.allocate(), Some(v));
        assert_eq!(a.allocate(), None);
        assert_eq!(Vpid::new(0), None);
    }

    #[test]
    fn freed_vpids_are_reused_last() {
        let mut a = VpidAllocator::new();
        let first = a.allocate().unwrap();
        assert_eq!(first.get(), 1);
        assert!(a.free(first));
        assert_eq!(
            a.allocate().unwrap().get(),
            2,
            "round robin, not immediate reuse"
        );
    }

    #[test]
    fn invalidation_types_follow_caps() {
        let c =
            EptVpidCap::INVEPT | EptVpidCap::INVEPT_SINGLE_CONTEXT | EptVpidCap::INVEPT_ALL_CONTEXT;
        assert_eq!(invept_type(c), Some(InveptType::SingleContext));
        assert_eq!(
            invept_type(EptVpidCap::INVEPT | EptVpidCap::INVEPT_ALL_CONTEXT),
            Some(InveptType::AllContext)
        );
        assert_eq!(invept_type(EptVpidCap::INVEPT_SINGLE_CONTEXT), None);
        assert_eq!(
            invvpid_type(EptVpidCap::INVVPID | EptVpidCap::INVVPID_ALL_CONTEXT),
            Some(InvvpidType::AllContext)
        );
        assert_eq!(
            invvpid_type(
                EptVpidCap::INVVPID
                    | EptVpidCap::INVVPID_SINGLE_CONTEXT
                    | EptVpidCap::INVVPID_ALL_CONTEXT
            ),
            Some(InvvpidType::SingleContext)
        );
        assert_eq!(invvpid_type(EptVpidCap::empty()), None);
    }
}
