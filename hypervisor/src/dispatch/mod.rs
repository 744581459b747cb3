//! The tensor hypercall dispatcher: one tenant's calls, as plain logic over a [`GuestMemory`]
//! (the tenant's EPT-checked accessors in the hypervisor, a fake in host tests) and a
//! [`ModelHost`] (the engine), so the host tests run exactly the code the hypervisor runs.
//!
//! Rules it keeps:
//! - **Copy, then validate, then use.** Every descriptor (tensor, ring setup, submission entry,
//!   generate request) is read from guest memory exactly once into hypervisor memory, validated
//!   with `tensor_hcall::validate`, and only that copy is used. A guest that rewrites a
//!   descriptor after the doorbell cannot change what runs.
//! - **Handles, not addresses.** Regions, tensors and sessions are named by handles that carry a
//!   kind, the tenant's id, a generation and a slot: a forged, stale or another tenant's handle
//!   is `BadHandle`.
//! - **Model access.** A tenant names (opens sessions on, queries) only the models its manifest
//!   entry lists ([`ModelAccess`]): another loaded model is `PermissionDenied`, refused before
//!   anything is charged or opened.
//! - **Quotas.** Registered bytes, operations per doorbell (in flight) and KV-cache bytes are
//!   charged before anything is done; over quota is `QuotaExceeded`, never a hang. A doorbell
//!   with more pending entries than the in-flight quota runs the first `inflight_ops` of them and
//!   completes the rest at once with status `QuotaExceeded` (consumed, never run), so the ring
//!   stays consistent and the guest resubmits them with its next doorbell.
//! - **No copy of tensor data into hypercall buffers.** Operations stream their operands from the
//!   registered memory where the guest put them, row by row into the engine's working buffers,
//!   and write results in place; only descriptors are copied.

mod access;
pub mod fake;
pub mod fuzz;
mod llm;
mod ops;

pub use access::ModelAccess;
pub use llm::{EngineHost, GenStep, ModelHost, SamplingParams};

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use tensor_hcall::cpuid::Features;
use tensor_hcall::desc::{
    AbiInfo, CqEntry, GenerateDesc, TenantStats, QUERY_TENANT_STATS, RegionFlags, RingControl, RingControlFlags, RingSetupDesc, RingSetupFlags, SqEntry,
    TensorDesc,
    MAX_RANK, MAX_RING_ENTRIES,
};
use tensor_hcall::validate::{
    check_op_shapes, ring_pending, ring_slot, validate_generate, validate_ring_setup, validate_sq_entry,
    validate_tensor, RingLayout, TensorLayout, MAX_GENERATE_TOKENS,
};
use tensor_hcall::{encode_result, HcallError, HcallRegs, Hypercall, ABI_VERSION};

/// Guest memory as the dispatcher sees it: bounds- and permission-checked copies. `write` takes
/// `&self` because guest memory is shared with the guest (the hypervisor writes through its
/// direct map; the host fake uses a cell).
pub trait GuestMemory {
    /// Copies `[gpa, gpa + buf.len())` if the guest may read all of it.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HcallError>;
    /// Writes `data` at `gpa` if the guest may write all of it.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), HcallError>;
    /// Whether `[gpa, gpa + len)` is the guest's memory with read (and, if asked, write) access.
    fn accessible(&self, gpa: u64, len: u64, write: bool) -> bool;
}

/// What the hypervisor features advertise for the dispatcher's calls.
pub const DISPATCH_FEATURES: Features = Features::CONSOLE
    .union(Features::QUERY)
    .union(Features::MEMORY)
    .union(Features::TENSORS)
    .union(Features::RINGS)
    .union(Features::SESSIONS)
    .union(Features::COMPLETION_INTERRUPTS);

/// Per-tenant limits (from the tenant manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub registered_bytes: u64,
    /// Submission entries one doorbell runs at most. Pending entries beyond it (up to the free
    /// completion slots) are consumed and completed with status `QuotaExceeded` without running.
    pub inflight_ops: u32,
    pub kv_cache_bytes: u64,
    pub regions: usize,
    pub tensors: usize,
    pub sessions: usize,
    /// The models the tenant may name (default: every loaded model).
    pub models: ModelAccess,
}

