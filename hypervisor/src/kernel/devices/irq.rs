//! Passed-through devices' INTx forwarded to their tenants through the host's I/O APIC (the
//! state machine and the register encodings are [`hypervisor::irq`]; this file owns the
//! registers).
//!
//! At boot ([`init`]) the hypervisor takes the interrupt controllers: every I/O APIC input is
//! masked, the 8259 pair is masked (so nothing arrives through the local APIC's virtual-wire
//! ExtINT), and the platform's PCI interrupt routing is identified. When a device is assigned,
//! its INTx# pin is routed to a GSI and the line is registered (masked) with a hypervisor vector
//! of its own. `DEVICE_IRQ_BIND` unmasks it (fixed delivery, level-triggered, to the boot CPU,
//! which runs every tenant). The interrupt reaches the hypervisor as an external-interrupt VM
//! exit (acknowledged on exit) or, while the hypervisor runs with interrupts off, stays pending
//! in the local APIC until the next VM entry exits for it; either way [`host_interrupt`] masks
//! the line and EOIs the local APIC, and the run loop injects the owner's vector before its next
//! entry. `DEVICE_IRQ_DONE` unmasks.

use super::mmio::Mmio;
use alloc::vec::Vec;
use hypervisor::irq::{self, ioapic_reg, Action, Fired, IoApic, Lines, Platform, Polarity, RedirectionEntry};
use hypervisor::pci::{self, Bdf, ConfigAccess, Registry};
use tensor_hcall::HcallError;

const IA32_APIC_BASE: u32 = 0x1b;
/// Local APIC registers (SDM Vol. 3A, Table 11-1).
const LAPIC_ID: usize = 0x20;
const LAPIC_EOI: usize = 0xb0;
const LAPIC_SVR: usize = 0xf0;
/// The spurious vector the boot CPU's APIC is given (`smp` uses the same): never EOId (SDM
/// Vol. 3A, 11.9).
const SPURIOUS_VECTOR: u8 = 0xff;

struct Forwarder {
    ioapics: Vec<(IoApic, Mmio)>,
    lapic: Mmio,
    apic_id: u8,
    platform: Platform,
    lines: Lines,
    /// Host interrupts that were no forwarded line's (EOId and counted).
    unknown: u64,
}

static FORWARDER: spin::Mutex<Option<Forwarder>> = spin::Mutex::new(None);

impl Forwarder {
    /// Writes the redirection entry of `gsi`: masked first, then the high dword, then the low
    /// dword with the final mask bit, so a half-written entry never delivers.
    fn write_entry(&self, gsi: u32, e: RedirectionEntry) -> bool {
        let Some((io, mmio)) = self.ioapics.iter().find(|(io, _)| io.pin(gsi).is_some()) else { return false };
        let Some(pin) = io.pin(gsi) else { return false };
        let (lo, hi) = e.dwords();
        let sel = ioapic_reg::redirection(pin);
        let w = |reg: u32, v: u32| {
            mmio.write32(ioapic_reg::IOREGSEL as usize, reg);
            mmio.write32(ioapic_reg::IOWIN as usize, v);
        };
        w(sel, lo | (1 << 16));
        w(sel + 1, hi);
        w(sel, lo);
        true
    }

    /// Reads the redirection entry of `gsi` back from the I/O APIC.
    fn read_entry(&self, gsi: u32) -> Option<u64> {
        let (io, mmio) = self.ioapics.iter().find(|(io, _)| io.pin(gsi).is_some())?;
        let sel = ioapic_reg::redirection(io.pin(gsi)?);
        let r = |reg: u32| {
            mmio.write32(ioapic_reg::IOREGSEL as usize, reg);
            mmio.read32(ioapic_reg::IOWIN as usize)
        };
        let lo = r(sel);
        Some(u64::from(lo) | (u64::from(r(sel + 1)) << 32))
    }

    fn entry(&self, vector: u8, masked: bool) -> RedirectionEntry {
        // The emulated PIIX3 board's inputs 16-19 take the PIRQ level as it is (active high).
        RedirectionEntry::pci_intx(vector, self.apic_id, Polarity::ActiveHigh, masked)
    }
}

