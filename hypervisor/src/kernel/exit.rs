//! Stopping the machine with a status the test harness and `cargo xtask run` can read.
//!
//! There is no single "power off with status" on a PC, so every path is tried in order; each one
//! is harmless where its device does not exist:
//! 1. a result line on COM1 (`tensorvisor: exit success` / `tensorvisor: exit failure`), always
//!    first and flushed, which is what the harness judges;
//! 2. QEMU's `isa-debug-exit` device at port 0xf4: QEMU exits with `(value << 1) | 1`, so 0x10
//!    gives status 33 (success) and 0x11 gives 35 (failure);
//! 3. Bochs, success: the magic breakpoint `xchg bx, bx` (`magic_break: enabled=1`) drops into the
//!    debugger, whose command file then says `quit`: Bochs exits 0;
//! 4. Bochs, failure (and success if the breakpoint is off): port 0x8900 "Shutdown": Bochs exits 1;
//! 5. ACPI S5 through the PM1a control block QEMU's chipsets place at 0x604 and Bochs' at 0xb004;
//! 6. otherwise halt with interrupts off.

use super::port::{outb, outl, outw};
use super::serial::CONSOLE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Success,
    Failure,
}

pub fn exit(code: ExitCode) -> ! {
    let word = match code {
        ExitCode::Success => "success",
        ExitCode::Failure => "failure",
    };
    log::info!("tensorvisor: exit {word}");
    CONSOLE.lock().flush();
    // SAFETY: the ports below are the emulators' exit and power devices, owned by the
    // hypervisor; on a machine without them the writes go nowhere.
    unsafe {
        outl(0xf4, if code == ExitCode::Success { 0x10 } else { 0x11 });
        if code == ExitCode::Success {
            core::arch::asm!("xchg bx, bx", options(nomem, nostack, preserves_flags));
        }
        for b in b"Shutdown" {
            outb(0x8900, *b);
        }
        outw(0x604, 0x2000);
        outw(0xb004, 0x2000);
    }
    loop {
        // SAFETY: halting with interrupts off stops this CPU for good, which is the intent.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}