impl Limits {
    /// The limits a tenant manifest's quotas set (the table sizes keep their defaults; every
    /// model may be named).
    pub fn from_quota(q: &crate::manifest::Quota) -> Self {
        let mib = |m: u32| u64::from(m) << 20;
        Self { registered_bytes: mib(q.registered_mib), inflight_ops: q.inflight_ops, kv_cache_bytes: mib(q.kv_cache_mib), ..Self::default() }
    }

    /// The limits of a manifest tenant: its quotas and its `models` list (an empty list: no
    /// model; a list the manifest's rules would refuse: no model either).
    pub fn for_tenant(t: &crate::manifest::Tenant) -> Self {
        Self { models: ModelAccess::only(&t.models).unwrap_or(ModelAccess::NONE), ..Self::from_quota(&t.quota) }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            registered_bytes: 64 << 20,
            inflight_ops: 256,
            kv_cache_bytes: 64 << 20,
            regions: 64,
            tensors: 1024,
            sessions: 8,
            models: ModelAccess::ANY,
        }
    }
}

/// Per-tenant counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub hypercalls: u64,
    pub errors: u64,
    pub ops: u64,
    pub tokens: u64,
    /// Bytes of descriptors copied from guest memory (the only copies the ABI makes).
    pub descriptor_bytes: u64,
    /// Of those, the bytes doorbells copied (ring control blocks and submission entries).
    pub doorbell_bytes: u64,
    /// Calls refused with `QuotaExceeded`, and ring entries completed with that status.
    pub quota_refusals: u64,
    /// Nanoseconds the hypervisor spent on this tenant's exits, kept by the vCPU layer.
    pub hypervisor_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Region = 1,
    Tensor = 2,
    Session = 3,
}

/// Handle layout: kind (63:56), tenant (55:40), generation (39:32), slot (31:0). Never 0.
fn make_handle(kind: Kind, tenant: u16, generation: u8, slot: usize) -> u64 {
    (kind as u64) << 56 | u64::from(tenant) << 40 | u64::from(generation) << 32 | slot as u64
}

/// A slot table with generations, so a closed handle cannot reach a new occupant.
struct Slots<T> {
    items: Vec<(u8, Option<T>)>,
    limit: usize,
}

impl<T> Slots<T> {
    fn new(limit: usize) -> Self {
        Self { items: Vec::new(), limit }
    }

    fn insert(&mut self, v: T) -> Result<(usize, u8), HcallError> {
        if let Some(i) = self.items.iter().position(|(_, x)| x.is_none()) {
            let g = self.items[i].0.wrapping_add(1);
            self.items[i] = (g, Some(v));
            return Ok((i, g));
        }
        if self.items.len() >= self.limit {
            return Err(HcallError::QuotaExceeded);
        }
        self.items.push((1, Some(v)));
        Ok((self.items.len() - 1, 1))
    }

    fn live(&self) -> usize {
        self.items.iter().filter(|(_, x)| x.is_some()).count()
    }
}

struct Region {
    gpa: u64,
    len: u64,
    flags: RegionFlags,
    tensors: u32,
}

#[derive(Clone, Copy)]
struct Tensor {
    layout: TensorLayout,
    /// Guest-physical address of the region's first byte.
    region_gpa: u64,
    writable: bool,
}

struct Ring {
    layout: RingLayout,
    sq_entries: u32,
    cq_entries: u32,
    /// The hypervisor's own indices: the guest's copies in the control block are informational.
    sq_consumer: u32,
    cq_producer: u32,
    /// Completion interrupt vector, if the guest asked for one.
    vector: Option<u8>,
}

/// Session slot: which engine session it is and what its KV cache costs.
struct SessionSlot {
    engine_id: u32,
    kv_bytes: u64,
}

/// One tenant's hypercall state.
pub struct Tenant {
    id: u16,
    limits: Limits,
    regions: Slots<Region>,
    tensors: Slots<Tensor>,
    sessions: Slots<SessionSlot>,
    ring: Option<Ring>,
    registered: u64,
    kv_bytes: u64,
    /// A completion interrupt the vCPU layer should inject.
    pending_interrupt: Option<u8>,
    /// The engine request the tenant's vCPU is parked on, if any.
    request: Option<Request>,
    /// Where the arithmetic of its tensor operations runs (see [`Tenant::with_kernels`]).
    kernels: engine::cpu::CpuFeatures,
    pub counters: Counters,
}

