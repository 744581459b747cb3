//! The engine scheduler on the real request path, through [`super::harness`] (the dispatcher,
//! the tiny model and [`Fair`] in a loop shaped like the hypervisor's).

use super::fair::Fair;
use super::harness::*;
use crate::dispatch::fake::FakeMemory;
use crate::dispatch::{Begun, EngineHost, Limits, Step, Tenant};
use alloc::vec;
use alloc::vec::Vec;
use engine::cpu::CpuFeatures;
use tensor_hcall::desc::{DType, OpCode, RingSetupDesc, SqEntry, TensorDesc};
use tensor_hcall::{decode_result, HcallError, Hypercall};

/// Greedy tokens the engine itself generates for [`PROMPT`] on the tiny model.
fn engine_tokens(n: usize) -> Vec<u32> {
    let bytes = engine::tiny::tiny_gemma3(1);
    let g = engine::gguf::Gguf::parse(&bytes).unwrap();
    let model = engine::model::Model::from_gguf(&g).unwrap();
    let tok = engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let mut s = engine::model::Session::new(&model, 512);
    let mut sampler = engine::sampler::Sampler::new(engine::sampler::SamplerConfig::default());
    let comp = engine::tensor::Compute { cpu: CpuFeatures::portable(), par: &engine::parallel::Serial };
    engine::generate::generate(&mut s, comp, &tok, &mut sampler, &PROMPT, n, false, &|| 0, &mut |_| {}).unwrap().tokens
}

#[test]
fn shares_follow_weights_1_2_4_over_10000_units_of_real_requests() {
    // Quantum 8 cost units, engine phases of 32 between guest slices. Three tenants ringing
    // batches of 8, 16 and 32 tensor operations (requests of different lengths); generation on
    // the tiny model is the flooding test's (a token there costs what ~100 operations do).
    let mut h = Host::new(8, 32);
    let a = h.add(1, Script::Ops { batch: 8 }, Limits::default());
    let b = h.add(2, Script::Ops { batch: 16 }, Limits::default());
    let c = h.add(4, Script::Ops { batch: 32 }, Limits::default());
    h.run(10_000, |_| true);
    assert_eq!(h.units, 10_000);
    let cost: Vec<u64> = [a, b, c].iter().map(|&i| h.fair.charged(h.guests[i].slot).cost).collect();
    let total: u64 = cost.iter().sum();
    for (k, (&i, w)) in [a, b, c].iter().zip([1.0, 2.0, 4.0]).enumerate() {
        let share = cost[k] as f64 / total as f64;
        let want = w / 7.0;
        let err = (share - want) / want;
        std::println!("tenant {i} weight {w}: cost {} units {} share {share:.4} want {want:.4} error {err:+.4}", cost[k], h.fair.charged(h.guests[i].slot).units);
        assert!(err.abs() <= 0.05, "tenant {i} weight {w}: share {share:.4}, weight share {want:.4}");
    }
    // Every tenant's requests really ran, completely: each doorbell took its whole batch and the
    // operations counted equal the units charged.
    for (&i, batch) in [a, b, c].iter().zip([8, 16, 32]) {
        let g = &h.guests[i];
        assert!(g.results.len() > 10);
        assert!(g.results.iter().all(|r| *r == Ok(batch)), "tenant {i}: every doorbell took its {batch} operations");
        assert_eq!(g.t.counters.ops, h.fair.charged(g.slot).units);
    }
    // The picks interleave: no tenant ran more than a turn's worth (weight * quantum + 1 units
    // of cost 1) in a row while the others were backlogged.
    let longest = h.picks.chunk_by(|x, y| x == y).map(|run| run.len()).max().unwrap();
    assert!(longest <= 4 * 8 + 1, "a run of {longest} units by one tenant");
}

#[test]
fn a_flooding_tenant_cannot_starve_an_honest_one() {
    let (quantum, slice) = (8, 32);
    let mut h = Host::new(quantum, slice);
    // Two flooders with four times the honest tenant's weight: one generating 300 tokens per
    // request, one ringing 64 operations per doorbell, forever.
    let gen = h.add(4, Script::Generate { tokens: 300, rounds: 0 }, Limits::default());
    let _ops = h.add(4, Script::Ops { batch: 64 }, Limits { inflight_ops: 64, ..Limits::default() });
    // Let them get going before the honest tenant arrives.
    h.run(500, |_| true);
    let honest = h.add(1, Script::Generate { tokens: 12, rounds: 2 }, Limits::default());
    let mut flooder_parked_when_honest_done = None;
    h.run(20_000, |h| {
        if h.guests[honest].phase == Phase::Finished {
            flooder_parked_when_honest_done = Some((h.guests[gen].parked, h.guests[gen].parked_at.1));
            return false;
        }
        true
    });
    let g = &h.guests[honest];
    assert_eq!(g.phase, Phase::Finished, "the honest tenant finished while the flooders flood");
    let want = engine_tokens(12);
    assert_eq!(g.generated, vec![want.clone(), want], "its tokens are the engine's");
    // Its delay, in cost of other tenants' units, against the DRR bound: each of its requests
    // of n units waits at most n rounds, a round being sum over others (w * quantum + C) with C
    // the largest unit cost (a prefill of 4 tokens).
    let c = h.fair.max_unit();
    assert_eq!(c, PROMPT.len() as u64);
    let round = h.fair.round_bound(g.slot, c);
    assert_eq!(round, (4 * quantum + c) * 2);
    assert_eq!(g.waits.len(), 4, "two prefills and two generations");
    for &(units, others) in &g.waits {
        std::println!("honest request of {units} units waited for {others} cost of others' units (bound {})", units * round);
        assert!(others <= units * round, "{others} > {units} rounds of {round}");
    }
    // The generations interleaved with the flooders instead of waiting behind 300-token requests.
    let (gen_parked, gen_units) = flooder_parked_when_honest_done.unwrap();
    assert!(gen_parked && gen_units < 300, "the flooding generation was still in progress");
    let total_wait: u64 = g.waits.iter().map(|w| w.1).sum();
    assert!(total_wait < 2 * 300, "all its waiting cost less than the flooder's two requests would have");
}

