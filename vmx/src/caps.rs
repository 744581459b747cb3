//! VMX capability discovery: the raw capability MSRs, and a decoded [`VmxCapabilities`] built from
//! them by a pure function so the host tests the same decoding the hypervisor runs
//! (Intel SDM Vol. 3D, appendix A "VMX Capability Reporting Facility").
//!
//! ```text
//! read_raw_msrs() (unsafe, rdmsr)  ──▶  RawVmxMsrs (plain u64s)  ──▶  VmxCapabilities::from_raw
//! ```

use core::fmt;

use bitflags::bitflags;

use crate::controls::{PinBasedControls, PrimaryControls, SecondaryControls};

/// The raw values of the VMX capability MSRs, as RDMSR returned them.
///
/// MSRs that exist only when another capability bit says so are `Option`s; [`read_raw_msrs`]
/// leaves them `None` when the bit is clear (reading them would raise #GP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawVmxMsrs {
    /// IA32_FEATURE_CONTROL (0x3A).
    pub feature_control: u64,
    /// IA32_VMX_BASIC (0x480).
    pub basic: u64,
    /// IA32_VMX_PINBASED_CTLS (0x481).
    pub pinbased_ctls: u64,
    /// IA32_VMX_PROCBASED_CTLS (0x482).
    pub procbased_ctls: u64,
    /// IA32_VMX_EXIT_CTLS (0x483).
    pub exit_ctls: u64,
    /// IA32_VMX_ENTRY_CTLS (0x484).
    pub entry_ctls: u64,
    /// IA32_VMX_MISC (0x485).
    pub misc: u64,
    /// IA32_VMX_CR0_FIXED0 (0x486).
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1 (0x487).
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0 (0x488).
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1 (0x489).
    pub cr4_fixed1: u64,
    /// IA32_VMX_VMCS_ENUM (0x48A).
    pub vmcs_enum: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (0x48B): present iff the primary controls allow "activate
    /// secondary controls" (IA32_VMX_PROCBASED_CTLS bit 63).
    pub procbased_ctls2: Option<u64>,
    /// IA32_VMX_EPT_VPID_CAP (0x48C): present iff the secondary controls allow "enable EPT" or
    /// "enable VPID" (IA32_VMX_PROCBASED_CTLS2 bit 33 or 37).
    pub ept_vpid_cap: Option<u64>,
    /// IA32_VMX_TRUE_PINBASED_CTLS (0x48D): present iff IA32_VMX_BASIC bit 55.
    pub true_pinbased_ctls: Option<u64>,
    /// IA32_VMX_TRUE_PROCBASED_CTLS (0x48E): present iff IA32_VMX_BASIC bit 55.
    pub true_procbased_ctls: Option<u64>,
    /// IA32_VMX_TRUE_EXIT_CTLS (0x48F): present iff IA32_VMX_BASIC bit 55.
    pub true_exit_ctls: Option<u64>,
    /// IA32_VMX_TRUE_ENTRY_CTLS (0x490): present iff IA32_VMX_BASIC bit 55.
    pub true_entry_ctls: Option<u64>,
    /// IA32_VMX_VMFUNC (0x491): present iff the secondary controls allow "enable VM functions"
    /// (IA32_VMX_PROCBASED_CTLS2 bit 45).
    pub vmfunc: Option<u64>,
}

/// CPUID.1:ECX bit 5: VMX is supported (SDM Vol. 3C, 24.6 "Discovering Support for VMX").
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;

/// True if CPUID leaf 1's ECX announces VMX: the precondition of [`read_raw_msrs`].
pub const fn cpuid_has_vmx(cpuid1_ecx: u32) -> bool {
    cpuid1_ecx & CPUID_1_ECX_VMX != 0
}

/// IA32_VMX_BASIC bit 55: the TRUE_ control MSRs exist (SDM A.1).
const BASIC_TRUE_CTLS: u64 = 1 << 55;