/// What [`Tenant::begin`] did with a hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begun {
    /// Answered at once: the value for RAX.
    Done(u64),
    /// An engine request, copied and validated, now waiting for the engine: the vCPU stays
    /// parked (RIP not advanced) until [`Tenant::step`] returns [`Step::Done`].
    Parked,
}

/// What one [`Tenant::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// One unit ran; the request has more.
    More,
    /// The last unit ran (or the request failed): the value for RAX.
    Done(u64),
    /// No request is parked.
    Idle,
}

/// The kind of work a unit was, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// One submission-queue entry of a doorbell batch.
    Op,
    /// A whole prompt evaluation (one unit: the engine's batched evaluation is not split, so its
    /// numerics equal the engine's).
    Prefill,
    /// One generated token: sampling plus one forward pass.
    Token,
}

/// An engine request in progress. Everything it needs from the guest was copied into it and
/// validated when it was made; running it only writes results to guest memory.
enum Request {
    Doorbell(DoorbellJob),
    Prefill { engine_id: u32, tokens: Vec<u32> },
    Generate { engine_id: u32, out_gpa: u64, max_tokens: u32, written: u32 },
}

/// A doorbell batch: the submission entries it took (copied once), run one per unit.
struct DoorbellJob {
    layout: RingLayout,
    cq_entries: u32,
    control_flags: u32,
    cq_event_index: u32,
    entries: VecDeque<SqEntry>,
    /// `user_data` of the entries taken beyond the in-flight quota (after `entries` in ring
    /// order): completed with `QuotaExceeded` when the batch finishes, never run.
    over_quota: Vec<u64>,
    sq_consumer: u32,
    cq_producer: u32,
    done: u32,
}

impl Tenant {
    pub fn new(id: u16, limits: Limits) -> Self {
        Self {
            id,
            limits,
            regions: Slots::new(limits.regions),
            tensors: Slots::new(limits.tensors),
            sessions: Slots::new(limits.sessions),
            ring: None,
            registered: 0,
            kv_bytes: 0,
            pending_interrupt: None,
            request: None,
            kernels: engine::cpu::CpuFeatures::portable(),
            counters: Counters::default(),
        }
    }

    /// Runs the arithmetic of this tenant's tensor operations ([`ops`]) on `cpu`'s kernels (the
    /// hypervisor's kernel object); the default is the portable code, with the same bits.
    pub fn with_kernels(mut self, cpu: engine::cpu::CpuFeatures) -> Self {
        self.kernels = cpu;
        self
    }

    /// The completion interrupt vector to inject, if a doorbell asked for one (taken once).
    pub fn take_pending_interrupt(&mut self) -> Option<u8> {
        self.pending_interrupt.take()
    }

    pub fn registered_bytes(&self) -> u64 {
        self.registered
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.kv_bytes
    }

    fn slot_of(&self, handle: u64, kind: Kind) -> Result<(usize, u8), HcallError> {
        let k = (handle >> 56) as u8;
        let tenant = (handle >> 40) as u16;
        if k != kind as u8 || tenant != self.id {
            return Err(HcallError::BadHandle);
        }
        Ok(((handle & 0xffff_ffff) as usize, (handle >> 32) as u8))
    }

