//! A guest's memory: one contiguous block of host frames, zeroed, reached by the guest through
//! its own EPT and by the hypervisor only through bounds- and permission-checked copies.

use super::super::memory::{FRAMES, PHYS_OFFSET};
use ept::{EptPerms, FrameSource, GuestAddressSpace, GuestPhysAddr, HostPhysAddr, PageSizes, Table};
use hypervisor::frames::PAGE_SIZE;
use vmx::{EptVpidCap, MemoryType};

/// EPT paging structures come from the frame allocator and are reached through the direct map.
pub struct KernelFrames;

// SAFETY: frames come from the global frame allocator, which never hands a frame out twice, are
// zeroed through the direct map before use, and `table` returns the direct-map view of exactly
// that host-physical frame; `free` returns frames to the allocator.
unsafe impl FrameSource for KernelFrames {
    fn allocate_zeroed(&mut self) -> Option<HostPhysAddr> {
        let phys = FRAMES.lock().alloc_frame().ok()?;
        // SAFETY: the frame was just allocated for us and the direct map covers all RAM.
        unsafe { core::ptr::write_bytes((PHYS_OFFSET + phys) as *mut u8, 0, PAGE_SIZE as usize) };
        HostPhysAddr::new(phys).ok()
    }

    fn free(&mut self, frame: HostPhysAddr) {
        if let Err(e) = FRAMES.lock().free(frame.as_u64(), PAGE_SIZE) {
            log::error!("ept: freeing table frame {:#x}: {e:?}", frame.as_u64());
        }
    }

    fn table(&self, frame: HostPhysAddr) -> Option<&Table> {
        if !frame.is_aligned(PAGE_SIZE) {
            return None;
        }
        // SAFETY: `frame` is a table frame this source allocated (the EPT code only walks
        // entries it wrote), so it is RAM inside the direct map, 4 KiB aligned, and lives until
        // it is freed; AtomicU64 entries tolerate the CPU setting A/D bits concurrently.
        Some(unsafe { &*((PHYS_OFFSET + frame.as_u64()) as *const Table) })
    }
}

/// Why guest memory could not be set up or accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamError {
    OutOfMemory,
    Ept(ept::EptError),
    /// A hypervisor access to guest memory outside what the guest has, or without permission.
    Access { gpa: u64, len: u64 },
}

/// A guest's RAM and its EPT.
pub struct GuestRam {
    base: u64,
    size: u64,
    space: GuestAddressSpace<KernelFrames>,
}

/// The first guest page is left unmapped so a null pointer faults.
pub const NULL_GUARD: u64 = PAGE_SIZE;

impl GuestRam {
    /// Takes `size` bytes (rounded up to 2 MiB) of zeroed host memory and maps it at guest-physical
    /// 0: page 0 unmapped, the `read_only` ranges (page-aligned, disjoint) read-only, the rest RWX
    /// with the largest pages that fit.
    pub fn new(size: u64, caps: EptVpidCap, read_only: &[(u64, u64)]) -> Result<Self, RamError> {
        Self::with_first_page(size, caps, read_only, NULL_GUARD, None)
    }

    /// Like [`GuestRam::new`], mapping from `first` (0 for a Linux tenant, whose kernel reads the
    /// real-mode area at guest-physical 0) up to `mapped` (the whole block if `None`; the rest
    /// of the block is the hypervisor's until mapped elsewhere).
    pub fn with_first_page(size: u64, caps: EptVpidCap, read_only: &[(u64, u64)], first: u64, mapped: Option<u64>) -> Result<Self, RamError> {
        const GRANULE: u64 = 2 << 20;
        let size = size.max(GRANULE).next_multiple_of(GRANULE);
        let base = FRAMES.lock().alloc(size, GRANULE).map_err(|_| RamError::OutOfMemory)?;
        // SAFETY: the block was just allocated for this guest and lies in the direct map; it is
        // zeroed so nothing of an earlier owner is visible to the new guest.
        unsafe { core::ptr::write_bytes((PHYS_OFFSET + base) as *mut u8, 0, size as usize) };
        let mut space = GuestAddressSpace::new(KernelFrames, PageSizes::from_caps(caps)).map_err(RamError::Ept)?;
        let gpa = |a: u64| GuestPhysAddr::new(a).map_err(|_| RamError::Access { gpa: a, len: 0 });
        let hpa = |a: u64| HostPhysAddr::new(base + a).map_err(|_| RamError::Access { gpa: a, len: 0 });
        // Map page by page where permissions differ, then the rest in one large-page run.
        let mut at = first;
        let mut ranges = alloc::vec::Vec::from(read_only);
        ranges.sort_unstable();
        for (start, len) in ranges {
            if start > at {
                space.map(gpa(at)?, hpa(at)?, start - at, EptPerms::RWX, MemoryType::WriteBack).map_err(RamError::Ept)?;
            }
            space.map(gpa(start)?, hpa(start)?, len, EptPerms::READ, MemoryType::WriteBack).map_err(RamError::Ept)?;
            at = start + len;
        }
        let end = mapped.unwrap_or(size).min(size);
        space.map(gpa(at)?, hpa(at)?, end - at, EptPerms::RWX, MemoryType::WriteBack).map_err(RamError::Ept)?;
        Ok(Self { base, size, space })
    }

