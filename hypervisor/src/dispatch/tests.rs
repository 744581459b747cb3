use super::fake::FakeMemory;
use super::*;
use engine::cpu::CpuFeatures;
use std::vec;
use tensor_hcall::desc::{DType, OpCode, RingIndex};
use tensor_hcall::CallNumber;

const REGION: u64 = 0x10000;
const REGION_LEN: u64 = 0x40000;
const CONTROL: u64 = 0x2000;
const SQ: u64 = 0x3000;
const CQ: u64 = 0x4000;
const SCRATCH: u64 = 0x5000;
const ENTRIES: u32 = 64;

fn no_models() -> EngineHost {
    EngineHost::new(CpuFeatures::portable())
}

fn call(t: &mut Tenant, mem: &FakeMemory, models: &mut dyn ModelHost, c: Hypercall) -> Result<u64, HcallError> {
    tensor_hcall::decode_result(t.hypercall(&c.to_regs(), mem, models))
}

use super::fuzz::Rng;

impl Rng {
    /// A value in [-2, 2).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }
}

struct Env {
    t: Tenant,
    mem: FakeMemory,
    models: EngineHost,
    region: u64,
}

impl Env {
    fn new(limits: Limits) -> Self {
        let mem = FakeMemory::new(1 << 20).with_read_only(0x8000, 0x9000);
        let mut t = Tenant::new(7, limits);
        let mut models = no_models();
        let region = call(&mut t, &mem, &mut models, Hypercall::RegisterMemory { gpa: REGION, len: REGION_LEN, flags: 3 }).unwrap();
        Self { t, mem, models, region }
    }

    fn call(&mut self, c: Hypercall) -> Result<u64, HcallError> {
        call(&mut self.t, &self.mem, &mut self.models, c)
    }

    fn tensor(&mut self, offset: u64, dtype: DType, shape: &[u64]) -> Result<u64, HcallError> {
        let mut d = TensorDesc { dtype: dtype as u32, rank: shape.len() as u32, region: self.region, offset, ..TensorDesc::default() };
        let mut stride = 1;
        for k in (0..shape.len()).rev() {
            d.shape[k] = shape[k];
            d.strides[k] = stride;
            stride = stride.wrapping_mul(shape[k]);
        }
        self.mem.poke(SCRATCH, &d.to_bytes());
        self.call(Hypercall::TensorCreate { desc_gpa: SCRATCH })
    }

    fn put_f32(&self, offset: u64, v: &[f32]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.mem.poke(REGION + offset, &b);
    }

