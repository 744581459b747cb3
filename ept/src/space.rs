//! A guest-physical address space: a 4-level EPT (PML4 → PDPT → PD → PT, SDM 29.3.2) built and
//! changed as plain logic over a [`FrameSource`].
//!
//! Levels are numbered as the walk: 4 = PML4 (512 GiB per entry), 3 = PDPT (1 GiB, may map a
//! 1 GiB page), 2 = PD (2 MiB, may map a 2 MiB page), 1 = PT (4 KiB pages).
//!
//! Changing a mapping that a guest may have cached (unmap, permission change) needs INVEPT before
//! the guest runs again; those methods return [`NeedsInvept`] to make that hard to forget.

use core::fmt;
use core::sync::atomic::Ordering;

use vmx::{EptVpidCap, MemoryType};

use crate::addr::{AddrError, GuestPhysAddr, HostPhysAddr};
use crate::entry::{EptEntry, EptPerms};
use crate::frame::FrameSource;

/// A page size EPT can map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB (PTE).
    Size4K,
    /// 2 MiB (PDE with bit 7).
    Size2M,
    /// 1 GiB (PDPTE with bit 7).
    Size1G,
}

impl PageSize {
    /// Bytes in the page.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    const fn from_level(level: u8) -> PageSize {
        match level {
            3 => PageSize::Size1G,
            2 => PageSize::Size2M,
            _ => PageSize::Size4K,
        }
    }
}

/// Which large pages the address space may use (from IA32_VMX_EPT_VPID_CAP bits 16, 17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSizes {
    /// 2 MiB pages allowed.
    pub size_2m: bool,
    /// 1 GiB pages allowed.
    pub size_1g: bool,
}

impl PageSizes {
    /// 4 KiB pages only.
    pub const ONLY_4K: PageSizes = PageSizes {
        size_2m: false,
        size_1g: false,
    };
    /// Every size.
    pub const ALL: PageSizes = PageSizes {
        size_2m: true,
        size_1g: true,
    };

    /// The sizes the processor supports.
    pub fn from_caps(caps: EptVpidCap) -> PageSizes {
        PageSizes {
            size_2m: caps.contains(EptVpidCap::PAGE_2M),
            size_1g: caps.contains(EptVpidCap::PAGE_1G),
        }
    }

    const fn allows(self, level: u8) -> bool {
        match level {
            1 => true,
            2 => self.size_2m,
            3 => self.size_1g,
            _ => false,
        }
    }
}

/// The result of translating one guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address of the byte.
    pub hpa: HostPhysAddr,
    /// Permissions of the mapping.
    pub perms: EptPerms,
    /// Size of the page that maps it.
    pub page_size: PageSize,
    /// The guest-physical base of that page.
    pub page_gpa: GuestPhysAddr,
    /// The memory type of the mapping (`Err(raw)` if the entry holds a reserved one).
    pub memory_type: Result<MemoryType, u8>,
}

/// What went wrong with an address-space operation. The address space is unchanged after an
/// error, except that empty intermediate tables may remain allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// An address or length is not 4 KiB aligned.
    Misaligned {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The length is 0.
    EmptyRange,
    /// The range overflows or leaves its address space.
    Address(AddrError),
    /// Part of the range is already mapped (at `gpa`).
    Overlap {
        /// The first mapped address found.
        gpa: GuestPhysAddr,
    },
    /// Part of the range is not mapped (at `gpa`).
    NotMapped {
        /// The first unmapped address found.
        gpa: GuestPhysAddr,
    },
    /// The frame source is exhausted.
    OutOfFrames,
    /// Permissions the processor would reject (write without read, or no permission).
    InvalidPerms(EptPerms),
    /// A table address the frame source does not know: the tables are corrupt.
    BadTable(HostPhysAddr),
}

