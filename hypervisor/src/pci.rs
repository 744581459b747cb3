//! PCI as plain logic (PCI Local Bus 3.0, PCIe Base 6.0 chapter 7): addresses, configuration
//! header decoding, BAR decoding and sizing, the capability list (MSI, MSI-X) and the registry
//! that records who owns each device: the hypervisor or exactly one tenant.
//!
//! Configuration space is reached through [`ConfigAccess`] (ECAM or port I/O in the hypervisor, a
//! fake in the tests). Values read from devices are never trusted to be well-formed: capability
//! walks are bounded, BAR sizes checked.

use alloc::vec::Vec;
use core::fmt;

/// A PCI function's address on segment 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    pub const fn new(bus: u8, dev: u8, func: u8) -> Option<Self> {
        if dev > 31 || func > 7 { None } else { Some(Self { bus, dev, func }) }
    }
    /// The requester id this function's DMA carries.
    pub const fn source_id(self) -> u16 {
        ((self.bus as u16) << 8) | ((self.dev as u16) << 3) | self.func as u16
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Configuration-space access. Offsets are byte offsets, 4-aligned, below 4096.
pub trait ConfigAccess {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32;
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32);
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }
    /// Writes 16 bits, keeping the other half of the dword.
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        let at = offset & !3;
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, at) & !(0xffff << shift);
        self.write32(bdf, at, old | (u32::from(value) << shift));
    }
}

/// Header offsets (type 0 and 1 share the first 16 bytes).
pub mod reg {
    pub const VENDOR: u16 = 0x00;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const CLASS: u16 = 0x08;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BAR0: u16 = 0x10;
    pub const SECONDARY_BUS: u16 = 0x19;
    pub const CAP_PTR: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3c;
}

/// Command register bits.
pub mod command {
    pub const IO: u16 = 1 << 0;
    pub const MEMORY: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// The header layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    Endpoint,
    PciBridge,
    CardBusBridge,
    Unknown(u8),
}

/// The decoded common header of a present function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub vendor: u16,
    pub device: u16,
    pub command: u16,
    pub status: u16,
    pub revision: u8,
    pub prog_if: u8,
    pub subclass: u8,
    pub class: u8,
    pub kind: HeaderKind,
    pub multifunction: bool,
    pub interrupt_pin: u8,
}

impl Header {
    /// `None` when no function answers (vendor 0xffff) or the id is 0.
    pub fn read(cfg: &mut dyn ConfigAccess, bdf: Bdf) -> Option<Self> {
        let id = cfg.read32(bdf, reg::VENDOR);
        let vendor = id as u16;
        if vendor == 0xffff || vendor == 0 {
            return None;
        }
        let cs = cfg.read32(bdf, reg::COMMAND);
        let class = cfg.read32(bdf, reg::CLASS);
        let ht = cfg.read8(bdf, reg::HEADER_TYPE);
        Some(Self {
            vendor,
            device: (id >> 16) as u16,
            command: cs as u16,
            status: (cs >> 16) as u16,
            revision: class as u8,
            prog_if: (class >> 8) as u8,
            subclass: (class >> 16) as u8,
            class: (class >> 24) as u8,
            kind: match ht & 0x7f {
                0 => HeaderKind::Endpoint,
                1 => HeaderKind::PciBridge,
                2 => HeaderKind::CardBusBridge,
                o => HeaderKind::Unknown(o),
            },
            multifunction: ht & 0x80 != 0,
            interrupt_pin: cfg.read8(bdf, reg::INTERRUPT_LINE + 1),
        })
    }
    /// Whether the status register says a capability list exists.
    pub fn has_capabilities(&self) -> bool {
        self.status & (1 << 4) != 0
    }
    /// A short name for the class (for the log).
    pub fn class_name(&self) -> &'static str {
        match (self.class, self.subclass, self.prog_if) {
            (0x01, 0x08, 0x02) => "NVMe controller",
            (0x01, 0x06, _) => "SATA controller",
            (0x01, _, _) => "storage controller",
            (0x02, _, _) => "network controller",
            (0x03, _, _) => "display controller",
            (0x06, 0x00, _) => "host bridge",
            (0x06, 0x01, _) => "ISA bridge",
            (0x06, 0x04, _) => "PCI bridge",
            (0x06, _, _) => "bridge",
            (0x0c, 0x05, _) => "SMBus controller",
            (0x0c, 0x03, _) => "USB controller",
            (0x12, _, _) => "processing accelerator",
            _ => "device",
        }
    }
    pub fn is_nvme(&self) -> bool {
        (self.class, self.subclass, self.prog_if) == (0x01, 0x08, 0x02)
    }
}

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    Memory { base: u64, size: u64, prefetchable: bool, wide: bool },
    Io { base: u32, size: u32 },
}

