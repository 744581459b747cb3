//! The engine scheduler on a booted system (Bochs, VT-x): a flooding guest (`flood`, long
//! generations back to back) and an honest `infer` guest share the engine. Engine calls park the
//! calling vCPU; the hypervisor runs their units (one token, one operation, one prefill) picked
//! by deficit round robin between guest slices. The honest guest gets the engine's tokens and
//! exits while the flooder's first generation is still running, and the engine's log shows the
//! units of the two interleaved.

use std::time::Duration;
use tests::{Boot, HvKernels};
use xtask::emulator::Verdict;
use xtask::image::guest_elf;

/// Tokens the engine samples for `prompt` on the tiny model (the hypervisor's kernels, one CPU,
/// no stop at the end token, as the hypervisor's sessions do).
fn engine_tokens(prompt: &[u32], n: usize, temperature: f32, seed: u64, cpu: engine::cpu::CpuFeatures) -> Vec<u32> {
    let bytes = engine::tiny::tiny_gemma3(1);
    let g = engine::gguf::Gguf::parse(&bytes).unwrap();
    let model = engine::model::Model::from_gguf(&g).unwrap();
    let tok = engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let mut s = engine::model::Session::new(&model, 128);
    let mut sampler = engine::sampler::Sampler::new(engine::sampler::SamplerConfig { temperature, seed, ..Default::default() });
    let comp = engine::tensor::Compute { cpu, par: &engine::parallel::Serial };
    engine::generate::generate(&mut s, comp, &tok, &mut sampler, prompt, n, false, &|| 0, &mut |_| {}).unwrap().tokens
}

/// `(units, interleaved)` of each "engine: NAME: KIND request done in U unit(s), N unit(s) of
/// other tenants interleaved" line.
fn requests(serial: &str, name: &str, kind: &str) -> Vec<(u64, u64)> {
    let marker = format!("engine: {name}: {kind} request done in ");
    serial
        .lines()
        .filter_map(|l| l.split_once(&marker).map(|(_, rest)| rest))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let units = words.next().unwrap().parse().unwrap();
            let others = words.nth(1).unwrap().parse().unwrap();
            (units, others)
        })
        .collect()
}

#[test]
fn a_flooding_guest_cannot_starve_an_honest_one() {
    let dir = xtask::image::build_dir().join("tests").join("sched");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, engine::tiny::tiny_gemma3(1)).unwrap();
    // Small numbers: a token of the tiny model is hundreds of millions of emulated instructions.
    let (rounds, flood_tokens, honest_tokens) = (1, 12, 2);
    let mut boot = Boot::bochs("sched-flood")
        .module(&model, "model:tiny.gguf")
        // The flooder starts first, with twice the honest guest's engine weight.
        .module(guest_elf("flood").unwrap(), &format!("guest:flood rounds={rounds} max_tokens={flood_tokens} context=128 weight=2"))
        .module(guest_elf("infer").unwrap(), &format!("guest:infer prompt=2,100 max_tokens={honest_tokens} temp=0.8 seed=11 weight=1"));
    boot.timeout = Duration::from_secs(600);
    let run = boot.run();
    let want = engine_tokens(&[2, 100], honest_tokens, 0.8, 11, HvKernels::of(run.serial()).cpu());
    let want = want.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    run.assert_verdict(Verdict::Success)
        .assert_line(&["engine scheduler: deficit round robin over 2 tenant(s)"])
        .assert_line(&["[infer] infer: tokens [", &format!("[{want}]")])
        .assert_line(&["guest infer: exited with status 0"])
        .assert_line(&["[flood] flood: done"])
        .assert_line(&["guest flood: exited with status 0"])
        // The honest guest finished before the flooder's first generation did.
        .assert_order("guest infer: exited with status 0", "[flood] flood: round 0: generated")
        .assert_no_line("failed:");
    let serial = run.serial();
    let honest = requests(serial, "infer", "generate");
    assert_eq!(honest.len(), 1, "one generate request: {honest:?}");
    assert_eq!(honest[0].0, honest_tokens as u64, "one unit per token");
    assert!(honest[0].1 > 0, "the flooder's units ran between the honest guest's tokens: {honest:?}");
    let flood = requests(serial, "flood", "generate");
    assert_eq!(flood.len(), rounds);
    assert_eq!(flood[0], (flood_tokens, flood[0].1));
    assert!(flood[0].1 >= honest_tokens as u64, "the honest guest's tokens ran inside the flooder's first generation: {flood:?}");
}
