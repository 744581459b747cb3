//! Physical memory, the hypervisor's own page tables and the heap.
//!
//! At entry the boot code's tables identity-map the first 4 GiB. [`init`] then:
//! 1. builds the frame allocator from the multiboot2 memory map, keeping out the first megabyte
//!    (firmware), the kernel image, the boot information and every module;
//! 2. builds new 4-level tables: the kernel image identity-mapped with 4 KiB pages and per-section
//!    permissions (text RX, rodata R, data RW, NX wherever the CPU has it), with the guard page
//!    under each stack left unmapped; and a direct map of RAM at [`PHYS_OFFSET`] with 1 GiB pages
//!    (2 MiB where the CPU lacks them or the range is not aligned), read-write, never executable.
//!    Firmware-reserved ranges and device MMIO are not in the direct map: drivers map those
//!    uncached when they claim them;
//! 3. switches CR3, after which low memory outside the kernel image is unmapped (a null or stray
//!    pointer faults);
//! 4. carves the heap out of the frame allocator and hands it to the global allocator.

use super::boot::symbol_addr;
use super::cpu::CpuFeatures;
use hypervisor::frames::{FrameAllocator, FrameError, PAGE_SIZE};
use hypervisor::multiboot2::{BootInfo, MemoryKind};
use hypervisor::paging::{MapError, PageFlags, PageSize, PageTables, TableMemory};

/// Where the direct map of physical memory starts.
pub const PHYS_OFFSET: u64 = 0xffff_8000_0000_0000;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The frame allocator, shared by everything that needs physical memory after boot.
pub static FRAMES: spin::Mutex<FrameAllocator> = spin::Mutex::new(FrameAllocator::new());

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// The stacks and their guard pages, for naming the stack a fault overflowed.
fn guard_pages() -> [(&'static str, u64); 4] {
    [
        ("boot CPU's kernel stack", symbol_addr!(boot_stack_guard)),
        ("double-fault stack", symbol_addr!(ist1_guard)),
        ("NMI stack", symbol_addr!(ist2_guard)),
        ("machine-check stack", symbol_addr!(ist3_guard)),
    ]
}

/// The stack whose guard page holds `addr`, if any.
pub fn guard_page_owner(addr: u64) -> Option<&'static str> {
    guard_pages().into_iter().find(|&(_, g)| (g..g + PAGE_SIZE).contains(&addr)).map(|(name, _)| name)
}

/// Table frames come from the frame allocator. Before the switch they are reached through the
/// boot identity map (so they are taken below 4 GiB), afterwards through the direct map.
pub struct KernelTableMemory {
    direct_map_live: bool,
}

impl KernelTableMemory {
    fn virt(&self, phys: u64) -> *mut u8 {
        if self.direct_map_live { (PHYS_OFFSET + phys) as *mut u8 } else { phys as *mut u8 }
    }
}

impl TableMemory for KernelTableMemory {
    fn alloc_table(&mut self) -> Result<u64, MapError> {
        let limit = if self.direct_map_live { u64::MAX } else { 4 * GIB };
        let phys = FRAMES.lock().alloc_below(PAGE_SIZE, PAGE_SIZE, limit).map_err(|_| MapError::OutOfTables)?;
        // SAFETY: the frame was just allocated (nobody else uses it) and is mapped writable at
        // `virt` (identity below 4 GiB before the switch, the direct map after).
        unsafe { core::ptr::write_bytes(self.virt(phys), 0, PAGE_SIZE as usize) };
        Ok(phys)
    }

    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: `phys` is a table frame this memory allocated (PageTables only walks entries
        // it wrote), 4 KiB-aligned and mapped writable at `virt`; the page tables are only
        // modified through the one `PageTables` that owns this memory.
        unsafe { &mut *(self.virt(phys) as *mut [u64; 512]) }
    }
}

/// The hypervisor's page tables after boot.
pub static KERNEL_TABLES: spin::Mutex<Option<PageTables<KernelTableMemory>>> = spin::Mutex::new(None);

