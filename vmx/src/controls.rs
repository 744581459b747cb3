//! VM-execution, VM-exit and VM-entry control fields as bitflags (Intel SDM Vol. 3C, 25.6-25.8;
//! section numbers follow the 2023+ SDM, older editions number the same text 24.6-24.8), and their
//! adjustment against the allowed-0/allowed-1 capability MSRs (SDM Vol. 3D, A.3-A.5).

use core::fmt;

use bitflags::{bitflags, Flags};

use crate::caps::{AllowedSettings, VmxCapabilities};

bitflags! {
    /// Pin-based VM-execution controls (SDM 25.6.1, table 25-5).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PinBasedControls: u32 {
        /// External interrupts cause VM exits.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// NMIs cause VM exits.
        const NMI_EXITING = 1 << 3;
        /// NMIs are never blocked and "blocking by NMI" tracks virtual-NMI blocking.
        const VIRTUAL_NMIS = 1 << 5;
        /// The VMX-preemption timer counts down in VMX non-root operation.
        const VMX_PREEMPTION_TIMER = 1 << 6;
        /// Posted-interrupt processing.
        const PROCESS_POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags! {
    /// Primary processor-based VM-execution controls (SDM 25.6.2, table 25-6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PrimaryControls: u32 {
        /// Exit at the start of any instruction when RFLAGS.IF = 1 and no blocking.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// Apply the TSC offset to RDTSC/RDTSCP/RDMSR(IA32_TSC).
        const USE_TSC_OFFSETTING = 1 << 3;
        /// HLT causes a VM exit.
        const HLT_EXITING = 1 << 7;
        /// INVLPG causes a VM exit.
        const INVLPG_EXITING = 1 << 9;
        /// MWAIT causes a VM exit.
        const MWAIT_EXITING = 1 << 10;
        /// RDPMC causes a VM exit.
        const RDPMC_EXITING = 1 << 11;
        /// RDTSC/RDTSCP cause VM exits.
        const RDTSC_EXITING = 1 << 12;
        /// MOV to CR3 causes a VM exit unless the value is a CR3-target value.
        const CR3_LOAD_EXITING = 1 << 15;
        /// MOV from CR3 causes a VM exit.
        const CR3_STORE_EXITING = 1 << 16;
        /// The tertiary processor-based controls are used.
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        /// MOV to CR8 causes a VM exit.
        const CR8_LOAD_EXITING = 1 << 19;
        /// MOV from CR8 causes a VM exit.
        const CR8_STORE_EXITING = 1 << 20;
        /// TPR virtualization and other APIC-virtualization features.
        const USE_TPR_SHADOW = 1 << 21;
        /// Exit at the start of any instruction when there is no virtual-NMI blocking.
        const NMI_WINDOW_EXITING = 1 << 22;
        /// MOV DR causes a VM exit.
        const MOV_DR_EXITING = 1 << 23;
        /// Every I/O instruction causes a VM exit (ignored if I/O bitmaps are used).
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        /// I/O bitmaps restrict I/O instructions.
        const USE_IO_BITMAPS = 1 << 25;
        /// Monitor trap flag debugging feature.
        const MONITOR_TRAP_FLAG = 1 << 27;
        /// MSR bitmaps control RDMSR/WRMSR exiting.
        const USE_MSR_BITMAPS = 1 << 28;
        /// MONITOR causes a VM exit.
        const MONITOR_EXITING = 1 << 29;
        /// PAUSE causes a VM exit.
        const PAUSE_EXITING = 1 << 30;
        /// The secondary processor-based controls are used.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls (SDM 25.6.2, table 25-7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SecondaryControls: u32 {
        /// Accesses to the APIC-access page are treated specially.
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        /// Extended page tables are used.
        const ENABLE_EPT = 1 << 1;
        /// LGDT/LIDT/LLDT/LTR/SGDT/SIDT/SLDT/STR cause VM exits.
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        /// RDTSCP does not raise #UD.
        const ENABLE_RDTSCP = 1 << 3;
        /// x2APIC MSR accesses are virtualized.
        const VIRTUALIZE_X2APIC_MODE = 1 << 4;
        /// Cached translations are tagged with a VPID.
        const ENABLE_VPID = 1 << 5;
        /// WBINVD/WBNOINVD cause VM exits.
        const WBINVD_EXITING = 1 << 6;
        /// The guest may run in unpaged protected mode or real-address mode.
        const UNRESTRICTED_GUEST = 1 << 7;
        /// APIC-register virtualization.
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        /// Virtual-interrupt delivery.
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        /// A series of PAUSE instructions may cause a VM exit.
        const PAUSE_LOOP_EXITING = 1 << 10;
        /// RDRAND causes a VM exit.
        const RDRAND_EXITING = 1 << 11;
        /// INVPCID does not raise #UD.
        const ENABLE_INVPCID = 1 << 12;
        /// VMFUNC is enabled.
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        /// VMREAD/VMWRITE in VMX non-root may access a shadow VMCS.
        const VMCS_SHADOWING = 1 << 14;
        /// ENCLS may cause VM exits.
        const ENABLE_ENCLS_EXITING = 1 << 15;
        /// RDSEED causes a VM exit.
        const RDSEED_EXITING = 1 << 16;
        /// Page-modification logging.
        const ENABLE_PML = 1 << 17;
        /// EPT violations may raise #VE instead of exiting.
        const EPT_VIOLATION_VE = 1 << 18;
        /// Intel PT suppresses VMX-related packets.
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        /// XSAVES/XRSTORS do not raise #UD.
        const ENABLE_XSAVES_XRSTORS = 1 << 20;
        /// Mode-based execute control for EPT.
        const MODE_BASED_EXECUTE_CONTROL = 1 << 22;
        /// Sub-page write permissions for EPT.
        const SUB_PAGE_WRITE_PERMISSIONS = 1 << 23;
        /// Intel PT output addresses are guest-physical.
        const PT_USES_GUEST_PHYSICAL = 1 << 24;
        /// TSC scaling.
        const USE_TSC_SCALING = 1 << 25;
        /// TPAUSE/UMONITOR/UMWAIT do not raise #UD.
        const ENABLE_USER_WAIT_PAUSE = 1 << 26;
        /// ENCLV may cause VM exits.
        const ENABLE_ENCLV_EXITING = 1 << 28;
    }
}