/// Takes the interrupt controllers (see the module documentation). `madt` is the ACPI MADT.
pub(super) fn init(madt: Option<&[u8]>, registry: &Registry) {
    let Some(madt) = madt.and_then(|t| hypervisor::acpi::Madt::new(t).ok()) else {
        log::warn!("no MADT: no I/O APIC, device interrupts cannot be forwarded");
        return;
    };
    let mut ioapics = Vec::new();
    for e in madt.entries() {
        match e {
            hypervisor::acpi::MadtEntry::IoApic { id, address, gsi_base } => match Mmio::map(u64::from(address), 0x20) {
                Ok(mmio) => {
                    mmio.write32(ioapic_reg::IOREGSEL as usize, ioapic_reg::VERSION);
                    let version = mmio.read32(ioapic_reg::IOWIN as usize);
                    let io = IoApic { id, address: u64::from(address), gsi_base, entries: irq::ioapic_entries(version) };
                    ioapics.push((io, mmio));
                }
                Err(e) => log::error!("cannot map the I/O APIC at {address:#x}: {e:?}"),
            },
            hypervisor::acpi::MadtEntry::InterruptOverride { bus, source, gsi, flags } => {
                log::info!("MADT override: bus {bus} IRQ {source} -> GSI {gsi} (flags {flags:#x})");
            }
            _ => {}
        }
    }
    if ioapics.is_empty() {
        log::warn!("the MADT lists no I/O APIC: device interrupts cannot be forwarded");
        return;
    }
    // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC (all x86_64 CPUs).
    let apic_base = unsafe { crate::kernel::cr::rdmsr(IA32_APIC_BASE) } & 0x000f_ffff_ffff_f000;
    let lapic = match Mmio::map(apic_base, 0x1000) {
        Ok(m) => m,
        Err(e) => return log::error!("cannot map the local APIC: {e:?}"),
    };
    // Software-enabled, spurious vector 0xff (as `smp` does; harmless if done already).
    let svr = lapic.read32(LAPIC_SVR);
    lapic.write32(LAPIC_SVR, svr | 0x100 | u32::from(SPURIOUS_VECTOR));
    let apic_id = (lapic.read32(LAPIC_ID) >> 24) as u8;
    let platform = if registry.devices().iter().any(|d| d.bdf.bus == 0 && d.header.vendor == 0x8086 && d.header.device == 0x7000) {
        Platform::Piix3
    } else {
        Platform::Unknown
    };
    let f = Forwarder { ioapics, lapic, apic_id, platform, lines: Lines::new(), unknown: 0 };
    for (io, _) in &f.ioapics {
        for pin in 0..io.entries {
            f.write_entry(io.gsi_base + u32::from(pin), RedirectionEntry::MASKED);
        }
        log::info!(
            "I/O APIC {} at {:#x}: GSI {}-{}, every input masked",
            io.id,
            io.address,
            io.gsi_base,
            io.gsi_base + u32::from(io.entries) - 1
        );
    }
    if madt.has_8259() {
        // OCW1 all ones on both 8259s (Intel 8259A data sheet): no ExtINT through LINT0.
        // SAFETY: the hypervisor owns the PIC ports (tenants' port I/O always exits); the writes
        // only change the PICs' interrupt masks.
        unsafe {
            crate::kernel::port::outb(0x21, 0xff);
            crate::kernel::port::outb(0xa1, 0xff);
        }
    }
    log::info!(
        "boot CPU APIC id {apic_id}; 8259 {}; PCI INTx routing: {}",
        if madt.has_8259() { "masked" } else { "absent" },
        match platform {
            Platform::Piix3 => "PIIX3 (PIRQA-D on I/O APIC inputs 16-19)",
            Platform::Unknown => "unknown (ACPI _PRT is not interpreted): device interrupts will not be forwarded",
        }
    );
    *FORWARDER.lock() = Some(f);
}

/// A read-back entry for the log: its bits and what they say.
fn describe(raw: Option<u64>) -> alloc::string::String {
    match raw.map(|r| (r, RedirectionEntry::from_raw(r))) {
        Some((r, Ok(e))) => alloc::format!(
            "{r:#018x} (vector {:#x}, {:?}, {:?}, {}masked)",
            e.vector,
            e.trigger,
            e.polarity,
            if e.masked { "" } else { "un" }
        ),
        Some((r, Err(e))) => alloc::format!("{r:#018x} ({e:?})"),
        None => "unreadable".into(),
    }
}

/// Registers `bdf`'s INTx line for tenant `tenant` (masked until the guest binds it). Returns
/// what the log should say about the device's interrupts.
pub(super) fn assign(tenant: u32, bdf: Bdf, pin_register: u8) -> alloc::string::String {
    let mut guard = FORWARDER.lock();
    let Some(f) = guard.as_mut() else { return "interrupts not forwarded (no I/O APIC)".into() };
    let (pin, gsi) = match irq::intx_gsi(f.platform, bdf, pin_register) {
        Ok(r) => r,
        Err(e) => return alloc::format!("interrupts not forwarded ({e})"),
    };
    if !f.ioapics.iter().any(|(io, _)| io.pin(gsi).is_some()) {
        return alloc::format!("interrupts not forwarded ({})", irq::RouteError::NoIoApicInput(gsi));
    }
    match f.lines.add(tenant, bdf, pin, gsi) {
        Ok(l) => alloc::format!(
            "{pin} -> GSI {gsi}, host vector {:#x}, forwarded once the guest binds it{}",
            l.host_vector,
            if l.shared { " (GSI shared with another device: binding refused)" } else { "" }
        ),
        Err(e) => alloc::format!("interrupts not forwarded ({e:?})"),
    }
}

