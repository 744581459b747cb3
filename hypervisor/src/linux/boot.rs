//! Starting a Linux kernel: the image formats and the boot structures, as plain data.
//!
//! - **bzImage**: the real-mode setup header at file offset 0x1f1 (Linux
//!   Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header"); the protected-mode kernel
//!   follows the `(setup_sects + 1) * 512` setup bytes and is entered through the 64-bit boot
//!   protocol at load address + 0x200 ("64-bit Boot Protocol").
//! - **vmlinux**: the uncompressed ELF64; its `PT_LOAD` segments go to their *physical*
//!   addresses; the PVH entry is the `XEN_ELFNOTE_PHYS32_ENTRY` (18) note of owner "Xen"
//!   (xen/include/public/elfnote.h), the 64-bit entry is `e_entry` (physical in Linux's own
//!   link, `phys_startup_64`; a virtual one is translated through its segment).
//! - **boot_params** (the zero page, Documentation/arch/x86/zero-page.rst) and
//!   **hvm_start_info** (xen/include/public/arch-x86/hvm/start_info.h, version 1 with memmap) are
//!   built as byte arrays with the offsets quoted from those documents.
//! - [`plan`] lays out a tenant: where every boot structure, the kernel, the initramfs, the ACPI
//!   tables and the tensor window go, and the e820 map that results; a kernel or initramfs that
//!   does not fit, or placements that overlap, are errors and the tenant is not started.
//!
//! Everything here reads only the bytes it is given (bounds-checked) and never trusts a length
//! field in the image.

use alloc::vec::Vec;
use core::ops::Range;

use super::e820::{E820Builder, E820Error, E820Map, E820Type};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------------
// Fixed guest-physical layout of the low megabyte.

/// The boot GDT (see [`gdt`]).
pub const GDT_GPA: u64 = 0x1000;
/// PML4 of the identity map the 64-bit protocol requires ([`identity_page_tables`]).
pub const PML4_GPA: u64 = 0x2000;
/// The PDPT; the four page directories follow it at 0x4000..0x8000.
pub const PDPT_GPA: u64 = 0x3000;
/// First of the four page directories (2 MiB pages covering 0..4 GiB).
pub const PD_GPA: u64 = 0x4000;
/// The zero page (64-bit protocol) or the hvm_start_info page (PVH).
pub const ZERO_PAGE_GPA: u64 = 0x8000;
/// The NUL-terminated kernel command line.
pub const CMDLINE_GPA: u64 = 0x9000;
/// Longest command line this layout holds (one page, NUL included).
pub const CMDLINE_MAX: u64 = 0x1000;
/// End of the boot data pages (listed as Reserved in the e820 map).
pub const BOOT_DATA_END: u64 = 0xa000;
/// Start of the legacy hole (EBDA, VGA, option and system ROMs) that is never RAM.
pub const LEGACY_HOLE: Range<u64> = 0x9_f000..0x10_0000;
/// Where the ACPI tables go: inside the BIOS area, so a kernel that scans 0xe0000..0xfffff for
/// the RSDP (ACPI 6.5 §5.2.5.1) finds it there as well as through boot_params/start_info.
pub const ACPI_GPA: u64 = 0xe_0000;
/// Room for the ACPI tables.
pub const ACPI_SIZE: u64 = 0x1_0000;
/// Lowest address RAM above the legacy hole.
pub const HIGH_RAM: u64 = 0x10_0000;
/// Tenant memory must end below this: 0xc000_0000..4 GiB is the MMIO hole (the tensor
/// function's hypercall page BAR, the IOAPIC at 0xfec0_0000, the local APIC at 0xfee0_0000).
pub const MMIO_HOLE: u64 = 0xc000_0000;
/// Where the hypercall page (BAR 0 of the tensor function) is placed.
pub const HYPERCALL_PAGE_GPA: u64 = 0xc000_0000;

/// GDT selectors of [`gdt`]: a flat 32-bit code segment (PVH entry), the flat 64-bit code
/// segment the 64-bit protocol requires as `__BOOT_CS` (0x10), and flat data (`__BOOT_DS`, 0x18).
pub const BOOT_CS32: u16 = 0x08;
pub const BOOT_CS64: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;

/// The boot GDT: null, flat 32-bit code, flat 64-bit code, flat data (Intel SDM Vol. 3A 3.4.5;
/// base 0, limit 0xfffff with G=1; type 0xb code execute/read accessed, 0x3 data read/write
/// accessed).
pub fn gdt() -> [u8; 32] {
    let descs: [u64; 4] = [
        0,
        0x00cf_9b00_0000_ffff,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
    ];
    let mut out = [0u8; 32];
    for (d, o) in descs.iter().zip(out.chunks_exact_mut(8)) {
        o.copy_from_slice(&d.to_le_bytes());
    }
    out
}

