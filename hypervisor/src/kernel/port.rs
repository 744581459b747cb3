//! x86 port I/O. The hypervisor owns the legacy ports it touches (COM1, the PIT, the emulators'
//! exit ports); nothing else in the kernel issues IN/OUT.

/// Writes a byte to an I/O port.
///
/// # Safety
/// The caller must own the device behind `port` and know that the write has no effect on memory
/// safety (legacy devices with no DMA).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller guarantees the port is ours to write; OUT touches no memory.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes a 16-bit word to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: the caller guarantees the port is ours to write; OUT touches no memory.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes a 32-bit word to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller guarantees the port is ours to write; OUT touches no memory.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// The caller must own the device behind `port`; reads of some devices have side effects.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller guarantees the port is ours to read; IN touches no memory.
    unsafe { core::arch::asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}
