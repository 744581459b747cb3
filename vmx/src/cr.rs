//! CR0/CR4 fixed bits in VMX operation (SDM Vol. 3D, A.7 and A.8; Vol. 3C, 24.8 "Restrictions on
//! VMX Operation"): a bit set in FIXED0 must be 1, a bit clear in FIXED1 must be 0.

use crate::caps::VmxCapabilities;

/// CR0.PE (protection enable).
pub const CR0_PE: u64 = 1 << 0;
/// CR0.NE (numeric error).
pub const CR0_NE: u64 = 1 << 5;
/// CR0.PG (paging).
pub const CR0_PG: u64 = 1 << 31;
/// CR4.VMXE (VMX enable).
pub const CR4_VMXE: u64 = 1 << 13;

/// A pair of fixed-bit MSR values for one control register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedBits {
    /// Bits that must be 1 (IA32_VMX_CRn_FIXED0).
    pub fixed0: u64,
    /// Bits that may be 1 (IA32_VMX_CRn_FIXED1).
    pub fixed1: u64,
}

/// Bits of a control-register value that break the fixed-bit rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedBitsViolation {
    /// Bits that are 0 but must be 1.
    pub must_be_set: u64,
    /// Bits that are 1 but must be 0.
    pub must_be_clear: u64,
}

impl FixedBits {
    /// Forces the fixed bits: `(value | fixed0) & fixed1`.
    pub const fn apply(&self, value: u64) -> u64 {
        (value | self.fixed0) & self.fixed1
    }

    /// Checks `value` without changing it.
    pub const fn check(&self, value: u64) -> Result<(), FixedBitsViolation> {
        let must_be_set = self.fixed0 & !value;
        let must_be_clear = value & !self.fixed1;
        if must_be_set == 0 && must_be_clear == 0 {
            Ok(())
        } else {
            Err(FixedBitsViolation {
                must_be_set,
                must_be_clear,
            })
        }
    }

    /// The same rules with `bits` no longer forced to 1 (e.g. CR0.PE|PG for an unrestricted guest,
    /// SDM 27.3.1.1).
    pub const fn relax(self, bits: u64) -> Self {
        FixedBits {
            fixed0: self.fixed0 & !bits,
            fixed1: self.fixed1,
        }
    }
}

impl VmxCapabilities {
    /// CR0 rules for the host in VMX operation and for a guest without unrestricted guest.
    pub fn cr0_fixed(&self) -> FixedBits {
        FixedBits {
            fixed0: self.cr0_fixed0,
            fixed1: self.cr0_fixed1,
        }
    }

    /// CR4 rules in VMX operation (host and guest).
    pub fn cr4_fixed(&self) -> FixedBits {
        FixedBits {
            fixed0: self.cr4_fixed0,
            fixed1: self.cr4_fixed1,
        }
    }

    /// Guest CR0 rules: with "unrestricted guest" set, PE and PG may be 0 (SDM 27.3.1.1).
    pub fn guest_cr0_fixed(&self, unrestricted_guest: bool) -> FixedBits {
        if unrestricted_guest {
            self.cr0_fixed().relax(CR0_PE | CR0_PG)
        } else {
            self.cr0_fixed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CR0: FixedBits = FixedBits {
        fixed0: 0x8000_0021,
        fixed1: 0xffff_ffff,
    };
    const CR4: FixedBits = FixedBits {
        fixed0: 0x2000,
        fixed1: 0x0037_67ff,
    };

    #[test]
    fn apply_sets_and_clears() {
        assert_eq!(CR0.apply(0), CR0_PG | CR0_NE | CR0_PE);
        assert_eq!(
            CR0.apply(1 << 40),
            CR0_PG | CR0_NE | CR0_PE,
            "bit 40 is outside FIXED1"
        );
        assert_eq!(CR4.apply(0x20), 0x2020);
        assert_eq!(
            CR4.apply(1 << 23),
            CR4_VMXE,
            "bit 23 is not allowed by FIXED1"
        );
    }

    #[test]
    fn check_reports_each_side() {
        assert_eq!(CR4.check(0x2020), Ok(()));
        assert_eq!(
            CR4.check(0x20 | (1 << 23)),
            Err(FixedBitsViolation {
                must_be_set: CR4_VMXE,
                must_be_clear: 1 << 23
            })
        );
        let relaxed = CR0.relax(CR0_PE | CR0_PG);
        assert_eq!(relaxed.check(CR0_NE), Ok(()));
        assert_eq!(
            CR0.check(CR0_NE),
            Err(FixedBitsViolation {
                must_be_set: CR0_PE | CR0_PG,
                must_be_clear: 0
            })
        );
    }
}
