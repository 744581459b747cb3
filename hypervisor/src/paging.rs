//! x86-64 4-level page tables (Intel SDM Vol. 3A, 4.5), built as plain logic.
//!
//! [`PageTables`] maps, translates and unmaps over a [`TableMemory`], which hands out zeroed
//! table frames and gives access to them. The hypervisor implements it over its frame allocator
//! and direct map; the host tests over heap memory. Leaves may be 4 KiB, 2 MiB or 1 GiB pages;
//! [`PageTables::map_range`] picks the largest size that alignment allows.

/// Bits of a page-table entry (SDM Vol. 3A, tables 4-19 and 4-20).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PageFlags(u64);

impl PageFlags {
    pub const PRESENT: Self = Self(1 << 0);
    pub const WRITABLE: Self = Self(1 << 1);
    pub const USER: Self = Self(1 << 2);
    pub const WRITE_THROUGH: Self = Self(1 << 3);
    pub const NO_CACHE: Self = Self(1 << 4);
    pub const ACCESSED: Self = Self(1 << 5);
    pub const DIRTY: Self = Self(1 << 6);
    /// PS: the entry maps a 2 MiB (PD) or 1 GiB (PDPT) page.
    pub const HUGE: Self = Self(1 << 7);
    pub const GLOBAL: Self = Self(1 << 8);
    pub const NO_EXECUTE: Self = Self(1 << 63);

    const ALL: u64 = 0x1ff | (1 << 63);

    pub const fn empty() -> Self {
        Self(0)
    }
    pub const fn bits(self) -> u64 {
        self.0
    }
    pub const fn from_bits_truncate(bits: u64) -> Self {
        Self(bits & Self::ALL)
    }
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl core::ops::BitOr for PageFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

/// Physical address bits of an entry (bits 51:12).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Leaf sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }

    /// The table level that holds a leaf of this size (1 = PT, 2 = PD, 3 = PDPT).
    const fn level(self) -> usize {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }
}

/// Why a mapping request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The virtual or physical address is not aligned to the page size.
    Misaligned { virt: u64, phys: u64, size: PageSize },
    /// The virtual address is not canonical (bits 63:47 not all equal).
    NonCanonical(u64),
    /// Something is already mapped there (a leaf, or a table where a large page was asked).
    AlreadyMapped(u64),
    /// The table memory could not provide another table.
    OutOfTables,
    /// Nothing is mapped at that address.
    NotMapped(u64),
    /// A range whose end wraps around.
    Overflow,
}

/// Table frames: allocation and access.
pub trait TableMemory {
    /// A zeroed, 4 KiB-aligned frame for a table.
    fn alloc_table(&mut self) -> Result<u64, MapError>;
    /// The table stored in the frame at `phys`, which this memory handed out.
    fn table(&mut self, phys: u64) -> &mut [u64; 512];
}

/// Whether `virt` is canonical for 4-level paging.
pub const fn is_canonical(virt: u64) -> bool {
    let top = (virt as i64) >> 47;
    top == 0 || top == -1
}

