//! Forwarding a passed-through device's legacy interrupt (INTx) to its tenant: the I/O APIC
//! redirection entry as a type, where a PCI function's INTx# lands (its GSI), and the per-line
//! state machine the kernel drives (`kernel/devices/irq.rs` does the register accesses).
//!
//! The forwarding cycle for one line (level-triggered, so the line stays asserted until the
//! guest's driver clears the cause in the device):
//!
//! 1. `DEVICE_IRQ_BIND(bdf, vector)`: the line is `Armed` — its redirection entry unmasked,
//!    delivering a hypervisor vector to the boot CPU.
//! 2. The device asserts INTx → the host vector arrives (an external-interrupt exit, or pending
//!    in the local APIC while the hypervisor runs with interrupts off) → [`Lines::fire`]: the
//!    entry is **masked** and the line is `Pending`; the kernel EOIs its local APIC.
//! 3. Before the owner's next VM entry, [`Lines::take_pending`] hands the guest's vector to the
//!    run loop's injection (the one tensor completion interrupts use) and the line is
//!    `InService`.
//! 4. The guest's handler clears the cause in the device and calls `DEVICE_IRQ_DONE(bdf)`:
//!    the entry is unmasked (`Armed`). If the line is still asserted it fires again at once.
//!
//! A guest that never calls DONE gets one interrupt and the line stays masked: a stuck
//! level-triggered line cannot storm the hypervisor.

use crate::pci::Bdf;
use tensor_hcall::HcallError;

/// Where a redirection entry sends its interrupt (82093AA I/O APIC datasheet, 3.2.4, bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed = 0,
    LowestPriority = 1,
    Smi = 2,
    Nmi = 4,
    Init = 5,
    ExtInt = 7,
}

/// Bit 15 of a redirection entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Edge,
    Level,
}

/// Bit 13 of a redirection entry (the input pin's active level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    ActiveHigh,
    ActiveLow,
}

/// Bit 11 of a redirection entry: `destination` is an APIC id or a logical set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationMode {
    Physical,
    Logical,
}

/// One I/O APIC redirection-table entry (IOREDTBLn, 64 bits: low dword at register 0x10 + 2n,
/// high dword at 0x11 + 2n; 82093AA datasheet 3.2.4). Delivery status (bit 12) and remote IRR
/// (bit 14) are read-only and not part of what the hypervisor programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectionEntry {
    pub vector: u8,
    pub delivery: DeliveryMode,
    pub destination_mode: DestinationMode,
    pub polarity: Polarity,
    pub trigger: Trigger,
    pub masked: bool,
    /// Bits 63:56: an APIC id (physical mode).
    pub destination: u8,
}

/// Why raw entry bits do not describe an entry the hypervisor would program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// Delivery mode 3 or 6 is reserved.
    ReservedDeliveryMode(u8),
}

impl RedirectionEntry {
    /// The entry the hypervisor programs for a forwarded PCI INTx line: fixed delivery of
    /// `vector` to the APIC `apic_id` (physical), level-triggered (PCI INTx is a level,
    /// shareable interrupt: PCI Local Bus 3.0, 2.2.6), `masked` as asked.
    pub const fn pci_intx(vector: u8, apic_id: u8, polarity: Polarity, masked: bool) -> Self {
        Self {
            vector,
            delivery: DeliveryMode::Fixed,
            destination_mode: DestinationMode::Physical,
            polarity,
            trigger: Trigger::Level,
            masked,
            destination: apic_id,
        }
    }

    /// The fully masked, inert entry (what the hypervisor leaves on every pin it does not use).
    pub const MASKED: Self = Self {
        vector: 0,
        delivery: DeliveryMode::Fixed,
        destination_mode: DestinationMode::Physical,
        polarity: Polarity::ActiveHigh,
        trigger: Trigger::Edge,
        masked: true,
        destination: 0,
    };

    /// The 64-bit register value.
    pub const fn to_raw(self) -> u64 {
        let mut v = self.vector as u64 | ((self.delivery as u64) << 8);
        if matches!(self.destination_mode, DestinationMode::Logical) {
            v |= 1 << 11;
        }
        if matches!(self.polarity, Polarity::ActiveLow) {
            v |= 1 << 13;
        }
        if matches!(self.trigger, Trigger::Level) {
            v |= 1 << 15;
        }
        if self.masked {
            v |= 1 << 16;
        }
        v | ((self.destination as u64) << 56)
    }

