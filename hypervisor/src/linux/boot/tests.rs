use super::*;

/// A synthetic bzImage with the header fields of Debian's 6.1 kernel (protocol 2.15,
/// relocatable, 64-bit, pref_address 16 MiB, alignment 2 MiB) and `payload` bytes of kernel.
fn bzimage(payload: usize, init_size: u32) -> Vec<u8> {
    let setup_sects = 27u8;
    let mut img = alloc::vec![0u8; (usize::from(setup_sects) + 1) * 512 + payload];
    img[hdr::SETUP_SECTS] = setup_sects;
    img[hdr::BOOT_FLAG..][..2].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[hdr::JUMP] = 0xeb;
    img[hdr::JUMP + 1] = 0x6a; // header ends at 0x26c
    img[hdr::HEADER..][..4].copy_from_slice(b"HdrS");
    img[hdr::VERSION..][..2].copy_from_slice(&0x020fu16.to_le_bytes());
    img[hdr::LOADFLAGS] = hdr::LOADED_HIGH | hdr::CAN_USE_HEAP;
    img[hdr::INITRD_ADDR_MAX..][..4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    img[hdr::KERNEL_ALIGNMENT..][..4].copy_from_slice(&0x20_0000u32.to_le_bytes());
    img[hdr::RELOCATABLE_KERNEL] = 1;
    img[hdr::XLOADFLAGS..][..2]
        .copy_from_slice(&(hdr::XLF_KERNEL_64 | hdr::XLF_CAN_BE_LOADED_ABOVE_4G).to_le_bytes());
    img[hdr::CMDLINE_SIZE..][..4].copy_from_slice(&2047u32.to_le_bytes());
    img[hdr::PREF_ADDRESS..][..8].copy_from_slice(&0x100_0000u64.to_le_bytes());
    img[hdr::INIT_SIZE..][..4].copy_from_slice(&init_size.to_le_bytes());
    // A byte past the header end that must not be copied into boot_params.
    img[0x26c] = 0x5a;
    img
}

struct Ph {
    ty: u32,
    off: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// A synthetic ELF64 with the given program headers; `data` is appended at offset 0x1000.
fn elf(entry: u64, phs: &[Ph], data: &[u8]) -> Vec<u8> {
    let mut img = alloc::vec![0u8; 0x1000];
    img[..4].copy_from_slice(b"\x7fELF");
    img[4] = 2;
    img[5] = 1;
    img[6] = 1;
    img[16..18].copy_from_slice(&2u16.to_le_bytes());
    img[18..20].copy_from_slice(&62u16.to_le_bytes());
    img[24..32].copy_from_slice(&entry.to_le_bytes());
    img[32..40].copy_from_slice(&64u64.to_le_bytes());
    img[54..56].copy_from_slice(&56u16.to_le_bytes());
    img[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
    for (i, p) in phs.iter().enumerate() {
        let h = &mut img[64 + i * 56..][..56];
        h[0..4].copy_from_slice(&p.ty.to_le_bytes());
        h[8..16].copy_from_slice(&p.off.to_le_bytes());
        h[16..24].copy_from_slice(&p.vaddr.to_le_bytes());
        h[24..32].copy_from_slice(&p.paddr.to_le_bytes());
        h[32..40].copy_from_slice(&p.filesz.to_le_bytes());
        h[40..48].copy_from_slice(&p.memsz.to_le_bytes());
    }
    img.extend_from_slice(data);
    img
}

fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&ty.to_le_bytes());
    n.extend_from_slice(name);
    n.resize(n.len().div_ceil(4) * 4, 0);
    n.extend_from_slice(desc);
    n.resize(n.len().div_ceil(4) * 4, 0);
    n
}

const KMAP: u64 = 0xffff_ffff_8000_0000; // __START_KERNEL_map

/// A vmlinux shaped like Debian's: text at 16 MiB (virtual KMAP + 16 MiB), a per-CPU segment
/// linked at virtual 0 but placed physically after it, a note with the PVH entry.
fn vmlinux(with_pvh: bool) -> Vec<u8> {
    let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4]);
    if with_pvh {
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x0100_0120u32.to_le_bytes(),
        ));
    }
    let text = 0x2000u64;
    let data_off = 0x1000 + text;
    let mut data = alloc::vec![0xccu8; text as usize];
    data.extend(alloc::vec![0xddu8; 0x1000]);
    let notes_off = 0x1000 + data.len() as u64;
    data.extend_from_slice(&notes);
    let phs = [
        Ph {
            ty: 1,
            off: 0x1000,
            vaddr: KMAP + 0x100_0000,
            paddr: 0x100_0000,
            filesz: text,
            memsz: text,
        },
        Ph {
            ty: 1,
            off: data_off,
            vaddr: 0,
            paddr: 0x100_4000,
            filesz: 0x1000,
            memsz: 0x3000,
        },
        Ph {
            ty: 4,
            off: notes_off,
            vaddr: 0,
            paddr: 0,
            filesz: notes.len() as u64,
            memsz: 0,
        },
    ];
    elf(KMAP + 0x100_0000 + 0x40, &phs, &data)
}