impl From<AddrError> for EptError {
    fn from(e: AddrError) -> Self {
        EptError::Address(e)
    }
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EptError::Misaligned { what, value } => {
                write!(f, "{what} {value:#x} is not 4 KiB aligned")
            }
            EptError::EmptyRange => f.write_str("empty range"),
            EptError::Address(e) => write!(f, "{e}"),
            EptError::Overlap { gpa } => write!(f, "{gpa} is already mapped"),
            EptError::NotMapped { gpa } => write!(f, "{gpa} is not mapped"),
            EptError::OutOfFrames => f.write_str("out of frames for EPT tables"),
            EptError::InvalidPerms(p) => write!(f, "invalid EPT permissions {p:?}"),
            EptError::BadTable(t) => write!(f, "EPT table {t} unknown to the frame source"),
        }
    }
}

/// Returned by operations that removed or reduced mappings: the caller must run INVEPT for this
/// address space (single-context with its EPTP) before its guests run again (SDM 29.4.3.1).
#[must_use = "stale EPT translations stay cached until INVEPT"]
#[derive(Debug, PartialEq, Eq)]
pub struct NeedsInvept;

const PAGE: u64 = 4096;

const fn span(level: u8) -> u64 {
    1u64 << (12 + 9 * (level as u32 - 1))
}

const fn index(gpa: u64, level: u8) -> usize {
    ((gpa >> (12 + 9 * (level as u32 - 1))) & 511) as usize
}

const fn is_leaf(e: EptEntry, level: u8) -> bool {
    level == 1 || ((level == 2 || level == 3) && e.is_large())
}

/// Leaf attributes copied when a large page is split.
fn leaf_like(parent: EptEntry, frame: u64, child_level: u8) -> EptEntry {
    // Keep R/W/X, memory type, ignore-PAT, and the A/D bits; replace the address; bit 7 only if
    // the child is itself a large page.
    let keep = parent.0 & 0x3FF & !(1 << 7);
    let large = if child_level > 1 { 1 << 7 } else { 0 };
    EptEntry((frame & crate::entry::ADDR_MASK) | keep | large)
}

/// One guest's EPT hierarchy.
pub struct GuestAddressSpace<F: FrameSource> {
    frames: F,
    root: HostPhysAddr,
    sizes: PageSizes,
    tables: usize,
}

impl<F: FrameSource> GuestAddressSpace<F> {
    /// An empty address space (one PML4 frame) that maps with the given page sizes.
    pub fn new(mut frames: F, sizes: PageSizes) -> Result<Self, EptError> {
        let root = frames.allocate_zeroed().ok_or(EptError::OutOfFrames)?;
        Ok(GuestAddressSpace {
            frames,
            root,
            sizes,
            tables: 1,
        })
    }

    /// The host-physical address of the PML4 (for the EPTP).
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// Number of paging-structure frames in use.
    pub fn table_count(&self) -> usize {
        self.tables
    }

    /// The frame source.
    pub fn frames(&self) -> &F {
        &self.frames
    }

    /// Frees every paging structure and gives the frame source back.
    pub fn teardown(mut self) -> F {
        let root = self.root;
        let _ = self.free_subtree(root, 4);
        self.frames.free(root);
        self.frames
    }

    fn load(&self, table: HostPhysAddr, idx: usize) -> Result<EptEntry, EptError> {
        let t = self.frames.table(table).ok_or(EptError::BadTable(table))?;
        Ok(EptEntry(t[idx & 511].load(Ordering::Acquire)))
    }

    fn store(&self, table: HostPhysAddr, idx: usize, e: EptEntry) -> Result<(), EptError> {
        let t = self.frames.table(table).ok_or(EptError::BadTable(table))?;
        t[idx & 511].store(e.0, Ordering::Release);
        Ok(())
    }

    fn alloc_table(&mut self) -> Result<HostPhysAddr, EptError> {
        let t = self.frames.allocate_zeroed().ok_or(EptError::OutOfFrames)?;
        self.tables += 1;
        Ok(t)
    }

    fn free_table(&mut self, t: HostPhysAddr) {
        self.frames.free(t);
        self.tables -= 1;
    }

    /// Checks a range: 4 KiB aligned, non-empty, inside the guest-physical space. Returns its end.
    fn check_range(gpa: GuestPhysAddr, len: u64) -> Result<u64, EptError> {
        if !gpa.is_aligned(PAGE) {
            return Err(EptError::Misaligned {
                what: "guest-physical address",
                value: gpa.as_u64(),
            });
        }
        if !len.is_multiple_of(PAGE) {
            return Err(EptError::Misaligned {
                what: "length",
                value: len,
            });
        }
        if len == 0 {
            return Err(EptError::EmptyRange);
        }
        // The last byte must be addressable: gpa + len may equal the limit.
        gpa.checked_add(len - 1)?;
        Ok(gpa.as_u64() + len)
    }

