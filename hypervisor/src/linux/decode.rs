//! Decoding the instruction behind an MMIO exit (an EPT violation or APIC-access exit on a page
//! the hypervisor emulates: the xAPIC page, the tensor function's hypercall page).
//!
//! VMX reports the guest-physical address but not what the instruction does with it (Intel SDM
//! Vol. 3C 28.2.1: the exit qualification says read or write, not the width or register), so the
//! hypervisor fetches the bytes at the guest RIP and decodes them with `iced-x86`. Only plain
//! moves are emulated — what Linux's `readl`/`writel` (`mov (%reg),%eax`, `mov %eax,(%reg)`),
//! the APIC accessors, and our SDK's volatile accesses compile to:
//!
//! | form | opcode (SDM Vol. 2) | result |
//! |---|---|---|
//! | `MOV r/m, r` | 88, 89 | [`MmioOp::Store`] from a register |
//! | `MOV r, r/m` | 8A, 8B | [`MmioOp::Load`] |
//! | `MOV r/m, imm` | C6 /0, C7 /0 (REX.W: imm32 sign-extended) | [`MmioOp::Store`] of an immediate |
//! | `MOVZX` / `MOVSX` / `MOVSXD` | 0F B6/B7, 0F BE/BF, 63 | [`MmioOp::Load`] zero/sign-extended |
//! | `MOV AL/AX/EAX/RAX, moffs` and back | A0–A3 | load / store of RAX |
//!
//! Everything else is refused with a typed [`DecodeError`]: string instructions (their count
//! and direction would have to be emulated), locked read-modify-writes, SSE/AVX moves, any other
//! instruction, and a register operand where memory was expected.

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind, Register,
};

/// Longest x86 instruction (SDM Vol. 2 2.3.11).
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// A general-purpose register: `index` in the SDM's encoding order (0 = RAX, 1 = RCX, 2 = RDX,
/// 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8..15 = R8..R15). `high_byte` selects AH, CH, DH
/// or BH (bits 15:8 of registers 0..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpr {
    pub index: u8,
    pub high_byte: bool,
}

impl Gpr {
    pub const RAX: Gpr = Gpr {
        index: 0,
        high_byte: false,
    };

    /// The iced register's GPR, or `None` for a non-GPR register. Relies on iced's register
    /// order: AL..R15L (1..=20, with AH..BH at 5..=8), AX..R15W, EAX..R15D, RAX..R15.
    fn from_iced(r: Register) -> Option<Gpr> {
        let n = r as u32;
        let rel = |base: Register| (n - base as u32) as u8;
        Some(match n {
            x if (Register::AL as u32..=Register::BL as u32).contains(&x) => Gpr {
                index: rel(Register::AL),
                high_byte: false,
            },
            x if (Register::AH as u32..=Register::BH as u32).contains(&x) => Gpr {
                index: rel(Register::AH),
                high_byte: true,
            },
            x if (Register::SPL as u32..=Register::R15L as u32).contains(&x) => Gpr {
                index: rel(Register::SPL) + 4,
                high_byte: false,
            },
            x if (Register::AX as u32..=Register::R15W as u32).contains(&x) => Gpr {
                index: rel(Register::AX),
                high_byte: false,
            },
            x if (Register::EAX as u32..=Register::R15D as u32).contains(&x) => Gpr {
                index: rel(Register::EAX),
                high_byte: false,
            },
            x if (Register::RAX as u32..=Register::R15 as u32).contains(&x) => Gpr {
                index: rel(Register::RAX),
                high_byte: false,
            },
            _ => return None,
        })
    }
}

/// How a loaded value widens into the destination register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// Plain `MOV`: the value has the destination's width.
    None,
    Zero,
    Sign,
}

/// What a decoded MMIO instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOp {
    /// Read `size` bytes from the device into `dst`, which is `dst_width` bytes wide.
    Load {
        size: u8,
        dst: Gpr,
        dst_width: u8,
        extend: Extend,
    },
    /// Write `size` bytes to the device.
    Store { size: u8, src: StoreSource },
}

/// Where a stored value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreSource {
    Reg(Gpr),
    /// The immediate, already sign-extended to 64 bits as the instruction defines it.
    Imm(u64),
}

