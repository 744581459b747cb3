//! Several tenants on one box (Bochs, VT-x): two honest guests generate with the shared model
//! while an attacker forges handles, reaches for memory that is not its own, exhausts its quotas
//! and finally spins with interrupts off. The attacker gets errors and is stopped; the honest
//! guests' tokens equal the host engine's.

use std::process::Command;
use std::time::Duration;
use tests::Boot;
use xtask::emulator::Verdict;
use xtask::image::guest_elf;

fn engine_cli(bin: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--package", "engine", "--features", "std", "--bin", bin, "--"])
        .args(args)
        .current_dir(xtask::root())
        .output()
        .expect("cargo run");
    assert!(out.status.success(), "{bin} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_ids(json: &str, key: &str) -> String {
    let start = json.find(&format!("\"{key}\":[")).unwrap_or_else(|| panic!("{key} in {json}")) + key.len() + 4;
    let end = start + json[start..].find(']').unwrap();
    json[start..end].to_string()
}

#[test]
fn two_honest_tenants_generate_correctly_while_an_attacker_is_refused_and_stopped() {
    let dir = xtask::image::build_dir().join("tests").join("tenants");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    engine_cli("tvtiny", &["--seed", "1", model.to_str().unwrap()]);
    let host = |prompt: &str, seed: &str| {
        let out = engine_cli(
            "tvgen",
            &["--model", model.to_str().unwrap(), "--prompt", prompt, "--max-tokens", "3", "--temp", "0.8", "--seed", seed,
              "--threads", "1", "--portable", "--ignore-eos", "--json"],
        );
        (json_ids(&out, "prompt_tokens"), json_ids(&out, "tokens"))
    };
    let (p1, want1) = host("Hello", "11");
    let (p2, want2) = host("Good day", "22");
    let infer = guest_elf("infer").unwrap();
    let mut boot = Boot::bochs("tenants-three")
        .module(&model, "model:tiny.gguf")
        .module(&infer, &format!("guest:alice prompt={p1} max_tokens=3 temp=0.8 seed=11"))
        .module(&infer, &format!("guest:bob prompt={p2} max_tokens=3 temp=0.8 seed=22"))
        .module(guest_elf("hostile").unwrap(), "guest:mallory victim=1 spin=1 budget_ms=100");
    boot.timeout = Duration::from_secs(400);
    let run = boot.run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["[alice] infer: tokens [", &format!("[{want1}]")])
        .assert_line(&["[bob] infer: tokens [", &format!("[{want2}]")])
        .assert_line(&["guest alice: exited with status 0"])
        .assert_line(&["guest bob: exited with status 0"])
        .assert_line(&["[mallory] hostile: unregister the victim's region: Err(BadHandle)"])
        .assert_line(&["[mallory] hostile: close the victim's session: Err(BadHandle)"])
        .assert_line(&["[mallory] hostile: register the hypervisor's direct map: Err(BadAddress)"])
        .assert_line(&["[mallory] hostile: register more than the quota: Err(QuotaExceeded)"])
        .assert_line(&["[mallory] hostile: 0 checks got an unexpected answer"])
        .assert_line(&["guest mallory: stopped: exceeded its CPU budget of 100 ms", "interrupts off"])
        .assert_line(&["guests: 2 finished, 1 stopped or refused"])
        .assert_line(&["guest alice:", "hypercalls", "tokens"])
        .assert_no_line("-> WRONG");
}
