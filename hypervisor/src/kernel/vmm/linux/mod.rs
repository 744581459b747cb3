//! Running an unmodified Linux kernel as a tenant.
//!
//! **Boot path: the 64-bit boot protocol on the uncompressed `vmlinux`** (Documentation/x86/
//! boot.rst, "64-bit Boot Protocol"). The ELF's loadable segments go to their physical
//! addresses (16 MiB up for Debian's kernel), the vCPU starts in long mode at the ELF entry
//! (`startup_64`) with an identity map of the first 4 GiB, a flat GDT with `__BOOT_CS` (0x10) and
//! `__BOOT_DS` (0x18), interrupts off and RSI = the boot_params ("zero page") address. Chosen
//! over PVH because it needs no unrestricted guest and no 32-bit guest state: the vCPU is set up
//! exactly like the Rust guests' (long mode, paging on), and the XZ decompressor of the bzImage
//! (about 75 s of Bochs wall time, two thirds of such a boot) is skipped. A bzImage module takes
//! the same protocol on its protected-mode part (`(setup_sects + 1) * 512` into the file), placed
//! at the header's `pref_address` and entered at load address + 0x200 (the decompressor's
//! `startup_64`); `tests/tests/linux.rs` boots Debian's stock bzImage that way.
//!
//! **Platform** (see `hypervisor::legacy_pc`, `hypervisor::linux` and [`exits`]): one vCPU
//! with a local APIC (xAPIC page at 0xfee00000, not mapped in the EPT: accesses exit as EPT
//! violations, are decoded and go to `linux::lapic`; TSC-deadline timer), found through the
//! ACPI tables `boot::boot_writes` places (RSDP/XSDT/FADT/DSDT/MADT, `linux::acpi_tables`).
//! Every port traps (unconditional I/O exiting): COM1 (0x3f8–0x3ff) is an emulated 16550A on
//! IRQ 4, the 8259A pair (reaching the CPU through LINT0 in ExtINT mode, `linux::intr`), channel
//! 0 of the 8254 and the CMOS clock are emulated, the FADT's PM1a registers are `Pm1`, the PCI
//! configuration ports show the tensor function, reset/power-off ports stop the tenant, every
//! other port reads all ones and drops writes: Bochs' own PIT, PIC, CMOS and UART are never
//! reachable by a tenant. CPUID is a policy (VMX, XSAVE/AVX, MTRR, MCE, x2APIC, MONITOR, PCID,
//! speculation-control MSRs hidden; the local APIC, TSC-deadline and ARAT shown; the TSC
//! frequency through leaf 0x15 so Linux needs no calibration; our hypervisor leaves shown);
//! MSRs are an allow list, #GP for the rest.
//!
//! Guest-physical layout: `hypervisor::linux::boot::plan` (GDT, identity map, zero page and
//! command line in the low pages, the kernel at its ELF physical addresses, the initramfs at the
//! top of RAM, the last `window_mib` of the tenant's memory the tensor window, not RAM in e820);
//! the hypercall page at `HYPERCALL_PAGE_GPA`.

mod exits;

pub use exits::{CrPolicy, Platform};

use super::ram::GuestRam;
use super::vcpu::GuestStart;
use alloc::string::String;
use hypervisor::linux::acpi_tables::AcpiConfig;
use hypervisor::linux::boot::{self, EntryState, KernelImage, Protocol, TenantConfig, HYPERCALL_PAGE_GPA};
use hypervisor::multiboot2::{cmdline_value, Module};

/// The end (exclusive) of the PCI host bridge's memory window in the DSDT: the conventional
/// I/O APIC page (no I/O APIC here), below the local APIC's at 0xfee00000.
const PCI_WINDOW_END: u32 = 0xfec0_0000;

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
    /// Engine weight (DRR), 1..=1000: the manifest's `weight`, or `weight=` on the module line.
    pub weight: u32,
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
            weight: u32::try_from(num("weight", 1)?).map_err(|_| "bad weight")?,
        })
    }

    /// A Linux tenant from an admitted manifest entry (`kind = "linux"`), with its kernel and
    /// initramfs modules: its memory, CPU budget, quotas, policy and engine weight are the
    /// manifest's, as a Rust tenant's are.
    pub fn from_manifest(t: &hypervisor::manifest::Tenant, boot: &hypervisor::manifest::LinuxBoot, kernel: &'a [u8], initrd: Option<&'a [u8]>) -> Self {
        use hypervisor::manifest::Flags;
        Self {
            name: t.name.clone(),
            kernel,
            initrd,
            cmdline: boot.cmdline.clone(),
            memory_mib: u64::from(t.memory_mib),
            window_mib: 8,
            budget_ms: u64::from(t.cpu_budget_ms),
            limits: hypervisor::dispatch::Limits::for_tenant(t),
            user_mode_hypercalls: t.flags.contains(Flags::USER_MODE_HYPERCALLS),
            raw_console: false,
            weight: u32::from(t.weight),
        }
    }
}

