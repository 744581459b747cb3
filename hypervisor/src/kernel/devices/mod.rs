//! Devices owned by the hypervisor: PCI enumeration (ECAM from the ACPI MCFG, legacy ports as a
//! fallback), the interrupt controllers (`irq`: the I/O APIC forwards passed-through devices'
//! INTx), the VT-d IOMMU, and the NVMe model store.
//!
//! Boot order ([`init`]): ACPI tables → PCI configuration access → enumeration into the device
//! registry (every device unassigned) → DMAR → the NVMe controller is claimed by the hypervisor
//! and given its own IOMMU domain (only its queues and buffers are mapped) → translation on: no
//! other device has a context entry, so no other device can DMA at all → the model store is
//! read. Failures are logged and the hypervisor carries on without the device or model.

mod config;
mod dma;
pub mod irq;
mod mmio;
mod nvme;
pub mod passthrough;
mod store;
mod vtd;

pub use store::StoredModel;

use alloc::vec::Vec;
use config::Config;
use dma::DmaBuffer;
use hypervisor::acpi::{self, Tables};
use hypervisor::multiboot2::{cmdline_value, BootInfo};
use hypervisor::pci::{self, Bar, Bdf, ConfigAccess, Header, HeaderKind, Owner, Registry};
use iommu::dmar::Dmar;
use iommu::tables::{Domain, Perms};
use iommu::SourceId;
use nvme::{Controller, DmaMap};
use vtd::Unit;

/// Every PCI function found at boot and its owner.
pub static REGISTRY: spin::Mutex<Registry> = spin::Mutex::new(Registry::new());
/// Models read from the NVMe store, checked against their SHA-256.
pub static MODELS: spin::Mutex<Vec<StoredModel>> = spin::Mutex::new(Vec::new());
/// The remapping unit and the NVMe controller's domain, kept after boot (fault polling, and the
/// domains of devices passed through later).
static IOMMU: spin::Mutex<Option<(Unit, Domain)>> = spin::Mutex::new(None);
/// The NVMe controller after boot: enabled, its queues mapped in its domain, idle.
static NVME: spin::Mutex<Option<Controller>> = spin::Mutex::new(None);

/// Reads, logs and clears the IOMMU's pending fault records; returns how many there were. For
/// the scheduler loop to call between slices (fault interrupts stay masked).
#[allow(dead_code)] // the API the scheduler loop polls with
pub fn poll_iommu_faults() -> usize {
    IOMMU.lock().as_ref().map_or(0, |(u, _)| u.poll_faults().len())
}

/// The controller's DMA goes through its own IOMMU domain.
struct Confined<'a> {
    unit: &'a mut Unit,
    domain: &'a mut Domain,
}

impl DmaMap for Confined<'_> {
    fn map(&mut self, phys: u64, len: u64, device_writes: bool) -> Result<u64, &'static str> {
        let perms = if device_writes { Perms::READ | Perms::WRITE } else { Perms::READ };
        self.unit.map_identity(self.domain, phys, len, perms).map_err(|e| {
            log::error!("iommu: cannot map {phys:#x}+{len:#x}: {e:?}");
            "IOMMU mapping failed"
        })
    }
    fn unmap(&mut self, iova: u64, len: u64) -> Result<(), &'static str> {
        self.unit.unmap(self.domain, iova, len).map_err(|e| {
            log::error!("iommu: cannot unmap {iova:#x}+{len:#x}: {e:?}");
            "IOMMU unmapping failed"
        })
    }
}

/// No IOMMU: bus addresses are physical addresses and DMA is not confined.
struct Unconfined;

impl DmaMap for Unconfined {
    fn map(&mut self, phys: u64, _: u64, _: bool) -> Result<u64, &'static str> {
        Ok(phys)
    }
    fn unmap(&mut self, _: u64, _: u64) -> Result<(), &'static str> {
        Ok(())
    }
}

fn fmt_size(n: u64) -> alloc::string::String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => alloc::format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => alloc::format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => alloc::format!("{} KiB", n >> 10),
        n => alloc::format!("{n} B"),
    }
}