fn kind_name(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::Available => "available",
        MemoryKind::Reserved => "reserved",
        MemoryKind::AcpiReclaimable => "ACPI reclaimable",
        MemoryKind::AcpiNvs => "ACPI NVS",
        MemoryKind::Defective => "defective",
        MemoryKind::Other(_) => "other",
    }
}

fn fatal(what: &str, e: impl core::fmt::Debug) -> ! {
    panic!("memory setup failed: {what}: {e:?}");
}

/// Sets up frames, page tables and the heap; returns the boot information re-read through the
/// direct map (the identity map it was parsed from is gone afterwards).
pub fn init(info_phys: u64, features: CpuFeatures) -> BootInfo<'static> {
    // SAFETY: GRUB placed the boot information below 4 GiB, which the boot tables identity-map;
    // its first word is its total size.
    let info_len = unsafe { core::ptr::read_volatile(info_phys as *const u32) } as usize;
    // SAFETY: as above; the structure is `info_len` bytes long and nothing writes it.
    let early = unsafe { core::slice::from_raw_parts(info_phys as *const u8, info_len) };
    let info = BootInfo::parse(early).unwrap_or_else(|e| fatal("boot information", e));

    log::info!("memory map from the boot loader:");
    let mut usable = 0;
    let mut frames = FRAMES.lock();
    for r in info.memory_map() {
        log::info!("  [{:#014x}-{:#014x}) {:>9} KiB {}", r.base, r.end(), r.len / 1024, kind_name(r.kind));
        if r.kind == MemoryKind::Available {
            usable += r.len;
            if let Err(e) = frames.add_usable(r.base, r.len) {
                log::warn!("frames: ignoring available range at {:#x}: {e:?}", r.base);
            }
        }
    }
    let kernel_start = symbol_addr!(__kernel_start);
    let kernel_end = symbol_addr!(__kernel_end);
    let reserve = |frames: &mut FrameAllocator, base: u64, len: u64, what: &str| {
        if let Err(e) = frames.reserve(base, len) {
            fatal(what, e);
        }
    };
    reserve(&mut frames, 0, MIB, "first megabyte");
    reserve(&mut frames, kernel_start, kernel_end - kernel_start, "kernel image");
    reserve(&mut frames, info_phys, info_len as u64, "boot information");
    for m in info.modules() {
        reserve(&mut frames, u64::from(m.start), u64::from(m.len()), "module");
    }
    drop(frames);

    let nx = if features.nx { PageFlags::NO_EXECUTE } else { PageFlags::empty() };
    let mut tables = PageTables::new(KernelTableMemory { direct_map_live: false })
        .unwrap_or_else(|e| fatal("page-table root", e));

    // The kernel image, page by page, with guard pages left out.
    let rodata = symbol_addr!(__rodata_start);
    let data = symbol_addr!(__data_start);
    let guards = guard_pages();
    let mut kernel_pages = 0;
    let mut page = kernel_start;
    while page < kernel_end {
        if !guards.iter().any(|&(_, g)| g == page) {
            let flags = if page < rodata {
                PageFlags::GLOBAL
            } else if page < data {
                PageFlags::GLOBAL | nx
            } else {
                PageFlags::GLOBAL | PageFlags::WRITABLE | nx
            };
            tables.map(page, page, PageSize::Size4K, flags).unwrap_or_else(|e| fatal("kernel image", e));
            kernel_pages += 1;
        }
        page += PAGE_SIZE;
    }

    // The direct map: RAM, ACPI tables, boot information and modules, in 2 MiB granules. An
    // allocator used as a range set merges what overlaps.
    let mut ram = FrameAllocator::new();
    let granule = 2 * MIB;
    let mut add = |base: u64, len: u64| {
        let start = base & !(granule - 1);
        let end = base.saturating_add(len).saturating_add(granule - 1) & !(granule - 1);
        if end > start {
            if let Err(e) = ram.add_usable(start, end - start) {
                fatal("direct map ranges", e);
            }
        }
    };
    for r in info.memory_map() {
        if matches!(r.kind, MemoryKind::Available | MemoryKind::AcpiReclaimable | MemoryKind::AcpiNvs) {
            add(r.base, r.len);
        }
    }
    add(0, MIB);
    add(info_phys, info_len as u64);
    for m in info.modules() {
        add(u64::from(m.start), u64::from(m.len()));
    }
    let mut counts = [0usize; 3];
    for r in ram.free_ranges() {
        let c = tables
            .map_range(PHYS_OFFSET + r.start, r.start, r.len(), PageFlags::WRITABLE | PageFlags::GLOBAL | nx, features.gib_pages)
            .unwrap_or_else(|e| fatal("direct map", e));
        for i in 0..3 {
            counts[i] += c[i];
        }
    }

    // SAFETY: the new tables map the running kernel (text, data, stacks) at the same addresses
    // as before and every frame the kernel will touch from now on through the direct map; the
    // root is a 4 KiB-aligned table frame.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) tables.root(), options(nostack, preserves_flags));
    }
    tables.memory().direct_map_live = true;
    log::info!(
        "paging: kernel image {kernel_pages} x 4 KiB (text RX, rodata R, data RW{}), {} guard pages unmapped; \
         direct map at {PHYS_OFFSET:#x}: {} x 1 GiB, {} x 2 MiB, {} x 4 KiB",
        if features.nx { ", NX" } else { ", no NX on this CPU" },
        guards.len(),
        counts[2],
        counts[1],
        counts[0],
    );
    *KERNEL_TABLES.lock() = Some(tables);

    // SAFETY: the boot information lies inside the direct map (added above) and nothing writes it.
    let bytes = unsafe { core::slice::from_raw_parts((PHYS_OFFSET + info_phys) as *const u8, info_len) };
    let info = BootInfo::parse(bytes).unwrap_or_else(|e| fatal("boot information (direct map)", e));

    // The heap: half of what is free, at most 256 MiB, at least 4 MiB.
    let free = FRAMES.lock().free_bytes();
    let heap_bytes = (free / 2).clamp(4 * MIB, 256 * MIB) & !(granule - 1);
    let heap_phys = FRAMES
        .lock()
        .alloc(heap_bytes, granule)
        .unwrap_or_else(|e: FrameError| fatal("heap", e));
    // SAFETY: the heap range was just taken from the frame allocator, so nothing else uses it, and
    // it lies in available RAM, which the direct map covers read-write.
    unsafe { HEAP.lock().init((PHYS_OFFSET + heap_phys) as *mut u8, heap_bytes as usize) };
    let free_bytes = FRAMES.lock().free_bytes();
    log::info!(
        "frames: {} MiB usable, {} MiB free after the kernel, boot data, modules and a {} MiB heap at {:#x}",
        usable / MIB,
        free_bytes / MIB,
        heap_bytes / MIB,
        PHYS_OFFSET + heap_phys
    );
    info
}