    fn lookup<'s, T>(&self, slots: &'s Slots<T>, handle: u64, kind: Kind) -> Result<&'s T, HcallError> {
        let (i, g) = self.slot_of(handle, kind)?;
        match slots.items.get(i) {
            Some((gen, Some(v))) if *gen == g => Ok(v),
            _ => Err(HcallError::BadHandle),
        }
    }

    /// Handles one hypercall (all but `ConsoleWrite` and `Exit`, which the vCPU layer handles)
    /// to completion and returns the value for RAX: [`Tenant::begin`], then every unit of an
    /// engine request at once (for callers with nothing else to run, such as the in-process
    /// transport and the fuzzer).
    pub fn hypercall(&mut self, regs: &HcallRegs, mem: &dyn GuestMemory, models: &mut dyn ModelHost) -> u64 {
        match self.begin(regs, mem, models) {
            Begun::Done(rax) => rax,
            Begun::Parked => loop {
                match self.step(mem, models) {
                    Step::More => {}
                    Step::Done(rax) => break rax,
                    Step::Idle => break encode_result(Err(HcallError::Busy)),
                }
            },
        }
    }

    /// Starts one hypercall: answers it at once, or, for engine work (`Doorbell` with entries,
    /// `SessionPrefill`, `SessionGenerate`), copies and validates its descriptors, charges its
    /// quotas and parks it as a request the engine scheduler runs unit by unit. Bad arguments
    /// and quota refusals are answered here, never queued.
    pub fn begin(&mut self, regs: &HcallRegs, mem: &dyn GuestMemory, models: &mut dyn ModelHost) -> Begun {
        self.counters.hypercalls += 1;
        if self.request.is_some() {
            // The vCPU is parked on a request; nothing else can call. Refuse, never queue.
            return Begun::Done(self.finish(Err(HcallError::Busy)));
        }
        let r = match Hypercall::decode(regs) {
            Ok(call) => self.call(call, mem, models),
            Err(e) => Err(e),
        };
        match r {
            Ok(_) if self.request.is_some() => Begun::Parked,
            r => Begun::Done(self.finish(r)),
        }
    }

    /// Whether a request is parked waiting for engine units.
    pub fn parked(&self) -> bool {
        self.request.is_some()
    }

    /// The kind of the parked request's next unit.
    pub fn next_unit(&self) -> Option<UnitKind> {
        self.request.as_ref().map(|r| match r {
            Request::Doorbell(_) => UnitKind::Op,
            Request::Prefill { .. } => UnitKind::Prefill,
            Request::Generate { .. } => UnitKind::Token,
        })
    }

    /// Runs one unit of the parked request: one submission entry, the prefill, or one token.
    pub fn step(&mut self, mem: &dyn GuestMemory, models: &mut dyn ModelHost) -> Step {
        let Some(mut req) = self.request.take() else { return Step::Idle };
        let r: Result<Option<u64>, HcallError> = match &mut req {
            Request::Doorbell(job) => self.doorbell_unit(job, mem),
            Request::Prefill { engine_id, tokens } => models.prefill(*engine_id, tokens).map(|()| {
                self.counters.tokens += tokens.len() as u64;
                Some(tokens.len() as u64)
            }),
            Request::Generate { engine_id, out_gpa, max_tokens, written } => (|| {
                let s = models.generate_step(*engine_id)?;
                mem.write(*out_gpa + 4 * u64::from(*written), &s.token.to_le_bytes())?;
                *written += 1;
                self.counters.tokens += 1;
                Ok((!s.more || *written >= *max_tokens).then_some(u64::from(*written)))
            })(),
        };
        match r {
            Ok(None) => {
                self.request = Some(req);
                Step::More
            }
            Ok(Some(v)) => Step::Done(self.finish(Ok(v))),
            Err(e) => Step::Done(self.finish(Err(e))),
        }
    }

    /// Counts a finished call's outcome and encodes it for RAX.
    fn finish(&mut self, r: Result<u64, HcallError>) -> u64 {
        if r.is_err() {
            self.counters.errors += 1;
        }
        if r == Err(HcallError::QuotaExceeded) {
            self.counters.quota_refusals += 1;
        }
        encode_result(r)
    }

    fn read_desc<const N: usize>(&mut self, mem: &dyn GuestMemory, gpa: u64) -> Result<[u8; N], HcallError> {
        let mut b = [0u8; N];
        mem.read(gpa, &mut b)?;
        self.counters.descriptor_bytes += N as u64;
        Ok(b)
    }

    fn call(&mut self, call: Hypercall, mem: &dyn GuestMemory, models: &mut dyn ModelHost) -> Result<u64, HcallError> {
        match call {
            Hypercall::ConsoleWrite { .. } | Hypercall::Exit { .. } => Err(HcallError::NotSupported),
            // Device interrupts belong to the VMM (kernel/devices/irq.rs, logic in crate::irq):
            // a dispatcher without devices knows no device.
            Hypercall::DeviceIrqBind { .. } | Hypercall::DeviceIrqDone { .. } => Err(HcallError::BadHandle),
            Hypercall::Query { kind, out_gpa, out_len } => self.query(kind, out_gpa, out_len, mem, models),
            Hypercall::RegisterMemory { gpa, len, flags } => self.register(gpa, len, flags, mem),
            Hypercall::UnregisterMemory { handle } => self.unregister(handle),
            Hypercall::TensorCreate { desc_gpa } => self.tensor_create(desc_gpa, mem),
            Hypercall::TensorDestroy { handle } => self.tensor_destroy(handle),
            Hypercall::RingSetup { desc_gpa } => self.ring_setup(desc_gpa, mem),
            Hypercall::Doorbell { ring } => self.doorbell(ring, mem),
            Hypercall::SessionOpen { model_id, max_context } => self.session_open(model_id, max_context, models),
            Hypercall::SessionPrefill { session, region, offset, count } => {
                self.session_prefill(session, region, offset, count, mem)
            }
            Hypercall::SessionGenerate { desc_gpa } => self.session_generate(desc_gpa, mem, models),
            Hypercall::SessionClose { session } => self.session_close(session, models),
        }
    }

    fn query(&mut self, kind: u64, out_gpa: u64, out_len: u64, mem: &dyn GuestMemory, models: &dyn ModelHost) -> Result<u64, HcallError> {
        let bytes: Vec<u8> = if kind == QUERY_TENANT_STATS {
            let c = &self.counters;
            TenantStats {
                hypercalls: c.hypercalls,
                errors: c.errors,
                ops: c.ops,
                tokens: c.tokens,
                quota_refusals: c.quota_refusals,
                hypervisor_ns: c.hypervisor_ns,
                registered_bytes: self.registered,
                kv_cache_bytes: self.kv_bytes,
            }
            .to_bytes()
            .to_vec()
        } else if kind == 0 {
            AbiInfo {
                abi_version: ABI_VERSION.to_u32(),
                reserved: 0,
                features: DISPATCH_FEATURES.bits(),
                max_rank: MAX_RANK as u32,
                max_ring_entries: MAX_RING_ENTRIES,
                models: models.model_count() as u32,
                max_inflight: self.limits.inflight_ops,
            }
            .to_bytes()
            .to_vec()
        } else if kind > QUERY_TENANT_STATS {
            return Err(HcallError::InvalidArgument);
        } else {
            let index = usize::try_from(kind - 1).map_err(|_| HcallError::InvalidArgument)?;
            self.limits.models.check(index as u64, models)?;
            models.model_info(index).ok_or(HcallError::NoSuchModel)?.to_bytes().to_vec()
        };
        if out_len < bytes.len() as u64 {
            return Err(HcallError::InvalidArgument);
        }
        mem.write(out_gpa, &bytes)?;
        Ok(bytes.len() as u64)
    }

    fn register(&mut self, gpa: u64, len: u64, flags: u64, mem: &dyn GuestMemory) -> Result<u64, HcallError> {
        let flags = RegionFlags::from_bits(flags).ok_or(HcallError::InvalidArgument)?;
        if len == 0 || flags.is_empty() {
            return Err(HcallError::InvalidArgument);
        }
        gpa.checked_add(len).ok_or(HcallError::BadAddress)?;
        if !mem.accessible(gpa, len, flags.contains(RegionFlags::WRITE)) {
            return Err(HcallError::BadAddress);
        }
        let total = self.registered.checked_add(len).ok_or(HcallError::QuotaExceeded)?;
        if total > self.limits.registered_bytes {
            return Err(HcallError::QuotaExceeded);
        }
        let (slot, generation) = self.regions.insert(Region { gpa, len, flags, tensors: 0 })?;
        self.registered = total;
        Ok(make_handle(Kind::Region, self.id, generation, slot))
    }

    fn unregister(&mut self, handle: u64) -> Result<u64, HcallError> {
        let region = self.lookup(&self.regions, handle, Kind::Region)?;
        if region.tensors > 0 {
            return Err(HcallError::Busy);
        }
        let len = region.len;
        let (i, _) = self.slot_of(handle, Kind::Region)?;
        self.regions.items[i].1 = None;
        self.registered -= len;
        Ok(0)
    }

    fn tensor_create(&mut self, desc_gpa: u64, mem: &dyn GuestMemory) -> Result<u64, HcallError> {
        let desc = TensorDesc::from_bytes(&self.read_desc::<{ TensorDesc::SIZE }>(mem, desc_gpa)?);
        let region = self.lookup(&self.regions, desc.region, Kind::Region)?;
        let layout = validate_tensor(&desc, region.len)?;
        let tensor = Tensor { layout, region_gpa: region.gpa, writable: region.flags.contains(RegionFlags::WRITE) };
        if !region.flags.contains(RegionFlags::READ) {
            return Err(HcallError::PermissionDenied);
        }
        let (slot, generation) = self.tensors.insert(tensor)?;
        let (ri, _) = self.slot_of(desc.region, Kind::Region)?;
        if let Some((_, Some(r))) = self.regions.items.get_mut(ri) {
            r.tensors += 1;
        }
        Ok(make_handle(Kind::Tensor, self.id, generation, slot))
    }

    fn tensor_destroy(&mut self, handle: u64) -> Result<u64, HcallError> {
        let region = self.lookup(&self.tensors, handle, Kind::Tensor)?.layout.region;
        let (i, _) = self.slot_of(handle, Kind::Tensor)?;
        self.tensors.items[i].1 = None;
        if let Ok((ri, _)) = self.slot_of(region, Kind::Region) {
            if let Some((_, Some(r))) = self.regions.items.get_mut(ri) {
                r.tensors = r.tensors.saturating_sub(1);
            }
        }
        Ok(0)
    }

    fn ring_setup(&mut self, desc_gpa: u64, mem: &dyn GuestMemory) -> Result<u64, HcallError> {
        let desc = RingSetupDesc::from_bytes(&self.read_desc::<{ RingSetupDesc::SIZE }>(mem, desc_gpa)?);
        let layout = validate_ring_setup(&desc)?;
        // The validator allows vectors 32..=255 with the flag, and none without it.
        let vector = RingSetupFlags::from_bits_truncate(desc.flags)
            .contains(RingSetupFlags::INTERRUPT)
            .then_some(desc.notify_vector as u8);
        for (start, end) in [layout.control, layout.sq, layout.cq] {
            if !mem.accessible(start, end - start, true) {
                return Err(HcallError::BadAddress);
            }
        }
        self.ring = Some(Ring { layout, sq_entries: desc.sq_entries, cq_entries: desc.cq_entries, sq_consumer: 0, cq_producer: 0, vector });
        mem.write(layout.control.0 + 64, &0u32.to_le_bytes())?;
        mem.write(layout.control.0 + 128, &0u32.to_le_bytes())?;
        Ok(0)
    }

    /// Takes every new submission up to the free completion slots (entries beyond them stay
    /// queued in the ring): copies each entry once; the first `inflight_ops` become a batch the
    /// engine runs one entry per unit, the rest are over the quota and complete with status
    /// `QuotaExceeded` without running. Completions are posted in ring order and the indices
    /// published when the batch is done. The result is how many entries the doorbell consumed
    /// (run or refused).
    fn doorbell(&mut self, ring: u64, mem: &dyn GuestMemory) -> Result<u64, HcallError> {
        if ring != 0 {
            return Err(HcallError::BadHandle);
        }
        let Some(r) = self.ring.as_ref() else { return Err(HcallError::BadHandle) };
        let (layout, sq_entries, cq_entries) = (r.layout, r.sq_entries, r.cq_entries);
        let (sq_consumer, cq_producer) = (r.sq_consumer, r.cq_producer);
        let control = RingControl::from_bytes(&self.read_desc::<{ RingControl::SIZE }>(mem, layout.control.0)?);
        let pending = ring_pending(sq_consumer, control.sq_producer.value, sq_entries)?;
        let before = self.counters.descriptor_bytes - RingControl::SIZE as u64;
        let mut take = pending;
        if take > 0 {
            // Completions the guest has not consumed hold their slots: stop there, keep the rest
            // queued.
            let used = ring_pending(control.cq_consumer.value, cq_producer, cq_entries)?;
            take = take.min(cq_entries.saturating_sub(used));
        }
        let run = take.min(self.limits.inflight_ops);
        let mut entries = VecDeque::with_capacity(run as usize);
        let mut over_quota = Vec::with_capacity((take - run) as usize);
        for i in 0..take {
            let slot = u64::from(ring_slot(sq_consumer.wrapping_add(i), sq_entries));
            let entry = SqEntry::from_bytes(&self.read_desc::<{ SqEntry::SIZE }>(mem, layout.sq.0 + slot * SqEntry::SIZE as u64)?);
            if i < run {
                entries.push_back(entry);
            } else {
                over_quota.push(entry.user_data);
            }
        }
        self.counters.doorbell_bytes += self.counters.descriptor_bytes - before;
        let mut job = DoorbellJob {
            layout,
            cq_entries,
            control_flags: control.flags,
            cq_event_index: control.cq_event_index,
            entries,
            over_quota,
            sq_consumer,
            cq_producer,
            done: 0,
        };
        if run == 0 {
            return self.doorbell_finish(&mut job, mem);
        }
        self.request = Some(Request::Doorbell(job));
        Ok(0)
    }

    /// Runs one entry of a doorbell batch and posts its completion; finishes the batch after
    /// its last entry.
    fn doorbell_unit(&mut self, job: &mut DoorbellJob, mem: &dyn GuestMemory) -> Result<Option<u64>, HcallError> {
        if let Some(entry) = job.entries.pop_front() {
            let status = self.execute(&entry, mem);
            self.counters.ops += 1;
            Self::post_completion(job, entry.user_data, status, mem)?;
        }
        if job.entries.is_empty() {
            return self.doorbell_finish(job, mem).map(Some);
        }
        Ok(None)
    }

    /// Writes one completion at the batch's next CQ slot and consumes its submission.
    fn post_completion(job: &mut DoorbellJob, user_data: u64, status: Result<u64, HcallError>, mem: &dyn GuestMemory) -> Result<(), HcallError> {
        let cqe = CqEntry {
            user_data,
            status: match status {
                Ok(_) => 0,
                Err(e) => e.code(),
            },
            result: status.unwrap_or(0),
            reserved: 0,
        };
        let cslot = u64::from(ring_slot(job.cq_producer, job.cq_entries));
        mem.write(job.layout.cq.0 + cslot * CqEntry::SIZE as u64, &cqe.to_bytes())?;
        job.sq_consumer = job.sq_consumer.wrapping_add(1);
        job.cq_producer = job.cq_producer.wrapping_add(1);
        job.done += 1;
        Ok(())
    }

    /// Completes the entries over the quota, publishes the batch's indices and raises its
    /// completion interrupt.
    fn doorbell_finish(&mut self, job: &mut DoorbellJob, mem: &dyn GuestMemory) -> Result<u64, HcallError> {
        for user_data in core::mem::take(&mut job.over_quota) {
            Self::post_completion(job, user_data, Err(HcallError::QuotaExceeded), mem)?;
            self.counters.quota_refusals += 1;
        }
        let (sq_consumer, cq_producer, done) = (job.sq_consumer, job.cq_producer, job.done);
        if let Some(r) = self.ring.as_mut() {
            r.sq_consumer = sq_consumer;
            r.cq_producer = cq_producer;
        }
        let layout = job.layout;
        mem.write(layout.control.0 + 64, &sq_consumer.to_le_bytes())?;
        mem.write(layout.control.0 + 128, &cq_producer.to_le_bytes())?;
        let vector = self.ring.as_ref().and_then(|r| r.vector);
        // Completion interrupt, unless suppressed, and only when the CQ producer passed the
        // guest's event index (the virtio event-index rule: new - event - 1 < new - old).
        let suppressed = RingControlFlags::from_bits_truncate(job.control_flags).contains(RingControlFlags::SUPPRESS_COMPLETION_INTERRUPTS);
        let old = cq_producer.wrapping_sub(done);
        let crossed = cq_producer.wrapping_sub(job.cq_event_index).wrapping_sub(1) < cq_producer.wrapping_sub(old);
        if let (Some(v), false, true, true) = (vector, suppressed, done > 0, crossed) {
            self.pending_interrupt = Some(v);
        }
        Ok(u64::from(done))
    }

    /// Runs one validated submission entry; the result is the output's byte size.
    fn execute(&mut self, entry: &SqEntry, mem: &dyn GuestMemory) -> Result<u64, HcallError> {
        let op = validate_sq_entry(entry)?;
        let n = op.op.inputs();
        let mut inputs = [None; 3];
        for (slot, &h) in inputs.iter_mut().zip(&op.inputs[..n]) {
            *slot = Some(*self.lookup(&self.tensors, h, Kind::Tensor)?);
        }
        let out = *self.lookup(&self.tensors, op.output, Kind::Tensor)?;
        if !out.writable {
            return Err(HcallError::PermissionDenied);
        }
        let ins: Vec<Tensor> = inputs[..n].iter().flatten().copied().collect();
        let layouts: Vec<TensorLayout> = ins.iter().map(|t| t.layout).collect();
        check_op_shapes(op.op, &layouts, &out.layout)?;
        ops::run(op.op, &ins, &out, op.params, mem, self.kernels)
    }

    fn session_open(&mut self, model: u64, max_context: u64, models: &mut dyn ModelHost) -> Result<u64, HcallError> {
        if max_context == 0 {
            return Err(HcallError::InvalidArgument);
        }
        // Before anything is charged or opened: a refusal changes nothing but the counters.
        self.limits.models.check(model, models)?;
        let kv = models.kv_bytes(model, max_context)?;
        let total = self.kv_bytes.checked_add(kv).ok_or(HcallError::QuotaExceeded)?;
        if total > self.limits.kv_cache_bytes || self.sessions.live() >= self.limits.sessions {
            return Err(HcallError::QuotaExceeded);
        }
        let engine_id = models.open(model, max_context)?;
        match self.sessions.insert(SessionSlot { engine_id, kv_bytes: kv }) {
            Ok((slot, generation)) => {
                self.kv_bytes = total;
                Ok(make_handle(Kind::Session, self.id, generation, slot))
            }
            Err(e) => {
                models.close(engine_id);
                Err(e)
            }
        }
    }

    fn session_prefill(
        &mut self,
        session: u64,
        region: u64,
        offset: u64,
        count: u64,
        mem: &dyn GuestMemory,
    ) -> Result<u64, HcallError> {
        let engine_id = self.lookup(&self.sessions, session, Kind::Session)?.engine_id;
        let r = self.lookup(&self.regions, region, Kind::Region)?;
        if count == 0 || count > u64::from(MAX_GENERATE_TOKENS) || !offset.is_multiple_of(4) {
            return Err(HcallError::InvalidArgument);
        }
        let end = offset.checked_add(count * 4).ok_or(HcallError::OutOfBounds)?;
        if end > r.len {
            return Err(HcallError::OutOfBounds);
        }
        let mut bytes = alloc::vec![0u8; count as usize * 4];
        mem.read(r.gpa + offset, &mut bytes)?;
        let tokens: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        self.request = Some(Request::Prefill { engine_id, tokens });
        Ok(0)
    }

    fn session_generate(&mut self, desc_gpa: u64, mem: &dyn GuestMemory, models: &mut dyn ModelHost) -> Result<u64, HcallError> {
        let d = GenerateDesc::from_bytes(&self.read_desc::<{ GenerateDesc::SIZE }>(mem, desc_gpa)?);
        let out = self.lookup(&self.regions, d.out_region, Kind::Region)?;
        validate_generate(&d, out.len)?;
        if !out.flags.contains(RegionFlags::WRITE) {
            return Err(HcallError::PermissionDenied);
        }
        let out_gpa = out.gpa + d.out_offset;
        let engine_id = self.lookup(&self.sessions, d.session, Kind::Session)?.engine_id;
        let params = SamplingParams {
            temperature: f32::from_bits(d.temperature_bits),
            top_k: d.top_k,
            top_p: if d.top_p_bits == 0 { 1.0 } else { f32::from_bits(d.top_p_bits) },
            seed: d.seed,
            stop_token: (d.flags & 1 != 0).then_some(d.stop_token),
        };
        models.generate_begin(engine_id, &params)?;
        if d.max_tokens == 0 {
            return Ok(0);
        }
        self.request = Some(Request::Generate { engine_id, out_gpa, max_tokens: d.max_tokens, written: 0 });
        Ok(0)
    }

    fn session_close(&mut self, session: u64, models: &mut dyn ModelHost) -> Result<u64, HcallError> {
        let s = self.lookup(&self.sessions, session, Kind::Session)?;
        let (engine_id, kv) = (s.engine_id, s.kv_bytes);
        let (i, _) = self.slot_of(session, Kind::Session)?;
        self.sessions.items[i].1 = None;
        self.kv_bytes -= kv;
        models.close(engine_id);
        Ok(0)
    }

    /// Closes every session (when the tenant stops), so KV caches are freed and never reused.
    pub fn close_all(&mut self, models: &mut dyn ModelHost) {
        // A request it was parked on is dropped with it.
        self.request = None;
        for (_, s) in self.sessions.items.iter_mut() {
            if let Some(s) = s.take() {
                models.close(s.engine_id);
            }
        }
        self.kv_bytes = 0;
    }
}

#[cfg(test)]
mod tests;
