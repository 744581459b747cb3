//! The hypercall instruction, CPUID, and the vector-register helpers the isolation checks use,
//! on x86_64: the only `unsafe` in the SDK.

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

/// The 16 vector registers as four 64-bit lanes each: XMM in lanes 0-1, the YMM upper half in
/// lanes 2-3 (zero when AVX is not on).
pub type Vectors = [[u64; 4]; 16];

/// Turns on SSE for this guest (CR4.OSFXSR; tensorvisor starts guests with it clear) and, when
/// CPUID reports XSAVE and AVX, CR4.OSXSAVE; returns whether YMM registers are usable (XCR0 has
/// SSE and AVX: the hypervisor's XCR0, which guests cannot change).
///
/// # Safety
/// Ring 0 in a guest only; the caller's code must not itself rely on x87/SSE state (the Rust
/// guests are soft-float).
#[cfg(target_arch = "x86_64")]
pub unsafe fn enable_vectors() -> bool {
    let l1 = core::arch::x86_64::__cpuid_count(1, 0);
    let (xsave, avx) = (l1.ecx & (1 << 26) != 0, l1.ecx & (1 << 28) != 0);
    let mut cr4: u64;
    // SAFETY: reading and setting CR4.OSFXSR (bit 9), and OSXSAVE (bit 18) only where CPUID
    // reports XSAVE, at ring 0 (the caller's contract): no other bit changes.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        cr4 |= 1 << 9;
        if xsave && avx {
            cr4 |= 1 << 18;
        }
        core::arch::asm!("mov cr4, {}", in(reg) cr4, options(nomem, nostack));
    }
    if !(xsave && avx) {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set just above, so XGETBV (ECX 0, XCR0) does not fault.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack)) };
    lo & 0b110 == 0b110
}

/// Loads `v` into XMM0-15 (lanes 0-1), and with `ymm` into YMM0-15 (all four lanes).
///
/// # Safety
/// After [`enable_vectors`] (with `ymm` only where it returned true). The guest is compiled
/// soft-float, so the compiler keeps nothing in these registers and clobbering them is unseen.
#[cfg(target_arch = "x86_64")]
pub unsafe fn load_vectors(v: &Vectors, ymm: bool) {
    let p = v.as_ptr();
    if ymm {
        // SAFETY: `p` points at 16 × 32 readable bytes; AVX is on (the caller's contract).
        unsafe {
            core::arch::asm!(
                "vmovdqu ymm0, [{p}]", "vmovdqu ymm1, [{p} + 32]", "vmovdqu ymm2, [{p} + 64]", "vmovdqu ymm3, [{p} + 96]",
                "vmovdqu ymm4, [{p} + 128]", "vmovdqu ymm5, [{p} + 160]", "vmovdqu ymm6, [{p} + 192]", "vmovdqu ymm7, [{p} + 224]",
                "vmovdqu ymm8, [{p} + 256]", "vmovdqu ymm9, [{p} + 288]", "vmovdqu ymm10, [{p} + 320]", "vmovdqu ymm11, [{p} + 352]",
                "vmovdqu ymm12, [{p} + 384]", "vmovdqu ymm13, [{p} + 416]", "vmovdqu ymm14, [{p} + 448]", "vmovdqu ymm15, [{p} + 480]",
                p = in(reg) p, options(nostack, readonly))
        }
    } else {
        // SAFETY: `p` points at 16 × 32 readable bytes; SSE is on (the caller's contract).
        unsafe {
            core::arch::asm!(
                "movdqu xmm0, [{p}]", "movdqu xmm1, [{p} + 32]", "movdqu xmm2, [{p} + 64]", "movdqu xmm3, [{p} + 96]",
                "movdqu xmm4, [{p} + 128]", "movdqu xmm5, [{p} + 160]", "movdqu xmm6, [{p} + 192]", "movdqu xmm7, [{p} + 224]",
                "movdqu xmm8, [{p} + 256]", "movdqu xmm9, [{p} + 288]", "movdqu xmm10, [{p} + 320]", "movdqu xmm11, [{p} + 352]",
                "movdqu xmm12, [{p} + 384]", "movdqu xmm13, [{p} + 416]", "movdqu xmm14, [{p} + 448]", "movdqu xmm15, [{p} + 480]",
                p = in(reg) p, options(nostack, readonly))
        }
    }
}