/// Reads every VMX capability MSR this CPU has; the optional ones only when the capability bit
/// that announces them is set (SDM A.1, A.3.2, A.3.3).
///
/// # Safety
/// - CPUID.1:ECX.VMX\[bit 5\] must be 1: otherwise IA32_VMX_BASIC and the other VMX MSRs do not
///   exist and RDMSR raises #GP(0).
/// - The caller must run at CPL 0.
#[cfg(target_arch = "x86_64")]
pub unsafe fn read_raw_msrs() -> RawVmxMsrs {
    use crate::msr::{rdmsr, Msr};
    // Every call of `rd` below names an MSR that exists: IA32_FEATURE_CONTROL and 0x480..=0x48A
    // exist whenever CPUID.1:ECX.VMX = 1 (SDM A.1), and each optional MSR is read only after
    // checking the capability bit that announces it.
    let rd = |msr: Msr| {
        // SAFETY: we run at CPL 0 with CPUID.1:ECX.VMX = 1 (this function's preconditions) and
        // `msr` exists (see above), so RDMSR cannot fault.
        unsafe { rdmsr(msr.number()) }
    };
    let basic = rd(Msr::VmxBasic);
    let procbased_ctls = rd(Msr::VmxProcbasedCtls);
    let secondary_allowed =
        procbased_ctls >> 32 & u64::from(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits()) != 0;
    let procbased_ctls2 = secondary_allowed.then(|| rd(Msr::VmxProcbasedCtls2));
    let ctls2_allowed1 = procbased_ctls2.map_or(0, |v| (v >> 32) as u32);
    let sec = SecondaryControls::from_bits_retain(ctls2_allowed1);
    let true_ctls = basic & BASIC_TRUE_CTLS != 0;
    RawVmxMsrs {
        feature_control: rd(Msr::FeatureControl),
        basic,
        pinbased_ctls: rd(Msr::VmxPinbasedCtls),
        procbased_ctls,
        exit_ctls: rd(Msr::VmxExitCtls),
        entry_ctls: rd(Msr::VmxEntryCtls),
        misc: rd(Msr::VmxMisc),
        cr0_fixed0: rd(Msr::VmxCr0Fixed0),
        cr0_fixed1: rd(Msr::VmxCr0Fixed1),
        cr4_fixed0: rd(Msr::VmxCr4Fixed0),
        cr4_fixed1: rd(Msr::VmxCr4Fixed1),
        vmcs_enum: rd(Msr::VmxVmcsEnum),
        procbased_ctls2,
        ept_vpid_cap: sec
            .intersects(SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_VPID)
            .then(|| rd(Msr::VmxEptVpidCap)),
        true_pinbased_ctls: true_ctls.then(|| rd(Msr::VmxTruePinbasedCtls)),
        true_procbased_ctls: true_ctls.then(|| rd(Msr::VmxTrueProcbasedCtls)),
        true_exit_ctls: true_ctls.then(|| rd(Msr::VmxTrueExitCtls)),
        true_entry_ctls: true_ctls.then(|| rd(Msr::VmxTrueEntryCtls)),
        vmfunc: sec
            .contains(SecondaryControls::ENABLE_VM_FUNCTIONS)
            .then(|| rd(Msr::VmxVmfunc)),
    }
}

/// A memory type as encoded in IA32_VMX_BASIC, EPTP and EPT leaf entries (SDM 11.3, A.1, 29.3.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MemoryType {
    /// Uncacheable (UC), 0.
    Uncacheable = 0,
    /// Write combining (WC), 1.
    WriteCombining = 1,
    /// Write through (WT), 4.
    WriteThrough = 4,
    /// Write protected (WP), 5.
    WriteProtected = 5,
    /// Write back (WB), 6.
    WriteBack = 6,
}

impl MemoryType {
    /// The short name used in the SDM ("UC", "WB", ...).
    pub const fn short_name(self) -> &'static str {
        match self {
            MemoryType::Uncacheable => "UC",
            MemoryType::WriteCombining => "WC",
            MemoryType::WriteThrough => "WT",
            MemoryType::WriteProtected => "WP",
            MemoryType::WriteBack => "WB",
        }
    }
}

impl TryFrom<u8> for MemoryType {
    type Error = u8;

    /// Decodes a memory-type number; reserved encodings (2, 3, 7 and above) are the error.
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            0 => MemoryType::Uncacheable,
            1 => MemoryType::WriteCombining,
            4 => MemoryType::WriteThrough,
            5 => MemoryType::WriteProtected,
            6 => MemoryType::WriteBack,
            other => return Err(other),
        })
    }
}

/// The allowed settings of one 32-bit VMX control field, from a capability MSR (SDM A.3-A.5):
/// bits 31:0 are the allowed-0 settings (a 1 means the control must be 1), bits 63:32 the
/// allowed-1 settings (a 0 means the control must be 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllowedSettings {
    /// Controls that must be 1 (bit set in the MSR's low half).
    pub must_be_one: u32,
    /// Controls that may be 1 (bit set in the MSR's high half).
    pub may_be_one: u32,
}

impl AllowedSettings {
    /// Splits a control capability MSR into its allowed-0 and allowed-1 halves.
    pub const fn from_msr(raw: u64) -> Self {
        AllowedSettings {
            must_be_one: raw as u32,
            may_be_one: (raw >> 32) as u32,
        }
    }

    /// True if every bit of `bits` may be set to 1.
    pub const fn allows_one(&self, bits: u32) -> bool {
        self.may_be_one & bits == bits
    }