bitflags! {
    /// Primary VM-exit controls (SDM 25.7.1, table 25-13).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ExitControls: u32 {
        /// DR7 and IA32_DEBUGCTL are saved on exit.
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// The host runs in 64-bit mode after the exit (must be 1 for a 64-bit host).
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// IA32_PERF_GLOBAL_CTRL is loaded on exit.
        const LOAD_PERF_GLOBAL_CTRL = 1 << 12;
        /// The interrupt controller is acknowledged on an external-interrupt exit.
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        /// Guest IA32_PAT is saved on exit.
        const SAVE_PAT = 1 << 18;
        /// Host IA32_PAT is loaded on exit.
        const LOAD_PAT = 1 << 19;
        /// Guest IA32_EFER is saved on exit.
        const SAVE_EFER = 1 << 20;
        /// Host IA32_EFER is loaded on exit.
        const LOAD_EFER = 1 << 21;
        /// The VMX-preemption timer value is saved on exit.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
        /// IA32_BNDCFGS is cleared on exit.
        const CLEAR_BNDCFGS = 1 << 23;
        /// Intel PT suppresses the VM-exit packets.
        const CONCEAL_VMX_FROM_PT = 1 << 24;
        /// IA32_RTIT_CTL is cleared on exit.
        const CLEAR_RTIT_CTL = 1 << 25;
        /// IA32_LBR_CTL is cleared on exit.
        const CLEAR_LBR_CTL = 1 << 26;
        /// UINV is cleared on exit.
        const CLEAR_UINV = 1 << 27;
        /// CET state is loaded on exit.
        const LOAD_CET_STATE = 1 << 28;
        /// IA32_PKRS is loaded on exit.
        const LOAD_PKRS = 1 << 29;
        /// Guest IA32_PERF_GLOBAL_CTL is saved on exit.
        const SAVE_PERF_GLOBAL_CTL = 1 << 30;
        /// The secondary VM-exit controls are used.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// VM-entry controls (SDM 25.8.1, table 25-15).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EntryControls: u32 {
        /// DR7 and IA32_DEBUGCTL are loaded on entry.
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// The guest runs in IA-32e mode after entry (IA32_EFER.LMA).
        const IA32E_MODE_GUEST = 1 << 9;
        /// Entry to SMM (dual-monitor treatment only).
        const ENTRY_TO_SMM = 1 << 10;
        /// Deactivate the dual-monitor treatment.
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        /// IA32_PERF_GLOBAL_CTRL is loaded on entry.
        const LOAD_PERF_GLOBAL_CTRL = 1 << 13;
        /// IA32_PAT is loaded on entry.
        const LOAD_PAT = 1 << 14;
        /// IA32_EFER is loaded on entry.
        const LOAD_EFER = 1 << 15;
        /// IA32_BNDCFGS is loaded on entry.
        const LOAD_BNDCFGS = 1 << 16;
        /// Intel PT suppresses the VM-entry packets.
        const CONCEAL_VMX_FROM_PT = 1 << 17;
        /// IA32_RTIT_CTL is loaded on entry.
        const LOAD_RTIT_CTL = 1 << 18;
        /// UINV is loaded on entry.
        const LOAD_UINV = 1 << 19;
        /// CET state is loaded on entry.
        const LOAD_CET_STATE = 1 << 20;
        /// Guest IA32_LBR_CTL is loaded on entry.
        const LOAD_LBR_CTL = 1 << 21;
        /// IA32_PKRS is loaded on entry.
        const LOAD_PKRS = 1 << 22;
    }
}

