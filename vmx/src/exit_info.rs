//! One VM exit, read from the VMCS and decoded (first tier of exit handling: what is purely
//! architectural). The hypervisor's dispatcher matches on [`Exit`] and decides policy.
//!
//! ```text
//! ExitInfo::read(&vmcs)?  ──▶  ExitInfo (raw fields)  ──▶  ExitInfo::decode()  ──▶  Exit
//! ```

use core::fmt;

use crate::access::VmcsAccess;
use crate::error::VmFail;
use crate::exit::{ExitReason, ExitReasonField};
use crate::fields::{ReadOnly32, ReadOnly64, ReadOnlyNatural};
use crate::qual::{
    CrAccess, DecodeError, EptViolation, InterruptionInfo, InvalidGuestStateDetail,
    IoQualification, MovDr, VmxInstruction, VmxInstructionExit,
};

/// The raw VM-exit information fields of one exit (SDM 25.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit reason field.
    pub reason: u32,
    /// Exit qualification.
    pub qualification: u64,
    /// VM-exit instruction length (meaningful for instruction exits; add to RIP to skip).
    pub instruction_len: u32,
    /// VM-exit instruction information.
    pub instruction_info: u32,
    /// VM-exit interruption information.
    pub interruption_info: u32,
    /// VM-exit interruption error code.
    pub interruption_error_code: u32,
    /// IDT-vectoring information (an event the exit interrupted).
    pub idt_vectoring_info: u32,
    /// Guest-physical address (read for EPT violations and misconfigurations only, else 0).
    pub guest_physical: u64,
    /// Guest-linear address (read for EPT violations only, else 0).
    pub guest_linear: u64,
}

impl ExitInfo {
    /// Reads the exit-information fields of the current VMCS; the guest-physical and
    /// guest-linear addresses only for the exits that define them (reading them on a CPU
    /// without EPT would fail).
    pub fn read<V: VmcsAccess + ?Sized>(vmcs: &V) -> Result<ExitInfo, VmFail> {
        let reason = ReadOnly32::ExitReason.read(vmcs)?;
        let mut info = ExitInfo {
            reason,
            qualification: ReadOnlyNatural::ExitQualification.read(vmcs)?,
            instruction_len: ReadOnly32::ExitInstructionLength.read(vmcs)?,
            instruction_info: ReadOnly32::ExitInstructionInfo.read(vmcs)?,
            interruption_info: ReadOnly32::ExitInterruptionInfo.read(vmcs)?,
            interruption_error_code: ReadOnly32::ExitInterruptionErrorCode.read(vmcs)?,
            idt_vectoring_info: ReadOnly32::IdtVectoringInfo.read(vmcs)?,
            guest_physical: 0,
            guest_linear: 0,
        };
        match ExitReasonField(reason).reason() {
            Ok(ExitReason::EptViolation) => {
                info.guest_physical = ReadOnly64::GuestPhysicalAddress.read(vmcs)?;
                info.guest_linear = ReadOnlyNatural::GuestLinearAddress.read(vmcs)?;
            }
            Ok(ExitReason::EptMisconfiguration) => {
                info.guest_physical = ReadOnly64::GuestPhysicalAddress.read(vmcs)?;
            }
            _ => {}
        }
        Ok(info)
    }

    /// The exit-reason field.
    pub const fn reason_field(&self) -> ExitReasonField {
        ExitReasonField(self.reason)
    }

