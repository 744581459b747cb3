//! Inference inside the hypervisor (no guest): the tiny Gemma 3 model and a prompt delivered as
//! boot modules; the tokens generated in QEMU TCG must equal the host CLI's for the same model,
//! prompt, sampling and kernels: the hypervisor runs the engine's hard-float kernel object, with
//! its AVX2 kernels where the emulated CPU has AVX2 (QEMU's `max` CPU does).

use std::path::PathBuf;
use std::time::Duration;
use tests::{engine_cli, json_ids, Boot, HvKernels};
use xtask::emulator::Verdict;
use xtask::image::Firmware;

fn work() -> PathBuf {
    let d = xtask::image::build_dir().join("tests").join("infer");
    std::fs::create_dir_all(&d).unwrap();
    d
}


/// Writes the tiny model under a per-test name (tests run in parallel).
fn tiny_model(name: &str) -> PathBuf {
    let path = work().join(name);
    engine_cli("tvtiny", &["--seed", "1", path.to_str().unwrap()]);
    path
}


/// The ids in a log line `... [1,2,3]`.
fn log_ids(serial: &str, marker: &str) -> Vec<u32> {
    let line = serial.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("no line with {marker}\n{serial}"));
    let inner = &line[line.rfind('[').unwrap() + 1..line.rfind(']').unwrap()];
    inner.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().parse().unwrap()).collect()
}

fn boot_cfg(name: &str, text: &str) -> PathBuf {
    let p = work().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn hypervisor_generation_matches_the_host_cli_token_for_token() {
    generation_matches_host(1, "tiny.gguf", "infer-tiny");
}

#[test]
fn four_hypervisor_cpus_split_the_work_and_generate_the_same_tokens() {
    generation_matches_host(4, "tiny-smp.gguf", "infer-tiny-smp");
}

fn generation_matches_host(cpus: u32, file: &str, name: &str) {
    let model = tiny_model(file);
    let prompt = "Once upon a time";
    let cfg = boot_cfg(&format!("{name}.cfg"), &format!("prompt={prompt}\nmax_tokens=16\ntemperature=0.9\nseed=42\n"));
    let run = Boot::qemu(name, Firmware::Bios).cpus(cpus).module(&model, "model:tiny.gguf").module(cfg, "boot.cfg").run();
    // The emulated CPU has AVX2+FMA (its "cpu:" line says so), so the object's AVX2 kernels ran.
    run.assert_line(&["cpu: VMX no", "AVX2 yes"]);
    let kernels = HvKernels::of(run.serial());
    assert_eq!(kernels, HvKernels::Avx2, "QEMU's CPU has AVX2: the object's AVX2 kernels should have run");
    let gen_args = ["--model", model.to_str().unwrap(), "--prompt", prompt, "--max-tokens", "16", "--temp", "0.9", "--seed", "42",
        "--threads", "1", "--json"];
    let host = engine_cli("tvgen", &[&gen_args[..], kernels.tvgen_flags()].concat());
    let want_prompt = json_ids(&host, "prompt_tokens");
    let want = json_ids(&host, "tokens");
    assert_eq!(want.len(), 16, "host generated 16 tokens: {host}");
    let distinct: std::collections::HashSet<_> = want.iter().collect();
    assert!(distinct.len() >= 4, "the comparison needs varied tokens, got {want:?}");
    run.assert_line(&[&format!("engine workers: {cpus} CPUs")]);
    run.assert_verdict(Verdict::Success)
        .assert_line(&["loading model tiny.gguf"])
        .assert_line(&["model tiny.gguf: 6 layers"])
        .assert_no_line("ERROR");
    assert_eq!(log_ids(run.serial(), "= tokens ["), want_prompt, "prompt tokens\n{}", run.outcome.describe());
    assert_eq!(log_ids(run.serial(), "generated tokens ["), want, "generated tokens\n{}", run.outcome.describe());
}

/// The real Gemma 3 270M Q4_K_M (installed by `cargo xtask test`, or `cargo xtask model`) as a
/// GRUB module: the hypervisor runs it through its kernel object in QEMU TCG and generates
/// the host CLI's greedy tokens for the same prompt. About two minutes of emulation.
#[test]
fn the_real_gemma_model_generates_the_host_clis_tokens_inside_the_hypervisor() {
    let model = xtask::model::ensure().unwrap_or_else(|e| panic!("{e}: install the model with `cargo xtask model`"));
    let prompt = "The capital of France is";
    let cfg = boot_cfg("gemma.cfg", &format!("prompt={prompt}\nmax_tokens=6\n"));
    let mut boot = Boot::qemu("infer-gemma", Firmware::Bios).module(&model, "model:gemma.gguf").module(cfg, "boot.cfg");
    // GRUB loads the 253 MB module whole, beside the hypervisor's heap.
    boot.memory_mib = 768;
    boot.timeout = Duration::from_secs(900);
    let run = boot.run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["model gemma.gguf: 18 layers, embedding 640, 4 heads (1 KV), vocab 262144"])
        .assert_no_line("ERROR");
    let kernels = HvKernels::of(run.serial());
    let gen_args = ["--model", model.to_str().unwrap(), "--prompt", prompt, "--max-tokens", "6", "--temp", "0", "--threads", "1", "--json"];
    let host = engine_cli("tvgen", &[&gen_args[..], kernels.tvgen_flags()].concat());
    let want = json_ids(&host, "tokens");
    assert_eq!(want.len(), 6, "host generated 6 tokens: {host}");
    assert_eq!(log_ids(run.serial(), "= tokens ["), json_ids(&host, "prompt_tokens"), "prompt tokens\n{}", run.outcome.describe());
    assert_eq!(log_ids(run.serial(), "generated tokens ["), want, "generated tokens\n{}", run.outcome.describe());
}

#[test]
fn a_corrupt_model_is_a_clear_error_and_the_hypervisor_carries_on() {
    let model = tiny_model("tiny-for-corruption.gguf");
    let bytes = std::fs::read(&model).unwrap();
    let cut = work().join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let cfg = boot_cfg("boot-bad.cfg", "prompt=hello\nmax_tokens=4\n");
    let run = Boot::qemu("infer-corrupt", Firmware::Bios).module(&cut, "model:truncated.gguf").module(cfg, "boot.cfg").run();
    run.assert_verdict(Verdict::Failure)
        .assert_line(&["ERROR", "model truncated.gguf:"])
        .assert_order("model truncated.gguf:", "boot complete")
        .assert_no_line("generated tokens")
        .assert_no_line("PANIC")
        .assert_no_line("CPU exception");
}

