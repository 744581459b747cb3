//! The notify guest: installs an IDT with a handler for vector 0x40, enables interrupts, sets up
//! a ring that asks for completion interrupts on that vector, and checks that a doorbell with
//! completions raises exactly one interrupt, that suppression silences it, and that the event
//! index defers it.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_sdk::arch::Vmcall;
use guest_sdk::console::exit;
use guest_sdk::tensor::{Ring, SharedRegion};
use guest_sdk::{println, GuestBootInfo};
use tensor_hcall::desc::{DType, OpCode, RegionFlags};
use tensor_hcall::HcallError;

const VECTOR: u8 = 0x40;
const DATA_GPA: u64 = 0x30_0000;
const RING_GPA: u64 = 0x34_0000;

/// Interrupts received on `VECTOR`.
#[unsafe(no_mangle)]
static COMPLETIONS_SEEN: AtomicU32 = AtomicU32::new(0);

core::arch::global_asm!(
    ".global notify_handler",
    "notify_handler:",
    "lock inc dword ptr [rip + COMPLETIONS_SEEN]",
    "iretq",
);

unsafe extern "C" {
    fn notify_handler();
}

#[repr(C, align(16))]
struct Idt([u64; 2 * (VECTOR as usize + 1)]);

/// Our IDT: only the completion vector has a gate (an exception still ends in a triple fault).
static mut IDT: Idt = Idt([0; 2 * (VECTOR as usize + 1)]);

fn install_idt() {
    let h = notify_handler as *const () as u64;
    // Present, DPL 0, 64-bit interrupt gate, selector 0x08 (the guest's code segment).
    let low = (h & 0xffff) | (0x08 << 16) | (0x8e << 40) | (((h >> 16) & 0xffff) << 48);
    let high = h >> 32;
    // SAFETY: single-threaded guest start-up; nothing else touches IDT; LIDT gets a pointer to a
    // 'static table whose only present gate points at the handler above.
    unsafe {
        let idt = &raw mut IDT;
        (*idt).0[2 * VECTOR as usize] = low;
        (*idt).0[2 * VECTOR as usize + 1] = high;
        #[repr(C, packed)]
        struct Ptr {
            limit: u16,
            base: u64,
        }
        let p = Ptr { limit: (core::mem::size_of::<Idt>() - 1) as u16, base: idt as u64 };
        core::arch::asm!("lidt [{}]", "sti", in(reg) &p, options(nostack));
    }
}

fn seen() -> u32 {
    COMPLETIONS_SEEN.load(Ordering::SeqCst)
}

fn run() -> Result<u32, HcallError> {
    install_idt();
    let mut t = Vmcall::new();
    // SAFETY: our RAM, used for nothing else.
    let data = unsafe { SharedRegion::register(&mut t, DATA_GPA, 0x1000, RegionFlags::READ | RegionFlags::WRITE)? };
    let x = data.tensor(&mut t, DType::F32, 0, &[16])?;
    // SAFETY: our RAM, used for nothing else; the handler for VECTOR is installed.
    let mut ring = unsafe { Ring::with_notify(&mut t, RING_GPA, 16, Some(VECTOR))? };
    let mut failures = 0;
    let mut check = |what: &str, want: u32| {
        let got = seen();
        println!("notify: {what}: {got} interrupt(s) so far, expected {want} -> {}", if got == want { "ok" } else { "WRONG" });
        failures += u32::from(got != want);
    };
    ring.push(1, OpCode::Softmax, &[x], x, [0, 0])?;
    ring.push(2, OpCode::Softmax, &[x], x, [0, 0])?;
    ring.submit(&mut t)?;
    check("one doorbell with two completions", 1);
    ring.suppress_interrupts(true)?;
    ring.push(3, OpCode::Softmax, &[x], x, [0, 0])?;
    ring.submit(&mut t)?;
    check("a doorbell with interrupts suppressed", 1);
    ring.suppress_interrupts(false)?;
    ring.set_event_index(5)?;
    ring.push(4, OpCode::Softmax, &[x], x, [0, 0])?;
    ring.submit(&mut t)?;
    check("a completion before the event index", 1);
    ring.push(5, OpCode::Softmax, &[x], x, [0, 0])?;
    ring.push(6, OpCode::Softmax, &[x], x, [0, 0])?;
    ring.submit(&mut t)?;
    check("completions passing the event index", 2);
    let mut drained = 0;
    while ring.complete().is_some() {
        drained += 1;
    }
    println!("notify: {drained} completions drained");
    Ok(failures + u32::from(drained != 6))
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(_boot: &'static GuestBootInfo) -> ! {
    match run() {
        Ok(f) => exit(f),
        Err(e) => {
            println!("notify: failed: {e:?}");
            exit(100)
        }
    }
}