    fn get_f32(&self, offset: u64, n: usize) -> Vec<f32> {
        self.mem.peek(REGION + offset, n * 4).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    fn setup_ring(&mut self) {
        let d = RingSetupDesc { control_gpa: CONTROL, sq_gpa: SQ, cq_gpa: CQ, sq_entries: ENTRIES, cq_entries: ENTRIES, ..Default::default() };
        self.mem.poke(SCRATCH, &d.to_bytes());
        self.call(Hypercall::RingSetup { desc_gpa: SCRATCH }).unwrap();
    }

    /// Writes `entries` into the SQ from index `start` and publishes the producer index.
    fn submit(&self, start: u32, entries: &[SqEntry]) {
        for (i, e) in entries.iter().enumerate() {
            let slot = (start + i as u32) % ENTRIES;
            self.mem.poke(SQ + u64::from(slot) * 64, &e.to_bytes());
        }
        self.mem.poke(CONTROL, &(start + entries.len() as u32).to_le_bytes());
    }

    fn cqe(&self, index: u32) -> CqEntry {
        let b = self.mem.peek(CQ + u64::from(index % ENTRIES) * 32, 32);
        CqEntry::from_bytes(b.as_slice().try_into().unwrap())
    }
}

fn sqe(user_data: u64, op: OpCode, ins: &[u64], out: u64, params: [u64; 2]) -> SqEntry {
    let mut tensors = [0u64; 4];
    tensors[..ins.len()].copy_from_slice(ins);
    tensors[3] = out;
    SqEntry { user_data, opcode: op as u16, tensors, params, ..Default::default() }
}

#[test]
fn registration_checks_flags_addresses_and_quota() {
    let mut e = Env::new(Limits { registered_bytes: REGION_LEN + 0x2000, ..Limits::default() });
    assert_eq!(e.call(Hypercall::RegisterMemory { gpa: 0x9_0000, len: 0x1000, flags: 4 }), Err(HcallError::InvalidArgument));
    assert_eq!(e.call(Hypercall::RegisterMemory { gpa: 0x9_0000, len: 0, flags: 1 }), Err(HcallError::InvalidArgument));
    assert_eq!(e.call(Hypercall::RegisterMemory { gpa: 0x0, len: 0x1000, flags: 1 }), Err(HcallError::BadAddress));
    assert_eq!(e.call(Hypercall::RegisterMemory { gpa: 0xf_f000, len: 0x2000, flags: 1 }), Err(HcallError::BadAddress));
    assert_eq!(e.call(Hypercall::RegisterMemory { gpa: u64::MAX - 10, len: 100, flags: 1 }), Err(HcallError::BadAddress));
    // Read-only guest memory may be registered for reading only.
    assert_eq!(e.call(Hypercall::RegisterMemory { gpa: 0x8000, len: 0x1000, flags: 3 }), Err(HcallError::BadAddress));
    let ro = e.call(Hypercall::RegisterMemory { gpa: 0x8000, len: 0x1000, flags: 1 }).unwrap();
    assert_eq!(e.call(Hypercall::RegisterMemory { gpa: 0x9_0000, len: 0x1001, flags: 1 }), Err(HcallError::QuotaExceeded));
    assert_eq!(e.t.registered_bytes(), REGION_LEN + 0x1000);
    assert_eq!(e.call(Hypercall::UnregisterMemory { handle: ro }), Ok(0));
    assert_eq!(e.call(Hypercall::UnregisterMemory { handle: ro }), Err(HcallError::BadHandle));
    assert_eq!(e.t.registered_bytes(), REGION_LEN);
    // A region in use by a tensor is busy.
    let t = e.tensor(0, DType::F32, &[4]).unwrap();
    assert_eq!(e.call(Hypercall::UnregisterMemory { handle: e.region }), Err(HcallError::Busy));
    e.call(Hypercall::TensorDestroy { handle: t }).unwrap();
    assert_eq!(e.call(Hypercall::UnregisterMemory { handle: e.region }), Ok(0));
}

#[test]
fn forged_stale_and_foreign_handles_are_bad_handles() {
    let mut a = Env::new(Limits::default());
    let mut b = Env::new(Limits::default());
    b.t = Tenant::new(8, Limits::default());
    let b_region = b.call(Hypercall::RegisterMemory { gpa: REGION, len: 0x1000, flags: 3 }).unwrap();
    let t = a.tensor(0, DType::F32, &[4]).unwrap();
    // Another tenant's handle, a region handle used as a tensor, a made-up handle.
    assert_eq!(a.call(Hypercall::UnregisterMemory { handle: b_region }), Err(HcallError::BadHandle));
    assert_eq!(a.call(Hypercall::TensorDestroy { handle: a.region }), Err(HcallError::BadHandle));
    assert_eq!(a.call(Hypercall::TensorDestroy { handle: 0x0207_0000_0000_0005 }), Err(HcallError::BadHandle));
    assert_eq!(b.call(Hypercall::TensorDestroy { handle: t }), Err(HcallError::BadHandle));
    // Stale: destroyed, then the slot reused; the old handle must not reach the new tensor.
    a.call(Hypercall::TensorDestroy { handle: t }).unwrap();
    let t2 = a.tensor(0, DType::F32, &[4]).unwrap();
    assert_ne!(t, t2);
    assert_eq!(a.call(Hypercall::TensorDestroy { handle: t }), Err(HcallError::BadHandle));
    let mut d = TensorDesc { dtype: 1, rank: 1, region: b_region, offset: 0, ..Default::default() };
    d.shape[0] = 4;
    d.strides[0] = 1;
    a.mem.poke(SCRATCH, &d.to_bytes());
    assert_eq!(a.call(Hypercall::TensorCreate { desc_gpa: SCRATCH }), Err(HcallError::BadHandle));
}

#[test]
fn bad_tensor_descriptors_get_their_errors() {
    let mut e = Env::new(Limits::default());
    assert_eq!(e.tensor(0, DType::F32, &[0, 4]), Err(HcallError::BadShape));
    assert!(matches!(e.tensor(0, DType::F32, &[1 << 40, 1 << 40]), Err(HcallError::BadShape | HcallError::BadStrides)));
    assert_eq!(e.tensor(REGION_LEN - 8, DType::F32, &[4]), Err(HcallError::OutOfBounds));
    assert!(e.tensor(0, DType::F32, &[1, 1, 1, 1]).is_ok());
    let mut d = TensorDesc { dtype: 99, rank: 1, region: e.region, ..Default::default() };
    d.shape[0] = 4;
    d.strides[0] = 1;
    e.mem.poke(SCRATCH, &d.to_bytes());
    assert_eq!(e.call(Hypercall::TensorCreate { desc_gpa: SCRATCH }), Err(HcallError::BadDtype));
    d.dtype = 1;
    d.rank = 5;
    e.mem.poke(SCRATCH, &d.to_bytes());
    assert_eq!(e.call(Hypercall::TensorCreate { desc_gpa: SCRATCH }), Err(HcallError::BadRank));
    d.rank = 2;
    d.shape = [4, 4, 0, 0];
    d.strides = [u64::MAX / 2, 1, 0, 0];
    e.mem.poke(SCRATCH, &d.to_bytes());
    assert!(matches!(e.call(Hypercall::TensorCreate { desc_gpa: SCRATCH }), Err(HcallError::BadStrides | HcallError::OutOfBounds)));
    // A descriptor outside guest memory.
    assert_eq!(e.call(Hypercall::TensorCreate { desc_gpa: 0x10 }), Err(HcallError::BadAddress));
}

/// Plain references for the checks below (same arithmetic order as the ABI specifies).
fn ref_matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for x in 0..k {
                s += a[i * k + x] * b[j * k + x];
            }
            out[i * n + j] = s;
        }
    }
    out
}

