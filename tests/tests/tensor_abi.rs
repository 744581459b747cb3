//! The tensor hypercall ABI end to end in Bochs (VT-x): a guest batches 64 tensor operations into
//! one doorbell and checks every result bit for bit; a guest generates with the tiny model
//! through sessions and gets exactly what the host engine generates; a hostile guest beside it
//! gets the documented error for every class of bad call and the honest guest is unaffected.

use std::path::PathBuf;
use std::time::Duration;
use tests::{engine_cli, json_ids, Boot, HvKernels};
use xtask::emulator::Verdict;
use xtask::image::guest_elf;



fn ids(v: &[u32]) -> String {
    v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

#[test]
fn sixty_four_ops_in_one_doorbell_are_bit_exact_in_the_guest() {
    let run = Boot::bochs("abi-tensors")
        .module(guest_elf("hello").unwrap(), "guest:hello")
        .module(guest_elf("tensors").unwrap(), "guest:tensors")
        .run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["[tensors] tensors: 64 ops submitted with one doorbell, 64 ran"])
        .assert_line(&["[tensors] tensors: 64 completions, 64 of 64 results bit-exact"])
        .assert_line(&["guest tensors: exited with status 0"])
        .assert_line(&["guest tensors:", "64 ops"])
        .assert_line(&["guest hello: exited with status 0"])
        .assert_no_line("not bit-exact");
}

#[test]
fn a_guest_generates_what_the_host_engine_generates_while_a_hostile_guest_is_refused() {
    let dir = xtask::image::build_dir().join("tests").join("abi");
    std::fs::create_dir_all(&dir).unwrap();
    let model: PathBuf = dir.join("tiny.gguf");
    engine_cli("tvtiny", &["--seed", "1", model.to_str().unwrap()]);
    let gen_args = ["--model", model.to_str().unwrap(), "--prompt", "Hi there", "--max-tokens", "4", "--temp", "0.9", "--seed", "7",
        "--threads", "1", "--ignore-eos", "--json"];
    // The prompt's tokens (the same whatever the kernels); the generated ones come after the
    // boot, from the kernels the hypervisor says it ran.
    let prompt = json_ids(&engine_cli("tvgen", &gen_args), "prompt_tokens");
    let mut boot = Boot::bochs("abi-infer-hostile")
        .module(&model, "model:tiny.gguf")
        .module(guest_elf("infer").unwrap(), &format!("guest:infer prompt={} max_tokens=4 temp=0.9 seed=7", ids(&prompt)))
        .module(guest_elf("hostile").unwrap(), "guest:hostile victim=1");
    boot.timeout = Duration::from_secs(400);
    let run = boot.run();
    let want = json_ids(&engine_cli("tvgen", &[&gen_args[..], HvKernels::of(run.serial()).tvgen_flags()].concat()), "tokens");
    assert_eq!(want.len(), 4, "host generated 4 tokens: {want:?}");
    run.assert_verdict(Verdict::Success)
        .assert_line(&["[infer] infer: model 0 \"tiny.gguf\", vocab"])
        .assert_line(&["[infer] infer: tokens [", &format!("[{}]", ids(&want))])
        .assert_line(&["guest infer: exited with status 0"])
        .assert_line(&["[hostile] hostile: 0 checks got an unexpected answer"])
        .assert_line(&["guest hostile: exited with status 0"])
        .assert_line(&["[hostile] hostile: unregister the victim's region: Err(BadHandle)"])
        .assert_line(&["[hostile] hostile: strides reaching outside the region: Err(OutOfBounds)"])
        .assert_line(&["[hostile] hostile: SQ producer index beyond the ring: Err(BadRingIndex)"])
        .assert_line(&["[hostile] hostile: descriptor rewritten after the doorbell", "the submitted op ran, the rewrite did nothing"])
        .assert_line(&["[hostile] hostile: register more than the quota: Err(QuotaExceeded)"])
        .assert_no_line("-> WRONG");
}

#[test]
fn completion_interrupts_reach_the_guest_on_its_vector() {
    let run = Boot::bochs("abi-notify").module(guest_elf("notify").unwrap(), "guest:notify").run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["[notify] notify: one doorbell with two completions: 1 interrupt(s) so far, expected 1 -> ok"])
        .assert_line(&["[notify] notify: a doorbell with interrupts suppressed: 1 interrupt(s) so far, expected 1 -> ok"])
        .assert_line(&["[notify] notify: a completion before the event index: 1 interrupt(s) so far, expected 1 -> ok"])
        .assert_line(&["[notify] notify: completions passing the event index: 2 interrupt(s) so far, expected 2 -> ok"])
        .assert_line(&["guest notify: exited with status 0"])
        .assert_no_line("-> WRONG");
}