    /// Decodes the exit. Never panics: an undefined reason or a reserved encoding is an error.
    pub fn decode(&self) -> Result<Exit, ExitDecodeError> {
        use ExitReason as R;
        let field = self.reason_field();
        let reason = field.reason().map_err(ExitDecodeError::UnknownReason)?;
        let q = self.qualification;
        let bad = |e: DecodeError| ExitDecodeError::Field { reason, error: e };
        let vmx = |i: VmxInstruction| {
            VmxInstructionExit::decode(i, self.instruction_info, q)
                .map(Exit::VmxInstruction)
                .map_err(bad)
        };
        Ok(match reason {
            R::ExceptionOrNmi => {
                match InterruptionInfo::decode(self.interruption_info).map_err(bad)? {
                    Some(info) => Exit::ExceptionOrNmi {
                        info,
                        error_code: info
                            .error_code_valid
                            .then_some(self.interruption_error_code),
                        qualification: q,
                    },
                    None => {
                        return Err(bad(DecodeError {
                            what: "interruption information (valid bit clear)",
                            value: 0,
                        }))
                    }
                }
            }
            // With "acknowledge interrupt on exit" the vector is in the interruption information;
            // without it the field's valid bit is clear and the interrupt is still pending.
            R::ExternalInterrupt => Exit::ExternalInterrupt {
                vector: InterruptionInfo::decode(self.interruption_info)
                    .map_err(bad)?
                    .map(|i| i.vector),
            },
            R::TripleFault => Exit::TripleFault,
            R::InitSignal => Exit::Init,
            R::StartupIpi => Exit::Sipi { vector: q as u8 },
            R::InterruptWindow => Exit::InterruptWindow,
            R::NmiWindow => Exit::NmiWindow,
            R::Cpuid => Exit::Cpuid,
            R::Hlt => Exit::Hlt,
            R::Vmcall => Exit::Vmcall,
            R::Rdmsr => Exit::Rdmsr,
            R::Wrmsr => Exit::Wrmsr,
            R::Xsetbv => Exit::Xsetbv,
            R::CrAccess => Exit::CrAccess(CrAccess::decode(q)),
            R::MovDr => Exit::MovDr(MovDr::decode(q)),
            R::IoInstruction => Exit::Io(IoQualification::decode(q).map_err(bad)?),
            R::EptViolation => {
                let v = EptViolation::decode(q);
                Exit::EptViolation {
                    qualification: v,
                    guest_physical: self.guest_physical,
                    guest_linear: v.linear_address_valid.then_some(self.guest_linear),
                }
            }
            R::EptMisconfiguration => Exit::EptMisconfiguration {
                guest_physical: self.guest_physical,
            },
            R::PreemptionTimer => Exit::PreemptionTimer,
            R::InvalidGuestState => Exit::InvalidGuestState(InvalidGuestStateDetail::decode(q)),
            R::MsrLoading => Exit::MsrLoadingFailed { entry: q },
            R::MachineCheckDuringEntry => Exit::MachineCheckDuringEntry,
            R::Vmclear => vmx(VmxInstruction::Vmclear)?,
            R::Vmlaunch => vmx(VmxInstruction::Vmlaunch)?,
            R::Vmptrld => vmx(VmxInstruction::Vmptrld)?,
            R::Vmptrst => vmx(VmxInstruction::Vmptrst)?,
            R::Vmread => vmx(VmxInstruction::Vmread)?,
            R::Vmresume => vmx(VmxInstruction::Vmresume)?,
            R::Vmwrite => vmx(VmxInstruction::Vmwrite)?,
            R::Vmxoff => vmx(VmxInstruction::Vmxoff)?,
            R::Vmxon => vmx(VmxInstruction::Vmxon)?,
            R::Invept => vmx(VmxInstruction::Invept)?,
            R::Invvpid => vmx(VmxInstruction::Invvpid)?,
            R::Vmfunc => vmx(VmxInstruction::Vmfunc)?,
            other => Exit::Other {
                reason: other,
                qualification: q,
            },
        })
    }
}