/// Why a BAR could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// BAR index beyond the header's BARs (6 for endpoints, 2 for bridges).
    NoSuchBar(u8),
    /// A 64-bit BAR in the last slot (its upper half would be outside the BAR array).
    WideInLastSlot(u8),
    /// Memory type 01 (below 1 MiB, reserved) or 11.
    ReservedType { index: u8, raw: u32 },
    /// The size mask read back is not of the form 1..10..0.
    BadSizeMask { index: u8, mask: u64 },
    /// base + size overflows.
    Overflow { index: u8 },
}

/// Size of a BAR from the value read back after writing all ones (the address bits only): the
/// lowest set bit. `None` when the mask has holes or is zero (an unimplemented BAR).
pub fn bar_size(mask: u64) -> Option<u64> {
    if mask == 0 {
        return None;
    }
    let size = mask & mask.wrapping_neg();
    // All bits above the lowest set one must be ones (within the implemented width).
    let top = 64 - mask.leading_zeros();
    let ones_expected = if top == 64 { !(size - 1) } else { ((1u64 << top) - 1) & !(size - 1) };
    (mask == ones_expected).then_some(size)
}

/// Decodes BAR `index`, sizing it by writing all ones and restoring the original value. Memory
/// decoding must be off while this runs (the caller clears the command register's bits).
/// Returns the BAR (or `None` if unimplemented) and how many slots it used (2 for 64-bit).
pub fn read_bar(cfg: &mut dyn ConfigAccess, bdf: Bdf, kind: HeaderKind, index: u8) -> Result<(Option<Bar>, u8), BarError> {
    let count = match kind {
        HeaderKind::Endpoint => 6,
        HeaderKind::PciBridge => 2,
        _ => 0,
    };
    if index >= count {
        return Err(BarError::NoSuchBar(index));
    }
    let off = reg::BAR0 + 4 * u16::from(index);
    let raw = cfg.read32(bdf, off);
    cfg.write32(bdf, off, u32::MAX);
    let back = cfg.read32(bdf, off);
    cfg.write32(bdf, off, raw);
    if raw & 1 == 1 {
        let mask = u64::from(back & !3) | 0xffff_ffff_0000_0000;
        let mask = if back & !3 == 0 { 0 } else { mask };
        // I/O BARs may implement only 16 address bits: treat the upper half as ones.
        let m16 = if mask != 0 && back & 0xffff_0000 == 0 { mask | 0xffff_0000 } else { mask };
        return Ok(match bar_size(m16) {
            Some(size) => (Some(Bar::Io { base: raw & !3, size: size as u32 }), 1),
            None => (None, 1),
        });
    }
    let prefetchable = raw & 8 != 0;
    match (raw >> 1) & 3 {
        0 => {
            let mask = if back & !0xf == 0 { 0 } else { u64::from(back & !0xf) | 0xffff_ffff_0000_0000 };
            match bar_size(mask) {
                None => Ok((None, 1)),
                Some(size) => {
                    let base = u64::from(raw & !0xf);
                    base.checked_add(size).ok_or(BarError::Overflow { index })?;
                    Ok((Some(Bar::Memory { base, size, prefetchable, wide: false }), 1))
                }
            }
        }
        2 => {
            if index + 1 >= count {
                return Err(BarError::WideInLastSlot(index));
            }
            let hi_off = off + 4;
            let raw_hi = cfg.read32(bdf, hi_off);
            cfg.write32(bdf, hi_off, u32::MAX);
            let back_hi = cfg.read32(bdf, hi_off);
            cfg.write32(bdf, hi_off, raw_hi);
            let mask = (u64::from(back_hi) << 32) | u64::from(back & !0xf);
            match bar_size(mask) {
                None if mask == 0 => Ok((None, 2)),
                None => Err(BarError::BadSizeMask { index, mask }),
                Some(size) => {
                    let base = (u64::from(raw_hi) << 32) | u64::from(raw & !0xf);
                    base.checked_add(size).ok_or(BarError::Overflow { index })?;
                    Ok((Some(Bar::Memory { base, size, prefetchable, wide: true }), 2))
                }
            }
        }
        _ => Err(BarError::ReservedType { index, raw }),
    }
}

