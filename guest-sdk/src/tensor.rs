//! Shared tensor memory, tensors, batched ring submission and LLM sessions.
//!
//! Everything here is allocation-free. Memory the hypervisor reads or writes is a
//! [`SharedRegion`]: a guest-physical range the guest dedicates to it and registers once; data
//! moves in and out through bounds-checked volatile accessors (the hypervisor writes results in
//! place, so plain references into the region would be unsound). Descriptors are staged by the
//! transport and passed by address: the hypervisor copies them once.

use crate::{call, Transport};
use tensor_hcall::desc::{
    AbiInfo, CqEntry, DType, GenerateDesc, ModelInfo, TenantStats, OpCode, RegionFlags, RingControl, RingSetupDesc, RingSetupFlags, SqEntry,
    TensorDesc, MAX_RANK,
};
use tensor_hcall::{HcallError, Hypercall};


/// A registered range of guest memory shared with the hypervisor's engine.
pub struct SharedRegion {
    pub handle: u64,
    gpa: u64,
    /// Where this program reaches the region's bytes: `gpa` itself in a tensorvisor guest
    /// (identity map), a mapping of the window in a Linux program ([`crate::linux`]).
    addr: u64,
    len: u64,
}

impl SharedRegion {
    /// Registers `[gpa, gpa + len)`.
    ///
    /// # Safety
    /// The range must be memory of this guest used for nothing else while the region lives: the
    /// accessors below read and write it through raw pointers.
    pub unsafe fn register<T: Transport + ?Sized>(t: &mut T, gpa: u64, len: u64, flags: RegionFlags) -> Result<Self, HcallError> {
        // SAFETY: forwarded from the caller; guest-virtual equals guest-physical here.
        unsafe { Self::register_mapped(t, gpa, gpa, len, flags) }
    }

    /// Registers `[gpa, gpa + len)`, memory this program reaches at `[addr, addr + len)` (a
    /// mapping of that guest-physical range, as a Linux program maps its tensor window).
    ///
    /// # Safety
    /// `[addr, addr + len)` must be mapped onto exactly that guest-physical range, stay mapped
    /// while the region lives, and be used for nothing else.
    pub unsafe fn register_mapped<T: Transport + ?Sized>(
        t: &mut T,
        gpa: u64,
        addr: u64,
        len: u64,
        flags: RegionFlags,
    ) -> Result<Self, HcallError> {
        let handle = call(t, Hypercall::RegisterMemory { gpa, len, flags: flags.bits() })?;
        Ok(Self { handle, gpa, addr, len })
    }

    /// The region's guest-physical base (what descriptors name).
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, bytes: u64) -> Result<u64, HcallError> {
        let end = offset.checked_add(bytes).ok_or(HcallError::OutOfBounds)?;
        if end > self.len {
            return Err(HcallError::OutOfBounds);
        }
        Ok(self.addr + offset)
    }

    /// Writes bytes at `offset`.
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<(), HcallError> {
        let at = self.check(offset, data.len() as u64)?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `at + i` lies inside the region (checked above), which `register`'s caller
            // dedicated to this region.
            unsafe { core::ptr::write_volatile((at + i as u64) as *mut u8, *b) };
        }
        Ok(())
    }

    /// Reads bytes at `offset`.
    pub fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<(), HcallError> {
        let at = self.check(offset, out.len() as u64)?;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: as in `write_bytes`.
            *b = unsafe { core::ptr::read_volatile((at + i as u64) as *const u8) };
        }
        Ok(())
    }

    pub fn write_f32s(&self, offset: u64, v: &[f32]) -> Result<(), HcallError> {
        self.check(offset, v.len() as u64 * 4)?;
        for (i, x) in v.iter().enumerate() {
            self.write_bytes(offset + 4 * i as u64, &x.to_le_bytes())?;
        }
        Ok(())
    }

    pub fn read_f32s(&self, offset: u64, out: &mut [f32]) -> Result<(), HcallError> {
        self.check(offset, out.len() as u64 * 4)?;
        let mut b = [0u8; 4];
        for (i, x) in out.iter_mut().enumerate() {
            self.read_bytes(offset + 4 * i as u64, &mut b)?;
            *x = f32::from_le_bytes(b);
        }
        Ok(())
    }

    pub fn write_u32s(&self, offset: u64, v: &[u32]) -> Result<(), HcallError> {
        self.check(offset, v.len() as u64 * 4)?;
        for (i, x) in v.iter().enumerate() {
            self.write_bytes(offset + 4 * i as u64, &x.to_le_bytes())?;
        }
        Ok(())
    }

    pub fn read_u32s(&self, offset: u64, out: &mut [u32]) -> Result<(), HcallError> {
        self.check(offset, out.len() as u64 * 4)?;
        let mut b = [0u8; 4];
        for (i, x) in out.iter_mut().enumerate() {
            self.read_bytes(offset + 4 * i as u64, &mut b)?;
            *x = u32::from_le_bytes(b);
        }
        Ok(())
    }

    /// Creates a contiguous row-major tensor of `shape` at byte `offset`.
    pub fn tensor<T: Transport + ?Sized>(&self, t: &mut T, dtype: DType, offset: u64, shape: &[u64]) -> Result<u64, HcallError> {
        if shape.is_empty() || shape.len() > MAX_RANK {
            return Err(HcallError::BadRank);
        }
        let mut d = TensorDesc { dtype: dtype as u32, rank: shape.len() as u32, region: self.handle, offset, ..TensorDesc::default() };
        let mut stride = 1u64;
        for k in (0..shape.len()).rev() {
            d.shape[k] = shape[k];
            d.strides[k] = stride;
            stride = stride.checked_mul(shape[k]).ok_or(HcallError::BadShape)?;
        }
        create_tensor(t, &d)
    }
}