#[test]
fn sixty_four_ops_in_one_doorbell_are_bit_exact() {
    let mut e = Env::new(Limits::default());
    let mut rng = Rng(0x1234_5678);
    let (m, n, k) = (3usize, 4usize, 32usize);
    let a: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
    let b: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
    let x: Vec<f32> = (0..4 * 16).map(|_| rng.f32()).collect();
    let y: Vec<f32> = (0..4 * 16).map(|_| rng.f32()).collect();
    let w: Vec<f32> = (0..16).map(|_| rng.f32()).collect();
    e.put_f32(0, &a);
    e.put_f32(0x1000, &b);
    e.put_f32(0x2000, &x);
    e.put_f32(0x3000, &y);
    e.put_f32(0x4000, &w);
    // b as Q8_0: 4 rows of one block each (scale 0.5 as f16, quants -3..).
    let mut q8 = Vec::new();
    let mut b_q8 = Vec::new();
    for r in 0..n {
        q8.extend_from_slice(&engine::half::f32_to_f16(0.5).to_le_bytes());
        for c in 0..32 {
            let q = ((r * 7 + c * 3) % 17) as i8 - 8;
            q8.push(q as u8);
            b_q8.push(0.5 * f32::from(q));
        }
    }
    e.mem.poke(REGION + 0x5000, &q8);
    let ta = e.tensor(0, DType::F32, &[m as u64, k as u64]).unwrap();
    let tb = e.tensor(0x1000, DType::F32, &[n as u64, k as u64]).unwrap();
    let tq = e.tensor(0x5000, DType::Q8_0, &[n as u64, k as u64]).unwrap();
    let tx = e.tensor(0x2000, DType::F32, &[4, 16]).unwrap();
    let ty = e.tensor(0x3000, DType::F32, &[4, 16]).unwrap();
    let tw = e.tensor(0x4000, DType::F32, &[16]).unwrap();
    let tr = e.tensor(0x2000, DType::F32, &[2, 2, 16]).unwrap();
    let eps = 1e-6f32.to_bits() as u64;
    let base = 10000f32.to_bits() as u64;
    type Kind = (OpCode, Vec<u64>, Vec<u64>, [u64; 2]);
    let kinds: [Kind; 8] = [
        (OpCode::Matmul, vec![ta, tb], vec![m as u64, n as u64], [0, 0]),
        (OpCode::Matmul, vec![ta, tq], vec![m as u64, n as u64], [0, 0]),
        (OpCode::Add, vec![tx, ty], vec![4, 16], [0, 0]),
        (OpCode::Mul, vec![tx, ty], vec![4, 16], [0, 0]),
        (OpCode::Softmax, vec![tx], vec![4, 16], [0, 0]),
        (OpCode::RmsNorm, vec![tx, tw], vec![4, 16], [eps, 0]),
        (OpCode::Rope, vec![tr], vec![2, 2, 16], [5, base]),
        (OpCode::Softmax, vec![ty], vec![4, 16], [0, 0]),
    ];
    let mut entries = Vec::new();
    let mut outs = Vec::new();
    for i in 0..64u64 {
        let (op, ins, shape, params) = &kinds[(i % 8) as usize];
        let off = 0x10000 + i * 0x400;
        let out = e.tensor(off, DType::F32, shape).unwrap();
        outs.push((off, (i % 8) as usize));
        entries.push(sqe(1000 + i, *op, ins, out, *params));
    }
    e.setup_ring();
    e.submit(0, &entries);
    let before = e.t.counters.descriptor_bytes;
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(64));
    // One control block and 64 entries were copied, nothing else.
    assert_eq!(e.t.counters.descriptor_bytes - before, RingControl::SIZE as u64 + 64 * SqEntry::SIZE as u64);

    let softmax = |row: &[f32]| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let ex: Vec<f32> = row.iter().map(|v| libm::expf(v - max)).collect();
        let mut s = 0.0f32;
        for v in &ex {
            s += v;
        }
        ex.iter().map(|v| v / s).collect::<Vec<f32>>()
    };
    let rms = |row: &[f32]| {
        let mut s = 0.0f32;
        for v in row {
            s += v * v;
        }
        let r = 1.0 / libm::sqrtf(s / 16.0 + 1e-6);
        row.iter().zip(&w).map(|(v, wi)| v * r * wi).collect::<Vec<f32>>()
    };
    let rope = |row: &[f32], pos: f32| {
        let mut o = row.to_vec();
        for p in 0..8 {
            let th = pos * libm::powf(10000.0, -((2 * p) as f32) / 16.0);
            let (s, c) = (libm::sinf(th), libm::cosf(th));
            o[p] = row[p] * c - row[p + 8] * s;
            o[p + 8] = row[p] * s + row[p + 8] * c;
        }
        o
    };
    let expected: Vec<Vec<f32>> = vec![
        ref_matmul(&a, &b, m, n, k),
        ref_matmul(&a, &b_q8, m, n, k),
        x.iter().zip(&y).map(|(p, q)| p + q).collect(),
        x.iter().zip(&y).map(|(p, q)| p * q).collect(),
        x.chunks(16).flat_map(softmax).collect(),
        x.chunks(16).flat_map(rms).collect(),
        x.chunks(16).enumerate().flat_map(|(i, r)| rope(r, (5 + i % 2) as f32)).collect(),
        y.chunks(16).flat_map(softmax).collect(),
    ];
    for (i, (off, kind)) in outs.iter().enumerate() {
        let want = &expected[*kind];
        let got = e.get_f32(*off, want.len());
        let same = got.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits());
        assert!(same, "op {i} (kind {kind}) differs: {got:?} vs {want:?}");
        let c = e.cqe(i as u32);
        assert_eq!((c.user_data, c.status, c.result), (1000 + i as u64, 0, want.len() as u64 * 4));
    }
    // Indices were published.
    assert_eq!(e.mem.peek(CONTROL + 64, 4), 64u32.to_le_bytes());
    assert_eq!(e.mem.peek(CONTROL + 128, 4), 64u32.to_le_bytes());
}

