//! ACPI tables the hypervisor reads (ACPI 6.5 chapter 5): the RSDP (v1 and v2), the root table
//! (XSDT, or RSDT on v1), lookup by signature, the MADT's interrupt-controller entries and the
//! MCFG's PCI Express configuration windows (PCI Firmware spec 3.3, 4.1.2).
//!
//! Memory is read through a caller-supplied function ([`ReadPhys`]), so the same code runs over
//! physical memory in the hypervisor and over byte maps in the tests. Firmware tables are
//! trusted no more than guests: lengths are bounded, checksums verified, a bad table is an error.

use alloc::vec::Vec;

/// Why a table could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No "RSD PTR " signature, too short, or a bad checksum.
    BadRsdp,
    /// The table at `address` could not be read or has an implausible length.
    Unreadable { address: u64 },
    BadChecksum { signature: [u8; 4], address: u64 },
    /// A table of the wrong signature was handed to a parser.
    WrongSignature { expected: [u8; 4], found: [u8; 4] },
    /// A table shorter than its fixed fields.
    Truncated { signature: [u8; 4], len: usize },
    NotFound { signature: [u8; 4] },
}

/// Reads `buf.len()` bytes of physical memory at an address; `false` if it cannot.
pub type ReadPhys<'a> = &'a mut dyn FnMut(u64, &mut [u8]) -> bool;

/// Tables longer than this are refused (DSDTs are the largest, well below).
pub const MAX_TABLE: usize = 1 << 20;
const HEADER: usize = 36;

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
}
fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}
fn sig_of(b: &[u8]) -> [u8; 4] {
    let mut s = [0u8; 4];
    if let Some(x) = b.get(..4) {
        s.copy_from_slice(x);
    }
    s
}

/// The Root System Description Pointer (5.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    pub revision: u8,
    pub oem_id: [u8; 6],
    pub rsdt: u32,
    /// The XSDT address (revision 2 and later, when its extended checksum holds).
    pub xsdt: Option<u64>,
}

impl Rsdp {
    pub fn parse(b: &[u8]) -> Result<Self, AcpiError> {
        if b.len() < 20 || &b[..8] != b"RSD PTR " || sum(&b[..20]) != 0 {
            return Err(AcpiError::BadRsdp);
        }
        let revision = b[15];
        let mut oem_id = [0u8; 6];
        oem_id.copy_from_slice(&b[9..15]);
        let xsdt = if revision >= 2 && b.len() >= 36 {
            let len = (u32_at(b, 20) as usize).clamp(36, b.len());
            if sum(&b[..len]) != 0 {
                return Err(AcpiError::BadRsdp);
            }
            Some(u64_at(b, 24)).filter(|&a| a != 0)
        } else {
            None
        };
        Ok(Self { revision, oem_id, rsdt: u32_at(b, 16), xsdt })
    }
}

/// Reads the whole table at `address` (header first, then its length) and checks its checksum.
pub fn read_table(read: ReadPhys<'_>, address: u64) -> Result<Vec<u8>, AcpiError> {
    let mut h = [0u8; HEADER];
    if !read(address, &mut h) {
        return Err(AcpiError::Unreadable { address });
    }
    let len = u32_at(&h, 4) as usize;
    if !(HEADER..=MAX_TABLE).contains(&len) {
        return Err(AcpiError::Unreadable { address });
    }
    let mut t = alloc::vec![0u8; len];
    if !read(address, &mut t) {
        return Err(AcpiError::Unreadable { address });
    }
    if sum(&t) != 0 {
        return Err(AcpiError::BadChecksum { signature: sig_of(&t), address });
    }
    Ok(t)
}

/// The tables the root table lists: signature and physical address of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub rsdp: Rsdp,
    pub entries: Vec<([u8; 4], u64)>,
}