const fn index(virt: u64, level: usize) -> usize {
    ((virt >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// What [`PageTables::translate`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub phys: u64,
    pub flags: PageFlags,
    pub size: PageSize,
}

/// A 4-level hierarchy rooted at a PML4 frame.
pub struct PageTables<M: TableMemory> {
    root: u64,
    mem: M,
}

impl<M: TableMemory> PageTables<M> {
    /// A new, empty hierarchy.
    pub fn new(mut mem: M) -> Result<Self, MapError> {
        let root = mem.alloc_table()?;
        Ok(Self { root, mem })
    }

    /// The physical address of the PML4 (the value for CR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The table memory, for callers that need it back.
    pub fn memory(&mut self) -> &mut M {
        &mut self.mem
    }

    /// Maps one page of `size` at `virt` to `phys`. `flags` gets PRESENT (and HUGE for large
    /// pages) added. Intermediate tables are writable and, if `flags` has USER, user-accessible;
    /// the leaf decides the real permissions.
    pub fn map(&mut self, virt: u64, phys: u64, size: PageSize, flags: PageFlags) -> Result<(), MapError> {
        if !is_canonical(virt) {
            return Err(MapError::NonCanonical(virt));
        }
        if !virt.is_multiple_of(size.bytes()) || !phys.is_multiple_of(size.bytes()) || phys & !ADDR_MASK != 0 {
            return Err(MapError::Misaligned { virt, phys, size });
        }
        let table_flags = PageFlags::PRESENT | PageFlags::WRITABLE | PageFlags(flags.bits() & PageFlags::USER.bits());
        let mut table = self.root;
        for level in (size.level() + 1..=4).rev() {
            let i = index(virt, level);
            let entry = self.mem.table(table)[i];
            if entry & PageFlags::PRESENT.bits() == 0 {
                let next = self.mem.alloc_table()?;
                self.mem.table(table)[i] = next | table_flags.bits();
                table = next;
            } else if entry & PageFlags::HUGE.bits() != 0 {
                return Err(MapError::AlreadyMapped(virt));
            } else {
                self.mem.table(table)[i] = entry | table_flags.bits();
                table = entry & ADDR_MASK;
            }
        }
        let i = index(virt, size.level());
        let slot = &mut self.mem.table(table)[i];
        if *slot & PageFlags::PRESENT.bits() != 0 {
            return Err(MapError::AlreadyMapped(virt));
        }
        let mut leaf = flags | PageFlags::PRESENT;
        if size != PageSize::Size4K {
            leaf = leaf | PageFlags::HUGE;
        }
        *slot = phys | leaf.bits();
        Ok(())
    }

    /// Maps `[virt, virt + len)` to `[phys, phys + len)`, using 1 GiB pages (if `allow_1g`) and
    /// 2 MiB pages wherever both addresses are aligned and enough length remains, 4 KiB pages
    /// elsewhere. Returns how many leaves of each size it wrote: `[4K, 2M, 1G]`.
    pub fn map_range(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        flags: PageFlags,
        allow_1g: bool,
    ) -> Result<[usize; 3], MapError> {
        let mask = PageSize::Size4K.bytes() - 1;
        if virt & mask != 0 || phys & mask != 0 || len & mask != 0 {
            return Err(MapError::Misaligned { virt, phys, size: PageSize::Size4K });
        }
        virt.checked_add(len).ok_or(MapError::Overflow)?;
        phys.checked_add(len).ok_or(MapError::Overflow)?;
        let mut counts = [0usize; 3];
        let mut off = 0;
        while off < len {
            let (v, p, left) = (virt + off, phys + off, len - off);
            let fits = |s: PageSize| v % s.bytes() == 0 && p % s.bytes() == 0 && left >= s.bytes();
            let size = if allow_1g && fits(PageSize::Size1G) {
                PageSize::Size1G
            } else if fits(PageSize::Size2M) {
                PageSize::Size2M
            } else {
                PageSize::Size4K
            };
            self.map(v, p, size, flags)?;
            counts[size.level() - 1] += 1;
            off += size.bytes();
        }
        Ok(counts)
    }

    /// Walks the tables for `virt`.
    pub fn translate(&mut self, virt: u64) -> Option<Translation> {
        if !is_canonical(virt) {
            return None;
        }
        let mut table = self.root;
        for level in (1..=4).rev() {
            let entry = self.mem.table(table)[index(virt, level)];
            if entry & PageFlags::PRESENT.bits() == 0 {
                return None;
            }
            let leaf_size = match level {
                1 => Some(PageSize::Size4K),
                2 if entry & PageFlags::HUGE.bits() != 0 => Some(PageSize::Size2M),
                3 if entry & PageFlags::HUGE.bits() != 0 => Some(PageSize::Size1G),
                _ => None,
            };
            if let Some(size) = leaf_size {
                let base = entry & ADDR_MASK & !(size.bytes() - 1);
                return Some(Translation {
                    phys: base + (virt & (size.bytes() - 1)),
                    flags: PageFlags::from_bits_truncate(entry),
                    size,
                });
            }
            table = entry & ADDR_MASK;
        }
        None
    }

    /// Removes the 4 KiB mapping at `virt` (large pages are not split here) and returns the
    /// physical address it mapped. The caller flushes the TLB.
    pub fn unmap_4k(&mut self, virt: u64) -> Result<u64, MapError> {
        let mut table = self.root;
        for level in (2..=4).rev() {
            let entry = self.mem.table(table)[index(virt, level)];
            if entry & PageFlags::PRESENT.bits() == 0 {
                return Err(MapError::NotMapped(virt));
            }
            if entry & PageFlags::HUGE.bits() != 0 {
                return Err(MapError::AlreadyMapped(virt));
            }
            table = entry & ADDR_MASK;
        }
        let slot = &mut self.mem.table(table)[index(virt, 1)];
        if *slot & PageFlags::PRESENT.bits() == 0 {
            return Err(MapError::NotMapped(virt));
        }
        let phys = *slot & ADDR_MASK;
        *slot = 0;
        Ok(phys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::collections::HashMap;

    /// Heap-backed table memory with a frame budget, standing in for the frame allocator.
    struct FakeMemory {
        tables: HashMap<u64, Box<[u64; 512]>>,
        next: u64,
        budget: usize,
    }

    impl FakeMemory {
        fn new(budget: usize) -> Self {
            Self { tables: HashMap::new(), next: 0x100_0000, budget }
        }
    }

    impl TableMemory for FakeMemory {
        fn alloc_table(&mut self) -> Result<u64, MapError> {
            if self.tables.len() == self.budget {
                return Err(MapError::OutOfTables);
            }
            let f = self.next;
            self.next += 4096;
            self.tables.insert(f, Box::new([0; 512]));
            Ok(f)
        }
        fn table(&mut self, phys: u64) -> &mut [u64; 512] {
            self.tables.get_mut(&phys).expect("walk reached a frame the fake never handed out")
        }
    }

    const KIB4: u64 = 4096;
    const MIB2: u64 = 2 << 20;
    const GIB1: u64 = 1 << 30;
    const DIRECT: u64 = 0xffff_8000_0000_0000;

    fn rw_nx() -> PageFlags {
        PageFlags::WRITABLE | PageFlags::NO_EXECUTE
    }

    #[test]
    fn every_page_size_maps_and_translates() {
        let mut pt = PageTables::new(FakeMemory::new(64)).unwrap();
        pt.map(0x20_0000, 0x20_0000, PageSize::Size4K, PageFlags::empty()).unwrap();
        pt.map(DIRECT + 2 * MIB2, 2 * MIB2, PageSize::Size2M, rw_nx()).unwrap();
        pt.map(DIRECT + 4 * GIB1, 4 * GIB1, PageSize::Size1G, rw_nx()).unwrap();

        let t = pt.translate(0x20_0123).unwrap();
        assert_eq!((t.phys, t.size), (0x20_0123, PageSize::Size4K));
        assert!(!t.flags.contains(PageFlags::WRITABLE) && !t.flags.contains(PageFlags::NO_EXECUTE));

        let t = pt.translate(DIRECT + 2 * MIB2 + 0x1_2345).unwrap();
        assert_eq!((t.phys, t.size), (2 * MIB2 + 0x1_2345, PageSize::Size2M));
        assert!(t.flags.contains(PageFlags::HUGE | PageFlags::WRITABLE | PageFlags::NO_EXECUTE));

        let t = pt.translate(DIRECT + 4 * GIB1 + 0x3fff_ffff).unwrap();
        assert_eq!((t.phys, t.size), (5 * GIB1 - 1, PageSize::Size1G));

        assert_eq!(pt.translate(0x20_1000), None);
        assert_eq!(pt.translate(DIRECT + 5 * GIB1), None);
    }

    #[test]
    fn misaligned_noncanonical_and_double_maps_are_refused() {
        let mut pt = PageTables::new(FakeMemory::new(64)).unwrap();
        assert!(matches!(pt.map(0x1000, 0x1000, PageSize::Size2M, rw_nx()), Err(MapError::Misaligned { .. })));
        assert!(matches!(pt.map(GIB1, MIB2, PageSize::Size1G, rw_nx()), Err(MapError::Misaligned { .. })));
        assert!(matches!(pt.map(0x123, 0x1000, PageSize::Size4K, rw_nx()), Err(MapError::Misaligned { .. })));
        assert_eq!(pt.map(0x0000_8000_0000_0000, 0, PageSize::Size4K, rw_nx()), Err(MapError::NonCanonical(0x0000_8000_0000_0000)));

        pt.map(MIB2, 0, PageSize::Size2M, rw_nx()).unwrap();
        assert_eq!(pt.map(MIB2, 0, PageSize::Size2M, rw_nx()), Err(MapError::AlreadyMapped(MIB2)));
        // A 4 KiB page inside an existing 2 MiB page, and a 2 MiB page over a 4 KiB table.
        assert_eq!(pt.map(MIB2 + KIB4, 0, PageSize::Size4K, rw_nx()), Err(MapError::AlreadyMapped(MIB2 + KIB4)));
        pt.map(4 * MIB2 + KIB4, 0, PageSize::Size4K, rw_nx()).unwrap();
        assert_eq!(pt.map(4 * MIB2, 0, PageSize::Size2M, rw_nx()), Err(MapError::AlreadyMapped(4 * MIB2)));
    }

    #[test]
    fn map_range_uses_largest_aligned_pages() {
        let mut pt = PageTables::new(FakeMemory::new(64)).unwrap();
        // 4 KiB short of 2 MiB below, then 2 GiB + 2 MiB + 4 KiB beyond an aligned start.
        let start = GIB1 - MIB2 - KIB4;
        let len = (MIB2 + KIB4) + 2 * GIB1 + MIB2 + KIB4;
        let counts = pt.map_range(DIRECT + start, start, len, rw_nx(), true).unwrap();
        assert_eq!(counts, [2, 2, 2]);
        for probe in [start, GIB1, 2 * GIB1 + 77, 3 * GIB1 + MIB2 + 5, start + len - 1] {
            assert_eq!(pt.translate(DIRECT + probe).unwrap().phys, probe);
        }
        assert_eq!(pt.translate(DIRECT + start + len), None);

        // Without 1 GiB pages the same range needs 2 MiB pages.
        let mut pt = PageTables::new(FakeMemory::new(64)).unwrap();
        let counts = pt.map_range(DIRECT, 0, 2 * GIB1, rw_nx(), false).unwrap();
        assert_eq!(counts, [0, 1024, 0]);
        assert!(matches!(pt.map_range(0, 0, 100, rw_nx(), false), Err(MapError::Misaligned { .. })));
    }

    #[test]
    fn running_out_of_table_frames_is_an_error() {
        // Root + PDPT + PD + one PT fit; a second PT (next 2 MiB region) does not.
        let mut pt = PageTables::new(FakeMemory::new(4)).unwrap();
        pt.map(0, 0, PageSize::Size4K, rw_nx()).unwrap();
        assert_eq!(pt.map(MIB2, 0, PageSize::Size4K, rw_nx()), Err(MapError::OutOfTables));
        assert!(pt.translate(MIB2).is_none());
    }

    #[test]
    fn unmap_leaves_a_guard_hole() {
        let mut pt = PageTables::new(FakeMemory::new(64)).unwrap();
        pt.map_range(0x40_0000, 0x40_0000, 16 * KIB4, rw_nx(), false).unwrap();
        assert_eq!(pt.unmap_4k(0x40_0000 + 3 * KIB4), Ok(0x40_3000));
        assert_eq!(pt.translate(0x40_3000), None);
        assert!(pt.translate(0x40_2fff).is_some() && pt.translate(0x40_4000).is_some());
        assert_eq!(pt.unmap_4k(0x40_3000), Err(MapError::NotMapped(0x40_3000)));
        pt.map(MIB2 * 8, 0, PageSize::Size2M, rw_nx()).unwrap();
        assert_eq!(pt.unmap_4k(MIB2 * 8), Err(MapError::AlreadyMapped(MIB2 * 8)));
    }
}