#[test]
fn each_bad_submission_gets_its_error_in_the_completion() {
    let mut e = Env::new(Limits::default());
    let t4 = e.tensor(0, DType::F32, &[4]).unwrap();
    let t5 = e.tensor(0x100, DType::F32, &[5]).unwrap();
    let ro = e.call(Hypercall::RegisterMemory { gpa: 0x8000, len: 0x1000, flags: 1 }).unwrap();
    let mut d = TensorDesc { dtype: 1, rank: 1, region: ro, ..Default::default() };
    d.shape[0] = 4;
    d.strides[0] = 1;
    e.mem.poke(SCRATCH, &d.to_bytes());
    let t_ro = e.call(Hypercall::TensorCreate { desc_gpa: SCRATCH }).unwrap();
    let bad = [
        (sqe(1, OpCode::Add, &[t4, t5], t4, [0, 0]), HcallError::BadShape),
        (sqe(2, OpCode::Add, &[t4, 0xdead], t4, [0, 0]), HcallError::BadHandle),
        (SqEntry { opcode: 77, tensors: [t4, 0, 0, t4], ..Default::default() }, HcallError::NotSupported),
        (sqe(4, OpCode::Add, &[t4, t4], t_ro, [0, 0]), HcallError::PermissionDenied),
        (SqEntry { flags: 1, ..sqe(5, OpCode::Softmax, &[t4], t4, [0, 0]) }, HcallError::InvalidArgument),
        (sqe(6, OpCode::Softmax, &[t4], t4, [9, 0]), HcallError::InvalidArgument),
    ];
    e.setup_ring();
    e.submit(0, &bad.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(bad.len() as u64));
    for (i, (s, err)) in bad.iter().enumerate() {
        let c = e.cqe(i as u32);
        assert_eq!((c.user_data, c.status), (s.user_data, err.code()), "entry {i}");
    }
    // A producer index beyond the ring, a ring that does not exist.
    e.mem.poke(CONTROL, &(bad.len() as u32 + ENTRIES + 1).to_le_bytes());
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Err(HcallError::BadRingIndex));
    assert_eq!(e.call(Hypercall::Doorbell { ring: 1 }), Err(HcallError::BadHandle));
}

#[test]
fn a_descriptor_rewritten_after_the_doorbell_cannot_change_what_runs() {
    let mut e = Env::new(Limits::default());
    let x = e.tensor(0x2000, DType::F32, &[16]).unwrap();
    let y = e.tensor(0x3000, DType::F32, &[16]).unwrap();
    let out = e.tensor(0x4000, DType::F32, &[16]).unwrap();
    e.put_f32(0x2000, &[1.0; 16]);
    e.put_f32(0x3000, &[2.0; 16]);
    e.setup_ring();
    let honest = sqe(42, OpCode::Add, &[x, y], out, [0, 0]);
    e.submit(0, &[honest]);
    // Another vCPU of the guest rewrites the entry into a Mul right after it is first read.
    let evil = sqe(666, OpCode::Mul, &[x, y], out, [0, 0]);
    e.mem.rewrite_after_first_read(SQ, evil.to_bytes().to_vec());
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(1));
    assert_eq!(e.mem.probe_reads.get(), 1, "the entry was read exactly once");
    assert_eq!(e.get_f32(0x4000, 16), vec![3.0; 16], "the add that was submitted ran");
    assert_eq!(e.cqe(0).user_data, 42);
}

/// Reads the published SQ consumer and CQ producer indices from the control block.
fn published(e: &Env) -> (u32, u32) {
    let word = |at: u64| u32::from_le_bytes(e.mem.peek(at, 4).as_slice().try_into().unwrap());
    (word(CONTROL + 64), word(CONTROL + 128))
}

#[test]
fn a_doorbell_over_the_inflight_quota_completes_the_excess_with_quota_exceeded() {
    let mut e = Env::new(Limits { inflight_ops: 10, ..Limits::default() });
    let t = e.tensor(0, DType::F32, &[4]).unwrap();
    e.put_f32(0, &[1.0, 2.0, 3.0, 4.0]);
    e.setup_ring();
    // 40 entries, each adding into its own 4-float slice of the region: which ones ran shows.
    let outs: Vec<u64> = (0..40).map(|i| e.tensor(0x1000 + 16 * i, DType::F32, &[4]).unwrap()).collect();
    let ops: Vec<SqEntry> = (0..40).map(|i| sqe(i, OpCode::Add, &[t, t], outs[i as usize], [0, 0])).collect();
    e.submit(0, &ops);
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(40), "every pending entry is consumed");
    for i in 0..40u32 {
        let c = e.cqe(i);
        assert_eq!(c.user_data, u64::from(i), "completions in ring order");
        let want = if i < 10 { 0 } else { HcallError::QuotaExceeded.code() };
        assert_eq!(c.status, want, "entry {i}");
        let ran = e.get_f32(0x1000 + 16 * u64::from(i), 4) == [2.0, 4.0, 6.0, 8.0];
        assert_eq!(ran, i < 10, "entry {i} ran only if within the quota");
    }
    assert_eq!(published(&e), (40, 40), "the ring stays consistent: consumer and producer past all 40");
    assert_eq!((e.t.counters.ops, e.t.counters.quota_refusals), (10, 30));
    // The tenant carries on: it resubmits ten of the refused entries, and they run.
    e.submit(40, &ops[10..20].iter().enumerate().map(|(k, o)| SqEntry { user_data: 100 + k as u64, ..*o }).collect::<Vec<_>>());
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(10));
    assert!((40..50).all(|i| e.cqe(i).status == 0 && e.cqe(i).user_data == u64::from(i) + 60));
    assert_eq!(e.get_f32(0x1000 + 16 * 19, 4), [2.0, 4.0, 6.0, 8.0]);
    assert_eq!(published(&e), (50, 50));
}