impl Tables {
    /// Reads the XSDT (or the RSDT) and the signature of every table it lists. Entries whose
    /// signature cannot be read are left out.
    pub fn new(rsdp: &[u8], read: ReadPhys<'_>) -> Result<Self, AcpiError> {
        let rsdp = Rsdp::parse(rsdp)?;
        let (root, wide) = match rsdp.xsdt {
            Some(x) => (x, true),
            None => (u64::from(rsdp.rsdt), false),
        };
        let t = read_table(read, root)?;
        let expected = if wide { *b"XSDT" } else { *b"RSDT" };
        if sig_of(&t) != expected {
            return Err(AcpiError::WrongSignature { expected, found: sig_of(&t) });
        }
        let mut entries = Vec::new();
        for e in t[HEADER..].chunks_exact(if wide { 8 } else { 4 }) {
            let address = if wide { u64_at(e, 0) } else { u64::from(u32_at(e, 0)) };
            let mut sig = [0u8; 4];
            if address != 0 && read(address, &mut sig) {
                entries.push((sig, address));
            }
        }
        Ok(Self { rsdp, entries })
    }

    /// The address of the first table with this signature.
    pub fn find(&self, signature: &[u8; 4]) -> Option<u64> {
        self.entries.iter().find(|(s, _)| s == signature).map(|&(_, a)| a)
    }

    /// Reads and checks the first table with this signature.
    pub fn load(&self, signature: &[u8; 4], read: ReadPhys<'_>) -> Result<Vec<u8>, AcpiError> {
        let a = self.find(signature).ok_or(AcpiError::NotFound { signature: *signature })?;
        read_table(read, a)
    }
}

fn expect(t: &[u8], signature: &[u8; 4], min: usize) -> Result<(), AcpiError> {
    if sig_of(t) != *signature {
        return Err(AcpiError::WrongSignature { expected: *signature, found: sig_of(t) });
    }
    if t.len() < min {
        return Err(AcpiError::Truncated { signature: *signature, len: t.len() });
    }
    Ok(())
}

/// One MADT entry (5.2.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadtEntry {
    /// Type 0. `enabled`: usable now; `online_capable`: may be brought up.
    LocalApic { uid: u8, apic_id: u8, enabled: bool, online_capable: bool },
    /// Type 1.
    IoApic { id: u8, address: u32, gsi_base: u32 },
    /// Type 2: an ISA IRQ routed to another global system interrupt.
    InterruptOverride { bus: u8, source: u8, gsi: u32, flags: u16 },
    /// Type 4.
    LocalApicNmi { uid: u8, flags: u16, lint: u8 },
    /// Type 5: a 64-bit local APIC address replacing the header's.
    LocalApicAddressOverride { address: u64 },
    /// Type 9.
    LocalX2Apic { x2apic_id: u32, uid: u32, enabled: bool, online_capable: bool },
    /// Any other type, or a known type too short for its fields.
    Other { kind: u8, len: u8 },
}

/// The MADT ("APIC"): the local APIC address and an iterator over its entries.
#[derive(Clone, Copy, Debug)]
pub struct Madt<'a> {
    table: &'a [u8],
}

impl<'a> Madt<'a> {
    /// `table` is the whole MADT (as from [`Tables::load`]).
    pub fn new(table: &'a [u8]) -> Result<Self, AcpiError> {
        expect(table, b"APIC", HEADER + 8)?;
        Ok(Self { table })
    }
    pub fn local_apic_address(&self) -> u32 {
        u32_at(self.table, HEADER)
    }
    /// PCAT_COMPAT: the machine also has dual 8259 PICs.
    pub fn has_8259(&self) -> bool {
        u32_at(self.table, HEADER + 4) & 1 != 0
    }
    /// The entries in table order. A zero-length or overrunning entry ends the walk.
    pub fn entries(&self) -> MadtIter<'a> {
        MadtIter { rest: &self.table[HEADER + 8..] }
    }
}

/// Iterator over MADT entries.
#[derive(Clone, Debug)]
pub struct MadtIter<'a> {
    rest: &'a [u8],
}