/// Identity map of 0..4 GiB with 2 MiB pages (Intel SDM Vol. 3A 4.5): PML4 at [`PML4_GPA`],
/// PDPT at [`PDPT_GPA`], four directories from [`PD_GPA`]. Returns (gpa, page) pairs.
pub fn identity_page_tables() -> Vec<(u64, [u8; 4096])> {
    const P: u64 = 1;
    const RW: u64 = 2;
    const PS: u64 = 1 << 7;
    let mut pages = Vec::new();
    let mut pml4 = [0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPT_GPA | P | RW).to_le_bytes());
    pages.push((PML4_GPA, pml4));
    let mut pdpt = [0u8; 4096];
    for i in 0..4u64 {
        let e = (PD_GPA + i * 0x1000) | P | RW;
        pdpt[i as usize * 8..][..8].copy_from_slice(&e.to_le_bytes());
    }
    pages.push((PDPT_GPA, pdpt));
    for d in 0..4u64 {
        let mut pd = [0u8; 4096];
        for i in 0..512u64 {
            let e = (d * GIB + i * 2 * MIB) | P | RW | PS;
            pd[i as usize * 8..][..8].copy_from_slice(&e.to_le_bytes());
        }
        pages.push((PD_GPA + d * 0x1000, pd));
    }
    pages
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Why a kernel could not be started. Each names the problem precisely for the tenant's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootError {
    /// Neither an ELF64 nor a bzImage.
    UnknownFormat,
    /// A bzImage whose header is too short, lacks 0xAA55 / "HdrS", or is inconsistent.
    BadSetupHeader(&'static str),
    /// Boot protocol older than 2.12 (the first with `xloadflags`).
    ProtocolTooOld { version: u16 },
    /// The kernel has no 64-bit entry (`XLF_KERNEL_64` clear) or is not loaded high.
    Not64Bit,
    /// A malformed ELF: which part.
    BadElf(&'static str),
    /// The PVH entry was asked for but the ELF has no `XEN_ELFNOTE_PHYS32_ENTRY` note.
    NoPvhEntry,
    /// The PVH protocol needs an ELF (bzImages carry no PVH note outside the compressed payload).
    PvhNeedsElf,
    /// The kernel's memory `[start, end)` does not fit the tenant's RAM.
    KernelDoesNotFit { start: u64, end: u64, ram_end: u64 },
    /// The initramfs does not fit between the kernel and the top of RAM.
    InitrdDoesNotFit { size: u64, room: u64 },
    /// Two placements overlap.
    Overlap { a: &'static str, b: &'static str },
    /// The command line is longer than the kernel (or this layout) accepts, or contains a NUL.
    BadCmdline { len: u64, max: u64 },
    /// Memory size or window not usable (what is wrong).
    BadMemory(&'static str),
    /// The e820 map could not be encoded.
    E820(E820Error),
}

impl From<E820Error> for BootError {
    fn from(e: E820Error) -> Self {
        BootError::E820(e)
    }
}

fn rd<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    let s = b.get(at..at.checked_add(N)?)?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Some(a)
}
fn u8_at(b: &[u8], at: usize) -> Option<u8> {
    b.get(at).copied()
}
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    rd::<2>(b, at).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    rd::<4>(b, at).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    rd::<8>(b, at).map(u64::from_le_bytes)
}
fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

// ---------------------------------------------------------------------------------------------
// bzImage setup header (boot.rst, "The Real-Mode Kernel Header"; offsets are from the start of
// the file and equal the offsets inside boot_params).

pub mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// First byte past the fields of protocol 2.15 (kernel_info_offset at 0x268, 4 bytes).
    pub const END_2_15: usize = 0x26c;

    /// `loadflags` bits.
    pub const LOADED_HIGH: u8 = 1 << 0;
    pub const KEEP_SEGMENTS: u8 = 1 << 6;
    pub const CAN_USE_HEAP: u8 = 1 << 7;
    /// `xloadflags` bits.
    pub const XLF_KERNEL_64: u16 = 1 << 0;
    pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
}

/// The fields of a bzImage's setup header that placement needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    pub setup_sects: u8,
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable: bool,
    pub cmdline_size: u32,
    pub pref_address: u64,
    pub init_size: u32,
    /// The raw header bytes from 0x1f1 up to `0x202 + jump[1]` (boot.rst: "the end of setup
    /// header can be calculated as 0x0202 + byte value at offset 0x0201"), copied into the zero
    /// page.
    pub raw: Vec<u8>,
}

/// A bzImage: its header and where its protected-mode kernel lies in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BzImage {
    pub header: SetupHeader,
    /// File range of the protected-mode kernel (after the setup sectors).
    pub payload: Range<usize>,
}

