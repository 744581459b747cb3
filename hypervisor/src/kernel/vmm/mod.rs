//! Running guests: VMX root operation, loading guest ELF images from boot modules into their own
//! EPT-backed memory, and the run loops that apply the exit policy of
//! [`hypervisor::vcpu::decide`] and stop misbehaving guests with one log line each.
//!
//! Where vCPUs run ([`hypervisor::placement`]): a pinned vCPU is created, loaded and run only on
//! its CPU, in that CPU's own loop of preemption-timer slices (a VMCS never migrates); the
//! floating vCPUs share the boot CPU's loop, which also runs the engine units of every tenant
//! under the one deficit-round-robin scheduler. An engine call parks the calling vCPU wherever
//! it runs; the boot CPU's engine loop completes the request and leaves the result in the
//! tenant's state, and the vCPU's own CPU resumes it with that result. A tenant's state (memory,
//! tensor services, accounts) is one lock ([`Tenant::state`]), taken per exit and per engine
//! unit; the lock order is tenant state, then the scheduler or the engine.

pub mod linux;
pub(crate) mod ram;
mod services;
mod vcpu;

use super::cr;
use super::tsc;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use ept::{Eptp, VpidAllocator};
use hypervisor::elf::GuestImage;
use hypervisor::multiboot2::{cmdline_value, Module};
use hypervisor::vcpu::{decide, Decision, StopReason};
use ram::GuestRam;
use hypervisor::accounting::{render_prometheus, Usage};
use hypervisor::dispatch::{EngineHost, Limits, Step, UnitKind};
use hypervisor::sched::fair::Fair;
use hypervisor::manifest::MAX_VCPUS;
use hypervisor::placement::{self, CpuSet, Placement, Request};
use hypervisor::sched::TenantSlot;
use services::{ExitServices, SharedEngine, TenantServices};
use tensor_hcall::boot::{GuestBootInfo, VcpuPlacement, BOOT_INFO_GPA, VCPU_STACK_BYTES};
use vcpu::{EntryFailure, GuestStart, Vcpu};
use vmx::caps::VmxEnableState;
use vmx::region::VmxonRegion;
use vmx::VmxCapabilities;

/// Guest-physical layout (see `tensor_hcall::boot`): page 0 unmapped, the boot-information page
/// (read-only; its second half holds the guest's GDT), three pages of guest page tables, the
/// image from 1 MiB, the stack at the top.
const GDT_GPA: u64 = BOOT_INFO_GPA + 0x800;
const PML4_GPA: u64 = 0x2000;
const PDPT_GPA: u64 = 0x3000;
const PD_GPA: u64 = 0x4000;
const IMAGE_MIN_GPA: u64 = 0x10_0000;
const STACK_SIZE: u64 = VCPU_STACK_BYTES;
const DEFAULT_MEMORY_MIB: u64 = 4;
const DEFAULT_BUDGET_MS: u64 = 2_000;
const SLICE_MS: u64 = 5;
/// Engine time per unit of weight per DRR round.
const ENGINE_QUANTUM_US: u64 = 500;
/// Engine time run between guest slices while some vCPU can run.
const ENGINE_SLICE_MS: u64 = 5;

/// VMX root operation on the boot CPU.
pub struct VmxRoot {
    caps: VmxCapabilities,
}

/// Enables VMX on the boot CPU.
pub fn enable(caps: VmxCapabilities) -> Result<VmxRoot, String> {
    enable_on_this_cpu(&caps)?;
    log::info!("vmx: VMXON done (revision {:#x})", caps.revision_id);
    Ok(VmxRoot { caps })
}

/// Enables VMX on the running CPU: IA32_FEATURE_CONTROL, the CR0/CR4 fixed bits, CR4.VMXE and
/// VMXON with a VMXON region that lives as long as the hypervisor.
pub fn enable_on_this_cpu(caps: &VmxCapabilities) -> Result<(), String> {
    match caps.feature_control.vmx_state() {
        VmxEnableState::Enabled => {}
        VmxEnableState::DisabledByFirmware => return Err("VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked)".into()),
        VmxEnableState::Unlocked => {
            let v = caps.feature_control.bits() | 0b101; // VMX outside SMX + lock
            // SAFETY: the MSR exists (CPUID reports VMX) and is unlocked; setting the VMX enable
            // and lock bits is the documented way to allow VMXON (SDM 24.7).
            unsafe { cr::wrmsr(cr::IA32_FEATURE_CONTROL, v) };
        }
    }
    let cr0 = caps.cr0_fixed().apply(cr::read_cr0());
    let cr4 = caps.cr4_fixed().apply(cr::read_cr4() | cr::CR4_VMXE);
    // SAFETY: forcing the VMX fixed bits keeps PE, PG, WP and PAE set (they are fixed to 1 in
    // VMX operation), so the kernel's mode does not change.
    unsafe {
        cr::write_cr0(cr0);
        cr::write_cr4(cr4);
    }
    let mut region = Box::new(VmxonRegion::zeroed());
    region.init(caps.revision_id);
    let phys = &*region as *const VmxonRegion as u64 - super::memory::PHYS_OFFSET;
    // SAFETY: CR4.VMXE is set, CR0/CR4 satisfy the fixed bits, the feature control MSR allows
    // VMXON outside SMX, and `phys` is the physical address of a 4 KiB-aligned region with the
    // right revision id that stays alive as long as the VmxRoot.
    unsafe { vmx::instr::vmxon(phys) }.map_err(|e| alloc::format!("VMXON failed: {e:?}"))?;
    Box::leak(region);
    Ok(())
}