/// The five 32-bit control fields adjusted against capability MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlField {
    /// Pin-based VM-execution controls (IA32_VMX_[TRUE_]PINBASED_CTLS).
    PinBased,
    /// Primary processor-based VM-execution controls (IA32_VMX_[TRUE_]PROCBASED_CTLS).
    Primary,
    /// Secondary processor-based VM-execution controls (IA32_VMX_PROCBASED_CTLS2).
    Secondary,
    /// VM-exit controls (IA32_VMX_[TRUE_]EXIT_CTLS).
    Exit,
    /// VM-entry controls (IA32_VMX_[TRUE_]ENTRY_CTLS).
    Entry,
}

impl ControlField {
    /// Human name of the field.
    pub const fn name(self) -> &'static str {
        match self {
            ControlField::PinBased => "pin-based controls",
            ControlField::Primary => "primary processor-based controls",
            ControlField::Secondary => "secondary processor-based controls",
            ControlField::Exit => "VM-exit controls",
            ControlField::Entry => "VM-entry controls",
        }
    }

    /// The name of control bit `bit` in this field, if it is one this crate models.
    pub fn bit_name(self, bit: u32) -> Option<&'static str> {
        fn find<F: Flags<Bits = u32>>(bit: u32) -> Option<&'static str> {
            let mask = 1u32.checked_shl(bit)?;
            F::FLAGS
                .iter()
                .find(|f| f.value().bits() == mask)
                .map(|f| f.name())
        }
        match self {
            ControlField::PinBased => find::<PinBasedControls>(bit),
            ControlField::Primary => find::<PrimaryControls>(bit),
            ControlField::Secondary => find::<SecondaryControls>(bit),
            ControlField::Exit => find::<ExitControls>(bit),
            ControlField::Entry => find::<EntryControls>(bit),
        }
    }
}

/// A set of controls of one field, adjustable against the capability MSRs.
pub trait VmxControls: Flags<Bits = u32> + Copy {
    /// The field these controls belong to.
    const FIELD: ControlField;
    /// The allowed settings of the field on this CPU (TRUE_ MSR where present); `None` if the
    /// field does not exist (secondary controls without "activate secondary controls").
    fn settings(caps: &VmxCapabilities) -> Option<AllowedSettings>;
}

impl VmxControls for PinBasedControls {
    const FIELD: ControlField = ControlField::PinBased;
    fn settings(caps: &VmxCapabilities) -> Option<AllowedSettings> {
        Some(caps.pinbased)
    }
}

impl VmxControls for PrimaryControls {
    const FIELD: ControlField = ControlField::Primary;
    fn settings(caps: &VmxCapabilities) -> Option<AllowedSettings> {
        Some(caps.procbased)
    }
}