    /// Host-physical address of guest-physical 0 and the RAM's size (the IOMMU domain of a
    /// passed-through device maps the same range).
    pub fn host_range(&self) -> (u64, u64) {
        (self.base, self.size)
    }

    /// Maps a passed-through device's BAR window: host-physical MMIO at `gpa`, read-write, not
    /// executable, uncached (SDM 29.3.7: the EPT memory type UC wins over the guest's PAT). Only
    /// the guest reaches it; the hypervisor's own accessors stay confined to RAM (`checked`).
    pub fn map_device(&mut self, gpa: u64, hpa: u64, len: u64) -> Result<(), RamError> {
        let g = GuestPhysAddr::new(gpa).map_err(|_| RamError::Access { gpa, len })?;
        let h = HostPhysAddr::new(hpa).map_err(|_| RamError::Access { gpa, len })?;
        if gpa < self.size {
            return Err(RamError::Access { gpa, len });
        }
        self.space.map(g, h, len, EptPerms::READ | EptPerms::WRITE, MemoryType::Uncacheable).map_err(RamError::Ept)
    }

    /// Maps the block's page at `offset` (beyond what `with_first_page` mapped) read-only at
    /// guest-physical `gpa`: a page the guest reads without exits and whose stores trap (the
    /// Linux tenant's hypercall page).
    pub fn map_read_only_page(&mut self, gpa: u64, offset: u64) -> Result<(), RamError> {
        let err = RamError::Access { gpa, len: PAGE_SIZE };
        if offset.checked_add(PAGE_SIZE).is_none_or(|end| end > self.size) {
            return Err(err);
        }
        let g = GuestPhysAddr::new(gpa).map_err(|_| err)?;
        let h = HostPhysAddr::new(self.base + offset).map_err(|_| err)?;
        self.space.map(g, h, PAGE_SIZE, EptPerms::READ, MemoryType::WriteBack).map_err(RamError::Ept)
    }

    /// The EPT root, for the EPTP.
    pub fn ept_root(&self) -> HostPhysAddr {
        self.space.root()
    }

    /// Host-physical address of `[gpa, gpa + len)` if the guest may access it with `need`.
    fn checked(&self, gpa: u64, len: u64, need: EptPerms) -> Result<u64, RamError> {
        let err = RamError::Access { gpa, len };
        let g = GuestPhysAddr::new(gpa).map_err(|_| err)?;
        let hpa = self.space.translate_range(g, len, need).map_err(|_| err)?.as_u64();
        // Defence in depth: the translation must land inside this guest's own block.
        if hpa < self.base || hpa.checked_add(len).is_none_or(|end| end > self.base + self.size) {
            return Err(err);
        }
        Ok(hpa)
    }

    /// Copies guest memory the guest can read into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        let hpa = self.checked(gpa, buf.len() as u64, EptPerms::READ)?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `checked` proved the range is inside this guest's block in the direct map;
            // the guest may change it concurrently, so the copy is volatile byte by byte and the
            // result is only ever treated as plain bytes.
            *b = unsafe { core::ptr::read_volatile((PHYS_OFFSET + hpa + i as u64) as *const u8) };
        }
        Ok(())
    }

    /// Whether the guest may access `[gpa, gpa + len)` (read, and write if asked).
    pub fn check_access(&self, gpa: u64, len: u64, write: bool) -> bool {
        let need = if write { EptPerms::READ | EptPerms::WRITE } else { EptPerms::READ };
        self.checked(gpa, len, need).is_ok()
    }

    /// Copies `data` into guest memory the guest can write. `&self`: guest memory is shared
    /// with the guest; the copy is volatile.
    pub fn write_shared(&self, gpa: u64, data: &[u8]) -> Result<(), RamError> {
        let hpa = self.checked(gpa, data.len() as u64, EptPerms::READ | EptPerms::WRITE)?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read`; the range is guest-writable memory of this guest.
            unsafe { core::ptr::write_volatile((PHYS_OFFSET + hpa + i as u64) as *mut u8, *b) };
        }
        Ok(())
    }

    /// Writes while the guest is not running yet (loading), ignoring the guest's permissions but
    /// not the bounds of its memory.
    pub fn load(&mut self, gpa: u64, data: &[u8]) -> Result<(), RamError> {
        let end = gpa.checked_add(data.len() as u64).ok_or(RamError::Access { gpa, len: data.len() as u64 })?;
        if end > self.size {
            return Err(RamError::Access { gpa, len: data.len() as u64 });
        }
        // SAFETY: `[gpa, end)` is inside this guest's block (checked above), which lies in the
        // direct map and is not yet used by a running guest.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), (PHYS_OFFSET + self.base + gpa) as *mut u8, data.len());
        }
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // The frames go back zeroed the next time they are given to a guest (see `new`).
        if let Err(e) = FRAMES.lock().free(self.base, self.size) {
            log::error!("guest memory at {:#x}: {e:?}", self.base);
        }
    }
}