/// A decoded MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    pub op: MmioOp,
    /// Instruction length: RIP advances by this much once emulated.
    pub len: u8,
}

/// Why an instruction is not emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end inside the instruction (fetch more, up to [`MAX_INSTRUCTION_LEN`]; iced
    /// also reports some invalid encodings this way when they end the buffer).
    Truncated,
    /// Not a valid instruction.
    Invalid,
    /// MOVS/STOS/LODS/CMPS/SCAS/INS/OUTS, with or without REP.
    StringOp,
    /// A LOCK-prefixed (or implicitly locked, XCHG) read-modify-write.
    Locked,
    /// An SSE/AVX/MMX/x87 operand.
    Vector,
    /// The instruction's memory operand is missing (register form): it cannot have faulted
    /// on MMIO.
    NotMemory,
    /// Any other instruction.
    Unsupported(Mnemonic),
}

impl MmioAccess {
    /// The value to write for a store, given a way to read GPRs by index (`regs(i)` is the full
    /// 64-bit register `i`). Truncated to the access size.
    pub fn store_value(&self, regs: impl Fn(u8) -> u64) -> Option<u64> {
        let MmioOp::Store { size, src } = self.op else {
            return None;
        };
        let v = match src {
            StoreSource::Reg(g) if g.high_byte => regs(g.index) >> 8,
            StoreSource::Reg(g) => regs(g.index),
            StoreSource::Imm(i) => i,
        };
        Some(v & mask(size))
    }

    /// The destination register's new 64-bit value after a load of `data` (the device's
    /// `size`-byte value), given its old value: a 32-bit destination zero-extends into the full
    /// register, 8- and 16-bit destinations keep the other bits (SDM Vol. 1 3.4.1.1).
    pub fn load_result(&self, old: u64, data: u64) -> Option<(Gpr, u64)> {
        let MmioOp::Load {
            size,
            dst,
            dst_width,
            extend,
        } = self.op
        else {
            return None;
        };
        let data = data & mask(size);
        let v = match extend {
            Extend::Sign => {
                let shift = 64 - 8 * u32::from(size);
                (((data << shift) as i64) >> shift) as u64
            }
            Extend::None | Extend::Zero => data,
        } & mask(dst_width);
        let new = match (dst_width, dst.high_byte) {
            (1, true) => (old & !0xff00) | (v << 8),
            (1, false) => (old & !0xff) | v,
            (2, _) => (old & !0xffff) | v,
            _ => v, // 4 bytes zero-extends; 8 bytes is the whole register
        };
        Some((dst, new))
    }
}

fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    }
}

/// Decodes the instruction at the start of `bytes` in a `bitness`-bit code segment (16, 32 or
/// 64) as an MMIO access.
pub fn decode(bitness: u32, bytes: &[u8]) -> Result<MmioAccess, DecodeError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSTRUCTION_LEN)];
    let mut d = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        return Err(match d.last_error() {
            DecoderError::NoMoreBytes => DecodeError::Truncated,
            _ => DecodeError::Invalid,
        });
    }
    classify(&i)
}

fn reg_operand(i: &Instruction, n: u32) -> Result<Gpr, DecodeError> {
    Gpr::from_iced(i.op_register(n)).ok_or(DecodeError::Vector)
}

/// String instructions (SDM Vol. 1 7.3.9). (iced's own predicate needs its `instr_info`
/// tables, which the bare-metal binary does not carry.) SSE `MOVSD xmm, m64` shares a mnemonic
/// with `MOVSD` (string) and is refused either way.
fn is_string(i: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(
        i.mnemonic(),
        Movsb
            | Movsw
            | Movsd
            | Movsq
            | Stosb
            | Stosw
            | Stosd
            | Stosq
            | Lodsb
            | Lodsw
            | Lodsd
            | Lodsq
            | Cmpsb
            | Cmpsw
            | Cmpsd
            | Cmpsq
            | Scasb
            | Scasw
            | Scasd
            | Scasq
            | Insb
            | Insw
            | Insd
            | Outsb
            | Outsw
            | Outsd
    ) && !(0..i.op_count())
        .any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n) as u32 > Register::R15 as u32)
}