/// Scans `bus` and the buses behind its bridges into the registry.
fn scan(cfg: &mut Config, bus: u8, seen: &mut [bool; 256], reg: &mut Registry, bars: &mut Vec<(Bdf, u8, Bar)>) {
    if core::mem::replace(&mut seen[usize::from(bus)], true) {
        return;
    }
    for dev in 0..32 {
        let Some(b0) = Bdf::new(bus, dev, 0) else { continue };
        let Some(h0) = Header::read(cfg, b0) else { continue };
        let funcs = if h0.multifunction { 8 } else { 1 };
        for func in 0..funcs {
            let Some(bdf) = Bdf::new(bus, dev, func) else { continue };
            let Some(h) = Header::read(cfg, bdf) else { continue };
            let mut line = alloc::format!("pci: {bdf} [{:04x}:{:04x}] {}", h.vendor, h.device, h.class_name());
            // Bridges (host, ISA/LPC, PCI) keep decoding while enumeration runs: their BARs are
            // not sized.
            if h.class != 0x06 && h.kind == HeaderKind::Endpoint {
                for (i, b) in pci::read_bars(cfg, bdf, h.kind) {
                    match b {
                        Ok(bar @ Bar::Memory { base, size, wide, prefetchable }) => {
                            line += &alloc::format!(
                                "; BAR{i} mem{} {base:#x} {}{}",
                                if wide { 64 } else { 32 },
                                fmt_size(size),
                                if prefetchable { " pref" } else { "" }
                            );
                            bars.push((bdf, i, bar));
                        }
                        Ok(bar @ Bar::Io { base, size }) => {
                            line += &alloc::format!("; BAR{i} io {base:#x} {size} B");
                            bars.push((bdf, i, bar));
                        }
                        Err(e) => line += &alloc::format!("; BAR{i} {e:?}"),
                    }
                }
            }
            if h.has_capabilities() {
                let caps = pci::capabilities(cfg, bdf);
                if !caps.is_empty() {
                    line += "; caps";
                    for (id, off) in caps {
                        match id {
                            pci::CapId::MsiX => {
                                let x = pci::MsixCap::read(cfg, bdf, off);
                                line += &alloc::format!(" MSI-X({} vectors, table BAR{}+{:#x})", x.table_size, x.table_bar, x.table_offset);
                            }
                            pci::CapId::Msi => {
                                let m = pci::MsiCap::read(cfg, bdf, off);
                                line += &alloc::format!(" MSI({} vectors)", m.vectors_capable);
                            }
                            pci::CapId::PciExpress => line += " PCIe",
                            pci::CapId::PowerManagement => line += " PM",
                            pci::CapId::Vendor => line += " vendor",
                            pci::CapId::Other(x) => line += &alloc::format!(" {x:#04x}"),
                        }
                    }
                }
            }
            log::info!("{line}");
            reg.add(bdf, h);
            if h.kind == HeaderKind::PciBridge {
                let secondary = cfg.read8(bdf, pci::reg::SECONDARY_BUS);
                if secondary > bus {
                    scan(cfg, secondary, seen, reg, bars);
                }
            }
        }
    }
}

