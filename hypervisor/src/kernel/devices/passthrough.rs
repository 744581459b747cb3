//! PCI passthrough: a device named in a tenant's manifest is given to that tenant.
//!
//! For each device: the registry records the tenant as its only owner (bridges, IOMMUs and the
//! hypervisor's own devices are refused); its memory BARs are placed at guest-physical addresses
//! above the tenant's RAM ([`hypervisor::pci::passthrough_windows`]) for the VMM to map uncached
//! in the tenant's EPT; its command register gets memory decoding and bus mastering (I/O
//! decoding and INTx off) only now. With an IOMMU the device is put in a domain of its own
//! whose second-level tables map exactly the tenant's RAM (guest-physical → the tenant's host
//! frames), so the addresses its driver programs are guest-physical. Without an IOMMU the device
//! could DMA anywhere: refused unless the manifest sets `passthrough_without_iommu` (testing),
//! with a warning. Its INTx line is registered for forwarding (`irq`), masked until the guest
//! binds it.
//!
//! When the tenant stops, [`release`] turns decoding and bus mastering off, takes the device out
//! of its domain and returns it to the unassigned pool.

use super::config::Config;
use super::vtd::{Unit, VtdError};
use super::{IOMMU, REGISTRY};
use alloc::string::String;
use alloc::vec::Vec;
use hypervisor::pci::{self, Bar, BarWindow, Bdf, ConfigAccess, DeviceSelector, Owner};
use iommu::tables::{Domain, Perms};
use iommu::{HostPhys, Iova, SourceId};

/// What enumeration left for passthrough: configuration access and every function's BARs.
pub(super) static CONFIG: spin::Mutex<Option<Config>> = spin::Mutex::new(None);
pub(super) static BARS: spin::Mutex<Vec<(Bdf, u8, Bar)>> = spin::Mutex::new(Vec::new());
/// Devices given to tenants and, with an IOMMU, their domains.
static ASSIGNED: spin::Mutex<Vec<(u32, Bdf, Option<Domain>)>> = spin::Mutex::new(Vec::new());

/// A device given to a tenant: where its BARs go in the tenant's guest-physical space.
pub struct Assigned {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub windows: Vec<BarWindow>,
}

/// The tenant's RAM as the IOMMU domain maps it: guest-physical 0.. onto host `base`..
#[derive(Clone, Copy, Debug)]
pub struct TenantRam {
    pub host_base: u64,
    pub size: u64,
}