/// All BARs of a function, by slot (the upper half of a 64-bit BAR is `None`). Memory and I/O
/// decoding are switched off while sizing and the command register restored after.
pub fn read_bars(cfg: &mut dyn ConfigAccess, bdf: Bdf, kind: HeaderKind) -> Vec<(u8, Result<Bar, BarError>)> {
    let cmd = cfg.read16(bdf, reg::COMMAND);
    cfg.write16(bdf, reg::COMMAND, cmd & !(command::MEMORY | command::IO));
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match read_bar(cfg, bdf, kind, i) {
            Err(BarError::NoSuchBar(_)) => break,
            Err(e) => {
                out.push((i, Err(e)));
                i += 1;
            }
            Ok((bar, used)) => {
                if let Some(b) = bar {
                    out.push((i, Ok(b)));
                }
                i += used;
            }
        }
    }
    cfg.write16(bdf, reg::COMMAND, cmd);
    out
}

/// Capability ids (PCI Code and ID Assignment spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapId {
    PowerManagement,
    Msi,
    Vendor,
    PciExpress,
    MsiX,
    Other(u8),
}

impl CapId {
    pub fn from_u8(v: u8) -> Self {
        match v {
            0x01 => Self::PowerManagement,
            0x05 => Self::Msi,
            0x09 => Self::Vendor,
            0x10 => Self::PciExpress,
            0x11 => Self::MsiX,
            o => Self::Other(o),
        }
    }
}

/// Walks the capability list: (id, offset) pairs. Bounded to 48 entries (the most that fit in
/// 192 bytes) and to offsets inside the device-specific area, so a looping or wild list ends.
pub fn capabilities(cfg: &mut dyn ConfigAccess, bdf: Bdf) -> Vec<(CapId, u8)> {
    let mut out = Vec::new();
    let mut ptr = cfg.read8(bdf, reg::CAP_PTR) & !3;
    while ptr >= 0x40 && out.len() < 48 {
        let v = cfg.read16(bdf, u16::from(ptr));
        out.push((CapId::from_u8(v as u8), ptr));
        ptr = ((v >> 8) as u8) & !3;
    }
    out
}

/// The MSI capability (PCI 3.0 6.8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCap {
    pub offset: u8,
    pub enabled: bool,
    /// Vectors the function asks for (1..=32).
    pub vectors_capable: u8,
    pub wide_address: bool,
    pub per_vector_masking: bool,
}

impl MsiCap {
    pub fn read(cfg: &mut dyn ConfigAccess, bdf: Bdf, offset: u8) -> Self {
        let ctl = cfg.read16(bdf, u16::from(offset) + 2);
        Self {
            offset,
            enabled: ctl & 1 != 0,
            vectors_capable: 1 << ((ctl >> 1) & 7).min(5),
            wide_address: ctl & (1 << 7) != 0,
            per_vector_masking: ctl & (1 << 8) != 0,
        }
    }
}

/// The MSI-X capability (PCI 3.0 6.8.2): where the table and the pending-bit array live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    pub offset: u8,
    pub enabled: bool,
    pub function_masked: bool,
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixCap {
    pub fn read(cfg: &mut dyn ConfigAccess, bdf: Bdf, offset: u8) -> Self {
        let ctl = cfg.read16(bdf, u16::from(offset) + 2);
        let table = cfg.read32(bdf, u16::from(offset) + 4);
        let pba = cfg.read32(bdf, u16::from(offset) + 8);
        Self {
            offset,
            enabled: ctl & (1 << 15) != 0,
            function_masked: ctl & (1 << 14) != 0,
            table_size: (ctl & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
            pba_bar: (pba & 7) as u8,
            pba_offset: pba & !7,
        }
    }
    /// Whether the table (16 bytes per entry) fits inside a BAR of `bar_size` bytes.
    pub fn table_fits(&self, bar_size: u64) -> bool {
        u64::from(self.table_offset) + 16 * u64::from(self.table_size) <= bar_size
    }
}

/// Who may use a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// No one yet: no DMA (no IOMMU domain), no driver.
    Unassigned,
    Hypervisor,
    /// Passed through to this tenant.
    Tenant(u32),
}

/// A device known to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub bdf: Bdf,
    pub header: Header,
    pub owner: Owner,
}

/// Why an ownership change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnershipError {
    UnknownDevice(Bdf),
    /// The device already has another owner; release it first.
    AlreadyOwned { bdf: Bdf, owner: Owner },
    /// Releasing on behalf of someone who does not own it.
    NotOwner { bdf: Bdf, owner: Owner },
}

/// Every function found at enumeration and its single owner.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    devices: Vec<Device>,
}

