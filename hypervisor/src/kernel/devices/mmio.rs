//! Device registers through an uncached mapping, with bounds-checked volatile accessors.
//! Offsets partly come from the hardware itself (VT-d's fault-recording and IOTLB offsets), so an
//! access outside the mapping never touches memory: reads return all ones (as a master abort
//! would), writes are dropped.

/// A mapped register window.
pub struct Mmio {
    base: u64,
    len: usize,
}

impl Mmio {
    /// Maps `len` bytes of registers at physical `phys`, uncached.
    pub fn map(phys: u64, len: usize) -> Result<Self, hypervisor::paging::MapError> {
        let base = crate::kernel::memory::map_mmio(phys, len as u64)?;
        Ok(Self { base, len })
    }

    fn ok(&self, off: usize, size: usize) -> bool {
        off.is_multiple_of(size) && off.checked_add(size).is_some_and(|e| e <= self.len)
    }

    pub fn read32(&self, off: usize) -> u32 {
        if !self.ok(off, 4) {
            return u32::MAX;
        }
        // SAFETY: `map` mapped [base, base + len) uncached to the device's registers for the
        // life of the kernel (mappings are never removed); the access is aligned and inside it.
        unsafe { core::ptr::read_volatile((self.base + off as u64) as *const u32) }
    }

    pub fn write32(&self, off: usize, v: u32) {
        if self.ok(off, 4) {
            // SAFETY: as in `read32`; register writes have device effects the callers intend.
            unsafe { core::ptr::write_volatile((self.base + off as u64) as *mut u32, v) }
        }
    }

    pub fn read64(&self, off: usize) -> u64 {
        if !self.ok(off, 8) {
            return u64::MAX;
        }
        // SAFETY: as in `read32`, 8-byte aligned and inside the mapping.
        unsafe { core::ptr::read_volatile((self.base + off as u64) as *const u64) }
    }

    pub fn write64(&self, off: usize, v: u64) {
        if self.ok(off, 8) {
            // SAFETY: as in `write32`, 8-byte aligned and inside the mapping.
            unsafe { core::ptr::write_volatile((self.base + off as u64) as *mut u64, v) }
        }
    }
}

/// Polls `done` until it holds or `timeout_us` pass; true if it held.
pub fn poll(timeout_us: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = crate::kernel::tsc::micros_since_boot();
    loop {
        if done() {
            return true;
        }
        if crate::kernel::tsc::micros_since_boot().saturating_sub(start) > timeout_us {
            return done();
        }
        core::hint::spin_loop();
    }
}
