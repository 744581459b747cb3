//! Randomized adversarial hypercalls against one tenant's dispatcher, with invariants checked
//! after every call: the host unit tests run thousands of cases, `cargo xtask fuzz hcall` runs
//! millions.

use super::fake::FakeMemory;
use super::{Hypercall, Limits, ModelHost, Tenant};
use alloc::vec::Vec;
use tensor_hcall::desc::{RingSetupDesc, SqEntry, TensorDesc};
use tensor_hcall::{decode_result, CallNumber, HcallRegs};

const REGION: u64 = 0x10000;
const SCRATCH: u64 = 0x5000;

/// What a fuzz run found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuzzReport {
    pub cases: u64,
    pub ok: u64,
    pub errors: u64,
    /// Ring entries the doorbells consumed (each validated, most refused, some run).
    pub ring_entries: u64,
    /// Invariant violations (accounts over quota, an error code outside the ABI's set).
    pub violations: u64,
}

/// xorshift64: deterministic test data, not randomness for anything that matters.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs `cases` random calls from seed `seed` on a fresh tenant with a 1 MiB guest memory.
/// Structured descriptors (tensors, ring setups, submissions) are mutated from valid ones, so the
/// deeper validation paths are reached, not only the first check.
pub fn run(seed: u64, cases: u64, models: &mut dyn ModelHost) -> FuzzReport {
    let limits = Limits { registered_bytes: 0x8_0000, sessions: 2, regions: 16, tensors: 64, ..Limits::default() };
    let mem = FakeMemory::new(1 << 20).with_read_only(0x8000, 0x9000);
    let mut t = Tenant::new(3, limits);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut report = FuzzReport::default();
    let mut handles: Vec<u64> = Vec::new();
    let interesting = [0, 1, 4, 64, 0x1000, 0x2000, 0x3000, 0x8000, SCRATCH, REGION, u64::MAX, u64::MAX - 63, 1 << 63];
    for _ in 0..cases {
        let pick = |rng: &mut Rng, handles: &[u64]| match rng.next() % 5 {
            0 => interesting[(rng.next() % interesting.len() as u64) as usize],
            1 if !handles.is_empty() => handles[(rng.next() % handles.len() as u64) as usize] ^ (rng.next() % 3),
            _ => rng.next() % 0x10_0000,
        };
        // A structured descriptor in the scratch page, then random corruption.
        match rng.next() % 4 {
            0 => {
                let mut d = TensorDesc { dtype: 1 + (rng.next() % 6) as u32, rank: 1 + (rng.next() % 4) as u32, ..Default::default() };
                d.region = pick(&mut rng, &handles);
                d.offset = rng.next() % 0x2000;
                for k in 0..4 {
                    d.shape[k] = 1 + rng.next() % 40;
                    d.strides[k] = rng.next() % 64;
                }
                mem.poke(SCRATCH, &d.to_bytes());
            }
            1 => {
                let d = RingSetupDesc {
                    control_gpa: 0x2000,
                    sq_gpa: 0x3000,
                    cq_gpa: 0x4000,
                    sq_entries: 1 << (rng.next() % 7),
                    cq_entries: 1 << (rng.next() % 7),
                    ..Default::default()
                };
                mem.poke(SCRATCH, &d.to_bytes());
            }
            2 => {
                let e = SqEntry {
                    user_data: rng.next(),
                    opcode: (rng.next() % 8) as u16,
                    tensors: [pick(&mut rng, &handles), pick(&mut rng, &handles), 0, pick(&mut rng, &handles)],
                    ..Default::default()
                };
                mem.poke(0x3000 + (rng.next() % 64) * 64, &e.to_bytes());
                mem.poke(0x2000, &((rng.next() % 80) as u32).to_le_bytes());
            }
            _ => {
                let at = SCRATCH + rng.next() % 96;
                mem.poke(at, &[rng.next() as u8]);
            }
        }
        let all = CallNumber::ALL;
        let number = if rng.next().is_multiple_of(16) { rng.next() % 0x50 } else { all[(rng.next() % all.len() as u64) as usize] as u64 };
        let mut args = [pick(&mut rng, &handles), pick(&mut rng, &handles), pick(&mut rng, &handles), pick(&mut rng, &handles)];
        if let Ok(n) = CallNumber::try_from(number) {
            // Usually a well-formed call: unused arguments zero, descriptors where they live.
            if !rng.next().is_multiple_of(8) {
                for a in args.iter_mut().skip(Hypercall::arg_count(n)) {
                    *a = 0;
                }
            }
            match n {
                CallNumber::TensorCreate | CallNumber::RingSetup | CallNumber::SessionGenerate if !rng.next().is_multiple_of(4) => args[0] = SCRATCH,
                CallNumber::Query => {
                    args[0] = rng.next() % 3;
                    args[1] = SCRATCH;
                    args[2] = 64;
                }
                CallNumber::RegisterMemory if rng.next().is_multiple_of(2) => {
                    args[0] = REGION + (rng.next() % 16) * 0x1000;
                    args[1] = 0x1000 * (1 + rng.next() % 32);
                    args[2] = 1 + rng.next() % 3;
                }
                CallNumber::SessionOpen if rng.next().is_multiple_of(2) => {
                    args[0] = rng.next() % 2;
                    args[1] = 1 + rng.next() % 64;
                }
                CallNumber::Doorbell if rng.next().is_multiple_of(2) => args[0] = 0,
                _ => {}
            }
        }
        let regs = HcallRegs { rax: number, rbx: args[0], rcx: args[1], rdx: args[2], rsi: args[3] };
        let rax = t.hypercall(&regs, &mem, models);
        report.cases += 1;
        match decode_result(rax) {
            Ok(v) => {
                report.ok += 1;
                if v >> 56 != 0 && handles.len() < 64 {
                    handles.push(v);
                }
            }
            Err(e) => {
                report.errors += 1;
                if e == tensor_hcall::HcallError::Unrecognized {
                    report.violations += 1;
                }
            }
        }
        if t.registered_bytes() > limits.registered_bytes || t.kv_cache_bytes() > limits.kv_cache_bytes {
            report.violations += 1;
        }
    }
    report.ring_entries = t.counters.ops;
    report
}
