//! Guest ELF64 images: validation and the list of segments to place.
//!
//! Guests arrive as multiboot2 modules, so their bytes are untrusted input. [`GuestImage::parse`]
//! checks the header and every `PT_LOAD` program header (bounds inside the file, sizes, overlap,
//! the range the guest's memory can hold) before anything is copied; a bad image is an
//! [`ElfError`] and the guest is not started.

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    BadMagic,
    NotElf64LittleEndian,
    NotExecutable { e_type: u16 },
    NotX86_64 { machine: u16 },
    BadProgramHeaders,
    /// A segment's file bytes lie outside the file.
    SegmentOutsideFile { index: usize },
    /// `p_filesz > p_memsz`, or an address range that wraps.
    BadSegmentSize { index: usize },
    /// A segment outside `[min_addr, max_addr)` of guest memory.
    SegmentOutsideGuest { index: usize, start: u64, end: u64 },
    /// Two segments share guest memory.
    Overlap { a: usize, b: usize },
    NoLoadableSegment,
    /// The entry point is not inside an executable segment.
    EntryOutsideCode { entry: u64 },
    TooManySegments,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ElfError::TooShort => write!(f, "shorter than an ELF header"),
            ElfError::BadMagic => write!(f, "no ELF magic"),
            ElfError::NotElf64LittleEndian => write!(f, "not a little-endian ELF64 file"),
            ElfError::NotExecutable { e_type } => write!(f, "not an executable (e_type {e_type})"),
            ElfError::NotX86_64 { machine } => write!(f, "not for x86_64 (e_machine {machine})"),
            ElfError::BadProgramHeaders => write!(f, "program header table malformed or outside the file"),
            ElfError::SegmentOutsideFile { index } => write!(f, "segment {index}'s bytes lie outside the file"),
            ElfError::BadSegmentSize { index } => write!(f, "segment {index} has a bad size"),
            ElfError::SegmentOutsideGuest { index, start, end } => {
                write!(f, "segment {index} [{start:#x}, {end:#x}) is outside the guest's loadable memory")
            }
            ElfError::Overlap { a, b } => write!(f, "segments {a} and {b} overlap"),
            ElfError::NoLoadableSegment => write!(f, "no PT_LOAD segment"),
            ElfError::EntryOutsideCode { entry } => write!(f, "entry point {entry:#x} is not in an executable segment"),
            ElfError::TooManySegments => write!(f, "more than {MAX_SEGMENTS} PT_LOAD segments"),
        }
    }
}

/// At most this many loadable segments.
pub const MAX_SEGMENTS: usize = 16;

/// One loadable segment: copy `file_range` of the image to `guest_addr`, zero the rest up to
/// `mem_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    pub guest_addr: u64,
    pub file_offset: usize,
    pub file_size: usize,
    pub mem_size: u64,
    pub writable: bool,
    pub executable: bool,
}

impl Segment {
    pub fn end(&self) -> u64 {
        self.guest_addr + self.mem_size
    }
}