#[test]
fn the_completion_queue_bounds_a_doorbell_and_leaves_the_rest_queued() {
    let mut e = Env::new(Limits { inflight_ops: 10, ..Limits::default() });
    let t = e.tensor(0, DType::F32, &[4]).unwrap();
    e.setup_ring();
    let op = |i| sqe(i, OpCode::Softmax, &[t], t, [0, 0]);
    e.submit(0, &(0..50).map(op).collect::<Vec<_>>());
    // 10 run, 40 refused: 50 of the 64 completion slots are now used (the guest consumes none).
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(50));
    e.submit(50, &(50..70).map(op).collect::<Vec<_>>());
    // Only 14 completion slots are free: 14 consumed (10 run, 4 refused), 6 stay in the SQ.
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(14));
    assert_eq!(published(&e), (64, 64));
    assert_eq!((e.cqe(59).status, e.cqe(60).status), (0, HcallError::QuotaExceeded.code()));
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(0), "CQ full: nothing more is taken");
    assert_eq!(published(&e), (64, 64));
    e.mem.poke(CONTROL + 192, &60u32.to_le_bytes()); // the guest consumed 60 completions
    assert_eq!(e.call(Hypercall::Doorbell { ring: 0 }), Ok(6));
    assert!((64..70).all(|i| e.cqe(i).status == 0 && e.cqe(i).user_data == u64::from(i)));
    assert_eq!(published(&e), (70, 70));
    assert_eq!((e.t.counters.ops, e.t.counters.quota_refusals), (26, 44));
    let _ = RingIndex::default();
}

#[test]
fn query_reports_the_abi_and_refuses_small_buffers() {
    let mut e = Env::new(Limits::default());
    assert_eq!(e.call(Hypercall::Query { kind: 0, out_gpa: SCRATCH, out_len: 32 }), Ok(32));
    let info = AbiInfo::from_bytes(e.mem.peek(SCRATCH, 32).as_slice().try_into().unwrap());
    assert_eq!(info.abi_version, ABI_VERSION.to_u32());
    assert_eq!(info.max_inflight, Limits::default().inflight_ops);
    assert_eq!(e.call(Hypercall::Query { kind: 0, out_gpa: SCRATCH, out_len: 31 }), Err(HcallError::InvalidArgument));
    assert_eq!(e.call(Hypercall::Query { kind: 0, out_gpa: 0x8000, out_len: 32 }), Err(HcallError::BadAddress));
    assert_eq!(e.call(Hypercall::Query { kind: 1, out_gpa: SCRATCH, out_len: 64 }), Err(HcallError::NoSuchModel));
    // The tenant's own counters: this Query is the sixth call of the Env (register + 4 queries
    // above, 3 of them refused).
    assert_eq!(e.call(Hypercall::Query { kind: 0x100, out_gpa: SCRATCH, out_len: 64 }), Ok(64));
    let stats = tensor_hcall::desc::TenantStats::from_bytes(e.mem.peek(SCRATCH, 64).as_slice().try_into().unwrap());
    assert_eq!((stats.hypercalls, stats.errors, stats.registered_bytes), (6, 3, REGION_LEN));
    assert_eq!(e.call(Hypercall::Query { kind: 0x101, out_gpa: SCRATCH, out_len: 64 }), Err(HcallError::InvalidArgument));
    let regs = HcallRegs { rax: CallNumber::Query as u64, rbx: 0, rcx: SCRATCH, rdx: 32, rsi: 5 };
    assert_eq!(tensor_hcall::decode_result(e.t.hypercall(&regs, &e.mem, &mut e.models)), Err(HcallError::InvalidArgument));
}

fn tiny_host() -> (EngineHost, &'static [u8]) {
    let bytes: &'static [u8] = Box::leak(engine::tiny::tiny_gemma3(1).into_boxed_slice());
    let g = engine::gguf::Gguf::parse(bytes).unwrap();
    let model = engine::model::Model::from_gguf(&g).unwrap();
    let tok = engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let mut host = EngineHost::new(CpuFeatures::portable());
    host.add("tiny", model, tok);
    (host, bytes)
}