/// Brings up PCI, the IOMMU and the NVMe model store. Never fails the boot: every problem is
/// logged and the hypervisor carries on without the device or model.
pub fn init(info: &BootInfo<'_>) {
    let cmdline = info.command_line().unwrap_or("");
    let read = &mut crate::kernel::memory::read_phys;
    let tables = match info.acpi_rsdp().map(|r| Tables::new(r, read)) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            log::error!("acpi: cannot read the root table: {e:?}");
            None
        }
        None => {
            log::warn!("acpi: no RSDP from the boot loader");
            None
        }
    };

    let ecam = tables.as_ref().and_then(|t| t.load(b"MCFG", read).ok()).and_then(|m| acpi::mcfg_entries(&m).ok()).and_then(|e| e.into_iter().find(|e| e.segment == 0));
    let mut cfg = match ecam {
        Some(w) => {
            log::info!("pci: configuration space through ECAM at {:#x} (buses {}-{}) from the MCFG", w.base, w.start_bus, w.end_bus);
            Config::ecam(w)
        }
        None => {
            log::warn!("pci: no MCFG: configuration space through the legacy ports 0xcf8/0xcfc");
            Config::Legacy
        }
    };
    let mut registry = Registry::new();
    let mut bars = Vec::new();
    scan(&mut cfg, 0, &mut [false; 256], &mut registry, &mut bars);
    log::info!("pci: {} functions found through {}", registry.devices().len(), cfg.name());
    // Until a device is given to someone it may not master the bus: firmware leaves bus
    // mastering on for devices it used. Bridges forward everyone's traffic and keep theirs.
    // Nor raise INTx: a line it shares with a passed-through device would reach that tenant.
    let (mut quiesced, mut intx) = (0, 0);
    for d in registry.devices().iter().filter(|d| d.header.kind == HeaderKind::Endpoint && d.header.class != 0x06) {
        let cmd = cfg.read16(d.bdf, pci::reg::COMMAND);
        quiesced += usize::from(cmd & pci::command::BUS_MASTER != 0);
        intx += usize::from(d.header.interrupt_pin != 0 && cmd & pci::command::INTX_DISABLE == 0);
        let off = (cmd & !pci::command::BUS_MASTER) | if d.header.interrupt_pin != 0 { pci::command::INTX_DISABLE } else { 0 };
        if off != cmd {
            cfg.write16(d.bdf, pci::reg::COMMAND, off);
        }
    }
    if quiesced > 0 {
        log::info!("pci: bus mastering turned off on {quiesced} unassigned device(s)");
    }
    if intx > 0 {
        log::info!("pci: INTx disabled on {intx} unassigned device(s)");
    }
    let madt = tables.as_ref().and_then(|t| t.load(b"APIC", read).ok());
    irq::init(madt.as_deref(), &registry);
    *passthrough::BARS.lock() = bars.clone();
    *passthrough::CONFIG.lock() = Some(cfg.clone());

    let dmar = match tables.as_ref().map(|t| t.load(b"DMAR", read)) {
        Some(Ok(t)) => {
            if cmdline_value(cmdline, "tv.dump-dmar").is_some() {
                let hex: alloc::string::String = t.iter().map(|b| alloc::format!("{b:02x}")).collect();
                log::info!("acpi: DMAR bytes {hex}");
            }
            match Dmar::parse(&t) {
                Ok(d) => {
                    log::info!(
                        "iommu: DMAR: host address width {}, {} remapping unit(s), {} RMRR(s)",
                        d.host_address_width,
                        d.units.len(),
                        d.rmrrs.len()
                    );
                    Some(d)
                }
                Err(e) => {
                    log::error!("iommu: DMAR table refused: {e:?}");
                    None
                }
            }
        }
        _ => {
            log::warn!("iommu: no DMAR table: no IOMMU, device DMA cannot be confined");
            None
        }
    };

    let nvme = registry.find(|h| h.is_nvme()).map(|d| d.bdf);
    let Some(bdf) = nvme else {
        log::warn!("nvme: no NVMe controller: no model store");
        *REGISTRY.lock() = registry;
        return;
    };
    if let Err(e) = registry.claim(bdf, Owner::Hypervisor) {
        log::error!("nvme: cannot claim {bdf}: {e:?}");
        *REGISTRY.lock() = registry;
        return;
    }
    let sid = SourceId::from_raw(bdf.source_id());
    let unit = dmar.as_ref().and_then(|d| d.unit_for(0, sid)).map(|u| (u.register_base, u.size_pages_log2));
    if dmar.is_some() && unit.is_none() {
        log::warn!("iommu: no remapping unit covers {bdf}: its DMA will not be confined");
    }
    let mut iommu = unit.and_then(|(base, size)| match bring_up(base, size, sid, &registry, dmar.as_ref()) {
        Ok(x) => Some(x),
        Err(e) => {
            log::error!("iommu: unit {base:#x}: {e:?}: NVMe DMA will not be confined");
            None
        }
    });

    let Some(&(_, _, Bar::Memory { base, size, .. })) = bars.iter().find(|(b, i, _)| *b == bdf && *i == 0) else {
        log::error!("nvme: {bdf} has no memory BAR0");
        *REGISTRY.lock() = registry;
        return;
    };
    let cmd = cfg.read16(bdf, pci::reg::COMMAND);
    cfg.write16(bdf, pci::reg::COMMAND, cmd | pci::command::MEMORY | pci::command::BUS_MASTER | pci::command::INTX_DISABLE);
    *REGISTRY.lock() = registry;

    let mut unconfined = Unconfined;
    let mut confined = iommu.as_mut().map(|(u, d)| Confined { unit: u, domain: d });
    let dma: &mut dyn DmaMap = match confined.as_mut() {
        Some(c) => c,
        None => &mut unconfined,
    };
    let mut ctrl = match Controller::init(bdf, base, size, dma) {
        Ok(c) => c,
        Err(e) => {
            log::error!("nvme: {bdf}: controller set-up failed: {e:?}");
            return;
        }
    };
    let (maj, min) = ctrl.version();
    log::info!(
        "nvme: {bdf}: NVMe {maj}.{min} \"{}\" serial \"{}\" firmware \"{}\"; namespace 1: {} blocks of {} bytes ({}); max transfer {}; I/O queue pair ready",
        ctrl.id.model,
        ctrl.id.serial,
        ctrl.id.firmware,
        ctrl.namespace.blocks,
        ctrl.namespace.block_size,
        fmt_size(ctrl.namespace.bytes()),
        fmt_size(ctrl.max_transfer)
    );
    let models = store::load(&mut ctrl, dma);
    log::info!("model store: {} model(s) loaded from nvme {bdf}", models.len());
    MODELS.lock().extend(models);

    if let Some(c) = confined.as_ref() {
        let faults = c.unit.poll_faults();
        if faults.is_empty() {
            log::info!("iommu: no DMA faults so far");
        }
    }
    if cmdline_value(cmdline, "tv.iommu-test") == Some("stray-dma") {
        match confined {
            Some(mut c) => stray_dma(&mut ctrl, &mut c),
            None => log::error!("iommu test: no IOMMU: the stray-DMA test cannot run"),
        }
    }
    *IOMMU.lock() = iommu;
    *NVME.lock() = Some(ctrl);
    if cmdline_value(cmdline, "tv.iommu-test") == Some("tenant-dma") {
        passthrough::tenant_dma_scenario();
    }
}

