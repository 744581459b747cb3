//! The hypercall instruction and CPUID on x86_64: the only `unsafe` in the SDK.

use crate::{HcallRegs, Transport};

/// The transport of a guest running under tensorvisor: VMCALL, CPUID, and a staging buffer on
/// the guest's stack (guest-virtual equals guest-physical under tensorvisor's identity map).
pub struct Vmcall {
    stage: [u8; crate::STAGE_BYTES],
}

impl Vmcall {
    pub const fn new() -> Self {
        Self { stage: [0; crate::STAGE_BYTES] }
    }
}

impl Default for Vmcall {
    fn default() -> Self {
        Self::new()
    }
}

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

    fn stage(&mut self, bytes: &[u8]) -> u64 {
        let n = bytes.len().min(crate::STAGE_BYTES);
        self.stage[..n].copy_from_slice(&bytes[..n]);
        self.stage.as_ptr() as u64
    }

    fn read_staged(&mut self, out: &mut [u8]) {
        for (i, b) in out.iter_mut().take(crate::STAGE_BYTES).enumerate() {
            // SAFETY: `i` is inside `stage`, which the hypervisor may have written during the
            // last hypercall: read it volatilely, not from what the compiler remembers.
            *b = unsafe { core::ptr::read_volatile(self.stage.as_ptr().add(i)) };
        }
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