    /// Decodes a register value (the read-only status bits are ignored).
    pub fn from_raw(v: u64) -> Result<Self, EntryError> {
        let delivery = match (v >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            m => return Err(EntryError::ReservedDeliveryMode(m as u8)),
        };
        Ok(Self {
            vector: v as u8,
            delivery,
            destination_mode: if v & (1 << 11) != 0 { DestinationMode::Logical } else { DestinationMode::Physical },
            polarity: if v & (1 << 13) != 0 { Polarity::ActiveLow } else { Polarity::ActiveHigh },
            trigger: if v & (1 << 15) != 0 { Trigger::Level } else { Trigger::Edge },
            masked: v & (1 << 16) != 0,
            destination: (v >> 56) as u8,
        })
    }

    /// The low and high dwords, in the order the registers take them.
    pub const fn dwords(self) -> (u32, u32) {
        let v = self.to_raw();
        (v as u32, (v >> 32) as u32)
    }
}

/// I/O APIC register indices (written to IOREGSEL at offset 0x00, data through IOWIN at 0x10).
pub mod ioapic_reg {
    pub const IOREGSEL: u64 = 0x00;
    pub const IOWIN: u64 = 0x10;
    pub const ID: u32 = 0x00;
    pub const VERSION: u32 = 0x01;
    /// The low dword of redirection entry `pin`; the high dword is the next index.
    pub const fn redirection(pin: u8) -> u32 {
        0x10 + 2 * pin as u32
    }
}

/// The number of redirection entries from the version register (bits 23:16 hold the index of
/// the last one).
pub const fn ioapic_entries(version: u32) -> u8 {
    ((version >> 16) as u8).saturating_add(1)
}

/// One I/O APIC as the MADT lists it: its inputs are GSIs `gsi_base..gsi_base + entries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u64,
    pub gsi_base: u32,
    pub entries: u8,
}

impl IoApic {
    /// The input pin of `gsi` on this I/O APIC.
    pub fn pin(&self, gsi: u32) -> Option<u8> {
        let pin = gsi.checked_sub(self.gsi_base)?;
        (pin < u32::from(self.entries)).then_some(pin as u8)
    }
}

/// The interrupt pin a function uses (configuration register 0x3D: 1 = INTA# .. 4 = INTD#,
/// 0 = none; PCI Local Bus 3.0, 6.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntPin {
    A,
    B,
    C,
    D,
}

impl IntPin {
    pub const fn from_register(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::A),
            2 => Some(Self::B),
            3 => Some(Self::C),
            4 => Some(Self::D),
            _ => None,
        }
    }
    const fn index(self) -> u8 {
        self as u8
    }
}

impl core::fmt::Display for IntPin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "INT{}#", (b'A' + self.index()) as char)
    }
}

/// The interrupt routing the hypervisor knows for a platform. ACPI `_PRT` (AML) is not
/// interpreted, so routing is known only for chipsets whose wiring is fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// An i440FX host bridge with a PIIX3 PCI-to-ISA bridge (8086:7000) as Bochs and QEMU
    /// emulate it: bus-0 device `d`'s INTx# `p` (0-based) drives PIRQ `(d + p - 1) mod 4`
    /// (the PIIX3 swizzle) and the emulated board wires PIRQA#..PIRQD# to I/O APIC inputs
    /// 16..19 as well as to the ISA IRQ the PIRQ route registers (0x60-0x63) select.
    Piix3,
    /// Anything else: routing unknown.
    Unknown,
}

/// Why a function's INTx cannot be forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Interrupt pin register 0: the function uses no INTx.
    NoPin,
    /// The platform's PCI interrupt routing is not known to the hypervisor.
    UnknownPlatform,
    /// Only functions on bus 0 are routed (bridges swizzle further).
    BehindBridge,
    /// No I/O APIC has an input for the GSI.
    NoIoApicInput(u32),
}

impl core::fmt::Display for RouteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RouteError::NoPin => write!(f, "the function has no interrupt pin"),
            RouteError::UnknownPlatform => write!(f, "PCI interrupt routing unknown on this platform (ACPI _PRT is not interpreted)"),
            RouteError::BehindBridge => write!(f, "functions behind a PCI bridge are not routed"),
            RouteError::NoIoApicInput(g) => write!(f, "no I/O APIC has an input for GSI {g}"),
        }
    }
}

