//! The model store: a documented on-disk layout for models on an NVMe namespace, and SHA-256
//! (FIPS 180-4) to check them. `cargo xtask` writes stores with [`build_header`]; the hypervisor
//! reads them with [`Header::parse`] and checks each model's bytes against its digest.
//!
//! Layout (all integers little-endian):
//! ```text
//! byte 0      magic "TVSTORE1"
//!      8      version u32 = 1
//!      12     entry count u32 (at most MAX_ENTRIES)
//!      16     SHA-256 of the entry table (count * 128 bytes from byte 64)
//!      48     reserved, zero (16 bytes)
//!      64      entry table: count entries of 128 bytes:
//!               0   name, UTF-8, NUL-padded (48 bytes; at least one byte, no NUL inside)
//!               48  offset in bytes from the start of the disk (a multiple of 4096, >= 4096)
//!               56  length in bytes
//!               64  SHA-256 of the model's bytes
//!               96  reserved, zero (32 bytes)
//! 4096        extents, each 4 KiB-aligned, not overlapping each other or the header
//! ```

use alloc::string::String;
use alloc::vec::Vec;

pub const MAGIC: &[u8; 8] = b"TVSTORE1";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 4096;
pub const ENTRY_BYTES: usize = 128;
pub const NAME_BYTES: usize = 48;
pub const MAX_ENTRIES: usize = (HEADER_BYTES - 64) / ENTRY_BYTES;
pub const ALIGN: u64 = 4096;

/// One model in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub offset: u64,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// Why a store header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No magic: the disk holds no model store.
    NoStore,
    UnsupportedVersion(u32),
    TooManyEntries(u32),
    /// The entry table's digest does not match: a corrupt header.
    TableChecksum,
    BadName { index: usize },
    /// An extent that is misaligned, inside the header, overflowing or beyond the disk.
    BadExtent { index: usize, offset: u64, len: u64 },
    Overlap { first: usize, second: usize },
    DuplicateName { index: usize },
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoStore => write!(f, "no model store on this disk (magic {:?} missing)", "TVSTORE1"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported store version {v}"),
            Self::TooManyEntries(n) => write!(f, "{n} entries, at most {MAX_ENTRIES}"),
            Self::TableChecksum => write!(f, "entry table checksum mismatch (corrupt header)"),
            Self::BadName { index } => write!(f, "entry {index}: bad name"),
            Self::BadExtent { index, offset, len } => write!(f, "entry {index}: bad extent {offset:#x}+{len:#x}"),
            Self::Overlap { first, second } => write!(f, "entries {first} and {second} overlap"),
            Self::DuplicateName { index } => write!(f, "entry {index}: duplicate name"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The parsed header: the models in table order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub entries: Vec<Entry>,
}

impl Header {
    /// Parses and validates the first [`HEADER_BYTES`] of a disk of `disk_bytes` bytes.
    pub fn parse(h: &[u8; HEADER_BYTES], disk_bytes: u64) -> Result<Self, StoreError> {
        if &h[..8] != MAGIC {
            return Err(StoreError::NoStore);
        }
        let version = u32_at(h, 8);
        if version != VERSION {
            return Err(StoreError::UnsupportedVersion(version));
        }
        let count = u32_at(h, 12);
        if count as usize > MAX_ENTRIES {
            return Err(StoreError::TooManyEntries(count));
        }
        let table = &h[64..64 + count as usize * ENTRY_BYTES];
        if sha256(table) != h[16..48] {
            return Err(StoreError::TableChecksum);
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (index, e) in table.chunks_exact(ENTRY_BYTES).enumerate() {
            let raw = &e[..NAME_BYTES];
            let n = raw.iter().position(|&c| c == 0).unwrap_or(NAME_BYTES);
            let name = core::str::from_utf8(&raw[..n]).map_err(|_| StoreError::BadName { index })?;
            if name.is_empty() || raw[n..].iter().any(|&c| c != 0) || name.chars().any(|c| c.is_control() || c == ' ') {
                return Err(StoreError::BadName { index });
            }
            let (offset, len) = (u64_at(e, 48), u64_at(e, 56));
            let bad = StoreError::BadExtent { index, offset, len };
            let end = offset.checked_add(len).ok_or(bad.clone())?;
            if offset % ALIGN != 0 || offset < HEADER_BYTES as u64 || len == 0 || end > disk_bytes {
                return Err(bad);
            }
            if let Some(first) = entries.iter().position(|o| offset < o.offset + o.len && o.offset < end) {
                return Err(StoreError::Overlap { first, second: index });
            }
            if entries.iter().any(|o| o.name == name) {
                return Err(StoreError::DuplicateName { index });
            }
            let mut sha = [0u8; 32];
            sha.copy_from_slice(&e[64..96]);
            entries.push(Entry { name: String::from(name), offset, len, sha256: sha });
        }
        Ok(Self { entries })
    }
}

/// Builds a header for models of the given names, lengths and digests, laid out one after the
/// other from byte 4096 (each extent 4 KiB-aligned). Returns the header and the entries.
pub fn build_header(models: &[(&str, u64, [u8; 32])]) -> Result<([u8; HEADER_BYTES], Vec<Entry>), StoreError> {
    if models.len() > MAX_ENTRIES {
        return Err(StoreError::TooManyEntries(models.len() as u32));
    }
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(models.len() as u32).to_le_bytes());
    let mut at = HEADER_BYTES as u64;
    let mut entries = Vec::new();
    for (i, &(name, len, sha)) in models.iter().enumerate() {
        if name.is_empty() || name.len() > NAME_BYTES || name.contains('\0') {
            return Err(StoreError::BadName { index: i });
        }
        let e = &mut h[64 + i * ENTRY_BYTES..64 + (i + 1) * ENTRY_BYTES];
        e[..name.len()].copy_from_slice(name.as_bytes());
        e[48..56].copy_from_slice(&at.to_le_bytes());
        e[56..64].copy_from_slice(&len.to_le_bytes());
        e[64..96].copy_from_slice(&sha);
        entries.push(Entry { name: String::from(name), offset: at, len, sha256: sha });
        at = at.checked_add(len).and_then(|e| e.checked_next_multiple_of(ALIGN)).ok_or(StoreError::BadExtent { index: i, offset: at, len })?;
    }
    let digest = sha256(&h[64..64 + models.len() * ENTRY_BYTES]);
    h[16..48].copy_from_slice(&digest);
    Ok((h, entries))
}

/// Lowercase hex of a digest (for logs).
pub fn hex(d: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('?'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('?'));
    }
    s
}

