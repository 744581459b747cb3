//! Model-specific registers that describe or gate VMX operation (Intel SDM Vol. 4, table 2-2;
//! Vol. 3D, appendix A "VMX Capability Reporting Facility").

/// An MSR address that matters to VMX. The discriminant is the architectural MSR number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Msr {
    /// IA32_FEATURE_CONTROL (0x3A): lock bit and VMX enables (SDM Vol. 3C, 24.7 "Enabling and
    /// Entering VMX Operation").
    FeatureControl = 0x3A,
    /// IA32_VMX_BASIC (0x480): VMCS revision, region size, memory type (SDM A.1).
    VmxBasic = 0x480,
    /// IA32_VMX_PINBASED_CTLS (0x481), SDM A.3.1.
    VmxPinbasedCtls = 0x481,
    /// IA32_VMX_PROCBASED_CTLS (0x482), SDM A.3.2.
    VmxProcbasedCtls = 0x482,
    /// IA32_VMX_EXIT_CTLS (0x483), SDM A.4.1.
    VmxExitCtls = 0x483,
    /// IA32_VMX_ENTRY_CTLS (0x484), SDM A.5.
    VmxEntryCtls = 0x484,
    /// IA32_VMX_MISC (0x485), SDM A.6.
    VmxMisc = 0x485,
    /// IA32_VMX_CR0_FIXED0 (0x486), SDM A.7.
    VmxCr0Fixed0 = 0x486,
    /// IA32_VMX_CR0_FIXED1 (0x487), SDM A.7.
    VmxCr0Fixed1 = 0x487,
    /// IA32_VMX_CR4_FIXED0 (0x488), SDM A.8.
    VmxCr4Fixed0 = 0x488,
    /// IA32_VMX_CR4_FIXED1 (0x489), SDM A.8.
    VmxCr4Fixed1 = 0x489,
    /// IA32_VMX_VMCS_ENUM (0x48A), SDM A.9.
    VmxVmcsEnum = 0x48A,
    /// IA32_VMX_PROCBASED_CTLS2 (0x48B), SDM A.3.3. Exists only if the primary processor-based
    /// controls allow "activate secondary controls" to be 1.
    VmxProcbasedCtls2 = 0x48B,
    /// IA32_VMX_EPT_VPID_CAP (0x48C), SDM A.10. Exists only if the secondary controls allow
    /// "enable EPT" or "enable VPID" to be 1.
    VmxEptVpidCap = 0x48C,
    /// IA32_VMX_TRUE_PINBASED_CTLS (0x48D), SDM A.3.1. Exists only if IA32_VMX_BASIC bit 55 is 1.
    VmxTruePinbasedCtls = 0x48D,
    /// IA32_VMX_TRUE_PROCBASED_CTLS (0x48E), SDM A.3.2. Exists only if IA32_VMX_BASIC bit 55 is 1.
    VmxTrueProcbasedCtls = 0x48E,
    /// IA32_VMX_TRUE_EXIT_CTLS (0x48F), SDM A.4.1. Exists only if IA32_VMX_BASIC bit 55 is 1.
    VmxTrueExitCtls = 0x48F,
    /// IA32_VMX_TRUE_ENTRY_CTLS (0x490), SDM A.5. Exists only if IA32_VMX_BASIC bit 55 is 1.
    VmxTrueEntryCtls = 0x490,
    /// IA32_VMX_VMFUNC (0x491), SDM A.11. Exists only if the secondary controls allow
    /// "enable VM functions" to be 1.
    VmxVmfunc = 0x491,
}

impl Msr {
    /// Every MSR of this enum, in address order.
    pub const ALL: [Msr; 19] = [
        Msr::FeatureControl,
        Msr::VmxBasic,
        Msr::VmxPinbasedCtls,
        Msr::VmxProcbasedCtls,
        Msr::VmxExitCtls,
        Msr::VmxEntryCtls,
        Msr::VmxMisc,
        Msr::VmxCr0Fixed0,
        Msr::VmxCr0Fixed1,
        Msr::VmxCr4Fixed0,
        Msr::VmxCr4Fixed1,
        Msr::VmxVmcsEnum,
        Msr::VmxProcbasedCtls2,
        Msr::VmxEptVpidCap,
        Msr::VmxTruePinbasedCtls,
        Msr::VmxTrueProcbasedCtls,
        Msr::VmxTrueExitCtls,
        Msr::VmxTrueEntryCtls,
        Msr::VmxVmfunc,
    ];

