//! The ACPI DMA Remapping Reporting table (VT-d spec chapter 8): remapping hardware units
//! (DRHD), reserved memory regions that devices keep using (RMRR) and their device scopes.
//!
//! The table comes from firmware and is trusted no more than a guest: every length is bounded
//! by its parent, a malformed structure is an error naming its offset, never a panic.

use alloc::vec::Vec;

use crate::addr::SourceId;

/// Why a DMAR table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarError {
    /// Shorter than the fixed 48-byte header, or its length field disagrees with the bytes.
    Truncated { len: usize },
    BadSignature([u8; 4]),
    BadChecksum,
    /// A remapping structure at `offset` whose length is below its minimum or runs past the end.
    BadStructure { offset: usize, kind: u16, len: u16 },
    /// A device scope at `offset` with a bad length or an odd path.
    BadScope { offset: usize, len: u8 },
    /// A DRHD whose register base is not page-aligned or zero.
    BadRegisterBase { offset: usize, base: u64 },
    /// An RMRR whose limit is below its base or that is not 4 KiB-granular.
    BadRmrr { offset: usize, base: u64, limit: u64 },
}

/// DMAR flags (8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmarFlags {
    pub intr_remap: bool,
    pub x2apic_opt_out: bool,
    pub dma_ctrl_platform_opt_in: bool,
}

/// What a device scope names (8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    PciEndpoint,
    PciSubHierarchy,
    IoApic,
    Hpet,
    AcpiNamespace,
    Reserved(u8),
}

impl ScopeKind {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::PciEndpoint,
            2 => Self::PciSubHierarchy,
            3 => Self::IoApic,
            4 => Self::Hpet,
            5 => Self::AcpiNamespace,
            o => Self::Reserved(o),
        }
    }
}

/// One device scope entry: a start bus and a path of (device, function) hops through bridges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceScope {
    pub kind: ScopeKind,
    pub enumeration_id: u8,
    pub start_bus: u8,
    pub path: Vec<(u8, u8)>,
}

impl DeviceScope {
    /// The requester id when the path has a single hop (a device on the start bus). Deeper
    /// paths need the bridges' secondary bus numbers, which only enumeration knows.
    pub fn direct_source_id(&self) -> Option<SourceId> {
        match self.path.as_slice() {
            [(d, f)] => SourceId::new(self.start_bus, *d, *f),
            _ => None,
        }
    }
}

/// A DMA remapping hardware unit (8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drhd {
    /// Covers every PCI device of the segment not claimed by another unit's scope.
    pub include_pci_all: bool,
    /// The register set is 2^size_pages_log2 4-KiB pages (0 on older firmware: one page).
    pub size_pages_log2: u8,
    pub segment: u16,
    pub register_base: u64,
    pub scopes: Vec<DeviceScope>,
}

/// A reserved memory region some devices DMA to (8.4); `limit` is inclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    pub segment: u16,
    pub base: u64,
    pub limit: u64,
    pub scopes: Vec<DeviceScope>,
}

/// A parsed DMAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// Host address width: the platform's DMA-addressable width in bits.
    pub host_address_width: u8,
    pub flags: DmarFlags,
    pub units: Vec<Drhd>,
    pub rmrrs: Vec<Rmrr>,
    /// Structures of other kinds (ATSR, RHSA, ANDD, SATC, ...) that were skipped.
    pub skipped: usize,
}

const HEADER: usize = 48;

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

/// Parses the device scopes in `b` (which starts at table offset `base`).
fn scopes(b: &[u8], base: usize) -> Result<Vec<DeviceScope>, DmarError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = *b.get(at + 1).unwrap_or(&0);
        let l = usize::from(len);
        if l < 6 || (l - 6) % 2 != 0 || at + l > b.len() {
            return Err(DmarError::BadScope { offset: base + at, len });
        }
        let e = &b[at..at + l];
        let path = e[6..].chunks_exact(2).map(|p| (p[0], p[1])).collect();
        out.push(DeviceScope { kind: ScopeKind::from_u8(e[0]), enumeration_id: e[4], start_bus: e[5], path });
        at += l;
    }
    Ok(out)
}

