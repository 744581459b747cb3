//! A guest memory for host tests and the fuzzer: a byte vector at guest-physical 0 whose first
//! page is not guest memory, a read-only range, and a hook that rewrites memory after a chosen
//! address was read (to prove descriptors are read once).

use super::GuestMemory;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use tensor_hcall::HcallError;

pub struct FakeMemory {
    bytes: RefCell<Vec<u8>>,
    /// `[start, end)` the guest may only read.
    read_only: (u64, u64),
    /// After the first read that covers this address, write these bytes there (TOCTOU probe).
    rewrite_after_read: RefCell<Option<(u64, Vec<u8>)>>,
    /// How often a read covered the probe address.
    pub probe_reads: Cell<u32>,
    probe: Cell<u64>,
}

/// The first guest-physical page is not guest memory.
pub const FIRST_VALID: u64 = 0x1000;

impl FakeMemory {
    pub fn new(size: usize) -> Self {
        Self {
            bytes: RefCell::new(vec![0; size]),
            read_only: (0, 0),
            rewrite_after_read: RefCell::new(None),
            probe_reads: Cell::new(0),
            probe: Cell::new(u64::MAX),
        }
    }

    pub fn with_read_only(mut self, start: u64, end: u64) -> Self {
        self.read_only = (start, end);
        self
    }

    pub fn size(&self) -> u64 {
        self.bytes.borrow().len() as u64
    }

    /// The guest writes its own memory.
    pub fn poke(&self, gpa: u64, data: &[u8]) {
        self.bytes.borrow_mut()[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
    }

    pub fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.bytes.borrow()[gpa as usize..gpa as usize + len].to_vec()
    }

    /// Counts reads covering `gpa`; after the first, overwrites it with `data`.
    pub fn rewrite_after_first_read(&self, gpa: u64, data: Vec<u8>) {
        self.probe.set(gpa);
        *self.rewrite_after_read.borrow_mut() = Some((gpa, data));
    }

    fn in_range(&self, gpa: u64, len: u64) -> bool {
        gpa >= FIRST_VALID && gpa.checked_add(len).is_some_and(|end| end <= self.size())
    }
}

impl GuestMemory for FakeMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HcallError> {
        if !self.in_range(gpa, buf.len() as u64) {
            return Err(HcallError::BadAddress);
        }
        buf.copy_from_slice(&self.bytes.borrow()[gpa as usize..gpa as usize + buf.len()]);
        let p = self.probe.get();
        if (gpa..gpa + buf.len() as u64).contains(&p) {
            self.probe_reads.set(self.probe_reads.get() + 1);
            if let Some((at, data)) = self.rewrite_after_read.borrow_mut().take() {
                self.poke(at, &data);
            }
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), HcallError> {
        if !self.accessible(gpa, data.len() as u64, true) {
            return Err(HcallError::BadAddress);
        }
        self.poke(gpa, data);
        Ok(())
    }

    fn accessible(&self, gpa: u64, len: u64, write: bool) -> bool {
        let (ro_s, ro_e) = self.read_only;
        let touches_ro = gpa < ro_e && gpa.saturating_add(len) > ro_s;
        self.in_range(gpa, len) && !(write && touches_ro)
    }
}
