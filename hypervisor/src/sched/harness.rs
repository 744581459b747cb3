//! A host model of the hypervisor's run loop on the **real request path**: tenants
//! ([`Tenant`], the dispatcher the hypervisor runs) make hypercalls against their guest memories
//! ([`FakeMemory`]) and the tiny model ([`EngineHost`]); engine calls park as requests, and the
//! loop alternates "guest slices" (every tenant not parked makes its next calls) with engine
//! phases of units picked by [`Fair`], as `run_guests` in the kernel does. The host tests and
//! `cargo xtask bench tenants` drive it.
//!
//! Cost here is work, not time: the tokens the engine evaluated plus the operations it ran during
//! the unit (a token 1, an operation 1, a prefill its prompt length), so runs are exact and
//! repeatable; the hypervisor charges the TSC ticks each unit took instead.

use super::fair::Fair;
use super::TenantSlot;
use crate::dispatch::fake::FakeMemory;
use crate::dispatch::{Begun, EngineHost, Limits, Step, Tenant};
use alloc::boxed::Box;
use alloc::vec::Vec;
use engine::cpu::CpuFeatures;
use tensor_hcall::desc::{DType, GenerateDesc, OpCode, RingSetupDesc, SqEntry, TensorDesc};
use tensor_hcall::{decode_result, HcallError, Hypercall};

pub const REGION: u64 = 0x10000;
pub const REGION_LEN: u64 = 0x40000;
pub const CONTROL: u64 = 0x2000;
pub const SQ: u64 = 0x3000;
pub const CQ: u64 = 0x4000;
pub const SCRATCH: u64 = 0x5000;
pub const RING: u32 = 64;
pub const PROMPT: [u32; 4] = [2, 302, 275, 264];

/// The engine host with the tiny model (seed 1) as model 0.
pub fn tiny_host() -> EngineHost {
    let bytes: &'static [u8] = Box::leak(engine::tiny::tiny_gemma3(1).into_boxed_slice());
    let g = engine::gguf::Gguf::parse(bytes).unwrap();
    let model = engine::model::Model::from_gguf(&g).unwrap();
    let tok = engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let mut host = EngineHost::new(CpuFeatures::portable());
    host.add("tiny", model, tok);
    host
}

/// What a scripted guest does.
#[derive(Clone, Copy, Debug)]
pub enum Script {
    /// `rounds` times (0: forever): open a session, prefill [`PROMPT`], generate `tokens`
    /// (greedy), close.
    Generate { tokens: u32, rounds: u32 },
    /// Forever: `batch` softmax operations per doorbell on its ring.
    Ops { batch: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    Register,
    Open,
    Prefill,
    Generate,
    Close,
    TensorCreate,
    RingSetup,
    Doorbell,
    Finished,
}

/// A scripted guest.
pub struct Guest {
    pub t: Tenant,
    pub mem: FakeMemory,
    pub slot: TenantSlot,
    pub script: Script,
    pub phase: Phase,
    region: u64,
    session: u64,
    tensor: u64,
    rounds: u32,
    sq_producer: u32,
    pub parked: bool,
    /// Results of the engine requests, in order.
    pub results: Vec<Result<u64, HcallError>>,
    /// Generated tokens of each generate, in order.
    pub generated: Vec<Vec<u32>>,
    /// Per engine request: (units it took, cost of other tenants' units while it was parked).
    pub waits: Vec<(u64, u64)>,
    /// Others' total charged cost when the current request parked, and its units so far.
    pub parked_at: (u64, u64),
}

impl Guest {
    pub fn new(slot: TenantSlot, script: Script, limits: Limits) -> Self {
        Guest {
            t: Tenant::new(slot.0 as u16 + 1, limits),
            mem: FakeMemory::new(1 << 20),
            slot,
            script,
            phase: Phase::Register,
            region: 0,
            session: 0,
            tensor: 0,
            rounds: 0,
            sq_producer: 0,
            parked: false,
            results: Vec::new(),
            generated: Vec::new(),
            waits: Vec::new(),
            parked_at: (0, 0),
        }
    }

