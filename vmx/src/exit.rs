//! Exit reasons (SDM Vol. 3D, appendix C "VMX Basic Exit Reasons") and the exit-reason field
//! (SDM Vol. 3C, 25.9.1).

use core::fmt;

macro_rules! exit_reasons {
    ($( $(#[$m:meta])* $var:ident = $n:literal, $desc:literal; )*) => {
        /// A basic exit reason (bits 15:0 of the exit-reason field), SDM appendix C, table C-1.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum ExitReason {
            $( $(#[$m])* #[doc = $desc] $var = $n, )*
        }

        impl ExitReason {
            /// Every basic exit reason the SDM defines.
            pub const ALL: &'static [ExitReason] = &[$(ExitReason::$var),*];

            /// The SDM's description of the exit reason.
            pub const fn description(self) -> &'static str {
                match self {
                    $( ExitReason::$var => $desc, )*
                }
            }
        }

        impl TryFrom<u32> for ExitReason {
            type Error = u32;

            /// Decodes a basic exit reason number; an undefined number is returned as the error.
            fn try_from(n: u32) -> Result<Self, u32> {
                match n {
                    $( $n => Ok(ExitReason::$var), )*
                    other => Err(other),
                }
            }
        }
    };
}

exit_reasons! {
    ExceptionOrNmi = 0, "exception or non-maskable interrupt";
    ExternalInterrupt = 1, "external interrupt";
    TripleFault = 2, "triple fault";
    InitSignal = 3, "INIT signal";
    StartupIpi = 4, "start-up IPI (SIPI)";
    IoSmi = 5, "I/O system-management interrupt";
    OtherSmi = 6, "other SMI";
    InterruptWindow = 7, "interrupt window";
    NmiWindow = 8, "NMI window";
    TaskSwitch = 9, "task switch";
    Cpuid = 10, "CPUID";
    Getsec = 11, "GETSEC";
    Hlt = 12, "HLT";
    Invd = 13, "INVD";
    Invlpg = 14, "INVLPG";
    Rdpmc = 15, "RDPMC";
    Rdtsc = 16, "RDTSC";
    Rsm = 17, "RSM";
    Vmcall = 18, "VMCALL";
    Vmclear = 19, "VMCLEAR";
    Vmlaunch = 20, "VMLAUNCH";
    Vmptrld = 21, "VMPTRLD";
    Vmptrst = 22, "VMPTRST";
    Vmread = 23, "VMREAD";
    Vmresume = 24, "VMRESUME";
    Vmwrite = 25, "VMWRITE";
    Vmxoff = 26, "VMXOFF";
    Vmxon = 27, "VMXON";
    CrAccess = 28, "control-register access";
    MovDr = 29, "MOV DR";
    IoInstruction = 30, "I/O instruction";
    Rdmsr = 31, "RDMSR";
    Wrmsr = 32, "WRMSR";
    InvalidGuestState = 33, "VM-entry failure due to invalid guest state";
    MsrLoading = 34, "VM-entry failure due to MSR loading";
    Mwait = 36, "MWAIT";
    MonitorTrapFlag = 37, "monitor trap flag";
    Monitor = 39, "MONITOR";
    Pause = 40, "PAUSE";
    MachineCheckDuringEntry = 41, "VM-entry failure due to machine-check event";
    TprBelowThreshold = 43, "TPR below threshold";
    ApicAccess = 44, "APIC access";
    VirtualizedEoi = 45, "virtualized EOI";
    GdtrIdtrAccess = 46, "access to GDTR or IDTR";
    LdtrTrAccess = 47, "access to LDTR or TR";
    EptViolation = 48, "EPT violation";
    EptMisconfiguration = 49, "EPT misconfiguration";
    Invept = 50, "INVEPT";
    Rdtscp = 51, "RDTSCP";
    PreemptionTimer = 52, "VMX-preemption timer expired";
    Invvpid = 53, "INVVPID";
    Wbinvd = 54, "WBINVD or WBNOINVD";
    Xsetbv = 55, "XSETBV";
    ApicWrite = 56, "APIC write";
    Rdrand = 57, "RDRAND";
    Invpcid = 58, "INVPCID";
    Vmfunc = 59, "VMFUNC";
    Encls = 60, "ENCLS";
    Rdseed = 61, "RDSEED";
    PmlFull = 62, "page-modification log full";
    Xsaves = 63, "XSAVES";
    Xrstors = 64, "XRSTORS";
    Pconfig = 65, "PCONFIG";
    SppEvent = 66, "SPP-related event";
    Umwait = 67, "UMWAIT";
    Tpause = 68, "TPAUSE";
    Loadiwkey = 69, "LOADIWKEY";
    Enclv = 70, "ENCLV";
    EnqcmdPasidFailure = 72, "ENQCMD PASID translation failure";
    EnqcmdsPasidFailure = 73, "ENQCMDS PASID translation failure";
    BusLock = 74, "bus lock";
    InstructionTimeout = 75, "instruction timeout";
    Seamcall = 76, "SEAMCALL";
    Tdcall = 77, "TDCALL";
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.description(), *self as u16)
    }
}

/// The 32-bit exit-reason field (SDM 25.9.1, table 25-17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReasonField(pub u32);

impl ExitReasonField {
    /// Bits 15:0: the basic exit reason number.
    pub const fn basic(self) -> u16 {
        self.0 as u16
    }

    /// The basic exit reason, or the undefined number as the error.
    pub fn reason(self) -> Result<ExitReason, u32> {
        ExitReason::try_from(u32::from(self.basic()))
    }

    /// Bit 27: the exit happened in enclave mode.
    pub const fn enclave_mode(self) -> bool {
        self.0 & (1 << 27) != 0
    }

    /// Bit 28: a monitor trap flag exit was pending.
    pub const fn pending_mtf(self) -> bool {
        self.0 & (1 << 28) != 0
    }

    /// Bit 29: the exit came from VMX root operation (SMM dual-monitor).
    pub const fn from_root(self) -> bool {
        self.0 & (1 << 29) != 0
    }

    /// Bit 31: VM entry failed (reasons 33, 34, 41).
    pub const fn entry_failure(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_from_round_trips_and_rejects_gaps() {
        let mut defined = 0;
        for n in 0..=100u32 {
            match ExitReason::try_from(n) {
                Ok(r) => {
                    assert_eq!(r as u32, n);
                    defined += 1;
                }
                Err(e) => {
                    assert_eq!(e, n);
                    assert!(
                        matches!(n, 35 | 38 | 42 | 71 | 78..),
                        "{n} should be defined"
                    );
                }
            }
        }
        assert_eq!(defined, ExitReason::ALL.len());
        assert_eq!(ExitReason::try_from(48), Ok(ExitReason::EptViolation));
        assert_eq!(ExitReason::try_from(u32::MAX), Err(u32::MAX));
    }

    #[test]
    fn reason_field_bits() {
        let f = ExitReasonField(0x8000_0021);
        assert!(f.entry_failure());
        assert_eq!(f.reason(), Ok(ExitReason::InvalidGuestState));
        let f = ExitReasonField((1 << 28) | 0xFFFF);
        assert!(f.pending_mtf() && !f.entry_failure());
        assert_eq!(f.reason(), Err(0xFFFF));
    }
}
