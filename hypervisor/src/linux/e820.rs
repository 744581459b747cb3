//! The e820 memory map a Linux tenant is given (ACPI 6.5 §15 "System Address Map Interfaces";
//! the zero-page form is `struct boot_e820_entry` at boot_params offset 0x2d0, Linux
//! Documentation/arch/x86/zero-page.rst; the PVH form is `hvm_memmap_table_entry`).
//!
//! The map is built from possibly overlapping regions: each byte gets the type of the region
//! with the highest [`E820Type::precedence`] covering it, and [`E820Builder::exclude`] removes a
//! range from the map altogether (the tensor window, which must not be listed as RAM). The result
//! is sorted, non-overlapping, and adjacent entries of one type are merged.

use alloc::vec::Vec;

/// Address-range types (ACPI 6.5 Table 15.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum E820Type {
    /// AddressRangeMemory: usable RAM.
    Ram = 1,
    /// AddressRangeReserved: the OS must not use it.
    Reserved = 2,
    /// AddressRangeACPI: ACPI tables, reclaimable after the OS has read them.
    Acpi = 3,
    /// AddressRangeNVS: ACPI NVS memory.
    Nvs = 4,
    /// AddressRangeUnusable: memory with errors.
    Unusable = 5,
}

impl E820Type {
    /// Which type wins where two regions overlap: anything the OS must not allocate beats RAM,
    /// and the more specific ACPI types beat plain Reserved (ACPI tables inside the reserved
    /// legacy BIOS area are listed as ACPI).
    pub const fn precedence(self) -> u8 {
        match self {
            E820Type::Ram => 0,
            E820Type::Reserved => 1,
            E820Type::Acpi => 2,
            E820Type::Nvs => 3,
            E820Type::Unusable => 4,
        }
    }
}

/// One map entry: `[addr, addr + size)` of one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

impl E820Entry {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Bytes of one `boot_e820_entry` (u64 addr, u64 size, u32 type; packed).
pub const ZERO_PAGE_ENTRY_SIZE: usize = 20;
/// Entries the zero page holds (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const ZERO_PAGE_MAX_ENTRIES: usize = 128;

/// Why a map could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Error {
    /// `addr + size` overflows the 64-bit address space.
    Overflow { addr: u64, size: u64 },
    /// More entries than the consumer can hold.
    TooManyEntries { entries: usize, max: usize },
}

#[derive(Clone, Copy, Debug)]
enum Region {
    Typed(E820Type),
    Hole,
}

impl Region {
    fn precedence(self) -> u8 {
        match self {
            Region::Typed(t) => t.precedence(),
            Region::Hole => u8::MAX,
        }
    }
}

/// Collects regions and produces the canonical map.
#[derive(Clone, Debug, Default)]
pub struct E820Builder {
    regions: Vec<(u64, u64, Region)>,
}