/// The GSI of `bdf`'s interrupt pin (the raw configuration register 0x3D) on `platform`.
pub fn intx_gsi(platform: Platform, bdf: Bdf, pin_register: u8) -> Result<(IntPin, u32), RouteError> {
    let pin = IntPin::from_register(pin_register).ok_or(RouteError::NoPin)?;
    match platform {
        Platform::Unknown => Err(RouteError::UnknownPlatform),
        Platform::Piix3 if bdf.bus != 0 => Err(RouteError::BehindBridge),
        Platform::Piix3 => {
            let pirq = (u32::from(bdf.dev) + u32::from(pin.index()) + 3) % 4;
            Ok((pin, 16 + pirq))
        }
    }
}

/// The first vector of the hypervisor's forwarded lines (below the wake-up IPI at 0xf0).
pub const HOST_VECTOR_BASE: u8 = 0x50;
/// The most lines forwarded at once (one host vector each).
pub const MAX_LINES: usize = 16;

/// Where a line is in the forwarding cycle (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineState {
    /// Assigned, not bound by the guest: masked.
    Unbound,
    /// Bound, unmasked, waiting for the device.
    Armed,
    /// Fired: masked, the guest's vector not yet handed to the injection.
    Pending,
    /// Injected (or queued for injection): masked until the guest's DONE.
    InService,
}

/// What the kernel must do to the hardware after a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Write the line's redirection entry masked (`true`) or unmasked (`false`).
    Mask(bool),
    /// First bind: clear the function's INTx-disable bit and write the entry unmasked.
    Enable,
}

/// Counts for one line (logged when it is released).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Host interrupts taken for it.
    pub fired: u64,
    /// Handed to the guest's injection.
    pub injected: u64,
    /// DONE calls that unmasked it.
    pub done: u64,
}

/// One forwarded INTx line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    pub tenant: u32,
    pub bdf: Bdf,
    pub pin: IntPin,
    pub gsi: u32,
    pub host_vector: u8,
    pub guest_vector: Option<u8>,
    pub state: LineState,
    /// Another line shares the GSI: binding is refused (one level-triggered redirection entry
    /// cannot be masked and unmasked for two devices, or forwarded to two owners).
    pub shared: bool,
    pub counts: LineCounts,
}

/// Why a line could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddError {
    /// [`MAX_LINES`] lines are forwarded already.
    Full,
    /// The function has a line already.
    Duplicate,
}

/// What [`Lines::fire`] found for a host vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fired {
    /// A forwarded line: mask its entry (at `gsi`) now.
    Line { gsi: u32, tenant: u32 },
    /// Not a forwarded line's vector.
    Unknown,
}

/// Every forwarded line.
#[derive(Clone, Debug, Default)]
pub struct Lines {
    lines: alloc::vec::Vec<Line>,
}