    /// The architectural MSR number (the value loaded into ECX for RDMSR/WRMSR).
    pub const fn number(self) -> u32 {
        self as u32
    }

    /// The SDM's name of the MSR.
    pub const fn name(self) -> &'static str {
        match self {
            Msr::FeatureControl => "IA32_FEATURE_CONTROL",
            Msr::VmxBasic => "IA32_VMX_BASIC",
            Msr::VmxPinbasedCtls => "IA32_VMX_PINBASED_CTLS",
            Msr::VmxProcbasedCtls => "IA32_VMX_PROCBASED_CTLS",
            Msr::VmxExitCtls => "IA32_VMX_EXIT_CTLS",
            Msr::VmxEntryCtls => "IA32_VMX_ENTRY_CTLS",
            Msr::VmxMisc => "IA32_VMX_MISC",
            Msr::VmxCr0Fixed0 => "IA32_VMX_CR0_FIXED0",
            Msr::VmxCr0Fixed1 => "IA32_VMX_CR0_FIXED1",
            Msr::VmxCr4Fixed0 => "IA32_VMX_CR4_FIXED0",
            Msr::VmxCr4Fixed1 => "IA32_VMX_CR4_FIXED1",
            Msr::VmxVmcsEnum => "IA32_VMX_VMCS_ENUM",
            Msr::VmxProcbasedCtls2 => "IA32_VMX_PROCBASED_CTLS2",
            Msr::VmxEptVpidCap => "IA32_VMX_EPT_VPID_CAP",
            Msr::VmxTruePinbasedCtls => "IA32_VMX_TRUE_PINBASED_CTLS",
            Msr::VmxTrueProcbasedCtls => "IA32_VMX_TRUE_PROCBASED_CTLS",
            Msr::VmxTrueExitCtls => "IA32_VMX_TRUE_EXIT_CTLS",
            Msr::VmxTrueEntryCtls => "IA32_VMX_TRUE_ENTRY_CTLS",
            Msr::VmxVmfunc => "IA32_VMX_VMFUNC",
        }
    }
}

impl TryFrom<u32> for Msr {
    type Error = u32;

    /// Looks an MSR number up; an MSR this enum does not model is returned as the error.
    fn try_from(number: u32) -> Result<Self, u32> {
        Msr::ALL
            .iter()
            .copied()
            .find(|m| m.number() == number)
            .ok_or(number)
    }
}

/// Reads an MSR with RDMSR.
///
/// # Safety
/// - The MSR must exist on this CPU (RDMSR of a non-existent MSR raises #GP(0)), which for the
///   VMX MSRs means CPUID.1:ECX.VMX\[bit 5\] = 1 plus the capability bit each MSR's doc names.
/// - The caller must run at CPL 0 (RDMSR raises #GP(0) otherwise).
#[cfg(target_arch = "x86_64")]
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: the caller guarantees the MSR exists and that we run at CPL 0 (see the function's
    // safety section); RDMSR only reads the MSR into EDX:EAX and touches no memory or flags.
    unsafe {
        core::arch::asm!(
            "rdmsr",
            in("ecx") msr,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_sdm_and_round_trip() {
        assert_eq!(Msr::FeatureControl.number(), 0x3A);
        assert_eq!(Msr::VmxBasic.number(), 0x480);
        assert_eq!(Msr::VmxProcbasedCtls2.number(), 0x48B);
        assert_eq!(Msr::VmxEptVpidCap.number(), 0x48C);
        assert_eq!(Msr::VmxTruePinbasedCtls.number(), 0x48D);
        assert_eq!(Msr::VmxTrueEntryCtls.number(), 0x490);
        assert_eq!(Msr::VmxVmfunc.number(), 0x491);
        // 0x480..=0x491 are contiguous and all modelled.
        for n in 0x480..=0x491u32 {
            assert_eq!(Msr::try_from(n).map(Msr::number), Ok(n));
        }
        assert_eq!(Msr::try_from(0x492), Err(0x492));
        assert_eq!(Msr::try_from(0x3A), Ok(Msr::FeatureControl));
        assert!(Msr::ALL.iter().all(|m| m.name().starts_with("IA32_")));
    }
}