impl E820Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[addr, addr + size)` of type `kind`. Empty regions are ignored.
    pub fn add(&mut self, addr: u64, size: u64, kind: E820Type) -> Result<&mut Self, E820Error> {
        self.push(addr, size, Region::Typed(kind))
    }

    /// Leaves `[addr, addr + size)` out of the map whatever else covers it.
    pub fn exclude(&mut self, addr: u64, size: u64) -> Result<&mut Self, E820Error> {
        self.push(addr, size, Region::Hole)
    }

    fn push(&mut self, addr: u64, size: u64, r: Region) -> Result<&mut Self, E820Error> {
        let end = addr
            .checked_add(size)
            .ok_or(E820Error::Overflow { addr, size })?;
        if size != 0 {
            self.regions.push((addr, end, r));
        }
        Ok(self)
    }

    /// The sorted, non-overlapping, merged map.
    pub fn build(&self) -> E820Map {
        let mut cuts: Vec<u64> = self.regions.iter().flat_map(|&(s, e, _)| [s, e]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut out: Vec<E820Entry> = Vec::new();
        for w in cuts.windows(2) {
            let (s, e) = (w[0], w[1]);
            let winner = self
                .regions
                .iter()
                .filter(|&&(rs, re, _)| rs <= s && e <= re)
                .map(|&(_, _, r)| r)
                .max_by_key(|r| r.precedence());
            let Some(Region::Typed(kind)) = winner else {
                continue;
            };
            match out.last_mut() {
                Some(last) if last.end() == s && last.kind == kind => last.size += e - s,
                _ => out.push(E820Entry {
                    addr: s,
                    size: e - s,
                    kind,
                }),
            }
        }
        E820Map { entries: out }
    }
}

/// A canonical map: sorted by address, non-overlapping, adjacent same-type entries merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct E820Map {
    entries: Vec<E820Entry>,
}

impl E820Map {
    pub fn entries(&self) -> &[E820Entry] {
        &self.entries
    }

    /// The type of the byte at `addr`, `None` where the map lists nothing.
    pub fn type_at(&self, addr: u64) -> Option<E820Type> {
        self.entries
            .iter()
            .find(|e| e.addr <= addr && addr < e.end())
            .map(|e| e.kind)
    }

    /// Total bytes of RAM listed.
    pub fn ram_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum()
    }

    /// Whether `[addr, addr + size)` lies entirely inside RAM entries.
    pub fn is_ram(&self, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return false;
        };
        let mut at = addr;
        for e in &self.entries {
            if e.kind == E820Type::Ram && e.addr <= at && at < e.end() {
                at = e.end();
                if at >= end {
                    return true;
                }
            }
        }
        size == 0
    }

    /// Writes the map as packed `boot_e820_entry` records (20 bytes each) and returns the
    /// count, or an error if `out` or the zero page's 128 slots cannot hold it.
    pub fn write_zero_page_entries(&self, out: &mut [u8]) -> Result<u8, E820Error> {
        let n = self.entries.len();
        let max = ZERO_PAGE_MAX_ENTRIES.min(out.len() / ZERO_PAGE_ENTRY_SIZE);
        if n > max {
            return Err(E820Error::TooManyEntries { entries: n, max });
        }
        for (e, slot) in self
            .entries
            .iter()
            .zip(out.chunks_exact_mut(ZERO_PAGE_ENTRY_SIZE))
        {
            slot[0..8].copy_from_slice(&e.addr.to_le_bytes());
            slot[8..16].copy_from_slice(&e.size.to_le_bytes());
            slot[16..20].copy_from_slice(&(e.kind as u32).to_le_bytes());
        }
        Ok(n as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn e(addr: u64, size: u64, kind: E820Type) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    #[test]
    fn reserved_punches_ram_and_neighbours_merge() {
        let mut b = E820Builder::new();
        b.add(0, 64 * MIB, E820Type::Ram).unwrap();
        b.add(0x9f000, 0x61000, E820Type::Reserved).unwrap();
        b.add(0xe0000, 0x10000, E820Type::Acpi).unwrap();
        let m = b.build();
        assert_eq!(
            m.entries(),
            &[
                e(0, 0x9f000, E820Type::Ram),
                e(0x9f000, 0x41000, E820Type::Reserved),
                e(0xe0000, 0x10000, E820Type::Acpi),
                e(0xf0000, 0x10000, E820Type::Reserved),
                e(MIB, 63 * MIB, E820Type::Ram),
            ]
        );
        assert_eq!(m.ram_bytes(), 0x9f000 + 63 * MIB);
    }

    #[test]
    fn acpi_inside_ram_splits_it() {
        let mut b = E820Builder::new();
        b.add(0, 16 * MIB, E820Type::Ram)
            .unwrap()
            .add(MIB, 0x1000, E820Type::Acpi)
            .unwrap();
        assert_eq!(
            b.build().entries(),
            &[
                e(0, MIB, E820Type::Ram),
                e(MIB, 0x1000, E820Type::Acpi),
                e(MIB + 0x1000, 15 * MIB - 0x1000, E820Type::Ram)
            ]
        );
    }

    #[test]
    fn window_is_left_out_even_under_ram_and_reserved() {
        let mut b = E820Builder::new();
        b.add(0, 256 * MIB, E820Type::Ram).unwrap();
        b.add(200 * MIB, 56 * MIB, E820Type::Reserved).unwrap();
        b.exclude(224 * MIB, 16 * MIB).unwrap();
        let m = b.build();
        assert_eq!(
            m.entries(),
            &[
                e(0, 200 * MIB, E820Type::Ram),
                e(200 * MIB, 24 * MIB, E820Type::Reserved),
                e(240 * MIB, 16 * MIB, E820Type::Reserved)
            ]
        );
        assert_eq!(m.type_at(224 * MIB), None);
        assert_eq!(m.type_at(240 * MIB - 1), None);
        assert_eq!(m.type_at(240 * MIB), Some(E820Type::Reserved));
    }

    #[test]
    fn edge_sizes() {
        // Empty regions vanish; regions near the top of the address space work; wrapping is an error.
        let mut b = E820Builder::new();
        b.add(0x1000, 0, E820Type::Reserved).unwrap();
        b.add(u64::MAX - 0x1fff, 0x1000, E820Type::Reserved)
            .unwrap();
        b.add(0, 1, E820Type::Ram).unwrap();
        assert_eq!(
            b.add(u64::MAX, 2, E820Type::Ram).unwrap_err(),
            E820Error::Overflow {
                addr: u64::MAX,
                size: 2
            }
        );
        let m = b.build();
        assert_eq!(
            m.entries(),
            &[
                e(0, 1, E820Type::Ram),
                e(u64::MAX - 0x1fff, 0x1000, E820Type::Reserved)
            ]
        );
        assert!(E820Builder::new().build().entries().is_empty());
        // Exclusion of everything leaves nothing.
        let mut b = E820Builder::new();
        b.add(0, MIB, E820Type::Ram)
            .unwrap()
            .exclude(0, MIB)
            .unwrap();
        assert!(b.build().entries().is_empty());
    }

    #[test]
    fn ram_queries_span_merged_entries_only() {
        let mut b = E820Builder::new();
        b.add(0, 2 * MIB, E820Type::Ram)
            .unwrap()
            .add(2 * MIB, 2 * MIB, E820Type::Ram)
            .unwrap();
        b.add(5 * MIB, MIB, E820Type::Ram).unwrap();
        let m = b.build();
        assert_eq!(m.entries().len(), 2);
        assert!(m.is_ram(MIB, 3 * MIB));
        assert!(!m.is_ram(MIB, 3 * MIB + 1));
        assert!(!m.is_ram(3 * MIB, 3 * MIB)); // crosses the gap at 4..5 MiB
        assert!(!m.is_ram(u64::MAX, 2));
    }

    #[test]
    fn zero_page_encoding_and_capacity() {
        let mut b = E820Builder::new();
        b.add(0, 0x9f000, E820Type::Ram)
            .unwrap()
            .add(0xe0000, 0x10000, E820Type::Acpi)
            .unwrap();
        let m = b.build();
        let mut buf = [0xaau8; 40];
        assert_eq!(m.write_zero_page_entries(&mut buf), Ok(2));
        assert_eq!(&buf[0..8], &0u64.to_le_bytes());
        assert_eq!(&buf[8..16], &0x9f000u64.to_le_bytes());
        assert_eq!(&buf[16..20], &1u32.to_le_bytes());
        assert_eq!(&buf[20..28], &0xe0000u64.to_le_bytes());
        assert_eq!(&buf[36..40], &3u32.to_le_bytes());
        let mut small = [0u8; 39];
        assert_eq!(
            m.write_zero_page_entries(&mut small),
            Err(E820Error::TooManyEntries { entries: 2, max: 1 })
        );
        // 129 alternating entries do not fit the zero page.
        let mut b = E820Builder::new();
        for i in 0..129u64 {
            let kind = if i % 2 == 0 {
                E820Type::Ram
            } else {
                E820Type::Reserved
            };
            b.add(i * 0x1000, 0x1000, kind).unwrap();
        }
        let mut big = alloc::vec![0u8; 200 * 20];
        assert_eq!(
            b.build().write_zero_page_entries(&mut big),
            Err(E820Error::TooManyEntries {
                entries: 129,
                max: 128
            })
        );
    }
}