impl Registry {
    pub const fn new() -> Self {
        Self { devices: Vec::new() }
    }
    /// Records a function found at enumeration, unassigned. Re-adding replaces the header.
    pub fn add(&mut self, bdf: Bdf, header: Header) {
        match self.devices.iter_mut().find(|d| d.bdf == bdf) {
            Some(d) => d.header = header,
            None => self.devices.push(Device { bdf, header, owner: Owner::Unassigned }),
        }
    }
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }
    pub fn get(&self, bdf: Bdf) -> Option<&Device> {
        self.devices.iter().find(|d| d.bdf == bdf)
    }
    pub fn find(&self, mut pred: impl FnMut(&Header) -> bool) -> Option<&Device> {
        self.devices.iter().find(|d| pred(&d.header))
    }
    /// Gives an unassigned device to `owner` (the hypervisor or one tenant).
    pub fn claim(&mut self, bdf: Bdf, owner: Owner) -> Result<(), OwnershipError> {
        let d = self.devices.iter_mut().find(|d| d.bdf == bdf).ok_or(OwnershipError::UnknownDevice(bdf))?;
        match d.owner {
            Owner::Unassigned => {
                d.owner = owner;
                Ok(())
            }
            o if o == owner => Ok(()),
            o => Err(OwnershipError::AlreadyOwned { bdf, owner: o }),
        }
    }
    /// Returns a device from `owner` to the unassigned pool.
    pub fn release(&mut self, bdf: Bdf, owner: Owner) -> Result<(), OwnershipError> {
        let d = self.devices.iter_mut().find(|d| d.bdf == bdf).ok_or(OwnershipError::UnknownDevice(bdf))?;
        if d.owner != owner {
            return Err(OwnershipError::NotOwner { bdf, owner: d.owner });
        }
        d.owner = Owner::Unassigned;
        Ok(())
    }
    /// The devices a tenant owns.
    pub fn owned_by(&self, owner: Owner) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(move |d| d.owner == owner)
    }
}

/// How a manifest names a device to pass through: its address (`bb:dd.f`, hexadecimal bus and
/// device as `lspci` prints them) or its vendor and device id (`vvvv:dddd`, the first match in
/// enumeration order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSelector {
    Address(Bdf),
    Id { vendor: u16, device: u16 },
}

/// Why a device selector could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorError {
    /// Neither `bb:dd.f` nor `vvvv:dddd`.
    Syntax,
    /// Device above 0x1f or function above 7.
    OutOfRange,
    /// Vendor 0xffff (no device answers with it) or 0.
    BadVendor,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Syntax => "expected a PCI address `bb:dd.f` (hex bus and device, function 0-7) or `vendor:device` (4 hex digits each)",
            Self::OutOfRange => "device number above 1f or function above 7",
            Self::BadVendor => "vendor id 0000 or ffff names no device",
        })
    }
}

fn hex_field(s: &str, digits: usize) -> Result<u16, SelectorError> {
    if s.len() != digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SelectorError::Syntax);
    }
    u16::from_str_radix(s, 16).map_err(|_| SelectorError::Syntax)
}

impl DeviceSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let (a, b) = s.split_once(':').ok_or(SelectorError::Syntax)?;
        if let Some((dev, func)) = b.split_once('.') {
            let bus = hex_field(a, 2)? as u8;
            let dev = hex_field(dev, 2)?;
            if func.len() != 1 || !func.as_bytes()[0].is_ascii_digit() {
                return Err(SelectorError::Syntax);
            }
            let func = u16::from(func.as_bytes()[0] - b'0');
            let dev = u8::try_from(dev).map_err(|_| SelectorError::OutOfRange)?;
            return Bdf::new(bus, dev, func as u8).map(Self::Address).ok_or(SelectorError::OutOfRange);
        }
        let vendor = hex_field(a, 4)?;
        let device = hex_field(b, 4)?;
        if vendor == 0 || vendor == 0xffff {
            return Err(SelectorError::BadVendor);
        }
        Ok(Self::Id { vendor, device })
    }

    /// The registry entry this selector names.
    pub fn find<'r>(&self, registry: &'r Registry) -> Option<&'r Device> {
        match *self {
            Self::Address(bdf) => registry.get(bdf),
            Self::Id { vendor, device } => registry.find(|h| h.vendor == vendor && h.device == device),
        }
    }
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(b) => write!(f, "{b}"),
            Self::Id { vendor, device } => write!(f, "{vendor:04x}:{device:04x}"),
        }
    }
}

/// One BAR of a passed-through device as it appears to its tenant: the same physical window,
/// mapped uncached into the tenant's EPT at `guest_phys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarWindow {
    pub index: u8,
    pub host_phys: u64,
    pub guest_phys: u64,
    /// Rounded up to whole 4 KiB pages.
    pub len: u64,
}

