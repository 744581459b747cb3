//! NVMe as plain logic (NVM Express Base 2.0): controller registers, admin and I/O commands,
//! completion decoding, queue ring state with phase tags, PRP construction and identify-data
//! parsing. The driver in `kernel::devices::nvme` moves these values to and from the device.

use alloc::vec::Vec;

/// Controller register offsets (3.1).
pub mod reg {
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const INTMS: usize = 0x0c;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1c;
    pub const AQA: usize = 0x24;
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
}

/// The controller capabilities register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// Maximum entries per queue.
    pub const fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// How long enabling or disabling may take, in milliseconds (TO * 500 ms).
    pub const fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff) * 500
    }
    /// Doorbell stride: doorbells are 4 << DSTRD bytes apart.
    pub const fn doorbell_stride(self) -> u64 {
        4 << ((self.0 >> 32) & 0xf)
    }
    /// The NVM command set is supported (CSS bit 0).
    pub const fn nvm_command_set(self) -> bool {
        (self.0 >> 37) & 1 != 0
    }
    /// Smallest memory page size: 4 KiB << MPSMIN.
    pub const fn min_page_size(self) -> u64 {
        4096 << ((self.0 >> 48) & 0xf)
    }
    /// Offset of a queue's doorbell: submission tail (`completion` false) or completion head.
    pub const fn doorbell(self, qid: u16, completion: bool) -> usize {
        0x1000 + ((2 * qid as u64 + completion as u64) * self.doorbell_stride()) as usize
    }
}

/// The CC value that enables the controller: NVM command set, 4 KiB pages, round robin,
/// 64-byte submission and 16-byte completion entries.
pub const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
/// CSTS.RDY and CSTS.CFS (controller fatal status).
pub const CSTS_READY: u32 = 1;
pub const CSTS_FATAL: u32 = 2;

/// The admin queue attributes value for queues of `entries` entries each.
pub const fn aqa(entries: u16) -> u32 {
    let n = entries as u32 - 1;
    (n << 16) | n
}

/// Command opcodes used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// Admin: create I/O submission queue.
    CreateSq = 0x01,
    /// Admin: create I/O completion queue.
    CreateCq = 0x05,
    /// Admin: identify.
    Identify = 0x06,
    /// NVM: read.
    Read = 0x02,
}

/// A 64-byte submission queue entry as 16 dwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command(pub [u32; 16]);

impl Command {
    fn new(op: Opcode, cid: u16, nsid: u32, prp1: u64, prp2: u64) -> Self {
        let mut d = [0u32; 16];
        d[0] = op as u32 | (u32::from(cid) << 16);
        d[1] = nsid;
        d[6] = prp1 as u32;
        d[7] = (prp1 >> 32) as u32;
        d[8] = prp2 as u32;
        d[9] = (prp2 >> 32) as u32;
        Self(d)
    }
    /// Identify controller (CNS 1) or namespace `nsid` (CNS 0) into a 4 KiB buffer.
    pub fn identify(cid: u16, cns: u8, nsid: u32, buffer: u64) -> Self {
        let mut c = Self::new(Opcode::Identify, cid, nsid, buffer, 0);
        c.0[10] = u32::from(cns);
        c
    }
    /// Create I/O completion queue `qid` of `entries` at `base` (physically contiguous,
    /// interrupts off: the driver polls).
    pub fn create_cq(cid: u16, qid: u16, entries: u16, base: u64) -> Self {
        let mut c = Self::new(Opcode::CreateCq, cid, 0, base, 0);
        c.0[10] = (u32::from(entries - 1) << 16) | u32::from(qid);
        c.0[11] = 1; // physically contiguous
        c
    }
    /// Create I/O submission queue `qid` of `entries` at `base`, completing on `cqid`.
    pub fn create_sq(cid: u16, qid: u16, entries: u16, base: u64, cqid: u16) -> Self {
        let mut c = Self::new(Opcode::CreateSq, cid, 0, base, 0);
        c.0[10] = (u32::from(entries - 1) << 16) | u32::from(qid);
        c.0[11] = (u32::from(cqid) << 16) | 1;
        c
    }
    /// Read `blocks` (1..=65536) logical blocks from `lba` of `nsid`.
    pub fn read(cid: u16, nsid: u32, lba: u64, blocks: u32, prp1: u64, prp2: u64) -> Self {
        let mut c = Self::new(Opcode::Read, cid, nsid, prp1, prp2);
        c.0[10] = lba as u32;
        c.0[11] = (lba >> 32) as u32;
        c.0[12] = blocks.saturating_sub(1) & 0xffff;
        c
    }
    pub fn cid(&self) -> u16 {
        (self.0[0] >> 16) as u16
    }
}

