//! SSE and AVX for the hypervisor's own use (the engine's SIMD kernels), and each vCPU's
//! x87/SSE/AVX state ([`GuestFpu`]).
//!
//! The kernel itself is compiled soft-float (x86_64-unknown-none), so only functions compiled
//! with `#[target_feature]` (the engine's kernels) touch vector registers. This enables them:
//! CR0.MP on and EM off, CR4.OSFXSR/OSXMMEXCPT, and with XSAVE, CR4.OSXSAVE and XCR0 with x87,
//! SSE and AVX state (plus the AVX-512 state when the CPU has it). Guests cannot change XCR0
//! (XSETBV always exits and is answered with #GP), so this XCR0 is in force in every guest, and
//! a guest that sets its CR4.OSXSAVE may use exactly these components. VMX does not switch
//! them, so every vCPU keeps its own copy in a [`GuestFpu`], restored before each VM entry and
//! saved after each exit: neither the engine's kernels nor another vCPU that runs on the CPU
//! next sees or changes it.

use super::cr;
use alloc::boxed::Box;
use hypervisor::xstate::{AreaLayout, SaveForm, XstateError, AREA_CAPACITY};

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
/// MXCSR after reset: round to nearest, no flush-to-zero or denormals-are-zero, all masked.
const HOST_MXCSR: u32 = 0x1f80;

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

/// The area XSAVE/FXSAVE write (64-byte aligned, as XSAVE requires).
#[repr(C, align(64))]
struct Area([u8; AREA_CAPACITY]);

/// One vCPU's x87/SSE/AVX registers while it does not run.
pub struct GuestFpu {
    area: Box<Area>,
    layout: AreaLayout,
}

impl GuestFpu {
    /// The initial state (FNINIT, MXCSR 1F80H, vector registers zero), laid out for this CPU's
    /// XCR0 as [`enable`] set it.
    pub fn new() -> Result<Self, XstateError> {
        let xcr0 = if cr::read_cr4() & CR4_OSXSAVE != 0 {
            let (lo, hi): (u32, u32);
            // SAFETY: XGETBV with ECX 0 reads XCR0; CR4.OSXSAVE is set, so it does not fault.
            unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
            u64::from(lo) | u64::from(hi) << 32
        } else {
            0
        };
        let size = if xcr0 != 0 { core::arch::x86_64::__cpuid_count(0xd, 0).ebx } else { 0 };
        let layout = AreaLayout::new(xcr0, size)?;
        let mut area = Box::new(Area([0; AREA_CAPACITY]));
        layout.write_init(&mut area.0);
        Ok(Self { area, layout })
    }

    /// How the state is kept, for the boot log.
    pub fn describe(&self) -> alloc::string::String {
        match self.layout.form {
            SaveForm::Xsave { .. } => alloc::format!("XSAVE/XRSTOR, {} bytes, switched at every VM exit and entry", self.layout.size),
            SaveForm::Fxsave => alloc::string::String::from("FXSAVE/FXRSTOR, 512 bytes, switched at every VM exit and entry"),
        }
    }

    /// Loads the vCPU's state into this CPU's registers (just before VM entry).
    pub fn restore(&self) {
        let p = self.area.0.as_ptr();
        match self.layout.form {
            // SAFETY: the area is 64-byte aligned, holds at least `layout.size` bytes (the
            // size CPUID gives for this XCR0, checked against the capacity) and only ever
            // contains the initial image or what XSAVE/FXSAVE wrote with the same XCR0 (guests
            // cannot reach it or change XCR0), so XRSTOR/FXRSTOR find a valid image; CR4.OSFXSR
            // and OSXSAVE are set by `enable` on every CPU.
            SaveForm::Xsave { xcr0 } => unsafe {
                core::arch::asm!("xrstor64 [{}]", in(reg) p, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32, options(nostack, readonly))
            },
            // SAFETY: as above, with the 512-byte FXSAVE image (16-byte alignment suffices).
            SaveForm::Fxsave => unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) p, options(nostack, readonly)) },
        }
    }

    /// Stores this CPU's registers as the vCPU's state (just after VM exit, before anything
    /// else can use them), then gives the hypervisor its own SSE control: MXCSR 1F80H (round
    /// to nearest, no flush-to-zero, every exception masked) and, with AVX, clean upper halves.
    /// The engine's kernels run next on this CPU; a guest's rounding mode, denormal flags or
    /// unmasked exceptions would otherwise change their results or fault in the hypervisor.
    pub fn save(&mut self) {
        let p = self.area.0.as_mut_ptr();
        match self.layout.form {
            // SAFETY: the area is ours, 64-byte aligned and at least `layout.size` bytes, the
            // size XSAVE writes for this XCR0 (requested-feature bitmap XCR0, standard form).
            SaveForm::Xsave { xcr0 } => unsafe {
                core::arch::asm!("xsave64 [{}]", in(reg) p, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32, options(nostack))
            },
            // SAFETY: the area is ours, 16-byte aligned and at least 512 bytes.
            SaveForm::Fxsave => unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) p, options(nostack)) },
        }
        let mxcsr: u32 = HOST_MXCSR;
        // SAFETY: LDMXCSR of the reset value (reserved bits clear) cannot fault; CR4.OSFXSR is
        // set by `enable`. The guest's MXCSR is in the area just saved.
        unsafe { core::arch::asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack, readonly)) };
        if let SaveForm::Xsave { xcr0 } = self.layout.form {
            if xcr0 & XCR0_AVX != 0 {
                // SAFETY: AVX state is enabled in XCR0 (so VZEROUPPER does not fault); the
                // guest's upper halves are in the area just saved.
                unsafe { core::arch::asm!("vzeroupper", options(nomem, nostack)) };
            }
        }
    }
}