/// Why a device cannot be passed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassthroughError {
    /// No IOMMU would confine the device's DMA, and the manifest did not explicitly allow it.
    NoIommu(Bdf),
    /// The device is not assigned to this tenant in the registry.
    NotOwned { bdf: Bdf, owner: Owner },
    /// A memory BAR that shares its 4 KiB page with something else (base not page-aligned).
    SharedPage { bdf: Bdf, index: u8, base: u64 },
    /// The hypervisor keeps this kind of function: host, ISA and PCI bridges (their windows route
    /// everyone's traffic) and IOMMUs (class 08h/06h).
    Infrastructure { bdf: Bdf, class: u8, subclass: u8 },
    /// The windows would end above `limit`, the end of what the tenant's page tables reach.
    NoRoom { bdf: Bdf, end: u64, limit: u64 },
}

impl fmt::Display for PassthroughError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoIommu(b) => write!(f, "{b}: no IOMMU to confine its DMA, and the manifest does not set passthrough_without_iommu"),
            Self::NotOwned { bdf, owner } => write!(f, "{bdf} is not this tenant's (owner: {owner:?})"),
            Self::SharedPage { bdf, index, base } => write!(f, "{bdf} BAR{index} at {base:#x} shares a 4 KiB page with other registers"),
            Self::Infrastructure { bdf, class, subclass } => {
                write!(f, "{bdf} (class {class:02x}:{subclass:02x}) is platform infrastructure the hypervisor keeps")
            }
            Self::NoRoom { bdf, end, limit } => write!(f, "{bdf}: its BARs would end at guest-physical {end:#x}, above {limit:#x}"),
        }
    }
}

/// Whether a function may be given to a tenant at all (whoever owns it now): bridges and IOMMUs
/// stay with the hypervisor (PCI Code and ID Assignment: class 06h bridges, 08h/06h IOMMU).
pub fn assignable(bdf: Bdf, h: &Header) -> Result<(), PassthroughError> {
    let infra = h.class == 0x06 || (h.class, h.subclass) == (0x08, 0x06) || h.kind != HeaderKind::Endpoint;
    if infra {
        Err(PassthroughError::Infrastructure { bdf, class: h.class, subclass: h.subclass })
    } else {
        Ok(())
    }
}

/// Whether passing a device through is allowed, and with what warning: with an IOMMU always;
/// without one only if the manifest explicitly allows it (for tests in emulators without an
/// IOMMU), and then the device can DMA anywhere, which the caller must log.
pub fn passthrough_allowed(bdf: Bdf, iommu: bool, allow_without_iommu: bool) -> Result<Option<&'static str>, PassthroughError> {
    match (iommu, allow_without_iommu) {
        (true, _) => Ok(None),
        (false, true) => Ok(Some("passthrough without an IOMMU: the device's DMA is not confined (allowed by the manifest for testing)")),
        (false, false) => Err(PassthroughError::NoIommu(bdf)),
    }
}

