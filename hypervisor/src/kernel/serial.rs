//! The COM1 16550 UART: the hypervisor's console and its log. Output goes through a queue
//! (see [`hypervisor::console`]): writers append and hand the UART what it takes without
//! waiting; [`Serial::drain`] and [`Serial::flush`] wait for the rest.

use super::port::{inb, outb};
use core::fmt;
use hypervisor::console::ByteQueue;

const COM1: u16 = 0x3f8;
const LSR: u16 = 5;
/// Line status: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Line status: transmitter empty (holding and shift registers both drained).
const LSR_TEMT: u8 = 1 << 6;
/// Interrupt identification: both bits set when the 16550A's FIFOs are on.
const IIR: u16 = 2;
const IIR_FIFOS: u8 = 0xc0;
/// Bytes that may wait for the UART (about 1.4 s of output at 115200 baud).
const QUEUE_BYTES: usize = 16 << 10;

/// The console UART. Written by polling, through the output queue; there is exactly one
/// instance, behind a lock (see [`CONSOLE`]); the crash paths may break that lock (see
/// [`force_unlock_for_crash`]).
pub struct Serial {
    base: u16,
    queue: ByteQueue<QUEUE_BYTES>,
    /// Bytes the UART takes at once when its transmitter is empty: 16 with the 16550A's FIFO.
    burst: usize,
}

/// The console, shared by the logger.
pub static CONSOLE: spin::Mutex<Serial> = spin::Mutex::new(Serial { base: COM1, queue: ByteQueue::new(), burst: 1 });

/// Hands the UART what it takes now, unless another CPU holds the console (it does the same).
pub fn pump() {
    if let Some(mut c) = CONSOLE.try_lock() {
        c.pump();
    }
}

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
        // SAFETY: reading the interrupt identification register has no side effects with
        // UART interrupts off.
        let fifos = unsafe { inb(b + IIR) } & IIR_FIFOS == IIR_FIFOS;
        self.burst = if fifos { 16 } else { 1 };
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

    /// Queues `byte` and hands the UART what it takes now; waits only when the queue is full.
    pub fn write_byte(&mut self, byte: u8) {
        self.queue_byte(byte);
        self.pump();
    }

    fn queue_byte(&mut self, byte: u8) {
        if self.queue.is_full() {
            self.wait_transmitter();
            self.send_burst();
        }
        if !self.queue.push(byte) {
            // Still full: the UART took nothing (none there). Keep the newest output.
            self.queue.pop();
            self.queue.push(byte);
        }
    }

    /// Waits (bounded: a missing UART must not hang the hypervisor) until the transmitter
    /// takes bytes.
    fn wait_transmitter(&self) {
        for _ in 0..100_000 {
            if self.line_status() & LSR_THRE != 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Up to one burst of queued bytes into the transmitter (which must have room for it).
    fn send_burst(&mut self) {
        for _ in 0..self.burst {
            let Some(b) = self.queue.pop() else { return };
            // SAFETY: writing the transmit register of our console UART.
            unsafe { outb(self.base, b) }
        }
    }

    /// Hands the UART what it takes without waiting: a burst whenever its transmitter is empty.
    pub fn pump(&mut self) {
        while !self.queue.is_empty() && self.line_status() & LSR_THRE != 0 {
            self.send_burst();
        }
    }

    /// Waits until every queued byte is in the UART (errors and warnings do this, so they
    /// are out before anything that may follow them).
    pub fn drain(&mut self) {
        while !self.queue.is_empty() {
            self.wait_transmitter();
            self.send_burst();
        }
    }

    /// Waits until every byte has left the UART, so nothing is lost when the machine stops.
    pub fn flush(&mut self) {
        self.drain();
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
            self.queue_byte(b);
        }
        self.pump();
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