    /// True if every bit of `bits` may be left 0.
    pub const fn allows_zero(&self, bits: u32) -> bool {
        self.must_be_one & bits == 0
    }
}

bitflags! {
    /// IA32_FEATURE_CONTROL (0x3A) bits that concern VMX (SDM Vol. 3C, 24.7; Vol. 4 table 2-2).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct FeatureControl: u64 {
        /// The MSR is locked until reset; WRMSR to it raises #GP.
        const LOCKED = 1 << 0;
        /// VMXON is allowed inside SMX operation.
        const VMX_INSIDE_SMX = 1 << 1;
        /// VMXON is allowed outside SMX operation.
        const VMX_OUTSIDE_SMX = 1 << 2;
        /// SENTER global enable.
        const SENTER_GLOBAL = 1 << 15;
        /// SGX launch control enable.
        const SGX_LAUNCH_CONTROL = 1 << 17;
        /// SGX global enable.
        const SGX_GLOBAL = 1 << 18;
        /// Local machine-check exceptions enable.
        const LMCE = 1 << 20;
        const _ = !0;
    }
}

/// Whether VMXON outside SMX is possible, as IA32_FEATURE_CONTROL says (SDM 24.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxEnableState {
    /// Locked with VMX outside SMX enabled: VMXON may be executed.
    Enabled,
    /// Locked with VMX outside SMX disabled (the firmware turned VMX off): VMXON raises #GP until
    /// reset.
    DisabledByFirmware,
    /// Not locked: the hypervisor must set VMX_OUTSIDE_SMX | LOCKED with WRMSR before VMXON.
    Unlocked,
}

impl FeatureControl {
    /// Classifies the register for VMXON outside SMX.
    pub const fn vmx_state(self) -> VmxEnableState {
        if !self.contains(FeatureControl::LOCKED) {
            VmxEnableState::Unlocked
        } else if self.contains(FeatureControl::VMX_OUTSIDE_SMX) {
            VmxEnableState::Enabled
        } else {
            VmxEnableState::DisabledByFirmware
        }
    }
}

bitflags! {
    /// IA32_VMX_EPT_VPID_CAP (0x48C), SDM A.10.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EptVpidCap: u64 {
        /// EPT entries may be execute-only.
        const EXECUTE_ONLY = 1 << 0;
        /// Page-walk length 4 is supported.
        const PAGE_WALK_4 = 1 << 6;
        /// Page-walk length 5 is supported.
        const PAGE_WALK_5 = 1 << 7;
        /// EPT paging structures may be uncacheable (EPTP memory type 0).
        const MEMORY_TYPE_UC = 1 << 8;
        /// EPT paging structures may be write-back (EPTP memory type 6).
        const MEMORY_TYPE_WB = 1 << 14;
        /// EPT PDEs may map 2 MiB pages.
        const PAGE_2M = 1 << 16;
        /// EPT PDPTEs may map 1 GiB pages.
        const PAGE_1G = 1 << 17;
        /// INVEPT is supported.
        const INVEPT = 1 << 20;
        /// Accessed and dirty flags for EPT.
        const ACCESSED_DIRTY = 1 << 21;
        /// Advanced VM-exit information for EPT violations.
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Supervisor shadow-stack control.
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        /// Single-context INVEPT.
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// All-context INVEPT.
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// INVVPID is supported.
        const INVVPID = 1 << 32;
        /// Individual-address INVVPID.
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Single-context INVVPID.
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// All-context INVVPID.
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Single-context-retaining-globals INVVPID.
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
        const _ = !0;
    }
}

bitflags! {
    /// Activity states besides "active" that VM entry may load (IA32_VMX_MISC bits 8:6, SDM A.6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ActivityStates: u8 {
        /// HLT (activity state 1).
        const HLT = 1 << 0;
        /// Shutdown (activity state 2).
        const SHUTDOWN = 1 << 1;
        /// Wait-for-SIPI (activity state 3).
        const WAIT_FOR_SIPI = 1 << 2;
    }
}

/// IA32_VMX_MISC decoded (SDM A.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxMisc {
    /// The VMX-preemption timer counts down by 1 each time bit `preemption_timer_tsc_shift` of
    /// the TSC changes (bits 4:0).
    pub preemption_timer_tsc_shift: u8,
    /// VM exits store EFER.LMA into the "IA-32e mode guest" entry control (bit 5).
    pub stores_lma_on_exit: bool,
    /// Activity states supported (bits 8:6).
    pub activity_states: ActivityStates,
    /// Number of CR3-target values (bits 24:16).
    pub cr3_target_count: u16,
    /// Recommended maximum number of MSRs in each MSR-load/store list: 512 × (N + 1)
    /// (bits 27:25).
    pub max_msr_list_len: u32,
    /// VMWRITE may write every field, including the read-only VM-exit information (bit 29).
    pub vmwrite_any_field: bool,
    /// VM entry may inject software interrupts/exceptions with instruction length 0 (bit 30).
    pub zero_length_injection: bool,
    /// MSEG revision identifier (bits 63:32).
    pub mseg_revision: u32,
}

