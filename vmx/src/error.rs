//! Failures of VMX instructions: VMfailInvalid / VMfailValid (SDM Vol. 3C, 31.2 "Conventions")
//! and the VM-instruction error numbers VMfailValid leaves in the VMCS (SDM 31.4).

use core::fmt;

/// A VM-instruction error number, read from the VM-instruction error field after VMfailValid
/// (SDM 31.4, table 31-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmInstructionError {
    /// 1: VMCALL executed in VMX root operation.
    VmcallInRoot,
    /// 2: VMCLEAR with invalid physical address.
    VmclearInvalidAddress,
    /// 3: VMCLEAR with VMXON pointer.
    VmclearVmxonPointer,
    /// 4: VMLAUNCH with non-clear VMCS.
    VmlaunchNonClearVmcs,
    /// 5: VMRESUME with non-launched VMCS.
    VmresumeNonLaunchedVmcs,
    /// 6: VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME).
    VmresumeAfterVmxoff,
    /// 7: VM entry with invalid control field(s).
    EntryInvalidControls,
    /// 8: VM entry with invalid host-state field(s).
    EntryInvalidHostState,
    /// 9: VMPTRLD with invalid physical address.
    VmptrldInvalidAddress,
    /// 10: VMPTRLD with VMXON pointer.
    VmptrldVmxonPointer,
    /// 11: VMPTRLD with incorrect VMCS revision identifier.
    VmptrldWrongRevision,
    /// 12: VMREAD/VMWRITE from/to unsupported VMCS component.
    UnsupportedComponent,
    /// 13: VMWRITE to read-only VMCS component.
    VmwriteReadOnly,
    /// 15: VMXON executed in VMX root operation.
    VmxonInRoot,
    /// 16: VM entry with invalid executive-VMCS pointer.
    EntryInvalidExecutiveVmcs,
    /// 17: VM entry with non-launched executive VMCS.
    EntryNonLaunchedExecutiveVmcs,
    /// 18: VM entry with executive-VMCS pointer not VMXON pointer.
    EntryExecutiveVmcsNotVmxon,
    /// 19: VMCALL with non-clear VMCS.
    VmcallNonClearVmcs,
    /// 20: VMCALL with invalid VM-exit control fields.
    VmcallInvalidExitControls,
    /// 22: VMCALL with incorrect MSEG revision identifier.
    VmcallWrongMsegRevision,
    /// 23: VMXOFF under dual-monitor treatment of SMIs and SMM.
    VmxoffDualMonitor,
    /// 24: VMCALL with invalid SMM-monitor features.
    VmcallInvalidSmmFeatures,
    /// 25: VM entry with invalid VM-execution control fields in executive VMCS.
    EntryInvalidExecutiveControls,
    /// 26: VM entry with events blocked by MOV SS.
    EntryBlockedByMovSs,
    /// 28: Invalid operand to INVEPT/INVVPID.
    InvalidInveptInvvpidOperand,
    /// A number the SDM does not define (0, 14, 21, 27, 29 and above).
    Reserved(u32),
}

impl VmInstructionError {
    /// Decodes the VM-instruction error field; undefined numbers become [`Self::Reserved`].
    pub const fn from_number(n: u32) -> Self {
        use VmInstructionError::*;
        match n {
            1 => VmcallInRoot,
            2 => VmclearInvalidAddress,
            3 => VmclearVmxonPointer,
            4 => VmlaunchNonClearVmcs,
            5 => VmresumeNonLaunchedVmcs,
            6 => VmresumeAfterVmxoff,
            7 => EntryInvalidControls,
            8 => EntryInvalidHostState,
            9 => VmptrldInvalidAddress,
            10 => VmptrldVmxonPointer,
            11 => VmptrldWrongRevision,
            12 => UnsupportedComponent,
            13 => VmwriteReadOnly,
            15 => VmxonInRoot,
            16 => EntryInvalidExecutiveVmcs,
            17 => EntryNonLaunchedExecutiveVmcs,
            18 => EntryExecutiveVmcsNotVmxon,
            19 => VmcallNonClearVmcs,
            20 => VmcallInvalidExitControls,
            22 => VmcallWrongMsegRevision,
            23 => VmxoffDualMonitor,
            24 => VmcallInvalidSmmFeatures,
            25 => EntryInvalidExecutiveControls,
            26 => EntryBlockedByMovSs,
            28 => InvalidInveptInvvpidOperand,
            other => Reserved(other),
        }
    }