/// A validated guest image.
#[derive(Clone, Copy, Debug)]
pub struct GuestImage {
    pub entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

impl GuestImage {
    /// Validates `bytes` as an x86_64 executable whose segments all fit in guest-physical
    /// `[min_addr, max_addr)` (segments are placed at their physical addresses).
    pub fn parse(bytes: &[u8], min_addr: u64, max_addr: u64) -> Result<Self, ElfError> {
        if bytes.len() < 64 {
            return Err(ElfError::TooShort);
        }
        if bytes[0..4] != *b"\x7fELF" {
            return Err(ElfError::BadMagic);
        }
        if bytes[4] != 2 || bytes[5] != 1 {
            return Err(ElfError::NotElf64LittleEndian);
        }
        let e_type = u16_at(bytes, 16).ok_or(ElfError::TooShort)?;
        if e_type != 2 {
            return Err(ElfError::NotExecutable { e_type });
        }
        let machine = u16_at(bytes, 18).ok_or(ElfError::TooShort)?;
        if machine != 62 {
            return Err(ElfError::NotX86_64 { machine });
        }
        let entry = u64_at(bytes, 24).ok_or(ElfError::TooShort)?;
        let phoff = u64_at(bytes, 32).ok_or(ElfError::TooShort)?;
        let phentsize = u16_at(bytes, 54).ok_or(ElfError::TooShort)? as usize;
        let phnum = u16_at(bytes, 56).ok_or(ElfError::TooShort)? as usize;
        if phentsize < 56 {
            return Err(ElfError::BadProgramHeaders);
        }
        let table_len = phentsize.checked_mul(phnum).ok_or(ElfError::BadProgramHeaders)?;
        let phoff = usize::try_from(phoff).map_err(|_| ElfError::BadProgramHeaders)?;
        if phoff.checked_add(table_len).is_none_or(|end| end > bytes.len()) {
            return Err(ElfError::BadProgramHeaders);
        }

        let mut image = GuestImage { entry, segments: [Segment::default(); MAX_SEGMENTS], count: 0 };
        for index in 0..phnum {
            let ph = phoff + index * phentsize;
            let bad = ElfError::BadProgramHeaders;
            if u32_at(bytes, ph).ok_or(bad)? != PT_LOAD {
                continue;
            }
            let flags = u32_at(bytes, ph + 4).ok_or(bad)?;
            let offset = u64_at(bytes, ph + 8).ok_or(bad)?;
            let paddr = u64_at(bytes, ph + 24).ok_or(bad)?;
            let filesz = u64_at(bytes, ph + 32).ok_or(bad)?;
            let memsz = u64_at(bytes, ph + 40).ok_or(bad)?;
            if memsz == 0 {
                continue;
            }
            if filesz > memsz {
                return Err(ElfError::BadSegmentSize { index });
            }
            let file_end = offset.checked_add(filesz).ok_or(ElfError::SegmentOutsideFile { index })?;
            if file_end > bytes.len() as u64 {
                return Err(ElfError::SegmentOutsideFile { index });
            }
            let end = paddr.checked_add(memsz).ok_or(ElfError::BadSegmentSize { index })?;
            if paddr < min_addr || end > max_addr {
                return Err(ElfError::SegmentOutsideGuest { index, start: paddr, end });
            }
            if image.count == MAX_SEGMENTS {
                return Err(ElfError::TooManySegments);
            }
            let seg = Segment {
                guest_addr: paddr,
                file_offset: offset as usize,
                file_size: filesz as usize,
                mem_size: memsz,
                writable: flags & PF_W != 0,
                executable: flags & PF_X != 0,
            };
            for (other, s) in image.segments().iter().enumerate() {
                if seg.guest_addr < s.end() && s.guest_addr < seg.end() {
                    return Err(ElfError::Overlap { a: other, b: image.count });
                }
            }
            image.segments[image.count] = seg;
            image.count += 1;
        }
        if image.count == 0 {
            return Err(ElfError::NoLoadableSegment);
        }
        if !image.segments().iter().any(|s| s.executable && (s.guest_addr..s.end()).contains(&entry)) {
            return Err(ElfError::EntryOutsideCode { entry });
        }
        Ok(image)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::vec::Vec;

    /// A minimal x86_64 executable: a code segment and a data+bss segment.
    pub(crate) fn sample_elf() -> Vec<u8> {
        let mut b = vec![0u8; 0x3000];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&0x20_0010u64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = |b: &mut Vec<u8>, at: usize, flags: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
            b[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
            b[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        };
        ph(&mut b, 64, PF_X | 4, 0x1000, 0x20_0000, 0x1000, 0x1000);
        ph(&mut b, 120, PF_W | 4, 0x2000, 0x20_1000, 0x800, 0x4000);
        b[0x1010] = 0xf4; // hlt at the entry
        b
    }

    const MIN: u64 = 0x10_0000;
    const MAX: u64 = 0x40_0000;

    #[test]
    fn accepts_a_well_formed_image() {
        let img = GuestImage::parse(&sample_elf(), MIN, MAX).unwrap();
        assert_eq!(img.entry, 0x20_0010);
        assert_eq!(img.segments().len(), 2);
        let data = img.segments()[1];
        assert!(data.writable && !data.executable);
        assert_eq!((data.file_size, data.mem_size, data.end()), (0x800, 0x4000, 0x20_5000));
    }

    fn set_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn each_malformation_has_its_error() {
        let good = sample_elf();
        let check = |f: &dyn Fn(&mut Vec<u8>), want: ElfError| {
            let mut b = good.clone();
            f(&mut b);
            assert_eq!(GuestImage::parse(&b, MIN, MAX).unwrap_err(), want);
        };
        check(&|b| b.truncate(10), ElfError::TooShort);
        check(&|b| b[1] = b'X', ElfError::BadMagic);
        check(&|b| b[4] = 1, ElfError::NotElf64LittleEndian);
        check(&|b| b[16] = 3, ElfError::NotExecutable { e_type: 3 });
        check(&|b| b[18] = 3, ElfError::NotX86_64 { machine: 3 });
        check(&|b| b[56] = 0xff, ElfError::BadProgramHeaders);
        check(&|b| set_u64(b, 32, u64::MAX - 8), ElfError::BadProgramHeaders);
        check(&|b| { set_u64(b, 64 + 32, 0x10_0000); set_u64(b, 64 + 40, 0x10_0000) }, ElfError::SegmentOutsideFile { index: 0 });
        check(&|b| set_u64(b, 64 + 8, u64::MAX), ElfError::SegmentOutsideFile { index: 0 });
        check(&|b| set_u64(b, 120 + 32, 0x5000), ElfError::BadSegmentSize { index: 1 });
        check(&|b| set_u64(b, 120 + 40, u64::MAX), ElfError::BadSegmentSize { index: 1 });
        check(
            &|b| set_u64(b, 120 + 40, MAX),
            ElfError::SegmentOutsideGuest { index: 1, start: 0x20_1000, end: 0x20_1000 + MAX },
        );
        check(&|b| set_u64(b, 120 + 24, 0x20_0800), ElfError::Overlap { a: 0, b: 1 });
        check(&|b| set_u64(b, 24, 0x20_1010), ElfError::EntryOutsideCode { entry: 0x20_1010 });
        check(&|b| b[64] = 0, ElfError::EntryOutsideCode { entry: 0x20_0010 });
        check(&|b| { b[64] = 0; b[120] = 0; }, ElfError::NoLoadableSegment);
    }

    #[test]
    fn random_corruption_never_panics() {
        let good = sample_elf();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % 200;
                b[at] = (seed >> 40) as u8;
            }
            if let Ok(img) = GuestImage::parse(&b, MIN, MAX) {
                for s in img.segments() {
                    assert!(s.guest_addr >= MIN && s.end() <= MAX);
                    assert!(s.file_offset + s.file_size <= b.len());
                }
            }
        }
    }
}
