//! Multiboot2 boot information, parsed from a byte slice.
//!
//! GRUB hands the kernel a physical address of a tag list (Multiboot2 specification 1.0, section
//! 3.6). The bytes come from the boot loader, so every length and offset is checked: a malformed
//! structure gives a [`ParseError`], never an out-of-bounds read.

/// The value GRUB leaves in EAX when it enters a multiboot2 kernel (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

/// Tag types this parser understands (spec 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum TagType {
    End = 0,
    CommandLine = 1,
    BootLoaderName = 2,
    Module = 3,
    BasicMemInfo = 4,
    MemoryMap = 6,
    Framebuffer = 8,
    Efi64SystemTable = 12,
    AcpiOldRsdp = 14,
    AcpiNewRsdp = 15,
    Efi64ImageHandle = 20,
    LoadBaseAddr = 21,
}

/// Why a multiboot2 information structure was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the fixed header or than the header's `total_size`.
    Truncated,
    /// A tag whose size is smaller than its own header or runs past the end.
    BadTagSize { offset: usize },
    /// The list ended without an end tag.
    MissingEndTag,
    /// A memory-map tag whose entry size is too small to hold an entry.
    BadMemoryMapEntrySize(u32),
}

/// The kind of a physical memory range (spec 3.6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    Available,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Defective,
    Other(u32),
}

impl MemoryKind {
    fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Available,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Defective,
            other => Self::Other(other),
        }
    }
}

/// One entry of the boot loader's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub len: u64,
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// The first address past the region, saturating at `u64::MAX`.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }
}

/// A boot module: physical range and its command line (we use it as the module's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    pub start: u32,
    pub end: u32,
    pub cmdline: &'a str,
}

impl Module<'_> {
    pub fn len(&self) -> u32 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated view of the boot information.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo<'a> {
    bytes: &'a [u8],
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// A NUL-terminated string inside `bytes`, cut at the first NUL; invalid UTF-8 gives "?".
fn c_str(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("?")
}

/// A raw tag: its type and its payload (the bytes after the 8-byte tag header).
#[derive(Clone, Copy, Debug)]
pub struct RawTag<'a> {
    pub typ: u32,
    pub payload: &'a [u8],
}