/// Bytes of memory the emulated forms access, from their opcode (SDM Vol. 2, MOV/MOVZX/MOVSX).
fn access_size(c: Code) -> u8 {
    use Code::*;
    match c {
        Mov_rm8_r8 | Mov_r8_rm8 | Mov_rm8_imm8 | Mov_moffs8_AL | Mov_AL_moffs8 | Movzx_r16_rm8
        | Movzx_r32_rm8 | Movzx_r64_rm8 | Movsx_r16_rm8 | Movsx_r32_rm8 | Movsx_r64_rm8 => 1,
        Mov_rm16_r16 | Mov_r16_rm16 | Mov_rm16_imm16 | Mov_moffs16_AX | Mov_AX_moffs16
        | Movzx_r16_rm16 | Movzx_r32_rm16 | Movzx_r64_rm16 | Movsx_r16_rm16 | Movsx_r32_rm16
        | Movsx_r64_rm16 | Movsxd_r16_rm16 => 2,
        Mov_rm64_r64 | Mov_r64_rm64 | Mov_rm64_imm32 | Mov_moffs64_RAX | Mov_RAX_moffs64 => 8,
        _ => 4,
    }
}

fn classify(i: &Instruction) -> Result<MmioAccess, DecodeError> {
    if is_string(i) {
        return Err(DecodeError::StringOp);
    }
    if i.has_lock_prefix() || i.mnemonic() == Mnemonic::Xchg {
        return Err(DecodeError::Locked);
    }
    let len = i.len() as u8;
    let mem_size = || access_size(i.code());
    let has_mem = (0..i.op_count()).any(|n| matches!(i.op_kind(n), OpKind::Memory));
    use Code::*;
    let op = match i.code() {
        Mov_rm8_r8 | Mov_rm16_r16 | Mov_rm32_r32 | Mov_rm64_r64 | Mov_moffs8_AL
        | Mov_moffs16_AX | Mov_moffs32_EAX | Mov_moffs64_RAX => {
            if !has_mem {
                return Err(DecodeError::NotMemory);
            }
            MmioOp::Store {
                size: mem_size(),
                src: StoreSource::Reg(reg_operand(i, 1)?),
            }
        }
        Mov_r8_rm8 | Mov_r16_rm16 | Mov_r32_rm32 | Mov_r64_rm64 | Mov_AL_moffs8
        | Mov_AX_moffs16 | Mov_EAX_moffs32 | Mov_RAX_moffs64 => {
            if !has_mem {
                return Err(DecodeError::NotMemory);
            }
            let size = mem_size();
            MmioOp::Load {
                size,
                dst: reg_operand(i, 0)?,
                dst_width: size,
                extend: Extend::None,
            }
        }
        Mov_rm8_imm8 | Mov_rm16_imm16 | Mov_rm32_imm32 | Mov_rm64_imm32 => {
            if !has_mem {
                return Err(DecodeError::NotMemory);
            }
            MmioOp::Store {
                size: mem_size(),
                src: StoreSource::Imm(i.immediate(1)),
            }
        }
        c @ (Movzx_r16_rm8 | Movzx_r32_rm8 | Movzx_r64_rm8 | Movzx_r16_rm16 | Movzx_r32_rm16
        | Movzx_r64_rm16 | Movsx_r16_rm8 | Movsx_r32_rm8 | Movsx_r64_rm8 | Movsx_r16_rm16
        | Movsx_r32_rm16 | Movsx_r64_rm16 | Movsxd_r16_rm16 | Movsxd_r32_rm32
        | Movsxd_r64_rm32) => {
            if !has_mem {
                return Err(DecodeError::NotMemory);
            }
            let extend = if i.mnemonic() == Mnemonic::Movzx {
                Extend::Zero
            } else {
                Extend::Sign
            };
            let dst_width = match c {
                Movzx_r16_rm8 | Movzx_r16_rm16 | Movsx_r16_rm8 | Movsx_r16_rm16
                | Movsxd_r16_rm16 => 2,
                Movzx_r32_rm8 | Movzx_r32_rm16 | Movsx_r32_rm8 | Movsx_r32_rm16
                | Movsxd_r32_rm32 => 4,
                _ => 8,
            };
            MmioOp::Load {
                size: mem_size(),
                dst: reg_operand(i, 0)?,
                dst_width,
                extend,
            }
        }
        _ => {
            let vector = (0..i.op_count()).any(|n| {
                i.op_kind(n) == OpKind::Register && Gpr::from_iced(i.op_register(n)).is_none()
            });
            return Err(if vector {
                DecodeError::Vector
            } else {
                DecodeError::Unsupported(i.mnemonic())
            });
        }
    };
    Ok(MmioAccess { op, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpr(index: u8) -> Gpr {
        Gpr {
            index,
            high_byte: false,
        }
    }
    fn load(size: u8, dst: u8, dst_width: u8, extend: Extend) -> MmioOp {
        MmioOp::Load {
            size,
            dst: gpr(dst),
            dst_width,
            extend,
        }
    }
    fn store_reg(size: u8, src: Gpr) -> MmioOp {
        MmioOp::Store {
            size,
            src: StoreSource::Reg(src),
        }
    }
    fn ok(bytes: &[u8]) -> MmioAccess {
        decode(64, bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"))
    }

    #[test]
    fn linux_readl_writel_and_apic_accessors() {
        // readl: mov (%rdi),%eax = 8b 07 ; writel: mov %esi,(%rdi) = 89 37
        assert_eq!(
            ok(&[0x8b, 0x07]),
            MmioAccess {
                op: load(4, 0, 4, Extend::None),
                len: 2
            }
        );
        assert_eq!(
            ok(&[0x89, 0x37]),
            MmioAccess {
                op: store_reg(4, gpr(6)),
                len: 2
            }
        );
        // native_apic_mem_write: mov %esi,-0xa03000(%rdi) style disp32: 89 b7 00 d0 5f ff
        assert_eq!(
            ok(&[0x89, 0xb7, 0x00, 0xd0, 0x5f, 0xff]),
            MmioAccess {
                op: store_reg(4, gpr(6)),
                len: 6
            }
        );
        // mov 0xb0(%rax),%eax with disp32 through a fixmap address: 8b 80 b0 00 00 00
        assert_eq!(ok(&[0x8b, 0x80, 0xb0, 0, 0, 0]).len, 6);
        // readq: mov (%rdi),%rax = 48 8b 07 ; writeq: mov %rsi,(%rdi) = 48 89 37
        assert_eq!(ok(&[0x48, 0x8b, 0x07]).op, load(8, 0, 8, Extend::None));
        assert_eq!(ok(&[0x48, 0x89, 0x37]).op, store_reg(8, gpr(6)));
        // readb / readw: mov (%rdi),%al = 8a 07 ; mov (%rdi),%ax = 66 8b 07
        assert_eq!(ok(&[0x8a, 0x07]).op, load(1, 0, 1, Extend::None));
        assert_eq!(ok(&[0x66, 0x8b, 0x07]).op, load(2, 0, 2, Extend::None));
    }

    #[test]
    fn rex_registers() {
        // mov %r9d,(%r8) = 45 89 08 ; mov (%r12),%r15 = 4d 8b 3c 24 (SIB for r12)
        assert_eq!(ok(&[0x45, 0x89, 0x08]).op, store_reg(4, gpr(9)));
        assert_eq!(
            ok(&[0x4d, 0x8b, 0x3c, 0x24]),
            MmioAccess {
                op: load(8, 15, 8, Extend::None),
                len: 4
            }
        );
        // mov %sil,(%rdi) = 40 88 37 (REX selects SIL, not DH) ; mov %dh,(%rdi) = 88 37
        assert_eq!(ok(&[0x40, 0x88, 0x37]).op, store_reg(1, gpr(6)));
        assert_eq!(
            ok(&[0x88, 0x37]).op,
            store_reg(
                1,
                Gpr {
                    index: 2,
                    high_byte: true
                }
            )
        );
        // mov (%rax),%r10b = 44 8a 10
        assert_eq!(ok(&[0x44, 0x8a, 0x10]).op, load(1, 10, 1, Extend::None));
        // RIP-relative: mov 0x1000(%rip),%ecx = 8b 0d 00 10 00 00
        assert_eq!(
            ok(&[0x8b, 0x0d, 0, 0x10, 0, 0]),
            MmioAccess {
                op: load(4, 1, 4, Extend::None),
                len: 6
            }
        );
    }

    #[test]
    fn immediates_are_sign_extended_as_defined() {
        // movl $0x1,(%rax) = c7 00 01 00 00 00
        assert_eq!(
            ok(&[0xc7, 0x00, 1, 0, 0, 0]),
            MmioAccess {
                op: MmioOp::Store {
                    size: 4,
                    src: StoreSource::Imm(1)
                },
                len: 6
            }
        );
        // movq $-1,0x8(%rdi) = 48 c7 47 08 ff ff ff ff -> 64-bit all ones
        let a = ok(&[0x48, 0xc7, 0x47, 0x08, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            a,
            MmioAccess {
                op: MmioOp::Store {
                    size: 8,
                    src: StoreSource::Imm(u64::MAX)
                },
                len: 8
            }
        );
        // movb $0x80,(%rdx) = c6 02 80 ; movw $0x1234,(%rdx) = 66 c7 02 34 12
        assert_eq!(ok(&[0xc6, 0x02, 0x80]).store_value(|_| 0), Some(0x80));
        assert_eq!(
            ok(&[0x66, 0xc7, 0x02, 0x34, 0x12]).store_value(|_| 0),
            Some(0x1234)
        );
        // movl $0x80000000,(%rax): the stored 4 bytes are exactly the immediate
        assert_eq!(
            ok(&[0xc7, 0x00, 0, 0, 0, 0x80]).store_value(|_| 0),
            Some(0x8000_0000)
        );
    }

    #[test]
    fn movzx_movsx_movsxd() {
        // movzbl (%rdi),%eax = 0f b6 07 ; movzwl (%rdi),%eax = 0f b7 07
        assert_eq!(ok(&[0x0f, 0xb6, 0x07]).op, load(1, 0, 4, Extend::Zero));
        assert_eq!(ok(&[0x0f, 0xb7, 0x07]).op, load(2, 0, 4, Extend::Zero));
        // movzbq (%rsi),%r8 = 4c 0f b6 06
        assert_eq!(
            ok(&[0x4c, 0x0f, 0xb6, 0x06]).op,
            load(1, 8, 8, Extend::Zero)
        );
        // movsbl (%rdi),%ecx = 0f be 0f ; movswq (%rdi),%rdx = 48 0f bf 17
        assert_eq!(ok(&[0x0f, 0xbe, 0x0f]).op, load(1, 1, 4, Extend::Sign));
        assert_eq!(
            ok(&[0x48, 0x0f, 0xbf, 0x17]).op,
            load(2, 2, 8, Extend::Sign)
        );
        // movslq (%rdi),%rax = 48 63 07
        assert_eq!(ok(&[0x48, 0x63, 0x07]).op, load(4, 0, 8, Extend::Sign));
    }

    #[test]
    fn load_results_follow_register_write_rules() {
        let old = 0x1122_3344_5566_7788u64;
        let r = |b: &[u8], data| ok(b).load_result(old, data).unwrap().1;
        assert_eq!(
            r(&[0x8b, 0x07], 0xdead_beef),
            0xdead_beef,
            "32-bit dest zero-extends"
        );
        assert_eq!(
            r(&[0x8a, 0x07], 0xab),
            0x1122_3344_5566_77ab,
            "8-bit dest keeps the rest"
        );
        assert_eq!(
            r(&[0x8a, 0x27], 0xab),
            0x1122_3344_5566_ab88,
            "mov (%rdi),%ah"
        );
        assert_eq!(r(&[0x66, 0x8b, 0x07], 0xabcd), 0x1122_3344_5566_abcd);
        assert_eq!(
            r(&[0x0f, 0xbe, 0x0f], 0x80),
            0xffff_ff80,
            "movsbl sign-extends to 32, zero above"
        );
        assert_eq!(r(&[0x48, 0x0f, 0xbf, 0x17], 0x8000), 0xffff_ffff_ffff_8000);
        assert_eq!(r(&[0x48, 0x63, 0x07], 0x7fff_ffff), 0x7fff_ffff);
        assert_eq!(
            r(&[0x0f, 0xb6, 0x07], 0xffff_ff80),
            0x80,
            "device data beyond the size is dropped"
        );
        assert_eq!(
            r(&[0x66, 0x0f, 0xbe, 0x07], 0x80),
            0x1122_3344_5566_ff80,
            "movsbw keeps bits 63:16"
        );
        assert_eq!(ok(&[0x89, 0x37]).load_result(0, 0), None);
        // Stores read the right register bytes.
        let regs = |i: u8| 0x0101_0101_0101_0101u64 * u64::from(i + 1);
        assert_eq!(ok(&[0x89, 0x37]).store_value(regs), Some(0x0707_0707));
        assert_eq!(
            ok(&[0x88, 0x37]).store_value(|i| if i == 2 { 0xbeef } else { 0 }),
            Some(0xbe)
        );
        assert_eq!(ok(&[0x8b, 0x07]).store_value(regs), None);
    }

    #[test]
    fn moffs_forms() {
        // mov 0xfee000b0,%eax = a1 b0 00 e0 fe 00 00 00 00 (64-bit moffs)
        let a = ok(&[0xa1, 0xb0, 0x00, 0xe0, 0xfe, 0, 0, 0, 0]);
        assert_eq!(
            a,
            MmioAccess {
                op: load(4, 0, 4, Extend::None),
                len: 9
            }
        );
        // 32-bit code: mov %eax,0xfee000b0 = a3 b0 00 e0 fe
        assert_eq!(
            decode(32, &[0xa3, 0xb0, 0x00, 0xe0, 0xfe]).unwrap(),
            MmioAccess {
                op: store_reg(4, Gpr::RAX),
                len: 5
            }
        );
    }

    #[test]
    fn refused_forms() {
        assert_eq!(
            decode(64, &[0xf3, 0xa5]),
            Err(DecodeError::StringOp),
            "rep movsl"
        );
        assert_eq!(decode(64, &[0xab]), Err(DecodeError::StringOp), "stosl");
        assert_eq!(
            decode(64, &[0xf0, 0x0f, 0xc1, 0x07]),
            Err(DecodeError::Locked),
            "lock xadd"
        );
        assert_eq!(
            decode(64, &[0xf0, 0x83, 0x07, 0x01]),
            Err(DecodeError::Locked),
            "lock addl"
        );
        assert_eq!(
            decode(64, &[0x87, 0x07]),
            Err(DecodeError::Locked),
            "xchg (implicitly locked)"
        );
        assert_eq!(
            decode(64, &[0x66, 0x0f, 0x6f, 0x07]),
            Err(DecodeError::Vector),
            "movdqa (%rdi),%xmm0"
        );
        assert_eq!(
            decode(64, &[0x66, 0x0f, 0x7e, 0x07]),
            Err(DecodeError::Vector),
            "movd %xmm0,(%rdi)"
        );
        assert_eq!(
            decode(64, &[0xc5, 0xfd, 0x6f, 0x07]),
            Err(DecodeError::Vector),
            "vmovdqa (%rdi),%ymm0"
        );
        assert_eq!(
            decode(64, &[0x03, 0x07]),
            Err(DecodeError::Unsupported(Mnemonic::Add)),
            "add (%rdi),%eax"
        );
        assert_eq!(
            decode(64, &[0x89, 0xc8]),
            Err(DecodeError::NotMemory),
            "mov %ecx,%eax"
        );
        assert_eq!(
            decode(64, &[0xc7, 0xc0, 1, 0, 0, 0]),
            Err(DecodeError::NotMemory),
            "mov $1,%eax"
        );
        assert_eq!(decode(64, &[0x8b]), Err(DecodeError::Truncated));
        assert_eq!(decode(64, &[0xc7, 0x00, 1, 0]), Err(DecodeError::Truncated));
        assert_eq!(decode(64, &[]), Err(DecodeError::Truncated));
        assert_eq!(
            decode(64, &[0x06, 0x90, 0x90, 0x90]),
            Err(DecodeError::Invalid),
            "push es is invalid in 64-bit mode"
        );
        assert_eq!(
            decode(64, &[0x0f, 0x0b, 0x90]),
            Err(DecodeError::Unsupported(Mnemonic::Ud2))
        );
        // Sixteen prefixes: longer than 15 bytes is invalid, never read past 15.
        let mut long = [0x66u8; 20];
        long[16] = 0x8b;
        long[17] = 0x07;
        assert!(decode(64, &long).is_err());
    }
}