/// Incremental SHA-256 (FIPS 180-4, 6.2).
#[derive(Clone)]
pub struct Sha256 {
    h: [u32; 8],
    block: [u8; 64],
    used: usize,
    total: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
    0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
    0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
    0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub const fn new() -> Self {
        Self {
            h: [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19],
            block: [0; 64],
            used: 0,
            total: 0,
        }
    }

    fn compress(h: &mut [u32; 8], b: &[u8]) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut bb, mut c, mut d, mut e, mut f, mut g, mut hh] = *h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & bb) ^ (a & c) ^ (bb & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = bb;
            bb = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, bb, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.used > 0 {
            let n = (64 - self.used).min(data.len());
            self.block[self.used..self.used + n].copy_from_slice(&data[..n]);
            self.used += n;
            data = &data[n..];
            if self.used < 64 {
                return;
            }
            let b = self.block;
            Self::compress(&mut self.h, &b);
            self.used = 0;
        }
        let mut chunks = data.chunks_exact(64);
        for c in &mut chunks {
            Self::compress(&mut self.h, c);
        }
        let r = chunks.remainder();
        self.block[..r.len()].copy_from_slice(r);
        self.used = r.len();
    }

    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.total.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let n = if self.used < 56 { 56 - self.used } else { 120 - self.used };
        pad[n..n + 8].copy_from_slice(&bits.to_be_bytes());
        let total = self.total;
        self.update(&pad[..n + 8]);
        self.total = total;
        let mut out = [0u8; 32];
        for (i, v) in self.h.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
        }
        out
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut s = Sha256::new();
    s.update(data);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(hex(&sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex(&sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let million = vec![b'a'; 1_000_000];
        assert_eq!(hex(&sha256(&million)), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
        // Incremental in odd pieces equals one shot.
        let mut s = Sha256::new();
        for c in million.chunks(997) {
            s.update(c);
        }
        assert_eq!(s.finish(), sha256(&million));
    }

    #[test]
    fn header_round_trips() {
        let models = [("tiny", 5000u64, sha256(b"x")), ("gemma-270m", 4096, [7; 32])];
        let (h, entries) = build_header(&models).unwrap();
        assert_eq!(entries[0].offset, 4096);
        assert_eq!(entries[1].offset, 4096 + 8192);
        let p = Header::parse(&h, 1 << 20).unwrap();
        assert_eq!(p.entries, entries);
        assert_eq!(Header::parse(&h, 12_000), Err(StoreError::BadExtent { index: 1, offset: 12288, len: 4096 }));
    }

    #[test]
    fn bad_headers_are_refused() {
        let (h, _) = build_header(&[("tiny", 100, [1; 32]), ("b", 100, [2; 32])]).unwrap();
        assert_eq!(Header::parse(&[0; HEADER_BYTES], 1 << 20), Err(StoreError::NoStore));
        let mut c = h;
        c[64 + 50] ^= 1; // offset changed without the table digest
        assert_eq!(Header::parse(&c, 1 << 20), Err(StoreError::TableChecksum));
        let mut c = h;
        c[8] = 2;
        assert_eq!(Header::parse(&c, 1 << 20), Err(StoreError::UnsupportedVersion(2)));
        let mut c = h;
        c[12] = 200;
        assert_eq!(Header::parse(&c, 1 << 20), Err(StoreError::TooManyEntries(200)));
        // Re-digest after tampering, so the semantic checks are what refuse it.
        let redigest = |mut c: [u8; HEADER_BYTES]| {
            let d = sha256(&c[64..64 + 2 * ENTRY_BYTES]);
            c[16..48].copy_from_slice(&d);
            c
        };
        let mut c = h;
        c[64 + ENTRY_BYTES + 48..64 + ENTRY_BYTES + 56].copy_from_slice(&4096u64.to_le_bytes());
        assert_eq!(Header::parse(&redigest(c), 1 << 20), Err(StoreError::Overlap { first: 0, second: 1 }));
        let mut c = h;
        c[64 + ENTRY_BYTES] = b't';
        c[64 + ENTRY_BYTES + 1..64 + ENTRY_BYTES + 4].copy_from_slice(b"iny");
        assert_eq!(Header::parse(&redigest(c), 1 << 20), Err(StoreError::DuplicateName { index: 1 }));
        let mut c = h;
        c[64 + 48..64 + 56].copy_from_slice(&0x1001u64.to_le_bytes());
        assert!(matches!(Header::parse(&redigest(c), 1 << 20), Err(StoreError::BadExtent { index: 0, .. })));
        let mut c = h;
        c[64 + 56..64 + 64].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Header::parse(&redigest(c), 1 << 20), Err(StoreError::BadExtent { index: 0, .. })));
        let mut c = h;
        c[64] = 0;
        assert_eq!(Header::parse(&redigest(c), 1 << 20), Err(StoreError::BadName { index: 0 }));
        assert!(build_header(&[("", 1, [0; 32])]).is_err());
    }
}
