//! Printing on the hypervisor console and exiting, through hypercalls.
//!
//! Guests print through the `ConsoleWrite` hypercall, not an emulated UART: one exit per write
//! instead of two or more per byte, and the hypervisor prefixes every line with the guest's name.

use crate::{call, Hypercall, Transport};
use core::fmt;

/// A `fmt::Write` sink over a transport. The text must live in guest memory the hypervisor can
/// read, which any stack or static buffer of the guest is.
pub struct Console<'a, T: Transport + ?Sized> {
    transport: &'a mut T,
}

impl<'a, T: Transport + ?Sized> Console<'a, T> {
    pub fn new(transport: &'a mut T) -> Self {
        Self { transport }
    }
}

impl<T: Transport + ?Sized> fmt::Write for Console<'_, T> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(crate::STAGE_BYTES) {
            let gpa = self.transport.stage(chunk);
            call(self.transport, Hypercall::ConsoleWrite { gpa, len: chunk.len() as u64 }).map_err(|_| fmt::Error)?;
        }
        Ok(())
    }
}

/// A `fmt::Write` sink that gathers a line (up to the transport's staging size) and hands it
/// to the hypervisor in one `ConsoleWrite` when it ends, fills up or is dropped: one exit per
/// line instead of one per formatted piece, and a line printed by one vCPU is never cut into by
/// another vCPU of the same tenant (the hypervisor keeps one line per tenant).
pub struct Line<'a, T: Transport + ?Sized> {
    transport: &'a mut T,
    buf: [u8; crate::STAGE_BYTES],
    len: usize,
}

impl<'a, T: Transport + ?Sized> Line<'a, T> {
    pub fn new(transport: &'a mut T) -> Self {
        Self { transport, buf: [0; crate::STAGE_BYTES], len: 0 }
    }

    /// Hands what is gathered to the hypervisor.
    pub fn flush(&mut self) -> fmt::Result {
        if self.len == 0 {
            return Ok(());
        }
        let gpa = self.transport.stage(&self.buf[..self.len]);
        let len = self.len as u64;
        self.len = 0;
        call(self.transport, Hypercall::ConsoleWrite { gpa, len }).map(|_| ()).map_err(|_| fmt::Error)
    }
}

impl<T: Transport + ?Sized> fmt::Write for Line<'_, T> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush()?;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl<T: Transport + ?Sized> Drop for Line<'_, T> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Ends the guest with `status`; the hypervisor logs it.
#[cfg(target_arch = "x86_64")]
pub fn exit(status: u32) -> ! {
    let _ = call(&mut crate::arch::Vmcall::new(), Hypercall::Exit { status });
    // Only reached if the hypervisor ignored the exit: halting stops the guest.
    loop {
        // SAFETY: HLT in a guest exits to the hypervisor, which stops it.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}

/// Prints a line on the hypervisor console (guest builds only).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut transport = $crate::arch::Vmcall::new();
        let mut line = $crate::console::Line::new(&mut transport);
        let _ = writeln!(line, $($arg)*);
        let _ = line.flush();
    }};
}

#[cfg(all(feature = "panic-handler", target_os = "none"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::println!("guest panic: {info}");
    exit(101)
}
