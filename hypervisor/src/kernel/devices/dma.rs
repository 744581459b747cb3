//! Memory that devices reach: physically contiguous buffers from the frame allocator, reached by
//! the CPU through the direct map, and the IOMMU's table frames ([`TableFrames`]).
//!
//! The CPU side never forms a reference into a buffer a device may write: reads and writes go
//! through volatile copies with checked offsets.

use crate::kernel::memory::{FRAMES, PHYS_OFFSET};
use alloc::collections::BTreeSet;
use hypervisor::frames::PAGE_SIZE;
use iommu::{FrameSource, HostPhys, Table};

/// A contiguous, zeroed, DMA-able buffer. Freed explicitly (devices may still own it).
pub struct DmaBuffer {
    phys: u64,
    len: u64,
}

impl DmaBuffer {
    /// `len` rounded up to 4 KiB, aligned to `align` (a power of two >= 4096).
    pub fn new(len: u64, align: u64) -> Option<Self> {
        let len = len.checked_next_multiple_of(PAGE_SIZE)?.max(PAGE_SIZE);
        let phys = FRAMES.lock().alloc(len, align.max(PAGE_SIZE)).ok()?;
        // SAFETY: the frames were just allocated (exclusively ours) and RAM is in the direct map,
        // writable, at PHYS_OFFSET + phys.
        unsafe { core::ptr::write_bytes((PHYS_OFFSET + phys) as *mut u8, 0, len as usize) };
        Some(Self { phys, len })
    }
    pub fn phys(&self) -> u64 {
        self.phys
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Physical addresses of the 4 KiB pages from `offset` on.
    pub fn page(&self, index: u64) -> u64 {
        self.phys + index * PAGE_SIZE
    }

    fn ptr(&self, off: u64, n: usize) -> Option<*mut u8> {
        let end = off.checked_add(n as u64)?;
        (end <= self.len).then(|| (PHYS_OFFSET + self.phys + off) as *mut u8)
    }

    /// Volatile 32-bit read at `off`; `None` outside the buffer or misaligned.
    pub fn read32(&self, off: u64) -> Option<u32> {
        if !off.is_multiple_of(4) {
            return None;
        }
        let p = self.ptr(off, 4)?;
        // SAFETY: inside the buffer (checked), aligned; the buffer is ours and in the direct map.
        // Volatile: the device may write it concurrently.
        Some(unsafe { core::ptr::read_volatile(p as *const u32) })
    }
    pub fn write32(&self, off: u64, v: u32) -> Option<()> {
        if !off.is_multiple_of(4) {
            return None;
        }
        let p = self.ptr(off, 4)?;
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(p as *mut u32, v) };
        Some(())
    }
    pub fn write64(&self, off: u64, v: u64) -> Option<()> {
        self.write32(off, v as u32)?;
        self.write32(off + 4, (v >> 32) as u32)
    }
    /// Copies bytes out (volatile, byte by byte in words where aligned).
    pub fn read_into(&self, off: u64, out: &mut [u8]) -> Option<()> {
        let p = self.ptr(off, out.len())?;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: inside the buffer (the whole range was checked); volatile byte reads.
            *b = unsafe { core::ptr::read_volatile(p.add(i)) };
        }
        Some(())
    }
    /// The buffer as bytes, for the CPU alone. Only sound once no device can write it (its IOMMU
    /// mapping removed, or no command outstanding): the caller promises that.
    ///
    /// # Safety
    /// No device DMA to this buffer may happen while the slice lives.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer is ours, in the direct map, `len` bytes; the caller guarantees no
        // concurrent DMA writes.
        unsafe { core::slice::from_raw_parts((PHYS_OFFSET + self.phys) as *const u8, self.len as usize) }
    }
    /// Gives the buffer up for good: its bytes stay valid for the kernel's life.
    pub fn leak(self) -> (u64, u64) {
        (self.phys, self.len)
    }
    pub fn free(self) {
        let _ = FRAMES.lock().free(self.phys, self.len);
    }
}

/// IOMMU table frames: from the frame allocator, reached through the direct map.
#[derive(Default)]
pub struct TableFrames {
    live: BTreeSet<u64>,
}

// SAFETY: frames come from FRAMES (4 KiB-aligned, exclusively ours until freed), are zeroed
// before being handed out, and `table` resolves exactly the live ones to their direct-map
// address, which is the memory at that physical address.
unsafe impl FrameSource for TableFrames {
    fn allocate_zeroed(&mut self) -> Option<HostPhys> {
        let phys = FRAMES.lock().alloc_frame().ok()?;
        // SAFETY: just allocated, ours; RAM is mapped writable in the direct map.
        unsafe { core::ptr::write_bytes((PHYS_OFFSET + phys) as *mut u8, 0, PAGE_SIZE as usize) };
        self.live.insert(phys);
        HostPhys::try_new(phys).ok()
    }

    fn free(&mut self, frame: HostPhys) {
        if self.live.remove(&frame.as_u64()) {
            let _ = FRAMES.lock().free(frame.as_u64(), PAGE_SIZE);
        }
    }

    fn table(&self, frame: HostPhys) -> Option<&Table> {
        if !self.live.contains(&frame.as_u64()) {
            return None;
        }
        // SAFETY: a live frame of ours, 4 KiB-aligned, in the direct map; `Table` is 4096 bytes
        // of atomics, valid for any bit pattern, and only ever accessed atomically.
        Some(unsafe { &*((PHYS_OFFSET + frame.as_u64()) as *const Table) })
    }
}
