//! A guest that misbehaves on purpose, as its `scenario=` argument says, so the tests can show
//! the hypervisor stops it with one clear line and carries on:
//! - `triple-fault`: an invalid opcode with no IDT;
//! - `wild-read`: a read of guest-physical memory the guest does not have;
//! - `ro-write`: a write to the read-only boot-information page;
//! - `vmxon`, `vmread`: VMX instructions (no nested virtualization);
//! - `spin`: interrupts off and an endless loop, until its CPU budget runs out.
#![no_std]
#![no_main]

use guest_sdk::console::exit;
use guest_sdk::{println, GuestBootInfo};

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo) -> ! {
    let scenario = boot.arg("scenario").unwrap_or("none");
    println!("misbehaving guest: scenario {scenario}");
    // Each arm does the forbidden thing on purpose; the hypervisor must stop this guest there.
    match scenario {
        // SAFETY: UD2 raises #UD; with no IDT that is a triple fault, which stops this guest.
        "triple-fault" => unsafe { core::arch::asm!("ud2") },
        "wild-read" => {
            let p = 0x3000_0000 as *const u64;
            // SAFETY: deliberately outside this guest's memory: the EPT violation stops it.
            let v = unsafe { core::ptr::read_volatile(p) };
            println!("read {v:#x} from memory this guest does not have");
        }
        "ro-write" => {
            let p = tensor_hcall::boot::BOOT_INFO_GPA as *mut u64;
            // SAFETY: deliberately writes the read-only boot page: the EPT violation stops it.
            unsafe { core::ptr::write_volatile(p, 0) };
            println!("wrote the read-only boot information");
        }
        "vmxon" => {
            let region = 0x10_0000u64;
            // SAFETY: VMXON in a guest exits to the hypervisor, which stops the guest.
            unsafe { core::arch::asm!("vmxon [{}]", in(reg) &region) };
        }
        "vmread" => {
            let v: u64;
            // SAFETY: VMREAD in a guest exits to the hypervisor, which stops the guest.
            unsafe { core::arch::asm!("vmread {}, {}", out(reg) v, in(reg) 0x681eu64) };
            println!("vmread gave {v:#x}");
        }
        // SAFETY: an endless loop with interrupts off; the CPU budget must stop it.
        "spin" => unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(noreturn)) },
        other => println!("unknown scenario {other}"),
    }
    println!("misbehaving guest was not stopped");
    exit(1)
}