impl Dmar {
    /// Parses a whole DMAR table, header included (signature and checksum are checked).
    pub fn parse(t: &[u8]) -> Result<Self, DmarError> {
        if t.len() < HEADER {
            return Err(DmarError::Truncated { len: t.len() });
        }
        let mut sig = [0u8; 4];
        sig.copy_from_slice(&t[..4]);
        if &sig != b"DMAR" {
            return Err(DmarError::BadSignature(sig));
        }
        let len = u32_at(t, 4) as usize;
        if len < HEADER || len > t.len() {
            return Err(DmarError::Truncated { len: t.len() });
        }
        let t = &t[..len];
        if t.iter().fold(0u8, |s, &x| s.wrapping_add(x)) != 0 {
            return Err(DmarError::BadChecksum);
        }
        let f = t[37];
        let mut dmar = Dmar {
            host_address_width: t[36].saturating_add(1),
            flags: DmarFlags { intr_remap: f & 1 != 0, x2apic_opt_out: f & 2 != 0, dma_ctrl_platform_opt_in: f & 4 != 0 },
            units: Vec::new(),
            rmrrs: Vec::new(),
            skipped: 0,
        };
        let mut at = HEADER;
        while at < t.len() {
            let kind = u16_at(t, at);
            let slen = u16_at(t, at + 2);
            let l = usize::from(slen);
            let min = match kind {
                0 => 16,
                1 => 24,
                _ => 4,
            };
            if l < min || at + l > t.len() {
                return Err(DmarError::BadStructure { offset: at, kind, len: slen });
            }
            let s = &t[at..at + l];
            match kind {
                0 => {
                    let register_base = u64_at(s, 8);
                    if register_base == 0 || !register_base.is_multiple_of(4096) {
                        return Err(DmarError::BadRegisterBase { offset: at, base: register_base });
                    }
                    dmar.units.push(Drhd {
                        include_pci_all: s[4] & 1 != 0,
                        size_pages_log2: s[5] & 0xf,
                        segment: u16_at(s, 6),
                        register_base,
                        scopes: scopes(&s[16..], at + 16)?,
                    });
                }
                1 => {
                    let (base, limit) = (u64_at(s, 8), u64_at(s, 16));
                    if limit < base || base % 4096 != 0 || limit.wrapping_add(1) % 4096 != 0 {
                        return Err(DmarError::BadRmrr { offset: at, base, limit });
                    }
                    dmar.rmrrs.push(Rmrr { segment: u16_at(s, 6), base, limit, scopes: scopes(&s[24..], at + 24)? });
                }
                _ => dmar.skipped += 1,
            }
            at += l;
        }
        Ok(dmar)
    }

    /// The unit that translates `sid` on `segment`: one whose scope names it as an endpoint on
    /// its start bus, else the segment's INCLUDE_PCI_ALL unit.
    pub fn unit_for(&self, segment: u16, sid: SourceId) -> Option<&Drhd> {
        let named = self.units.iter().find(|u| {
            u.segment == segment
                && u.scopes.iter().any(|s| s.kind == ScopeKind::PciEndpoint && s.direct_source_id() == Some(sid))
        });
        named.or_else(|| self.units.iter().find(|u| u.segment == segment && u.include_pci_all))
    }