/// A completion's status field (4.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Status code type (0 generic, 1 command specific, 2 media and data integrity, ...).
    pub sct: u8,
    pub sc: u8,
    pub do_not_retry: bool,
}

impl Status {
    pub const fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }
    /// A name for the common generic codes (for the log).
    pub const fn describe(self) -> &'static str {
        match (self.sct, self.sc) {
            (0, 0) => "success",
            (0, 1) => "invalid opcode",
            (0, 2) => "invalid field",
            (0, 4) => "data transfer error",
            (0, 6) => "internal error",
            (0, 0x0b) => "invalid namespace",
            (0, 0x80) => "LBA out of range",
            (0, 0x13) => "invalid PRP offset",
            (1, _) => "command-specific error",
            (2, _) => "media or data integrity error",
            _ => "error",
        }
    }
}

/// A decoded 16-byte completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub result: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub phase: bool,
    pub status: Status,
}

impl Completion {
    pub const fn decode(d: [u32; 4]) -> Self {
        let s = d[3] >> 17;
        Self {
            result: d[0],
            sq_head: d[2] as u16,
            sq_id: (d[2] >> 16) as u16,
            cid: d[3] as u16,
            phase: d[3] & (1 << 16) != 0,
            status: Status { sc: s as u8, sct: ((s >> 8) & 7) as u8, do_not_retry: s & (1 << 14) != 0 },
        }
    }
}

/// A submission ring's producer state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqRing {
    entries: u16,
    tail: u16,
    /// The head the controller last reported: the ring is full when tail + 1 == head.
    head: u16,
}

impl SqRing {
    pub const fn new(entries: u16) -> Self {
        Self { entries, tail: 0, head: 0 }
    }
    /// The slot to fill next and the tail to ring the doorbell with; `None` when full.
    pub fn push(&mut self) -> Option<(u16, u16)> {
        let next = (self.tail + 1) % self.entries;
        if next == self.head {
            return None;
        }
        let slot = self.tail;
        self.tail = next;
        Some((slot, next))
    }
    /// Records the controller's head from a completion (values outside the ring are ignored).
    pub fn set_head(&mut self, head: u16) {
        if head < self.entries {
            self.head = head;
        }
    }
}

/// A completion ring's consumer state: the next slot and the phase that marks a new entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CqRing {
    entries: u16,
    head: u16,
    phase: bool,
}

impl CqRing {
    /// Fresh queues are zeroed, so the first pass's new entries have phase 1.
    pub const fn new(entries: u16) -> Self {
        Self { entries, head: 0, phase: true }
    }
    pub const fn head(&self) -> u16 {
        self.head
    }
    /// Whether an entry with this phase tag at the head is new.
    pub const fn is_new(&self, c: &Completion) -> bool {
        c.phase == self.phase
    }
    /// Consumes the head entry; returns the new head for the doorbell. The phase flips on wrap.
    pub fn advance(&mut self) -> u16 {
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.head
    }
}

/// Why a transfer cannot be described by PRPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpError {
    Empty,
    /// Not enough pages given for `len` bytes from `offset`.
    TooFewPages { needed: usize, given: usize },
    /// More than one list page's worth of entries (the caller splits the transfer).
    TooLong { entries: usize },
    /// A page address that is not 4 KiB-aligned, or an offset within the first page >= 4096.
    Misaligned { address: u64 },
}

/// How a transfer's pages go in a command: PRP1, and PRP2 as nothing, a second page, or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prp2 {
    None,
    Page(u64),
    /// The entries of a PRP list page; the caller writes them to a page and puts its address
    /// in PRP2.
    List(Vec<u64>),
}

/// Entries in one 4 KiB PRP list page.
pub const PRP_LIST_ENTRIES: usize = 512;

/// The PRPs for `len` bytes starting `offset` bytes into `pages[0]`, continuing at the start of
/// each following page (4.1.1: only the first entry may have an offset).
pub fn prps(pages: &[u64], offset: u64, len: u64) -> Result<(u64, Prp2), PrpError> {
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if offset >= 4096 {
        return Err(PrpError::Misaligned { address: offset });
    }
    if let Some(&p) = pages.iter().find(|p| *p % 4096 != 0) {
        return Err(PrpError::Misaligned { address: p });
    }
    let needed = (offset + len).div_ceil(4096) as usize;
    if pages.len() < needed {
        return Err(PrpError::TooFewPages { needed, given: pages.len() });
    }
    let prp1 = pages[0] + offset;
    Ok(match needed {
        1 => (prp1, Prp2::None),
        2 => (prp1, Prp2::Page(pages[1])),
        n if n - 1 <= PRP_LIST_ENTRIES => (prp1, Prp2::List(pages[1..n].to_vec())),
        n => return Err(PrpError::TooLong { entries: n - 1 }),
    })
}

