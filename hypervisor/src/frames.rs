//! The physical frame allocator.
//!
//! Physical memory is a set of free, page-aligned, non-overlapping ranges kept sorted in a
//! fixed-capacity array, so the allocator works before the heap exists. Only ranges the firmware
//! calls *available* are ever added; the kernel image, the boot information, the boot modules and
//! the first megabyte are then carved out with [`FrameAllocator::reserve`], so those frames are
//! never handed out. Allocation is first fit from the lowest address, with any power-of-two
//! alignment (4 KiB frames, 2 MiB or 1 GiB large pages, contiguous runs for DMA).

/// The size of a base page frame.
pub const PAGE_SIZE: u64 = 4096;

/// How many disjoint free ranges the allocator can track.
pub const MAX_RANGES: usize = 256;

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Why the allocator refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free range can hold the request.
    OutOfMemory { size: u64, align: u64 },
    /// The size is zero or not a multiple of [`PAGE_SIZE`], or the alignment is not a power of
    /// two of at least [`PAGE_SIZE`].
    BadRequest { size: u64, align: u64 },
    /// More disjoint free ranges than [`MAX_RANGES`].
    TooFragmented,
    /// A freed range overlaps memory that is already free (a double free).
    DoubleFree { start: u64 },
    /// A range that wraps around the end of the address space.
    Overflow,
}

/// Tracks free physical memory as sorted, disjoint, page-aligned ranges.
#[derive(Clone, Debug)]
pub struct FrameAllocator {
    ranges: [PhysRange; MAX_RANGES],
    count: usize,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

const fn align_up(v: u64, a: u64) -> Option<u64> {
    match v.checked_add(a - 1) {
        Some(x) => Some(x & !(a - 1)),
        None => None,
    }
}

const fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}

impl FrameAllocator {
    /// An allocator with no memory.
    pub const fn new() -> Self {
        Self { ranges: [PhysRange { start: 0, end: 0 }; MAX_RANGES], count: 0 }
    }

    /// The free ranges, sorted by address.
    pub fn free_ranges(&self) -> &[PhysRange] {
        &self.ranges[..self.count]
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free_ranges().iter().map(PhysRange::len).sum()
    }

    /// Adds memory the firmware reports as available. The range is shrunk inward to whole pages;
    /// overlaps with memory already added are merged, not counted twice.
    pub fn add_usable(&mut self, base: u64, len: u64) -> Result<(), FrameError> {
        let end = base.checked_add(len).ok_or(FrameError::Overflow)?;
        let start = align_up(base, PAGE_SIZE).ok_or(FrameError::Overflow)?;
        let end = align_down(end, PAGE_SIZE);
        if start >= end {
            return Ok(());
        }
        self.insert_merging(PhysRange { start, end })
    }