/// A decoded VM exit (SDM 28.2). Instruction exits that need guest registers to interpret (CPUID
/// leaf in EAX, MSR number in ECX, XCR in ECX, hypercall number in RAX) carry no data: the
/// hypervisor reads its saved guest registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// An exception or NMI (reason 0), with its error code and the qualification (#PF linear
    /// address, #DB bits).
    ExceptionOrNmi {
        /// Vector and type.
        info: InterruptionInfo,
        /// The error code, if the exception has one.
        error_code: Option<u32>,
        /// Exit qualification (#PF: faulting linear address; #DB: debug bits).
        qualification: u64,
    },
    /// External interrupt (1); `vector` is known if it was acknowledged on exit.
    ExternalInterrupt {
        /// The vector, with "acknowledge interrupt on exit".
        vector: Option<u8>,
    },
    /// Triple fault (2).
    TripleFault,
    /// INIT signal (3).
    Init,
    /// Start-up IPI (4) with its vector (exit qualification bits 7:0).
    Sipi {
        /// SIPI vector: the guest starts at vector × 4096.
        vector: u8,
    },
    /// Interrupt window (7).
    InterruptWindow,
    /// NMI window (8).
    NmiWindow,
    /// CPUID (10).
    Cpuid,
    /// HLT (12).
    Hlt,
    /// VMCALL (18): a hypercall.
    Vmcall,
    /// RDMSR (31).
    Rdmsr,
    /// WRMSR (32).
    Wrmsr,
    /// XSETBV (55).
    Xsetbv,
    /// Control-register access (28).
    CrAccess(CrAccess),
    /// MOV DR (29).
    MovDr(MovDr),
    /// I/O instruction (30).
    Io(IoQualification),
    /// EPT violation (48).
    EptViolation {
        /// What was attempted and what the EPT allowed.
        qualification: EptViolation,
        /// The guest-physical address accessed.
        guest_physical: u64,
        /// The guest-linear address, when valid.
        guest_linear: Option<u64>,
    },
    /// EPT misconfiguration (49): a malformed EPT entry on the walk to `guest_physical`.
    EptMisconfiguration {
        /// The guest-physical address accessed.
        guest_physical: u64,
    },
    /// VMX-preemption timer expired (52).
    PreemptionTimer,
    /// VM-entry failure due to invalid guest state (33).
    InvalidGuestState(InvalidGuestStateDetail),
    /// VM-entry failure due to MSR loading (34): `entry` is the 1-based index of the bad entry.
    MsrLoadingFailed {
        /// 1-based index into the VM-entry MSR-load list.
        entry: u64,
    },
    /// VM-entry failure due to a machine-check event (41).
    MachineCheckDuringEntry,
    /// A VMX instruction executed by the guest (19-27, 50, 53, 59).
    VmxInstruction(VmxInstructionExit),
    /// Any other exit, with its raw qualification.
    Other {
        /// The exit reason.
        reason: ExitReason,
        /// The raw exit qualification.
        qualification: u64,
    },
}

/// Why an exit could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitDecodeError {
    /// The basic exit reason is not defined by the SDM.
    UnknownReason(u32),
    /// A field of an otherwise known exit holds a reserved encoding.
    Field {
        /// The exit reason.
        reason: ExitReason,
        /// What was wrong.
        error: DecodeError,
    },
}