impl VmxMisc {
    /// Decodes IA32_VMX_MISC.
    pub const fn from_raw(raw: u64) -> Self {
        VmxMisc {
            preemption_timer_tsc_shift: (raw & 0x1F) as u8,
            stores_lma_on_exit: raw & (1 << 5) != 0,
            activity_states: ActivityStates::from_bits_truncate(((raw >> 6) & 0x7) as u8),
            cr3_target_count: ((raw >> 16) & 0x1FF) as u16,
            max_msr_list_len: 512 * (((raw >> 25) & 0x7) as u32 + 1),
            vmwrite_any_field: raw & (1 << 29) != 0,
            zero_length_injection: raw & (1 << 30) != 0,
            mseg_revision: (raw >> 32) as u32,
        }
    }
}

/// Why raw capability MSR values could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapsError {
    /// IA32_VMX_BASIC bit 31 is set; the SDM (A.1) says it is always 0.
    RevisionBit31Set,
    /// IA32_VMX_BASIC reports a VMXON/VMCS region size of 0 or above 4096 bytes.
    InvalidRegionSize(u32),
    /// IA32_VMX_BASIC reports a VMCS memory type other than UC or WB.
    UnsupportedVmcsMemoryType(u8),
    /// IA32_VMX_BASIC bit 55 is set but a TRUE_ control MSR value is missing.
    MissingTrueControls,
    /// "Activate secondary controls" may be 1 but IA32_VMX_PROCBASED_CTLS2 is missing.
    MissingSecondaryControls,
    /// "Enable EPT" or "enable VPID" may be 1 but IA32_VMX_EPT_VPID_CAP is missing.
    MissingEptVpidCap,
}

impl fmt::Display for CapsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapsError::RevisionBit31Set => f.write_str("IA32_VMX_BASIC bit 31 is set"),
            CapsError::InvalidRegionSize(s) => write!(f, "invalid VMX region size {s}"),
            CapsError::UnsupportedVmcsMemoryType(t) => {
                write!(f, "unsupported VMCS memory type {t}")
            }
            CapsError::MissingTrueControls => {
                f.write_str("TRUE_ control MSRs announced but missing")
            }
            CapsError::MissingSecondaryControls => {
                f.write_str("IA32_VMX_PROCBASED_CTLS2 announced but missing")
            }
            CapsError::MissingEptVpidCap => {
                f.write_str("IA32_VMX_EPT_VPID_CAP announced but missing")
            }
        }
    }
}

/// The VMX capabilities of one CPU, decoded from [`RawVmxMsrs`].
///
/// The control settings are the ones to adjust against: the TRUE_ MSRs where IA32_VMX_BASIC bit 55
/// says they exist, the plain ones otherwise (SDM A.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxCapabilities {
    /// VMCS revision identifier to write into the VMXON region and each VMCS (bits 30:0).
    pub revision_id: u32,
    /// Bytes to allocate for the VMXON region and each VMCS (bits 44:32; at most 4096).
    pub region_size: u32,
    /// Physical addresses of the VMXON region, VMCS and structures they reference are limited to
    /// 32 bits (bit 48; never set on Intel 64 processors).
    pub physical_address_32bit: bool,
    /// Dual-monitor treatment of SMIs and SMM is supported (bit 49).
    pub dual_monitor: bool,
    /// Memory type for the VMCS and referenced structures (bits 53:50).
    pub vmcs_memory_type: MemoryType,
    /// VM exits from INS/OUTS report instruction information (bit 54).
    pub ins_outs_info: bool,
    /// The TRUE_ control MSRs exist and were used for the control settings (bit 55).
    pub true_controls: bool,
    /// VM entry may deliver hardware exceptions without the error-code consistency check (bit 56).
    pub no_error_code_check: bool,
    /// Pin-based control settings.
    pub pinbased: AllowedSettings,
    /// Primary processor-based control settings.
    pub procbased: AllowedSettings,
    /// Secondary processor-based control settings, if the secondary controls can be activated.
    pub procbased2: Option<AllowedSettings>,
    /// VM-exit control settings.
    pub exit: AllowedSettings,
    /// VM-entry control settings.
    pub entry: AllowedSettings,
    /// IA32_VMX_MISC decoded.
    pub misc: VmxMisc,
    /// CR0 bits fixed to 1 in VMX operation (IA32_VMX_CR0_FIXED0).
    pub cr0_fixed0: u64,
    /// CR0 bits allowed to be 1 in VMX operation (IA32_VMX_CR0_FIXED1).
    pub cr0_fixed1: u64,
    /// CR4 bits fixed to 1 in VMX operation (IA32_VMX_CR4_FIXED0).
    pub cr4_fixed0: u64,
    /// CR4 bits allowed to be 1 in VMX operation (IA32_VMX_CR4_FIXED1).
    pub cr4_fixed1: u64,
    /// Highest index value used in any VMCS field encoding (IA32_VMX_VMCS_ENUM bits 9:1).
    pub vmcs_max_index: u16,
    /// EPT and VPID capabilities, if the MSR exists.
    pub ept_vpid: Option<EptVpidCap>,
    /// VM functions allowed (IA32_VMX_VMFUNC), if the MSR exists.
    pub vmfunc: Option<u64>,
    /// IA32_FEATURE_CONTROL.
    pub feature_control: FeatureControl,
}