/// Creates a tensor from a full descriptor (any strides).
pub fn create_tensor<T: Transport + ?Sized>(t: &mut T, d: &TensorDesc) -> Result<u64, HcallError> {
    let desc_gpa = t.stage(&d.to_bytes());
    call(t, Hypercall::TensorCreate { desc_gpa })
}

/// The ABI information (`Query` kind 0).
pub fn abi_info<T: Transport + ?Sized>(t: &mut T) -> Result<AbiInfo, HcallError> {
    let out_gpa = t.stage(&[0u8; AbiInfo::SIZE]);
    call(t, Hypercall::Query { kind: 0, out_gpa, out_len: AbiInfo::SIZE as u64 })?;
    let mut out = [0u8; AbiInfo::SIZE];
    t.read_staged(&mut out);
    Ok(AbiInfo::from_bytes(&out))
}

/// This tenant's own counters (`Query` kind [`tensor_hcall::desc::QUERY_TENANT_STATS`]).
pub fn tenant_stats<T: Transport + ?Sized>(t: &mut T) -> Result<TenantStats, HcallError> {
    let out_gpa = t.stage(&[0u8; TenantStats::SIZE]);
    call(t, Hypercall::Query { kind: tensor_hcall::desc::QUERY_TENANT_STATS, out_gpa, out_len: TenantStats::SIZE as u64 })?;
    let mut out = [0u8; TenantStats::SIZE];
    t.read_staged(&mut out);
    Ok(TenantStats::from_bytes(&out))
}

/// Model `index`'s information (`Query` kind `1 + index`).
pub fn model_info<T: Transport + ?Sized>(t: &mut T, index: u64) -> Result<ModelInfo, HcallError> {
    let out_gpa = t.stage(&[0u8; ModelInfo::SIZE]);
    call(t, Hypercall::Query { kind: index + 1, out_gpa, out_len: ModelInfo::SIZE as u64 })?;
    let mut out = [0u8; ModelInfo::SIZE];
    t.read_staged(&mut out);
    Ok(ModelInfo::from_bytes(&out))
}

/// A submission/completion ring pair in a dedicated memory area. Many operations go in with one
/// doorbell (one exit).
pub struct Ring {
    area: SharedRegion,
    entries: u32,
    sq_tail: u32,
    cq_head: u32,
}

const SQ_OFF: u64 = RingControl::SIZE as u64;

impl Ring {
    /// Bytes a ring of `entries` needs.
    pub const fn area_bytes(entries: u32) -> u64 {
        SQ_OFF + entries as u64 * (SqEntry::SIZE + CqEntry::SIZE) as u64
    }

