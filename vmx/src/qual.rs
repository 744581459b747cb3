//! Exit qualifications and the other VM-exit information fields, decoded into plain structs
//! (SDM Vol. 3C, 28.2 "Recording VM-Exit Information"; 25.9 "VM-Exit Information Fields").
//! Every decoder is total: reserved encodings come back as [`DecodeError`], never a panic.

use core::fmt;

/// A general-purpose register as numbered in exit qualifications and instruction information
/// (SDM table 28-3: 0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI,
/// 8-15 = R8-R15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Gpr {
    /// Decodes the low four bits of `n` (every 4-bit value names a register).
    pub const fn from_low_bits(n: u64) -> Gpr {
        use Gpr::*;
        const ALL: [Gpr; 16] = [
            Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi, R8, R9, R10, R11, R12, R13, R14, R15,
        ];
        ALL[(n & 0xF) as usize]
    }
}

/// A reserved or undefined encoding met while decoding VM-exit information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Which field or sub-field.
    pub what: &'static str,
    /// The offending raw value.
    pub value: u64,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reserved encoding {:#x} in {}", self.value, self.what)
    }
}

const fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 != 0
}

const fn bits(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1 << width) - 1)
}

// ---------------------------------------------------------------------------------------------
// Control-register access (SDM table 28-3)

/// The kind of control-register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessType {
    /// MOV to CR from a register.
    MovToCr(Gpr),
    /// MOV from CR into a register.
    MovFromCr(Gpr),
    /// CLTS.
    Clts,
    /// LMSW with its 16-bit source operand; `memory_operand` if it came from memory.
    Lmsw {
        /// The LMSW source data (bits 31:16).
        source: u16,
        /// The operand was in memory (bit 6).
        memory_operand: bool,
    },
}

/// Exit qualification for control-register accesses (SDM 28.2.1, table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// The control register (0, 3, 4 or 8; bits 3:0).
    pub cr: u8,
    /// What the instruction did.
    pub access: CrAccessType,
}

impl CrAccess {
    /// Decodes the exit qualification.
    pub const fn decode(q: u64) -> CrAccess {
        let gpr = Gpr::from_low_bits(bits(q, 8, 4));
        let access = match bits(q, 4, 2) {
            0 => CrAccessType::MovToCr(gpr),
            1 => CrAccessType::MovFromCr(gpr),
            2 => CrAccessType::Clts,
            _ => CrAccessType::Lmsw {
                source: bits(q, 16, 16) as u16,
                memory_operand: bit(q, 6),
            },
        };
        CrAccess {
            cr: bits(q, 0, 4) as u8,
            access,
        }
    }
}

/// Exit qualification for MOV DR (SDM 28.2.1, table 28-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovDr {
    /// The debug register (bits 2:0).
    pub dr: u8,
    /// MOV from DR (true) or to DR (false) (bit 4).
    pub from_dr: bool,
    /// The general-purpose register (bits 11:8).
    pub gpr: Gpr,
}