impl VmxCapabilities {
    /// Decodes raw capability MSR values. Pure: no hardware access.
    ///
    /// Optional MSR values given although their announcing bit is clear are ignored; values
    /// missing although announced are an error.
    pub fn from_raw(raw: &RawVmxMsrs) -> Result<Self, CapsError> {
        let basic = raw.basic;
        if basic & (1 << 31) != 0 {
            return Err(CapsError::RevisionBit31Set);
        }
        let revision_id = (basic & 0x7FFF_FFFF) as u32;
        let region_size = ((basic >> 32) & 0x1FFF) as u32;
        if region_size == 0 || region_size > 4096 {
            return Err(CapsError::InvalidRegionSize(region_size));
        }
        let mt = ((basic >> 50) & 0xF) as u8;
        let vmcs_memory_type = match MemoryType::try_from(mt) {
            Ok(t @ (MemoryType::Uncacheable | MemoryType::WriteBack)) => t,
            _ => return Err(CapsError::UnsupportedVmcsMemoryType(mt)),
        };
        let true_controls = basic & BASIC_TRUE_CTLS != 0;
        let pick = |plain: u64, true_: Option<u64>| -> Result<AllowedSettings, CapsError> {
            if true_controls {
                true_
                    .map(AllowedSettings::from_msr)
                    .ok_or(CapsError::MissingTrueControls)
            } else {
                Ok(AllowedSettings::from_msr(plain))
            }
        };
        let pinbased = pick(raw.pinbased_ctls, raw.true_pinbased_ctls)?;
        let procbased = pick(raw.procbased_ctls, raw.true_procbased_ctls)?;
        let exit = pick(raw.exit_ctls, raw.true_exit_ctls)?;
        let entry = pick(raw.entry_ctls, raw.true_entry_ctls)?;

        // Whether the secondary controls exist is told by the plain MSR (SDM A.3.2); the TRUE
        // variant reports the same allowed-1 bits.
        let secondary_announced = AllowedSettings::from_msr(raw.procbased_ctls)
            .allows_one(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits());
        let procbased2 = if secondary_announced {
            Some(AllowedSettings::from_msr(
                raw.procbased_ctls2
                    .ok_or(CapsError::MissingSecondaryControls)?,
            ))
        } else {
            None
        };
        let sec1 = SecondaryControls::from_bits_retain(procbased2.map_or(0, |s| s.may_be_one));
        let ept_vpid =
            if sec1.intersects(SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_VPID) {
                Some(EptVpidCap::from_bits_retain(
                    raw.ept_vpid_cap.ok_or(CapsError::MissingEptVpidCap)?,
                ))
            } else {
                None
            };
        let vmfunc = if sec1.contains(SecondaryControls::ENABLE_VM_FUNCTIONS) {
            raw.vmfunc
        } else {
            None
        };

        Ok(VmxCapabilities {
            revision_id,
            region_size,
            physical_address_32bit: basic & (1 << 48) != 0,
            dual_monitor: basic & (1 << 49) != 0,
            vmcs_memory_type,
            ins_outs_info: basic & (1 << 54) != 0,
            true_controls,
            no_error_code_check: basic & (1 << 56) != 0,
            pinbased,
            procbased,
            procbased2,
            exit,
            entry,
            misc: VmxMisc::from_raw(raw.misc),
            cr0_fixed0: raw.cr0_fixed0,
            cr0_fixed1: raw.cr0_fixed1,
            cr4_fixed0: raw.cr4_fixed0,
            cr4_fixed1: raw.cr4_fixed1,
            vmcs_max_index: ((raw.vmcs_enum >> 1) & 0x1FF) as u16,
            ept_vpid,
            vmfunc,
            feature_control: FeatureControl::from_bits_retain(raw.feature_control),
        })
    }

