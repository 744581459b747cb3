//! Where VT-d structures live: a [`FrameSource`] hands out zeroed 4 KiB frames and makes them
//! accessible. The hypervisor implements it over its frame allocator and direct map; host tests
//! use [`fake::HeapFrames`].

use core::sync::atomic::AtomicU64;

use crate::addr::HostPhys;

/// One 4 KiB frame of 64-bit entries: a root table (256 x 128-bit), a context table
/// (256 x 128-bit) or a second-level paging structure (512 x 64-bit). Atomic because the
/// remapping hardware reads them while software edits them.
pub type Table = [AtomicU64; 512];

/// A source of 4 KiB frames for VT-d structures.
///
/// # Safety
/// Implementors promise, because the remapping hardware walks these frames by physical address:
/// - `allocate_zeroed` returns a 4-KiB-aligned host-physical frame, zero-filled, that nothing
///   else uses until it is passed to `free`;
/// - `table(frame)` returns the memory *at that host-physical address* for every frame
///   allocated and not freed (and `None` for any other address);
/// - `free` is only called by this crate with frames it got from `allocate_zeroed`.
pub unsafe trait FrameSource {
    /// A zeroed, exclusively owned, 4-KiB-aligned frame, or `None` when exhausted.
    fn allocate_zeroed(&mut self) -> Option<HostPhys>;
    /// Gives back a frame from `allocate_zeroed` that no table references any more.
    fn free(&mut self, frame: HostPhys);
    /// The entries of an allocated frame.
    fn table(&self, frame: HostPhys) -> Option<&Table>;
}

/// A heap-backed frame source for host tests: frames get made-up host-physical addresses.
#[cfg(any(test, feature = "fake"))]
pub mod fake {
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::sync::atomic::AtomicU64;

    use super::{FrameSource, Table};
    use crate::addr::HostPhys;

    /// Frames on the heap, numbered from `base`, with a limit to test exhaustion.
    pub struct HeapFrames {
        base: u64,
        frames: Vec<Option<Box<Table>>>,
        limit: usize,
        live: usize,
    }

    impl HeapFrames {
        pub fn new(base: u64, limit: usize) -> Self {
            HeapFrames { base: base & !0xfff, frames: Vec::new(), limit, live: 0 }
        }
        /// Frames currently allocated.
        pub fn live(&self) -> usize {
            self.live
        }
        pub fn set_limit(&mut self, limit: usize) {
            self.limit = limit;
        }
        fn slot(&self, frame: HostPhys) -> Option<usize> {
            let off = frame.as_u64().checked_sub(self.base)?;
            if off % 4096 != 0 {
                return None;
            }
            usize::try_from(off / 4096).ok()
        }
    }

    // SAFETY: the "physical" addresses are made up and only ever resolved through `table`,
    // which returns the heap frame for exactly the addresses handed out and not freed; frames
    // are boxed (stable) and zeroed on allocation. No hardware walks them.
    unsafe impl FrameSource for HeapFrames {
        fn allocate_zeroed(&mut self) -> Option<HostPhys> {
            if self.live >= self.limit {
                return None;
            }
            let slot = match self.frames.iter().position(Option::is_none) {
                Some(s) => s,
                None => {
                    self.frames.push(None);
                    self.frames.len() - 1
                }
            };
            self.frames[slot] = Some(Box::new([const { AtomicU64::new(0) }; 512]));
            self.live += 1;
            HostPhys::try_new(self.base + slot as u64 * 4096).ok()
        }

        fn free(&mut self, frame: HostPhys) {
            if let Some(s) = self.slot(frame) {
                if let Some(f) = self.frames.get_mut(s) {
                    if f.take().is_some() {
                        self.live -= 1;
                    }
                }
            }
        }

        fn table(&self, frame: HostPhys) -> Option<&Table> {
            self.frames.get(self.slot(frame)?)?.as_deref()
        }
    }
}
