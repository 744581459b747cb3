//! Control registers, descriptor-table registers and MSRs of the running CPU.

pub const CR4_VMXE: u64 = 1 << 13;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;

macro_rules! read_cr {
    ($name:ident, $reg:literal) => {
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effects at CPL 0.
            unsafe { core::arch::asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

read_cr!(read_cr0, "cr0");
read_cr!(read_cr3, "cr3");
read_cr!(read_cr4, "cr4");

/// Writes CR0.
///
/// # Safety
/// The new value must keep paging, protection and the kernel's assumptions (WP, PG, PE) intact.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: the caller keeps the mode the kernel runs in.
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Writes CR4.
///
/// # Safety
/// As for [`write_cr0`]: PAE must stay set.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller keeps the mode the kernel runs in.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Reads an MSR.
///
/// # Safety
/// The MSR must exist on this CPU (RDMSR of a missing MSR raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// The MSR must exist and the value must be valid for it and for the kernel's state.
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: the caller guarantees the MSR and the value are valid.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack, preserves_flags))
    };
}

#[repr(C, packed(2))]
#[derive(Default)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// The GDTR's base.
pub fn gdtr_base() -> u64 {
    let mut p = DescriptorPointer::default();
    // SAFETY: SGDT stores 10 bytes into `p`, which is that size.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    p.base
}

/// The IDTR's base.
pub fn idtr_base() -> u64 {
    let mut p = DescriptorPointer::default();
    // SAFETY: SIDT stores 10 bytes into `p`, which is that size.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    p.base
}
