//! The hypercall instruction and CPUID on x86_64: the only `unsafe` in the SDK.

use crate::{HcallRegs, Transport};

/// The transport of a guest running under tensorvisor: VMCALL and CPUID.
pub struct Vmcall;

#[cfg(target_arch = "x86_64")]
impl Transport for Vmcall {
    fn hypercall(&mut self, r: HcallRegs) -> u64 {
        let rax: u64;
        // SAFETY: VMCALL under tensorvisor exits to the hypervisor, which reads RAX, RBX, RCX,
        // RDX and RSI and writes only RAX (the ABI's register convention). RBX is reserved by
        // LLVM, so it is swapped in and out around the instruction.
        unsafe {
            core::arch::asm!(
                "xchg {b}, rbx",
                "vmcall",
                "xchg {b}, rbx",
                b = inout(reg) r.rbx => _,
                inout("rax") r.rax => rax,
                in("rcx") r.rcx,
                in("rdx") r.rdx,
                in("rsi") r.rsi,
                options(nostack),
            );
        }
        rax
    }

    fn cpuid(&mut self, leaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, 0);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
}

/// Reads a model-specific register the hypervisor lets guests read.
///
/// # Safety
/// An MSR the hypervisor does not allow raises #GP in the guest.
#[cfg(target_arch = "x86_64")]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller accepts the #GP an unpermitted MSR raises.
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}
