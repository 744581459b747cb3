//! Root, context and second-level translation tables (VT-d spec 3.4, 3.6, 9.1-9.8), built as
//! plain logic over a [`FrameSource`].
//!
//! - The root table has 256 128-bit entries, one per bus; each points at a context table.
//! - A context table has 256 128-bit entries, one per device:function; a present entry names a
//!   domain id, an address width and the domain's second-level page-table root.
//! - A [`Domain`] is one I/O-virtual address space: 3- or 4-level second-level tables whose
//!   leaves give read/write permission to 4 KiB or 2 MiB host pages.
//!
//! A device without a present context entry gets no DMA at all: every request faults.

use bitflags::bitflags;
use core::sync::atomic::Ordering;

use crate::addr::{HostPhys, Iova, SourceId};
use crate::frame::{FrameSource, Table};

/// Why a table operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfFrames,
    /// An address or size not aligned to the page size asked for.
    Misaligned { iova: u64, phys: u64, size: u64 },
    /// The I/O-virtual address does not fit the domain's address width.
    BeyondWidth { iova: u64, width: u8 },
    /// Part of the range is already mapped (or covered by a larger page).
    AlreadyMapped { iova: u64 },
    NotMapped { iova: u64 },
    /// A frame the tables point at is unknown to the frame source (a corrupt table).
    LostFrame { frame: u64 },
}

/// A domain id (the tag the IOTLB and context cache use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DomainId(u16);

impl DomainId {
    /// Domain 0 is reserved when caching mode is set (VT-d 6.2.3.1), so ids start at 1.
    pub const fn new(id: u16) -> Option<Self> {
        if id == 0 { None } else { Some(Self(id)) }
    }
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// Address width of a domain's second-level tables (context entry AW field, 9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressWidth {
    /// 39-bit, 3-level tables.
    Bits39,
    /// 48-bit, 4-level tables.
    Bits48,
}

impl AddressWidth {
    pub const fn levels(self) -> u32 {
        match self {
            Self::Bits39 => 3,
            Self::Bits48 => 4,
        }
    }
    pub const fn bits(self) -> u8 {
        match self {
            Self::Bits39 => 39,
            Self::Bits48 => 48,
        }
    }
    /// The context entry's AW encoding.
    const fn encoding(self) -> u64 {
        match self {
            Self::Bits39 => 1,
            Self::Bits48 => 2,
        }
    }
    /// The widest width both the unit (its SAGAW field) and this crate support.
    pub const fn from_sagaw(sagaw: u8) -> Option<Self> {
        if sagaw & 0b100 != 0 {
            Some(Self::Bits48)
        } else if sagaw & 0b010 != 0 {
            Some(Self::Bits39)
        } else {
            None
        }
    }
}

bitflags! {
    /// Second-level entry permissions (9.8).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Perms: u64 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
    }
}

const PS: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = 1;

/// Page sizes a domain maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Size4K,
    Size2M,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 4096,
            Self::Size2M => 2 << 20,
        }
    }
    const fn level(self) -> u32 {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
        }
    }
}

fn table<F: FrameSource>(frames: &F, frame: u64) -> Result<&Table, MapError> {
    let f = HostPhys::try_new(frame).map_err(|_| MapError::LostFrame { frame })?;
    frames.table(f).ok_or(MapError::LostFrame { frame })
}