impl Iterator for MadtIter<'_> {
    type Item = MadtEntry;
    fn next(&mut self) -> Option<MadtEntry> {
        let (&kind, &len) = (self.rest.first()?, self.rest.get(1)?);
        let l = usize::from(len);
        if l < 2 || l > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let e = &self.rest[..l];
        self.rest = &self.rest[l..];
        let flags = |at| u32_at(e, at);
        Some(match (kind, l) {
            (0, 8..) => LocalApicFlags::entry(e[2], e[3], flags(4)),
            (1, 12..) => MadtEntry::IoApic { id: e[2], address: u32_at(e, 4), gsi_base: u32_at(e, 8) },
            (2, 10..) => MadtEntry::InterruptOverride { bus: e[2], source: e[3], gsi: u32_at(e, 4), flags: u16_at(e, 8) },
            (4, 6..) => MadtEntry::LocalApicNmi { uid: e[2], flags: u16_at(e, 3), lint: e[5] },
            (5, 12..) => MadtEntry::LocalApicAddressOverride { address: u64_at(e, 4) },
            (9, 16..) => {
                let f = flags(8);
                MadtEntry::LocalX2Apic { x2apic_id: u32_at(e, 4), uid: u32_at(e, 12), enabled: f & 1 != 0, online_capable: f & 2 != 0 }
            }
            _ => MadtEntry::Other { kind, len },
        })
    }
}

struct LocalApicFlags;
impl LocalApicFlags {
    fn entry(uid: u8, apic_id: u8, f: u32) -> MadtEntry {
        MadtEntry::LocalApic { uid, apic_id, enabled: f & 1 != 0, online_capable: f & 2 != 0 }
    }
}

/// One MCFG allocation: the ECAM window of a PCI segment's bus range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McfgEntry {
    pub base: u64,
    pub segment: u16,
    pub start_bus: u8,
    pub end_bus: u8,
}

impl McfgEntry {
    /// The window's size in bytes (1 MiB per bus).
    pub fn len(&self) -> u64 {
        (u64::from(self.end_bus.saturating_sub(self.start_bus)) + 1) << 20
    }
    pub fn is_empty(&self) -> bool {
        self.end_bus < self.start_bus
    }
    /// The physical address of `bus:dev.func`'s configuration space, if it is in this window.
    pub fn config_address(&self, bus: u8, dev: u8, func: u8) -> Option<u64> {
        if bus < self.start_bus || bus > self.end_bus || dev > 31 || func > 7 {
            return None;
        }
        let off = (u64::from(bus - self.start_bus) << 20) | (u64::from(dev) << 15) | (u64::from(func) << 12);
        self.base.checked_add(off)
    }
}

/// The MCFG's allocations. Entries with an end bus below the start bus are left out.
pub fn mcfg_entries(table: &[u8]) -> Result<Vec<McfgEntry>, AcpiError> {
    expect(table, b"MCFG", HEADER + 8)?;
    Ok(table[HEADER + 8..]
        .chunks_exact(16)
        .map(|e| McfgEntry { base: u64_at(e, 0), segment: u16_at(e, 8), start_bus: e[10], end_bus: e[11] })
        .filter(|e| !e.is_empty() && e.base != 0)
        .collect())
}

/// One processor from the MADT, for starting the CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processor {
    pub apic_id: u32,
    pub uid: u32,
    /// Enabled now, or online capable (may be brought up).
    pub usable: bool,
}

impl Madt<'_> {
    /// The processors (local APIC and local x2APIC entries), in table order.
    pub fn processors(&self) -> Vec<Processor> {
        self.entries()
            .filter_map(|e| match e {
                MadtEntry::LocalApic { uid, apic_id, enabled, online_capable } => {
                    Some(Processor { apic_id: u32::from(apic_id), uid: u32::from(uid), usable: enabled || online_capable })
                }
                MadtEntry::LocalX2Apic { x2apic_id, uid, enabled, online_capable } => {
                    Some(Processor { apic_id: x2apic_id, uid, usable: enabled || online_capable })
                }
                _ => None,
            })
            .collect()
    }
}