/// Identify-controller fields the driver logs (5.17.2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerId {
    pub vendor: u16,
    pub serial: alloc::string::String,
    pub model: alloc::string::String,
    pub firmware: alloc::string::String,
    /// Maximum data transfer size: 2^mdts minimum pages, 0 = no limit.
    pub mdts: u8,
    pub namespaces: u32,
}

fn text(b: &[u8]) -> alloc::string::String {
    let s: alloc::string::String = b.iter().map(|&c| match c {
        0 => ' ',
        0x20..0x7f => c as char,
        _ => '?',
    }).collect();
    alloc::string::String::from(s.trim_end())
}

impl ControllerId {
    pub fn parse(d: &[u8; 4096]) -> Self {
        Self {
            vendor: u16::from_le_bytes([d[0], d[1]]),
            serial: text(&d[4..24]),
            model: text(&d[24..64]),
            firmware: text(&d[64..72]),
            mdts: d[77],
            namespaces: u32::from_le_bytes([d[516], d[517], d[518], d[519]]),
        }
    }
    /// The largest transfer in bytes, given the controller's minimum page size; `None` = no limit.
    pub fn max_transfer(&self, min_page: u64) -> Option<u64> {
        (self.mdts != 0).then(|| min_page << self.mdts.min(20))
    }
}

/// Identify-namespace fields (NVM command set 4.1.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceId {
    /// Size in logical blocks.
    pub blocks: u64,
    pub block_size: u32,
}

/// Why a namespace cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceError {
    /// Size zero: an inactive namespace.
    Inactive,
    /// The current LBA format is beyond the formats listed.
    BadFormatIndex(u8),
    /// A block size below 512 bytes or above 64 KiB (2^lbads).
    BadBlockSize(u8),
    /// Metadata interleaved with data (not supported here).
    ExtendedMetadata,
}