impl fmt::Display for ExitDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitDecodeError::UnknownReason(n) => write!(f, "unknown exit reason {n}"),
            ExitDecodeError::Field { reason, error } => write!(f, "{reason}: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::FakeVmcs;
    use crate::qual::{CrAccessType, Gpr, Operand};

    fn exit(reason: u32, qualification: u64) -> ExitInfo {
        ExitInfo {
            reason,
            qualification,
            instruction_len: 3,
            ..ExitInfo::default()
        }
    }

    #[test]
    fn reads_from_a_vmcs_and_decodes_ept_violation() {
        let mut v = FakeVmcs::new();
        v.preset_field(ReadOnly32::ExitReason, 48);
        v.preset_field(ReadOnlyNatural::ExitQualification, 0b1_1000_1010);
        v.preset_field(ReadOnly64::GuestPhysicalAddress, 0x1234_5678);
        v.preset_field(ReadOnlyNatural::GuestLinearAddress, 0xffff_8000_1234_5678);
        let info = ExitInfo::read(&v).unwrap();
        assert_eq!(info.guest_physical, 0x1234_5678);
        match info.decode().unwrap() {
            Exit::EptViolation {
                qualification,
                guest_physical,
                guest_linear,
            } => {
                assert!(qualification.write && !qualification.writable);
                assert_eq!(guest_physical, 0x1234_5678);
                assert_eq!(guest_linear, Some(0xffff_8000_1234_5678));
            }
            other => panic!("{other:?}"),
        }
        // Not an EPT exit: the address fields are not read.
        v.preset_field(ReadOnly32::ExitReason, 10);
        assert_eq!(ExitInfo::read(&v).unwrap().guest_physical, 0);
    }

    #[test]
    fn decodes_simple_exits() {
        assert_eq!(exit(10, 0).decode(), Ok(Exit::Cpuid));
        assert_eq!(exit(12, 0).decode(), Ok(Exit::Hlt));
        assert_eq!(exit(18, 0).decode(), Ok(Exit::Vmcall));
        assert_eq!(exit(31, 0).decode(), Ok(Exit::Rdmsr));
        assert_eq!(exit(32, 0).decode(), Ok(Exit::Wrmsr));
        assert_eq!(exit(55, 0).decode(), Ok(Exit::Xsetbv));
        assert_eq!(exit(2, 0).decode(), Ok(Exit::TripleFault));
        assert_eq!(exit(3, 0).decode(), Ok(Exit::Init));
        assert_eq!(exit(4, 0x9a).decode(), Ok(Exit::Sipi { vector: 0x9a }));
        assert_eq!(exit(52, 0).decode(), Ok(Exit::PreemptionTimer));
        assert_eq!(
            exit(49, 0).decode(),
            Ok(Exit::EptMisconfiguration { guest_physical: 0 })
        );
        assert_eq!(
            exit(28, 0x303).decode(),
            Ok(Exit::CrAccess(CrAccess {
                cr: 3,
                access: CrAccessType::MovToCr(Gpr::Rbx)
            }))
        );
        assert!(matches!(exit(30, 0x03f8_0000).decode(), Ok(Exit::Io(q)) if q.port == 0x3f8));
        assert_eq!(
            exit(16, 7).decode(),
            Ok(Exit::Other {
                reason: ExitReason::Rdtsc,
                qualification: 7
            })
        );
    }

    #[test]
    fn entry_failures() {
        assert_eq!(
            exit(0x8000_0021, 4).decode(),
            Ok(Exit::InvalidGuestState(
                InvalidGuestStateDetail::InvalidVmcsLinkPointer
            ))
        );
        assert_eq!(
            exit(0x8000_0022, 2).decode(),
            Ok(Exit::MsrLoadingFailed { entry: 2 })
        );
        assert!(exit(0x8000_0021, 0).reason_field().entry_failure());
    }

    #[test]
    fn external_interrupt_with_and_without_ack() {
        let mut e = exit(1, 0);
        assert_eq!(e.decode(), Ok(Exit::ExternalInterrupt { vector: None }));
        e.interruption_info = 0x8000_0030;
        assert_eq!(
            e.decode(),
            Ok(Exit::ExternalInterrupt { vector: Some(0x30) })
        );
    }

    #[test]
    fn exception_with_error_code() {
        let mut e = exit(0, 0xdead_b000);
        e.interruption_info = 0x8000_0B0E;
        e.interruption_error_code = 2;
        match e.decode().unwrap() {
            Exit::ExceptionOrNmi {
                info,
                error_code,
                qualification,
            } => {
                assert_eq!(
                    (info.vector, error_code, qualification),
                    (14, Some(2), 0xdead_b000)
                );
            }
            other => panic!("{other:?}"),
        }
        e.interruption_info = 0;
        assert!(matches!(
            e.decode(),
            Err(ExitDecodeError::Field {
                reason: ExitReason::ExceptionOrNmi,
                ..
            })
        ));
    }

    #[test]
    fn every_guest_vmx_instruction_is_decoded() {
        // 64-bit address size, DS, base RAX, no index.
        let mem_info = (2 << 7) | (3 << 15) | (1 << 22);
        for (reason, instr) in [
            (19, VmxInstruction::Vmclear),
            (20, VmxInstruction::Vmlaunch),
            (21, VmxInstruction::Vmptrld),
            (22, VmxInstruction::Vmptrst),
            (23, VmxInstruction::Vmread),
            (24, VmxInstruction::Vmresume),
            (25, VmxInstruction::Vmwrite),
            (26, VmxInstruction::Vmxoff),
            (27, VmxInstruction::Vmxon),
            (50, VmxInstruction::Invept),
            (53, VmxInstruction::Invvpid),
            (59, VmxInstruction::Vmfunc),
        ] {
            let mut e = exit(reason, 0x40);
            e.instruction_info = mem_info;
            match e.decode() {
                Ok(Exit::VmxInstruction(x)) => {
                    assert_eq!(x.instruction, instr);
                    if let Some(Operand::Memory(m)) = x.operand {
                        assert_eq!((m.base, m.displacement), (Some(Gpr::Rax), 0x40));
                    }
                }
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn hostile_values_never_panic() {
        // Every reason number with arbitrary qualification and information bits decodes or
        // returns an error.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut unknown = 0;
        for reason in 0..0x1_0000u32 {
            let e = ExitInfo {
                reason: reason | ((next() as u32) & 0xF800_0000),
                qualification: next(),
                instruction_len: next() as u32,
                instruction_info: next() as u32,
                interruption_info: next() as u32,
                interruption_error_code: next() as u32,
                idt_vectoring_info: next() as u32,
                guest_physical: next(),
                guest_linear: next(),
            };
            if let Err(ExitDecodeError::UnknownReason(_)) = e.decode() {
                unknown += 1;
            }
        }
        assert_eq!(unknown, 0x1_0000 - ExitReason::ALL.len());
    }
}