/// Gives the devices `selectors` names to tenant `id`, placing their BARs from guest-physical
/// `guest_base` up to `limit`. All or nothing: on an error every device this call took is
/// released again and the error says which device and why.
pub fn assign(id: u32, tenant: &str, selectors: &[String], allow_without_iommu: bool, ram: TenantRam, guest_base: u64, limit: u64) -> Result<Vec<Assigned>, String> {
    let mut out: Vec<Assigned> = Vec::new();
    let mut base = guest_base;
    for s in selectors {
        match assign_one(id, tenant, s, allow_without_iommu, ram, base, limit) {
            Ok(a) => {
                base = a.windows.iter().map(|w| w.guest_phys + w.len).max().unwrap_or(base);
                out.push(a);
            }
            Err(e) => {
                release(id);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn assign_one(id: u32, tenant: &str, s: &str, allow_without_iommu: bool, ram: TenantRam, base: u64, limit: u64) -> Result<Assigned, String> {
    let sel = DeviceSelector::parse(s).map_err(|e| alloc::format!("device {s}: {e}"))?;
    let mut reg = REGISTRY.lock();
    let dev = sel.find(&reg).ok_or_else(|| alloc::format!("device {sel}: no such PCI function on this machine"))?.clone();
    let bdf = dev.bdf;
    pci::assignable(bdf, &dev.header).map_err(|e| alloc::format!("device {sel}: {e}"))?;
    let iommu_present = IOMMU.lock().is_some();
    let warning = pci::passthrough_allowed(bdf, iommu_present, allow_without_iommu).map_err(|e| alloc::format!("device {sel}: {e}"))?;
    reg.claim(bdf, Owner::Tenant(id)).map_err(|e| match e {
        pci::OwnershipError::AlreadyOwned { owner: Owner::Hypervisor, .. } => alloc::format!("device {sel} ({bdf}) is the hypervisor's own"),
        pci::OwnershipError::AlreadyOwned { owner, .. } => alloc::format!("device {sel} ({bdf}) already belongs to {owner:?}"),
        e => alloc::format!("device {sel}: {e:?}"),
    })?;
    let bars: Vec<(u8, Bar)> = BARS.lock().iter().filter(|(b, _, _)| *b == bdf).map(|&(_, i, bar)| (i, bar)).collect();
    let windows = match pci::passthrough_windows(&reg, bdf, id, &bars, base, limit) {
        Ok(w) => w,
        Err(e) => {
            let _ = reg.release(bdf, Owner::Tenant(id));
            return Err(alloc::format!("device {sel}: {e}"));
        }
    };
    drop(reg);
    if let Some(w) = warning {
        log::warn!("tenant {tenant}: {bdf}: {w}");
    }
    let domain = if iommu_present {
        match confine(bdf, ram) {
            Ok(d) => Some(d),
            Err(e) => {
                let _ = REGISTRY.lock().release(bdf, Owner::Tenant(id));
                return Err(alloc::format!("device {sel}: IOMMU domain: {e:?}"));
            }
        }
    } else {
        None
    };
    ASSIGNED.lock().push((id, bdf, domain));
    if let Some(cfg) = CONFIG.lock().as_mut() {
        let cmd = cfg.read16(bdf, pci::reg::COMMAND);
        // INTx stays disabled until the guest binds the line (kernel/devices/irq.rs).
        let on = (cmd & !pci::command::IO) | pci::command::MEMORY | pci::command::BUS_MASTER | pci::command::INTX_DISABLE;
        cfg.write16(bdf, pci::reg::COMMAND, on);
    }
    let interrupts = super::irq::assign(id, bdf, dev.header.interrupt_pin);
    let io_bars = bars.iter().filter(|(_, b)| matches!(b, Bar::Io { .. })).count();
    for w in &windows {
        log::info!(
            "tenant {tenant}: {bdf} [{:04x}:{:04x}] BAR{} host {:#x} -> guest-physical {:#x} ({} KiB, uncached)",
            dev.header.vendor,
            dev.header.device,
            w.index,
            w.host_phys,
            w.guest_phys,
            w.len / 1024
        );
    }
    log::info!(
        "tenant {tenant}: {bdf} assigned: memory decoding and bus mastering on, {}; {io_bars} I/O BAR(s) not forwarded; {interrupts}",
        if iommu_present { "DMA confined to the tenant's guest-physical RAM by its IOMMU domain" } else { "DMA NOT confined (no IOMMU)" }
    );
    Ok(Assigned { bdf, vendor: dev.header.vendor, device: dev.header.device, windows })
}

/// A domain mapping guest-physical `[0, size)` onto the tenant's host frames, with `bdf` in it.
fn confine(bdf: Bdf, ram: TenantRam) -> Result<Domain, VtdError> {
    let mut guard = IOMMU.lock();
    let (unit, _) = guard.as_mut().ok_or(VtdError::NoUnit)?;
    let mut domain = unit.new_domain()?;
    map_tenant_ram(unit, &mut domain, ram)?;
    let sid = SourceId::from_raw(bdf.source_id());
    unit.attach(sid, &domain)?;
    log::info!(
        "{bdf} in IOMMU domain {}: guest-physical 0..{:#x} -> host {:#x}..{:#x}, nothing else",
        domain.id().get(),
        ram.size,
        ram.host_base,
        ram.host_base + ram.size
    );
    Ok(domain)
}

/// Maps the tenant's RAM into `domain` at its guest-physical addresses, read-write.
pub(super) fn map_tenant_ram(unit: &mut Unit, domain: &mut Domain, ram: TenantRam) -> Result<(), VtdError> {
    let iova = Iova::try_new(0).map_err(|_| VtdError::BadAddress(0))?;
    let phys = HostPhys::try_new(ram.host_base).map_err(|_| VtdError::BadAddress(ram.host_base))?;
    unit.map(domain, iova, phys, ram.size, Perms::READ | Perms::WRITE)
}

/// Whether tenant `id` was given the function with source id `bdf`.
pub(super) fn owns(id: u32, bdf: u16) -> bool {
    ASSIGNED.lock().iter().any(|(t, b, _)| *t == id && b.source_id() == bdf)
}

/// Takes every device away from tenant `id`: its interrupt lines masked, decoding, bus mastering
/// and INTx off, out of its IOMMU domain (the domain's tables freed), back to unassigned. For
/// when the tenant stops.
pub fn release(id: u32) {
    super::irq::release(id);
    let mine: Vec<(u32, Bdf, Option<Domain>)> = {
        let mut a = ASSIGNED.lock();
        let (mine, rest): (Vec<_>, Vec<_>) = core::mem::take(&mut *a).into_iter().partition(|(t, _, _)| *t == id);
        *a = rest;
        mine
    };
    for (_, bdf, domain) in mine {
        if let Some(cfg) = CONFIG.lock().as_mut() {
            let cmd = cfg.read16(bdf, pci::reg::COMMAND);
            let off = (cmd & !(pci::command::MEMORY | pci::command::BUS_MASTER | pci::command::IO)) | pci::command::INTX_DISABLE;
            cfg.write16(bdf, pci::reg::COMMAND, off);
        }
        if let Some(d) = domain {
            if let Some((unit, _)) = IOMMU.lock().as_mut() {
                if let Err(e) = unit.detach(SourceId::from_raw(bdf.source_id()), d) {
                    log::error!("{bdf}: leaving its IOMMU domain: {e:?}");
                }
            }
        }
        match REGISTRY.lock().release(bdf, Owner::Tenant(id)) {
            Ok(()) => log::info!("{bdf} released: decoding and bus mastering off, unassigned"),
            Err(e) => log::error!("{bdf}: {e:?}"),
        }
    }
}

/// Test scenario `tv.iommu-test=tenant-dma` (QEMU: intel-iommu and a second NVMe controller;
/// TCG has no VMX, so no guest runs). A tenant's memory is built as for a real tenant
/// ([`GuestRam`], which also builds its EPT), the second controller is passed through to it, and
/// the hypervisor drives the controller as the tenant's driver would, giving it guest-physical
/// addresses: a read to guest-physical X must land in the tenant's frame for X (checked through
/// the hypervisor's own view of the tenant's memory), a read outside the tenant's space must
/// fault with the controller's source id and that address, and the controller must keep working.
/// The controller's queues (the hypervisor's buffers in this scenario) are mapped in the
/// tenant's domain at I/O-virtual addresses above the tenant's guest-physical space, so they
/// cannot alias tenant memory.
pub(super) fn tenant_dma_scenario() {
    use crate::kernel::vmm::ram::GuestRam;
    const TENANT: u32 = 0x7e57;
    /// Far above any tenant's guest-physical space, inside the unit's 39-bit width.
    const QUEUE_IOVA: u64 = 1 << 36;
    let caps = vmx::EptVpidCap::PAGE_2M;
    let ram = match GuestRam::new(4 << 20, caps, &[]) {
        Ok(r) => r,
        Err(e) => return log::error!("tenant DMA test: tenant memory: {e:?}"),
    };
    let (host_base, size) = ram.host_range();
    // The hypervisor's own controller (the model store) is never a tenant's.
    let own = REGISTRY.lock().devices().iter().find(|d| d.owner == Owner::Hypervisor).map(|d| d.bdf);
    if let Some(own) = own {
        match assign(TENANT, "greedy", &[alloc::format!("{own}")], false, TenantRam { host_base, size }, size, 1 << 30) {
            Ok(_) => {
                release(TENANT);
                log::error!("tenant DMA test: the hypervisor's NVMe {own} was given to a tenant");
            }
            Err(e) => log::info!("tenant DMA test: refused as expected: {e}"),
        }
    }
    let Some(bdf) = REGISTRY.lock().devices().iter().find(|d| d.header.is_nvme() && d.owner == Owner::Unassigned).map(|d| d.bdf) else {
        return log::error!("tenant DMA test: no second NVMe controller to pass through");
    };
    log::info!("tenant DMA test: tenant memory {} MiB at host {host_base:#x}; passing NVMe {bdf} through", size >> 20);
    let assigned = match assign(TENANT, "dma-test", &[alloc::format!("{bdf}")], false, TenantRam { host_base, size }, size, 1 << 30) {
        Ok(a) => a,
        Err(e) => return log::error!("tenant DMA test: {e}"),
    };
    let Some(&(_, _, Bar::Memory { base, size: bar_size, .. })) = BARS.lock().iter().find(|(b, i, _)| *b == bdf && *i == 0) else {
        release(TENANT);
        return log::error!("tenant DMA test: {bdf} has no memory BAR0");
    };
    drop(assigned);
    let mut queues = QueuesAbove { bdf, offset: QUEUE_IOVA };
    let mut ctrl = match super::nvme::Controller::init(bdf, base, bar_size, &mut queues) {
        Ok(c) => c,
        Err(e) => {
            let faults = IOMMU.lock().as_ref().map(|(u, _)| u.poll_faults().len()).unwrap_or(0);
            release(TENANT);
            return log::error!("tenant DMA test: controller set-up: {e:?} ({faults} DMA fault(s))");
        }
    };
    let poll = || IOMMU.lock().as_ref().map(|(u, _)| u.poll_faults()).unwrap_or_default();
    let gpa = 0x20_0000u64;
    let mut read_back = [0u8; 16];
    match ctrl.read_raw(0, 1, gpa, 0) {
        Ok(c) if c.status.is_success() && ram.read(gpa, &mut read_back).is_ok() => {
            let text: alloc::string::String = read_back.iter().map(|&b| if (0x20..0x7f).contains(&b) { char::from(b) } else { '.' }).collect();
            log::info!("tenant DMA test: NVMe {bdf} read LBA 0 to guest-physical {gpa:#x}; the tenant's frame (host {:#x}) holds \"{text}\"", host_base + gpa);
        }
        r => log::error!("tenant DMA test: read to guest-physical {gpa:#x} failed: {r:?}"),
    }
    let outside = size + 0x10_0000;
    match ctrl.read_raw(0, 1, outside, 0) {
        Ok(c) => log::info!("tenant DMA test: read to guest-physical {outside:#x} (outside the tenant) completed with status {}", c.status.describe()),
        Err(e) => log::info!("tenant DMA test: read to guest-physical {outside:#x} (outside the tenant) did not complete: {e:?}"),
    }
    let faults = poll();
    if faults.iter().any(|f| f.source.raw() == bdf.source_id() && f.address == outside) {
        log::info!("tenant DMA test: DMA outside the tenant's guest-physical space blocked: fault for {bdf} at {outside:#x}");
    } else {
        log::error!("tenant DMA test: no fault recorded for {bdf} at {outside:#x} ({} other faults)", faults.len());
    }
    let again = 0x30_0000u64;
    let mut b2 = [0u8; 16];
    match ctrl.read_raw(0, 1, again, 0) {
        Ok(c) if c.status.is_success() && ram.read(again, &mut b2).is_ok() && b2 == read_back => {
            log::info!("tenant DMA test: NVMe {bdf} still serves reads into the tenant after the fault")
        }
        r => log::error!("tenant DMA test: read after the fault failed: {r:?}"),
    }
    release(TENANT);
}

/// The scenario's controller queues, mapped in the tenant's domain at `phys + offset`.
struct QueuesAbove {
    bdf: Bdf,
    offset: u64,
}

impl super::nvme::DmaMap for QueuesAbove {
    fn map(&mut self, phys: u64, len: u64, device_writes: bool) -> Result<u64, &'static str> {
        let perms = if device_writes { Perms::READ | Perms::WRITE } else { Perms::READ };
        let iova = phys + self.offset;
        let mut assigned = ASSIGNED.lock();
        let domain = assigned.iter_mut().find(|(_, b, _)| *b == self.bdf).and_then(|(_, _, d)| d.as_mut()).ok_or("no tenant domain")?;
        let mut iommu = IOMMU.lock();
        let (unit, _) = iommu.as_mut().ok_or("no IOMMU")?;
        let (v, p) = (Iova::try_new(iova).map_err(|_| "iova")?, HostPhys::try_new(phys).map_err(|_| "phys")?);
        unit.map(domain, v, p, len.next_multiple_of(4096), perms).map_err(|_| "IOMMU mapping failed")?;
        Ok(iova)
    }
    fn unmap(&mut self, iova: u64, len: u64) -> Result<(), &'static str> {
        let mut assigned = ASSIGNED.lock();
        let domain = assigned.iter_mut().find(|(_, b, _)| *b == self.bdf).and_then(|(_, _, d)| d.as_mut()).ok_or("no tenant domain")?;
        let mut iommu = IOMMU.lock();
        let (unit, _) = iommu.as_mut().ok_or("no IOMMU")?;
        unit.unmap(domain, iova, len).map_err(|_| "IOMMU unmapping failed")
    }
}
