//! Running an unmodified Linux kernel as a tenant.
//!
//! **Boot path: the 64-bit boot protocol on the uncompressed `vmlinux`** (Documentation/x86/
//! boot.rst, "64-bit Boot Protocol"). The ELF's loadable segments go to their physical
//! addresses (16 MiB up for Debian's kernel), the vCPU starts in long mode at the ELF entry
//! (`startup_64`) with an identity map of the first GiB, a flat GDT with `__BOOT_CS` (0x10) and
//! `__BOOT_DS` (0x18), interrupts off and RSI = the boot_params ("zero page") address. Chosen
//! over PVH because it needs no unrestricted guest and no 32-bit guest state: the vCPU is set up
//! exactly like the Rust guests' (long mode, paging on), and the XZ decompressor of the bzImage
//! (about 95 s in Bochs) is skipped. The bzImage path is the same protocol on the protected-mode
//! part of the bzImage (`(setup_sects + 1) * 512` into the file), entered at load address +
//! 0x200; it is not wired up here.
//!
//! **Platform** (see `hypervisor::legacy_pc`, `hypervisor::linux` and [`exits`]): every port traps (unconditional I/O exiting): COM1
//! (0x3f8–0x3ff) is an emulated 16550A on IRQ 4, the 8259A pair and channel 0 of the 8254 are
//! emulated (the kernel's tick), the PCI configuration ports latch their address and read all
//! ones, reset/power-off ports stop the tenant, every other port reads all ones and drops
//! writes: Bochs' own PIT, PIC, CMOS and UART are never reachable by a tenant. CPUID is a policy
//! (VMX, XSAVE/AVX, MTRR, MCE, x2APIC, the local APIC, MONITOR, PCID, speculation-control MSRs
//! hidden; the TSC frequency through leaf 0x15 so Linux needs no PIT calibration; our hypervisor
//! leaves shown); MSRs are an allow list, #GP for the rest.
//!
//! Guest-physical layout: 0x1000 GDT, 0x2000–0x4fff the boot page tables, 0x7000 boot_params,
//! 0x20000 the command line, the kernel at its ELF physical addresses, the initramfs at the top
//! of RAM, and the last `window_mib` of the tenant's memory the tensor window (not RAM in e820).

mod exits;

pub use exits::{CrPolicy, Platform};

use super::ram::GuestRam;
use super::vcpu::GuestStart;
use alloc::string::String;
use alloc::vec::Vec;
use hypervisor::elf::GuestImage;
use hypervisor::linux::boot::HYPERCALL_PAGE_GPA;
use hypervisor::multiboot2::{cmdline_value, Module};

const GDT_GPA: u64 = 0x1000;
const PML4_GPA: u64 = 0x2000;
const PDPT_GPA: u64 = 0x3000;
const PD_GPA: u64 = 0x4000;
const BOOT_PARAMS_GPA: u64 = 0x7000;
const CMDLINE_GPA: u64 = 0x2_0000;
const CMDLINE_MAX: usize = 4095;
/// The start of the legacy hole (EBDA, VGA, option ROMs, BIOS) that e820 reports reserved.
const LOW_RAM_END: u64 = 0x9_fc00;
const HIGH_RAM_START: u64 = 0x10_0000;

/// e820 range types (ACPI 6.x, table 15-312 "Address Range Types").
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// What a Linux tenant is started with.
pub struct LinuxSpec<'a> {
    pub name: String,
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub window_mib: u64,
    pub budget_ms: u64,
    pub limits: hypervisor::dispatch::Limits,
    pub user_mode_hypercalls: bool,
    /// `console=raw`: COM1 straight to the hypervisor's console (`cargo xtask run --linux`).
    pub raw_console: bool,
}