/// The processors the firmware lists, from the RSDP through the XSDT/RSDT to the MADT.
pub fn processors(rsdp: &[u8], read: ReadPhys<'_>) -> Result<Vec<Processor>, AcpiError> {
    let tables = Tables::new(rsdp, &mut *read)?;
    let madt = tables.load(b"APIC", &mut *read)?;
    Ok(Madt::new(&madt)?.processors())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec;

    fn finish(mut t: Vec<u8>) -> Vec<u8> {
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[9] = 0;
        t[9] = 0u8.wrapping_sub(sum(&t));
        t
    }
    fn header(sig: &[u8; 4]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t[8] = 1;
        t
    }
    fn rsdp_v2(xsdt: u64) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[9..15].copy_from_slice(b"BOCHS ");
        r[15] = 2;
        r[20..24].copy_from_slice(&36u32.to_le_bytes());
        r[24..32].copy_from_slice(&xsdt.to_le_bytes());
        r[8] = 0u8.wrapping_sub(sum(&r[..20]));
        r[32] = 0u8.wrapping_sub(sum(&r));
        r
    }
    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = vec![0u8; 20];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        r[8] = 0u8.wrapping_sub(sum(&r));
        r
    }
    fn reader(mem: &BTreeMap<u64, Vec<u8>>) -> impl FnMut(u64, &mut [u8]) -> bool + '_ {
        move |addr, buf| match mem.get(&addr) {
            Some(t) if buf.len() <= t.len() => {
                buf.copy_from_slice(&t[..buf.len()]);
                true
            }
            _ => false,
        }
    }
    fn madt() -> Vec<u8> {
        let mut m = header(b"APIC");
        m.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]); // CPU 0 enabled
        m.extend_from_slice(&[0, 8, 1, 1, 2, 0, 0, 0]); // CPU 1 online-capable
        m.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]); // IOAPIC 0 @ fec00000
        m.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]); // IRQ0 -> GSI 2
        m.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]); // NMI on LINT1, all CPUs
        let mut x2 = vec![9, 16, 0, 0];
        x2.extend_from_slice(&300u32.to_le_bytes());
        x2.extend_from_slice(&1u32.to_le_bytes());
        x2.extend_from_slice(&7u32.to_le_bytes());
        m.extend(x2);
        m.extend_from_slice(&[0x7f, 3, 0]); // unknown type
        finish(m)
    }
    fn mcfg() -> Vec<u8> {
        let mut m = header(b"MCFG");
        m.extend_from_slice(&[0; 8]);
        let mut e = 0xb000_0000u64.to_le_bytes().to_vec();
        e.extend_from_slice(&[0, 0, 0, 0xff, 0, 0, 0, 0]);
        m.extend(e);
        let mut bad = 0xc000_0000u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&[1, 0, 5, 4, 0, 0, 0, 0]); // end < start: left out
        m.extend(bad);
        finish(m)
    }

    fn machine(v2: bool) -> (Vec<u8>, BTreeMap<u64, Vec<u8>>) {
        let mut mem = BTreeMap::new();
        mem.insert(0x2000, madt());
        mem.insert(0x3000, mcfg());
        mem.insert(0x4000, finish(header(b"FACP")));
        if v2 {
            let mut x = header(b"XSDT");
            for a in [0x4000u64, 0x2000, 0x3000, 0x9999_0000] {
                x.extend_from_slice(&a.to_le_bytes());
            }
            mem.insert(0x1000, finish(x));
            (rsdp_v2(0x1000), mem)
        } else {
            let mut r = header(b"RSDT");
            for a in [0x4000u32, 0x2000, 0x3000] {
                r.extend_from_slice(&a.to_le_bytes());
            }
            mem.insert(0x1000, finish(r));
            (rsdp_v1(0x1000), mem)
        }
    }

    #[test]
    fn finds_tables_through_xsdt_and_rsdt() {
        for v2 in [true, false] {
            let (rsdp, mem) = machine(v2);
            let t = Tables::new(&rsdp, &mut reader(&mem)).unwrap();
            assert_eq!(t.rsdp.revision, if v2 { 2 } else { 0 });
            assert_eq!(t.entries.len(), 3, "unreadable entries are left out");
            assert_eq!(t.find(b"APIC"), Some(0x2000));
            assert_eq!(t.find(b"DMAR"), None);
            assert_eq!(t.load(b"DMAR", &mut reader(&mem)), Err(AcpiError::NotFound { signature: *b"DMAR" }));
            let m = t.load(b"MCFG", &mut reader(&mem)).unwrap();
            assert_eq!(mcfg_entries(&m).unwrap(), vec![McfgEntry { base: 0xb000_0000, segment: 0, start_bus: 0, end_bus: 0xff }]);
        }
    }

    #[test]
    fn madt_iterator_yields_every_entry_kind() {
        let t = madt();
        let m = Madt::new(&t).unwrap();
        assert_eq!(m.local_apic_address(), 0xfee0_0000);
        assert!(m.has_8259());
        let e: Vec<_> = m.entries().collect();
        assert_eq!(
            e,
            vec![
                MadtEntry::LocalApic { uid: 0, apic_id: 0, enabled: true, online_capable: false },
                MadtEntry::LocalApic { uid: 1, apic_id: 1, enabled: false, online_capable: true },
                MadtEntry::IoApic { id: 0, address: 0xfec0_0000, gsi_base: 0 },
                MadtEntry::InterruptOverride { bus: 0, source: 0, gsi: 2, flags: 0 },
                MadtEntry::LocalApicNmi { uid: 0xff, flags: 0, lint: 1 },
                MadtEntry::LocalX2Apic { x2apic_id: 300, uid: 7, enabled: true, online_capable: false },
                MadtEntry::Other { kind: 0x7f, len: 3 },
            ]
        );
    }

    #[test]
    fn malformed_tables_are_errors() {
        let (mut rsdp, mut mem) = machine(true);
        assert_eq!(Tables::new(&rsdp[..12], &mut reader(&mem)), Err(AcpiError::BadRsdp));
        mem.get_mut(&0x2000).unwrap()[50] ^= 1;
        let t = Tables::new(&rsdp, &mut reader(&mem)).unwrap();
        assert_eq!(t.load(b"APIC", &mut reader(&mem)), Err(AcpiError::BadChecksum { signature: *b"APIC", address: 0x2000 }));
        mem.get_mut(&0x1000).unwrap()[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Tables::new(&rsdp, &mut reader(&mem)), Err(AcpiError::Unreadable { address: 0x1000 }));
        rsdp[33] ^= 1; // extended checksum
        assert_eq!(Rsdp::parse(&rsdp), Err(AcpiError::BadRsdp));
        let f = finish(header(b"FACP"));
        assert!(matches!(Madt::new(&f), Err(AcpiError::WrongSignature { .. })));
        assert!(matches!(mcfg_entries(&finish(header(b"MCFG"))), Err(AcpiError::Truncated { .. })));
        // An entry that claims more bytes than remain ends the walk.
        let mut m = header(b"APIC");
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0, 1, 40, 0]);
        let m = finish(m);
        assert_eq!(Madt::new(&m).unwrap().entries().count(), 1);
    }

    #[test]
    fn ecam_addresses() {
        let e = McfgEntry { base: 0xb000_0000, segment: 0, start_bus: 0, end_bus: 0xff };
        assert_eq!(e.len(), 256 << 20);
        assert_eq!(e.config_address(0, 3, 0), Some(0xb001_8000));
        assert_eq!(e.config_address(1, 0, 1), Some(0xb010_1000));
        assert_eq!(e.config_address(0, 32, 0), None);
        let e = McfgEntry { base: 0xe000_0000, segment: 0, start_bus: 0x10, end_bus: 0x1f };
        assert_eq!(e.config_address(0x0f, 0, 0), None);
        assert_eq!(e.config_address(0x11, 0, 0), Some(0xe010_0000));
    }
}

