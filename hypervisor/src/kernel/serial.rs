//! The COM1 16550 UART: the hypervisor's console and its log.

use super::port::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3f8;
const LSR: u16 = 5;
/// Line status: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Line status: transmitter empty (holding and shift registers both drained).
const LSR_TEMT: u8 = 1 << 6;

/// The console UART. Writing is done by polling; there is exactly one instance, behind a lock
/// (see [`CONSOLE`]); the crash paths may break that lock (see [`force_unlock_for_crash`]).
pub struct Serial {
    base: u16,
}

/// The console, shared by the logger.
pub static CONSOLE: spin::Mutex<Serial> = spin::Mutex::new(Serial { base: COM1 });

impl Serial {
    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init(&mut self) {
        let b = self.base;
        // SAFETY: COM1 is the hypervisor's console; programming it has no memory effects.
        unsafe {
            outb(b + 1, 0x00); // no interrupts
            outb(b + 3, 0x80); // DLAB on
            outb(b, 0x01); // divisor 1: 115200 baud
            outb(b + 1, 0x00);
            outb(b + 3, 0x03); // 8 bits, no parity, one stop bit, DLAB off
            outb(b + 2, 0xc7); // FIFOs on and cleared, 14-byte threshold
            outb(b + 4, 0x03); // DTR, RTS
        }
    }

    fn line_status(&self) -> u8 {
        // SAFETY: reading COM1's line status register has no side effects.
        unsafe { inb(self.base + LSR) }
    }

    /// A byte typed on the console, if one is waiting (LSR bit 0, data ready).
    pub fn read_byte(&mut self) -> Option<u8> {
        if self.line_status() & 1 == 0 {
            return None;
        }
        // SAFETY: reading the receive buffer of our console UART (data is ready).
        Some(unsafe { inb(self.base) })
    }

    pub fn write_byte(&mut self, byte: u8) {
        // Bounded wait: a missing UART must not hang the hypervisor forever.
        for _ in 0..100_000 {
            if self.line_status() & LSR_THRE != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing the transmit register of our console UART.
        unsafe { outb(self.base, byte) }
    }

    /// Waits until every byte has left the UART, so nothing is lost when the machine stops.
    pub fn flush(&mut self) {
        for _ in 0..1_000_000 {
            if self.line_status() & LSR_TEMT != 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
        Ok(())
    }
}

/// Prints to the console (no log level, no timestamp): the banner and reports.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut console = $crate::kernel::serial::CONSOLE.lock();
        let _ = writeln!(console, $($arg)*);
    }};
}

/// Releases the console lock if a fault interrupted its holder, so the crash report can print.
/// Only the crash paths call this; they never return to the interrupted code.
pub fn force_unlock_for_crash() {
    if CONSOLE.is_locked() {
        // SAFETY: called only on the fatal paths (exception, panic), which never return to the
        // holder of the lock; with one CPU running, no other holder exists.
        unsafe { CONSOLE.force_unlock() };
    }
}
