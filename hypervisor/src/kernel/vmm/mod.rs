//! Running guests: VMX root operation on this CPU, loading guest ELF images from boot modules
//! into their own EPT-backed memory, and a round-robin run loop that applies the exit policy of
//! [`hypervisor::vcpu::decide`] and stops misbehaving guests with one log line each.

pub mod linux;
pub(crate) mod ram;
mod services;
mod vcpu;

use super::cr;
use super::tsc;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use ept::{Eptp, VpidAllocator};
use hypervisor::elf::GuestImage;
use hypervisor::multiboot2::{cmdline_value, Module};
use hypervisor::vcpu::{decide, Decision, StopReason};
use ram::GuestRam;
use hypervisor::accounting::{render_prometheus, Usage};
use hypervisor::dispatch::{EngineHost, Limits, Step, UnitKind};
use hypervisor::sched::fair::Fair;
use hypervisor::sched::TenantSlot;
use services::{ExitServices, TenantServices};
use tensor_hcall::boot::{GuestBootInfo, BOOT_INFO_GPA};
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
const STACK_SIZE: u64 = 64 * 1024;
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

/// A loaded guest and its accounts.
struct Guest {
    name: String,
    /// The tenant id (as in its boot information); owns its passed-through devices.
    id: u32,
    vcpu: Vcpu,
    services: TenantServices,
    budget_tsc: u64,
    used_tsc: u64,
    /// TSC ticks the hypervisor spent handling this guest's exits (hypercalls run the engine).
    handling_tsc: u64,
    /// A completion interrupt waiting until the guest can take it.
    pending_vector: Option<u8>,
    memory_bytes: u64,
    exits: u64,
    stopped: Option<StopReason>,
    /// The platform of a Linux tenant (None for a Rust guest).
    linux: Option<Box<linux::Platform>>,
    /// Its slot in the engine scheduler and its engine weight.
    slot: TenantSlot,
    weight: u32,
    /// Parked on an engine request: not run until the request completes.
    parked: bool,
    /// The RAX of a completed request, to set (and RIP to advance) before it runs again.
    resume: Option<u64>,
    engine: EngineAccount,
}

/// What the engine did for one tenant.
#[derive(Default)]
struct EngineAccount {
    units: u64,
    requests: u64,
    /// The request in progress: its units, and other tenants' units run meanwhile.
    request_units: u64,
    others_at_park: u64,
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
        })
    }

    /// A tenant from an admitted manifest entry, with its guest image.
    pub fn from_manifest(t: &hypervisor::manifest::Tenant, elf: &'a [u8]) -> Self {
        use hypervisor::manifest::Flags;
        let mib = |m: u32| u64::from(m) << 20;
        Self {
            name: t.name.clone(),
            elf,
            args: t.args.clone(),
            memory_mib: u64::from(t.memory_mib),
            budget_ms: u64::from(t.cpu_budget_ms),
            limits: Limits {
                registered_bytes: mib(t.quota.registered_mib),
                inflight_ops: t.quota.inflight_ops,
                kv_cache_bytes: mib(t.quota.kv_cache_mib),
                ..Limits::default()
            },
            user_mode_hypercalls: t.flags.contains(Flags::USER_MODE_HYPERCALLS),
            devices: t.devices.clone(),
            passthrough_without_iommu: t.flags.contains(Flags::PASSTHROUGH_WITHOUT_IOMMU),
            weight: u32::from(t.weight),
        }
    }
}

