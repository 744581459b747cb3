//! Several tenants on one box (Bochs, VT-x), started from the tenant configuration in `config/`
//! compiled to a manifest: two honest guests generate with the shared model while an attacker
//! forges handles, reaches for memory that is not its own, opens a model its manifest entry does
//! not list, exhausts its quotas and finally spins with interrupts off. The attacker gets errors and is stopped; the honest guests' tokens equal
//! the engine's. A corrupted manifest is refused and the hypervisor carries on.

use std::time::Duration;
use tests::{Boot, HvKernels};
use xtask::emulator::Verdict;
use xtask::image::guest_elf;



/// Tokens the engine samples for `prompt` (ids) on the tiny model: the hypervisor's kernels
/// (`cpu`), one CPU, no stop at the end token, as the hypervisor's sessions do.
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

/// The arguments of tenant `name` in a compiled configuration.
fn args_of(m: &hypervisor::manifest::Manifest, name: &str) -> String {
    m.tenants.iter().find(|t| t.name == name).unwrap().args.clone()
}

fn arg<'a>(args: &'a str, key: &str) -> &'a str {
    args.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).unwrap()
}

#[test]
fn the_attack_configuration_boots_from_its_manifest() {
    let config = xtask::root().join("config").join("attack.toml");
    let compiled = xtask::manifest::compile_file(&config).expect("config/attack.toml compiles");
    // The image carries one model, tiny.gguf: every model a tenant lists must be among them.
    compiled.check_models(&["tiny.gguf"]).unwrap_or_else(|e| panic!("{e}"));
    let dir = xtask::image::build_dir().join("tests").join("attack");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("manifest.bin");
    std::fs::write(&manifest, &compiled.bytes).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, engine::tiny::tiny_gemma3(1)).unwrap();
    let want = |name: &str, cpu| {
        let args = args_of(&compiled.manifest, name);
        let prompt: Vec<u32> = arg(&args, "prompt").split(',').map(|t| t.parse().unwrap()).collect();
        let tokens = engine_tokens(&prompt, arg(&args, "max_tokens").parse().unwrap(), arg(&args, "temp").parse().unwrap(), arg(&args, "seed").parse().unwrap(), cpu);
        tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
    };
    let mut boot = Boot::bochs("tenants-attack-config")
        .module(&manifest, "manifest")
        .module(&model, "model:tiny.gguf")
        .module(guest_elf("infer").unwrap(), "guest:infer")
        .module(guest_elf("hostile").unwrap(), "guest:hostile");
    boot.timeout = Duration::from_secs(400);
    let run = boot.run();
    let cpu = HvKernels::of(run.serial()).cpu();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["manifest: 3 tenant(s) admitted, 0 refused"])
        .assert_line(&["guest mallory: loaded:", "CPU budget 100 ms"])
        .assert_line(&["tenant alice: model access: tiny.gguf"])
        .assert_line(&["tenant mallory: model access: no model"])
        .assert_no_line("which is not loaded")
        .assert_line(&["[alice] infer: tokens [", &format!("[{}]", want("alice", cpu))])
        .assert_line(&["[bob] infer: tokens [", &format!("[{}]", want("bob", cpu))])
        .assert_line(&["guest alice: exited with status 0"])
        .assert_line(&["guest bob: exited with status 0"])
        .assert_line(&["[mallory] hostile: register more than the quota: Err(QuotaExceeded)"])
        // attack.toml gives mallory inflight_ops = 4: a 6-entry doorbell runs 4, refuses 2.
        .assert_line(&[
            "[mallory] hostile: a doorbell of 6 entries over an in-flight quota of 4: consumed 6, 4 ran, 2 QuotaExceeded; resubmitted 2, 2 ran",
            "refused as documented, the ring carries on",
        ])
        // attack.toml lists no model for mallory: the loaded tiny.gguf (id 0) is refused to it.
        .assert_line(&["[mallory] hostile: open a session on the unlisted model: Err(PermissionDenied) -> refused as documented"])
        .assert_line(&["[mallory] hostile: read the unlisted model's description: Err(PermissionDenied) -> refused as documented"])
        .assert_line(&["[mallory] hostile: 0 checks got an unexpected answer"])
        .assert_line(&["guest mallory: stopped: exceeded its CPU budget of 100 ms", "interrupts off"])
        .assert_line(&["tensorvisor_tenant_quota_refusals_total{tenant=\"mallory\"}"])
        // Vector state (XSAVE per vCPU): every guest starts from the initial state; mallory's
        // pattern survives its slices and the engine's SIMD work on the same CPU, and alice and
        // bob, which share that CPU, never see it and keep their own.
        .assert_line(&["fpu: SSE on", "each vCPU's x87/SSE/AVX state:", "switched at every VM exit and entry"])
        .assert_line(&["[alice] infer: vector registers at start: initial state (all zero)"])
        .assert_line(&["[bob] infer: vector registers at start: initial state (all zero)"])
        .assert_line(&["[alice] infer: vector registers (", "another tenant's pattern seen in 0 lane(s), changed under it 0 time(s) -> isolated"])
        .assert_line(&["[bob] infer: vector registers (", "another tenant's pattern seen in 0 lane(s), changed under it 0 time(s) -> isolated"])
        .assert_line(&["[mallory] hostile: vector registers (", "own pattern intact at"])
        .assert_no_line("-> WRONG");
    let line = run.serial().lines().find(|l| l.contains("[mallory] hostile: vector registers (")).unwrap();
    let away: u32 = line.split(", ").nth(1).and_then(|w| w.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(away >= 1, "mallory's pattern was never checked after another vCPU or the engine ran: {line}");
}

#[test]
fn a_corrupt_manifest_is_refused_and_the_hypervisor_carries_on() {
    let config = xtask::root().join("config").join("tenants.toml");
    let mut bytes = xtask::manifest::compile_file(&config).expect("config/tenants.toml compiles").bytes;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let dir = xtask::image::build_dir().join("tests").join("corrupt-manifest");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("manifest.bin");
    std::fs::write(&manifest, &bytes).unwrap();
    let run = Boot::bochs("tenants-corrupt-manifest")
        .module(&manifest, "manifest")
        .module(guest_elf("hello").unwrap(), "guest:hello")
        .run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["ERROR", "manifest: refused, no tenant started:"])
        .assert_order("manifest: refused", "boot complete")
        .assert_no_line("guest hello: loaded");
}