/// A tenant: what all its vCPUs share. The fields outside `state` never change once it is
/// loaded; `state` is locked by whichever CPU handles one of its vCPUs' exits or runs one of its
/// engine units.
struct Tenant {
    name: String,
    /// The tenant id (as in its boot information); owns its passed-through devices.
    id: u32,
    /// Its slot in the engine scheduler and its engine weight.
    slot: TenantSlot,
    weight: u32,
    budget_tsc: u64,
    memory_bytes: u64,
    /// A Linux tenant (one floating vCPU; its platform lives in `state`).
    linux: bool,
    /// Set once, when it stops: lets the loops skip it without taking the lock.
    finished: AtomicBool,
    /// Bit `i`: vCPU `i`'s engine request completed (its result waits in `state.completed`).
    wake: AtomicU32,
    /// The CPUs that run its pinned vCPUs (bit = CPU number): woken when a request of its
    /// completes or it stops, since they halt while all their vCPUs wait.
    pinned_on: u64,
    state: spin::Mutex<TenantState>,
}

/// What a tenant's vCPUs share and change: its memory and tensor services (one engine request
/// at a time: the dispatcher answers a second vCPU's engine call with `Busy` meanwhile), its
/// accounts and whether it stopped.
struct TenantState {
    services: TenantServices,
    /// The platform of a Linux tenant (None for a Rust guest).
    linux: Option<Box<linux::Platform>>,
    /// TSC ticks its vCPUs ran, all together (the CPU budget counts them).
    used_tsc: u64,
    /// TSC ticks the hypervisor spent handling its exits (hypercalls run the engine).
    handling_tsc: u64,
    /// VM exits, by the physical CPU that handled them.
    exits_on: [u64; EXIT_CPUS],
    stopped: Option<StopReason>,
    /// The vCPU parked on the tenant's engine request.
    parked: Option<usize>,
    /// A completed request: the vCPU, the RAX to set (and RIP to advance) before it runs
    /// again, and a completion interrupt to offer it.
    completed: Option<(usize, u64, Option<u8>)>,
    engine: EngineAccount,
}

/// Per-CPU exit counts kept for the first CPUs.
const EXIT_CPUS: usize = 16;

/// One vCPU, owned by the CPU whose loop runs it: its VMCS is created, loaded and run there
/// only (no migration).
struct VcpuRun {
    tenant: usize,
    index: usize,
    vcpu: Vcpu,
    /// An interrupt waiting until the guest can take it.
    pending_vector: Option<u8>,
    /// Waiting for its engine request: not run until the request completes.
    parked: bool,
    /// Its tenant stopped.
    done: bool,
}

/// How to create one vCPU on the CPU that will run it.
struct VcpuPlan {
    tenant: usize,
    index: usize,
    placement: Placement,
    eptp: u64,
    vpid: u16,
    start: GuestStart,
}

/// A tenant loaded, and how to start its vCPUs.
struct Loaded {
    tenant: Tenant,
    eptp: u64,
    /// Per vCPU: its VPID and where it starts.
    starts: Vec<(u16, GuestStart)>,
}

/// What a tenant's engine requests did.
#[derive(Default)]
struct EngineAccount {
    units: u64,
    requests: u64,
    /// The request in progress: its units, and other tenants' units run meanwhile.
    request_units: u64,
    others_at_park: u64,
}

impl Tenant {
    /// `engine`: its scheduler slot and weight.
    fn new(name: &str, id: u32, (slot, weight): (TenantSlot, u32), budget_ms: u64, memory_bytes: u64, services: TenantServices, linux: Option<Box<linux::Platform>>) -> Self {
        Self {
            name: name.into(),
            id,
            slot,
            weight,
            budget_tsc: budget_ms.saturating_mul(tsc::hz() / 1000),
            memory_bytes,
            linux: linux.is_some(),
            finished: AtomicBool::new(false),
            wake: AtomicU32::new(0),
            pinned_on: 0,
            state: spin::Mutex::new(TenantState {
                services,
                linux,
                used_tsc: 0,
                handling_tsc: 0,
                exits_on: [0; EXIT_CPUS],
                stopped: None,
                parked: None,
                completed: None,
                engine: EngineAccount::default(),
            }),
        }
    }

    fn stopped(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
}

/// What every CPU's loop shares: the engine scheduler, the models, the slice length.
struct Shared<'e> {
    fair: spin::Mutex<Fair>,
    engine: spin::Mutex<&'e mut EngineHost>,
    slice: u64,
}

/// What a tenant is started with: from the tenant manifest, or from a `guest:` module's
/// command line when no manifest was delivered.
pub struct TenantSpec<'a> {
    pub name: String,
    pub elf: &'a [u8],
    pub args: String,
    pub memory_mib: u64,
    pub budget_ms: u64,
    pub limits: Limits,
    pub user_mode_hypercalls: bool,
    /// PCI devices passed through (manifest `devices`), and the testing-only permission to do
    /// so without an IOMMU.
    pub devices: Vec<String>,
    pub passthrough_without_iommu: bool,
    /// Engine weight (DRR), 1..=1000.
    pub weight: u32,
    /// vCPUs (1..=MAX_VCPUS), and the CPU of each (empty: they float on the boot CPU).
    pub vcpus: u8,
    pub cpus: Vec<u8>,
}