/// Loads one guest; the error says why it was not started.
fn load_guest(root: &VmxRoot, vpids: &mut VpidAllocator, id: u32, spec: &TenantSpec<'_>, slot: TenantSlot) -> Result<Guest, String> {
    let (name, args, mem_mib, budget_ms, bytes) = (spec.name.as_str(), spec.args.as_str(), spec.memory_mib, spec.budget_ms, spec.elf);
    if !(2..=1024).contains(&mem_mib) {
        return Err(alloc::format!("mem_mib={mem_mib} is outside 2..=1024"));
    }
    let size = mem_mib << 20;
    let image = GuestImage::parse(bytes, IMAGE_MIN_GPA, size - STACK_SIZE).map_err(|e| alloc::format!("bad ELF: {e}"))?;
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
    if !spec.devices.is_empty() {
        passthrough(id, spec, &mut ram, &mut info)?;
    }
    ram.load(BOOT_INFO_GPA, &info.to_bytes()).map_err(err)?;

    let eptp = Eptp::new(ram.ept_root(), caps, false).map_err(|e| alloc::format!("EPTP: {e:?}"))?;
    let vpid = vpids.allocate().ok_or("out of VPIDs")?;
    let start = GuestStart {
        rip: image.entry,
        rsp: size,
        cr3: PML4_GPA,
        gdt_base: GDT_GPA,
        gdt_limit: (gdt.len() * 8 - 1) as u32,
        rdi: BOOT_INFO_GPA,
        linux: false,
    };
    let vcpu = Vcpu::new(&root.caps, eptp.0, vpid.get(), start).map_err(|e| alloc::format!("vCPU: {e}"))?;
    log::info!(
        "guest {name}: loaded: {} segments, entry {:#x}, {mem_mib} MiB, VPID {}, CPU budget {budget_ms} ms",
        image.segments().len(),
        image.entry,
        vpid.get()
    );
    Ok(Guest {
        name: name.into(),
        id,
        vcpu,
        services: {
            let mut s = TenantServices::new(name, id, ram, spec.limits, spec.user_mode_hypercalls);
            // Its VMCALLs park on engine work; the run loop resumes it when the request is done.
            s.may_park = true;
            s
        },
        budget_tsc: budget_ms.saturating_mul(tsc::hz() / 1000),
        used_tsc: 0,
        handling_tsc: 0,
        pending_vector: None,
        memory_bytes: size,
        exits: 0,
        stopped: None,
        linux: None,
        slot,
        weight: spec.weight,
        parked: false,
        resume: None,
        engine: EngineAccount::default(),
    })
}