    fn secondary_allows(&self, c: SecondaryControls) -> bool {
        self.procbased2.is_some_and(|s| s.allows_one(c.bits()))
    }

    /// The secondary processor-based controls can be activated.
    pub fn has_secondary_controls(&self) -> bool {
        self.procbased
            .allows_one(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits())
            && self.procbased2.is_some()
    }

    /// "Enable EPT" may be set.
    pub fn has_ept(&self) -> bool {
        self.has_secondary_controls() && self.secondary_allows(SecondaryControls::ENABLE_EPT)
    }

    /// "Enable VPID" may be set.
    pub fn has_vpid(&self) -> bool {
        self.has_secondary_controls() && self.secondary_allows(SecondaryControls::ENABLE_VPID)
    }

    /// "Unrestricted guest" may be set (requires EPT as well, SDM 27.2.1.1).
    pub fn has_unrestricted_guest(&self) -> bool {
        self.has_ept() && self.secondary_allows(SecondaryControls::UNRESTRICTED_GUEST)
    }

    /// "Activate VMX-preemption timer" may be set.
    pub fn has_preemption_timer(&self) -> bool {
        self.pinbased
            .allows_one(PinBasedControls::VMX_PREEMPTION_TIMER.bits())
    }

    /// EPT capabilities if EPT can be enabled, else `None`.
    pub fn ept(&self) -> Option<EptVpidCap> {
        if self.has_ept() {
            self.ept_vpid
        } else {
            None
        }
    }

    /// A compact human report (one line): revision, region, EPT and VPID features, unrestricted
    /// guest, preemption timer and activity states.
    pub fn summary(&self) -> impl fmt::Display + '_ {
        self
    }
}

/// Writes the names whose flag is true, comma separated, between brackets.
fn write_list(f: &mut fmt::Formatter<'_>, items: &[(bool, &str)]) -> fmt::Result {
    f.write_str("[")?;
    let mut first = true;
    for (on, name) in items {
        if *on {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(name)?;
            first = false;
        }
    }
    f.write_str("]")
}