    /// Removes `[base, base + len)`, widened outward to whole pages, from the free memory.
    /// Reserving memory that is not free is not an error.
    pub fn reserve(&mut self, base: u64, len: u64) -> Result<(), FrameError> {
        if len == 0 {
            return Ok(());
        }
        let end = base.checked_add(len).ok_or(FrameError::Overflow)?;
        let cut = PhysRange {
            start: align_down(base, PAGE_SIZE),
            end: align_up(end, PAGE_SIZE).ok_or(FrameError::Overflow)?,
        };
        let mut i = 0;
        while i < self.count {
            let r = self.ranges[i];
            if r.end <= cut.start || r.start >= cut.end {
                i += 1;
                continue;
            }
            let left = PhysRange { start: r.start, end: cut.start.max(r.start) };
            let right = PhysRange { start: cut.end.min(r.end), end: r.end };
            match (left.is_empty(), right.is_empty()) {
                (true, true) => {
                    self.remove_at(i);
                    continue;
                }
                (false, true) => self.ranges[i] = left,
                (true, false) => self.ranges[i] = right,
                (false, false) => {
                    // Check capacity first so a refused split leaves the ranges unchanged.
                    if self.count == MAX_RANGES {
                        return Err(FrameError::TooFragmented);
                    }
                    self.ranges[i] = left;
                    self.insert_at(i + 1, right)?;
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Allocates `size` bytes aligned to `align`, lowest address first.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<u64, FrameError> {
        self.alloc_below(size, align, u64::MAX)
    }

    /// Allocates one zero-offset 4 KiB frame.
    pub fn alloc_frame(&mut self) -> Result<u64, FrameError> {
        self.alloc(PAGE_SIZE, PAGE_SIZE)
    }

    /// Allocates `size` bytes aligned to `align` that end at or below `limit` (for structures
    /// that must be reachable by 32-bit code or an identity map of low memory).
    pub fn alloc_below(&mut self, size: u64, align: u64, limit: u64) -> Result<u64, FrameError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(FrameError::BadRequest { size, align });
        }
        for i in 0..self.count {
            let r = self.ranges[i];
            let Some(start) = align_up(r.start, align) else { continue };
            let Some(end) = start.checked_add(size) else { continue };
            if end > r.end || end > limit {
                continue;
            }
            // Carving [start, end) out of r leaves at most two pieces.
            self.reserve(start, size)?;
            return Ok(start);
        }
        Err(FrameError::OutOfMemory { size, align })
    }

    /// Returns `[base, base + size)` to the free memory. Freeing memory that is already free is
    /// refused, so a double free cannot hand the same frame out twice.
    pub fn free(&mut self, base: u64, size: u64) -> Result<(), FrameError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !base.is_multiple_of(PAGE_SIZE) {
            return Err(FrameError::BadRequest { size, align: PAGE_SIZE });
        }
        let end = base.checked_add(size).ok_or(FrameError::Overflow)?;
        if self.free_ranges().iter().any(|r| r.start < end && base < r.end) {
            return Err(FrameError::DoubleFree { start: base });
        }
        self.insert_merging(PhysRange { start: base, end })
    }

    fn insert_merging(&mut self, mut new: PhysRange) -> Result<(), FrameError> {
        // Absorb every range that overlaps or touches `new`.
        let mut i = 0;
        while i < self.count {
            let r = self.ranges[i];
            if r.end >= new.start && r.start <= new.end {
                new.start = new.start.min(r.start);
                new.end = new.end.max(r.end);
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
        let at = self.ranges[..self.count].iter().position(|r| r.start > new.start).unwrap_or(self.count);
        self.insert_at(at, new)
    }

    fn insert_at(&mut self, at: usize, r: PhysRange) -> Result<(), FrameError> {
        if self.count == MAX_RANGES {
            return Err(FrameError::TooFragmented);
        }
        self.ranges.copy_within(at..self.count, at + 1);
        self.ranges[at] = r;
        self.count += 1;
        Ok(())
    }

    fn remove_at(&mut self, at: usize) {
        self.ranges.copy_within(at + 1..self.count, at);
        self.count -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn typical() -> FrameAllocator {
        // A PC memory map: low memory, a firmware hole, RAM from 1 MiB to 128 MiB.
        let mut a = FrameAllocator::new();
        a.add_usable(0, 0x9fc00).unwrap();
        a.add_usable(MIB, 127 * MIB).unwrap();
        a
    }

    #[test]
    fn partial_pages_are_not_usable() {
        let mut a = FrameAllocator::new();
        a.add_usable(0x1001, 0x3000).unwrap();
        assert_eq!(a.free_ranges(), &[PhysRange { start: 0x2000, end: 0x4000 }]);
        a.add_usable(0x5000, 0xfff).unwrap();
        assert_eq!(a.free_bytes(), 0x2000);
    }

    #[test]
    fn reserved_regions_are_never_handed_out() {
        let mut a = typical();
        // First megabyte (firmware), the kernel at 2 MiB, boot info, and a module.
        a.reserve(0, MIB).unwrap();
        a.reserve(2 * MIB, 0x12_3456).unwrap();
        a.reserve(0x40_0800, 0x100).unwrap();
        a.reserve(8 * MIB, 4 * MIB).unwrap();
        let reserved = [(0, MIB), (2 * MIB, 2 * MIB + 0x12_4000), (0x40_0000, 0x40_1000), (8 * MIB, 12 * MIB)];
        let mut got = 0;
        while let Ok(f) = a.alloc_frame() {
            for &(s, e) in &reserved {
                assert!(f + PAGE_SIZE <= s || f >= e, "frame {f:#x} inside reserved {s:#x}..{e:#x}");
            }
            assert!((MIB..128 * MIB).contains(&f));
            got += 1;
        }
        let expected = (127 * MIB - 0x12_4000 - 0x1000 - 4 * MIB) / PAGE_SIZE;
        assert_eq!(got, expected);
    }

    #[test]
    fn exhaustion_is_an_error_and_free_restores() {
        let mut a = FrameAllocator::new();
        a.add_usable(0x10_0000, 4 * PAGE_SIZE).unwrap();
        let frames: Vec<u64> = (0..4).map(|_| a.alloc_frame().unwrap()).collect();
        assert_eq!(a.alloc_frame(), Err(FrameError::OutOfMemory { size: PAGE_SIZE, align: PAGE_SIZE }));
        let mut sorted = frames.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "no frame handed out twice");
        a.free(frames[2], PAGE_SIZE).unwrap();
        assert_eq!(a.free(frames[2], PAGE_SIZE), Err(FrameError::DoubleFree { start: frames[2] }));
        assert_eq!(a.alloc_frame(), Ok(frames[2]));
        for f in frames {
            a.free(f, PAGE_SIZE).unwrap();
        }
        assert_eq!(a.free_ranges(), &[PhysRange { start: 0x10_0000, end: 0x10_4000 }]);
    }

    #[test]
    fn alignment_is_honoured_and_leftovers_stay_free() {
        let mut a = typical();
        a.reserve(0, MIB).unwrap();
        let before = a.free_bytes();
        let big = a.alloc(2 * MIB, 2 * MIB).unwrap();
        assert_eq!(big % (2 * MIB), 0);
        assert_eq!(big, 2 * MIB, "lowest aligned address first");
        // The megabyte between 1 MiB and 2 MiB stays free for small allocations.
        assert_eq!(a.alloc_frame(), Ok(MIB));
        assert_eq!(a.free_bytes(), before - 2 * MIB - PAGE_SIZE);
        assert!(matches!(a.alloc(GIB, GIB), Err(FrameError::OutOfMemory { .. })));
        assert!(matches!(a.alloc(PAGE_SIZE, 3 * PAGE_SIZE), Err(FrameError::BadRequest { .. })));
        assert!(matches!(a.alloc(100, PAGE_SIZE), Err(FrameError::BadRequest { .. })));
        assert!(matches!(a.alloc(0, PAGE_SIZE), Err(FrameError::BadRequest { .. })));
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn alloc_below_limit() {
        let mut a = FrameAllocator::new();
        a.add_usable(5 * GIB, GIB).unwrap();
        a.add_usable(MIB, MIB).unwrap();
        assert_eq!(a.alloc_below(PAGE_SIZE, PAGE_SIZE, 4 * GIB), Ok(MIB));
        assert!(a.alloc_below(2 * MIB, PAGE_SIZE, 4 * GIB).is_err());
        assert_eq!(a.alloc(2 * MIB, PAGE_SIZE), Ok(5 * GIB));
    }

    #[test]
    fn overlapping_firmware_entries_merge() {
        let mut a = FrameAllocator::new();
        a.add_usable(MIB, 4 * MIB).unwrap();
        a.add_usable(3 * MIB, 4 * MIB).unwrap();
        a.add_usable(7 * MIB, MIB).unwrap();
        assert_eq!(a.free_ranges(), &[PhysRange { start: MIB, end: 8 * MIB }]);
        assert_eq!(a.add_usable(u64::MAX - 10, 100), Err(FrameError::Overflow));
    }

    #[test]
    fn fragmentation_limit_is_an_error_not_corruption() {
        let mut a = FrameAllocator::new();
        a.add_usable(0, (2 * MAX_RANGES as u64 + 2) * PAGE_SIZE).unwrap();
        let mut result = Ok(());
        for i in 0..=MAX_RANGES as u64 {
            result = a.reserve((2 * i + 1) * PAGE_SIZE, PAGE_SIZE);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(FrameError::TooFragmented));
        assert_eq!(a.free_ranges().len(), MAX_RANGES);
        assert!(a.free_ranges().windows(2).all(|w| w[0].end < w[1].start));
    }
}