impl<'a> BootInfo<'a> {
    /// Reads the total size from the first word of the structure at `bytes` and validates every
    /// tag. `bytes` may be longer than the structure.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let total = read_u32(bytes, 0).ok_or(ParseError::Truncated)? as usize;
        if total < 8 || total > bytes.len() {
            return Err(ParseError::Truncated);
        }
        let info = Self { bytes: &bytes[..total] };
        let mut ended = false;
        let mut offset = 8;
        while offset < total {
            let (typ, size) = info.tag_header(offset)?;
            if typ == TagType::End as u32 {
                ended = true;
                break;
            }
            if typ == TagType::MemoryMap as u32 {
                let entry_size = read_u32(info.bytes, offset + 8).ok_or(ParseError::Truncated)?;
                if entry_size < 24 {
                    return Err(ParseError::BadMemoryMapEntrySize(entry_size));
                }
            }
            offset = next_tag(offset, size).ok_or(ParseError::BadTagSize { offset })?;
        }
        if !ended {
            return Err(ParseError::MissingEndTag);
        }
        Ok(info)
    }

    /// The structure's total size in bytes.
    pub fn total_size(&self) -> usize {
        self.bytes.len()
    }

    fn tag_header(&self, offset: usize) -> Result<(u32, usize), ParseError> {
        let typ = read_u32(self.bytes, offset).ok_or(ParseError::Truncated)?;
        let size = read_u32(self.bytes, offset + 4).ok_or(ParseError::Truncated)? as usize;
        let end = offset.checked_add(size).ok_or(ParseError::BadTagSize { offset })?;
        if size < 8 || end > self.bytes.len() {
            return Err(ParseError::BadTagSize { offset });
        }
        Ok((typ, size))
    }

    /// All tags before the end tag (validated by [`BootInfo::parse`]).
    pub fn tags(&self) -> impl Iterator<Item = RawTag<'a>> + 'a {
        let bytes = self.bytes;
        let mut offset = 8usize;
        core::iter::from_fn(move || {
            let typ = read_u32(bytes, offset)?;
            let size = read_u32(bytes, offset + 4)? as usize;
            if typ == TagType::End as u32 || size < 8 {
                return None;
            }
            let payload = bytes.get(offset + 8..offset.checked_add(size)?)?;
            offset = next_tag(offset, size)?;
            Some(RawTag { typ, payload })
        })
    }

    fn tag(&self, typ: TagType) -> Option<RawTag<'a>> {
        self.tags().find(|t| t.typ == typ as u32)
    }

    /// The kernel command line GRUB was given, if any.
    pub fn command_line(&self) -> Option<&'a str> {
        self.tag(TagType::CommandLine).map(|t| c_str(t.payload))
    }

    /// The boot loader's name (e.g. "GRUB 2.06").
    pub fn boot_loader_name(&self) -> Option<&'a str> {
        self.tag(TagType::BootLoaderName).map(|t| c_str(t.payload))
    }

    /// The memory map entries, in the boot loader's order.
    pub fn memory_map(&self) -> impl Iterator<Item = MemoryRegion> + 'a {
        let tag = self.tag(TagType::MemoryMap);
        let (entry_size, entries) = match tag {
            Some(t) => (
                read_u32(t.payload, 0).unwrap_or(24).max(24) as usize,
                t.payload.get(8..).unwrap_or(&[]),
            ),
            None => (24, &[][..]),
        };
        entries.chunks_exact(entry_size).map(|e| MemoryRegion {
            base: read_u64(e, 0).unwrap_or(0),
            len: read_u64(e, 8).unwrap_or(0),
            kind: MemoryKind::from_raw(read_u32(e, 16).unwrap_or(2)),
        })
    }

    /// Boot modules with their physical ranges and names.
    pub fn modules(&self) -> impl Iterator<Item = Module<'a>> + 'a {
        self.tags().filter(|t| t.typ == TagType::Module as u32).filter_map(|t| {
            Some(Module {
                start: read_u32(t.payload, 0)?,
                end: read_u32(t.payload, 4)?,
                cmdline: c_str(t.payload.get(8..)?),
            })
        })
    }

    /// The ACPI RSDP copied by the boot loader (the 2.0+ one preferred), as raw bytes.
    pub fn acpi_rsdp(&self) -> Option<&'a [u8]> {
        self.tag(TagType::AcpiNewRsdp).or_else(|| self.tag(TagType::AcpiOldRsdp)).map(|t| t.payload)
    }

    /// Whether the firmware was UEFI (an EFI system-table tag is present).
    pub fn booted_by_uefi(&self) -> bool {
        self.tag(TagType::Efi64SystemTable).is_some()
    }
}

/// Tags are 8-byte aligned (spec 3.6.1).
fn next_tag(offset: usize, size: usize) -> Option<usize> {
    offset.checked_add(size)?.checked_add(7).map(|v| v & !7)
}