/// A boot module's bytes, read through the direct map (modules are reserved frames, never reused).
pub fn module_bytes(m: &hypervisor::multiboot2::Module<'_>) -> &'static [u8] {
    // SAFETY: GRUB loaded the module at [start, end) in RAM; `init` reserved those frames and
    // added them to the direct map, and nothing writes them.
    unsafe { core::slice::from_raw_parts((PHYS_OFFSET + u64::from(m.start)) as *const u8, m.len() as usize) }
}

/// Where device registers are mapped: `MMIO_BASE + physical address`.
pub const MMIO_BASE: u64 = 0xffff_c000_0000_0000;

/// Maps `[phys, phys + len)` of device registers uncached (PCD|PWT), read-write, never executable,
/// and returns the virtual address of `phys`. Mapping a page that is already mapped is fine.
pub fn map_mmio(phys: u64, len: u64) -> Result<u64, MapError> {
    let start = phys & !(PAGE_SIZE - 1);
    let end = phys.checked_add(len.max(1)).ok_or(MapError::Overflow)?.next_multiple_of(PAGE_SIZE);
    let mut guard = KERNEL_TABLES.lock();
    let tables = guard.as_mut().ok_or(MapError::OutOfTables)?;
    let flags = PageFlags::WRITABLE | PageFlags::NO_CACHE | PageFlags::WRITE_THROUGH | PageFlags::NO_EXECUTE;
    let mut page = start;
    while page < end {
        match tables.map(MMIO_BASE + page, page, PageSize::Size4K, flags) {
            Ok(()) | Err(MapError::AlreadyMapped(_)) => {}
            Err(e) => return Err(e),
        }
        page += PAGE_SIZE;
    }
    Ok(MMIO_BASE + phys)
}

/// Where kernel stacks made after boot live: slots of [`STACK_SLOT`] bytes, each starting with an
/// unmapped guard page.
const STACKS_BASE: u64 = 0xffff_d000_0000_0000;
const STACK_SLOT: u64 = 256 * 1024;
static NEXT_STACK: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Maps a new kernel stack of `pages` 4 KiB pages above an unmapped guard page; returns its top.
pub fn new_stack(pages: u64) -> Result<u64, MapError> {
    if pages == 0 || (pages + 1) * PAGE_SIZE > STACK_SLOT {
        return Err(MapError::Overflow);
    }
    let slot = NEXT_STACK.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let base = STACKS_BASE + slot * STACK_SLOT;
    let mut guard = KERNEL_TABLES.lock();
    let tables = guard.as_mut().ok_or(MapError::OutOfTables)?;
    let nx = if super::cpu::features().nx { PageFlags::NO_EXECUTE } else { PageFlags::empty() };
    for i in 1..=pages {
        let frame = FRAMES.lock().alloc_frame().map_err(|_| MapError::OutOfTables)?;
        tables.map(base + i * PAGE_SIZE, frame, PageSize::Size4K, PageFlags::WRITABLE | nx)?;
    }
    Ok(base + (pages + 1) * PAGE_SIZE)
}

/// Identity-maps one low page executable (the AP start-up trampoline runs there while paging is
/// switched on); [`unmap_identity`] removes it again.
pub fn map_identity(page: u64) -> Result<(), MapError> {
    let mut guard = KERNEL_TABLES.lock();
    let tables = guard.as_mut().ok_or(MapError::OutOfTables)?;
    tables.map(page, page, PageSize::Size4K, PageFlags::WRITABLE)
}

pub fn unmap_identity(page: u64) {
    if let Some(tables) = KERNEL_TABLES.lock().as_mut() {
        if tables.unmap_4k(page).is_ok() {
            // SAFETY: INVLPG only drops a TLB entry of the page just unmapped.
            unsafe { core::arch::asm!("invlpg [{}]", in(reg) page, options(nostack, preserves_flags)) };
        }
    }
}

/// The physical address of the kernel's PML4 (for CPUs that start later).
pub fn kernel_cr3() -> u64 {
    super::cr::read_cr3()
}

/// Copies physical memory (firmware tables): through the direct map where it covers the range,
/// else through an uncached device mapping. `false` if the range cannot be mapped.
pub fn read_phys(phys: u64, buf: &mut [u8]) -> bool {
    let Some(end) = phys.checked_add(buf.len() as u64) else { return false };
    let in_direct_map = {
        let mut guard = KERNEL_TABLES.lock();
        let Some(t) = guard.as_mut() else { return false };
        let mut page = phys & !(PAGE_SIZE - 1);
        let mut all = true;
        while page < end {
            all &= t.translate(PHYS_OFFSET + page).is_some();
            page += PAGE_SIZE;
        }
        all
    };
    let virt = if in_direct_map {
        PHYS_OFFSET + phys
    } else {
        match map_mmio(phys, buf.len() as u64) {
            Ok(v) => v,
            Err(_) => return false,
        }
    };
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: `[virt, virt + len)` is mapped (checked or just mapped above) and reading
        // firmware tables has no side effects.
        *b = unsafe { core::ptr::read_volatile((virt + i as u64) as *const u8) };
    }
    true
}

/// What the frame allocator has free and the heap has in use, in bytes (for the memory the
/// tenants cost: guest RAM and EPT tables come from frames, sessions' KV caches from the heap).
pub fn usage() -> (u64, u64) {
    let free = FRAMES.lock().free_bytes();
    (free, HEAP.lock().used() as u64)
}