impl MovDr {
    /// Decodes the exit qualification.
    pub const fn decode(q: u64) -> MovDr {
        MovDr {
            dr: bits(q, 0, 3) as u8,
            from_dr: bit(q, 4),
            gpr: Gpr::from_low_bits(bits(q, 8, 4)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// I/O instructions (SDM table 28-5)

/// Exit qualification for I/O instructions (SDM 28.2.1, table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification {
    /// Access size in bytes: 1, 2 or 4 (bits 2:0).
    pub size: u8,
    /// IN/INS (true) or OUT/OUTS (false) (bit 3).
    pub input: bool,
    /// INS/OUTS (bit 4).
    pub string: bool,
    /// REP prefixed (bit 5).
    pub rep: bool,
    /// The port came from an immediate operand rather than DX (bit 6).
    pub immediate: bool,
    /// The port number (bits 31:16).
    pub port: u16,
}

impl IoQualification {
    /// Decodes the exit qualification; size encoding 2 and 4-7 are reserved.
    pub const fn decode(q: u64) -> Result<IoQualification, DecodeError> {
        let size = match bits(q, 0, 3) {
            0 => 1,
            1 => 2,
            3 => 4,
            other => {
                return Err(DecodeError {
                    what: "I/O access size",
                    value: other,
                })
            }
        };
        Ok(IoQualification {
            size,
            input: bit(q, 3),
            string: bit(q, 4),
            rep: bit(q, 5),
            immediate: bit(q, 6),
            port: bits(q, 16, 16) as u16,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// EPT violations (SDM table 28-7)

/// Exit qualification for EPT violations (SDM 28.2.1, table 28-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolation {
    /// The access was a data read (bit 0).
    pub read: bool,
    /// The access was a data write (bit 1).
    pub write: bool,
    /// The access was an instruction fetch (bit 2).
    pub fetch: bool,
    /// The guest-physical address was readable (AND of the read bits of the walk) (bit 3).
    pub readable: bool,
    /// ... writable (bit 4).
    pub writable: bool,
    /// ... executable (supervisor-mode executable with mode-based control) (bit 5).
    pub executable: bool,
    /// ... user-mode executable (with mode-based execute control) (bit 6).
    pub user_executable: bool,
    /// The guest-linear-address field is valid (bit 7).
    pub linear_address_valid: bool,
    /// With bit 7: the access was to the translated linear address (true) or to a guest
    /// paging-structure entry (false) (bit 8).
    pub translated_access: bool,
    /// NMI unblocking due to IRET (bit 12).
    pub nmi_unblocking: bool,
    /// The access was a shadow-stack access (bit 13).
    pub shadow_stack: bool,
    /// The access was asynchronous to instruction execution (bit 16).
    pub asynchronous: bool,
}

impl EptViolation {
    /// Decodes the exit qualification.
    pub const fn decode(q: u64) -> EptViolation {
        EptViolation {
            read: bit(q, 0),
            write: bit(q, 1),
            fetch: bit(q, 2),
            readable: bit(q, 3),
            writable: bit(q, 4),
            executable: bit(q, 5),
            user_executable: bit(q, 6),
            linear_address_valid: bit(q, 7),
            translated_access: bit(q, 7) && bit(q, 8),
            nmi_unblocking: bit(q, 12),
            shadow_stack: bit(q, 13),
            asynchronous: bit(q, 16),
        }
    }

    /// The guest-physical address was not mapped at all (no read, write or execute permission).
    pub const fn not_present(&self) -> bool {
        !self.readable && !self.writable && !self.executable
    }
}

// ---------------------------------------------------------------------------------------------
// VM-entry failures (SDM 28.8 / 27.8 "VM-Entry Failures During or After Loading Guest State")

/// Exit qualification of a VM-entry failure due to invalid guest state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidGuestStateDetail {
    /// 0: no further detail.
    Unspecified,
    /// 2: loading the PDPTEs failed.
    PdpteLoad,
    /// 3: NMI injection while blocking by STI.
    NmiBlockedBySti,
    /// 4: invalid VMCS link pointer.
    InvalidVmcsLinkPointer,
    /// Any other value.
    Other(u64),
}

impl InvalidGuestStateDetail {
    /// Decodes the exit qualification.
    pub const fn decode(q: u64) -> Self {
        match q {
            0 => Self::Unspecified,
            2 => Self::PdpteLoad,
            3 => Self::NmiBlockedBySti,
            4 => Self::InvalidVmcsLinkPointer,
            other => Self::Other(other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Interruption information (SDM 25.9.2, table 25-19; also IDT-vectoring information 25.9.3)

/// Event type in interruption information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptionType {
    /// 0: external interrupt.
    ExternalInterrupt,
    /// 2: non-maskable interrupt.
    Nmi,
    /// 3: hardware exception.
    HardwareException,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt,
    /// 5: privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// 6: software exception (INT3, INTO).
    SoftwareException,
    /// 7: other event.
    OtherEvent,
}

/// VM-exit interruption information or IDT-vectoring information (SDM 25.9.2, 25.9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptionInfo {
    /// Vector (bits 7:0).
    pub vector: u8,
    /// Event type (bits 10:8).
    pub kind: InterruptionType,
    /// An error code was delivered/recorded (bit 11).
    pub error_code_valid: bool,
    /// NMI unblocking due to IRET (bit 12).
    pub nmi_unblocking: bool,
}

impl InterruptionInfo {
    /// Decodes the field: `Ok(None)` when the valid bit (31) is clear; type 1 is reserved.
    pub const fn decode(v: u32) -> Result<Option<InterruptionInfo>, DecodeError> {
        let v = v as u64;
        if !bit(v, 31) {
            return Ok(None);
        }
        let kind = match bits(v, 8, 3) {
            0 => InterruptionType::ExternalInterrupt,
            2 => InterruptionType::Nmi,
            3 => InterruptionType::HardwareException,
            4 => InterruptionType::SoftwareInterrupt,
            5 => InterruptionType::PrivilegedSoftwareException,
            6 => InterruptionType::SoftwareException,
            7 => InterruptionType::OtherEvent,
            other => {
                return Err(DecodeError {
                    what: "interruption type",
                    value: other,
                })
            }
        };
        Ok(Some(InterruptionInfo {
            vector: bits(v, 0, 8) as u8,
            kind,
            error_code_valid: bit(v, 11),
            nmi_unblocking: bit(v, 12),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// VM-exit instruction information for VMX instructions (SDM 28.2.5, tables 28-10, 28-11, 28-13)

/// Address size of a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSize {
    /// 16-bit.
    Bits16,
    /// 32-bit.
    Bits32,
    /// 64-bit.
    Bits64,
}

/// Segment register of a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Segment {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// A memory operand: `segment:[base + index * scale + displacement]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryOperand {
    /// The segment register.
    pub segment: Segment,
    /// The base register, if any.
    pub base: Option<Gpr>,
    /// The index register, if any.
    pub index: Option<Gpr>,
    /// The index scale: 1, 2, 4 or 8.
    pub scale: u8,
    /// Address size.
    pub address_size: AddressSize,
    /// The displacement (from the exit qualification, sign-extended).
    pub displacement: u64,
}

/// The operand of a VMX instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A register operand.
    Register(Gpr),
    /// A memory operand.
    Memory(MemoryOperand),
}

/// The VMX instructions a guest can execute (each causes a VM exit in VMX non-root operation,
/// SDM 26.1.2), except VMCALL, which is a hypercall and decoded separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum VmxInstruction {
    Vmclear,
    Vmlaunch,
    Vmptrld,
    Vmptrst,
    Vmread,
    Vmresume,
    Vmwrite,
    Vmxoff,
    Vmxon,
    Invept,
    Invvpid,
    Vmfunc,
}

/// A guest's VMX instruction with its decoded operands (SDM 28.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxInstructionExit {
    /// Which instruction.
    pub instruction: VmxInstruction,
    /// The main operand: the memory operand of VMCLEAR/VMPTRLD/VMPTRST/VMXON/INVEPT/INVVPID,
    /// the destination of VMREAD, the source of VMWRITE; `None` for operand-less instructions.
    pub operand: Option<Operand>,
    /// The second register: the field-encoding register of VMREAD/VMWRITE, the type register of
    /// INVEPT/INVVPID.
    pub reg2: Option<Gpr>,
}

fn memory_operand(info: u64, displacement: u64) -> Result<MemoryOperand, DecodeError> {
    let address_size = match bits(info, 7, 3) {
        0 => AddressSize::Bits16,
        1 => AddressSize::Bits32,
        2 => AddressSize::Bits64,
        other => {
            return Err(DecodeError {
                what: "instruction-information address size",
                value: other,
            })
        }
    };
    let segment = match bits(info, 15, 3) {
        0 => Segment::Es,
        1 => Segment::Cs,
        2 => Segment::Ss,
        3 => Segment::Ds,
        4 => Segment::Fs,
        5 => Segment::Gs,
        other => {
            return Err(DecodeError {
                what: "instruction-information segment",
                value: other,
            })
        }
    };
    Ok(MemoryOperand {
        segment,
        index: (!bit(info, 22)).then(|| Gpr::from_low_bits(bits(info, 18, 4))),
        base: (!bit(info, 27)).then(|| Gpr::from_low_bits(bits(info, 23, 4))),
        scale: 1 << bits(info, 0, 2),
        address_size,
        displacement,
    })
}

impl VmxInstructionExit {
    /// Decodes the VM-exit instruction-information field `info` and exit qualification
    /// `qualification` (the displacement of a memory operand) for `instruction`.
    pub fn decode(
        instruction: VmxInstruction,
        info: u32,
        qualification: u64,
    ) -> Result<Self, DecodeError> {
        use VmxInstruction::*;
        let info = u64::from(info);
        let reg2 = Gpr::from_low_bits(bits(info, 28, 4));
        let (operand, reg2) = match instruction {
            Vmlaunch | Vmresume | Vmxoff | Vmfunc => (None, None),
            // Table 28-10: memory operand only.
            Vmclear | Vmptrld | Vmptrst | Vmxon => (
                Some(Operand::Memory(memory_operand(info, qualification)?)),
                None,
            ),
            // Table 28-11: memory descriptor, type in reg2.
            Invept | Invvpid => (
                Some(Operand::Memory(memory_operand(info, qualification)?)),
                Some(reg2),
            ),
            // Table 28-13: register or memory operand (bit 10), field encoding in reg2.
            Vmread | Vmwrite => {
                let op = if bit(info, 10) {
                    Operand::Register(Gpr::from_low_bits(bits(info, 3, 4)))
                } else {
                    Operand::Memory(memory_operand(info, qualification)?)
                };
                (Some(op), Some(reg2))
            }
        };
        Ok(VmxInstructionExit {
            instruction,
            operand,
            reg2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr_access() {
        // mov cr3, rbx: CR 3, type 0, GPR 3.
        assert_eq!(
            CrAccess::decode(0x303),
            CrAccess {
                cr: 3,
                access: CrAccessType::MovToCr(Gpr::Rbx)
            }
        );
        // mov r12, cr8: CR 8, type 1, GPR 12.
        assert_eq!(
            CrAccess::decode(0xC18),
            CrAccess {
                cr: 8,
                access: CrAccessType::MovFromCr(Gpr::R12)
            }
        );
        assert_eq!(CrAccess::decode(0x20).access, CrAccessType::Clts);
        // lmsw [mem] with source 0x0011.
        assert_eq!(
            CrAccess::decode(0x0011_0070),
            CrAccess {
                cr: 0,
                access: CrAccessType::Lmsw {
                    source: 0x11,
                    memory_operand: true
                }
            }
        );
    }

    #[test]
    fn mov_dr() {
        assert_eq!(
            MovDr::decode(0x0717),
            MovDr {
                dr: 7,
                from_dr: true,
                gpr: Gpr::Rdi
            }
        );
        assert_eq!(
            MovDr::decode(0x0002),
            MovDr {
                dr: 2,
                from_dr: false,
                gpr: Gpr::Rax
            }
        );
    }

    #[test]
    fn io() {
        // out dx, al to 0x3f8.
        assert_eq!(
            IoQualification::decode(0x03f8_0000),
            Ok(IoQualification {
                size: 1,
                input: false,
                string: false,
                rep: false,
                immediate: false,
                port: 0x3f8
            })
        );
        // rep insd from port 0x1f0.
        let q = IoQualification::decode(0x01f0_0000 | 3 | (1 << 3) | (1 << 4) | (1 << 5)).unwrap();
        assert_eq!(
            (q.size, q.input, q.string, q.rep, q.port),
            (4, true, true, true, 0x1f0)
        );
        // in ax, 0x60 (immediate).
        let q = IoQualification::decode(0x0060_0000 | 1 | (1 << 3) | (1 << 6)).unwrap();
        assert_eq!((q.size, q.immediate, q.port), (2, true, 0x60));
        for bad in [2u64, 4, 5, 6, 7] {
            assert_eq!(
                IoQualification::decode(bad),
                Err(DecodeError {
                    what: "I/O access size",
                    value: bad
                })
            );
        }
    }

    #[test]
    fn ept_violation() {
        // Write to a read-only page through a linear address.
        let v = EptViolation::decode(0b1_1000_1010);
        assert!(v.write && !v.read && !v.fetch);
        assert!(v.readable && !v.writable && !v.executable);
        assert!(v.linear_address_valid && v.translated_access && !v.not_present());
        // Fetch from an unmapped page, no linear address; bit 8 ignored without bit 7.
        let v = EptViolation::decode(0b1_0000_0100);
        assert!(v.fetch && v.not_present() && !v.linear_address_valid && !v.translated_access);
        assert!(EptViolation::decode(1 << 12).nmi_unblocking);
        assert!(EptViolation::decode(1 << 16).asynchronous);
    }

    #[test]
    fn interruption_info() {
        assert_eq!(InterruptionInfo::decode(0x20), Ok(None), "valid bit clear");
        assert_eq!(
            InterruptionInfo::decode(0x8000_0020),
            Ok(Some(InterruptionInfo {
                vector: 0x20,
                kind: InterruptionType::ExternalInterrupt,
                error_code_valid: false,
                nmi_unblocking: false
            }))
        );
        // #PF: hardware exception 14 with error code.
        let i = InterruptionInfo::decode(0x8000_0B0E).unwrap().unwrap();
        assert_eq!(
            (i.vector, i.kind, i.error_code_valid),
            (14, InterruptionType::HardwareException, true)
        );
        assert_eq!(
            InterruptionInfo::decode(0x8000_0100),
            Err(DecodeError {
                what: "interruption type",
                value: 1
            })
        );
    }

    #[test]
    fn invalid_guest_state_detail() {
        assert_eq!(
            InvalidGuestStateDetail::decode(2),
            InvalidGuestStateDetail::PdpteLoad
        );
        assert_eq!(
            InvalidGuestStateDetail::decode(4),
            InvalidGuestStateDetail::InvalidVmcsLinkPointer
        );
        assert_eq!(
            InvalidGuestStateDetail::decode(9),
            InvalidGuestStateDetail::Other(9)
        );
    }

    /// Builds instruction information from its parts (SDM table 28-13 layout).
    #[allow(clippy::too_many_arguments)]
    fn info(
        scale: u32,
        reg1: u32,
        asz: u32,
        reg: bool,
        seg: u32,
        index: Option<u32>,
        base: Option<u32>,
        reg2: u32,
    ) -> u32 {
        scale
            | reg1 << 3
            | asz << 7
            | (reg as u32) << 10
            | seg << 15
            | index.unwrap_or(0) << 18
            | (index.is_none() as u32) << 22
            | base.unwrap_or(0) << 23
            | (base.is_none() as u32) << 27
            | reg2 << 28
    }

    #[test]
    fn vmx_instruction_operands() {
        // vmptrld [rax + rcx*8 + 0x10] in 64-bit mode, DS.
        let e = VmxInstructionExit::decode(
            VmxInstruction::Vmptrld,
            info(3, 0, 2, false, 3, Some(1), Some(0), 0),
            0x10,
        )
        .unwrap();
        assert_eq!(
            e.operand,
            Some(Operand::Memory(MemoryOperand {
                segment: Segment::Ds,
                base: Some(Gpr::Rax),
                index: Some(Gpr::Rcx),
                scale: 8,
                address_size: AddressSize::Bits64,
                displacement: 0x10
            }))
        );
        assert_eq!(e.reg2, None);
        // vmread rbx, rdx (register destination RBX, field in RDX).
        let e = VmxInstructionExit::decode(
            VmxInstruction::Vmread,
            info(0, 3, 2, true, 0, None, None, 2),
            0,
        )
        .unwrap();
        assert_eq!(e.operand, Some(Operand::Register(Gpr::Rbx)));
        assert_eq!(e.reg2, Some(Gpr::Rdx));
        // vmwrite r15, [rsp] (memory source, no index), field in R15.
        let e = VmxInstructionExit::decode(
            VmxInstruction::Vmwrite,
            info(0, 0, 2, false, 2, None, Some(4), 15),
            0,
        )
        .unwrap();
        match e.operand {
            Some(Operand::Memory(m)) => assert_eq!(
                (m.base, m.index, m.segment),
                (Some(Gpr::Rsp), None, Segment::Ss)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.reg2, Some(Gpr::R15));
        // invept rsi, [rdi]: type in RSI.
        let e = VmxInstructionExit::decode(
            VmxInstruction::Invept,
            info(0, 0, 2, false, 3, None, Some(7), 6),
            0,
        )
        .unwrap();
        assert_eq!(e.reg2, Some(Gpr::Rsi));
        // Operand-less instructions ignore the field.
        let e = VmxInstructionExit::decode(VmxInstruction::Vmlaunch, u32::MAX, u64::MAX).unwrap();
        assert_eq!((e.operand, e.reg2), (None, None));
        // Reserved address size and segment encodings are errors.
        assert!(VmxInstructionExit::decode(
            VmxInstruction::Vmxon,
            info(0, 0, 3, false, 3, None, None, 0),
            0
        )
        .is_err());
        assert!(VmxInstructionExit::decode(
            VmxInstruction::Vmclear,
            info(0, 0, 2, false, 6, None, None, 0),
            0
        )
        .is_err());
    }
}
