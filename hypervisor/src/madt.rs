//! Finding the CPUs: the ACPI RSDP (as GRUB copies it into the boot information), the XSDT or
//! RSDT, and the MADT's processor entries (ACPI 6.5, 5.2.5, 5.2.7, 5.2.8, 5.2.12).
//!
//! Table memory is read through a caller-supplied function, so the same code runs over physical
//! memory in the hypervisor and over byte vectors in the tests. Firmware tables are trusted no
//! more than guests: lengths are bounded, checksums verified, and a bad table is an error.

use alloc::vec::Vec;

/// Why the CPUs could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    BadRsdp,
    BadChecksum { signature: [u8; 4] },
    /// A table whose header is unreadable or whose length is implausible.
    BadTable { address: u64 },
    NoMadt,
}

/// Reads `buf.len()` bytes of physical memory at an address; `false` if it cannot.
pub type ReadPhys<'a> = &'a mut dyn FnMut(u64, &mut [u8]) -> bool;

/// Tables longer than this are refused (real MADTs are a few KiB).
const MAX_TABLE: usize = 64 * 1024;

/// One processor from the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processor {
    pub apic_id: u32,
    pub uid: u32,
    /// Enabled now, or "online capable" (may be brought up).
    pub enabled: bool,
}

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x)) == 0
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

/// Reads a whole table (header first, then its length), checking the checksum.
fn read_table(read: ReadPhys<'_>, address: u64) -> Result<Vec<u8>, AcpiError> {
    let mut header = [0u8; 36];
    if !read(address, &mut header) {
        return Err(AcpiError::BadTable { address });
    }
    let len = u32_at(&header, 4) as usize;
    if !(36..=MAX_TABLE).contains(&len) {
        return Err(AcpiError::BadTable { address });
    }
    let mut t = alloc::vec![0u8; len];
    if !read(address, &mut t) {
        return Err(AcpiError::BadTable { address });
    }
    if !checksum_ok(&t) {
        let mut signature = [0u8; 4];
        signature.copy_from_slice(&t[..4]);
        return Err(AcpiError::BadChecksum { signature });
    }
    Ok(t)
}

/// Finds the MADT from the RSDP bytes and returns its processors in table order.
pub fn processors(rsdp: &[u8], read: ReadPhys<'_>) -> Result<Vec<Processor>, AcpiError> {
    if rsdp.len() < 20 || &rsdp[..8] != b"RSD PTR " || !checksum_ok(&rsdp[..20]) {
        return Err(AcpiError::BadRsdp);
    }
    let revision = rsdp[15];
    let (root, entry_size) = if revision >= 2 && rsdp.len() >= 36 && checksum_ok(&rsdp[..36]) && u64_at(rsdp, 24) != 0 {
        (u64_at(rsdp, 24), 8)
    } else {
        (u64::from(u32_at(rsdp, 16)), 4)
    };
    let root_table = read_table(read, root)?;
    let entries = &root_table[36..];
    for e in entries.chunks_exact(entry_size) {
        let address = if entry_size == 8 { u64_at(e, 0) } else { u64::from(u32_at(e, 0)) };
        let mut sig = [0u8; 4];
        if !read(address, &mut sig) || &sig != b"APIC" {
            continue;
        }
        let madt = read_table(read, address)?;
        return Ok(parse_madt(&madt));
    }
    Err(AcpiError::NoMadt)
}

/// The processor entries of a MADT (local APIC, type 0; local x2APIC, type 9).
pub fn parse_madt(madt: &[u8]) -> Vec<Processor> {
    let mut out = Vec::new();
    let mut at = 44;
    while at + 2 <= madt.len() {
        let (typ, len) = (madt[at], madt[at + 1] as usize);
        if len < 2 || at + len > madt.len() {
            break;
        }
        let e = &madt[at..at + len];
        match (typ, len) {
            (0, 8..) => {
                let flags = u32_at(e, 4);
                out.push(Processor { apic_id: u32::from(e[3]), uid: u32::from(e[2]), enabled: flags & 3 != 0 });
            }
            (9, 16..) => {
                let flags = u32_at(e, 8);
                out.push(Processor { apic_id: u32_at(e, 4), uid: u32_at(e, 12), enabled: flags & 3 != 0 });
            }
            _ => {}
        }
        at += len;
    }
    out
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
                Processor { apic_id: 0, uid: 0, enabled: true },
                Processor { apic_id: 2, uid: 1, enabled: true },
                Processor { apic_id: 4, uid: 2, enabled: false },
                Processor { apic_id: 300, uid: 7, enabled: true },
            ]
        );
    }

    #[test]
    fn bad_firmware_tables_are_errors() {
        let (mut rsdp, mut mem) = machine(&[lapic(0, 0, 1)]);
        assert_eq!(processors(&rsdp[..10], &mut reader(&mem)), Err(AcpiError::BadRsdp));
        mem.get_mut(&0x3000).unwrap()[40] ^= 0xff;
        assert_eq!(processors(&rsdp, &mut reader(&mem)), Err(AcpiError::BadChecksum { signature: *b"APIC" }));
        mem.get_mut(&0x3000).unwrap()[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(processors(&rsdp, &mut reader(&mem)), Err(AcpiError::BadTable { address: 0x3000 }));
        mem.remove(&0x3000);
        assert_eq!(processors(&rsdp, &mut reader(&mem)), Err(AcpiError::NoMadt));
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
        assert_eq!(parse_madt(&madt), vec![Processor { apic_id: 1, uid: 0, enabled: true }]);
        let mut short = header(b"APIC");
        short.extend_from_slice(&[0; 8]);
        short.extend_from_slice(&[0, 30, 1]);
        assert!(parse_madt(&short).is_empty());
    }
}