#[test]
fn over_quota_is_refused_at_once_while_the_engine_is_busy() {
    let mut h = Host::new(8, 32);
    let flood = h.add(4, Script::Generate { tokens: 300, rounds: 0 }, Limits::default());
    h.run(50, |_| true);
    assert!(h.guests[flood].parked && h.fair.backlogged(h.guests[flood].slot));
    // A tenant with a small KV-cache quota and in-flight quota, while the engine is backlogged.
    let mut models = core::mem::replace(&mut h.models, EngineHost::new(CpuFeatures::portable()));
    let mut t = Tenant::new(9, Limits { kv_cache_bytes: 4096, inflight_ops: 4, ..Limits::default() });
    let mem = FakeMemory::new(1 << 20);
    let call = |t: &mut Tenant, models: &mut EngineHost, c: Hypercall| t.begin(&c.to_regs(), &mem, models);
    let region = match call(&mut t, &mut models, Hypercall::RegisterMemory { gpa: REGION, len: REGION_LEN, flags: 3 }) {
        Begun::Done(rax) => decode_result(rax).unwrap(),
        Begun::Parked => panic!("registration is not engine work"),
    };
    assert_eq!(
        call(&mut t, &mut models, Hypercall::SessionOpen { model_id: 0, max_context: 512 }),
        Begun::Done(tensor_hcall::encode_result(Err(HcallError::QuotaExceeded))),
        "over the KV-cache quota: an error at once, nothing queued"
    );
    assert!(!t.parked());
    // A ring with 40 submissions and an in-flight quota of 4: the doorbell runs 4 (one unit
    // each) and completes the other 36 with QuotaExceeded at once; it never waits for quota.
    let mut d = TensorDesc { dtype: DType::F32 as u32, rank: 1, region, offset: 0x100, ..TensorDesc::default() };
    d.shape[0] = 16;
    d.strides[0] = 1;
    mem.poke(SCRATCH, &d.to_bytes());
    let Begun::Done(rax) = call(&mut t, &mut models, Hypercall::TensorCreate { desc_gpa: SCRATCH }) else { panic!() };
    let tensor = decode_result(rax).unwrap();
    let rd = RingSetupDesc { control_gpa: CONTROL, sq_gpa: SQ, cq_gpa: CQ, sq_entries: RING, cq_entries: RING, ..Default::default() };
    mem.poke(SCRATCH, &rd.to_bytes());
    assert!(matches!(call(&mut t, &mut models, Hypercall::RingSetup { desc_gpa: SCRATCH }), Begun::Done(0)));
    for i in 0..40u32 {
        let e = SqEntry { user_data: u64::from(i), opcode: OpCode::Softmax as u16, tensors: [tensor, 0, 0, tensor], ..Default::default() };
        mem.poke(SQ + u64::from(i) * 64, &e.to_bytes());
    }
    mem.poke(CONTROL, &40u32.to_le_bytes());
    assert_eq!(call(&mut t, &mut models, Hypercall::Doorbell { ring: 0 }), Begun::Parked);
    assert_eq!(t.next_unit(), Some(crate::dispatch::UnitKind::Op));
    // While parked, another call (another vCPU, or a hostile re-entry) is refused, not queued.
    assert_eq!(call(&mut t, &mut models, Hypercall::Doorbell { ring: 0 }), Begun::Done(tensor_hcall::encode_result(Err(HcallError::Busy))));
    let mut units = 0;
    let rax = loop {
        units += 1;
        match t.step(&mem, &mut models) {
            Step::More => {}
            Step::Done(rax) => break rax,
            Step::Idle => panic!("idle while parked"),
        }
    };
    assert_eq!((decode_result(rax), units), (Ok(40), 4), "40 consumed in 4 engine units");
    assert_eq!(t.step(&mem, &mut models), Step::Idle);
    assert_eq!((t.counters.ops, t.counters.quota_refusals), (4, 1 + 36));
    h.models = models;
}

#[test]
fn fair_checks_its_configuration_and_serves_by_weight() {
    assert!(Fair::new(0).is_err());
    let mut f = Fair::new(10).unwrap();
    assert_eq!(f.add(0), Err(super::SchedError::BadWeight(0)));
    let a = f.add(1).unwrap();
    let b = f.add(3).unwrap();
    assert_eq!(f.pick(), None, "nobody is backlogged");
    f.set_backlogged(a, true).unwrap();
    f.set_backlogged(b, true).unwrap();
    let mut served = [0u64; 2];
    for _ in 0..4000 {
        let t = f.pick().unwrap();
        // Units of cost 7 for a, 3 for b: post-charged, the debt carried.
        let cost = if t == a { 7 } else { 3 };
        f.charge(t, cost).unwrap();
        served[t.0] += cost;
    }
    let share = served[1] as f64 / (served[0] + served[1]) as f64;
    assert!((share - 0.75).abs() < 0.01, "b's share {share}");
    // An idle tenant is skipped; a removed one is gone.
    f.set_backlogged(a, false).unwrap();
    for _ in 0..10 {
        assert_eq!(f.pick(), Some(b));
        f.charge(b, 3).unwrap();
    }
    f.remove(b).unwrap();
    assert_eq!(f.pick(), None);
    assert_eq!(f.charge(b, 1), Err(super::SchedError::NoSuchTenant(b)));
}