    /// The next call, writing its descriptors into guest memory first.
    fn next_call(&mut self) -> Option<Hypercall> {
        Some(match self.phase {
            Phase::Register => Hypercall::RegisterMemory { gpa: REGION, len: REGION_LEN, flags: 3 },
            Phase::Open => Hypercall::SessionOpen { model_id: 0, max_context: 512 },
            Phase::Prefill => {
                let b: Vec<u8> = PROMPT.iter().flat_map(|t| t.to_le_bytes()).collect();
                self.mem.poke(REGION, &b);
                Hypercall::SessionPrefill { session: self.session, region: self.region, offset: 0, count: PROMPT.len() as u64 }
            }
            Phase::Generate => {
                let Script::Generate { tokens, .. } = self.script else { unreachable!() };
                let d = GenerateDesc { session: self.session, out_region: self.region, out_offset: 0x1000, max_tokens: tokens, top_p_bits: 1.0f32.to_bits(), ..Default::default() };
                self.mem.poke(SCRATCH, &d.to_bytes());
                Hypercall::SessionGenerate { desc_gpa: SCRATCH }
            }
            Phase::Close => Hypercall::SessionClose { session: self.session },
            Phase::TensorCreate => {
                let mut d = TensorDesc { dtype: DType::F32 as u32, rank: 1, region: self.region, offset: 0x100, ..TensorDesc::default() };
                d.shape[0] = 16;
                d.strides[0] = 1;
                self.mem.poke(SCRATCH, &d.to_bytes());
                Hypercall::TensorCreate { desc_gpa: SCRATCH }
            }
            Phase::RingSetup => {
                let d = RingSetupDesc { control_gpa: CONTROL, sq_gpa: SQ, cq_gpa: CQ, sq_entries: RING, cq_entries: RING, ..Default::default() };
                self.mem.poke(SCRATCH, &d.to_bytes());
                Hypercall::RingSetup { desc_gpa: SCRATCH }
            }
            Phase::Doorbell => {
                let Script::Ops { batch } = self.script else { unreachable!() };
                for _ in 0..batch {
                    let slot = self.sq_producer % RING;
                    let mut tensors = [0u64; 4];
                    tensors[0] = self.tensor;
                    tensors[3] = self.tensor;
                    let e = SqEntry { user_data: u64::from(self.sq_producer), opcode: OpCode::Softmax as u16, tensors, ..Default::default() };
                    self.mem.poke(SQ + u64::from(slot) * 64, &e.to_bytes());
                    self.sq_producer = self.sq_producer.wrapping_add(1);
                }
                self.mem.poke(CONTROL, &self.sq_producer.to_le_bytes());
                Hypercall::Doorbell { ring: 0 }
            }
            Phase::Finished => return None,
        })
    }

    /// Takes a call's result and moves on.
    fn answer(&mut self, r: Result<u64, HcallError>) {
        let engine = matches!(self.phase, Phase::Prefill | Phase::Generate | Phase::Doorbell);
        if engine {
            self.results.push(r);
        }
        let v = r.unwrap_or_else(|e| panic!("tenant {}: {:?} failed: {e:?}", self.slot.0, self.phase));
        self.phase = match (self.phase, self.script) {
            (Phase::Register, Script::Generate { .. }) => {
                self.region = v;
                Phase::Open
            }
            (Phase::Register, Script::Ops { .. }) => {
                self.region = v;
                Phase::TensorCreate
            }
            (Phase::Open, _) => {
                self.session = v;
                Phase::Prefill
            }
            (Phase::Prefill, _) => Phase::Generate,
            (Phase::Generate, _) => {
                let b = self.mem.peek(REGION + 0x1000, v as usize * 4);
                self.generated.push(b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect());
                Phase::Close
            }
            (Phase::Close, Script::Generate { rounds, .. }) => {
                self.rounds += 1;
                if rounds != 0 && self.rounds >= rounds {
                    Phase::Finished
                } else {
                    Phase::Open
                }
            }
            (Phase::TensorCreate, _) => {
                self.tensor = v;
                Phase::RingSetup
            }
            (Phase::RingSetup, _) => Phase::Doorbell,
            (Phase::Doorbell, _) => {
                // The guest consumes its completions.
                let cq_producer = u32::from_le_bytes(self.mem.peek(CONTROL + 128, 4).try_into().unwrap());
                self.mem.poke(CONTROL + 192, &cq_producer.to_le_bytes());
                Phase::Doorbell
            }
            (p, _) => panic!("no call in phase {p:?}"),
        };
    }
}

/// The tenants, the engine and the scheduler.
pub struct Host {
    pub guests: Vec<Guest>,
    pub models: EngineHost,
    pub fair: Fair,
    /// Engine cost per engine phase when some guest could run.
    slice: u64,
    pub units: u64,
    /// Tenant of every unit, in order.
    pub picks: Vec<usize>,
}

impl Host {
    /// `quantum`: DRR cost per unit of weight per round; `slice`: engine cost run between guest
    /// slices while some guest can run.
    pub fn new(quantum: u64, slice: u64) -> Self {
        Host { guests: Vec::new(), models: tiny_host(), fair: Fair::new(quantum).unwrap(), slice, units: 0, picks: Vec::new() }
    }