#[test]
fn sessions_generate_what_the_engine_generates_and_stay_per_tenant() {
    let (host, bytes) = tiny_host();
    let mut e = Env::new(Limits::default());
    e.models = host;
    let prompt = [2u32, 302, 275, 264, 266];
    let s = e.call(Hypercall::SessionOpen { model_id: 0, max_context: 64 }).unwrap();
    let pb: Vec<u8> = prompt.iter().flat_map(|t| t.to_le_bytes()).collect();
    e.mem.poke(REGION + 0x100, &pb);
    assert_eq!(e.call(Hypercall::SessionPrefill { session: s, region: e.region, offset: 0x100, count: 5 }), Ok(5));
    let gen = GenerateDesc {
        session: s,
        out_region: e.region,
        out_offset: 0x200,
        max_tokens: 12,
        temperature_bits: 0.9f32.to_bits(),
        top_p_bits: 1.0f32.to_bits(),
        seed: 42,
        ..Default::default()
    };
    e.mem.poke(SCRATCH, &gen.to_bytes());
    assert_eq!(e.call(Hypercall::SessionGenerate { desc_gpa: SCRATCH }), Ok(12));
    let got: Vec<u32> = e.mem.peek(REGION + 0x200, 48).chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();

    // The engine itself, in process, same model, prompt and sampling.
    let g = engine::gguf::Gguf::parse(bytes).unwrap();
    let model = engine::model::Model::from_gguf(&g).unwrap();
    let tok = engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let mut session = engine::model::Session::new(&model, 64);
    let mut sampler = engine::sampler::Sampler::new(engine::sampler::SamplerConfig { temperature: 0.9, seed: 42, ..Default::default() });
    let comp = engine::tensor::Compute { cpu: CpuFeatures::portable(), par: &engine::parallel::Serial };
    let want = engine::generate::generate(&mut session, comp, &tok, &mut sampler, &prompt, 12, false, &|| 0, &mut |_| {}).unwrap();
    assert_eq!(got, want.tokens);

    // Another tenant cannot use the session; KV quota; closing frees it.
    let mut other = Tenant::new(9, Limits::default());
    assert_eq!(call(&mut other, &e.mem, &mut e.models, Hypercall::SessionClose { session: s }), Err(HcallError::BadHandle));
    let kv = e.t.kv_cache_bytes();
    assert!(kv > 0);
    let mut small = Tenant::new(10, Limits { kv_cache_bytes: kv - 1, ..Limits::default() });
    assert_eq!(call(&mut small, &e.mem, &mut e.models, Hypercall::SessionOpen { model_id: 0, max_context: 64 }), Err(HcallError::QuotaExceeded));
    assert_eq!(e.call(Hypercall::SessionOpen { model_id: 3, max_context: 64 }), Err(HcallError::NoSuchModel));
    assert_eq!(e.call(Hypercall::SessionClose { session: s }), Ok(0));
    assert_eq!(e.t.kv_cache_bytes(), 0);
    assert_eq!(e.models.open_sessions(), 0);
    // Bad prefill: out-of-vocabulary token, out of the region.
    let s = e.call(Hypercall::SessionOpen { model_id: 0, max_context: 8 }).unwrap();
    e.mem.poke(REGION + 0x100, &100_000u32.to_le_bytes());
    assert_eq!(e.call(Hypercall::SessionPrefill { session: s, region: e.region, offset: 0x100, count: 1 }), Err(HcallError::InvalidArgument));
    assert_eq!(e.call(Hypercall::SessionPrefill { session: s, region: e.region, offset: REGION_LEN - 4, count: 2 }), Err(HcallError::OutOfBounds));
}

#[test]
fn thousands_of_hostile_calls_never_panic_and_keep_the_accounts() {
    let (host, _) = tiny_host();
    let mut e = Env::new(Limits { registered_bytes: 0x80000, sessions: 2, ..Limits::default() });
    e.models = host;
    e.setup_ring();
    let mut rng = Rng(0xfeed_beef);
    let interesting = [0, 1, 4, 64, 0x1000, 0x2000, 0x3000, SCRATCH, REGION, REGION_LEN, u64::MAX, u64::MAX - 63, 1 << 63];
    let pick = |rng: &mut Rng| match rng.next() % 4 {
        0 => interesting[(rng.next() % interesting.len() as u64) as usize],
        1 => e.region ^ (rng.next() % 4),
        _ => rng.next() % 0x10_0000,
    };
    let mut live: Vec<u64> = Vec::new();
    for i in 0..20_000u64 {
        // Random garbage in the descriptor scratch, the ring and the region now and then.
        if i % 3 == 0 {
            let at = [SCRATCH, SQ, CONTROL, REGION][(rng.next() % 4) as usize] + rng.next() % 256;
            e.mem.poke(at, &rng.next().to_le_bytes());
        }
        let mut regs = HcallRegs { rax: 2 + rng.next() % 13, rbx: pick(&mut rng), rcx: pick(&mut rng), rdx: pick(&mut rng), rsi: 0 };
        if rng.next().is_multiple_of(2) {
            regs.rdx = 0;
        }
        if let Some(&h) = live.get((rng.next() % 8) as usize) {
            if rng.next().is_multiple_of(3) {
                regs.rbx = h;
            }
        }
        let r = tensor_hcall::decode_result(e.t.hypercall(&regs, &e.mem, &mut e.models));
        if let Ok(v) = r {
            if v >> 56 != 0 {
                live.push(v);
            }
        }
        assert!(e.t.registered_bytes() <= 0x80000);
        assert!(e.t.kv_cache_bytes() <= Limits::default().kv_cache_bytes);
    }
    assert!(e.t.counters.errors > 1000 && e.t.counters.hypercalls == 20_000 + 2);
}

#[test]
fn the_fuzzer_finds_no_violations_in_thousands_of_structured_cases() {
    let (mut host, _) = tiny_host();
    for seed in 1..=4 {
        let r = super::fuzz::run(seed, 5_000, &mut host);
        assert_eq!(r.cases, 5_000);
        assert_eq!(r.violations, 0, "{r:?}");
        assert!(r.ok > 200 && r.errors > 1_000 && r.ring_entries > 0, "the cases reach both success and error paths: {r:?}");
        println!("seed {seed}: {r:?}");
    }
}