#[cfg(test)]
mod processor_tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec;

    fn finish(mut t: Vec<u8>) -> Vec<u8> {
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[9] = 0;
        let sum = t.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    fn header(sig: &[u8; 4]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t[8] = 1;
        t
    }

    /// A machine: RSDP v2 → XSDT at 0x1000 → (FACP at 0x2000, MADT at 0x3000).
    fn machine(madt_entries: &[Vec<u8>]) -> (Vec<u8>, BTreeMap<u64, Vec<u8>>) {
        let mut madt = header(b"APIC");
        madt.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        madt.extend_from_slice(&1u32.to_le_bytes());
        for e in madt_entries {
            madt.extend_from_slice(e);
        }
        let mut xsdt = header(b"XSDT");
        xsdt.extend_from_slice(&0x2000u64.to_le_bytes());
        xsdt.extend_from_slice(&0x3000u64.to_le_bytes());
        let mut mem = BTreeMap::new();
        mem.insert(0x1000, finish(xsdt));
        mem.insert(0x2000, finish(header(b"FACP")));
        mem.insert(0x3000, finish(madt));
        let mut rsdp = vec![0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[15] = 2;
        rsdp[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
        let s = rsdp[..20].iter().fold(0u8, |s, &x| s.wrapping_add(x));
        rsdp[8] = 0u8.wrapping_sub(s);
        let s = rsdp.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        rsdp[32] = 0u8.wrapping_sub(s);
        (rsdp, mem)
    }

    fn reader(mem: &BTreeMap<u64, Vec<u8>>) -> impl FnMut(u64, &mut [u8]) -> bool + '_ {
        move |addr, buf| match mem.get(&addr) {
            Some(t) if buf.len() <= t.len() => {
                buf.copy_from_slice(&t[..buf.len()]);
                true
            }
            _ => false,
        }
    }

    /// The processors of a MADT body (checksummed first, as `Madt::new` takes a whole table).
    fn finish_madt(t: Vec<u8>) -> Vec<Processor> {
        let t = finish(t);
        Madt::new(&t).map(|m| m.processors()).unwrap_or_default()
    }

    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    #[test]
    fn finds_local_apic_and_x2apic_processors() {
        let mut x2 = vec![9, 16, 0, 0];
        x2.extend_from_slice(&300u32.to_le_bytes());
        x2.extend_from_slice(&1u32.to_le_bytes());
        x2.extend_from_slice(&7u32.to_le_bytes());
        let ioapic = vec![1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];
        let (rsdp, mem) = machine(&[lapic(0, 0, 1), lapic(1, 2, 1), ioapic, lapic(2, 4, 0), x2]);
        let cpus = processors(&rsdp, &mut reader(&mem)).unwrap();
        assert_eq!(
            cpus,
            vec![
                Processor { apic_id: 0, uid: 0, usable: true },
                Processor { apic_id: 2, uid: 1, usable: true },
                Processor { apic_id: 4, uid: 2, usable: false },
                Processor { apic_id: 300, uid: 7, usable: true },
            ]
        );
    }

    #[test]
    fn bad_firmware_tables_are_errors() {
        let (mut rsdp, mut mem) = machine(&[lapic(0, 0, 1)]);
        assert_eq!(processors(&rsdp[..10], &mut reader(&mem)), Err(AcpiError::BadRsdp));
        mem.get_mut(&0x3000).unwrap()[40] ^= 0xff;
        assert_eq!(processors(&rsdp, &mut reader(&mem)), Err(AcpiError::BadChecksum { signature: *b"APIC", address: 0x3000 }));
        mem.get_mut(&0x3000).unwrap()[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(processors(&rsdp, &mut reader(&mem)), Err(AcpiError::Unreadable { address: 0x3000 }));
        mem.remove(&0x3000);
        assert_eq!(processors(&rsdp, &mut reader(&mem)), Err(AcpiError::NotFound { signature: *b"APIC" }));
        rsdp[0] = b'X';
        assert_eq!(processors(&rsdp, &mut reader(&mem)), Err(AcpiError::BadRsdp));
    }

    #[test]
    fn truncated_madt_entries_stop_the_walk() {
        let mut madt = header(b"APIC");
        madt.extend_from_slice(&[0; 8]);
        madt.extend_from_slice(&lapic(0, 1, 1));
        madt.extend_from_slice(&[0, 0]); // zero length: stop
        madt.extend_from_slice(&lapic(1, 2, 1));
        assert_eq!(finish_madt(madt), vec![Processor { apic_id: 1, uid: 0, usable: true }]);
        let mut short = header(b"APIC");
        short.extend_from_slice(&[0; 8]);
        short.extend_from_slice(&[0, 30, 1]);
        assert!(finish_madt(short).is_empty());
    }
}