fn apply(f: &Forwarder, line: &irq::Line, action: Action) {
    match action {
        Action::None => {}
        Action::Mask(masked) => {
            f.write_entry(line.gsi, f.entry(line.host_vector, masked));
        }
        Action::Enable => {
            if let Some(cfg) = super::passthrough::CONFIG.lock().as_mut() {
                let cmd = cfg.read16(line.bdf, pci::reg::COMMAND);
                cfg.write16(line.bdf, pci::reg::COMMAND, cmd & !pci::command::INTX_DISABLE);
            }
            f.write_entry(line.gsi, f.entry(line.host_vector, false));
        }
    }
}

/// `DEVICE_IRQ_BIND` from tenant `tenant`.
pub fn bind(tenant: u32, bdf: u64, vector: u64) -> Result<u64, HcallError> {
    let mut guard = FORWARDER.lock();
    let Some(f) = guard.as_mut() else { return Err(no_line(tenant, bdf)) };
    let (line, action) = f.lines.bind(tenant, bdf, vector).map_err(|e| if e == HcallError::BadHandle { no_line(tenant, bdf) } else { e })?;
    let before = f.read_entry(line.gsi);
    apply(f, &line, action);
    log::info!(
        "tenant {tenant}: {} {} (GSI {}, host vector {:#x}) bound to guest vector {:#x} ({:?}); redirection entry {} -> {}",
        line.bdf,
        line.pin,
        line.gsi,
        line.host_vector,
        line.guest_vector.unwrap_or(0),
        line.state,
        describe(before),
        describe(f.read_entry(line.gsi))
    );
    Ok(0)
}

/// `DEVICE_IRQ_DONE` from tenant `tenant`.
pub fn done(tenant: u32, bdf: u64) -> Result<u64, HcallError> {
    let mut guard = FORWARDER.lock();
    let Some(f) = guard.as_mut() else { return Err(no_line(tenant, bdf)) };
    let (line, action) = f.lines.done(tenant, bdf).map_err(|e| if e == HcallError::BadHandle { no_line(tenant, bdf) } else { e })?;
    apply(f, &line, action);
    Ok(0)
}

/// The error for a device without a forwarded line: the tenant's own device whose INTx cannot
/// be forwarded is `NotSupported`; anything else is not the tenant's (`BadHandle`).
fn no_line(tenant: u32, bdf: u64) -> HcallError {
    let owned = u16::try_from(bdf).ok().is_some_and(|b| super::passthrough::owns(tenant, b));
    if owned { HcallError::NotSupported } else { HcallError::BadHandle }
}

/// A host interrupt the CPU acknowledged on a VM exit: a forwarded line's vector masks that line
/// and marks it pending for its tenant. Every vector but the spurious one is EOId.
pub fn host_interrupt(vector: Option<u8>) {
    let mut guard = FORWARDER.lock();
    let (Some(f), Some(v)) = (guard.as_mut(), vector) else { return };
    if v == SPURIOUS_VECTOR {
        return;
    }
    match f.lines.fire(v) {
        // Mask before the EOI: a level line still asserted must not come straight back.
        Fired::Line { gsi, .. } => {
            let host_vector = v;
            f.write_entry(gsi, f.entry(host_vector, true));
        }
        Fired::Unknown => {
            f.unknown += 1;
            if f.unknown == 1 {
                log::warn!("host interrupt on vector {v:#x} that no forwarded line uses (EOId, ignored)");
            }
        }
    }
    f.lapic.write32(LAPIC_EOI, 0);
}

/// The vector to inject into tenant `tenant` for one of its pending device interrupts.
pub fn take_pending(tenant: u32) -> Option<u8> {
    FORWARDER.lock().as_mut()?.lines.take_pending(tenant)
}

/// Masks and forgets every line of `tenant` (when it stops), logging what each line did.
pub(super) fn release(tenant: u32) {
    let mut guard = FORWARDER.lock();
    let Some(f) = guard.as_mut() else { return };
    for l in f.lines.release(tenant) {
        let before = f.read_entry(l.gsi);
        f.write_entry(l.gsi, RedirectionEntry::MASKED);
        log::info!(
            "{} GSI {} released ({:?}, redirection entry {}): {} interrupt(s) taken, {} injected, {} DONE; line masked",
            l.bdf,
            l.gsi,
            l.state,
            describe(before),
            l.counts.fired,
            l.counts.injected,
            l.counts.done
        );
    }
}