    /// Sets up a ring of `entries` (a power of two) in `[gpa, gpa + area_bytes(entries))`
    /// (64-byte aligned).
    ///
    /// # Safety
    /// The area must be this guest's memory, used for nothing else while the ring lives.
    pub unsafe fn new<T: Transport + ?Sized>(t: &mut T, gpa: u64, entries: u32) -> Result<Self, HcallError> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::with_notify(t, gpa, entries, None) }
    }

    /// Like [`Ring::new`], and with `Some(vector)` (32..=255) the hypervisor injects that
    /// interrupt when a doorbell posts completions (unless suppressed with
    /// [`Ring::suppress_interrupts`] or before the CQ producer passes [`Ring::set_event_index`]).
    ///
    /// # Safety
    /// As for [`Ring::new`]; and the guest must have an interrupt handler for `vector`.
    pub unsafe fn with_notify<T: Transport + ?Sized>(t: &mut T, gpa: u64, entries: u32, vector: Option<u8>) -> Result<Self, HcallError> {
        let area = SharedRegion { handle: 0, gpa, addr: gpa, len: Self::area_bytes(entries) };
        area.write_bytes(0, &[0u8; RingControl::SIZE])?;
        let d = RingSetupDesc {
            control_gpa: gpa,
            sq_gpa: gpa + SQ_OFF,
            cq_gpa: gpa + SQ_OFF + u64::from(entries) * SqEntry::SIZE as u64,
            sq_entries: entries,
            cq_entries: entries,
            notify_vector: vector.map_or(0, u32::from),
            flags: if vector.is_some() { RingSetupFlags::INTERRUPT.bits() } else { 0 },
            ..RingSetupDesc::default()
        };
        let desc_gpa = t.stage(&d.to_bytes());
        call(t, Hypercall::RingSetup { desc_gpa })?;
        Ok(Self { area, entries, sq_tail: 0, cq_head: 0 })
    }

    /// Queues an operation (not yet visible to the hypervisor). `ins` are input tensors.
    pub fn push(&mut self, user_data: u64, op: OpCode, ins: &[u64], out: u64, params: [u64; 2]) -> Result<(), HcallError> {
        let mut tensors = [0u64; 4];
        if ins.len() > 3 {
            return Err(HcallError::InvalidArgument);
        }
        tensors[..ins.len()].copy_from_slice(ins);
        tensors[3] = out;
        self.push_entry(&SqEntry { user_data, opcode: op as u16, tensors, params, ..SqEntry::default() })
    }

    /// Queues a raw entry (tests of the hypervisor's validation use this).
    pub fn push_entry(&mut self, e: &SqEntry) -> Result<(), HcallError> {
        let slot = u64::from(self.sq_tail & (self.entries - 1));
        self.area.write_bytes(SQ_OFF + slot * SqEntry::SIZE as u64, &e.to_bytes())?;
        self.sq_tail = self.sq_tail.wrapping_add(1);
        Ok(())
    }

    /// Publishes the queued entries and rings the doorbell once; returns how many it consumed.
    /// Entries beyond the tenant's in-flight quota (`AbiInfo::max_inflight`) are consumed
    /// without running: their completions carry `QuotaExceeded`, and they may be pushed again.
    pub fn submit<T: Transport + ?Sized>(&mut self, t: &mut T) -> Result<u64, HcallError> {
        self.publish(self.sq_tail)?;
        call(t, Hypercall::Doorbell { ring: 0 })
    }

    /// Turns completion interrupts off (the guest polls) or back on.
    pub fn suppress_interrupts(&self, suppress: bool) -> Result<(), HcallError> {
        self.area.write_bytes(256, &u32::from(suppress).to_le_bytes())
    }

    /// Asks for an interrupt only once the CQ producer passes `index`.
    pub fn set_event_index(&self, index: u32) -> Result<(), HcallError> {
        self.area.write_bytes(260, &index.to_le_bytes())
    }

    /// Writes an SQ producer index (hostile tests publish impossible ones).
    pub fn publish(&self, producer: u32) -> Result<(), HcallError> {
        self.area.write_bytes(0, &producer.to_le_bytes())
    }

    /// Takes the next completion, if the hypervisor posted one.
    pub fn complete(&mut self) -> Option<CqEntry> {
        let mut p = [0u8; 4];
        self.area.read_bytes(128, &mut p).ok()?;
        if u32::from_le_bytes(p) == self.cq_head {
            return None;
        }
        let slot = u64::from(self.cq_head & (self.entries - 1));
        let cq = SQ_OFF + u64::from(self.entries) * SqEntry::SIZE as u64;
        let mut b = [0u8; CqEntry::SIZE];
        self.area.read_bytes(cq + slot * CqEntry::SIZE as u64, &mut b).ok()?;
        self.cq_head = self.cq_head.wrapping_add(1);
        self.area.write_bytes(192, &self.cq_head.to_le_bytes()).ok()?;
        Some(CqEntry::from_bytes(&b))
    }

    /// Overwrites queued slot `index` after submission (hostile tests: a rewritten descriptor).
    pub fn rewrite(&self, index: u32, e: &SqEntry) -> Result<(), HcallError> {
        let slot = u64::from(index & (self.entries - 1));
        self.area.write_bytes(SQ_OFF + slot * SqEntry::SIZE as u64, &e.to_bytes())
    }
}