/// A loaded Linux tenant: its memory, where its vCPU starts, and its platform.
pub struct Loaded {
    pub ram: GuestRam,
    pub start: GuestStart,
    pub platform: Platform,
    pub summary: String,
}

/// Loads the kernel, the initramfs and the boot structures as `hypervisor::linux::boot::plan`
/// lays them out (the vmlinux through the 64-bit protocol; a bzImage is entered the same way at
/// its load address + 0x200); the error says why the tenant was
/// not started (nothing is left half-built: the memory is freed with the error).
pub fn load(spec: &LinuxSpec<'_>, caps: ept_caps::Caps, tsc_hz: u64, cr: CrPolicy) -> Result<Loaded, String> {
    if !(32..=1024).contains(&spec.memory_mib) {
        return Err(alloc::format!("mem_mib={} is outside 32..=1024", spec.memory_mib));
    }
    let size = spec.memory_mib << 20;
    let image = KernelImage::parse(spec.kernel).map_err(|e| alloc::format!("kernel: {e:?}"))?;
    let tenant = TenantConfig { memory: size, window: spec.window_mib << 20 };
    let initrd_len = spec.initrd.map_or(0, |i| i.len() as u64);
    let layout = boot::plan(&image, Protocol::Linux64, tenant, initrd_len, spec.cmdline.as_bytes()).map_err(|e| alloc::format!("layout: {e:?}"))?;
    let EntryState::Long64 { rip, rsi, cr3 } = layout.entry else {
        return Err("layout: not a 64-bit entry".into());
    };
    let window = layout.window.clone().ok_or("layout: no tensor window (window_mib=0)")?;
    // The GDT, identity map, zero page, command line and the ACPI tables (one CPU, its local
    // APIC, no I/O APIC; the PCI host bridge with a memory window from the tensor window, the
    // first address that is not RAM, up to the conventional I/O APIC page), all in memory e820
    // marks reserved or ACPI.
    let pci_window = u32::try_from(window.start).map_err(|_| "layout: the tensor window lies above 4 GiB")?..PCI_WINDOW_END;
    let acpi = AcpiConfig { cpus: 1, io_apic: None, pci_window: Some(pci_window) };
    let writes = boot::boot_writes(&image, &layout, spec.cmdline.as_bytes(), Some(&acpi)).map_err(|e| alloc::format!("boot data: {e:?}"))?;

    // The block holds the tenant's memory and, after it, the hypercall page (BAR 0).
    let mut ram = GuestRam::with_first_page(size + 0x1000, caps, &[], 0, Some(size)).map_err(|e| alloc::format!("tenant memory: {e:?}"))?;
    ram.map_read_only_page(HYPERCALL_PAGE_GPA, size).map_err(|e| alloc::format!("hypercall page: {e:?}"))?;
    let err = |e| alloc::format!("loading: {e:?}");
    for k in &layout.kernel {
        let bytes = spec.kernel.get(k.file.clone()).ok_or("kernel: a segment lies outside the file")?;
        ram.load(k.gpa, bytes).map_err(err)?;
    }
    if let (Some(range), Some(bytes)) = (&layout.initrd, spec.initrd) {
        ram.load(range.start, bytes).map_err(err)?;
    }
    for (gpa, bytes) in &writes {
        ram.load(*gpa, bytes).map_err(err)?;
    }
    let start = GuestStart { rip, rsp: 0, cr3, gdt_base: layout.gdt, gdt_limit: boot::gdt().len() as u32 - 1, rdi: rsi, linux: true };
    let summary = alloc::format!(
        "Linux kernel {} KiB ({} pieces, entry {rip:#x}), initramfs {} KiB at {:#x}, RAM {} MiB, window {} MiB at {:#x}, command line \"{}\"",
        spec.kernel.len() >> 10,
        layout.kernel.len(),
        initrd_len >> 10,
        layout.initrd.as_ref().map_or(0, |r| r.start),
        layout.ram_top >> 20,
        (window.end - window.start) >> 20,
        window.start,
        spec.cmdline
    );
    let mut platform = Platform::new(tsc_hz, cr, window.start, window.end - window.start, HYPERCALL_PAGE_GPA, size);
    platform.raw_console = spec.raw_console;
    Ok(Loaded { ram, start, platform, summary })
}

/// The EPT capabilities type, named here so the signature above stays short.
pub mod ept_caps {
    pub type Caps = vmx::EptVpidCap;
}