impl<'a> TenantSpec<'a> {
    /// A tenant from a `guest:NAME key=value ...` module (defaults for what it does not say).
    pub fn from_module(m: &Module<'_>, elf: &'a [u8]) -> Result<Self, String> {
        let cmdline = m.cmdline;
        let name = cmdline.split_ascii_whitespace().next().unwrap_or("").trim_start_matches("guest:");
        let args = cmdline.split_once(' ').map_or("", |(_, a)| a);
        let memory_mib: u64 = cmdline_value(cmdline, "mem_mib").map_or(Ok(DEFAULT_MEMORY_MIB), str::parse).map_err(|_| "bad mem_mib")?;
        let budget_ms: u64 = cmdline_value(cmdline, "budget_ms").map_or(Ok(DEFAULT_BUDGET_MS), str::parse).map_err(|_| "bad budget_ms")?;
        let weight: u32 = cmdline_value(cmdline, "weight").map_or(Ok(1), str::parse).map_err(|_| "bad weight")?;
        let vcpus: u8 = cmdline_value(cmdline, "vcpus").map_or(Ok(1), str::parse).map_err(|_| "bad vcpus")?;
        Ok(Self {
            name: name.into(),
            elf,
            args: args.into(),
            memory_mib,
            budget_ms,
            limits: Limits::default(),
            user_mode_hypercalls: false,
            devices: Vec::new(),
            passthrough_without_iommu: false,
            weight,
            vcpus,
            cpus: Vec::new(),
        })
    }

    /// A tenant from an admitted manifest entry, with its guest image.
    pub fn from_manifest(t: &hypervisor::manifest::Tenant, elf: &'a [u8]) -> Self {
        use hypervisor::manifest::Flags;
        Self {
            name: t.name.clone(),
            elf,
            args: t.args.clone(),
            memory_mib: u64::from(t.memory_mib),
            budget_ms: u64::from(t.cpu_budget_ms),
            // Quotas and the models it may name (its `models` list).
            limits: Limits::for_tenant(t),
            user_mode_hypercalls: t.flags.contains(Flags::USER_MODE_HYPERCALLS),
            devices: t.devices.clone(),
            passthrough_without_iommu: t.flags.contains(Flags::PASSTHROUGH_WITHOUT_IOMMU),
            weight: u32::from(t.weight),
            vcpus: t.vcpus,
            cpus: t.cpus.clone(),
        }
    }
}