#[test]
fn completion_interrupts_follow_suppression_and_the_event_index() {
    let mut e = Env::new(Limits::default());
    let t = e.tensor(0, DType::F32, &[4]).unwrap();
    let d = RingSetupDesc {
        control_gpa: CONTROL,
        sq_gpa: SQ,
        cq_gpa: CQ,
        sq_entries: ENTRIES,
        cq_entries: ENTRIES,
        notify_vector: 0x40,
        flags: RingSetupFlags::INTERRUPT.bits(),
        ..Default::default()
    };
    e.mem.poke(SCRATCH, &d.to_bytes());
    e.call(Hypercall::RingSetup { desc_gpa: SCRATCH }).unwrap();
    let op = |i| sqe(i, OpCode::Softmax, &[t], t, [0, 0]);
    e.submit(0, &[op(0), op(1)]);
    e.call(Hypercall::Doorbell { ring: 0 }).unwrap();
    assert_eq!(e.t.take_pending_interrupt(), Some(0x40));
    assert_eq!(e.t.take_pending_interrupt(), None, "taken once");
    // Nothing new: no interrupt.
    e.call(Hypercall::Doorbell { ring: 0 }).unwrap();
    assert_eq!(e.t.take_pending_interrupt(), None);
    // Event index 5: completions 2..=3 do not cross it, 4..=5 do.
    e.mem.poke(CONTROL + 260, &5u32.to_le_bytes());
    e.submit(2, &[op(2), op(3)]);
    e.call(Hypercall::Doorbell { ring: 0 }).unwrap();
    assert_eq!(e.t.take_pending_interrupt(), None);
    e.submit(4, &[op(4), op(5)]);
    e.call(Hypercall::Doorbell { ring: 0 }).unwrap();
    assert_eq!(e.t.take_pending_interrupt(), Some(0x40));
    // Suppressed.
    e.mem.poke(CONTROL + 256, &1u32.to_le_bytes());
    e.mem.poke(CONTROL + 260, &0u32.to_le_bytes());
    e.submit(6, &[op(6)]);
    e.call(Hypercall::Doorbell { ring: 0 }).unwrap();
    assert_eq!(e.t.take_pending_interrupt(), None);
    // A vector below 32 is refused.
    let bad = RingSetupDesc { notify_vector: 8, ..d };
    e.mem.poke(SCRATCH, &bad.to_bytes());
    assert_eq!(e.call(Hypercall::RingSetup { desc_gpa: SCRATCH }), Err(HcallError::InvalidArgument));
}

/// Two loaded models, `tiny` (id 0) and `other` (id 1).
fn two_model_host() -> EngineHost {
    let (mut host, _) = tiny_host();
    let bytes: &'static [u8] = Box::leak(engine::tiny::tiny_gemma3(2).into_boxed_slice());
    let g = engine::gguf::Gguf::parse(bytes).unwrap();
    host.add("other", engine::model::Model::from_gguf(&g).unwrap(), engine::tokenizer::Tokenizer::from_gguf(&g).unwrap());
    host
}

#[test]
fn a_tenant_opens_and_queries_only_the_models_it_lists() {
    let mut e = Env::new(Limits { models: ModelAccess::only(&["tiny"]).unwrap(), ..Limits::default() });
    e.models = two_model_host();
    // Listed: opens, and its description reads.
    let s = e.call(Hypercall::SessionOpen { model_id: 0, max_context: 16 }).unwrap();
    assert_eq!(e.call(Hypercall::Query { kind: 1, out_gpa: SCRATCH, out_len: 64 }), Ok(64));
    let (kv, errors, hypercalls) = (e.t.kv_cache_bytes(), e.t.counters.errors, e.t.counters.hypercalls);
    assert!(kv > 0);
    // Loaded but not listed: refused, counted, nothing opened or charged.
    assert_eq!(e.call(Hypercall::SessionOpen { model_id: 1, max_context: 16 }), Err(HcallError::PermissionDenied));
    e.mem.poke(SCRATCH, &[0xAA; 64]);
    assert_eq!(e.call(Hypercall::Query { kind: 2, out_gpa: SCRATCH, out_len: 64 }), Err(HcallError::PermissionDenied));
    assert_eq!(e.mem.peek(SCRATCH, 64), vec![0xAA; 64], "a refused query writes nothing");
    assert_eq!(e.t.counters.errors, errors + 2);
    assert_eq!(e.t.counters.hypercalls, hypercalls + 2);
    assert_eq!(e.t.counters.quota_refusals, 0);
    assert_eq!(e.t.kv_cache_bytes(), kv);
    assert_eq!(e.t.sessions.live(), 1);
    assert_eq!(e.models.open_sessions(), 1);
    // Not loaded at all stays NoSuchModel (the ids are the host's; `Query` kind 0 counts them).
    assert_eq!(e.call(Hypercall::SessionOpen { model_id: 2, max_context: 16 }), Err(HcallError::NoSuchModel));
    assert_eq!(e.call(Hypercall::SessionOpen { model_id: u64::MAX, max_context: 16 }), Err(HcallError::NoSuchModel));
    assert_eq!(e.call(Hypercall::Query { kind: 3, out_gpa: SCRATCH, out_len: 64 }), Err(HcallError::NoSuchModel));
    // The tenant carries on: its session on the listed model still works and closes.
    e.mem.poke(REGION + 0x100, &2u32.to_le_bytes());
    assert_eq!(e.call(Hypercall::SessionPrefill { session: s, region: e.region, offset: 0x100, count: 1 }), Ok(1));
    assert_eq!(e.call(Hypercall::SessionClose { session: s }), Ok(0));
    assert_eq!((e.t.kv_cache_bytes(), e.models.open_sessions()), (0, 0));
    // The refusals show in the counters the tenant reads back.
    assert_eq!(e.call(Hypercall::Query { kind: 0x100, out_gpa: SCRATCH, out_len: 64 }), Ok(64));
    let stats = tensor_hcall::desc::TenantStats::from_bytes(e.mem.peek(SCRATCH, 64).as_slice().try_into().unwrap());
    assert_eq!(stats.errors, errors + 5);

    // Another tenant listing `other` only: the mirror image, on the same host.
    let mut t2 = Tenant::new(8, Limits { models: ModelAccess::only(&["other"]).unwrap(), ..Limits::default() });
    assert_eq!(call(&mut t2, &e.mem, &mut e.models, Hypercall::SessionOpen { model_id: 0, max_context: 16 }), Err(HcallError::PermissionDenied));
    assert!(call(&mut t2, &e.mem, &mut e.models, Hypercall::SessionOpen { model_id: 1, max_context: 16 }).is_ok());
    t2.close_all(&mut e.models);
}