const MIB: u64 = 1 << 20;
const T256: TenantConfig = TenantConfig {
    memory: 256 * MIB,
    window: 16 * MIB,
};

#[test]
fn bzimage_header_is_parsed() {
    let img = bzimage(0x8000, 0x2_0000);
    let b = BzImage::parse(&img).unwrap();
    assert_eq!(b.header.setup_sects, 27);
    assert_eq!(b.header.version, 0x020f);
    assert!(b.header.relocatable);
    assert_eq!(b.header.pref_address, 0x100_0000);
    assert_eq!(b.header.init_size, 0x2_0000);
    assert_eq!(b.header.cmdline_size, 2047);
    assert_eq!(b.payload, 28 * 512..28 * 512 + 0x8000);
    assert_eq!(b.header.raw.len(), 0x26c - 0x1f1);
    assert!(matches!(
        KernelImage::parse(&img),
        Ok(KernelImage::BzImage(_))
    ));
}

#[test]
fn malformed_bzimages_are_refused() {
    let good = bzimage(0x8000, 0x2_0000);
    let mut v = good.clone();
    v[hdr::BOOT_FLAG] = 0;
    assert!(matches!(
        BzImage::parse(&v),
        Err(BootError::BadSetupHeader(_))
    ));
    let mut v = good.clone();
    v[hdr::VERSION..][..2].copy_from_slice(&0x020bu16.to_le_bytes());
    assert_eq!(
        BzImage::parse(&v),
        Err(BootError::ProtocolTooOld { version: 0x020b })
    );
    let mut v = good.clone();
    v[hdr::XLOADFLAGS] = 0;
    assert_eq!(BzImage::parse(&v), Err(BootError::Not64Bit));
    let mut v = good.clone();
    v[hdr::SETUP_SECTS] = 200; // setup sectors run past the file
    assert!(matches!(
        BzImage::parse(&v),
        Err(BootError::BadSetupHeader(_))
    ));
    let v = bzimage(0x8000, 0x100); // init_size below the payload size
    assert!(matches!(
        BzImage::parse(&v),
        Err(BootError::BadSetupHeader(_))
    ));
    let mut v = good.clone();
    v[hdr::JUMP + 1] = 0x10; // header claims to end before init_size
    assert!(matches!(
        BzImage::parse(&v),
        Err(BootError::BadSetupHeader(_))
    ));
    assert!(matches!(
        BzImage::parse(&good[..0x250]),
        Err(BootError::BadSetupHeader(_))
    ));
    assert_eq!(
        KernelImage::parse(&[0u8; 4096]),
        Err(BootError::UnknownFormat)
    );
}

