//! A transport that runs the real tensorvisor dispatcher and engine in this process, over an
//! arena of host memory that plays the guest's RAM (guest-physical addresses are the arena's host
//! addresses, as guest-virtual equals guest-physical in a tensorvisor guest). The SDK's tests and
//! doc examples use it; so can a developer writing a guest program without an emulator.
//!
//! ```
//! use guest_sdk::in_process::InProcess;
//! use guest_sdk::tensor::{Ring, SharedRegion};
//! use tensor_hcall::desc::{DType, OpCode, RegionFlags};
//!
//! let mut t = InProcess::new(1 << 20);
//! let gpa = t.alloc(4096, 64);
//! // SAFETY: the range comes from the transport's arena and is used for nothing else.
//! let data = unsafe { SharedRegion::register(&mut t, gpa, 4096, RegionFlags::READ | RegionFlags::WRITE) }.unwrap();
//! data.write_f32s(0, &[1.0, 2.0, 3.0, 4.0]).unwrap();
//! data.write_f32s(16, &[10.0, 20.0, 30.0, 40.0]).unwrap();
//! let x = data.tensor(&mut t, DType::F32, 0, &[4]).unwrap();
//! let y = data.tensor(&mut t, DType::F32, 16, &[4]).unwrap();
//! let out = data.tensor(&mut t, DType::F32, 32, &[4]).unwrap();
//! let ring_gpa = t.alloc(Ring::area_bytes(8), 64);
//! // SAFETY: as above.
//! let mut ring = unsafe { Ring::new(&mut t, ring_gpa, 8) }.unwrap();
//! ring.push(1, OpCode::Add, &[x, y], out, [0, 0]).unwrap();
//! assert_eq!(ring.submit(&mut t), Ok(1));
//! let mut sum = [0.0f32; 4];
//! data.read_f32s(32, &mut sum).unwrap();
//! assert_eq!(sum, [11.0, 22.0, 33.0, 44.0]);
//! ```

use crate::{Transport, STAGE_BYTES};
use engine::cpu::CpuFeatures;
use hypervisor::dispatch::{EngineHost, GuestMemory, Limits, Tenant, DISPATCH_FEATURES};
use std::string::String;
use std::vec::Vec;
use tensor_hcall::{cpuid, encode_result, HcallError, HcallRegs, Hypercall, ABI_VERSION};

/// The arena: guest RAM for the in-process tenant. Its bytes are reached through raw pointers
/// only (the SDK's volatile accessors write it too), never through references.
struct Arena {
    base: *mut u8,
    len: usize,
    _storage: Vec<u64>,
}

impl Arena {
    fn contains(&self, gpa: u64, len: u64) -> bool {
        let start = self.base as u64;
        gpa >= start && gpa.checked_add(len).is_some_and(|end| end <= start + self.len as u64)
    }
}

impl GuestMemory for Arena {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HcallError> {
        if !self.contains(gpa, buf.len() as u64) {
            return Err(HcallError::BadAddress);
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `[gpa, gpa + len)` lies inside the arena (checked above), which `_storage`
            // keeps allocated for as long as `self` lives.
            *b = unsafe { core::ptr::read_volatile((gpa + i as u64) as *const u8) };
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), HcallError> {
        if !self.contains(gpa, data.len() as u64) {
            return Err(HcallError::BadAddress);
        }
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile((gpa + i as u64) as *mut u8, *b) };
        }
        Ok(())
    }

    fn accessible(&self, gpa: u64, len: u64, _write: bool) -> bool {
        self.contains(gpa, len)
    }
}

/// One tenant, the real dispatcher and the real engine, in this process.
pub struct InProcess {
    arena: Arena,
    next: u64,
    stage_gpa: u64,
    tenant: Tenant,
    models: EngineHost,
    /// What the guest printed.
    pub console: String,
    /// The status of an `Exit` call.
    pub exit_status: Option<u32>,
}

impl InProcess {
    /// A tenant with `ram` bytes of arena and default limits, no models.
    pub fn new(ram: usize) -> Self {
        let mut storage = std::vec![0u64; ram.div_ceil(8)];
        let base = storage.as_mut_ptr() as *mut u8;
        let arena = Arena { base, len: storage.len() * 8, _storage: storage };
        let mut t = Self {
            arena,
            next: 0,
            stage_gpa: 0,
            tenant: Tenant::new(1, Limits::default()),
            models: EngineHost::new(CpuFeatures::detect()),
            console: String::new(),
            exit_status: None,
        };
        t.stage_gpa = t.alloc(STAGE_BYTES as u64, 64);
        t
    }

    /// Loads a GGUF model for sessions (its bytes live as long as the process).
    pub fn add_model(&mut self, name: &str, gguf: Vec<u8>) -> Result<u64, String> {
        let bytes: &'static [u8] = Box::leak(gguf.into_boxed_slice());
        let g = engine::gguf::Gguf::parse(bytes).map_err(|e| e.to_string())?;
        let model = engine::model::Model::from_gguf(&g).map_err(|e| e.to_string())?;
        let tok = engine::tokenizer::Tokenizer::from_gguf(&g).map_err(|e| e.to_string())?;
        Ok(self.models.add(name, model, tok))
    }

    /// Hands out `len` bytes of the arena aligned to `align`: the guest-physical address.
    ///
    /// # Panics
    /// When the arena is exhausted (a test set-up error).
    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let start = (self.arena.base as u64 + self.next).next_multiple_of(align);
        let end = start + len;
        assert!(self.arena.contains(start, len), "the in-process arena is exhausted");
        self.next = end - self.arena.base as u64;
        start
    }

    /// The dispatcher's counters for this tenant.
    pub fn counters(&self) -> hypervisor::dispatch::Counters {
        self.tenant.counters
    }
}

impl Transport for InProcess {
    fn hypercall(&mut self, regs: HcallRegs) -> u64 {
        match Hypercall::decode(&regs) {
            Ok(Hypercall::ConsoleWrite { gpa, len }) => {
                let mut buf = std::vec![0u8; len as usize];
                let r = self.arena.read(gpa, &mut buf).map(|()| {
                    self.console.push_str(&String::from_utf8_lossy(&buf));
                    len
                });
                encode_result(r)
            }
            Ok(Hypercall::Exit { status }) => {
                self.exit_status = Some(status);
                0
            }
            _ => self.tenant.hypercall(&regs, &self.arena, &mut self.models),
        }
    }

    fn cpuid(&mut self, leaf: u32) -> [u32; 4] {
        match leaf {
            1 => [0, 0, 1 << 31, 0],
            l if (cpuid::SIGNATURE_LEAF..=0x4000_00ff).contains(&l) => {
                cpuid::leaf(l, ABI_VERSION, DISPATCH_FEATURES).unwrap_or([0; 4])
            }
            _ => [0; 4],
        }
    }

    fn stage(&mut self, bytes: &[u8]) -> u64 {
        let n = bytes.len().min(STAGE_BYTES);
        let _ = self.arena.write(self.stage_gpa, &bytes[..n]);
        self.stage_gpa
    }

    fn read_staged(&mut self, out: &mut [u8]) {
        let n = out.len().min(STAGE_BYTES);
        let _ = self.arena.read(self.stage_gpa, &mut out[..n]);
    }
}