/// Reads XMM0-15 (and with `ymm`, YMM0-15; else lanes 2-3 are zero).
///
/// # Safety
/// After [`enable_vectors`] (with `ymm` only where it returned true).
#[cfg(target_arch = "x86_64")]
pub unsafe fn read_vectors(ymm: bool) -> Vectors {
    let mut v: Vectors = [[0; 4]; 16];
    let p = v.as_mut_ptr();
    if ymm {
        // SAFETY: `p` points at 16 × 32 writable bytes; AVX is on (the caller's contract).
        unsafe {
            core::arch::asm!(
                "vmovdqu [{p}], ymm0", "vmovdqu [{p} + 32], ymm1", "vmovdqu [{p} + 64], ymm2", "vmovdqu [{p} + 96], ymm3",
                "vmovdqu [{p} + 128], ymm4", "vmovdqu [{p} + 160], ymm5", "vmovdqu [{p} + 192], ymm6", "vmovdqu [{p} + 224], ymm7",
                "vmovdqu [{p} + 256], ymm8", "vmovdqu [{p} + 288], ymm9", "vmovdqu [{p} + 320], ymm10", "vmovdqu [{p} + 352], ymm11",
                "vmovdqu [{p} + 384], ymm12", "vmovdqu [{p} + 416], ymm13", "vmovdqu [{p} + 448], ymm14", "vmovdqu [{p} + 480], ymm15",
                p = in(reg) p, options(nostack))
        }
    } else {
        // SAFETY: `p` points at 16 × 32 writable bytes; SSE is on (the caller's contract).
        unsafe {
            core::arch::asm!(
                "movdqu [{p}], xmm0", "movdqu [{p} + 32], xmm1", "movdqu [{p} + 64], xmm2", "movdqu [{p} + 96], xmm3",
                "movdqu [{p} + 128], xmm4", "movdqu [{p} + 160], xmm5", "movdqu [{p} + 192], xmm6", "movdqu [{p} + 224], xmm7",
                "movdqu [{p} + 256], xmm8", "movdqu [{p} + 288], xmm9", "movdqu [{p} + 320], xmm10", "movdqu [{p} + 352], xmm11",
                "movdqu [{p} + 384], xmm12", "movdqu [{p} + 416], xmm13", "movdqu [{p} + 448], xmm14", "movdqu [{p} + 480], xmm15",
                p = in(reg) p, options(nostack))
        }
    }
    v
}

/// A recognizable register image: register `i`, lane `l` holds `tag` in the high 32 bits and
/// `i * 4 + l` in the low ones (lanes 2-3 only with `ymm`).
pub fn vector_pattern(tag: u32, ymm: bool) -> Vectors {
    let mut v: Vectors = [[0; 4]; 16];
    for (i, r) in v.iter_mut().enumerate() {
        for (l, lane) in r.iter_mut().enumerate().take(if ymm { 4 } else { 2 }) {
            *lane = (u64::from(tag) << 32) | (i * 4 + l) as u64;
        }
    }
    v
}

/// MXCSR as the `hostile` guest sets it: round toward zero (RC = 11), flush-to-zero, and every
/// SSE exception unmasked (bits 7-12 clear). Float code of the hypervisor's that ran under it
/// would compute other bits, or take #XM at its first inexact result.
pub const MXCSR_HOSTILE: u32 = 0xe000;

/// Loads MXCSR.
///
/// # Safety
/// After [`enable_vectors`]; `v` has no reserved bit set (bits 16-31, and DAZ (6) only where the
/// CPU supports it). With exceptions unmasked, the caller's own SSE arithmetic may fault (the
/// Rust guests are soft-float and do none).
#[cfg(target_arch = "x86_64")]
pub unsafe fn set_mxcsr(v: u32) {
    // SAFETY: SSE is on and `v` is a valid MXCSR value (the caller's contract).
    unsafe { core::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, readonly)) }
}

/// Reads MXCSR.
///
/// # Safety
/// After [`enable_vectors`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn mxcsr() -> u32 {
    let mut v = 0u32;
    // SAFETY: SSE is on (the caller's contract); STMXCSR writes the 4 bytes of `v`.
    unsafe { core::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    v
}

/// The tags the demonstration guests write: `hostile` ("MALL") and `infer` ("INFR").
pub const TAG_HOSTILE: u32 = 0x4d41_4c4c;
pub const TAG_INFER: u32 = 0x494e_4652;

/// How many lanes of `v` carry `tag` in their high half (another vector pattern's marks).
pub fn lanes_tagged(v: &Vectors, tag: u32) -> usize {
    v.iter().flatten().filter(|&&lane| lane >> 32 == u64::from(tag)).count()
}