/// Loads one Linux tenant; the error says why it was not started.
fn load_linux(root: &VmxRoot, vpids: &mut VpidAllocator, id: u32, spec: &linux::LinuxSpec<'_>, slot: TenantSlot) -> Result<Guest, String> {
    let caps = root.caps.ept_vpid.ok_or("the CPU has no EPT")?;
    let cr = linux::CrPolicy { cr0: root.caps.guest_cr0_fixed(false), cr4: root.caps.cr4_fixed() };
    let loaded = linux::load(spec, caps, tsc::hz(), cr)?;
    let eptp = Eptp::new(loaded.ram.ept_root(), caps, false).map_err(|e| alloc::format!("EPTP: {e:?}"))?;
    let vpid = vpids.allocate().ok_or("out of VPIDs")?;
    let vcpu = Vcpu::new(&root.caps, eptp.0, vpid.get(), loaded.start).map_err(|e| alloc::format!("vCPU: {e}"))?;
    log::info!("guest {}: loaded: {}, VPID {}, CPU budget {} ms", spec.name, loaded.summary, vpid.get(), spec.budget_ms);
    let size = spec.memory_mib << 20;
    Ok(Guest {
        id,
        name: spec.name.clone(),
        vcpu,
        services: {
            let mut s = TenantServices::new(&spec.name, id, loaded.ram, spec.limits, spec.user_mode_hypercalls);
            // Engine work from its VMCALLs and its hypercall page parks the vCPU as a Rust
            // guest's does: the DRR scheduler runs the units by the tenant's weight.
            s.may_park = true;
            s
        },
        budget_tsc: spec.budget_ms.saturating_mul(tsc::hz() / 1000),
        used_tsc: 0,
        handling_tsc: 0,
        pending_vector: None,
        memory_bytes: size,
        exits: 0,
        stopped: None,
        linux: Some(Box::new(loaded.platform)),
        slot,
        weight: spec.weight,
        parked: false,
        resume: None,
        engine: EngineAccount::default(),
    })
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

/// Loads every `guest:` module and runs the guests until each has exited or been stopped.
/// Returns `(finished, stopped)`: guests that exited with status 0, and the rest.
pub fn run_guests(root: &VmxRoot, specs: &[TenantSpec<'_>], linux_specs: &[linux::LinuxSpec<'_>], models: &mut EngineHost) -> (usize, usize) {
    let mut vpids = VpidAllocator::new();
    let mut guests: Vec<Guest> = Vec::new();
    let mut refused = 0;
    let us = (tsc::hz() / 1_000_000).max(1);
    let (free_at_start, heap_at_start) = super::memory::usage();
    let Ok(mut fair) = Fair::new(ENGINE_QUANTUM_US * us) else {
        log::error!("engine scheduler: bad quantum");
        return (0, specs.len());
    };
    for (i, spec) in specs.iter().enumerate() {
        let loaded = fair
            .add(spec.weight)
            .map_err(|e| alloc::format!("engine weight: {e}"))
            .and_then(|slot| load_guest(root, &mut vpids, i as u32 + 1, spec, slot).inspect_err(|_| release_slot(&mut fair, slot)));
        match loaded {
            Ok(g) => guests.push(g),
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
            Ok(g) => guests.push(g),
            Err(e) => {
                log::error!("guest {}: not started: {e}", spec.name);
                refused += 1;
            }
        }
    }
    log::info!(
        "engine scheduler: deficit round robin over {} tenant(s), quantum {ENGINE_QUANTUM_US} us per unit of weight, engine slice {ENGINE_SLICE_MS} ms",
        guests.len()
    );
    let (free_loaded, heap_loaded) = super::memory::usage();
    log::info!(
        "memory: {} tenant(s) loaded: {} bytes of frames (guest RAM, EPT tables), heap {} bytes before them (kernel, models) and {} bytes after",
        guests.len(),
        free_at_start.saturating_sub(free_loaded),
        heap_at_start,
        heap_loaded
    );
    let mut heap_peak = heap_loaded;
    let mut shares_logged = false;
    let slice = SLICE_MS * (tsc::hz() / 1000);
    let engine_slice = ENGINE_SLICE_MS * (tsc::hz() / 1000);
    loop {
        // Guest slices for every vCPU that can run.
        for g in guests.iter_mut().filter(|g| g.stopped.is_none() && !g.parked) {
            run_slice(g, slice, models);
            heap_peak = heap_peak.max(super::memory::usage().1);
            if g.services.parked {
                g.services.parked = false;
                if g.stopped.is_none() {
                    g.parked = true;
                    g.engine.request_units = 0;
                    g.engine.others_at_park = fair.picks();
                    let _ = fair.set_backlogged(g.slot, true);
                }
            }
        }
        // What is typed on the hypervisor's console goes to the first running Linux tenant's COM1.
        if let Some(p) = guests.iter_mut().filter(|g| g.stopped.is_none()).find_map(|g| g.linux.as_mut()) {
            while p.rx_space() > 0 {
                let Some(b) = super::serial::CONSOLE.lock().read_byte() else { break };
                p.receive(b);
            }
        }
        if !shares_logged && guests.iter().any(|g| g.stopped.is_some()) {
            // The engine's split while every tenant was there to take a share.
            shares_logged = true;
            let total: u64 = guests.iter().map(|g| fair.charged(g.slot).cost).sum::<u64>().max(1);
            for g in &guests {
                let c = fair.charged(g.slot);
                log::info!(
                    "engine shares until the first tenant stopped: {} weight {} units {} ticks {} share {}.{:04}",
                    g.name,
                    g.weight,
                    c.units,
                    c.cost,
                    c.cost * 10_000 / total / 10_000,
                    c.cost * 10_000 / total % 10_000
                );
            }
        }
        if guests.iter().all(|g| g.stopped.is_some()) {
            break;
        }
        // Engine units, picked by weight, until a request completes (its vCPU runs at once) or
        // the engine slice is spent while some vCPU can run; only units while all are parked.
        let mut spent = 0u64;
        loop {
            let runnable = guests.iter().any(|g| g.stopped.is_none() && !g.parked);
            if runnable && spent >= engine_slice {
                break;
            }
            let Some(slot) = fair.pick() else { break };
            let Some(g) = guests.iter_mut().find(|g| g.slot == slot) else { break };
            let kind = g.services.tensors.next_unit();
            let t0 = tsc::rdtsc();
            let step = g.services.engine_step(models);
            let cost = tsc::rdtsc().wrapping_sub(t0);
            let _ = fair.charge(slot, cost);
            spent += cost;
            g.handling_tsc += cost;
            g.engine.units += 1;
            g.engine.request_units += 1;
            let rax = match step {
                Step::More => continue,
                Step::Done(rax) => rax,
                // Picked without a request (cannot happen: parked means a request): resume it.
                Step::Idle => tensor_hcall::encode_result(Err(tensor_hcall::HcallError::Busy)),
            };
            g.parked = false;
            g.resume = Some(rax);
            g.engine.requests += 1;
            let _ = fair.set_backlogged(slot, false);
            if let Some(v) = g.services.tensors.take_pending_interrupt() {
                g.pending_vector = Some(v);
            }
            let others = fair.picks() - g.engine.others_at_park - g.engine.request_units;
            log::info!(
                "engine: {}: {} request done in {} unit(s), {others} unit(s) of other tenants interleaved",
                g.name,
                match kind {
                    Some(UnitKind::Op) => "doorbell",
                    Some(UnitKind::Prefill) => "prefill",
                    Some(UnitKind::Token) => "generate",
                    None => "no",
                },
                g.engine.request_units
            );
            break;
        }
    }
    log::info!(
        "memory: heap peak while the tenants ran {heap_peak} bytes ({} bytes over the start: sessions' KV caches and buffers)",
        heap_peak.saturating_sub(heap_at_start)
    );
    let usage: Vec<(String, Usage)> = guests
        .iter()
        .map(|g| {
            let c = g.services.tensors.counters;
            let us = |t: u64| t.saturating_mul(1_000_000_000) / tsc::hz().max(1);
            let u = Usage {
                hypercalls: c.hypercalls,
                errors: c.errors,
                ops: c.ops,
                tokens: c.tokens,
                engine_ns: us(g.handling_tsc),
                quota_refusals: c.quota_refusals,
                faults: u64::from(!matches!(g.stopped, Some(StopReason::Exited { .. }))),
                memory_bytes: g.memory_bytes,
                registered_bytes: g.services.tensors.registered_bytes(),
                kv_cache_bytes: g.services.tensors.kv_cache_bytes(),
            };
            (g.name.clone(), u)
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
    for g in &guests {
        // A Linux tenant's clean end is its own reset or power-off (`reboot -f`).
        let linux_end = g.linux.is_some() && matches!(g.stopped, Some(StopReason::Reset { .. } | StopReason::PowerOff { .. }));
        let ok = matches!(g.stopped, Some(StopReason::Exited { status: 0 })) || linux_end;
        finished += usize::from(ok);
        if let Some(p) = &g.linux {
            log::info!("guest {}: Linux platform: {} UART bytes, {} interrupts injected, {} local APIC accesses", g.name, p.uart_bytes, p.injected, p.apic_accesses);
        }
        let c = g.services.tensors.counters;
        log::info!(
            "guest {}: {} exits, {} us in the guest, {} us handling its exits and engine work, {} hypercalls ({} errors), {} ops, {} tokens, {} descriptor bytes copied ({} by doorbells), {} engine units in {} requests ({} engine TSC ticks charged)",
            g.name,
            g.exits,
            g.used_tsc / (tsc::hz() / 1_000_000).max(1),
            g.handling_tsc / (tsc::hz() / 1_000_000).max(1),
            c.hypercalls,
            c.errors,
            c.ops,
            c.tokens,
            c.descriptor_bytes,
            c.doorbell_bytes,
            g.engine.units,
            g.engine.requests,
            fair.charged(g.slot).cost
        );
    }
    (finished, guests.len() - finished + refused)
}

/// Runs `g` until it yields its slice or stops.
fn run_slice(g: &mut Guest, slice: u64, models: &mut EngineHost) {
    if let Err(e) = g.vcpu.load() {
        stop(g, StopReason::EntryFailed, 0, models);
        log::error!("guest {}: VMPTRLD failed: {e:?}", g.name);
        return;
    }
    if let Some(rax) = g.resume {
        if let Some(p) = g.linux.as_mut().filter(|p| p.page_call_parked()) {
            // A Linux tenant's call through its hypercall page: the store already retired, the
            // result goes into the page.
            p.finish_page_call(rax, g.services.ram_mut());
            g.resume = None;
        }
    }
    if let Some(rax) = g.resume.take() {
        // Its engine request completed: the result, and RIP past the VMCALL (the VMCS still
        // holds that exit's instruction length: the vCPU has not run since).
        g.vcpu.regs.rax = rax;
        let offered = match g.pending_vector {
            Some(v) => g.vcpu.offer_interrupt(v).map(|injected| {
                if injected {
                    g.pending_vector = None;
                }
            }),
            None => Ok(()),
        };
        if let Err(e) = g.vcpu.advance().and(offered) {
            log::error!("guest {}: VMCS update failed: {e:?}", g.name);
            stop(g, StopReason::EntryFailed, 0, models);
            return;
        }
    }
    if let Some(p) = g.linux.as_mut() {
        p.enter_slice();
    }
    run_slice_loaded(g, slice, models);
    if let Some(p) = g.linux.as_mut() {
        p.leave_slice();
    }
}

fn run_slice_loaded(g: &mut Guest, slice: u64, models: &mut EngineHost) {
    let slice_start = tsc::rdtsc();
    loop {
        if let Err(e) = offer_device_interrupt(g) {
            log::error!("guest {}: VMCS update failed: {e:?}", g.name);
            stop(g, StopReason::EntryFailed, 0, models);
            return;
        }
        let left = g.budget_tsc.saturating_sub(g.used_tsc).max(1);
        let mut timer = slice.min(left);
        if let Some(p) = g.linux.as_mut() {
            let now = tsc::rdtsc();
            match p.before_entry(&mut g.vcpu, now) {
                Ok(Some(deadline)) => timer = timer.min(deadline.saturating_sub(now).max(1)),
                Ok(None) => {}
                Err(e) => {
                    log::error!("guest {}: VMCS update failed: {e:?}", g.name);
                    stop(g, StopReason::EntryFailed, 0, models);
                    return;
                }
            }
        }
        let t0 = tsc::rdtsc();
        let result = g.vcpu.run(timer);
        g.used_tsc += tsc::rdtsc().wrapping_sub(t0);
        g.exits += 1;
        let info = match result {
            Ok(info) => info,
            Err(EntryFailure::Instruction { launched, error }) => {
                log::error!(
                    "guest {}: {} failed: VM-instruction error {error} ({})",
                    g.name,
                    if launched { "VMRESUME" } else { "VMLAUNCH" },
                    vmx::VmInstructionError::from_number(error)
                );
                g.vcpu.report_guest_state(&g.name);
                stop(g, StopReason::EntryFailed, 0, models);
                return;
            }
            Err(EntryFailure::Vmx(e)) => {
                log::error!("guest {}: VMCS access failed: {e:?}", g.name);
                stop(g, StopReason::EntryFailed, 0, models);
                return;
            }
        };
        let rip = g.vcpu.rip();
        let exit = match info.decode() {
            Ok(exit) => exit,
            Err(e) => {
                log::error!("guest {}: undecodable exit {e:?} at RIP {rip:#x}", g.name);
                stop(g, StopReason::EntryFailed, rip, models);
                return;
            }
        };
        if let vmx::exit_info::Exit::ExternalInterrupt { vector } = exit {
            // Whichever tenant runs, a host interrupt is the hypervisor's: a forwarded device
            // line is masked and marked pending for its owner, the local APIC EOId.
            super::devices::irq::host_interrupt(vector);
        }
        let exhausted = (g.used_tsc >= g.budget_tsc).then(|| g.budget_tsc / (tsc::hz() / 1000).max(1));
        let (rflags, cpl) = (g.vcpu.rflags(), g.vcpu.cpl());
        g.services.tensors.counters.hypervisor_ns = g.handling_tsc.saturating_mul(1_000_000_000) / tsc::hz().max(1);
        let mut services = ExitServices { tenant: &mut g.services, models: &mut *models };
        let t_handle = tsc::rdtsc();
        let decision = match g.linux.as_mut() {
            Some(p) => match p.handle(&exit, &mut g.vcpu, &mut services, cpl) {
                // The preemption timer: the budget, the end of the slice, or a timer event.
                Decision::Yield => match exhausted {
                    Some(budget_ms) => Decision::Stop(StopReason::CpuBudgetExceeded { budget_ms, interrupts_enabled: rflags & (1 << 9) != 0 }),
                    None if tsc::rdtsc().wrapping_sub(slice_start) < slice => Decision::Resume,
                    None => Decision::Yield,
                },
                d => d,
            },
            None => decide(&exit, &mut g.vcpu.regs, rflags, cpl, exhausted, &mut services),
        };
        g.handling_tsc += tsc::rdtsc().wrapping_sub(t_handle);
        if let Some(v) = g.services.tensors.take_pending_interrupt() {
            g.pending_vector = Some(v);
        }
        if g.services.parked && matches!(decision, Decision::Advance | Decision::Resume) {
            // Parked on an engine request: RIP stays on the VMCALL until it completes (a Linux
            // tenant's store to its hypercall page has retired: `Resume`).
            return;
        }
        let applied = match decision {
            Decision::Advance => g.vcpu.advance(),
            Decision::Resume => Ok(()),
            Decision::InjectGp => g.vcpu.inject_gp(),
            Decision::Yield => return,
            Decision::Stop(reason) => {
                if reason == StopReason::EntryFailed {
                    g.vcpu.report_guest_state(&g.name);
                }
                stop(g, reason, rip, models);
                return;
            }
        };
        let offered = match g.pending_vector {
            Some(v) => g.vcpu.offer_interrupt(v).map(|injected| {
                if injected {
                    g.pending_vector = None;
                }
            }),
            None => Ok(()),
        };
        if let Err(e) = applied.and(offered) {
            log::error!("guest {}: VMCS update failed: {e:?}", g.name);
            stop(g, StopReason::EntryFailed, rip, models);
            return;
        }
    }
}

/// Queues one of the tenant's pending device interrupts (`devices::irq`) for injection when no
/// other interrupt is waiting: injected now if the guest can take it, else at its interrupt
/// window (as completion interrupts are).
fn offer_device_interrupt(g: &mut Guest) -> Result<(), vmx::VmFail> {
    if g.linux.is_some() || g.pending_vector.is_some() {
        return Ok(());
    }
    let Some(v) = super::devices::irq::take_pending(g.id) else { return Ok(()) };
    g.pending_vector = Some(v);
    if g.vcpu.offer_interrupt(v)? {
        g.pending_vector = None;
    }
    Ok(())
}

/// Records and logs, once, why a guest stopped.
fn stop(g: &mut Guest, reason: StopReason, rip: u64, models: &mut EngineHost) {
    g.services.flush_console();
    // Its sessions close with it: KV caches are freed, never handed to anyone else.
    g.services.tensors.close_all(models);
    super::devices::passthrough::release(g.id);
    match reason {
        StopReason::Exited { status } => log::info!("guest {}: exited with status {status}", g.name),
        StopReason::Reset { .. } | StopReason::PowerOff { .. } if g.linux.is_some() => log::info!("guest {}: stopped: {reason} at RIP {rip:#x}", g.name),
        _ => log::warn!("guest {}: stopped: {reason} at RIP {rip:#x}", g.name),
    }
    g.stopped = Some(reason);
}

/// Gives back the scheduler slot of a tenant that was not started.
fn release_slot(fair: &mut Fair, slot: hypervisor::sched::TenantSlot) {
    if let Err(e) = fair.remove(slot) {
        log::warn!("engine scheduler: slot of a tenant not started: {e:?}");
    }
}