impl VmxControls for SecondaryControls {
    const FIELD: ControlField = ControlField::Secondary;
    fn settings(caps: &VmxCapabilities) -> Option<AllowedSettings> {
        caps.procbased2
    }
}

impl VmxControls for ExitControls {
    const FIELD: ControlField = ControlField::Exit;
    fn settings(caps: &VmxCapabilities) -> Option<AllowedSettings> {
        Some(caps.exit)
    }
}

impl VmxControls for EntryControls {
    const FIELD: ControlField = ControlField::Entry;
    fn settings(caps: &VmxCapabilities) -> Option<AllowedSettings> {
        Some(caps.entry)
    }
}

/// Controls the CPU refuses: wanted 1 but allowed-1 is 0, or required 0 but allowed-0 is 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlError {
    /// The field the controls belong to.
    pub field: ControlField,
    /// Controls requested as 1 that the CPU does not allow to be 1.
    pub cannot_set: u32,
    /// Controls requested as 0 that the CPU does not allow to be 0.
    pub cannot_clear: u32,
}

impl ControlError {
    /// Names of the refused controls (`"bit N"` for bits this crate does not name), each with
    /// whether it was refused as 1 (`true`) or as 0 (`false`).
    pub fn refused(&self) -> impl Iterator<Item = (RefusedControl, bool)> + '_ {
        (0..32u32).filter_map(move |bit| {
            let name = RefusedControl {
                field: self.field,
                bit,
            };
            if self.cannot_set & (1 << bit) != 0 {
                Some((name, true))
            } else if self.cannot_clear & (1 << bit) != 0 {
                Some((name, false))
            } else {
                None
            }
        })
    }
}

/// One refused control bit, displayed by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusedControl {
    /// The field.
    pub field: ControlField,
    /// The bit number.
    pub bit: u32,
}

impl fmt::Display for RefusedControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.bit_name(self.bit) {
            Some(n) => f.write_str(n),
            None => write!(f, "bit {}", self.bit),
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: the CPU refuses", self.field.name())?;
        let mut sep = " ";
        for (control, as_one) in self.refused() {
            write!(f, "{sep}{control}={}", if as_one { 1 } else { 0 })?;
            sep = ", ";
        }
        Ok(())
    }
}

/// Adjusts `wanted` against `settings` (SDM A.3-A.5, 32.5 "VMX capability MSRs"): controls the
/// CPU requires are added; a wanted control the CPU cannot set is an error naming it. Reserved
/// bits that must be 1 (the "default1" class) are kept in the result, so write `result.bits()`.
pub fn adjust_controls<C: VmxControls>(
    wanted: C,
    settings: AllowedSettings,
) -> Result<C, ControlError> {
    adjust_controls_excluding(wanted, C::empty(), settings)
}

/// Like [`adjust_controls`], and also refuses when a control in `must_be_clear` is one the CPU
/// requires to be 1.
pub fn adjust_controls_excluding<C: VmxControls>(
    wanted: C,
    must_be_clear: C,
    settings: AllowedSettings,
) -> Result<C, ControlError> {
    let cannot_set = wanted.bits() & !settings.may_be_one;
    let cannot_clear = must_be_clear.bits() & settings.must_be_one;
    if cannot_set != 0 || cannot_clear != 0 {
        return Err(ControlError {
            field: C::FIELD,
            cannot_set,
            cannot_clear,
        });
    }
    Ok(C::from_bits_retain(wanted.bits() | settings.must_be_one))
}