/// Creates the NVMe controller's domain on the unit at `base`, attaches the controller and turns
/// translation on.
fn bring_up(base: u64, size: u8, sid: SourceId, registry: &Registry, dmar: Option<&Dmar>) -> Result<(Unit, Domain), vtd::VtdError> {
    let mut unit = Unit::probe(base, size)?;
    let v = unit.version();
    log::info!(
        "iommu: VT-d {}.{} unit at {base:#x}: {}-bit domains ({}-level), {} domain ids, {} fault record(s), {} invalidation, {}coherent",
        v.major,
        v.minor,
        unit.width.bits(),
        unit.width.levels(),
        unit.cap.domains(),
        unit.cap.fault_records(),
        if unit.ecap.queued_invalidation() { "register-based (queued available)" } else { "register-based" },
        if unit.ecap.coherent() { "" } else { "not " }
    );
    let domain = unit.new_domain()?;
    unit.attach(sid, &domain)?;
    if let Some(d) = dmar {
        if d.rmrrs_for(0, sid).next().is_some() {
            log::warn!("iommu: {sid} has RMRRs; they are not mapped (the hypervisor owns it)");
        }
    }
    unit.enable()?;
    let blocked = registry.devices().iter().filter(|d| d.owner == Owner::Unassigned).count();
    log::info!(
        "iommu: translation enabled (TE {}); {sid} in domain {} (empty until buffers are mapped); {blocked} other device(s) have no domain: their DMA is blocked",
        unit.translation_enabled(),
        domain.id().get()
    );
    Ok((unit, domain))
}

/// Test scenario: the controller is told to DMA into a page outside its domain. The IOMMU must
/// block it, record a fault the log reports, and the controller keep working.
fn stray_dma(ctrl: &mut Controller, c: &mut Confined<'_>) {
    let Some(stray) = DmaBuffer::new(4096, 4096) else { return };
    for i in 0..1024 {
        let _ = stray.write32(4 * i, 0xa5a5_a5a5);
    }
    log::info!("iommu test: NVMe {} reads LBA 0 into {:#x}, which is not in its domain", ctrl.bdf, stray.phys());
    match ctrl.read_raw(0, 1, stray.phys(), 0) {
        Ok(c) => log::info!("iommu test: the read completed with status {} (sct {} sc {:#x})", c.status.describe(), c.status.sct, c.status.sc),
        Err(e) => log::warn!("iommu test: the read did not complete: {e:?}"),
    }
    let faults = c.unit.poll_faults();
    let hit = faults.iter().any(|f| f.source.raw() == ctrl.bdf.source_id() && f.address == stray.phys());
    let untouched = (0..1024).all(|i| stray.read32(4 * i) == Some(0xa5a5_a5a5));
    if hit && untouched {
        log::info!("iommu test: stray DMA blocked: fault recorded for {} at {:#x}, target page untouched", ctrl.bdf, stray.phys());
    } else {
        log::error!("iommu test: stray DMA not caught (fault recorded: {hit}, page untouched: {untouched})");
    }
    stray.free();
    // The hypervisor and the controller carry on: a read into a mapped buffer still works.
    let Some(ok) = DmaBuffer::new(4096, 4096) else { return };
    let mapped = c.map(ok.phys(), 4096, true).is_ok();
    let bs = u64::from(ctrl.namespace.block_size).min(4096);
    match (mapped, ctrl.read(0, &ok, 0, bs)) {
        (true, Ok(())) => log::info!("iommu test: nvme {} still serves reads after the fault", ctrl.bdf),
        (_, r) => log::error!("iommu test: nvme {} failed after the fault: {r:?}", ctrl.bdf),
    }
    let _ = c.unmap(ok.phys(), 4096);
    ok.free();
}