impl<'a> LinuxSpec<'a> {
    /// A Linux tenant from a `linux:NAME key=value ... -- KERNEL COMMAND LINE` module (the kernel
    /// image) and an optional `initrd:NAME` module.
    pub fn from_module(m: &Module<'_>, kernel: &'a [u8], modules: &[(Module<'_>, &'a [u8])]) -> Result<Self, String> {
        let (ours, cmdline) = m.cmdline.split_once(" -- ").unwrap_or((m.cmdline, ""));
        let name = ours.split_ascii_whitespace().next().unwrap_or("").trim_start_matches("linux:");
        let num = |key: &str, default: u64| -> Result<u64, String> {
            cmdline_value(ours, key).map_or(Ok(default), |v| v.parse().map_err(|_| alloc::format!("bad {key}={v}")))
        };
        let initrd_name = alloc::format!("initrd:{name}");
        let initrd = modules.iter().find(|(m, _)| m.cmdline.split_ascii_whitespace().next() == Some(initrd_name.as_str())).map(|(_, b)| *b);
        Ok(Self {
            name: name.into(),
            kernel,
            initrd,
            cmdline: cmdline.into(),
            memory_mib: num("mem_mib", 256)?,
            window_mib: num("window_mib", 8)?,
            budget_ms: num("budget_ms", 3_600_000)?,
            limits: hypervisor::dispatch::Limits::default(),
            user_mode_hypercalls: cmdline_value(ours, "user_vmcall") == Some("1"),
            raw_console: cmdline_value(ours, "console") == Some("raw"),
        })
    }
}

/// A loaded Linux tenant: its memory, where its vCPU starts, and its platform.
pub struct Loaded {
    pub ram: GuestRam,
    pub start: GuestStart,
    pub platform: Platform,
    pub summary: String,
}

fn put<const N: usize>(bp: &mut [u8], at: usize, v: [u8; N]) {
    bp[at..at + N].copy_from_slice(&v);
}

/// The boot_params page (Documentation/x86/zero-page.rst and boot.rst, protocol 2.15 fields).
fn boot_params(e820: &[(u64, u64, u32)], cmdline_len: usize, initrd: Option<(u64, u64)>) -> Vec<u8> {
    let mut bp = alloc::vec![0u8; 4096];
    put(&mut bp, 0x1e8, [e820.len() as u8]); // e820_entries
    put(&mut bp, 0x1f1, [0]); // setup_sects
    put(&mut bp, 0x1fe, 0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut bp, 0x202, *b"HdrS"); // header
    put(&mut bp, 0x206, 0x020fu16.to_le_bytes()); // version 2.15
    put(&mut bp, 0x210, [0xff]); // type_of_loader: undefined
    put(&mut bp, 0x211, [0x01]); // loadflags: LOADED_HIGH
    if let Some((addr, size)) = initrd {
        put(&mut bp, 0x218, (addr as u32).to_le_bytes()); // ramdisk_image
        put(&mut bp, 0x21c, (size as u32).to_le_bytes()); // ramdisk_size
        put(&mut bp, 0x0c0, ((addr >> 32) as u32).to_le_bytes()); // ext_ramdisk_image
        put(&mut bp, 0x0c4, ((size >> 32) as u32).to_le_bytes()); // ext_ramdisk_size
    }
    put(&mut bp, 0x228, (CMDLINE_GPA as u32).to_le_bytes()); // cmd_line_ptr
    put(&mut bp, 0x22c, 0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut bp, 0x238, (cmdline_len as u32).to_le_bytes()); // cmdline_size
    for (i, &(addr, size, kind)) in e820.iter().enumerate() {
        let at = 0x2d0 + i * 20;
        put(&mut bp, at, addr.to_le_bytes());
        put(&mut bp, at + 8, size.to_le_bytes());
        put(&mut bp, at + 16, kind.to_le_bytes());
    }
    bp
}