/// The guest-physical windows for a tenant's device: its memory BARs placed from `guest_base`
/// up, each at a guest-physical address aligned to its own size (BAR sizes are powers of two,
/// so offsets inside the BAR keep their alignment), page-granular, all below `limit`. Port I/O
/// BARs are not forwarded (tenants get no I/O ports) and are left out.
pub fn passthrough_windows(registry: &Registry, bdf: Bdf, tenant: u32, bars: &[(u8, Bar)], guest_base: u64, limit: u64) -> Result<Vec<BarWindow>, PassthroughError> {
    let owner = registry.get(bdf).map_or(Owner::Unassigned, |d| d.owner);
    if owner != Owner::Tenant(tenant) {
        return Err(PassthroughError::NotOwned { bdf, owner });
    }
    let mut out = Vec::new();
    let mut at = guest_base;
    for &(index, bar) in bars {
        if let Bar::Memory { base, size, .. } = bar {
            if base % 4096 != 0 {
                return Err(PassthroughError::SharedPage { bdf, index, base });
            }
            let len = size.next_multiple_of(4096);
            let gpa = at.checked_next_multiple_of(len).ok_or(PassthroughError::NoRoom { bdf, end: u64::MAX, limit })?;
            let end = gpa.checked_add(len).filter(|&e| e <= limit).ok_or(PassthroughError::NoRoom { bdf, end: gpa.saturating_add(len), limit })?;
            out.push(BarWindow { index, host_phys: base, guest_phys: gpa, len });
            at = end;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec;

    /// A fake function: config dwords, and BAR size masks applied on write.
    #[derive(Default)]
    struct Fake {
        space: BTreeMap<(Bdf, u16), u32>,
        /// For BAR offsets: which bits are writable (the address bits).
        writable: BTreeMap<(Bdf, u16), u32>,
    }
    impl ConfigAccess for Fake {
        fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
            *self.space.get(&(bdf, offset)).unwrap_or(&0xffff_ffff)
        }
        fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
            let old = self.read32(bdf, offset);
            let w = *self.writable.get(&(bdf, offset)).unwrap_or(&0xffff_ffff);
            self.space.insert((bdf, offset), (old & !w) | (value & w));
        }
    }

    fn nvme() -> (Fake, Bdf) {
        let b = Bdf::new(0, 3, 0).unwrap();
        let mut f = Fake::default();
        f.space.insert((b, 0), 0x0010_1b36);
        f.space.insert((b, 4), 0x0010_0007);
        f.space.insert((b, 8), 0x0108_0202);
        f.space.insert((b, 0xc), 0);
        // BAR0/1: 64-bit memory, 16 KiB at 0x1_fe00_0000 (above 4 GiB).
        f.space.insert((b, 0x10), 0xfe00_0004);
        f.writable.insert((b, 0x10), !0x3fff & !0xf);
        f.space.insert((b, 0x14), 0x1);
        f.writable.insert((b, 0x14), 0xffff_ffff);
        // BAR2: unimplemented; BAR3: I/O 32 bytes at 0xc000; BAR4: 32-bit prefetchable 1 MiB.
        f.space.insert((b, 0x18), 0);
        f.writable.insert((b, 0x18), 0);
        f.space.insert((b, 0x1c), 0xc001);
        f.writable.insert((b, 0x1c), 0xffe0);
        f.space.insert((b, 0x20), 0xfd00_0008);
        f.writable.insert((b, 0x20), 0xfff0_0000);
        f.space.insert((b, 0x24), 0);
        f.writable.insert((b, 0x24), 0);
        // Capabilities: 0x40 MSI-X -> 0x60 MSI -> 0x80 PCIe -> end.
        f.space.insert((b, 0x34), 0x40);
        f.space.insert((b, 0x40), 0x8040_6011); // MSI-X, next 0x60, ctl: 65 vectors? (0x40 -> 65)
        f.space.insert((b, 0x44), 0x0000_2000); // table in BAR0 at 0x2000
        f.space.insert((b, 0x48), 0x0000_3000); // PBA in BAR0 at 0x3000
        f.space.insert((b, 0x60), 0x0186_8005); // MSI, next 0x80, ctl 0x0186: 64-bit, 8 vectors, PVM
        f.space.insert((b, 0x80), 0x0002_0010); // PCIe, end
        (f, b)
    }

    #[test]
    fn decodes_header_and_class() {
        let (mut f, b) = nvme();
        let h = Header::read(&mut f, b).unwrap();
        assert_eq!((h.vendor, h.device, h.class, h.subclass, h.prog_if), (0x1b36, 0x0010, 1, 8, 2));
        assert!(h.is_nvme() && h.has_capabilities() && !h.multifunction);
        assert_eq!(h.kind, HeaderKind::Endpoint);
        assert_eq!(h.class_name(), "NVMe controller");
        assert_eq!(Header::read(&mut f, Bdf::new(0, 4, 0).unwrap()), None);
        assert_eq!(b.source_id(), 0x18);
        assert_eq!(std::format!("{}", Bdf::new(0x12, 0x1f, 7).unwrap()), "12:1f.7");
    }

    #[test]
    fn bar_size_math() {
        assert_eq!(bar_size(0xffff_ffff_ffff_c000), Some(0x4000));
        assert_eq!(bar_size(0xffff_ffff_fff0_0000), Some(1 << 20));
        assert_eq!(bar_size(0x8000_0000_0000_0000), Some(1 << 63));
        assert_eq!(bar_size(0), None);
        assert_eq!(bar_size(0xffff_ffff_ff0f_0000), None, "a hole in the mask");
    }

    #[test]
    fn sizes_every_bar_kind_and_restores_registers() {
        let (mut f, b) = nvme();
        let bars = read_bars(&mut f, b, HeaderKind::Endpoint);
        assert_eq!(
            bars,
            vec![
                (0, Ok(Bar::Memory { base: 0x1_fe00_0000, size: 0x4000, prefetchable: false, wide: true })),
                (3, Ok(Bar::Io { base: 0xc000, size: 32 })),
                (4, Ok(Bar::Memory { base: 0xfd00_0000, size: 1 << 20, prefetchable: true, wide: false })),
            ]
        );
        assert_eq!(f.read32(b, 0x10), 0xfe00_0004);
        assert_eq!(f.read32(b, 0x14), 1);
        assert_eq!(f.read32(b, 4) & 0xffff, 7, "command register restored");
        // A 64-bit BAR in the last slot, and a reserved memory type.
        f.space.insert((b, 0x24), 0x4);
        assert_eq!(read_bar(&mut f, b, HeaderKind::Endpoint, 5), Err(BarError::WideInLastSlot(5)));
        f.space.insert((b, 0x24), 0x6);
        assert_eq!(read_bar(&mut f, b, HeaderKind::Endpoint, 5), Err(BarError::ReservedType { index: 5, raw: 6 }));
        assert_eq!(read_bar(&mut f, b, HeaderKind::PciBridge, 2), Err(BarError::NoSuchBar(2)));
    }

    #[test]
    fn walks_capabilities_and_decodes_msi_and_msix() {
        let (mut f, b) = nvme();
        let caps = capabilities(&mut f, b);
        assert_eq!(caps, vec![(CapId::MsiX, 0x40), (CapId::Msi, 0x60), (CapId::PciExpress, 0x80)]);
        let x = MsixCap::read(&mut f, b, 0x40);
        assert_eq!((x.enabled, x.function_masked, x.table_size), (true, false, 65));
        assert_eq!((x.table_bar, x.table_offset, x.pba_bar, x.pba_offset), (0, 0x2000, 0, 0x3000));
        assert!(x.table_fits(0x4000) && !x.table_fits(0x2100));
        let m = MsiCap::read(&mut f, b, 0x60);
        assert_eq!((m.enabled, m.vectors_capable, m.wide_address, m.per_vector_masking), (false, 8, true, true));
        // A list that loops back on itself ends after 48 entries.
        f.space.insert((b, 0x40), 0x0000_4011);
        assert_eq!(capabilities(&mut f, b).len(), 48);
        // A pointer into the header ends the walk.
        f.space.insert((b, 0x34), 0x10);
        assert!(capabilities(&mut f, b).is_empty());
    }

    #[test]
    fn every_device_has_at_most_one_owner() {
        let (mut f, b) = nvme();
        let h = Header::read(&mut f, b).unwrap();
        let mut r = Registry::new();
        r.add(b, h);
        let gpu = Bdf::new(0, 4, 0).unwrap();
        r.add(gpu, h);
        assert_eq!(r.get(b).unwrap().owner, Owner::Unassigned);
        r.claim(b, Owner::Hypervisor).unwrap();
        r.claim(b, Owner::Hypervisor).unwrap();
        assert_eq!(r.claim(b, Owner::Tenant(1)), Err(OwnershipError::AlreadyOwned { bdf: b, owner: Owner::Hypervisor }));
        r.claim(gpu, Owner::Tenant(1)).unwrap();
        assert_eq!(r.claim(gpu, Owner::Tenant(2)), Err(OwnershipError::AlreadyOwned { bdf: gpu, owner: Owner::Tenant(1) }));
        assert_eq!(r.release(gpu, Owner::Tenant(2)), Err(OwnershipError::NotOwner { bdf: gpu, owner: Owner::Tenant(1) }));
        assert_eq!(r.owned_by(Owner::Tenant(1)).count(), 1);
        r.release(gpu, Owner::Tenant(1)).unwrap();
        r.claim(gpu, Owner::Tenant(2)).unwrap();
        let nowhere = Bdf::new(9, 0, 0).unwrap();
        assert_eq!(r.claim(nowhere, Owner::Hypervisor), Err(OwnershipError::UnknownDevice(nowhere)));
    }

    #[test]
    fn passthrough_needs_an_iommu_ownership_and_page_aligned_bars() {
        let (mut f, b) = nvme();
        let h = Header::read(&mut f, b).unwrap();
        let mut r = Registry::new();
        r.add(b, h);
        assert_eq!(passthrough_allowed(b, true, false), Ok(None));
        assert!(passthrough_allowed(b, false, true).unwrap().unwrap().contains("not confined"));
        assert_eq!(passthrough_allowed(b, false, false), Err(PassthroughError::NoIommu(b)));
        let bars = [(0, Bar::Memory { base: 0xfebd_4000, size: 0x4000, prefetchable: false, wide: true })];
        let gb = 1 << 30;
        assert_eq!(passthrough_windows(&r, b, 1, &bars, 0x80_0000, gb), Err(PassthroughError::NotOwned { bdf: b, owner: Owner::Unassigned }));
        r.claim(b, Owner::Tenant(1)).unwrap();
        assert_eq!(
            passthrough_windows(&r, b, 1, &bars, 0x80_0000, gb),
            Ok(vec![BarWindow { index: 0, host_phys: 0xfebd_4000, guest_phys: 0x80_0000, len: 0x4000 }])
        );
        assert!(matches!(passthrough_windows(&r, b, 2, &bars, 0x80_0000, gb), Err(PassthroughError::NotOwned { .. })));
        let small = [(2, Bar::Memory { base: 0xfebd_9800, size: 0x100, prefetchable: false, wide: false })];
        assert_eq!(passthrough_windows(&r, b, 1, &small, 0x80_0000, gb), Err(PassthroughError::SharedPage { bdf: b, index: 2, base: 0xfebd_9800 }));
        // I/O BARs are left out; each memory BAR lands at a GPA aligned to its size, packed.
        let mixed = [
            (0, Bar::Memory { base: 0xfeb8_0000, size: 0x2_0000, prefetchable: false, wide: false }),
            (1, Bar::Io { base: 0xc000, size: 64 }),
            (2, Bar::Memory { base: 0xfebf_0000, size: 0x1000, prefetchable: false, wide: false }),
            (4, Bar::Memory { base: 0xfe00_0000, size: 0x10_0000, prefetchable: true, wide: true }),
        ];
        assert_eq!(
            passthrough_windows(&r, b, 1, &mixed, 0x81_0000, gb),
            Ok(vec![
                BarWindow { index: 0, host_phys: 0xfeb8_0000, guest_phys: 0x82_0000, len: 0x2_0000 },
                BarWindow { index: 2, host_phys: 0xfebf_0000, guest_phys: 0x84_0000, len: 0x1000 },
                BarWindow { index: 4, host_phys: 0xfe00_0000, guest_phys: 0x90_0000, len: 0x10_0000 },
            ])
        );
        // Windows that would leave the tenant's identity-mapped first GiB are refused.
        assert_eq!(
            passthrough_windows(&r, b, 1, &mixed, gb - 0x10_0000, gb),
            Err(PassthroughError::NoRoom { bdf: b, end: gb + 0x10_0000, limit: gb })
        );
    }

    #[test]
    fn bridges_and_iommus_are_never_assignable() {
        let (mut f, b) = nvme();
        let mut h = Header::read(&mut f, b).unwrap();
        assert_eq!(assignable(b, &h), Ok(()));
        h.class = 0x06;
        h.subclass = 0x00;
        assert_eq!(assignable(b, &h), Err(PassthroughError::Infrastructure { bdf: b, class: 6, subclass: 0 }));
        (h.class, h.subclass) = (0x08, 0x06);
        assert!(assignable(b, &h).is_err());
        (h.class, h.subclass, h.kind) = (0x02, 0x00, HeaderKind::PciBridge);
        assert!(assignable(b, &h).is_err());
    }

    #[test]
    fn device_selectors_parse_addresses_and_ids() {
        assert_eq!(DeviceSelector::parse("00:03.0"), Ok(DeviceSelector::Address(Bdf::new(0, 3, 0).unwrap())));
        assert_eq!(DeviceSelector::parse("1a:1f.7"), Ok(DeviceSelector::Address(Bdf::new(0x1a, 0x1f, 7).unwrap())));
        assert_eq!(DeviceSelector::parse("8086:100e"), Ok(DeviceSelector::Id { vendor: 0x8086, device: 0x100e }));
        assert_eq!(DeviceSelector::parse("00:20.0"), Err(SelectorError::OutOfRange));
        assert_eq!(DeviceSelector::parse("00:03.8"), Err(SelectorError::OutOfRange));
        assert_eq!(DeviceSelector::parse("ffff:0001"), Err(SelectorError::BadVendor));
        for bad in ["", "0:3.0", "00:03", "00-03.0", "00:03.", "00:03.00", "g0:03.0", "8086:100", "8086:100e:1", "+0:03.0"] {
            assert_eq!(DeviceSelector::parse(bad), Err(SelectorError::Syntax), "{bad:?}");
        }
        for s in ["00:03.0", "8086:100e"] {
            assert_eq!(std::format!("{}", DeviceSelector::parse(s).unwrap()), s);
        }
        let (mut f, b) = nvme();
        let mut r = Registry::new();
        r.add(b, Header::read(&mut f, b).unwrap());
        assert_eq!(DeviceSelector::parse("1b36:0010").unwrap().find(&r).map(|d| d.bdf), Some(b));
        assert_eq!(DeviceSelector::parse("00:03.0").unwrap().find(&r).map(|d| d.bdf), Some(b));
        assert!(DeviceSelector::parse("8086:100e").unwrap().find(&r).is_none());
    }
}