#[test]
fn vmlinux_segments_entries_and_pvh_note() {
    let v = Vmlinux::parse(&vmlinux(true)).unwrap();
    assert_eq!(v.segments.len(), 2);
    assert_eq!(v.segments[0].paddr, 0x100_0000);
    assert_eq!(
        v.segments[1],
        LoadSegment {
            paddr: 0x100_4000,
            file_offset: 0x3000,
            file_size: 0x1000,
            mem_size: 0x3000
        }
    );
    assert_eq!(v.entry64, 0x100_0040);
    assert_eq!(v.pvh_entry, Some(0x0100_0120));
    assert_eq!(v.extent(), 0x100_0000..0x100_7000);
    assert_eq!(Vmlinux::parse(&vmlinux(false)).unwrap().pvh_entry, None);
    // Linux's own link gives e_entry as the physical address (phys_startup_64).
    let mut img = vmlinux(true);
    img[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    assert_eq!(Vmlinux::parse(&img).unwrap().entry64, 0x100_0000);
}

#[test]
fn malformed_elfs_are_refused() {
    let good = vmlinux(true);
    let mut v = good.clone();
    v[18] = 3; // EM_386
    assert_eq!(
        Vmlinux::parse(&v),
        Err(BootError::BadElf("e_machine is not x86-64"))
    );
    let mut v = good.clone();
    v[64 + 32..64 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes()); // filesz past the file
    assert_eq!(
        Vmlinux::parse(&v),
        Err(BootError::BadElf("segment data out of file"))
    );
    let mut v = good.clone();
    v[64 + 56 + 24..64 + 56 + 32].copy_from_slice(&0x100_1000u64.to_le_bytes()); // overlap
    assert_eq!(
        Vmlinux::parse(&v),
        Err(BootError::BadElf("PT_LOAD segments overlap physically"))
    );
    let mut v = good.clone();
    v[24..32].copy_from_slice(&0x5_0000u64.to_le_bytes());
    assert_eq!(
        Vmlinux::parse(&v),
        Err(BootError::BadElf("e_entry is in no PT_LOAD segment"))
    );
    let mut v = good.clone();
    v[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
    assert_eq!(
        Vmlinux::parse(&v),
        Err(BootError::BadElf("program headers out of file"))
    );
    // A note whose size runs past its segment.
    let notes_ph = 64 + 2 * 56;
    let off = u64::from_le_bytes(v[notes_ph + 8..notes_ph + 16].try_into().unwrap()) as usize;
    let mut v = good.clone();
    v[off + 4..off + 8].copy_from_slice(&0x1000u32.to_le_bytes());
    assert_eq!(
        Vmlinux::parse(&v),
        Err(BootError::BadElf("note runs past its segment"))
    );
    assert_eq!(
        Vmlinux::parse(&good[..40]),
        Err(BootError::BadElf("truncated header"))
    );
}

#[test]
fn layout_places_everything_without_overlap() {
    let k = KernelImage::parse(&vmlinux(true)).unwrap();
    let l = plan(&k, Protocol::Pvh, T256, 5 * MIB + 123, b"console=ttyS0").unwrap();
    assert_eq!(l.window, Some(240 * MIB..256 * MIB));
    assert_eq!(l.ram_top, 240 * MIB);
    // The initramfs ends at the top of RAM (page-aligned start, below the window).
    let i = l.initrd.clone().unwrap();
    assert_eq!(i.start % 4096, 0);
    assert!(i.end <= 240 * MIB && i.end > 240 * MIB - 4096);
    assert_eq!(i.end - i.start, 5 * MIB + 123);
    assert_eq!(
        l.entry,
        EntryState::Protected32 {
            eip: 0x0100_0120,
            ebx: ZERO_PAGE_GPA as u32
        }
    );
    assert_eq!(l.page_tables, None);
    assert_eq!(l.cmdline_len, 14);
    // e820: the window is not RAM, the kernel and initrd are, the boot data and ACPI are not.
    assert_eq!(l.e820.type_at(240 * MIB), None);
    assert_eq!(l.e820.type_at(255 * MIB), None);
    assert!(l.e820.is_ram(
        l.kernel_range.start,
        l.kernel_range.end - l.kernel_range.start
    ));
    assert!(l.e820.is_ram(i.start, i.end - i.start));
    assert_eq!(l.e820.type_at(ZERO_PAGE_GPA), Some(E820Type::Reserved));
    assert_eq!(l.e820.type_at(CMDLINE_GPA), Some(E820Type::Reserved));
    assert_eq!(l.e820.type_at(ACPI_GPA), Some(E820Type::Acpi));
    assert_eq!(l.e820.type_at(0xa0000), Some(E820Type::Reserved));
    assert_eq!(l.e820.ram_bytes(), 0x1000 + (0x9f000 - 0xa000) + 239 * MIB);

    let l64 = plan(&k, Protocol::Linux64, T256, 0, b"").unwrap();
    assert_eq!(
        l64.entry,
        EntryState::Long64 {
            rip: 0x100_0040,
            rsi: ZERO_PAGE_GPA,
            cr3: PML4_GPA
        }
    );
    assert_eq!(l64.initrd, None);
    assert_eq!(l64.kernel.len(), 2);
    assert_eq!(
        l64.kernel[1],
        KernelCopy {
            gpa: 0x100_4000,
            file: 0x3000..0x4000,
            mem_size: 0x3000
        }
    );
}

#[test]
fn bzimage_layout_uses_pref_address_then_relocates() {
    let k = KernelImage::parse(&bzimage(0x8000, 0x200_0000)).unwrap();
    let l = plan(&k, Protocol::Linux64, T256, 0, b"quiet").unwrap();
    assert_eq!(l.kernel_range, 0x100_0000..0x300_0000);
    assert_eq!(
        l.entry,
        EntryState::Long64 {
            rip: 0x100_0200,
            rsi: ZERO_PAGE_GPA,
            cr3: PML4_GPA
        }
    );
    assert_eq!(l.kernel[0].file, 28 * 512..28 * 512 + 0x8000);
    assert_eq!(l.kernel[0].mem_size, 0x200_0000);
    assert_eq!(
        plan(&k, Protocol::Pvh, T256, 0, b""),
        Err(BootError::PvhNeedsElf)
    );
    // pref_address does not fit in 16 MiB... nor anywhere for a non-relocatable kernel.
    let small = TenantConfig {
        memory: 24 * MIB,
        window: 0,
    };
    let mut img = bzimage(0x8000, 0x140_0000);
    let k = KernelImage::parse(&img).unwrap();
    let l = plan(&k, Protocol::Linux64, small, 0, b"").unwrap();
    assert_eq!(l.kernel_range, 2 * MIB..2 * MIB + 0x140_0000); // 1 MiB rounded up to 2 MiB
    img[hdr::RELOCATABLE_KERNEL] = 0;
    let k = KernelImage::parse(&img).unwrap();
    assert_eq!(
        plan(&k, Protocol::Linux64, small, 0, b""),
        Err(BootError::KernelDoesNotFit {
            start: 0x100_0000,
            end: 0x240_0000,
            ram_end: 24 * MIB
        })
    );
}

#[test]
fn what_does_not_fit_is_an_error() {
    let k = KernelImage::parse(&vmlinux(true)).unwrap();
    // Initramfs larger than the room between the kernel and the window.
    let room = 240 * MIB - 0x100_7000;
    assert_eq!(
        plan(&k, Protocol::Pvh, T256, room + 1, b""),
        Err(BootError::InitrdDoesNotFit {
            size: room + 1,
            room
        })
    );
    assert!(plan(&k, Protocol::Pvh, T256, room - 4096, b"").is_ok());
    // Kernel placed where the window is.
    let tiny = TenantConfig {
        memory: 32 * MIB,
        window: 16 * MIB,
    };
    assert_eq!(
        plan(&k, Protocol::Pvh, tiny, 0, b""),
        Err(BootError::KernelDoesNotFit {
            start: 0x100_0000,
            end: 0x100_7000,
            ram_end: 16 * MIB
        })
    );
    // Kernel below 1 MiB (over the boot data).
    let mut low = vmlinux(true);
    low[64 + 24..64 + 32].copy_from_slice(&0x8000u64.to_le_bytes());
    let k2 = KernelImage::parse(&low).unwrap();
    assert!(matches!(
        plan(&k2, Protocol::Linux64, T256, 0, b""),
        Err(BootError::KernelDoesNotFit { .. })
    ));
    // PVH without the note.
    let k3 = KernelImage::parse(&vmlinux(false)).unwrap();
    assert_eq!(
        plan(&k3, Protocol::Pvh, T256, 0, b""),
        Err(BootError::NoPvhEntry)
    );
    // Command lines.
    let long = alloc::vec![b'a'; 4096];
    assert_eq!(
        plan(&k, Protocol::Pvh, T256, 0, &long),
        Err(BootError::BadCmdline {
            len: 4096,
            max: 4095
        })
    );
    assert!(matches!(
        plan(&k, Protocol::Pvh, T256, 0, b"a\0b"),
        Err(BootError::BadCmdline { .. })
    ));
    let kb = KernelImage::parse(&bzimage(0x8000, 0x20_0000)).unwrap();
    let c = alloc::vec![b'a'; 2048];
    assert_eq!(
        plan(&kb, Protocol::Linux64, T256, 0, &c),
        Err(BootError::BadCmdline {
            len: 2048,
            max: 2047
        })
    );
    // Memory and window shapes.
    let bad = |memory, window| plan(&k, Protocol::Pvh, TenantConfig { memory, window }, 0, b"");
    assert!(matches!(bad(8 * MIB, 0), Err(BootError::BadMemory(_))));
    assert!(matches!(
        bad(256 * MIB + 1, 0),
        Err(BootError::BadMemory(_))
    ));
    assert!(matches!(bad(4 << 30, 0), Err(BootError::BadMemory(_))));
    assert!(matches!(
        bad(256 * MIB, 3 * MIB),
        Err(BootError::BadMemory(_))
    ));
    assert!(matches!(
        bad(256 * MIB, 256 * MIB),
        Err(BootError::BadMemory(_))
    ));
}

#[test]
fn window_is_naturally_aligned_when_memory_is_not_a_multiple() {
    let k = KernelImage::parse(&vmlinux(true)).unwrap();
    let t = TenantConfig {
        memory: 100 * MIB,
        window: 32 * MIB,
    };
    let l = plan(&k, Protocol::Pvh, t, MIB, b"").unwrap();
    assert_eq!(l.window, Some(64 * MIB..96 * MIB));
    // The 4 MiB above the window stay RAM; the initramfs sits below the window.
    assert_eq!(l.e820.type_at(96 * MIB), Some(E820Type::Ram));
    assert_eq!(l.e820.type_at(80 * MIB), None);
    assert!(l.initrd.unwrap().end <= 64 * MIB);
}

fn u32_of(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(p[at..at + 4].try_into().unwrap())
}
fn u64_of(p: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
}

#[test]
fn boot_params_fields_at_their_zero_page_offsets() {
    let img = bzimage(0x8000, 0x200_0000);
    let k = KernelImage::parse(&img).unwrap();
    let l = plan(&k, Protocol::Linux64, T256, 3 * MIB, b"console=ttyS0").unwrap();
    let p = boot_params(&k, &l).unwrap();
    // The header is copied from 0x1f1 up to its end (0x26c) and not beyond.
    assert_eq!(&p[0x1f1..0x210], &img[0x1f1..0x210]);
    assert_eq!(&p[0x202..0x206], b"HdrS");
    assert_eq!(p[0x26c], 0);
    assert_eq!(p[0x210], 0xff, "type_of_loader");
    assert_eq!(
        p[0x211],
        hdr::LOADED_HIGH,
        "loadflags: LOADED_HIGH, heap flag cleared"
    );
    assert_eq!(u32_of(&p, 0x228), CMDLINE_GPA as u32, "cmd_line_ptr");
    assert_eq!(u32_of(&p, 0x0c8), 0, "ext_cmd_line_ptr");
    let i = l.initrd.clone().unwrap();
    assert_eq!(u32_of(&p, 0x218), i.start as u32, "ramdisk_image");
    assert_eq!(u32_of(&p, 0x21c), 3 * MIB as u32, "ramdisk_size");
    assert_eq!(u32_of(&p, 0x0c0), 0, "ext_ramdisk_image");
    assert_eq!(u32_of(&p, 0x0c4), 0, "ext_ramdisk_size");
    assert_eq!(u64_of(&p, 0x070), ACPI_GPA, "acpi_rsdp_addr");
    assert_eq!(p[0x1ef], 0, "sentinel");
    assert_eq!(u64_of(&p, 0x258), 0x100_0000, "pref_address kept");
    let n = l.e820.entries().len();
    assert_eq!(p[0x1e8] as usize, n, "e820_entries");
    for (k, e) in l.e820.entries().iter().enumerate() {
        let at = 0x2d0 + 20 * k;
        assert_eq!(
            (u64_of(&p, at), u64_of(&p, at + 8), u32_of(&p, at + 16)),
            (e.addr, e.size, e.kind as u32)
        );
    }
    assert!(p[0x2d0 + 20 * n..].iter().all(|&b| b == 0));
}

#[test]
fn boot_params_for_vmlinux_synthesizes_a_header() {
    let k = KernelImage::parse(&vmlinux(true)).unwrap();
    let l = plan(&k, Protocol::Linux64, T256, 0, b"x").unwrap();
    let p = boot_params(&k, &l).unwrap();
    assert_eq!(u16::from_le_bytes([p[0x1fe], p[0x1ff]]), 0xaa55);
    assert_eq!(&p[0x202..0x206], b"HdrS");
    assert_eq!(u16::from_le_bytes([p[0x206], p[0x207]]), 0x020f);
    assert_eq!(0x202 + usize::from(p[0x201]), hdr::END_2_15);
    assert_eq!(p[0x210], 0xff);
    assert_eq!(
        u16::from_le_bytes([p[0x236], p[0x237]]) & hdr::XLF_KERNEL_64,
        1
    );
    assert_eq!(u32_of(&p, 0x228), CMDLINE_GPA as u32);
    assert_eq!(
        (u32_of(&p, 0x218), u32_of(&p, 0x21c)),
        (0, 0),
        "no initramfs"
    );
}

#[test]
fn start_info_fields_at_their_offsets() {
    let k = KernelImage::parse(&vmlinux(true)).unwrap();
    let l = plan(&k, Protocol::Pvh, T256, 2 * MIB, b"console=ttyS0").unwrap();
    let p = start_info(&l).unwrap();
    assert_eq!(u32_of(&p, 0x00), 0x336e_c578, "magic");
    assert_eq!(u32_of(&p, 0x04), 1, "version");
    assert_eq!(u32_of(&p, 0x0c), 1, "nr_modules");
    assert_eq!(u64_of(&p, 0x10), ZERO_PAGE_GPA + 0x40, "modlist_paddr");
    assert_eq!(u64_of(&p, 0x18), CMDLINE_GPA, "cmdline_paddr");
    assert_eq!(u64_of(&p, 0x20), ACPI_GPA, "rsdp_paddr");
    assert_eq!(u64_of(&p, 0x28), ZERO_PAGE_GPA + 0x80, "memmap_paddr");
    assert_eq!(
        u32_of(&p, 0x30) as usize,
        l.e820.entries().len(),
        "memmap_entries"
    );
    let i = l.initrd.clone().unwrap();
    assert_eq!((u64_of(&p, 0x40), u64_of(&p, 0x48)), (i.start, 2 * MIB));
    for (k, e) in l.e820.entries().iter().enumerate() {
        let at = 0x80 + 24 * k;
        assert_eq!(
            (u64_of(&p, at), u64_of(&p, at + 8), u32_of(&p, at + 16)),
            (e.addr, e.size, e.kind as u32)
        );
    }
    // Without an initramfs there are no modules.
    let l = plan(&k, Protocol::Pvh, T256, 0, b"").unwrap();
    let p = start_info(&l).unwrap();
    assert_eq!((u32_of(&p, 0x0c), u64_of(&p, 0x10)), (0, 0));
}

#[test]
fn gdt_and_identity_map() {
    let g = gdt();
    let d = |sel: u16| u64_of(&g, usize::from(sel));
    // Code: present, DPL 0, S=1, type execute/read; 64-bit has L=1 D=0, 32-bit D=1.
    assert_eq!((d(BOOT_CS64) >> 40) & 0xff, 0x9b);
    assert_eq!((d(BOOT_CS64) >> 53) & 3, 0b01);
    assert_eq!((d(BOOT_CS32) >> 53) & 3, 0b10);
    assert_eq!((d(BOOT_DS) >> 40) & 0xff, 0x93);
    let pt = identity_page_tables();
    assert_eq!(pt.len(), 6);
    // Walk a few addresses through the tables: every one maps to itself.
    let page = |gpa: u64| &pt.iter().find(|(a, _)| *a == gpa).unwrap().1;
    for va in [0u64, 0x100_0000, 0xfee0_0000, 0xffff_ffff, 0x4020_1234] {
        let e4 = u64_of(page(PML4_GPA), ((va >> 39) & 511) as usize * 8);
        let e3 = u64_of(page(e4 & !0xfff), ((va >> 30) & 511) as usize * 8);
        let e2 = u64_of(page(e3 & !0xfff), ((va >> 21) & 511) as usize * 8);
        assert_eq!(e2 & 0x83, 0x83);
        assert_eq!((e2 & !0x1f_ffff & ((1 << 52) - 1)) | (va & 0x1f_ffff), va);
    }
}

#[test]
fn boot_writes_cover_every_structure_without_overlap() {
    use crate::linux::acpi_tables::AcpiConfig;
    let k = KernelImage::parse(&vmlinux(true)).unwrap();
    let cmd = b"console=ttyS0 quiet";
    let cfg = AcpiConfig {
        cpus: 1,
        io_apic: None,
        pci_window: None,
    };
    for protocol in [Protocol::Linux64, Protocol::Pvh] {
        let l = plan(&k, protocol, T256, MIB, cmd).unwrap();
        let w = boot_writes(&k, &l, cmd, Some(&cfg)).unwrap();
        let at = |gpa: u64| &w.iter().find(|(a, _)| *a == gpa).unwrap().1;
        assert_eq!(at(GDT_GPA)[..], gdt()[..]);
        assert_eq!(at(CMDLINE_GPA)[..], b"console=ttyS0 quiet\0"[..]);
        assert_eq!(&at(ACPI_GPA)[..8], b"RSD PTR ");
        match protocol {
            Protocol::Linux64 => {
                assert_eq!(at(ZERO_PAGE_GPA)[..], boot_params(&k, &l).unwrap()[..]);
                assert_eq!(w.len(), 1 + 6 + 3);
            }
            Protocol::Pvh => {
                assert_eq!(at(ZERO_PAGE_GPA)[..], start_info(&l).unwrap()[..]);
                assert_eq!(w.len(), 3 + 1, "no page tables for PVH");
            }
        }
        // Every write lies in reserved or ACPI memory, none overlaps another, the kernel or the
        // initramfs.
        let mut ranges: Vec<(u64, u64)> =
            w.iter().map(|(a, b)| (*a, *a + b.len() as u64)).collect();
        ranges.push((l.kernel_range.start, l.kernel_range.end));
        let i = l.initrd.clone().unwrap();
        ranges.push((i.start, i.end));
        ranges.sort();
        assert!(ranges.windows(2).all(|p| p[0].1 <= p[1].0), "{ranges:x?}");
        for (a, b) in &w {
            assert!(
                !l.e820.is_ram(*a, 1) && !l.e820.is_ram(*a + b.len() as u64 - 1, 1),
                "{a:#x}"
            );
        }
    }
    let l = plan(&k, Protocol::Linux64, T256, 0, cmd).unwrap();
    assert!(matches!(
        boot_writes(&k, &l, b"other", None),
        Err(BootError::BadCmdline { .. })
    ));
    assert_eq!(boot_writes(&k, &l, cmd, None).unwrap().len(), 1 + 6 + 2);
}