    /// Maps `[gpa, gpa + len)` to `[hpa, hpa + len)` with `perms` and `memory_type`, using the
    /// largest pages that alignment of both addresses, the remaining length and [`PageSizes`]
    /// allow. Fails without change if any part is already mapped.
    pub fn map(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        perms: EptPerms,
        memory_type: MemoryType,
    ) -> Result<(), EptError> {
        if !perms.is_valid(false) && !perms.is_valid(true) {
            return Err(EptError::InvalidPerms(perms));
        }
        let end = Self::check_range(gpa, len)?;
        if !hpa.is_aligned(PAGE) {
            return Err(EptError::Misaligned {
                what: "host-physical address",
                value: hpa.as_u64(),
            });
        }
        hpa.checked_add(len - 1)?;
        if let Some(g) = self.find(gpa.as_u64(), end, true)? {
            return Err(EptError::Overlap { gpa: g });
        }
        let mut off = 0;
        while off < len {
            match self.map_one(
                gpa.as_u64() + off,
                hpa.as_u64() + off,
                len - off,
                perms,
                memory_type,
            ) {
                Ok(size) => off += size,
                Err(e) => {
                    if off > 0 {
                        // Undo: the pages mapped so far end on page boundaries, so no split
                        // (and no allocation) is needed.
                        let _ = self.clear(self.root, 4, 0, gpa.as_u64(), gpa.as_u64() + off);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn map_one(
        &mut self,
        g: u64,
        h: u64,
        rem: u64,
        perms: EptPerms,
        mt: MemoryType,
    ) -> Result<u64, EptError> {
        let mut table = self.root;
        for level in (1..=4u8).rev() {
            let idx = index(g, level);
            let e = self.load(table, idx)?;
            let s = span(level);
            let fits =
                self.sizes.allows(level) && g.is_multiple_of(s) && h.is_multiple_of(s) && rem >= s;
            if fits && !e.is_present() {
                let frame = HostPhysAddr::new(h)?;
                self.store(
                    table,
                    idx,
                    EptEntry::leaf(frame, perms, mt, false, level > 1),
                )?;
                return Ok(s);
            }
            if e.is_present() {
                if is_leaf(e, level) {
                    return Err(EptError::Overlap {
                        gpa: GuestPhysAddr::new(g & !(s - 1))?,
                    });
                }
                table = e.addr();
            } else {
                let t = self.alloc_table()?;
                self.store(table, idx, EptEntry::table(t))?;
                table = t;
            }
        }
        // Level 1 always fits (4 KiB aligned, rem >= 4 KiB), so the loop returned.
        Err(EptError::Misaligned {
            what: "length",
            value: rem,
        })
    }

    /// Finds the first mapped (`want_mapped`) or unmapped address in `[start, end)`.
    fn find(
        &self,
        start: u64,
        end: u64,
        want_mapped: bool,
    ) -> Result<Option<GuestPhysAddr>, EptError> {
        self.find_in(self.root, 4, 0, start, end, want_mapped)
    }

    fn find_in(
        &self,
        table: HostPhysAddr,
        level: u8,
        base: u64,
        start: u64,
        end: u64,
        want_mapped: bool,
    ) -> Result<Option<GuestPhysAddr>, EptError> {
        let s = span(level);
        let first = index(start.max(base), level);
        for idx in first..512 {
            let eb = base + idx as u64 * s;
            if eb >= end {
                break;
            }
            let lo = start.max(eb);
            let e = self.load(table, idx)?;
            if !e.is_present() {
                if !want_mapped {
                    return Ok(Some(GuestPhysAddr::new(lo)?));
                }
            } else if is_leaf(e, level) {
                if want_mapped {
                    return Ok(Some(GuestPhysAddr::new(lo)?));
                }
            } else if let Some(g) =
                self.find_in(e.addr(), level - 1, eb, start, end, want_mapped)?
            {
                return Ok(Some(g));
            }
        }
        Ok(None)
    }

    /// Makes sure no large page straddles `boundary` by splitting the ones that do.
    fn split_at(&mut self, boundary: u64) -> Result<(), EptError> {
        if boundary >= GuestPhysAddr::LIMIT || boundary.is_multiple_of(span(3)) {
            // No page is larger than 1 GiB, so none straddles a 1 GiB boundary.
            return Ok(());
        }
        let mut table = self.root;
        for level in (2..=4u8).rev() {
            let idx = index(boundary, level);
            let e = self.load(table, idx)?;
            if !e.is_present() {
                return Ok(());
            }
            if is_leaf(e, level) {
                if boundary.is_multiple_of(span(level)) {
                    return Ok(());
                }
                let child = self.alloc_table()?;
                let child_span = span(level - 1);
                for i in 0..512u64 {
                    let frame = e.addr().as_u64() + i * child_span;
                    self.store(child, i as usize, leaf_like(e, frame, level - 1))?;
                }
                self.store(table, idx, EptEntry::table(child))?;
                table = child;
            } else {
                table = e.addr();
            }
        }
        Ok(())
    }

    /// Clears every mapping in `[start, end)` (large pages there must not straddle the ends),
    /// freeing tables that become empty. Returns whether the table at `table` is now empty.
    fn clear(
        &mut self,
        table: HostPhysAddr,
        level: u8,
        base: u64,
        start: u64,
        end: u64,
    ) -> Result<bool, EptError> {
        let s = span(level);
        let first = index(start.max(base), level);
        for idx in first..512 {
            let eb = base + idx as u64 * s;
            if eb >= end {
                break;
            }
            let e = self.load(table, idx)?;
            if !e.is_present() {
                continue;
            }
            let whole = eb >= start && eb + s <= end;
            if is_leaf(e, level) {
                // After split_at a leaf is either wholly inside or wholly outside the range.
                if whole {
                    self.store(table, idx, EptEntry::EMPTY)?;
                }
            } else if whole {
                self.free_subtree(e.addr(), level - 1)?;
                self.store(table, idx, EptEntry::EMPTY)?;
                self.free_table(e.addr());
            } else if self.clear(e.addr(), level - 1, eb, start, end)? {
                self.store(table, idx, EptEntry::EMPTY)?;
                self.free_table(e.addr());
            }
        }
        let t = self.frames.table(table).ok_or(EptError::BadTable(table))?;
        Ok(t.iter().all(|e| e.load(Ordering::Acquire) & 0b111 == 0))
    }

    fn free_subtree(&mut self, table: HostPhysAddr, level: u8) -> Result<(), EptError> {
        if level == 1 {
            return Ok(());
        }
        for idx in 0..512 {
            let e = self.load(table, idx)?;
            if e.is_present() && !is_leaf(e, level) {
                self.free_subtree(e.addr(), level - 1)?;
                self.store(table, idx, EptEntry::EMPTY)?;
                self.free_table(e.addr());
            }
        }
        Ok(())
    }

    /// Unmaps `[gpa, gpa + len)`, which must be wholly mapped; large pages that straddle an end
    /// are split first (which may allocate frames).
    pub fn unmap(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<NeedsInvept, EptError> {
        let end = Self::check_range(gpa, len)?;
        if let Some(g) = self.find(gpa.as_u64(), end, false)? {
            return Err(EptError::NotMapped { gpa: g });
        }
        self.split_at(gpa.as_u64())?;
        self.split_at(end)?;
        self.clear(self.root, 4, 0, gpa.as_u64(), end)?;
        Ok(NeedsInvept)
    }

    /// Sets the permissions of `[gpa, gpa + len)`, which must be wholly mapped; large pages that
    /// straddle an end are split first.
    pub fn protect(
        &mut self,
        gpa: GuestPhysAddr,
        len: u64,
        perms: EptPerms,
    ) -> Result<NeedsInvept, EptError> {
        if !perms.is_valid(false) && !perms.is_valid(true) {
            return Err(EptError::InvalidPerms(perms));
        }
        let end = Self::check_range(gpa, len)?;
        if let Some(g) = self.find(gpa.as_u64(), end, false)? {
            return Err(EptError::NotMapped { gpa: g });
        }
        self.split_at(gpa.as_u64())?;
        self.split_at(end)?;
        self.set_perms(self.root, 4, 0, gpa.as_u64(), end, perms)?;
        Ok(NeedsInvept)
    }

    fn set_perms(
        &mut self,
        table: HostPhysAddr,
        level: u8,
        base: u64,
        start: u64,
        end: u64,
        perms: EptPerms,
    ) -> Result<(), EptError> {
        let s = span(level);
        let first = index(start.max(base), level);
        for idx in first..512 {
            let eb = base + idx as u64 * s;
            if eb >= end {
                break;
            }
            let e = self.load(table, idx)?;
            if !e.is_present() {
                continue;
            }
            if is_leaf(e, level) {
                self.store(table, idx, e.with_perms(perms))?;
            } else {
                self.set_perms(e.addr(), level - 1, eb, start, end, perms)?;
            }
        }
        Ok(())
    }

    /// Translates one guest-physical address; `Ok(None)` if it is not mapped.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Result<Option<Translation>, EptError> {
        let g = gpa.as_u64();
        let mut table = self.root;
        for level in (1..=4u8).rev() {
            let e = self.load(table, index(g, level))?;
            if !e.is_present() {
                return Ok(None);
            }
            if is_leaf(e, level) {
                let s = span(level);
                let hpa = e.addr().checked_add(g & (s - 1))?;
                return Ok(Some(Translation {
                    hpa,
                    perms: e.perms(),
                    page_size: PageSize::from_level(level),
                    page_gpa: gpa.align_down(s),
                    memory_type: e.memory_type(),
                }));
            }
            table = e.addr();
        }
        Ok(None)
    }

    /// Translates `[gpa, gpa + len)` for an access that needs `need`, if it is mapped
    /// host-physically contiguous with those permissions; the hypervisor's bounds-checked guest
    /// memory accessors use this. `len` may be 0 (then only `gpa` must be mapped).
    pub fn translate_range(
        &self,
        gpa: GuestPhysAddr,
        len: u64,
        need: EptPerms,
    ) -> Result<HostPhysAddr, EptError> {
        let last = gpa.checked_add(len.saturating_sub(1))?;
        let first = self.translate(gpa)?.ok_or(EptError::NotMapped { gpa })?;
        let mut page = first;
        loop {
            if !page.perms.contains(need) {
                return Err(EptError::InvalidPerms(page.perms));
            }
            let page_end = page.page_gpa.as_u64() + page.page_size.bytes();
            if last.as_u64() < page_end {
                return Ok(first.hpa);
            }
            let next_gpa = GuestPhysAddr::new(page_end)?;
            let next = self
                .translate(next_gpa)?
                .ok_or(EptError::NotMapped { gpa: next_gpa })?;
            let expected = first.hpa.checked_add(page_end - gpa.as_u64())?;
            if next.hpa != expected {
                return Err(EptError::NotMapped { gpa: next_gpa });
            }
            page = next;
        }
    }

    /// The accessed and dirty flags of the leaf mapping `gpa` (with A/D enabled in the EPTP).
    pub fn accessed_dirty(&self, gpa: GuestPhysAddr) -> Result<Option<(bool, bool)>, EptError> {
        let g = gpa.as_u64();
        let mut table = self.root;
        for level in (1..=4u8).rev() {
            let e = self.load(table, index(g, level))?;
            if !e.is_present() {
                return Ok(None);
            }
            if is_leaf(e, level) {
                return Ok(Some((e.accessed(), e.dirty())));
            }
            table = e.addr();
        }
        Ok(None)
    }

    /// The size of page a fresh mapping at `gpa`/`hpa` with `len` bytes would start with.
    pub fn best_page_size(&self, gpa: GuestPhysAddr, hpa: HostPhysAddr, len: u64) -> PageSize {
        for size in [PageSize::Size1G, PageSize::Size2M] {
            let b = size.bytes();
            if self.sizes.allows(size.level()) && gpa.is_aligned(b) && hpa.is_aligned(b) && len >= b
            {
                return size;
            }
        }
        PageSize::Size4K
    }
}