impl BzImage {
    pub fn parse(img: &[u8]) -> Result<Self, BootError> {
        use hdr::*;
        let bad = BootError::BadSetupHeader;
        if u16_at(img, BOOT_FLAG) != Some(0xaa55) {
            return Err(bad("no 0xAA55 boot flag at 0x1fe"));
        }
        if rd::<4>(img, HEADER) != Some(*b"HdrS") {
            return Err(bad("no \"HdrS\" magic at 0x202"));
        }
        let version = u16_at(img, VERSION).ok_or(bad("truncated"))?;
        if version < 0x020c {
            return Err(BootError::ProtocolTooOld { version });
        }
        let hdr_end = 0x202 + usize::from(u8_at(img, JUMP + 1).ok_or(bad("truncated"))?);
        if hdr_end < INIT_SIZE + 4 || hdr_end > img.len() {
            return Err(bad(
                "setup header length (jump offset at 0x201) out of range",
            ));
        }
        // The header never extends past `struct setup_header` in boot_params (which ends where
        // edd_mbr_sig_buffer begins, 0x290).
        let hdr_end = hdr_end.min(0x290);
        let r32 = |at| u32_at(img, at).ok_or(bad("truncated"));
        let setup_sects = match img[SETUP_SECTS] {
            0 => 4, // boot.rst: "If this field is 0, the real value is 4."
            n => n,
        };
        let loadflags = img[LOADFLAGS];
        let xloadflags = u16_at(img, XLOADFLAGS).ok_or(bad("truncated"))?;
        if xloadflags & XLF_KERNEL_64 == 0 || loadflags & LOADED_HIGH == 0 {
            return Err(BootError::Not64Bit);
        }
        let kernel_alignment = r32(KERNEL_ALIGNMENT)?;
        if !kernel_alignment.is_power_of_two() {
            return Err(bad("kernel_alignment is not a power of two"));
        }
        let setup_len = (usize::from(setup_sects) + 1) * 512;
        if setup_len >= img.len() {
            return Err(bad("no protected-mode kernel after the setup sectors"));
        }
        let init_size = r32(INIT_SIZE)?;
        if u64::from(init_size) < (img.len() - setup_len) as u64 {
            return Err(bad("init_size smaller than the kernel it describes"));
        }
        Ok(Self {
            header: SetupHeader {
                setup_sects,
                version,
                loadflags,
                xloadflags,
                initrd_addr_max: r32(INITRD_ADDR_MAX)?,
                kernel_alignment,
                relocatable: img[RELOCATABLE_KERNEL] != 0,
                cmdline_size: r32(CMDLINE_SIZE)?,
                pref_address: u64_at(img, PREF_ADDRESS).ok_or(bad("truncated"))?,
                init_size,
                raw: img[SETUP_SECTS..hdr_end].to_vec(),
            },
            payload: setup_len..img.len(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// vmlinux (ELF64, System V gABI; x86-64 psABI).

/// One `PT_LOAD` segment at its physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub paddr: u64,
    pub file_offset: usize,
    pub file_size: usize,
    pub mem_size: u64,
}

/// An uncompressed kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vmlinux {
    /// Sorted by physical address, non-overlapping.
    pub segments: Vec<LoadSegment>,
    /// Physical address of the 64-bit entry (`startup_64`).
    pub entry64: u64,
    /// Physical address of the PVH entry (`pvh_start_xen`), if the note is present.
    pub pvh_entry: Option<u32>,
}

/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

impl Vmlinux {
    pub fn parse(img: &[u8]) -> Result<Self, BootError> {
        let bad = BootError::BadElf;
        if rd::<4>(img, 0) != Some(*b"\x7fELF") {
            return Err(bad("no ELF magic"));
        }
        if img.get(4) != Some(&2) || img.get(5) != Some(&1) {
            return Err(bad("not ELF64 little-endian"));
        }
        if u16_at(img, 18) != Some(62) {
            return Err(bad("e_machine is not x86-64"));
        }
        let e_entry = u64_at(img, 24).ok_or(bad("truncated header"))?;
        let phoff = u64_at(img, 32).ok_or(bad("truncated header"))?;
        let phentsize = u16_at(img, 54).ok_or(bad("truncated header"))?;
        let phnum = u16_at(img, 56).ok_or(bad("truncated header"))?;
        if phentsize != 56 {
            return Err(bad("e_phentsize is not 56"));
        }
        let phoff = usize::try_from(phoff).map_err(|_| bad("program headers out of file"))?;
        let ph_end = phoff
            .checked_add(usize::from(phnum) * 56)
            .filter(|&e| e <= img.len())
            .ok_or(bad("program headers out of file"))?;
        let mut segments = Vec::new();
        let mut entry64 = None;
        let mut pvh_entry = None;
        for ph in img[phoff..ph_end].chunks_exact(56) {
            let p_type = u32_at(ph, 0).unwrap_or(0);
            let off = u64_at(ph, 8).unwrap_or(0);
            let vaddr = u64_at(ph, 16).unwrap_or(0);
            let paddr = u64_at(ph, 24).unwrap_or(0);
            let filesz = u64_at(ph, 32).unwrap_or(0);
            let memsz = u64_at(ph, 40).unwrap_or(0);
            let in_file = off
                .checked_add(filesz)
                .filter(|&e| e <= img.len() as u64)
                .ok_or(bad("segment data out of file"))?;
            match p_type {
                PT_LOAD => {
                    if filesz > memsz {
                        return Err(bad("PT_LOAD with p_filesz > p_memsz"));
                    }
                    if paddr.checked_add(memsz).is_none() || vaddr.checked_add(memsz).is_none() {
                        return Err(bad("PT_LOAD wraps the address space"));
                    }
                    if memsz == 0 {
                        continue;
                    }
                    // Linux links e_entry as the physical address of startup_64
                    // (ENTRY(phys_startup_64) in vmlinux.lds); other builds may give the virtual
                    // one. A physical match wins.
                    if (paddr..paddr + memsz).contains(&e_entry) {
                        entry64 = Some(e_entry);
                    } else if entry64.is_none() && (vaddr..vaddr + memsz).contains(&e_entry) {
                        entry64 = Some(paddr + (e_entry - vaddr));
                    }
                    segments.push(LoadSegment {
                        paddr,
                        file_offset: off as usize,
                        file_size: filesz as usize,
                        mem_size: memsz,
                    });
                }
                PT_NOTE => {
                    if let Some(e) = find_pvh_note(&img[off as usize..in_file as usize])? {
                        pvh_entry = Some(e);
                    }
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(bad("no PT_LOAD segment"));
        }
        segments.sort_by_key(|s| s.paddr);
        for w in segments.windows(2) {
            if w[0].paddr + w[0].mem_size > w[1].paddr {
                return Err(bad("PT_LOAD segments overlap physically"));
            }
        }
        let entry64 = entry64.ok_or(bad("e_entry is in no PT_LOAD segment"))?;
        Ok(Self {
            segments,
            entry64,
            pvh_entry,
        })
    }

    /// Physical `[start, end)` the segments occupy.
    pub fn extent(&self) -> Range<u64> {
        let last = self.segments[self.segments.len() - 1];
        self.segments[0].paddr..last.paddr + last.mem_size
    }
}

/// Walks an ELF note section (gABI "Note Section": namesz, descsz, type, name and desc each
/// padded to 4 bytes) for the Xen PHYS32_ENTRY note.
fn find_pvh_note(mut n: &[u8]) -> Result<Option<u32>, BootError> {
    let bad = BootError::BadElf;
    let pad = |x: usize| x.checked_add(3).map(|v| v & !3);
    while n.len() >= 12 {
        let namesz = u32_at(n, 0).unwrap_or(0) as usize;
        let descsz = u32_at(n, 4).unwrap_or(0) as usize;
        let ty = u32_at(n, 8).unwrap_or(0);
        let name_end = pad(namesz)
            .and_then(|p| p.checked_add(12))
            .ok_or(bad("note size"))?;
        let desc_end = pad(descsz)
            .and_then(|p| p.checked_add(name_end))
            .ok_or(bad("note size"))?;
        if desc_end > n.len() {
            return Err(bad("note runs past its segment"));
        }
        let name = &n[12..12 + namesz];
        let desc = &n[name_end..name_end + descsz];
        if ty == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            let v = match descsz {
                4 => u64::from(u32_at(desc, 0).unwrap_or(0)),
                8 => u64_at(desc, 0).unwrap_or(0),
                _ => return Err(bad("PHYS32_ENTRY note of odd size")),
            };
            return u32::try_from(v)
                .map(Some)
                .map_err(|_| bad("PHYS32_ENTRY above 4 GiB"));
        }
        n = &n[desc_end..];
    }
    Ok(None)
}

/// A kernel image of either format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelImage {
    BzImage(BzImage),
    Vmlinux(Vmlinux),
}

impl KernelImage {
    /// Recognises the format by its magic (ELF first, then the bzImage header).
    pub fn parse(img: &[u8]) -> Result<Self, BootError> {
        if img.starts_with(b"\x7fELF") {
            Vmlinux::parse(img).map(KernelImage::Vmlinux)
        } else if rd::<4>(img, hdr::HEADER) == Some(*b"HdrS") {
            BzImage::parse(img).map(KernelImage::BzImage)
        } else {
            Err(BootError::UnknownFormat)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layout.

/// Which entry protocol starts the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info (vmlinux only).
    Pvh,
    /// The 64-bit boot protocol: long mode, identity map, RSI = boot_params.
    Linux64,
}

/// What the tenant is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantConfig {
    /// Bytes of guest-physical memory, from 0.
    pub memory: u64,
    /// Bytes of the tensor window (a power of two, ≥ 4 KiB), carved from the top of memory at an
    /// address aligned to its size (a BAR must be naturally aligned, PCI Local Bus 3.0 §6.2.5.1);
    /// 0 for none.
    pub window: u64,
}

/// One piece of the kernel image copied into guest memory: `mem_size` bytes at `gpa`, the first
/// `file.len()` of them from the image file, the rest zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCopy {
    pub gpa: u64,
    pub file: Range<usize>,
    pub mem_size: u64,
}

/// The register state the entry protocol requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// PVH (xen/include/public/arch-x86/hvm/start_info.h, "start of day"): CR0.PE=1, paging
    /// off, CS = flat 32-bit code ([`BOOT_CS32`]), DS/ES/SS = flat data ([`BOOT_DS`]), EFLAGS
    /// with IF clear, EBX = the start-info GPA, EIP = the note's entry.
    Protected32 { eip: u32, ebx: u32 },
    /// 64-bit protocol (boot.rst "64-bit Boot Protocol"): long mode with the identity map at
    /// CR3 = [`PML4_GPA`] (CR0.PG|PE, CR4.PAE, EFER.LME|LMA), CS = [`BOOT_CS64`], DS/ES/SS =
    /// [`BOOT_DS`], interrupts off, RSI = the zero page.
    Long64 { rip: u64, rsi: u64, cr3: u64 },
}

/// Where everything goes, decided before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub protocol: Protocol,
    pub memory: u64,
    /// The tensor window (BAR 1), excluded from the e820 RAM.
    pub window: Option<Range<u64>>,
    /// Top of the RAM the kernel may allocate from, below the window.
    pub ram_top: u64,
    pub gdt: u64,
    /// PML4 of the identity map (64-bit protocol only).
    pub page_tables: Option<u64>,
    /// The zero page (64-bit) or hvm_start_info page (PVH).
    pub boot_info: u64,
    pub cmdline: u64,
    /// Command line length including its NUL.
    pub cmdline_len: u64,
    pub acpi: Range<u64>,
    /// The RSDP address (start of the ACPI area).
    pub rsdp: u64,
    pub kernel: Vec<KernelCopy>,
    /// Guest memory the kernel claims (for a bzImage: load address + init_size).
    pub kernel_range: Range<u64>,
    pub initrd: Option<Range<u64>>,
    pub entry: EntryState,
    pub e820: E820Map,
}

/// Plans a tenant: places the kernel (at its physical addresses, or a bzImage at its
/// `pref_address`, or the lowest aligned address if relocatable), the initramfs page-aligned
/// at the top of RAM below the window (and below `initrd_addr_max`), the boot data in the low
/// pages, and builds the e820 map.
pub fn plan(
    image: &KernelImage,
    protocol: Protocol,
    tenant: TenantConfig,
    initrd_size: u64,
    cmdline: &[u8],
) -> Result<Layout, BootError> {
    let TenantConfig { memory, window } = tenant;
    if memory % (4 * KIB) != 0 || memory < 16 * MIB {
        return Err(BootError::BadMemory(
            "memory must be a multiple of 4 KiB and at least 16 MiB",
        ));
    }
    if memory > MMIO_HOLE {
        return Err(BootError::BadMemory(
            "memory must end below the MMIO hole at 3 GiB",
        ));
    }
    let window = if window == 0 {
        None
    } else {
        if !window.is_power_of_two() || window < 4 * KIB {
            return Err(BootError::BadMemory(
                "window must be a power of two of at least 4 KiB",
            ));
        }
        let base = (memory - window.min(memory)) & !(window - 1);
        if base < HIGH_RAM || window > memory / 2 {
            return Err(BootError::BadMemory(
                "window takes more than half of the memory",
            ));
        }
        Some(base..base + window)
    };
    let ram_top = window.as_ref().map_or(memory, |w| w.start);

    // The command line: the kernel's own limit (bzImage header) and this layout's page.
    let max_cmd = match image {
        KernelImage::BzImage(b) => u64::from(b.header.cmdline_size).min(CMDLINE_MAX - 1),
        KernelImage::Vmlinux(_) => CMDLINE_MAX - 1,
    };
    if cmdline.len() as u64 > max_cmd || cmdline.contains(&0) {
        return Err(BootError::BadCmdline {
            len: cmdline.len() as u64,
            max: max_cmd,
        });
    }

    // The kernel.
    let (kernel, kernel_range, entry_addr) = match (image, protocol) {
        (KernelImage::BzImage(_), Protocol::Pvh) => return Err(BootError::PvhNeedsElf),
        (KernelImage::BzImage(b), Protocol::Linux64) => {
            let h = &b.header;
            let need = u64::from(h.init_size);
            let align = u64::from(h.kernel_alignment).max(4 * KIB);
            let fits =
                |at: u64| at >= HIGH_RAM && at.checked_add(need).is_some_and(|e| e <= ram_top);
            let at = if fits(h.pref_address) || !h.relocatable {
                h.pref_address
            } else {
                HIGH_RAM.div_ceil(align) * align
            };
            if !fits(at) {
                return Err(BootError::KernelDoesNotFit {
                    start: at,
                    end: at.saturating_add(need),
                    ram_end: ram_top,
                });
            }
            let copy = KernelCopy {
                gpa: at,
                file: b.payload.clone(),
                mem_size: (b.payload.len() as u64).max(need),
            };
            (alloc::vec![copy], at..at + need, at + 0x200)
        }
        (KernelImage::Vmlinux(v), p) => {
            let ext = v.extent();
            if ext.start < HIGH_RAM || ext.end > ram_top {
                return Err(BootError::KernelDoesNotFit {
                    start: ext.start,
                    end: ext.end,
                    ram_end: ram_top,
                });
            }
            let copies = v
                .segments
                .iter()
                .map(|s| KernelCopy {
                    gpa: s.paddr,
                    file: s.file_offset..s.file_offset + s.file_size,
                    mem_size: s.mem_size,
                })
                .collect();
            let entry = match p {
                Protocol::Pvh => u64::from(v.pvh_entry.ok_or(BootError::NoPvhEntry)?),
                Protocol::Linux64 => v.entry64,
            };
            if !ext.contains(&entry) {
                return Err(BootError::BadElf("entry outside the loaded segments"));
            }
            (copies, ext, entry)
        }
    };

    // The initramfs: page-aligned, at the top of RAM below the window and initrd_addr_max.
    let initrd = if initrd_size == 0 {
        None
    } else {
        let limit = match image {
            // initrd_addr_max is the highest address the initrd's last byte may occupy.
            KernelImage::BzImage(b) => ram_top.min(u64::from(b.header.initrd_addr_max) + 1),
            KernelImage::Vmlinux(_) => ram_top,
        };
        let room = limit.saturating_sub(kernel_range.end);
        let start = limit.checked_sub(initrd_size).map(|s| s & !(4 * KIB - 1));
        match start {
            Some(s) if s >= kernel_range.end => Some(s..s + initrd_size),
            _ => {
                return Err(BootError::InitrdDoesNotFit {
                    size: initrd_size,
                    room,
                })
            }
        }
    };

    // Every placement against every other.
    let mut placed: Vec<(&'static str, Range<u64>)> = alloc::vec![
        ("boot data", GDT_GPA..BOOT_DATA_END),
        ("ACPI tables", ACPI_GPA..ACPI_GPA + ACPI_SIZE),
        ("kernel", kernel_range.clone()),
    ];
    if let Some(i) = &initrd {
        placed.push(("initramfs", i.clone()));
    }
    if let Some(w) = &window {
        placed.push(("tensor window", w.clone()));
    }
    for (i, (an, a)) in placed.iter().enumerate() {
        for (bn, b) in &placed[i + 1..] {
            if a.start < b.end && b.start < a.end {
                return Err(BootError::Overlap { a: an, b: bn });
            }
        }
    }

    let mut e = E820Builder::new();
    e.add(0, LEGACY_HOLE.start, E820Type::Ram)?;
    e.add(GDT_GPA, BOOT_DATA_END - GDT_GPA, E820Type::Reserved)?;
    e.add(
        LEGACY_HOLE.start,
        LEGACY_HOLE.end - LEGACY_HOLE.start,
        E820Type::Reserved,
    )?;
    e.add(ACPI_GPA, ACPI_SIZE, E820Type::Acpi)?;
    e.add(HIGH_RAM, memory - HIGH_RAM, E820Type::Ram)?;
    if let Some(w) = &window {
        e.exclude(w.start, w.end - w.start)?;
    }
    let e820 = e.build();

    let entry = match protocol {
        Protocol::Pvh => EntryState::Protected32 {
            eip: entry_addr as u32,
            ebx: ZERO_PAGE_GPA as u32,
        },
        Protocol::Linux64 => EntryState::Long64 {
            rip: entry_addr,
            rsi: ZERO_PAGE_GPA,
            cr3: PML4_GPA,
        },
    };
    Ok(Layout {
        protocol,
        memory,
        window,
        ram_top,
        gdt: GDT_GPA,
        page_tables: (protocol == Protocol::Linux64).then_some(PML4_GPA),
        boot_info: ZERO_PAGE_GPA,
        cmdline: CMDLINE_GPA,
        cmdline_len: cmdline.len() as u64 + 1,
        acpi: ACPI_GPA..ACPI_GPA + ACPI_SIZE,
        rsdp: ACPI_GPA,
        kernel,
        kernel_range,
        initrd,
        entry,
        e820,
    })
}

// ---------------------------------------------------------------------------------------------
// boot_params (zero-page.rst).

pub mod zp {
    /// `acpi_rsdp_addr` (u64, protocol 2.14+).
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    /// `ext_ramdisk_image` (u32): bits 63:32 of the initrd address.
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    /// `ext_ramdisk_size` (u32).
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    /// `ext_cmd_line_ptr` (u32).
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    /// `e820_entries` (u8).
    pub const E820_ENTRIES: usize = 0x1e8;
    /// `sentinel` (u8): must stay 0 or the kernel assumes a loader that did not clear the page.
    pub const SENTINEL: usize = 0x1ef;
    /// `e820_table` (128 × 20 bytes).
    pub const E820_TABLE: usize = 0x2d0;
    /// Size of the zero page.
    pub const SIZE: usize = 0x1000;
}

/// `type_of_loader` 0xff: "undefined" loader (boot.rst, the value for loaders with no
/// assigned id).
pub const LOADER_UNDEFINED: u8 = 0xff;

/// Builds the zero page for the 64-bit protocol. For a bzImage its own setup header is copied
/// in; for a vmlinux (which has none) a minimal protocol 2.15 header is synthesized, as
/// boot.rst's 64-bit protocol asks ("the setup header ... fields must be filled as by a 16-bit
/// loader").
pub fn boot_params(image: &KernelImage, layout: &Layout) -> Result<[u8; zp::SIZE], BootError> {
    use hdr::*;
    let mut p = [0u8; zp::SIZE];
    match image {
        KernelImage::BzImage(b) => put(&mut p, SETUP_SECTS, &b.header.raw),
        KernelImage::Vmlinux(_) => {
            put(&mut p, BOOT_FLAG, &0xaa55u16.to_le_bytes());
            put(&mut p, JUMP, &[0xeb, (END_2_15 - 0x202) as u8]);
            put(&mut p, HEADER, b"HdrS");
            put(&mut p, VERSION, &0x020fu16.to_le_bytes());
            put(&mut p, KERNEL_ALIGNMENT, &(2 * MIB as u32).to_le_bytes());
            put(&mut p, XLOADFLAGS, &XLF_KERNEL_64.to_le_bytes());
            put(
                &mut p,
                CMDLINE_SIZE,
                &((CMDLINE_MAX - 1) as u32).to_le_bytes(),
            );
            put(&mut p, INITRD_ADDR_MAX, &0x7fff_ffffu32.to_le_bytes());
            put(
                &mut p,
                CODE32_START,
                &(layout.kernel_range.start as u32).to_le_bytes(),
            );
        }
    }
    p[TYPE_OF_LOADER] = LOADER_UNDEFINED;
    // LOADED_HIGH: the kernel is above 1 MiB; KEEP_SEGMENTS/CAN_USE_HEAP concern the 16-bit
    // and 32-bit entries only and are cleared.
    p[LOADFLAGS] = (p[LOADFLAGS] | LOADED_HIGH) & !(KEEP_SEGMENTS | CAN_USE_HEAP);
    put(&mut p, HEAP_END_PTR, &0u16.to_le_bytes());
    put(&mut p, CMD_LINE_PTR, &(layout.cmdline as u32).to_le_bytes());
    put(
        &mut p,
        zp::EXT_CMD_LINE_PTR,
        &((layout.cmdline >> 32) as u32).to_le_bytes(),
    );
    let (rd_addr, rd_size) = layout
        .initrd
        .as_ref()
        .map_or((0, 0), |r| (r.start, r.end - r.start));
    put(&mut p, RAMDISK_IMAGE, &(rd_addr as u32).to_le_bytes());
    put(&mut p, RAMDISK_SIZE, &(rd_size as u32).to_le_bytes());
    put(
        &mut p,
        zp::EXT_RAMDISK_IMAGE,
        &((rd_addr >> 32) as u32).to_le_bytes(),
    );
    put(
        &mut p,
        zp::EXT_RAMDISK_SIZE,
        &((rd_size >> 32) as u32).to_le_bytes(),
    );
    put(&mut p, zp::ACPI_RSDP_ADDR, &layout.rsdp.to_le_bytes());
    let n = layout
        .e820
        .write_zero_page_entries(&mut p[zp::E820_TABLE..zp::E820_TABLE + 128 * 20])?;
    p[zp::E820_ENTRIES] = n;
    p[zp::SENTINEL] = 0;
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// hvm_start_info (start_info.h).

pub mod si {
    /// `XEN_HVM_START_MAGIC_VALUE`.
    pub const MAGIC: u32 = 0x336e_c578;
    pub const OFF_MAGIC: usize = 0x00;
    pub const OFF_VERSION: usize = 0x04;
    pub const OFF_FLAGS: usize = 0x08;
    pub const OFF_NR_MODULES: usize = 0x0c;
    pub const OFF_MODLIST_PADDR: usize = 0x10;
    pub const OFF_CMDLINE_PADDR: usize = 0x18;
    pub const OFF_RSDP_PADDR: usize = 0x20;
    pub const OFF_MEMMAP_PADDR: usize = 0x28;
    pub const OFF_MEMMAP_ENTRIES: usize = 0x30;
    /// Size of `struct hvm_start_info` (version 1).
    pub const SIZE: usize = 0x38;
    /// Where the one module entry (the initramfs) goes inside the page.
    pub const MODLIST_OFFSET: usize = 0x40;
    /// `struct hvm_modlist_entry`: paddr, size, cmdline_paddr, reserved (u64 each).
    pub const MODLIST_ENTRY_SIZE: usize = 32;
    /// Where the memory map goes inside the page.
    pub const MEMMAP_OFFSET: usize = 0x80;
    /// `struct hvm_memmap_table_entry`: addr u64, size u64, type u32, reserved u32.
    pub const MEMMAP_ENTRY_SIZE: usize = 24;
}

/// Builds the hvm_start_info page for the PVH entry: version 1, the command line, the RSDP,
/// the initramfs as module 0, and the e820 map as the memmap (types are the e820 types).
pub fn start_info(layout: &Layout) -> Result<[u8; 4096], BootError> {
    use si::*;
    let mut p = [0u8; 4096];
    let base = layout.boot_info;
    put(&mut p, OFF_MAGIC, &MAGIC.to_le_bytes());
    put(&mut p, OFF_VERSION, &1u32.to_le_bytes());
    put(&mut p, OFF_FLAGS, &0u32.to_le_bytes());
    put(&mut p, OFF_CMDLINE_PADDR, &layout.cmdline.to_le_bytes());
    put(&mut p, OFF_RSDP_PADDR, &layout.rsdp.to_le_bytes());
    if let Some(r) = &layout.initrd {
        put(&mut p, OFF_NR_MODULES, &1u32.to_le_bytes());
        put(
            &mut p,
            OFF_MODLIST_PADDR,
            &(base + MODLIST_OFFSET as u64).to_le_bytes(),
        );
        put(&mut p, MODLIST_OFFSET, &r.start.to_le_bytes());
        put(&mut p, MODLIST_OFFSET + 8, &(r.end - r.start).to_le_bytes());
    }
    let entries = layout.e820.entries();
    let max = (4096 - MEMMAP_OFFSET) / MEMMAP_ENTRY_SIZE;
    if entries.len() > max {
        return Err(BootError::E820(E820Error::TooManyEntries {
            entries: entries.len(),
            max,
        }));
    }
    for (i, e) in entries.iter().enumerate() {
        let at = MEMMAP_OFFSET + i * MEMMAP_ENTRY_SIZE;
        put(&mut p, at, &e.addr.to_le_bytes());
        put(&mut p, at + 8, &e.size.to_le_bytes());
        put(&mut p, at + 16, &(e.kind as u32).to_le_bytes());
    }
    put(
        &mut p,
        OFF_MEMMAP_PADDR,
        &(base + MEMMAP_OFFSET as u64).to_le_bytes(),
    );
    put(
        &mut p,
        OFF_MEMMAP_ENTRIES,
        &(entries.len() as u32).to_le_bytes(),
    );
    Ok(p)
}

/// The command line as placed at [`Layout::cmdline`]: the bytes and a NUL.
pub fn cmdline_bytes(cmdline: &[u8]) -> Vec<u8> {
    let mut v = cmdline.to_vec();
    v.push(0);
    v
}

/// Every boot-data write a tenant needs besides the kernel and the initramfs, as
/// (guest-physical address, bytes): the GDT, the identity map (64-bit protocol), the zero page or
/// start-info page, the command line, and the ACPI tables when `acpi` is given. With
/// [`Layout::kernel`] (file ranges to copy, the rest of `mem_size` zero), [`Layout::initrd`] and
/// [`Layout::entry`], this is everything a loader writes and sets.
pub fn boot_writes(
    image: &KernelImage,
    layout: &Layout,
    cmdline: &[u8],
    acpi: Option<&super::acpi_tables::AcpiConfig>,
) -> Result<Vec<(u64, Vec<u8>)>, BootError> {
    if cmdline.len() as u64 + 1 != layout.cmdline_len {
        return Err(BootError::BadCmdline {
            len: cmdline.len() as u64,
            max: layout.cmdline_len.saturating_sub(1),
        });
    }
    let mut w: Vec<(u64, Vec<u8>)> = alloc::vec![(layout.gdt, gdt().to_vec())];
    if layout.page_tables.is_some() {
        w.extend(
            identity_page_tables()
                .into_iter()
                .map(|(gpa, page)| (gpa, page.to_vec())),
        );
    }
    let info = match layout.protocol {
        Protocol::Linux64 => boot_params(image, layout)?,
        Protocol::Pvh => start_info(layout)?,
    };
    w.push((layout.boot_info, info.to_vec()));
    w.push((layout.cmdline, cmdline_bytes(cmdline)));
    if let Some(cfg) = acpi {
        let room = (layout.acpi.end - layout.acpi.start) as usize;
        let blob = super::acpi_tables::build(layout.acpi.start, room, cfg)
            .map_err(|_| BootError::BadMemory("ACPI tables do not fit their area"))?;
        w.push((layout.acpi.start, blob));
    }
    Ok(w)
}

#[cfg(test)]
mod tests;
