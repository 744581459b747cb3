//! The hypercall benchmark guest: times a plain loop (the baseline) and `count=` null hypercalls
//! with the TSC, and prints both. In Bochs the TSC advances once per emulated instruction, which
//! the baseline loop shows (two instructions per iteration), so TSC ticks count instructions.
#![no_std]
#![no_main]

use guest_sdk::arch::Vmcall;
use guest_sdk::console::exit;
use guest_sdk::{println, GuestBootInfo, HcallRegs, Transport};

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (not intercepted by tensorvisor).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo) -> ! {
    let count: u64 = boot.arg("count").and_then(|c| c.parse().ok()).unwrap_or(100_000);
    let loops: u64 = 1_000_000;
    let t0 = rdtsc();
    // SAFETY: a register-only countdown loop: `dec` and `jnz`, two instructions per iteration.
    unsafe { core::arch::asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) loops => _, options(nomem, nostack)) };
    let baseline = rdtsc() - t0;
    println!("bench: baseline {loops} iterations x 2 instructions: {baseline} TSC ticks");
    let mut t = Vmcall::new();
    // A hypercall number no call uses: the hypervisor decodes it and answers NotSupported, the
    // shortest complete round trip through the exit path.
    let null = HcallRegs { rax: 0xffff_ffff, rbx: 0, rcx: 0, rdx: 0, rsi: 0 };
    println!("bench: start {count} null hypercalls");
    let t1 = rdtsc();
    for _ in 0..count {
        core::hint::black_box(t.hypercall(null));
    }
    let ticks = rdtsc() - t1;
    println!("bench: end {count} null hypercalls: {ticks} TSC ticks");
    exit(0)
}