impl Lines {
    pub const fn new() -> Self {
        Self { lines: alloc::vec::Vec::new() }
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Registers `bdf`'s line for `tenant` (masked, unbound) with the lowest free host vector.
    pub fn add(&mut self, tenant: u32, bdf: Bdf, pin: IntPin, gsi: u32) -> Result<Line, AddError> {
        if self.lines.iter().any(|l| l.bdf == bdf) {
            return Err(AddError::Duplicate);
        }
        let host_vector = (0..MAX_LINES as u8).map(|i| HOST_VECTOR_BASE + i).find(|v| self.lines.iter().all(|l| l.host_vector != *v)).ok_or(AddError::Full)?;
        // One redirection entry per GSI: a second line on it (any owner) makes both unbindable.
        let shared = self.lines.iter().any(|l| l.gsi == gsi);
        for l in self.lines.iter_mut().filter(|l| l.gsi == gsi) {
            l.shared = true;
        }
        let line = Line { tenant, bdf, pin, gsi, host_vector, guest_vector: None, state: LineState::Unbound, shared, counts: LineCounts::default() };
        self.lines.push(line);
        Ok(line)
    }

    fn owned(&mut self, tenant: u32, bdf: u16) -> Result<&mut Line, HcallError> {
        // Another tenant's device is as unknown to the caller as a missing one.
        self.lines.iter_mut().find(|l| l.tenant == tenant && l.bdf.source_id() == bdf).ok_or(HcallError::BadHandle)
    }

    /// `DEVICE_IRQ_BIND`: `vector` must be 32..=255 (0-31 are exceptions); the device must be
    /// the tenant's and have a line. Rebinding changes the guest's vector and rewrites the entry
    /// as it is (masked unless armed): a pending or in-service line stays masked.
    pub fn bind(&mut self, tenant: u32, bdf: u64, vector: u64) -> Result<(Line, Action), HcallError> {
        let bdf = u16::try_from(bdf).map_err(|_| HcallError::InvalidArgument)?;
        let vector = u8::try_from(vector).ok().filter(|v| *v >= 32).ok_or(HcallError::InvalidArgument)?;
        let line = self.owned(tenant, bdf)?;
        if line.shared {
            return Err(HcallError::Busy);
        }
        line.guest_vector = Some(vector);
        let action = match line.state {
            LineState::Unbound => {
                line.state = LineState::Armed;
                Action::Enable
            }
            LineState::Armed => Action::Mask(false),
            LineState::Pending | LineState::InService => Action::Mask(true),
        };
        Ok((*line, action))
    }

    /// `DEVICE_IRQ_DONE`: the guest serviced the interrupt; unmask. Idempotent while `Armed`
    /// (so a polling driver may call it freely); a pending, not yet injected interrupt is
    /// dropped (the guest has serviced the device already; if it is still asserted it fires
    /// again).
    pub fn done(&mut self, tenant: u32, bdf: u64) -> Result<(Line, Action), HcallError> {
        let bdf = u16::try_from(bdf).map_err(|_| HcallError::InvalidArgument)?;
        let line = self.owned(tenant, bdf)?;
        let action = match line.state {
            LineState::Unbound => return Err(HcallError::InvalidArgument),
            LineState::Armed => Action::None,
            LineState::Pending | LineState::InService => {
                line.state = LineState::Armed;
                line.counts.done += 1;
                Action::Mask(false)
            }
        };
        Ok((*line, action))
    }

    /// The host took `vector`: if it is an armed line's, that line becomes `Pending` and must be
    /// masked. A line that fires while not armed (it cannot while masked) is masked again too.
    pub fn fire(&mut self, vector: u8) -> Fired {
        match self.lines.iter_mut().find(|l| l.host_vector == vector) {
            Some(l) => {
                l.counts.fired += 1;
                if l.state == LineState::Armed {
                    l.state = LineState::Pending;
                }
                Fired::Line { gsi: l.gsi, tenant: l.tenant }
            }
            None => Fired::Unknown,
        }
    }

    /// The guest vector of one of `tenant`'s pending lines, now `InService`.
    pub fn take_pending(&mut self, tenant: u32) -> Option<u8> {
        let l = self.lines.iter_mut().find(|l| l.tenant == tenant && l.state == LineState::Pending)?;
        l.state = LineState::InService;
        l.counts.injected += 1;
        l.guest_vector
    }

    /// Removes every line of `tenant` (to be masked by the caller); the lines left on the same
    /// GSIs are no longer shared with them.
    pub fn release(&mut self, tenant: u32) -> alloc::vec::Vec<Line> {
        let (mine, rest): (alloc::vec::Vec<Line>, alloc::vec::Vec<Line>) = core::mem::take(&mut self.lines).into_iter().partition(|l| l.tenant == tenant);
        self.lines = rest;
        let snapshot = self.lines.clone();
        for l in self.lines.iter_mut() {
            l.shared = snapshot.iter().any(|o| o.gsi == l.gsi && o.bdf != l.bdf);
        }
        mine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(dev: u8) -> Bdf {
        Bdf::new(0, dev, 0).unwrap()
    }

    #[test]
    fn redirection_entry_encoding_matches_the_datasheet_bits() {
        let e = RedirectionEntry::pci_intx(0x50, 0, Polarity::ActiveHigh, false);
        // Vector 0x50, fixed, physical, active high, level (bit 15), unmasked, APIC 0.
        assert_eq!(e.to_raw(), 0x0000_0000_0000_8050);
        let m = RedirectionEntry::pci_intx(0x51, 3, Polarity::ActiveLow, true);
        assert_eq!(m.to_raw(), 0x0300_0000_0001_a051);
        assert_eq!(m.dwords(), (0x0001_a051, 0x0300_0000));
        assert_eq!(RedirectionEntry::MASKED.to_raw(), 1 << 16);
        for e in [e, m, RedirectionEntry::MASKED] {
            assert_eq!(RedirectionEntry::from_raw(e.to_raw()), Ok(e));
        }
        // ExtINT, logical, edge: every field decodes.
        let x = RedirectionEntry::from_raw(0x0f00_0000_0000_0f20).unwrap();
        assert_eq!((x.delivery, x.destination_mode, x.trigger, x.destination, x.vector), (DeliveryMode::ExtInt, DestinationMode::Logical, Trigger::Edge, 0x0f, 0x20));
        // Delivery status (12) and remote IRR (14) are ignored; modes 3 and 6 are reserved.
        assert_eq!(RedirectionEntry::from_raw(e.to_raw() | (1 << 12) | (1 << 14)), Ok(e));
        assert_eq!(RedirectionEntry::from_raw(0x300), Err(EntryError::ReservedDeliveryMode(3)));
        assert_eq!(RedirectionEntry::from_raw(0x600), Err(EntryError::ReservedDeliveryMode(6)));
    }

    #[test]
    fn ioapic_registers_and_pins() {
        assert_eq!(ioapic_reg::redirection(0), 0x10);
        assert_eq!(ioapic_reg::redirection(17), 0x32);
        // 82093AA: version 0x11, maximum redirection entry 23 → 24 inputs.
        assert_eq!(ioapic_entries(0x0017_0011), 24);
        let io = IoApic { id: 1, address: 0xfec0_0000, gsi_base: 0, entries: 24 };
        assert_eq!(io.pin(17), Some(17));
        assert_eq!(io.pin(24), None);
        let second = IoApic { gsi_base: 24, ..io };
        assert_eq!((second.pin(23), second.pin(30)), (None, Some(6)));
    }

    #[test]
    fn piix3_swizzle_puts_pirqs_on_inputs_16_to_19() {
        // Device 1 INTA# is PIRQA#; each device and each pin shifts by one, modulo 4.
        assert_eq!(intx_gsi(Platform::Piix3, bdf(1), 1), Ok((IntPin::A, 16)));
        assert_eq!(intx_gsi(Platform::Piix3, bdf(2), 1), Ok((IntPin::A, 17)));
        assert_eq!(intx_gsi(Platform::Piix3, bdf(2), 2), Ok((IntPin::B, 18)));
        assert_eq!(intx_gsi(Platform::Piix3, bdf(3), 4), Ok((IntPin::D, 17)));
        assert_eq!(intx_gsi(Platform::Piix3, bdf(0), 1), Ok((IntPin::A, 19)));
        assert_eq!(intx_gsi(Platform::Piix3, bdf(2), 0), Err(RouteError::NoPin));
        assert_eq!(intx_gsi(Platform::Piix3, bdf(2), 5), Err(RouteError::NoPin));
        assert_eq!(intx_gsi(Platform::Piix3, Bdf::new(1, 0, 0).unwrap(), 1), Err(RouteError::BehindBridge));
        assert_eq!(intx_gsi(Platform::Unknown, bdf(2), 1), Err(RouteError::UnknownPlatform));
    }

    #[test]
    fn bind_fire_inject_done_cycle() {
        let mut l = Lines::new();
        let line = l.add(3, bdf(2), IntPin::A, 17).unwrap();
        assert_eq!((line.host_vector, line.state), (HOST_VECTOR_BASE, LineState::Unbound));
        let id = u64::from(bdf(2).source_id());
        // Not bound: DONE is refused, a stray host interrupt is nobody's injection.
        assert_eq!(l.done(3, id), Err(HcallError::InvalidArgument));
        let (b, a) = l.bind(3, id, 0x60).unwrap();
        assert_eq!((b.state, b.guest_vector, a), (LineState::Armed, Some(0x60), Action::Enable));
        assert_eq!(l.take_pending(3), None);
        for round in 1..=3u64 {
            assert_eq!(l.fire(HOST_VECTOR_BASE), Fired::Line { gsi: 17, tenant: 3 });
            assert_eq!(l.lines()[0].state, LineState::Pending);
            // Another tenant gets nothing; the owner gets its vector once.
            assert_eq!(l.take_pending(4), None);
            assert_eq!(l.take_pending(3), Some(0x60));
            assert_eq!(l.take_pending(3), None);
            let (d, a) = l.done(3, id).unwrap();
            assert_eq!((d.state, a), (LineState::Armed, Action::Mask(false)));
            assert_eq!(d.counts, LineCounts { fired: round, injected: round, done: round });
        }
        // DONE while armed changes nothing; rebinding changes the vector, keeps the state and
        // rewrites the entry as it is.
        assert_eq!(l.done(3, id).unwrap().1, Action::None);
        let (b, a) = l.bind(3, id, 0x61).unwrap();
        assert_eq!((b.state, b.guest_vector, a), (LineState::Armed, Some(0x61), Action::Mask(false)));
        l.fire(HOST_VECTOR_BASE);
        let (b, a) = l.bind(3, id, 0x62).unwrap();
        assert_eq!((b.state, a), (LineState::Pending, Action::Mask(true)));
        assert_eq!(l.take_pending(3), Some(0x62));
        let (b, a) = l.bind(3, id, 0x63).unwrap();
        assert_eq!((b.state, a), (LineState::InService, Action::Mask(true)));
    }

    #[test]
    fn an_unserviced_line_stays_masked_and_fires_once() {
        let mut l = Lines::new();
        l.add(1, bdf(2), IntPin::A, 17).unwrap();
        let id = u64::from(bdf(2).source_id());
        l.bind(1, id, 0x40).unwrap();
        assert!(matches!(l.fire(HOST_VECTOR_BASE), Fired::Line { .. }));
        assert_eq!(l.take_pending(1), Some(0x40));
        // The guest never calls DONE: the line stays InService (masked); nothing more is
        // injected even if the host saw the vector again.
        l.fire(HOST_VECTOR_BASE);
        assert_eq!(l.take_pending(1), None);
        assert_eq!(l.lines()[0].state, LineState::InService);
        // DONE before injection drops the pending interrupt and re-arms.
        l.done(1, id).unwrap();
        l.fire(HOST_VECTOR_BASE);
        let (d, a) = l.done(1, id).unwrap();
        assert_eq!((d.state, a, d.counts.injected), (LineState::Armed, Action::Mask(false), 1));
        assert_eq!(l.fire(0x99), Fired::Unknown);
    }

    #[test]
    fn refusals() {
        let mut l = Lines::new();
        l.add(1, bdf(2), IntPin::A, 17).unwrap();
        let id = u64::from(bdf(2).source_id());
        // Exceptions, out-of-range vectors and device ids.
        for v in [0u64, 31, 256, u64::MAX] {
            assert_eq!(l.bind(1, id, v), Err(HcallError::InvalidArgument), "vector {v}");
        }
        assert_eq!(l.bind(1, 1 << 16, 0x40), Err(HcallError::InvalidArgument));
        assert_eq!(l.done(1, 1 << 16), Err(HcallError::InvalidArgument));
        // Another tenant's device, or a device nobody has.
        assert_eq!(l.bind(2, id, 0x40), Err(HcallError::BadHandle));
        assert_eq!(l.done(2, id), Err(HcallError::BadHandle));
        assert_eq!(l.bind(1, u64::from(bdf(3).source_id()), 0x40), Err(HcallError::BadHandle));
        assert_eq!(l.add(1, bdf(2), IntPin::A, 17), Err(AddError::Duplicate));
        // A second tenant's device on the same GSI: neither may bind while both exist.
        l.add(2, bdf(6), IntPin::A, 17).unwrap();
        assert_eq!(l.bind(1, id, 0x40), Err(HcallError::Busy));
        assert_eq!(l.bind(2, u64::from(bdf(6).source_id()), 0x40), Err(HcallError::Busy));
        let gone = l.release(2);
        assert_eq!(gone.len(), 1);
        assert!(l.bind(1, id, 0x40).is_ok());
        // Two devices of one tenant on one GSI share an entry: refused too.
        l.add(1, bdf(7), IntPin::B, 17).unwrap();
        assert_eq!(l.bind(1, u64::from(bdf(7).source_id()), 0x41), Err(HcallError::Busy));
        // Host vectors run out after MAX_LINES lines.
        let mut full = Lines::new();
        for d in 0..MAX_LINES as u8 {
            full.add(1, bdf(d), IntPin::A, 16 + u32::from(d)).unwrap();
        }
        assert_eq!(full.add(1, bdf(20), IntPin::A, 40), Err(AddError::Full));
        // A released line's vector is reused.
        let first = full.release(1);
        assert_eq!(first.len(), MAX_LINES);
        let reused = full.add(1, bdf(20), IntPin::A, 16).unwrap();
        assert_eq!((reused.host_vector, reused.shared), (HOST_VECTOR_BASE, false));
    }
}