#[test]
fn an_empty_list_names_no_model_and_a_tenant_without_a_manifest_names_all() {
    let mut models = two_model_host();
    let mem = FakeMemory::new(1 << 20);
    let mut none = Tenant::new(1, Limits { models: ModelAccess::NONE, ..Limits::default() });
    let mut any = Tenant::new(2, Limits::default());
    for id in 0..2 {
        assert_eq!(call(&mut none, &mem, &mut models, Hypercall::SessionOpen { model_id: id, max_context: 8 }), Err(HcallError::PermissionDenied));
        assert_eq!(call(&mut none, &mem, &mut models, Hypercall::Query { kind: 1 + id, out_gpa: SCRATCH, out_len: 64 }), Err(HcallError::PermissionDenied));
        assert!(call(&mut any, &mem, &mut models, Hypercall::SessionOpen { model_id: id, max_context: 8 }).is_ok());
        assert_eq!(call(&mut any, &mem, &mut models, Hypercall::Query { kind: 1 + id, out_gpa: SCRATCH, out_len: 64 }), Ok(64));
    }
    assert_eq!((none.counters.errors, none.kv_cache_bytes()), (4, 0));
    assert_eq!(any.counters.errors, 0);
    // The ABI query still counts every loaded model (the id space), whatever the list.
    assert_eq!(call(&mut none, &mem, &mut models, Hypercall::Query { kind: 0, out_gpa: SCRATCH, out_len: 32 }), Ok(32));
    assert_eq!(AbiInfo::from_bytes(mem.peek(SCRATCH, 32).as_slice().try_into().unwrap()).models, 2);
}

#[test]
fn manifest_tenants_get_their_model_list_and_bad_lists_fail_closed() {
    let mut t = crate::manifest::Tenant {
        name: "a".into(),
        guest: "infer".into(),
        args: String::new(),
        memory_mib: 8,
        vcpus: 1,
        cpus: vec![],
        models: vec!["tiny.gguf".into(), "b.gguf".into()],
        quota: crate::manifest::Quota { registered_mib: 2, inflight_ops: 16, kv_cache_mib: 3 },
        weight: 1,
        flags: crate::manifest::Flags::empty(),
        cpu_budget_ms: 100,
        devices: vec![],
        linux: None,
    };
    let l = Limits::for_tenant(&t);
    assert_eq!((l.registered_bytes, l.inflight_ops, l.kv_cache_bytes), (2 << 20, 16, 3 << 20));
    assert!(!l.models.is_any());
    assert_eq!(l.models.names().collect::<Vec<_>>(), ["tiny.gguf", "b.gguf"]);
    assert!(l.models.allows_name(b"tiny.gguf") && l.models.allows_name(b"b.gguf"));
    assert!(!l.models.allows_name(b"tiny.ggu") && !l.models.allows_name(b"tiny.gguf2") && !l.models.allows_name(b""));
    t.models.clear();
    assert_eq!(Limits::for_tenant(&t).models, ModelAccess::NONE);
    // More than the manifest allows, or an over-long name: no model rather than a guess.
    t.models = (0..5).map(|i| format!("m{i}")).collect();
    assert_eq!(Limits::for_tenant(&t).models, ModelAccess::NONE);
    t.models = vec!["x".repeat(crate::manifest::MAX_NAME_LEN + 1)];
    assert_eq!(Limits::for_tenant(&t).models, ModelAccess::NONE);
    assert!(ModelAccess::only(&["x".repeat(crate::manifest::MAX_NAME_LEN)]).is_some());
    assert!(ModelAccess::ANY.is_any() && ModelAccess::ANY.allows_name(b"anything"));
}

#[test]
fn listed_models_that_did_not_load_are_reported_and_the_access_is_described() {
    let models = two_model_host();
    let a = ModelAccess::only(&["other", "gone.gguf", "tiny"]).unwrap();
    assert_eq!(a.missing(&models), ["gone.gguf"]);
    assert_eq!(a.missing(&no_models()), ["other", "gone.gguf", "tiny"]);
    assert!(ModelAccess::only(&["tiny", "other"]).unwrap().missing(&models).is_empty());
    assert!(ModelAccess::ANY.missing(&models).is_empty() && ModelAccess::NONE.missing(&models).is_empty());
    assert_eq!(a.describe(), "other, gone.gguf, tiny");
    assert_eq!(ModelAccess::NONE.describe(), "no model");
    assert_eq!(ModelAccess::ANY.describe(), "every loaded model");
}