    /// The RMRRs whose scopes name `sid` (their ranges must stay identity-mapped for it).
    pub fn rmrrs_for(&self, segment: u16, sid: SourceId) -> impl Iterator<Item = &Rmrr> {
        self.rmrrs
            .iter()
            .filter(move |r| r.segment == segment && r.scopes.iter().any(|s| s.direct_source_id() == Some(sid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// QEMU 7.2's DMAR for `-machine q35 -device intel-iommu,intremap=off` with an NVMe
    /// controller at 00:03.0, captured from the hypervisor's log (`tv.dump-dmar=1`) in a QEMU
    /// TCG boot: one DRHD at 0xfed90000 whose scope names the IOAPIC and every PCI endpoint.
    const QEMU_DMAR: &[u8] = include_bytes!("../testdata/qemu-7.2-q35-dmar.bin");

    fn finish(mut t: Vec<u8>) -> Vec<u8> {
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[9] = 0;
        let s = t.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        t[9] = 0u8.wrapping_sub(s);
        t
    }

    fn header() -> Vec<u8> {
        let mut t = vec![0u8; 48];
        t[..4].copy_from_slice(b"DMAR");
        t[8] = 1;
        t[36] = 38; // 39-bit host address width
        t[37] = 1;
        t
    }

    fn scope(kind: u8, bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
        let mut s = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, 0, bus];
        for &(d, f) in path {
            s.extend_from_slice(&[d, f]);
        }
        s
    }

    fn drhd(flags: u8, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = scopes.concat();
        let mut s = vec![0, 0, 0, 0, flags, 0, 0, 0];
        s.extend_from_slice(&base.to_le_bytes());
        s.extend_from_slice(&body);
        let l = s.len() as u16;
        s[2..4].copy_from_slice(&l.to_le_bytes());
        s
    }

    fn rmrr(base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let mut s = vec![1, 0, 0, 0, 0, 0, 0, 0];
        s.extend_from_slice(&base.to_le_bytes());
        s.extend_from_slice(&limit.to_le_bytes());
        s.extend_from_slice(&scopes.concat());
        let l = s.len() as u16;
        s[2..4].copy_from_slice(&l.to_le_bytes());
        s
    }

    #[test]
    fn parses_qemus_dmar() {
        let d = Dmar::parse(QEMU_DMAR).unwrap();
        assert_eq!(d.host_address_width, 39);
        assert!(!d.flags.intr_remap);
        assert_eq!(d.units.len(), 1);
        let u = &d.units[0];
        assert!(!u.include_pci_all);
        assert_eq!((u.segment, u.register_base, u.size_pages_log2), (0, 0xfed9_0000, 0));
        assert_eq!(u.scopes.len(), 8);
        assert_eq!(u.scopes[0].kind, ScopeKind::IoApic);
        assert_eq!((u.scopes[0].start_bus, u.scopes[0].enumeration_id), (0xff, 0));
        let named: Vec<_> = u.scopes[1..].iter().filter_map(DeviceScope::direct_source_id).collect();
        let expect: Vec<_> = [(0, 0), (1, 0), (2, 0), (3, 0), (0x1f, 0), (0x1f, 2), (0x1f, 3)]
            .iter()
            .map(|&(dv, f)| SourceId::new(0, dv, f).unwrap())
            .collect();
        assert_eq!(named, expect);
        assert!(d.rmrrs.is_empty());
        let nvme = SourceId::new(0, 3, 0).unwrap();
        assert_eq!(d.unit_for(0, nvme).map(|u| u.register_base), Some(0xfed9_0000));
        // A device not in any scope, with no INCLUDE_PCI_ALL unit, is not translated by any unit.
        assert_eq!(d.unit_for(0, SourceId::new(0, 4, 0).unwrap()), None);
        assert_eq!(d.unit_for(1, nvme), None);
        // Every corruption of the captured table is refused or parsed, never a panic.
        for i in 0..QEMU_DMAR.len() {
            let mut t = QEMU_DMAR.to_vec();
            t[i] ^= 0xff;
            assert!(Dmar::parse(&t).is_err(), "byte {i} flipped must break the checksum");
        }
    }

    #[test]
    fn parses_units_scopes_and_rmrrs() {
        let mut t = header();
        t.extend(drhd(0, 0xfed9_1000, &[scope(1, 0, &[(2, 0)]), scope(2, 0, &[(0x1c, 0), (0, 0)])]));
        t.extend(drhd(1, 0xfed9_0000, &[scope(3, 0xf0, &[(0x1f, 0)])]));
        t.extend(rmrr(0x7d00_0000, 0x7d0f_ffff, &[scope(1, 0, &[(0x14, 0)])]));
        t.extend([4u8, 0, 8, 0, 0, 0, 0, 0]); // an ANDD-like structure: skipped
        let d = Dmar::parse(&finish(t)).unwrap();
        assert_eq!(d.host_address_width, 39);
        assert!(d.flags.intr_remap && !d.flags.x2apic_opt_out);
        assert_eq!(d.units.len(), 2);
        assert_eq!(d.skipped, 1);
        assert_eq!(d.units[0].scopes[1].kind, ScopeKind::PciSubHierarchy);
        assert_eq!(d.units[0].scopes[1].path, vec![(0x1c, 0), (0, 0)]);
        assert_eq!(d.units[0].scopes[1].direct_source_id(), None);
        assert_eq!(d.units[1].scopes[0].kind, ScopeKind::IoApic);
        // 00:02.0 is named by the first unit; everything else falls to INCLUDE_PCI_ALL.
        let gpu = SourceId::new(0, 2, 0).unwrap();
        assert_eq!(d.unit_for(0, gpu).unwrap().register_base, 0xfed9_1000);
        assert_eq!(d.unit_for(0, SourceId::new(0, 3, 0).unwrap()).unwrap().register_base, 0xfed9_0000);
        let usb = SourceId::new(0, 0x14, 0).unwrap();
        let r: Vec<_> = d.rmrrs_for(0, usb).collect();
        assert_eq!((r.len(), r[0].base, r[0].limit), (1, 0x7d00_0000, 0x7d0f_ffff));
        assert_eq!(d.rmrrs_for(0, gpu).count(), 0);
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        assert_eq!(Dmar::parse(&[0; 10]), Err(DmarError::Truncated { len: 10 }));
        let mut bad_sig = header();
        bad_sig[..4].copy_from_slice(b"APIC");
        assert_eq!(Dmar::parse(&finish(bad_sig)), Err(DmarError::BadSignature(*b"APIC")));

        let mut t = finish(header());
        t[20] ^= 1;
        assert_eq!(Dmar::parse(&t), Err(DmarError::BadChecksum));

        // Length field beyond the bytes.
        let mut t = finish(header());
        t[4] = 200;
        assert_eq!(Dmar::parse(&t), Err(DmarError::Truncated { len: 48 }));

        // A structure running past the end.
        let mut t = header();
        let mut u = drhd(1, 0xfed9_0000, &[]);
        u[2] = 200;
        t.extend(u);
        assert_eq!(Dmar::parse(&finish(t)), Err(DmarError::BadStructure { offset: 48, kind: 0, len: 200 }));

        // Zero-length structure (would loop forever if accepted).
        let mut t = header();
        t.extend([7u8, 0, 0, 0]);
        assert_eq!(Dmar::parse(&finish(t)), Err(DmarError::BadStructure { offset: 48, kind: 7, len: 0 }));

        // A scope whose length is odd or overruns its unit.
        let mut t = header();
        let mut s = scope(1, 0, &[(3, 0)]);
        s[1] = 7;
        s.push(0);
        t.extend(drhd(0, 0xfed9_0000, &[s]));
        assert_eq!(Dmar::parse(&finish(t)), Err(DmarError::BadScope { offset: 64, len: 7 }));
        let mut t = header();
        let mut s = scope(1, 0, &[(3, 0)]);
        s[1] = 40;
        t.extend(drhd(0, 0xfed9_0000, &[s]));
        assert_eq!(Dmar::parse(&finish(t)), Err(DmarError::BadScope { offset: 64, len: 40 }));

        // Unaligned register base; RMRR with limit below base.
        let mut t = header();
        t.extend(drhd(1, 0xfed9_0800, &[]));
        assert_eq!(Dmar::parse(&finish(t)), Err(DmarError::BadRegisterBase { offset: 48, base: 0xfed9_0800 }));
        let mut t = header();
        t.extend(rmrr(0x2000, 0xfff, &[]));
        assert_eq!(Dmar::parse(&finish(t)), Err(DmarError::BadRmrr { offset: 48, base: 0x2000, limit: 0xfff }));
    }

    #[test]
    fn every_truncation_of_a_valid_table_is_handled() {
        let mut t = header();
        t.extend(drhd(0, 0xfed9_1000, &[scope(1, 0, &[(2, 0)])]));
        t.extend(rmrr(0x7d00_0000, 0x7d0f_ffff, &[scope(1, 0, &[(0x14, 0)])]));
        let full = finish(t);
        for cut in 0..full.len() {
            // Re-finish so only the structure walk can reject it.
            let mut c = full[..cut.max(48)].to_vec();
            if c.len() >= 48 {
                c = finish(c);
            }
            let _ = Dmar::parse(&c);
        }
    }
}