/// Looks up `key` in a command line of space-separated `key=value` words.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|word| {
        let (k, v) = word.split_once('=')?;
        (k == key).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Builds a multiboot2 information structure the way GRUB lays it out.
    struct Builder {
        bytes: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self { bytes: vec![0; 8] }
        }
        fn tag(mut self, typ: u32, payload: &[u8]) -> Self {
            self.bytes.extend_from_slice(&typ.to_le_bytes());
            self.bytes.extend_from_slice(&(8 + payload.len() as u32).to_le_bytes());
            self.bytes.extend_from_slice(payload);
            while !self.bytes.len().is_multiple_of(8) {
                self.bytes.push(0);
            }
            self
        }
        fn finish(self) -> Vec<u8> {
            let mut b = self.tag(0, &[]).bytes;
            let total = b.len() as u32;
            b[0..4].copy_from_slice(&total.to_le_bytes());
            b
        }
    }

    fn mmap_payload(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&24u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for &(base, len, typ) in entries {
            p.extend_from_slice(&base.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&typ.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
        }
        p
    }

    fn module_payload(start: u32, end: u32, name: &str) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&end.to_le_bytes());
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p
    }

    #[test]
    fn parses_grub_like_structure() {
        let bytes = Builder::new()
            .tag(1, b"tv.scenario=pagefault quiet\0")
            .tag(2, b"GRUB 2.06\0")
            .tag(3, &module_payload(0x40_0000, 0x40_1000, "manifest"))
            .tag(3, &module_payload(0x50_0000, 0x90_0000, "model.gguf"))
            .tag(6, &mmap_payload(&[(0, 0x9fc00, 1), (0xf0000, 0x10000, 2), (0x10_0000, 0x7ee_0000, 1)]))
            .finish();
        let info = BootInfo::parse(&bytes).unwrap();
        assert_eq!(info.command_line(), Some("tv.scenario=pagefault quiet"));
        assert_eq!(info.boot_loader_name(), Some("GRUB 2.06"));
        let mods: Vec<_> = info.modules().collect();
        assert_eq!(mods.len(), 2);
        assert_eq!(mods[1].cmdline, "model.gguf");
        assert_eq!(mods[1].len(), 0x40_0000);
        let map: Vec<_> = info.memory_map().collect();
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].kind, MemoryKind::Reserved);
        assert_eq!(map[2].end(), 0x10_0000 + 0x7ee_0000);
        assert!(!info.booted_by_uefi());
        assert_eq!(cmdline_value(info.command_line().unwrap(), "tv.scenario"), Some("pagefault"));
        assert_eq!(cmdline_value("a=1 b", "b"), None);
    }

    #[test]
    fn rejects_truncated_and_overlong_tags() {
        let good = Builder::new().tag(1, b"x\0").finish();
        assert!(BootInfo::parse(&good).is_ok());
        assert_eq!(BootInfo::parse(&good[..good.len() - 1]).unwrap_err(), ParseError::Truncated);
        assert_eq!(BootInfo::parse(&[1, 2]).unwrap_err(), ParseError::Truncated);

        let mut overlong = good.clone();
        overlong[12..16].copy_from_slice(&0x1000u32.to_le_bytes());
        assert_eq!(BootInfo::parse(&overlong).unwrap_err(), ParseError::BadTagSize { offset: 8 });

        let mut tiny = good.clone();
        tiny[12..16].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(BootInfo::parse(&tiny).unwrap_err(), ParseError::BadTagSize { offset: 8 });
    }

    #[test]
    fn rejects_missing_end_tag_and_bad_mmap_entry_size() {
        let mut no_end = Builder::new().tag(1, b"x\0").bytes;
        let total = no_end.len() as u32;
        no_end[0..4].copy_from_slice(&total.to_le_bytes());
        assert_eq!(BootInfo::parse(&no_end).unwrap_err(), ParseError::MissingEndTag);

        let mut payload = mmap_payload(&[(0, 0x1000, 1)]);
        payload[0..4].copy_from_slice(&8u32.to_le_bytes());
        let bad = Builder::new().tag(6, &payload).finish();
        assert_eq!(BootInfo::parse(&bad).unwrap_err(), ParseError::BadMemoryMapEntrySize(8));
    }

    #[test]
    fn random_corruption_never_panics() {
        let good = Builder::new()
            .tag(1, b"cmd\0")
            .tag(3, &module_payload(1, 2, "m"))
            .tag(6, &mmap_payload(&[(0, 0x1000, 1)]))
            .finish();
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % b.len();
                b[at] = (seed >> 32) as u8;
            }
            if let Ok(info) = BootInfo::parse(&b) {
                let _ = info.command_line();
                let _ = info.memory_map().count();
                let _ = info.modules().count();
            }
        }
    }
}