/// Loads one guest; the error says why it was not started.
fn load_guest(root: &VmxRoot, vpids: &mut VpidAllocator, id: u32, spec: &TenantSpec<'_>, slot: TenantSlot) -> Result<Loaded, String> {
    let (name, args, mem_mib, budget_ms, bytes) = (spec.name.as_str(), spec.args.as_str(), spec.memory_mib, spec.budget_ms, spec.elf);
    if !(2..=1024).contains(&mem_mib) {
        return Err(alloc::format!("mem_mib={mem_mib} is outside 2..=1024"));
    }
    let vcpus = u64::from(spec.vcpus.max(1));
    let size = mem_mib << 20;
    // Each vCPU's stack is below the previous one's, at the top of guest memory.
    let image = GuestImage::parse(bytes, IMAGE_MIN_GPA, size - STACK_SIZE * vcpus).map_err(|e| alloc::format!("bad ELF: {e}"))?;
    let caps = root.caps.ept_vpid.ok_or("the CPU has no EPT")?;
    let mut ram = GuestRam::new(size, caps, &[(BOOT_INFO_GPA, 0x1000)]).map_err(|e| alloc::format!("guest memory: {e:?}"))?;
    let err = |e| alloc::format!("loading: {e:?}");
    for seg in image.segments() {
        ram.load(seg.guest_addr, &bytes[seg.file_offset..seg.file_offset + seg.file_size]).map_err(err)?;
    }
    // Guest page tables: identity map of the first GiB with 2 MiB pages, writable, executable.
    ram.load(PML4_GPA, &(PDPT_GPA | 0x3).to_le_bytes()).map_err(err)?;
    ram.load(PDPT_GPA, &(PD_GPA | 0x3).to_le_bytes()).map_err(err)?;
    let mut pd = [0u8; 4096];
    for (i, e) in pd.chunks_exact_mut(8).enumerate() {
        e.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    ram.load(PD_GPA, &pd).map_err(err)?;
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.load(GDT_GPA, &gdt_bytes).map_err(err)?;
    let mut info = GuestBootInfo::new(tensor_hcall::ABI_VERSION.to_u32(), id, size, args);
    info.vcpu_count = vcpus as u32;
    if !spec.devices.is_empty() {
        passthrough(id, spec, &mut ram, &mut info)?;
    }
    ram.load(BOOT_INFO_GPA, &info.to_bytes()).map_err(err)?;

    let eptp = Eptp::new(ram.ept_root(), caps, false).map_err(|e| alloc::format!("EPTP: {e:?}"))?;
    let mut starts = Vec::new();
    for i in 0..vcpus {
        let vpid = vpids.allocate().ok_or("out of VPIDs")?;
        let start = GuestStart {
            rip: image.entry,
            rsp: size - i * STACK_SIZE,
            cr3: PML4_GPA,
            gdt_base: GDT_GPA,
            gdt_limit: (gdt.len() * 8 - 1) as u32,
            rdi: BOOT_INFO_GPA,
            linux: false,
        };
        starts.push((vpid.get(), start));
    }
    log::info!(
        "guest {name}: loaded: {} segments, entry {:#x}, {mem_mib} MiB, {vcpus} vCPU(s), VPID {}, CPU budget {budget_ms} ms",
        image.segments().len(),
        image.entry,
        starts[0].0
    );
    let mut services = TenantServices::new(name, id, ram, spec.limits, spec.user_mode_hypercalls);
    // Its VMCALLs park on engine work; the run loop resumes it when the request is done.
    services.may_park = true;
    Ok(Loaded { tenant: Tenant::new(name, id, (slot, spec.weight), budget_ms, size, services, None), eptp: eptp.0, starts })
}

/// Loads one Linux tenant (one vCPU); the error says why it was not started.
fn load_linux(root: &VmxRoot, vpids: &mut VpidAllocator, id: u32, spec: &linux::LinuxSpec<'_>, slot: TenantSlot) -> Result<Loaded, String> {
    let caps = root.caps.ept_vpid.ok_or("the CPU has no EPT")?;
    let cr = linux::CrPolicy { cr0: root.caps.guest_cr0_fixed(false), cr4: root.caps.cr4_fixed() };
    let loaded = linux::load(spec, caps, tsc::hz(), cr)?;
    let eptp = Eptp::new(loaded.ram.ept_root(), caps, false).map_err(|e| alloc::format!("EPTP: {e:?}"))?;
    let vpid = vpids.allocate().ok_or("out of VPIDs")?;
    log::info!("guest {}: loaded: {}, VPID {}, CPU budget {} ms", spec.name, loaded.summary, vpid.get(), spec.budget_ms);
    let mut services = TenantServices::new(&spec.name, id, loaded.ram, spec.limits, spec.user_mode_hypercalls);
    // Engine work from its VMCALLs and its hypercall page parks the vCPU as a Rust guest's
    // does: the DRR scheduler runs the units by the tenant's weight.
    services.may_park = true;
    let tenant = Tenant::new(&spec.name, id, (slot, spec.weight), spec.budget_ms, spec.memory_mib << 20, services, Some(Box::new(loaded.platform)));
    Ok(Loaded { tenant, eptp: eptp.0, starts: alloc::vec![(vpid.get(), loaded.start)] })
}

/// Gives the tenant its manifest's PCI devices: their BARs mapped uncached above its RAM (below
/// the 1 GiB its page tables reach) and listed in its boot information.
fn passthrough(id: u32, spec: &TenantSpec<'_>, ram: &mut GuestRam, info: &mut GuestBootInfo) -> Result<(), String> {
    use super::devices::passthrough::{self as pt, TenantRam};
    let (host_base, ram_size) = ram.host_range();
    let assigned = pt::assign(id, &spec.name, &spec.devices, spec.passthrough_without_iommu, TenantRam { host_base, size: ram_size }, ram_size, 1 << 30)
        .map_err(|e| alloc::format!("passthrough refused: {e}"))?;
    for a in &assigned {
        for w in &a.windows {
            let window = tensor_hcall::boot::DeviceWindow { vendor: a.vendor, device: a.device, bdf: a.bdf.source_id(), bar: w.index, gpa: w.guest_phys, len: w.len, ..Default::default() };
            let mapped = ram.map_device(w.guest_phys, w.host_phys, w.len).map_err(|e| alloc::format!("passthrough: mapping {} BAR{}: {e:?}", a.bdf, w.index));
            if let Err(e) = mapped.and_then(|()| if info.add_device(window) { Ok(()) } else { Err("passthrough: more BARs than the boot information lists".into()) }) {
                pt::release(id);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Loads the tenants, places their vCPUs ([`hypervisor::placement`]) and runs them until every
/// tenant has exited or been stopped: the floating vCPUs and the engine units on the boot CPU,
/// each pinned vCPU on its own CPU (which then serves no engine job). Returns `(finished,
/// stopped)`: tenants that exited with status 0, and the rest (refused ones included).
pub fn run_guests(root: &VmxRoot, specs: &[TenantSpec<'_>], linux_specs: &[linux::LinuxSpec<'_>], models: &mut EngineHost) -> (usize, usize) {
    let mut vpids = VpidAllocator::new();
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut plans: Vec<VcpuPlan> = Vec::new();
    let mut refused = 0;
    let us = (tsc::hz() / 1_000_000).max(1);
    let (free_at_start, heap_at_start) = super::memory::usage();
    let Ok(mut fair) = Fair::new(ENGINE_QUANTUM_US * us) else {
        log::error!("engine scheduler: bad quantum");
        return (0, specs.len());
    };
    let up = super::smp::vmx_up();
    let requests: Vec<Request<'_>> = specs.iter().map(|s| Request { vcpus: s.vcpus, cpus: &s.cpus }).collect();
    let plan = placement::place(CpuSet(up), &requests, MAX_VCPUS);
    let mut add = |tenants: &mut Vec<Tenant>, l: Loaded, placed: &[Placement]| {
        for (index, ((vpid, start), &placement)) in l.starts.iter().zip(placed).enumerate() {
            plans.push(VcpuPlan { tenant: tenants.len(), index, placement, eptp: l.eptp, vpid: *vpid, start: *start });
        }
        tenants.push(l.tenant);
    };
    for (i, spec) in specs.iter().enumerate() {
        let placed = match &plan.tenants[i] {
            Ok(p) => p,
            Err(e) => {
                log::error!("guest {}: not started: {e}", spec.name);
                refused += 1;
                continue;
            }
        };
        let loaded = fair
            .add(spec.weight)
            .map_err(|e| alloc::format!("engine weight: {e}"))
            .and_then(|slot| load_guest(root, &mut vpids, i as u32 + 1, spec, slot).inspect_err(|_| release_slot(&mut fair, slot)));
        match loaded {
            Ok(l) => add(&mut tenants, l, placed),
            Err(e) => {
                super::devices::passthrough::release(i as u32 + 1);
                log::error!("guest {}: not started: {e}", spec.name);
                refused += 1;
            }
        }
    }
    for (i, spec) in linux_specs.iter().enumerate() {
        let loaded = fair
            .add(spec.weight)
            .map_err(|e| alloc::format!("engine weight: {e}"))
            .and_then(|slot| load_linux(root, &mut vpids, (specs.len() + i) as u32 + 1, spec, slot).inspect_err(|_| release_slot(&mut fair, slot)));
        match loaded {
            Ok(l) => add(&mut tenants, l, &[Placement::Floating]),
            Err(e) => {
                log::error!("guest {}: not started: {e}", spec.name);
                refused += 1;
            }
        }
    }
    log::info!(
        "engine scheduler: deficit round robin over {} tenant(s), quantum {ENGINE_QUANTUM_US} us per unit of weight, engine slice {ENGINE_SLICE_MS} ms",
        tenants.len()
    );
    let mut pinned = 0u64;
    for p in &plans {
        match p.placement {
            Placement::Floating => log::info!("guest {}: vCPU {} floats on the boot CPU (CPU 0)", tenants[p.tenant].name, p.index),
            Placement::Pinned(cpu) => {
                pinned |= 1 << cpu;
                tenants[p.tenant].pinned_on |= 1 << cpu;
                log::info!("guest {}: vCPU {} pinned to CPU {cpu}", tenants[p.tenant].name, p.index);
            }
        }
    }
    let workers = CpuSet(up).without(CpuSet(pinned));
    super::smp::set_engine_workers(workers.0);
    log::info!(
        "placement: CPUs up {:?}; running pinned vCPUs {:?}; engine workers {:?}",
        CpuSet(up).iter().collect::<Vec<_>>(),
        CpuSet(pinned).iter().collect::<Vec<_>>(),
        workers.iter().collect::<Vec<_>>()
    );
    let (free_loaded, heap_loaded) = super::memory::usage();
    log::info!(
        "memory: {} tenant(s) loaded: {} bytes of frames (guest RAM, EPT tables), heap {} bytes before them (kernel, models) and {} bytes after",
        tenants.len(),
        free_at_start.saturating_sub(free_loaded),
        heap_at_start,
        heap_loaded
    );
    let shared = Shared { fair: spin::Mutex::new(fair), engine: spin::Mutex::new(models), slice: SLICE_MS * (tsc::hz() / 1000) };
    // The boot CPU's vCPUs are created here, each pinned vCPU by its own CPU.
    let mut floating: Vec<VcpuRun> = plans.iter().filter(|p| p.placement == Placement::Floating).filter_map(|p| create_vcpu(root, &tenants, p, &shared)).collect();
    let pinned_loop = |cpu: u32| {
        let mut mine: Vec<VcpuRun> = plans.iter().filter(|p| p.placement == Placement::Pinned(cpu)).filter_map(|p| create_vcpu(root, &tenants, p, &shared)).collect();
        let here = super::smp::current_cpu();
        log::info!("cpu {cpu}: runs {} pinned vCPU(s) (APIC id {})", mine.len(), here.1);
        while run_slices(&tenants, &mut mine, &shared, here) {
            // Every vCPU here waits for the engine: halt until the boot CPU's wake-up (a
            // completion, or a tenant stopping), rather than spin.
            let waiting = |v: &VcpuRun| {
                let t = &tenants[v.tenant];
                v.done || (v.parked && !t.stopped() && t.wake.load(Ordering::Acquire) & (1 << v.index) == 0)
            };
            if mine.iter().all(waiting) {
                super::smp::idle();
            }
        }
    };
    let heap_peak = super::smp::run_on(pinned, &pinned_loop, || boot_cpu_loop(&tenants, &mut floating, &shared, heap_loaded));
    super::smp::set_engine_workers(up);
    log::info!(
        "memory: heap peak while the tenants ran {heap_peak} bytes ({} bytes over the start: sessions' KV caches and buffers)",
        heap_peak.saturating_sub(heap_at_start)
    );
    // Every CPU's loop has ended: nothing else takes these locks now.
    let charged: Vec<u64> = {
        let fair = shared.fair.lock();
        tenants.iter().map(|t| fair.charged(t.slot).cost).collect()
    };
    let usage: Vec<(String, Usage)> = tenants
        .iter()
        .map(|t| {
            let st = t.state.lock();
            let c = st.services.tensors.counters;
            let us = |t: u64| t.saturating_mul(1_000_000_000) / tsc::hz().max(1);
            let u = Usage {
                hypercalls: c.hypercalls,
                errors: c.errors,
                ops: c.ops,
                tokens: c.tokens,
                engine_ns: us(st.handling_tsc),
                quota_refusals: c.quota_refusals,
                faults: u64::from(!matches!(st.stopped, Some(StopReason::Exited { .. }))),
                memory_bytes: t.memory_bytes,
                registered_bytes: st.services.tensors.registered_bytes(),
                kv_cache_bytes: st.services.tensors.kv_cache_bytes(),
            };
            (t.name.clone(), u)
        })
        .collect();
    let text = render_prometheus(usage.iter().map(|(n, u)| (n.as_str(), u)));
    log::info!("metrics: Prometheus text format follows, {} lines", text.lines().count());
    crate::println!("# tensorvisor metrics begin");
    for line in text.lines() {
        crate::println!("{line}");
    }
    crate::println!("# tensorvisor metrics end");
    let mut finished = 0;
    for (t, charged) in tenants.iter().zip(charged) {
        let st = t.state.lock();
        // A Linux tenant's clean end is its own reset or power-off (`reboot -f`).
        let linux_end = t.linux && matches!(st.stopped, Some(StopReason::Reset { .. } | StopReason::PowerOff { .. }));
        let ok = matches!(st.stopped, Some(StopReason::Exited { status: 0 })) || linux_end;
        finished += usize::from(ok);
        if let Some(p) = &st.linux {
            log::info!("guest {}: Linux platform: {} UART bytes, {} interrupts injected, {} local APIC accesses", t.name, p.uart_bytes, p.injected, p.apic_accesses);
        }
        let c = st.services.tensors.counters;
        log::info!(
            "guest {}: {} exits, {} us in the guest, {} us handling its exits and engine work, {} hypercalls ({} errors), {} ops, {} tokens, {} descriptor bytes copied ({} by doorbells), {} engine units in {} requests ({} engine TSC ticks charged)",
            t.name,
            st.exits_on.iter().sum::<u64>(),
            st.used_tsc / us,
            st.handling_tsc / us,
            c.hypercalls,
            c.errors,
            c.ops,
            c.tokens,
            c.descriptor_bytes,
            c.doorbell_bytes,
            st.engine.units,
            st.engine.requests,
            charged
        );
        let mut by_cpu = String::new();
        for cpu in CpuSet(up).iter().take_while(|&c| (c as usize) < EXIT_CPUS) {
            by_cpu.push_str(&alloc::format!(" cpu{cpu}={}", st.exits_on[cpu as usize]));
        }
        log::info!("guest {}: exits by CPU:{by_cpu}", t.name);
    }
    (finished, tenants.len() - finished + refused)
}

/// Creates the vCPU `p` on the running CPU (its VMCS' host state is this CPU's); a failure
/// stops its tenant.
fn create_vcpu(root: &VmxRoot, tenants: &[Tenant], p: &VcpuPlan, shared: &Shared<'_>) -> Option<VcpuRun> {
    let t = &tenants[p.tenant];
    match Vcpu::new(&root.caps, p.eptp, p.vpid, p.start) {
        Ok(mut vcpu) => {
            if !t.linux {
                // The Rust guests' entry: RDI = boot information, RSI = the vCPU's index.
                vcpu.regs.rsi = p.index as u64;
            }
            Some(VcpuRun { tenant: p.tenant, index: p.index, vcpu, pending_vector: None, parked: false, done: false })
        }
        Err(e) => {
            log::error!("guest {}: vCPU {}: {e}", t.name, p.index);
            stop(t, StopReason::EntryFailed, 0, shared);
            None
        }
    }
}

/// The boot CPU: slices of the floating vCPUs alternate with engine units for every tenant
/// (pinned ones included) until every tenant stopped. Returns the heap's peak (bytes).
fn boot_cpu_loop(tenants: &[Tenant], floating: &mut [VcpuRun], shared: &Shared<'_>, mut heap_peak: u64) -> u64 {
    let here = super::smp::current_cpu();
    let engine_slice = ENGINE_SLICE_MS * (tsc::hz() / 1000);
    let mut shares_logged = false;
    loop {
        run_slices(tenants, floating, shared, here);
        super::serial::pump();
        heap_peak = heap_peak.max(super::memory::usage().1);
        // What is typed on the hypervisor's console goes to the first running Linux tenant's COM1.
        if let Some(t) = tenants.iter().find(|t| t.linux && !t.stopped()) {
            if let Some(p) = t.state.lock().linux.as_mut() {
                while p.rx_space() > 0 {
                    let Some(b) = super::serial::CONSOLE.lock().read_byte() else { break };
                    p.receive(b);
                }
            }
        }
        if !shares_logged && tenants.iter().any(Tenant::stopped) {
            // The engine's split while every tenant was there to take a share.
            shares_logged = true;
            let fair = shared.fair.lock();
            let total: u64 = tenants.iter().map(|t| fair.charged(t.slot).cost).sum::<u64>().max(1);
            for t in tenants {
                let c = fair.charged(t.slot);
                log::info!(
                    "engine shares until the first tenant stopped: {} weight {} units {} ticks {} share {}.{:04}",
                    t.name,
                    t.weight,
                    c.units,
                    c.cost,
                    c.cost * 10_000 / total / 10_000,
                    c.cost * 10_000 / total % 10_000
                );
            }
        }
        if tenants.iter().all(Tenant::stopped) {
            return heap_peak;
        }
        engine_units(tenants, floating, shared, engine_slice);
    }
}

/// Engine units, picked by weight, until a request completes (its vCPU can run at once) or the
/// engine slice is spent while some floating vCPU can run; only units while none can.
fn engine_units(tenants: &[Tenant], floating: &[VcpuRun], shared: &Shared<'_>, engine_slice: u64) {
    let mut spent = 0u64;
    loop {
        let runnable = floating.iter().any(|v| !v.done && !v.parked);
        if runnable && spent >= engine_slice {
            return;
        }
        // Lock order: a tenant's state, then the scheduler or the engine; never the scheduler
        // while taking a tenant's state.
        let picked = shared.fair.lock().pick();
        let Some(slot) = picked else { return };
        let Some(t) = tenants.iter().find(|t| t.slot == slot) else { return };
        let mut st = t.state.lock();
        let Some(vcpu) = st.parked.filter(|_| st.stopped.is_none()) else {
            // Stopped meanwhile: nothing of it runs any more.
            let _ = shared.fair.lock().set_backlogged(slot, false);
            continue;
        };
        let kind = st.services.tensors.next_unit();
        let t0 = tsc::rdtsc();
        let step = st.services.engine_step(&mut shared.engine.lock());
        super::serial::pump();
        let cost = tsc::rdtsc().wrapping_sub(t0);
        let mut fair = shared.fair.lock();
        let _ = fair.charge(slot, cost);
        spent += cost;
        st.handling_tsc += cost;
        st.engine.units += 1;
        st.engine.request_units += 1;
        let rax = match step {
            Step::More => continue,
            Step::Done(rax) => rax,
            // Picked without a request (cannot happen: parked means a request): resume it.
            Step::Idle => tensor_hcall::encode_result(Err(tensor_hcall::HcallError::Busy)),
        };
        st.parked = None;
        st.engine.requests += 1;
        let _ = fair.set_backlogged(slot, false);
        let others = fair.picks().saturating_sub(st.engine.others_at_park + st.engine.request_units);
        drop(fair);
        let vector = st.services.tensors.take_pending_interrupt();
        st.completed = Some((vcpu, rax, vector));
        t.wake.fetch_or(1 << vcpu, Ordering::AcqRel);
        super::smp::wake(t.pinned_on);
        log::info!(
            "engine: {}: {} request done in {} unit(s), {others} unit(s) of other tenants interleaved",
            t.name,
            match kind {
                Some(UnitKind::Op) => "doorbell",
                Some(UnitKind::Prefill) => "prefill",
                Some(UnitKind::Token) => "generate",
                None => "no",
            },
            st.engine.request_units
        );
        return;
    }
}

/// One slice of each of this CPU's vCPUs that can run (a parked one whose request completed
/// resumes with its result). Returns whether any of them is still live.
fn run_slices(tenants: &[Tenant], mine: &mut [VcpuRun], shared: &Shared<'_>, here: (u32, u32)) -> bool {
    let mut live = false;
    for v in mine.iter_mut().filter(|v| !v.done) {
        let t = &tenants[v.tenant];
        if t.stopped() {
            v.done = true;
            continue;
        }
        live = true;
        let mut resume = None;
        if v.parked {
            let bit = 1u32 << v.index;
            if t.wake.load(Ordering::Acquire) & bit == 0 {
                continue;
            }
            let mut st = t.state.lock();
            match st.completed {
                Some((i, rax, vector)) if i == v.index => {
                    st.completed = None;
                    t.wake.fetch_and(!bit, Ordering::AcqRel);
                    if vector.is_some() {
                        v.pending_vector = vector;
                    }
                    v.parked = false;
                    resume = Some(rax);
                }
                _ => continue,
            }
        }
        run_slice(t, v, resume, shared, here);
    }
    if !live || mine.iter().all(|v| v.done || v.parked) {
        core::hint::spin_loop();
    }
    live
}

/// Runs `v` until it yields its slice, parks or stops; `resume` is the result of its completed
/// engine request.
fn run_slice(t: &Tenant, v: &mut VcpuRun, resume: Option<u64>, shared: &Shared<'_>, here: (u32, u32)) {
    if let Err(e) = v.vcpu.load() {
        log::error!("guest {}: VMPTRLD failed: {e:?}", t.name);
        stop(t, StopReason::EntryFailed, 0, shared);
        return;
    }
    let mut resume = resume;
    if let (Some(rax), true) = (resume, t.linux) {
        let mut guard = t.state.lock();
        let st = &mut *guard;
        if let Some(p) = st.linux.as_mut().filter(|p| p.page_call_parked()) {
            // A Linux tenant's call through its hypercall page: the store already retired, the
            // result goes into the page.
            p.finish_page_call(rax, st.services.ram_mut());
            resume = None;
        }
    }
    if let Some(rax) = resume {
        // Its engine request completed: the result, and RIP past the VMCALL (the VMCS still
        // holds that exit's instruction length: the vCPU has not run since).
        v.vcpu.regs.rax = rax;
        let offered = offer_pending(v);
        if let Err(e) = v.vcpu.advance().and(offered) {
            log::error!("guest {}: VMCS update failed: {e:?}", t.name);
            stop(t, StopReason::EntryFailed, 0, shared);
            return;
        }
    }
    if t.linux {
        if let Some(p) = t.state.lock().linux.as_mut() {
            p.enter_slice();
        }
    }
    run_slice_loaded(t, v, shared, here);
    if t.linux {
        if let Some(p) = t.state.lock().linux.as_mut() {
            p.leave_slice();
        }
    }
}

/// Offers the vCPU's waiting interrupt (injected now, or at its interrupt window).
fn offer_pending(v: &mut VcpuRun) -> Result<(), vmx::VmFail> {
    if let Some(vector) = v.pending_vector {
        if v.vcpu.offer_interrupt(vector)? {
            v.pending_vector = None;
        }
    }
    Ok(())
}

fn run_slice_loaded(t: &Tenant, v: &mut VcpuRun, shared: &Shared<'_>, (cpu, apic): (u32, u32)) {
    let slice = shared.slice;
    let slice_start = tsc::rdtsc();
    let placement = VcpuPlacement { vcpu: v.index as u16, cpu: cpu as u16, apic_id: apic };
    loop {
        if let Err(e) = offer_device_interrupt(t, v) {
            log::error!("guest {}: VMCS update failed: {e:?}", t.name);
            stop(t, StopReason::EntryFailed, 0, shared);
            return;
        }
        let timer = {
            let mut st = t.state.lock();
            if st.stopped.is_some() {
                v.done = true;
                return;
            }
            let left = t.budget_tsc.saturating_sub(st.used_tsc).max(1);
            let mut timer = slice.min(left);
            if let Some(p) = st.linux.as_mut() {
                let now = tsc::rdtsc();
                match p.before_entry(&mut v.vcpu, now) {
                    Ok(Some(deadline)) => timer = timer.min(deadline.saturating_sub(now).max(1)),
                    Ok(None) => {}
                    Err(e) => {
                        log::error!("guest {}: VMCS update failed: {e:?}", t.name);
                        stop_locked(t, &mut st, StopReason::EntryFailed, 0, shared);
                        return;
                    }
                }
            }
            timer
        };
        let t0 = tsc::rdtsc();
        let result = v.vcpu.run(timer);
        let ran = tsc::rdtsc().wrapping_sub(t0);
        let mut guard = t.state.lock();
        let st = &mut *guard;
        st.used_tsc += ran;
        if let Some(n) = st.exits_on.get_mut(cpu as usize) {
            *n += 1;
        }
        if st.stopped.is_some() {
            // Another of its vCPUs ended the tenant meanwhile.
            v.done = true;
            return;
        }
        let info = match result {
            Ok(info) => info,
            Err(EntryFailure::Instruction { launched, error }) => {
                log::error!(
                    "guest {}: {} failed: VM-instruction error {error} ({})",
                    t.name,
                    if launched { "VMRESUME" } else { "VMLAUNCH" },
                    vmx::VmInstructionError::from_number(error)
                );
                v.vcpu.report_guest_state(&t.name);
                stop_locked(t, st, StopReason::EntryFailed, 0, shared);
                return;
            }
            Err(EntryFailure::Vmx(e)) => {
                log::error!("guest {}: VMCS access failed: {e:?}", t.name);
                stop_locked(t, st, StopReason::EntryFailed, 0, shared);
                return;
            }
        };
        let rip = v.vcpu.rip();
        let exit = match info.decode() {
            Ok(exit) => exit,
            Err(e) => {
                log::error!("guest {}: undecodable exit {e:?} at RIP {rip:#x}", t.name);
                stop_locked(t, st, StopReason::EntryFailed, rip, shared);
                return;
            }
        };
        if let vmx::exit_info::Exit::ExternalInterrupt { vector } = exit {
            if vector == Some(super::idt::WAKE_VECTOR) {
                // A wake-up for this CPU's loop (a completion) that arrived while a guest ran.
                super::idt::eoi();
            } else {
                // Whichever tenant runs, a host interrupt is the hypervisor's: a forwarded
                // device line is masked and marked pending for its owner, the local APIC EOId.
                super::devices::irq::host_interrupt(vector);
            }
        }
        let exhausted = (st.used_tsc >= t.budget_tsc).then(|| t.budget_tsc / (tsc::hz() / 1000).max(1));
        let (rflags, cpl) = (v.vcpu.rflags(), v.vcpu.cpl());
        st.services.tensors.counters.hypervisor_ns = st.handling_tsc.saturating_mul(1_000_000_000) / tsc::hz().max(1);
        let mut services = ExitServices { tenant: &mut st.services, models: &shared.engine, placement };
        let t_handle = tsc::rdtsc();
        let decision = match st.linux.as_mut() {
            Some(p) => match p.handle(&exit, &mut v.vcpu, &mut services, cpl) {
                // The preemption timer: the budget, the end of the slice, or a timer event.
                Decision::Yield => match exhausted {
                    Some(budget_ms) => Decision::Stop(StopReason::CpuBudgetExceeded { budget_ms, interrupts_enabled: rflags & (1 << 9) != 0 }),
                    None if tsc::rdtsc().wrapping_sub(slice_start) < slice => Decision::Resume,
                    None => Decision::Yield,
                },
                d => d,
            },
            None => decide(&exit, &mut v.vcpu.regs, rflags, cpl, exhausted, &mut services),
        };
        st.handling_tsc += tsc::rdtsc().wrapping_sub(t_handle);
        if let Some(vector) = st.services.tensors.take_pending_interrupt() {
            v.pending_vector = Some(vector);
        }
        if st.services.parked && matches!(decision, Decision::Advance | Decision::Resume) {
            // Parked on an engine request: RIP stays on the VMCALL until it completes (a Linux
            // tenant's store to its hypercall page has retired: `Resume`); the boot CPU's
            // engine loop runs its units and hands the result back.
            st.services.parked = false;
            st.parked = Some(v.index);
            st.engine.request_units = 0;
            let mut fair = shared.fair.lock();
            st.engine.others_at_park = fair.picks();
            let _ = fair.set_backlogged(t.slot, true);
            v.parked = true;
            return;
        }
        let applied = match decision {
            Decision::Advance => v.vcpu.advance(),
            Decision::Resume => Ok(()),
            Decision::InjectGp => v.vcpu.inject_gp(),
            Decision::Yield => return,
            Decision::Stop(reason) => {
                if reason == StopReason::EntryFailed {
                    v.vcpu.report_guest_state(&t.name);
                }
                stop_locked(t, st, reason, rip, shared);
                return;
            }
        };
        drop(guard);
        if let Err(e) = applied.and(offer_pending(v)) {
            log::error!("guest {}: VMCS update failed: {e:?}", t.name);
            stop(t, StopReason::EntryFailed, rip, shared);
            return;
        }
    }
}

/// Queues one of the tenant's pending device interrupts (`devices::irq`) for injection when no
/// other interrupt is waiting: injected now if the guest can take it, else at its interrupt
/// window (as completion interrupts are).
fn offer_device_interrupt(t: &Tenant, v: &mut VcpuRun) -> Result<(), vmx::VmFail> {
    if t.linux || v.pending_vector.is_some() {
        return Ok(());
    }
    let Some(vector) = super::devices::irq::take_pending(t.id) else { return Ok(()) };
    v.pending_vector = Some(vector);
    offer_pending(v)
}

/// Records and logs, once, why a tenant stopped (all its vCPUs stop with it).
fn stop(t: &Tenant, reason: StopReason, rip: u64, shared: &Shared<'_>) {
    let mut st = t.state.lock();
    stop_locked(t, &mut st, reason, rip, shared);
}

fn stop_locked(t: &Tenant, st: &mut TenantState, reason: StopReason, rip: u64, shared: &Shared<'_>) {
    if st.stopped.is_some() {
        return;
    }
    st.services.flush_console();
    // Its sessions close with it: KV caches are freed, never handed to anyone else.
    let services = &mut st.services;
    shared.engine.with(&mut |m| services.tensors.close_all(m));
    super::devices::passthrough::release(t.id);
    match reason {
        StopReason::Exited { status } => log::info!("guest {}: exited with status {status}", t.name),
        StopReason::Reset { .. } | StopReason::PowerOff { .. } if t.linux => log::info!("guest {}: stopped: {reason} at RIP {rip:#x}", t.name),
        _ => log::warn!("guest {}: stopped: {reason} at RIP {rip:#x}", t.name),
    }
    st.stopped = Some(reason);
    if st.parked.take().is_some() {
        let _ = shared.fair.lock().set_backlogged(t.slot, false);
    }
    t.finished.store(true, Ordering::Release);
    super::smp::wake(t.pinned_on);
}

/// Gives back the scheduler slot of a tenant that was not started.
fn release_slot(fair: &mut Fair, slot: hypervisor::sched::TenantSlot) {
    if let Err(e) = fair.remove(slot) {
        log::warn!("engine scheduler: slot of a tenant not started: {e:?}");
    }
}