/// Sampling parameters for [`Session::generate`].
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u64,
    pub stop_token: Option<u32>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, stop_token: None }
    }
}

/// An LLM session on a hypervisor-loaded model. Its KV cache lives in the hypervisor and
/// belongs to this tenant alone.
pub struct Session {
    pub handle: u64,
}

impl Session {
    pub fn open<T: Transport + ?Sized>(t: &mut T, model: u64, max_context: u64) -> Result<Self, HcallError> {
        Ok(Self { handle: call(t, Hypercall::SessionOpen { model_id: model, max_context })? })
    }

    /// Evaluates prompt tokens, staged through `io` at `offset`.
    pub fn prefill<T: Transport + ?Sized>(&self, t: &mut T, io: &SharedRegion, offset: u64, tokens: &[u32]) -> Result<u64, HcallError> {
        io.write_u32s(offset, tokens)?;
        call(t, Hypercall::SessionPrefill { session: self.handle, region: io.handle, offset, count: tokens.len() as u64 })
    }

    /// Generates up to `max_tokens` tokens into `io` at `offset` in one call; returns the count.
    pub fn generate_into<T: Transport + ?Sized>(
        &self,
        t: &mut T,
        io: &SharedRegion,
        offset: u64,
        max_tokens: u32,
        s: &Sampling,
    ) -> Result<u64, HcallError> {
        let d = GenerateDesc {
            session: self.handle,
            out_region: io.handle,
            out_offset: offset,
            max_tokens,
            top_k: s.top_k,
            temperature_bits: s.temperature.to_bits(),
            top_p_bits: s.top_p.to_bits(),
            seed: s.seed,
            stop_token: s.stop_token.unwrap_or(0),
            flags: u32::from(s.stop_token.is_some()),
            reserved: 0,
        };
        let desc_gpa = t.stage(&d.to_bytes());
        call(t, Hypercall::SessionGenerate { desc_gpa })
    }

    /// Prefills `prompt` and generates up to `max_tokens`, handing each token to `on_token` as
    /// it comes (one hypercall per token; [`Self::generate_into`] batches).
    pub fn generate<T: Transport + ?Sized>(
        &self,
        t: &mut T,
        io: &SharedRegion,
        prompt: &[u32],
        max_tokens: u32,
        s: &Sampling,
        mut on_token: impl FnMut(u32),
    ) -> Result<u32, HcallError> {
        self.prefill(t, io, 0, prompt)?;
        let mut n = 0;
        let mut one = [0u32; 1];
        while n < max_tokens {
            // One token per call: each step seeds its own sampler (greedy decoding is unaffected;
            // for sampling, `generate_into` keeps one seeded stream over all tokens).
            let step = Sampling { seed: s.seed.wrapping_add(u64::from(n)), ..*s };
            if self.generate_into(t, io, 0, 1, &step)? == 0 {
                break;
            }
            io.read_u32s(0, &mut one)?;
            on_token(one[0]);
            n += 1;
            if s.stop_token == Some(one[0]) {
                break;
            }
        }
        Ok(n)
    }

    pub fn close<T: Transport + ?Sized>(self, t: &mut T) -> Result<u64, HcallError> {
        call(t, Hypercall::SessionClose { session: self.handle })
    }
}