    pub fn add(&mut self, weight: u32, script: Script, limits: Limits) -> usize {
        let slot = self.fair.add(weight).unwrap();
        self.guests.push(Guest::new(slot, script, limits));
        self.guests.len() - 1
    }

    fn others_cost(&self, i: usize) -> u64 {
        self.guests.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, g)| self.fair.charged(g.slot).cost).sum()
    }

    /// A guest slice: the guest makes calls until it parks on an engine request or finishes.
    fn guest_slice(&mut self, i: usize) {
        for _ in 0..16 {
            let others = self.others_cost(i);
            let g = &mut self.guests[i];
            let Some(call) = g.next_call() else { return };
            match g.t.begin(&call.to_regs(), &g.mem, &mut self.models) {
                Begun::Done(rax) => g.answer(decode_result(rax)),
                Begun::Parked => {
                    g.parked = true;
                    g.parked_at = (others, 0);
                    self.fair.set_backlogged(g.slot, true).unwrap();
                    return;
                }
            }
        }
    }

    /// One engine unit, picked by the scheduler: `None` when no request is parked, else whether
    /// the unit completed its request (the vCPU is runnable again).
    fn engine_unit(&mut self) -> Option<bool> {
        let slot = self.fair.pick()?;
        let i = self.guests.iter().position(|g| g.slot == slot).unwrap();
        let others = self.others_cost(i);
        let g = &mut self.guests[i];
        let work = |t: &Tenant| t.counters.tokens + t.counters.ops;
        let before = work(&g.t);
        let step = g.t.step(&g.mem, &mut self.models);
        let cost = work(&g.t) - before;
        self.fair.charge(slot, cost.max(1)).unwrap();
        self.units += 1;
        self.picks.push(i);
        g.parked_at.1 += 1;
        match step {
            Step::More => Some(false),
            Step::Done(rax) => {
                g.parked = false;
                g.waits.push((g.parked_at.1, others - g.parked_at.0));
                self.fair.set_backlogged(slot, false).unwrap();
                g.answer(decode_result(rax));
                Some(true)
            }
            Step::Idle => panic!("tenant {i} picked without a request"),
        }
    }

    /// Runs the loop until `units` engine units ran, every guest finished or `on_unit` says
    /// stop.
    pub fn run(&mut self, units: u64, mut on_unit: impl FnMut(&Self) -> bool) {
        while self.units < units {
            for i in 0..self.guests.len() {
                if !self.guests[i].parked {
                    self.guest_slice(i);
                }
            }
            // The engine phase: units until a request completes (its vCPU runs at once) or the
            // engine slice is spent while some guest can run.
            let mut spent = 0;
            loop {
                let runnable = self.guests.iter().any(|g| !g.parked && g.phase != Phase::Finished);
                if (runnable && spent >= self.slice) || self.units >= units {
                    break;
                }
                let before: u64 = self.guests.iter().map(|g| self.fair.charged(g.slot).cost).sum();
                let Some(completed) = self.engine_unit() else { break };
                spent += self.guests.iter().map(|g| self.fair.charged(g.slot).cost).sum::<u64>() - before;
                if !on_unit(self) {
                    return;
                }
                if completed {
                    break;
                }
            }
            if self.guests.iter().all(|g| g.phase == Phase::Finished) {
                break;
            }
        }
    }
}

