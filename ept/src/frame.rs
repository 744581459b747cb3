//! Where EPT paging structures live: a [`FrameSource`] hands out zeroed 4 KiB frames and makes
//! them accessible. The hypervisor implements it over its frame allocator and direct map; host
//! tests use [`fake::HeapFrames`](crate::fake::HeapFrames).

use core::sync::atomic::AtomicU64;

use crate::addr::HostPhysAddr;

/// Entries of one EPT paging structure. Atomic because the processor sets accessed/dirty flags
/// in them concurrently while guests run (SDM 29.3.5).
pub type Table = [AtomicU64; 512];

/// A source of 4 KiB frames for EPT paging structures.
///
/// # Safety
/// Implementors promise, because the processor will walk these frames by physical address:
/// - `allocate_zeroed` returns a 4-KiB-aligned host-physical frame, zero-filled, that nothing
///   else uses until it is passed to `free`;
/// - `table(frame)` returns the memory *at that host-physical address* for every frame
///   allocated and not freed (and `None` for any other address);
/// - `free` is only called by this crate with frames it got from `allocate_zeroed`.
pub unsafe trait FrameSource {
    /// A zeroed, exclusively owned, 4-KiB-aligned frame, or `None` when exhausted.
    fn allocate_zeroed(&mut self) -> Option<HostPhysAddr>;
    /// Gives back a frame from `allocate_zeroed` (no longer referenced by any table).
    fn free(&mut self, frame: HostPhysAddr);
    /// The entries of an allocated frame.
    fn table(&self, frame: HostPhysAddr) -> Option<&Table>;
}

/// A heap-backed frame source for host tests: frames get made-up host-physical addresses.
#[cfg(any(test, feature = "fake"))]
pub mod fake {
    extern crate alloc;

    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::{FrameSource, Table};
    use crate::addr::HostPhysAddr;

    /// Frames on the heap, numbered from `base`, with an optional limit to test exhaustion.
    pub struct HeapFrames {
        base: u64,
        frames: Vec<Option<Box<Table>>>,
        free_slots: Vec<usize>,
        limit: usize,
        live: usize,
    }

    impl HeapFrames {
        /// At most `limit` frames live at once; addresses start at `base` (4 KiB aligned).
        pub fn new(base: u64, limit: usize) -> Self {
            HeapFrames {
                base: base & !0xFFF,
                frames: Vec::new(),
                free_slots: Vec::new(),
                limit,
                live: 0,
            }
        }

        /// Frames currently allocated.
        pub fn live(&self) -> usize {
            self.live
        }

        /// Changes the limit (to exhaust the source in the middle of a test).
        pub fn set_limit(&mut self, limit: usize) {
            self.limit = limit;
        }

        fn slot(&self, frame: HostPhysAddr) -> Option<usize> {
            let off = frame.as_u64().checked_sub(self.base)?;
            if off % 4096 != 0 {
                return None;
            }
            usize::try_from(off / 4096).ok()
        }
    }

    // SAFETY: frames are distinct heap allocations that `table` returns for exactly the made-up
    // address handed out; nothing but this source and its user touches them, and the fake
    // addresses are never given to a processor.
    unsafe impl FrameSource for HeapFrames {
        fn allocate_zeroed(&mut self) -> Option<HostPhysAddr> {
            if self.live >= self.limit {
                return None;
            }
            let table: Box<Table> = Box::new(core::array::from_fn(|_| AtomicU64::new(0)));
            let slot = match self.free_slots.pop() {
                Some(s) => {
                    self.frames[s] = Some(table);
                    s
                }
                None => {
                    self.frames.push(Some(table));
                    self.frames.len() - 1
                }
            };
            self.live += 1;
            HostPhysAddr::new(self.base + slot as u64 * 4096).ok()
        }

        fn free(&mut self, frame: HostPhysAddr) {
            if let Some(s) = self.slot(frame) {
                if let Some(f @ Some(_)) = self.frames.get_mut(s) {
                    *f = None;
                    self.free_slots.push(s);
                    self.live -= 1;
                }
            }
        }

        fn table(&self, frame: HostPhysAddr) -> Option<&Table> {
            self.frames.get(self.slot(frame)?)?.as_deref()
        }
    }

    impl HeapFrames {
        /// Test helper: sets bits in an entry as the processor would (accessed/dirty).
        pub fn poke(&self, frame: HostPhysAddr, index: usize, or_bits: u64) -> bool {
            match self.table(frame).and_then(|t| t.get(index)) {
                Some(e) => {
                    e.fetch_or(or_bits, Ordering::SeqCst);
                    true
                }
                None => false,
            }
        }
    }
}
