//! SSE and AVX for the hypervisor's own use (the engine's SIMD kernels).
//!
//! The kernel itself is compiled soft-float (x86_64-unknown-none), so only functions compiled
//! with `#[target_feature]` (the engine's kernels) touch vector registers. This enables them:
//! CR0.MP on and EM off, CR4.OSFXSR/OSXMMEXCPT, and with XSAVE, CR4.OSXSAVE and XCR0 with x87,
//! SSE and AVX state (plus the AVX-512 state when the CPU has it). Guests run soft-float code
//! and cannot change XCR0 (XSETBV is refused), so no vector state is shared with a guest yet;
//! a guest that uses vector registers will need XSAVE/XRSTOR around engine work.

use super::cr;

const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const XCR0_X87: u64 = 1;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;
const XCR0_AVX512: u64 = 0b111 << 5;

/// Enables SSE, and AVX/AVX-512 state where the CPU supports it; returns XCR0 (0 without XSAVE).
pub fn enable() -> u64 {
    let l1 = core::arch::x86_64::__cpuid(1);
    let has_xsave = l1.ecx & (1 << 26) != 0;
    let has_avx = l1.ecx & (1 << 28) != 0;
    let l7 = core::arch::x86_64::__cpuid_count(7, 0);
    let has_avx512 = l7.ebx & (1 << 16) != 0;
    // SAFETY: clearing EM/TS and setting MP keeps the kernel's mode; setting OSFXSR/OSXMMEXCPT
    // only allows SSE instructions, which every x86_64 CPU has; OSXSAVE only when CPUID
    // reports XSAVE.
    unsafe {
        cr::write_cr0((cr::read_cr0() | CR0_MP) & !(CR0_EM | CR0_TS));
        let mut cr4 = cr::read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT;
        if has_xsave {
            cr4 |= CR4_OSXSAVE;
        }
        cr::write_cr4(cr4);
    }
    if !has_xsave {
        return 0;
    }
    // XCR0 may only hold bits CPUID.(0xD,0):EAX reports.
    let supported = u64::from(core::arch::x86_64::__cpuid_count(0xd, 0).eax);
    let mut xcr0 = XCR0_X87 | XCR0_SSE;
    if has_avx {
        xcr0 |= XCR0_AVX;
    }
    if has_avx512 && supported & XCR0_AVX512 == XCR0_AVX512 {
        xcr0 |= XCR0_AVX512;
    }
    xcr0 &= supported | XCR0_X87;
    // SAFETY: CR4.OSXSAVE is set and XCR0 holds only supported bits, with x87 set and AVX only
    // together with SSE, as XSETBV requires.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32, options(nomem, nostack));
    }
    xcr0
}