/// Loads the kernel, the initramfs and the boot structures; the error says why the tenant was
/// not started (nothing is left half-built: the memory is freed with the error).
pub fn load(spec: &LinuxSpec<'_>, caps: ept_caps::Caps, tsc_hz: u64, cr: CrPolicy) -> Result<Loaded, String> {
    if !(32..=1024).contains(&spec.memory_mib) {
        return Err(alloc::format!("mem_mib={} is outside 32..=1024", spec.memory_mib));
    }
    let size = spec.memory_mib << 20;
    let window = spec.window_mib << 20;
    if window >= size / 2 || !window.is_power_of_two() {
        return Err(alloc::format!("window_mib={} must be a power of two below half of mem_mib={}", spec.window_mib, spec.memory_mib));
    }
    let ram_end = size - window;
    if ram_end % window != 0 {
        return Err(alloc::format!("the window (BAR 1) must be aligned to its size: make mem_mib={} a multiple of window_mib={}", spec.memory_mib, spec.window_mib));
    }
    if spec.cmdline.len() > CMDLINE_MAX {
        return Err(alloc::format!("kernel command line is {} bytes (at most {CMDLINE_MAX})", spec.cmdline.len()));
    }
    let image = GuestImage::parse(spec.kernel, HIGH_RAM_START, ram_end).map_err(|e| alloc::format!("kernel: not a loadable vmlinux: {e}"))?;
    let kernel_end = image.segments().iter().map(|s| s.guest_addr + s.mem_size).max().unwrap_or(HIGH_RAM_START);
    let initrd = match spec.initrd {
        Some(bytes) => {
            let len = bytes.len() as u64;
            let at = ram_end.checked_sub(len).ok_or("initramfs larger than the tenant's RAM")? & !0xfff;
            if at < kernel_end.next_multiple_of(0x20_0000) + (16 << 20) {
                return Err(alloc::format!(
                    "initramfs ({} KiB) and kernel (ends at {kernel_end:#x}) do not fit in {} MiB of RAM with room to boot",
                    len >> 10,
                    ram_end >> 20
                ));
            }
            Some((at, len, bytes))
        }
        None => None,
    };
    // The block holds the tenant's memory and, after it, the hypercall page (BAR 0).
    let mut ram = GuestRam::with_first_page(size + 0x1000, caps, &[], 0, Some(size)).map_err(|e| alloc::format!("tenant memory: {e:?}"))?;
    ram.map_read_only_page(HYPERCALL_PAGE_GPA, size).map_err(|e| alloc::format!("hypercall page: {e:?}"))?;
    let err = |e| alloc::format!("loading: {e:?}");
    for seg in image.segments() {
        ram.load(seg.guest_addr, &spec.kernel[seg.file_offset..seg.file_offset + seg.file_size]).map_err(err)?;
    }
    if let Some((at, _, bytes)) = initrd {
        ram.load(at, bytes).map_err(err)?;
    }
    // Identity map of the first GiB with 2 MiB pages for startup_64, which builds its own.
    ram.load(PML4_GPA, &(PDPT_GPA | 0x3).to_le_bytes()).map_err(err)?;
    ram.load(PDPT_GPA, &(PD_GPA | 0x3).to_le_bytes()).map_err(err)?;
    let pd: Vec<u8> = (0..512u64).flat_map(|i| ((i << 21) | 0x83).to_le_bytes()).collect();
    ram.load(PD_GPA, &pd).map_err(err)?;
    // Null, null, __BOOT_CS (64-bit code), __BOOT_DS (data).
    let gdt: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.load(GDT_GPA, &gdt_bytes).map_err(err)?;
    let mut cmdline = Vec::from(spec.cmdline.as_bytes());
    cmdline.push(0);
    ram.load(CMDLINE_GPA, &cmdline).map_err(err)?;
    let e820 = [
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
        (HIGH_RAM_START, ram_end - HIGH_RAM_START, E820_RAM),
    ];
    let bp = boot_params(&e820, spec.cmdline.len(), initrd.map(|(a, l, _)| (a, l)));
    ram.load(BOOT_PARAMS_GPA, &bp).map_err(err)?;
    let start = GuestStart {
        rip: image.entry,
        rsp: 0,
        cr3: PML4_GPA,
        gdt_base: GDT_GPA,
        gdt_limit: (gdt.len() * 8 - 1) as u32,
        rdi: BOOT_PARAMS_GPA,
        linux: true,
    };
    let summary = alloc::format!(
        "Linux kernel {} KiB ({} segments, entry {:#x}), initramfs {} KiB at {:#x}, RAM {} MiB, window {} MiB at {ram_end:#x}, command line \"{}\"",
        spec.kernel.len() >> 10,
        image.segments().len(),
        image.entry,
        initrd.map_or(0, |(_, l, _)| l >> 10),
        initrd.map_or(0, |(a, _, _)| a),
        ram_end >> 20,
        spec.window_mib,
        spec.cmdline
    );
    let mut platform = Platform::new(tsc_hz, cr, ram_end, window, HYPERCALL_PAGE_GPA, size);
    platform.raw_console = spec.raw_console;
    Ok(Loaded { ram, start, platform, summary })
}

/// The EPT capabilities type, named here so the signature above stays short.
pub mod ept_caps {
    pub type Caps = vmx::EptVpidCap;
}