/// Index of `iova` in a table at `level` (1 = leaf 4 KiB table).
const fn index(iova: u64, level: u32) -> usize {
    ((iova >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// One translation domain: a second-level page-table tree.
#[derive(Debug)]
pub struct Domain {
    id: DomainId,
    width: AddressWidth,
    root: HostPhys,
}

/// Where an I/O-virtual address goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub phys: HostPhys,
    pub perms: Perms,
    pub size: PageSize,
}

impl Domain {
    pub fn new<F: FrameSource>(frames: &mut F, id: DomainId, width: AddressWidth) -> Result<Self, MapError> {
        let root = frames.allocate_zeroed().ok_or(MapError::OutOfFrames)?;
        Ok(Self { id, width, root })
    }
    pub fn id(&self) -> DomainId {
        self.id
    }
    pub fn width(&self) -> AddressWidth {
        self.width
    }
    /// The second-level page-table root (SLPTPTR of the context entry).
    pub fn root(&self) -> HostPhys {
        self.root
    }

    fn check(&self, iova: Iova, phys: HostPhys, size: PageSize) -> Result<(), MapError> {
        let b = size.bytes();
        if !iova.is_aligned(b) || !phys.is_aligned(b) {
            return Err(MapError::Misaligned { iova: iova.as_u64(), phys: phys.as_u64(), size: b });
        }
        let end = iova.as_u64().checked_add(b - 1).ok_or(MapError::BeyondWidth { iova: iova.as_u64(), width: self.width.bits() })?;
        if end >> self.width.bits() != 0 {
            return Err(MapError::BeyondWidth { iova: iova.as_u64(), width: self.width.bits() });
        }
        Ok(())
    }

    /// Maps one page. Intermediate tables are created as needed with read and write allowed
    /// (the leaf decides).
    pub fn map<F: FrameSource>(&mut self, frames: &mut F, iova: Iova, phys: HostPhys, size: PageSize, perms: Perms) -> Result<(), MapError> {
        self.check(iova, phys, size)?;
        let va = iova.as_u64();
        let mut t = self.root.as_u64();
        let mut level = self.width.levels();
        while level > size.level() {
            let slot = &table(frames, t)?[index(va, level)];
            let e = slot.load(Ordering::Acquire);
            if e & (Perms::READ | Perms::WRITE).bits() == 0 {
                let new = frames.allocate_zeroed().ok_or(MapError::OutOfFrames)?;
                let slot = &table(frames, t)?[index(va, level)];
                slot.store(new.as_u64() | (Perms::READ | Perms::WRITE).bits(), Ordering::Release);
                t = new.as_u64();
            } else if e & PS != 0 {
                return Err(MapError::AlreadyMapped { iova: va });
            } else {
                t = e & ADDR_MASK;
            }
            level -= 1;
        }
        let slot = &table(frames, t)?[index(va, level)];
        let old = slot.load(Ordering::Acquire);
        if old & (Perms::READ | Perms::WRITE).bits() != 0 {
            // A large page may replace a table left empty by earlier unmaps; anything still
            // mapped under it is refused.
            let empty_table = level > 1
                && old & PS == 0
                && table(frames, old & ADDR_MASK)?.iter().all(|e| e.load(Ordering::Acquire) == 0);
            if !empty_table {
                return Err(MapError::AlreadyMapped { iova: va });
            }
            slot.store(0, Ordering::Release);
            if let Ok(f) = HostPhys::try_new(old & ADDR_MASK) {
                frames.free(f);
            }
        }
        let slot = &table(frames, t)?[index(va, level)];
        let ps = if size == PageSize::Size2M { PS } else { 0 };
        slot.store(phys.as_u64() | ps | perms.bits(), Ordering::Release);
        Ok(())
    }

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` with 4 KiB pages (2 MiB where both
    /// addresses and the remaining length allow).
    pub fn map_range<F: FrameSource>(&mut self, frames: &mut F, iova: Iova, phys: HostPhys, len: u64, perms: Perms) -> Result<(), MapError> {
        let mut off = 0;
        while off < len {
            let v = iova.checked_add(off).map_err(|_| MapError::BeyondWidth { iova: iova.as_u64(), width: self.width.bits() })?;
            let p = phys.checked_add(off).map_err(|_| MapError::Misaligned { iova: v.as_u64(), phys: phys.as_u64(), size: off })?;
            let big = PageSize::Size2M.bytes();
            let size = if v.is_aligned(big) && p.is_aligned(big) && len - off >= big { PageSize::Size2M } else { PageSize::Size4K };
            self.map(frames, v, p, size, perms)?;
            off += size.bytes();
        }
        Ok(())
    }

    /// Removes the leaf mapping `iova` and returns what it mapped. The caller must invalidate
    /// the IOTLB for this domain before reusing the frame.
    pub fn unmap<F: FrameSource>(&mut self, frames: &mut F, iova: Iova) -> Result<Translation, MapError> {
        let tr = self.translate(frames, iova).ok_or(MapError::NotMapped { iova: iova.as_u64() })?;
        let va = iova.as_u64();
        let mut t = self.root.as_u64();
        let mut level = self.width.levels();
        while level > tr.size.level() {
            t = table(frames, t)?[index(va, level)].load(Ordering::Acquire) & ADDR_MASK;
            level -= 1;
        }
        table(frames, t)?[index(va, level)].store(0, Ordering::Release);
        Ok(tr)
    }

    /// Walks the tables as the hardware would.
    pub fn translate<F: FrameSource>(&self, frames: &F, iova: Iova) -> Option<Translation> {
        let va = iova.as_u64();
        if va >> self.width.bits() != 0 {
            return None;
        }
        let mut t = self.root.as_u64();
        let mut level = self.width.levels();
        loop {
            let e = table(frames, t).ok()?[index(va, level)].load(Ordering::Acquire);
            let perms = Perms::from_bits_truncate(e);
            if perms.is_empty() {
                return None;
            }
            let leaf = level == 1 || (level == 2 && e & PS != 0);
            if leaf {
                let size = if level == 1 { PageSize::Size4K } else { PageSize::Size2M };
                let base = e & ADDR_MASK & !(size.bytes() - 1);
                let phys = HostPhys::try_new(base | (va & (size.bytes() - 1))).ok()?;
                return Some(Translation { phys, perms, size });
            }
            if level == 1 {
                return None;
            }
            t = e & ADDR_MASK;
            level -= 1;
        }
    }

    /// Every table frame of this domain, root included (for cache flushing on units without
    /// page-walk coherency, and for freeing).
    pub fn frames<F: FrameSource>(&self, frames: &F) -> alloc::vec::Vec<HostPhys> {
        let mut out = alloc::vec![self.root];
        let mut i = 0;
        while i < out.len() {
            let f = out[i];
            let level = self.level_of(frames, f);
            if level > 1 {
                if let Some(t) = frames.table(f) {
                    for e in t.iter().map(|e| e.load(Ordering::Acquire)) {
                        if e & (Perms::READ | Perms::WRITE).bits() != 0 && !(level == 2 && e & PS != 0) {
                            if let Ok(p) = HostPhys::try_new(e & ADDR_MASK) {
                                out.push(p);
                            }
                        }
                    }
                }
            }
            i += 1;
        }
        out
    }

    fn level_of<F: FrameSource>(&self, frames: &F, target: HostPhys) -> u32 {
        // Breadth-first from the root: a frame's level is its depth.
        fn walk<F: FrameSource>(frames: &F, t: u64, level: u32, target: u64) -> Option<u32> {
            if t == target {
                return Some(level);
            }
            if level == 1 {
                return None;
            }
            let tab = frames.table(HostPhys::try_new(t).ok()?)?;
            for e in tab.iter().map(|e| e.load(Ordering::Acquire)) {
                if e & 3 != 0 && !(level == 2 && e & PS != 0) {
                    if let Some(l) = walk(frames, e & ADDR_MASK, level - 1, target) {
                        return Some(l);
                    }
                }
            }
            None
        }
        walk(frames, self.root.as_u64(), self.width.levels(), target.as_u64()).unwrap_or(1)
    }

    /// Frees every table frame. The domain must no longer be referenced by a context entry and
    /// the IOTLB must have been invalidated.
    pub fn destroy<F: FrameSource>(self, frames: &mut F) {
        for f in self.frames(frames) {
            frames.free(f);
        }
    }
}

/// The root table and the context tables under it, for one remapping unit.
#[derive(Debug)]
pub struct ContextTables {
    root: HostPhys,
}

/// A decoded context entry (9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextEntry {
    pub domain: u16,
    pub width: Option<AddressWidth>,
    pub slptptr: u64,
    pub present: bool,
}

impl ContextTables {
    pub fn new<F: FrameSource>(frames: &mut F) -> Result<Self, MapError> {
        Ok(Self { root: frames.allocate_zeroed().ok_or(MapError::OutOfFrames)? })
    }
    /// The root table's address (for RTADDR; legacy mode, TTM = 00).
    pub fn root(&self) -> HostPhys {
        self.root
    }

    /// Points `sid`'s context entry at `domain`: its DMA is translated by the domain's tables.
    /// If the entry was present the caller must invalidate the context cache and IOTLB.
    pub fn assign<F: FrameSource>(&mut self, frames: &mut F, sid: SourceId, domain: &Domain) -> Result<(), MapError> {
        let root = table(frames, self.root.as_u64())?;
        let re = &root[2 * usize::from(sid.bus())];
        let mut ctx = re.load(Ordering::Acquire);
        if ctx & PRESENT == 0 {
            let new = frames.allocate_zeroed().ok_or(MapError::OutOfFrames)?;
            table(frames, self.root.as_u64())?[2 * usize::from(sid.bus())].store(new.as_u64() | PRESENT, Ordering::Release);
            ctx = new.as_u64() | PRESENT;
        }
        let t = table(frames, ctx & ADDR_MASK)?;
        let i = 2 * usize::from(sid.devfn());
        // Clear present, write the high half, then the low half with present last, so hardware
        // never sees a present entry with a stale half.
        t[i].store(0, Ordering::Release);
        t[i + 1].store(domain.width.encoding() | (u64::from(domain.id.get()) << 8), Ordering::Release);
        t[i].store(domain.root.as_u64() | PRESENT, Ordering::Release);
        Ok(())
    }

    /// Removes `sid`'s context entry: its DMA faults from now on (after invalidation).
    pub fn remove<F: FrameSource>(&mut self, frames: &mut F, sid: SourceId) -> Result<(), MapError> {
        let root = table(frames, self.root.as_u64())?;
        let ctx = root[2 * usize::from(sid.bus())].load(Ordering::Acquire);
        if ctx & PRESENT == 0 {
            return Ok(());
        }
        let t = table(frames, ctx & ADDR_MASK)?;
        t[2 * usize::from(sid.devfn())].store(0, Ordering::Release);
        t[2 * usize::from(sid.devfn()) + 1].store(0, Ordering::Release);
        Ok(())
    }

    /// The context entry for `sid`, decoded; `None` when the bus has no context table.
    pub fn entry<F: FrameSource>(&self, frames: &F, sid: SourceId) -> Option<ContextEntry> {
        let ctx = table(frames, self.root.as_u64()).ok()?[2 * usize::from(sid.bus())].load(Ordering::Acquire);
        if ctx & PRESENT == 0 {
            return None;
        }
        let t = table(frames, ctx & ADDR_MASK).ok()?;
        let lo = t[2 * usize::from(sid.devfn())].load(Ordering::Acquire);
        let hi = t[2 * usize::from(sid.devfn()) + 1].load(Ordering::Acquire);
        let width = match hi & 7 {
            1 => Some(AddressWidth::Bits39),
            2 => Some(AddressWidth::Bits48),
            _ => None,
        };
        Some(ContextEntry { domain: ((hi >> 8) & 0xffff) as u16, width, slptptr: lo & ADDR_MASK, present: lo & PRESENT != 0 })
    }

    /// The root table and every context table (for cache flushing).
    pub fn frames<F: FrameSource>(&self, frames: &F) -> alloc::vec::Vec<HostPhys> {
        let mut out = alloc::vec![self.root];
        if let Some(t) = frames.table(self.root) {
            for bus in 0..256 {
                let e = t[2 * bus].load(Ordering::Acquire);
                if e & PRESENT != 0 {
                    if let Ok(p) = HostPhys::try_new(e & ADDR_MASK) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::HeapFrames;

    fn iova(v: u64) -> Iova {
        Iova::try_new(v).unwrap()
    }
    fn hpa(v: u64) -> HostPhys {
        HostPhys::try_new(v).unwrap()
    }
    fn dom(frames: &mut HeapFrames, w: AddressWidth) -> Domain {
        Domain::new(frames, DomainId::new(1).unwrap(), w).unwrap()
    }

    #[test]
    fn maps_and_translates_4k_and_2m_pages_at_both_widths() {
        for w in [AddressWidth::Bits39, AddressWidth::Bits48] {
            let mut f = HeapFrames::new(0x10_0000, 64);
            let mut d = dom(&mut f, w);
            d.map(&mut f, iova(0x1234_5000), hpa(0x8_0000_0000), PageSize::Size4K, Perms::READ).unwrap();
            d.map(&mut f, iova(0x4000_0000), hpa(0x20_0000), PageSize::Size2M, Perms::READ | Perms::WRITE).unwrap();
            let t = d.translate(&f, iova(0x1234_5678)).unwrap();
            assert_eq!((t.phys.as_u64(), t.perms, t.size), (0x8_0000_0678, Perms::READ, PageSize::Size4K));
            let t = d.translate(&f, iova(0x4012_3456)).unwrap();
            assert_eq!((t.phys.as_u64(), t.size), (0x32_3456, PageSize::Size2M));
            assert_eq!(d.translate(&f, iova(0x1234_6000)), None);
            assert_eq!(d.translate(&f, iova(1 << 50)), None);
            // 3 levels: root + one L2 + one L1 for the 4K page, + one L2 for the 2M page
            // (different 1 GiB region); 4 levels add one L3.
            let expected = if w == AddressWidth::Bits39 { 4 } else { 5 };
            assert_eq!(f.live(), expected);
            assert_eq!(d.frames(&f).len(), expected);
        }
    }

    #[test]
    fn refuses_bad_mappings() {
        let mut f = HeapFrames::new(0x10_0000, 64);
        let mut d = dom(&mut f, AddressWidth::Bits39);
        assert_eq!(
            d.map(&mut f, iova(0x1001), hpa(0x2000), PageSize::Size4K, Perms::READ),
            Err(MapError::Misaligned { iova: 0x1001, phys: 0x2000, size: 4096 })
        );
        assert_eq!(
            d.map(&mut f, iova(1 << 39), hpa(0x2000), PageSize::Size4K, Perms::READ),
            Err(MapError::BeyondWidth { iova: 1 << 39, width: 39 })
        );
        d.map(&mut f, iova(0x20_0000), hpa(0x20_0000), PageSize::Size2M, Perms::READ).unwrap();
        assert_eq!(
            d.map(&mut f, iova(0x20_1000), hpa(0x1000), PageSize::Size4K, Perms::READ),
            Err(MapError::AlreadyMapped { iova: 0x20_1000 })
        );
        d.map(&mut f, iova(0x1000), hpa(0x1000), PageSize::Size4K, Perms::READ).unwrap();
        assert_eq!(
            d.map(&mut f, iova(0x1000), hpa(0x5000), PageSize::Size4K, Perms::WRITE),
            Err(MapError::AlreadyMapped { iova: 0x1000 })
        );
        f.set_limit(f.live());
        assert_eq!(
            d.map(&mut f, iova(0x80_0000_0000 >> 1), hpa(0x1000), PageSize::Size4K, Perms::READ),
            Err(MapError::OutOfFrames)
        );
    }

    #[test]
    fn map_range_uses_large_pages_where_it_can_and_unmap_removes() {
        let mut f = HeapFrames::new(0x10_0000, 64);
        let mut d = dom(&mut f, AddressWidth::Bits48);
        d.map_range(&mut f, iova(0x1f_f000), hpa(0x1f_f000), 0x40_2000, Perms::READ | Perms::WRITE).unwrap();
        assert_eq!(d.translate(&f, iova(0x1f_f000)).unwrap().size, PageSize::Size4K);
        assert_eq!(d.translate(&f, iova(0x20_0000)).unwrap().size, PageSize::Size2M);
        assert_eq!(d.translate(&f, iova(0x40_0000)).unwrap().size, PageSize::Size2M);
        assert_eq!(d.translate(&f, iova(0x60_0000)).unwrap().size, PageSize::Size4K);
        assert_eq!(d.translate(&f, iova(0x60_1000)), None);
        let t = d.unmap(&mut f, iova(0x40_0000)).unwrap();
        assert_eq!(t.phys.as_u64(), 0x40_0000);
        assert_eq!(d.translate(&f, iova(0x40_0000)), None);
        assert_eq!(d.unmap(&mut f, iova(0x40_0000)), Err(MapError::NotMapped { iova: 0x40_0000 }));
        d.destroy(&mut f);
        assert_eq!(f.live(), 0);
    }

    #[test]
    fn a_large_page_replaces_a_table_emptied_by_unmaps_but_not_a_used_one() {
        let mut f = HeapFrames::new(0x10_0000, 64);
        let mut d = dom(&mut f, AddressWidth::Bits39);
        d.map_range(&mut f, iova(0x20_0000), hpa(0x20_0000), 0x1_0000, Perms::READ | Perms::WRITE).unwrap();
        d.map(&mut f, iova(0x21_0000), hpa(0x21_0000), PageSize::Size4K, Perms::READ).unwrap();
        assert_eq!(
            d.map(&mut f, iova(0x20_0000), hpa(0x40_0000), PageSize::Size2M, Perms::READ),
            Err(MapError::AlreadyMapped { iova: 0x20_0000 })
        );
        for p in (0x20_0000..0x21_1000).step_by(0x1000) {
            d.unmap(&mut f, iova(p)).unwrap();
        }
        let before = f.live();
        d.map(&mut f, iova(0x20_0000), hpa(0x40_0000), PageSize::Size2M, Perms::READ).unwrap();
        assert_eq!(f.live(), before - 1, "the emptied 4 KiB table is freed");
        assert_eq!(d.translate(&f, iova(0x20_1234)).unwrap().phys.as_u64(), 0x40_1234);
    }

    #[test]
    fn context_entries_name_domain_width_and_tables() {
        let mut f = HeapFrames::new(0x10_0000, 64);
        let mut ctx = ContextTables::new(&mut f).unwrap();
        let d = Domain::new(&mut f, DomainId::new(7).unwrap(), AddressWidth::Bits39).unwrap();
        let nvme = SourceId::new(0, 3, 0).unwrap();
        let other = SourceId::new(0, 4, 0).unwrap();
        assert_eq!(ctx.entry(&f, nvme), None);
        ctx.assign(&mut f, nvme, &d).unwrap();
        let e = ctx.entry(&f, nvme).unwrap();
        assert_eq!(e, ContextEntry { domain: 7, width: Some(AddressWidth::Bits39), slptptr: d.root().as_u64(), present: true });
        // Same bus, other device: the context table exists but its entry is not present.
        assert!(!ctx.entry(&f, other).unwrap().present);
        // Raw layout: root entry bus 0 present; context entry index devfn 0x18.
        let root = f.table(ctx.root()).unwrap();
        let c = root[0].load(Ordering::Relaxed);
        assert_eq!(c & 1, 1);
        let t = f.table(hpa(c & !0xfff)).unwrap();
        assert_eq!(t[2 * 0x18].load(Ordering::Relaxed), d.root().as_u64() | 1);
        assert_eq!(t[2 * 0x18 + 1].load(Ordering::Relaxed), 1 | (7 << 8));
        assert_eq!(ctx.frames(&f).len(), 2);
        ctx.remove(&mut f, nvme).unwrap();
        assert!(!ctx.entry(&f, nvme).unwrap().present);
        assert_eq!(AddressWidth::from_sagaw(0b0110), Some(AddressWidth::Bits48));
        assert_eq!(AddressWidth::from_sagaw(0b0010), Some(AddressWidth::Bits39));
        assert_eq!(AddressWidth::from_sagaw(0b1000), None);
        assert_eq!(DomainId::new(0), None);
    }
}