impl VmxCapabilities {
    /// Adjusts `wanted` controls against this CPU's settings (TRUE_ MSRs where present). A field
    /// that does not exist accepts only the empty set.
    pub fn adjust<C: VmxControls>(&self, wanted: C) -> Result<C, ControlError> {
        match C::settings(self) {
            Some(s) => adjust_controls(wanted, s),
            None if wanted.bits() == 0 => Ok(wanted),
            None => Err(ControlError {
                field: C::FIELD,
                cannot_set: wanted.bits(),
                cannot_clear: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::RawVmxMsrs;
    use std::string::ToString;

    fn caps(true_ctls: bool) -> VmxCapabilities {
        let mut basic = (6u64 << 50) | (0x1000 << 32) | 1;
        if true_ctls {
            basic |= 1 << 55;
        }
        VmxCapabilities::from_raw(&RawVmxMsrs {
            basic,
            pinbased_ctls: 0x0000_007f_0000_0016,
            procbased_ctls: 0xfff9_fffe_0401_e172,
            exit_ctls: 0x01ff_ffff_0003_6dff,
            entry_ctls: 0x0003_ffff_0000_11ff,
            procbased_ctls2: Some(0x0000_00a2_0000_0000), // EPT, VPID, unrestricted guest
            ept_vpid_cap: Some(0),
            true_pinbased_ctls: Some(0x0000_007f_0000_0016),
            true_procbased_ctls: Some(0xfff9_fffe_0400_6172),
            true_exit_ctls: Some(0x01ff_ffff_0003_6dfb),
            true_entry_ctls: Some(0x0003_ffff_0000_11fb),
            ..RawVmxMsrs::default()
        })
        .unwrap()
    }

    #[test]
    fn adds_required_bits_and_keeps_wanted() {
        let c = caps(true);
        let p = c
            .adjust(PrimaryControls::HLT_EXITING | PrimaryControls::USE_MSR_BITMAPS)
            .unwrap();
        assert!(p.contains(PrimaryControls::HLT_EXITING | PrimaryControls::USE_MSR_BITMAPS));
        assert_eq!(
            p.bits() & 0x0400_6172,
            0x0400_6172,
            "default1 bits are kept"
        );
        // With TRUE controls CR3-load exiting may be 0; without, it is forced to 1.
        assert!(!p.contains(PrimaryControls::CR3_LOAD_EXITING));
        let p = caps(false).adjust(PrimaryControls::HLT_EXITING).unwrap();
        assert!(p.contains(PrimaryControls::CR3_LOAD_EXITING | PrimaryControls::CR3_STORE_EXITING));
        let e = c.adjust(ExitControls::HOST_ADDRESS_SPACE_SIZE).unwrap();
        assert_eq!(e.bits(), 0x0003_6dfb | (1 << 9));
    }

    #[test]
    fn refused_control_is_named() {
        let c = caps(true);
        // Secondary allows only EPT, VPID and unrestricted guest.
        let err = c
            .adjust(
                SecondaryControls::ENABLE_EPT
                    | SecondaryControls::ENABLE_PML
                    | SecondaryControls::RDRAND_EXITING,
            )
            .unwrap_err();
        assert_eq!(err.field, ControlField::Secondary);
        assert_eq!(err.cannot_set, (1 << 17) | (1 << 11));
        assert_eq!(
            err.to_string(),
            "secondary processor-based controls: the CPU refuses RDRAND_EXITING=1, ENABLE_PML=1"
        );
        // Entry allows bits up to 17; LOAD_PKRS (22) is refused.
        let err = c
            .adjust(EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_PKRS)
            .unwrap_err();
        assert_eq!(err.cannot_set, 1 << 22);
    }

    #[test]
    fn must_be_clear_violations_are_named() {
        let c = caps(false);
        let err = adjust_controls_excluding(
            PrimaryControls::HLT_EXITING,
            PrimaryControls::CR3_LOAD_EXITING,
            c.procbased,
        )
        .unwrap_err();
        assert_eq!(err.cannot_clear, 1 << 15);
        assert_eq!(
            err.to_string(),
            "primary processor-based controls: the CPU refuses CR3_LOAD_EXITING=0"
        );
        assert!(adjust_controls_excluding(
            PrimaryControls::HLT_EXITING,
            PrimaryControls::CR3_LOAD_EXITING,
            caps(true).procbased
        )
        .is_ok());
    }

    #[test]
    fn missing_secondary_field_accepts_only_empty() {
        let mut c = caps(true);
        c.procbased2 = None;
        assert_eq!(
            c.adjust(SecondaryControls::empty()),
            Ok(SecondaryControls::empty())
        );
        let err = c.adjust(SecondaryControls::ENABLE_EPT).unwrap_err();
        assert_eq!(err.cannot_set, 2);
    }

    #[test]
    fn unnamed_bits_are_reported_by_number() {
        let err = adjust_controls(
            PinBasedControls::from_bits_retain(1 << 30),
            AllowedSettings::from_msr(0x0000_007f_0000_0016),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pin-based controls: the CPU refuses bit 30=1"
        );
    }
}