impl NamespaceId {
    pub fn parse(d: &[u8; 4096]) -> Result<Self, NamespaceError> {
        let blocks = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        if blocks == 0 {
            return Err(NamespaceError::Inactive);
        }
        let flbas = d[26];
        let index = flbas & 0xf;
        if index > d[25] {
            return Err(NamespaceError::BadFormatIndex(index));
        }
        let f = 128 + 4 * usize::from(index);
        let lbads = d[f + 2];
        if !(9..=16).contains(&lbads) {
            return Err(NamespaceError::BadBlockSize(lbads));
        }
        let metadata = u16::from_le_bytes([d[f], d[f + 1]]);
        if metadata != 0 && flbas & 0x10 != 0 {
            return Err(NamespaceError::ExtendedMetadata);
        }
        Ok(Self { blocks, block_size: 1 << lbads })
    }
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn capability_fields_and_doorbells() {
        // QEMU: MQES 2047, CQR, TO 15 (7.5 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Capabilities(0x0040_0020_0f01_07ff);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 4);
        assert!(cap.nvm_command_set());
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.doorbell(0, false), 0x1000);
        assert_eq!(cap.doorbell(0, true), 0x1004);
        assert_eq!(cap.doorbell(1, false), 0x1008);
        assert_eq!(Capabilities(2 << 32).doorbell(1, true), 0x1000 + 3 * 16);
        assert_eq!(aqa(32), 0x001f_001f);
    }

    #[test]
    fn commands_encode_their_fields() {
        let c = Command::identify(7, 1, 0, 0x1234_5000);
        assert_eq!(c.0[0], 0x0007_0006);
        assert_eq!((c.0[6], c.0[7], c.0[10]), (0x1234_5000, 0, 1));
        let c = Command::create_sq(1, 1, 64, 0x2_0000_1000, 1);
        assert_eq!((c.0[0] & 0xff, c.0[6], c.0[7], c.0[10], c.0[11]), (1, 0x1000, 2, (63 << 16) | 1, (1 << 16) | 1));
        let c = Command::create_cq(2, 1, 64, 0x3000);
        assert_eq!((c.0[0] & 0xff, c.0[10], c.0[11]), (5, (63 << 16) | 1, 1));
        let c = Command::read(9, 1, 0x1_0000_0002, 8, 0xa000, 0xb000);
        assert_eq!(c.cid(), 9);
        assert_eq!((c.0[1], c.0[10], c.0[11], c.0[12], c.0[8]), (1, 2, 1, 7, 0xb000));
    }

    #[test]
    fn completions_decode_status_and_phase() {
        let c = Completion::decode([0xaa, 0, (1 << 16) | 5, (7 << 17) | (1 << 16) | 9]);
        assert_eq!((c.result, c.sq_head, c.sq_id, c.cid, c.phase), (0xaa, 5, 1, 9, true));
        assert!(!c.status.is_success());
        // Generic "data transfer error" with DNR: status 0x4004 -> bits 31:17.
        let c = Completion::decode([0, 0, 0, (0x4004 << 17) | 3]);
        assert_eq!(c.status, Status { sct: 0, sc: 4, do_not_retry: true });
        assert_eq!(c.status.describe(), "data transfer error");
        assert!(!c.phase);
    }

    #[test]
    fn rings_wrap_and_flip_phase() {
        let mut sq = SqRing::new(4);
        assert_eq!(sq.push(), Some((0, 1)));
        assert_eq!(sq.push(), Some((1, 2)));
        assert_eq!(sq.push(), Some((2, 3)));
        assert_eq!(sq.push(), None, "one slot stays empty");
        sq.set_head(2);
        assert_eq!(sq.push(), Some((3, 0)));
        assert_eq!(sq.push(), Some((0, 1)));
        sq.set_head(99);
        assert_eq!(sq.push(), None);

        let mut cq = CqRing::new(2);
        let new = Completion::decode([0, 0, 0, 1 << 16]);
        let old = Completion::decode([0, 0, 0, 0]);
        assert!(cq.is_new(&new) && !cq.is_new(&old));
        assert_eq!(cq.advance(), 1);
        assert_eq!(cq.advance(), 0);
        assert!(cq.is_new(&old) && !cq.is_new(&new), "second pass: phase 0 is new");
    }

    #[test]
    fn prp_entries_for_every_shape() {
        let pages: Vec<u64> = (0..600).map(|i| 0x10_0000 + i * 0x1000).collect();
        assert_eq!(prps(&pages, 0, 512), Ok((0x10_0000, Prp2::None)));
        assert_eq!(prps(&pages, 0x800, 0x800), Ok((0x10_0800, Prp2::None)));
        assert_eq!(prps(&pages, 0x800, 0x801), Ok((0x10_0800, Prp2::Page(0x10_1000))));
        assert_eq!(prps(&pages, 0, 0x3000), Ok((0x10_0000, Prp2::List(vec![0x10_1000, 0x10_2000]))));
        let (_, l) = prps(&pages, 0, 513 * 4096).unwrap();
        assert!(matches!(l, Prp2::List(v) if v.len() == 512));
        assert_eq!(prps(&pages, 0, 514 * 4096), Err(PrpError::TooLong { entries: 513 }));
        assert_eq!(prps(&pages[..2], 0, 0x3000), Err(PrpError::TooFewPages { needed: 3, given: 2 }));
        assert_eq!(prps(&[0x1001], 0, 1), Err(PrpError::Misaligned { address: 0x1001 }));
        assert_eq!(prps(&pages, 4096, 1), Err(PrpError::Misaligned { address: 4096 }));
        assert_eq!(prps(&pages, 0, 0), Err(PrpError::Empty));
    }

    #[test]
    fn identify_data() {
        let mut d = [0u8; 4096];
        d[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        d[4..12].copy_from_slice(b"tvstore ");
        d[24..36].copy_from_slice(b"QEMU NVMe Ct");
        d[64..67].copy_from_slice(b"7.2");
        d[77] = 7;
        d[516] = 1;
        let c = ControllerId::parse(&d);
        assert_eq!((c.vendor, c.serial.as_str(), c.model.as_str(), c.firmware.as_str()), (0x1b36, "tvstore", "QEMU NVMe Ct", "7.2"));
        assert_eq!((c.mdts, c.namespaces, c.max_transfer(4096)), (7, 1, Some(512 * 1024)));

        let mut n = [0u8; 4096];
        n[0..8].copy_from_slice(&8192u64.to_le_bytes());
        n[25] = 1;
        n[26] = 1;
        n[128 + 4 + 2] = 12; // format 1: 4 KiB blocks
        assert_eq!(NamespaceId::parse(&n), Ok(NamespaceId { blocks: 8192, block_size: 4096 }));
        n[26] = 2;
        assert_eq!(NamespaceId::parse(&n), Err(NamespaceError::BadFormatIndex(2)));
        n[26] = 0;
        assert_eq!(NamespaceId::parse(&n), Err(NamespaceError::BadBlockSize(0)));
        n[0..8].fill(0);
        assert_eq!(NamespaceId::parse(&n), Err(NamespaceError::Inactive));
    }
}