impl fmt::Display for VmxCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VMX rev {:#x}, region {} B {}{}",
            self.revision_id,
            self.region_size,
            self.vmcs_memory_type.short_name(),
            if self.true_controls {
                ", TRUE ctls"
            } else {
                ""
            }
        )?;
        match (self.ept(), self.ept_vpid) {
            (Some(e), _) => {
                f.write_str("; EPT")?;
                write_list(
                    f,
                    &[
                        (e.contains(EptVpidCap::PAGE_WALK_4), "4-level"),
                        (e.contains(EptVpidCap::PAGE_WALK_5), "5-level"),
                        (e.contains(EptVpidCap::MEMORY_TYPE_WB), "WB"),
                        (e.contains(EptVpidCap::MEMORY_TYPE_UC), "UC"),
                        (e.contains(EptVpidCap::PAGE_2M), "2M"),
                        (e.contains(EptVpidCap::PAGE_1G), "1G"),
                        (e.contains(EptVpidCap::ACCESSED_DIRTY), "A/D"),
                        (e.contains(EptVpidCap::EXECUTE_ONLY), "X-only"),
                    ],
                )?;
                f.write_str(" INVEPT")?;
                write_list(
                    f,
                    &[
                        (e.contains(EptVpidCap::INVEPT_SINGLE_CONTEXT), "single"),
                        (e.contains(EptVpidCap::INVEPT_ALL_CONTEXT), "all"),
                    ],
                )?;
            }
            (None, _) => f.write_str("; no EPT")?,
        }
        if self.has_vpid() {
            let e = self.ept_vpid.unwrap_or(EptVpidCap::empty());
            f.write_str("; VPID INVVPID")?;
            write_list(
                f,
                &[
                    (e.contains(EptVpidCap::INVVPID_INDIVIDUAL_ADDRESS), "addr"),
                    (e.contains(EptVpidCap::INVVPID_SINGLE_CONTEXT), "single"),
                    (e.contains(EptVpidCap::INVVPID_ALL_CONTEXT), "all"),
                    (
                        e.contains(EptVpidCap::INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS),
                        "single-globals",
                    ),
                ],
            )?;
        } else {
            f.write_str("; no VPID")?;
        }
        f.write_str(if self.has_unrestricted_guest() {
            "; unrestricted guest"
        } else {
            "; no unrestricted guest"
        })?;
        if self.has_preemption_timer() {
            write!(
                f,
                "; preemption timer TSC>>{}",
                self.misc.preemption_timer_tsc_shift
            )?;
        } else {
            f.write_str("; no preemption timer")?;
        }
        let a = self.misc.activity_states;
        f.write_str("; activity")?;
        write_list(
            f,
            &[
                (a.contains(ActivityStates::HLT), "HLT"),
                (a.contains(ActivityStates::SHUTDOWN), "shutdown"),
                (a.contains(ActivityStates::WAIT_FOR_SIPI), "wait-SIPI"),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    /// Values as a Skylake-class CPU reports them (TRUE controls, EPT, VPID, unrestricted guest).
    fn skylake() -> RawVmxMsrs {
        RawVmxMsrs {
            feature_control: 0x5,
            basic: 0x00da_0400_0000_0004,
            pinbased_ctls: 0x0000_007f_0000_0016,
            procbased_ctls: 0xfff9_fffe_0401_e172,
            exit_ctls: 0x01ff_ffff_0003_6dff,
            entry_ctls: 0x0003_ffff_0000_11ff,
            misc: 0x7004_c1e7,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0037_67ff,
            vmcs_enum: 0x2e,
            procbased_ctls2: Some(0x005f_fcff_0000_0000),
            ept_vpid_cap: Some(0x0000_0f01_0673_4141),
            true_pinbased_ctls: Some(0x0000_007f_0000_0016),
            true_procbased_ctls: Some(0xfff9_fffe_0400_6172),
            true_exit_ctls: Some(0x01ff_ffff_0003_6dfb),
            true_entry_ctls: Some(0x0003_ffff_0000_11fb),
            vmfunc: Some(1),
        }
    }

    /// An old CPU: no TRUE controls, no secondary controls, no preemption timer.
    fn old_cpu() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: (6 << 50) | (0x1000 << 32) | 0xd,
            pinbased_ctls: 0x0000_003f_0000_0016,
            procbased_ctls: 0x7ff9_fffe_0401_e172,
            exit_ctls: 0x003f_ffff_0003_6dff,
            entry_ctls: 0x0000_ffff_0000_11ff,
            misc: 0x40,
            ..RawVmxMsrs::default()
        }
    }

    #[test]
    fn decodes_basic() {
        let c = VmxCapabilities::from_raw(&skylake()).unwrap();
        assert_eq!(c.revision_id, 4);
        assert_eq!(c.region_size, 1024);
        assert_eq!(c.vmcs_memory_type, MemoryType::WriteBack);
        assert!(c.true_controls);
        assert!(c.ins_outs_info);
        assert!(!c.physical_address_32bit);
        assert_eq!(c.vmcs_max_index, 0x17);
        assert_eq!(c.feature_control.vmx_state(), VmxEnableState::Enabled);
    }

    #[test]
    fn true_controls_are_preferred_when_present() {
        let c = VmxCapabilities::from_raw(&skylake()).unwrap();
        // TRUE_PROCBASED lets CR3-load/store exiting (bits 15, 16) be 0; the plain MSR does not.
        assert_eq!(c.procbased.must_be_one, 0x0400_6172);
        assert!(c
            .procbased
            .allows_zero(PrimaryControls::CR3_LOAD_EXITING.bits()));
        assert_eq!(c.exit.must_be_one, 0x0003_6dfb);
        let mut raw = skylake();
        raw.basic &= !BASIC_TRUE_CTLS;
        let c = VmxCapabilities::from_raw(&raw).unwrap();
        assert!(!c.true_controls);
        assert_eq!(c.procbased.must_be_one, 0x0401_e172);
        assert!(!c
            .procbased
            .allows_zero(PrimaryControls::CR3_LOAD_EXITING.bits()));
    }

    #[test]
    fn decodes_features() {
        let c = VmxCapabilities::from_raw(&skylake()).unwrap();
        assert!(c.has_ept() && c.has_vpid() && c.has_unrestricted_guest());
        assert!(c.has_preemption_timer());
        assert_eq!(c.misc.preemption_timer_tsc_shift, 7);
        assert!(c.misc.stores_lma_on_exit);
        assert_eq!(c.misc.activity_states, ActivityStates::all());
        assert_eq!(c.misc.cr3_target_count, 4);
        assert_eq!(c.misc.max_msr_list_len, 512);
        assert!(c.misc.vmwrite_any_field);
        let e = c.ept().unwrap();
        for flag in [
            EptVpidCap::PAGE_WALK_4,
            EptVpidCap::MEMORY_TYPE_WB,
            EptVpidCap::MEMORY_TYPE_UC,
            EptVpidCap::PAGE_2M,
            EptVpidCap::PAGE_1G,
            EptVpidCap::ACCESSED_DIRTY,
            EptVpidCap::INVEPT_SINGLE_CONTEXT,
            EptVpidCap::INVEPT_ALL_CONTEXT,
            EptVpidCap::INVVPID_ALL_CONTEXT,
        ] {
            assert!(e.contains(flag), "{flag:?}");
        }
        assert!(!e.contains(EptVpidCap::PAGE_WALK_5));
        assert_eq!(c.vmfunc, Some(1));
    }

    #[test]
    fn old_cpu_has_no_optional_features() {
        let mut raw = old_cpu();
        // Values for MSRs that are not announced are ignored.
        raw.ept_vpid_cap = Some(u64::MAX);
        raw.procbased_ctls2 = Some(u64::MAX);
        let c = VmxCapabilities::from_raw(&raw).unwrap();
        assert_eq!(c.revision_id, 0xd);
        assert_eq!(c.region_size, 4096);
        assert!(!c.true_controls);
        assert_eq!(c.procbased2, None);
        assert_eq!(c.ept_vpid, None);
        assert!(!c.has_ept() && !c.has_vpid() && !c.has_unrestricted_guest());
        assert!(!c.has_preemption_timer());
        assert_eq!(c.misc.activity_states, ActivityStates::HLT);
        assert_eq!(c.feature_control.vmx_state(), VmxEnableState::Unlocked);
        let s = c.summary().to_string();
        assert!(
            s.contains("no EPT") && s.contains("no VPID") && s.contains("no preemption timer"),
            "{s}"
        );
    }

    #[test]
    fn rejects_inconsistent_values() {
        let mut raw = skylake();
        raw.true_exit_ctls = None;
        assert_eq!(
            VmxCapabilities::from_raw(&raw),
            Err(CapsError::MissingTrueControls)
        );
        let mut raw = skylake();
        raw.procbased_ctls2 = None;
        assert_eq!(
            VmxCapabilities::from_raw(&raw),
            Err(CapsError::MissingSecondaryControls)
        );
        let mut raw = skylake();
        raw.ept_vpid_cap = None;
        assert_eq!(
            VmxCapabilities::from_raw(&raw),
            Err(CapsError::MissingEptVpidCap)
        );
        let mut raw = skylake();
        raw.basic |= 1 << 31;
        assert_eq!(
            VmxCapabilities::from_raw(&raw),
            Err(CapsError::RevisionBit31Set)
        );
        let mut raw = skylake();
        raw.basic &= !(0x1FFF << 32);
        assert_eq!(
            VmxCapabilities::from_raw(&raw),
            Err(CapsError::InvalidRegionSize(0))
        );
        raw.basic |= 0x1001 << 32;
        assert_eq!(
            VmxCapabilities::from_raw(&raw),
            Err(CapsError::InvalidRegionSize(0x1001))
        );
        let mut raw = skylake();
        raw.basic = (raw.basic & !(0xF << 50)) | (4 << 50);
        assert_eq!(
            VmxCapabilities::from_raw(&raw),
            Err(CapsError::UnsupportedVmcsMemoryType(4))
        );
    }

    #[test]
    fn feature_control_states() {
        assert_eq!(
            FeatureControl::from_bits_retain(0).vmx_state(),
            VmxEnableState::Unlocked
        );
        assert_eq!(
            FeatureControl::from_bits_retain(1).vmx_state(),
            VmxEnableState::DisabledByFirmware
        );
        assert_eq!(
            FeatureControl::from_bits_retain(3).vmx_state(),
            VmxEnableState::DisabledByFirmware
        );
        assert_eq!(
            FeatureControl::from_bits_retain(5).vmx_state(),
            VmxEnableState::Enabled
        );
    }

    #[test]
    fn summary_is_compact_and_complete() {
        let s = VmxCapabilities::from_raw(&skylake())
            .unwrap()
            .summary()
            .to_string();
        assert_eq!(
            s,
            "VMX rev 0x4, region 1024 B WB, TRUE ctls; EPT[4-level,WB,UC,2M,1G,A/D,X-only] \
             INVEPT[single,all]; VPID INVVPID[addr,single,all,single-globals]; unrestricted guest; \
             preemption timer TSC>>7; activity[HLT,shutdown,wait-SIPI]"
        );
        assert!(!s.contains('\n'));
    }

    #[test]
    fn cpuid_vmx_bit() {
        assert!(cpuid_has_vmx(0x7ffa_fbbf));
        assert!(!cpuid_has_vmx(0x7ffa_fb9f));
    }

    #[test]
    fn memory_type_round_trip() {
        for v in 0u8..=255 {
            match MemoryType::try_from(v) {
                Ok(t) => assert_eq!(t as u8, v),
                Err(e) => assert!(matches!(e, 2 | 3 | 7..=255)),
            }
        }
    }
}