    /// The error number as the VMCS holds it.
    pub const fn number(self) -> u32 {
        use VmInstructionError::*;
        match self {
            VmcallInRoot => 1,
            VmclearInvalidAddress => 2,
            VmclearVmxonPointer => 3,
            VmlaunchNonClearVmcs => 4,
            VmresumeNonLaunchedVmcs => 5,
            VmresumeAfterVmxoff => 6,
            EntryInvalidControls => 7,
            EntryInvalidHostState => 8,
            VmptrldInvalidAddress => 9,
            VmptrldVmxonPointer => 10,
            VmptrldWrongRevision => 11,
            UnsupportedComponent => 12,
            VmwriteReadOnly => 13,
            VmxonInRoot => 15,
            EntryInvalidExecutiveVmcs => 16,
            EntryNonLaunchedExecutiveVmcs => 17,
            EntryExecutiveVmcsNotVmxon => 18,
            VmcallNonClearVmcs => 19,
            VmcallInvalidExitControls => 20,
            VmcallWrongMsegRevision => 22,
            VmxoffDualMonitor => 23,
            VmcallInvalidSmmFeatures => 24,
            EntryInvalidExecutiveControls => 25,
            EntryBlockedByMovSs => 26,
            InvalidInveptInvvpidOperand => 28,
            Reserved(n) => n,
        }
    }

    /// The SDM's description of the error.
    pub const fn description(self) -> &'static str {
        use VmInstructionError::*;
        match self {
            VmcallInRoot => "VMCALL executed in VMX root operation",
            VmclearInvalidAddress => "VMCLEAR with invalid physical address",
            VmclearVmxonPointer => "VMCLEAR with VMXON pointer",
            VmlaunchNonClearVmcs => "VMLAUNCH with non-clear VMCS",
            VmresumeNonLaunchedVmcs => "VMRESUME with non-launched VMCS",
            VmresumeAfterVmxoff => "VMRESUME after VMXOFF",
            EntryInvalidControls => "VM entry with invalid control field(s)",
            EntryInvalidHostState => "VM entry with invalid host-state field(s)",
            VmptrldInvalidAddress => "VMPTRLD with invalid physical address",
            VmptrldVmxonPointer => "VMPTRLD with VMXON pointer",
            VmptrldWrongRevision => "VMPTRLD with incorrect VMCS revision identifier",
            UnsupportedComponent => "VMREAD/VMWRITE from/to unsupported VMCS component",
            VmwriteReadOnly => "VMWRITE to read-only VMCS component",
            VmxonInRoot => "VMXON executed in VMX root operation",
            EntryInvalidExecutiveVmcs => "VM entry with invalid executive-VMCS pointer",
            EntryNonLaunchedExecutiveVmcs => "VM entry with non-launched executive VMCS",
            EntryExecutiveVmcsNotVmxon => "VM entry with executive-VMCS pointer not VMXON pointer",
            VmcallNonClearVmcs => "VMCALL with non-clear VMCS",
            VmcallInvalidExitControls => "VMCALL with invalid VM-exit control fields",
            VmcallWrongMsegRevision => "VMCALL with incorrect MSEG revision identifier",
            VmxoffDualMonitor => "VMXOFF under dual-monitor treatment of SMIs and SMM",
            VmcallInvalidSmmFeatures => "VMCALL with invalid SMM-monitor features",
            EntryInvalidExecutiveControls => {
                "VM entry with invalid VM-execution control fields in executive VMCS"
            }
            EntryBlockedByMovSs => "VM entry with events blocked by MOV SS",
            InvalidInveptInvvpidOperand => "invalid operand to INVEPT/INVVPID",
            Reserved(_) => "reserved VM-instruction error number",
        }
    }
}

impl fmt::Display for VmInstructionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VM-instruction error {}: {}",
            self.number(),
            self.description()
        )
    }
}

/// How a VMX instruction failed (SDM 31.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// VMfailInvalid (CF = 1): there is no current VMCS to hold an error number.
    Invalid,
    /// VMfailValid (ZF = 1): the current VMCS's VM-instruction error field says why.
    Valid(VmInstructionError),
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFail::Invalid => f.write_str("VMfailInvalid (no current VMCS)"),
            VmFail::Valid(e) => write!(f, "VMfailValid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn numbers_round_trip_and_gaps_are_reserved() {
        for n in 0..64u32 {
            let e = VmInstructionError::from_number(n);
            assert_eq!(e.number(), n);
            let reserved = matches!(n, 0 | 14 | 21 | 27) || n >= 29;
            assert_eq!(
                matches!(e, VmInstructionError::Reserved(_)),
                reserved,
                "{n}"
            );
        }
        assert_eq!(
            VmInstructionError::from_number(7),
            VmInstructionError::EntryInvalidControls
        );
        assert_eq!(
            VmInstructionError::from_number(13).to_string(),
            "VM-instruction error 13: VMWRITE to read-only VMCS component"
        );
        assert_eq!(
            VmFail::Valid(VmInstructionError::from_number(28)).to_string(),
            "VMfailValid: VM-instruction error 28: invalid operand to INVEPT/INVVPID"
        );
    }
}
