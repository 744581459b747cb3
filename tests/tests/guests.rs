//! VT-x guests in Bochs: the hello guest runs and exits with a checked status, and every kind of
//! misbehaviour stops only the guest that did it, with one clear line, while an honest guest
//! beside it runs to completion and the hypervisor carries on.

use tests::{Boot, Run};
use xtask::emulator::Verdict;
use xtask::image::guest_elf;

fn hello() -> std::path::PathBuf {
    guest_elf("hello").expect("build the hello guest")
}

/// Asserts the honest guest's whole story.
fn assert_hello_completed(run: &Run) {
    run.assert_verdict(Verdict::Success)
        .assert_line(&["vmx: VMXON done"])
        .assert_line(&["guest hello: loaded:", "VPID"])
        .assert_line(&["[hello] hello from a tensorvisor guest: tenant"])
        .assert_line(&["[hello] cpuid 0x40000000: max leaf 0x40000001, signature \"TensorVisor\""])
        .assert_line(&["[hello] check ok: CPUID hides VMX from the guest"])
        .assert_line(&["[hello] check ok: tenant-id MSR matches the boot information"])
        .assert_line(&["[hello] check ok: a bad buffer gets BadAddress"])
        .assert_line(&["[hello] check ok: an unknown call gets NotSupported"])
        .assert_line(&["[hello] check ok: the tenant's counters are readable and count its calls"])
        .assert_line(&["[hello] hello guest done: 0 failed checks"])
        .assert_line(&["guest hello: exited with status 0"])
        .assert_no_line("check FAILED");
}

#[test]
fn hello_guest_runs_under_vtx_and_its_exit_status_is_checked() {
    let run = Boot::bochs("guest-hello").module(hello(), "guest:hello").run();
    assert_hello_completed(&run);
    run.assert_line(&["guests: 1 finished, 0 stopped or refused"]);
}

/// Boots hello beside a misbehaving guest and checks both outcomes.
fn contained(scenario: &str, extra: &str, expected_stop: &[&str]) {
    let bad = guest_elf("misbehave").expect("build the misbehave guest");
    let run = Boot::bochs(&format!("contain-{scenario}"))
        .module(hello(), "guest:hello")
        .module(bad, &format!("guest:misbehave scenario={scenario} {extra}"))
        .run();
    assert_hello_completed(&run);
    let mut stop = vec!["guest misbehave: stopped:"];
    stop.extend_from_slice(expected_stop);
    stop.push("at RIP 0x");
    run.assert_line(&["[misbehave] misbehaving guest: scenario", scenario])
        .assert_line(&stop)
        .assert_no_line("misbehaving guest was not stopped")
        .assert_no_line("guest misbehave: exited")
        .assert_line(&["guests: 1 finished, 1 stopped or refused"])
        .assert_no_line("CPU exception");
    let stops = run.serial().lines().filter(|l| l.contains("guest misbehave: stopped:")).count();
    assert_eq!(stops, 1, "exactly one stop line\n{}", run.outcome.describe());
}

#[test]
fn triple_fault_stops_only_that_guest() {
    contained("triple-fault", "", &["triple fault"]);
}

#[test]
fn touching_memory_it_does_not_have_stops_only_that_guest() {
    contained("wild-read", "", &["EPT violation: read of GPA 0x30000000 (not guest memory)"]);
}

#[test]
fn writing_read_only_memory_stops_only_that_guest() {
    contained("ro-write", "", &["EPT violation: write of GPA 0x1000 (not permitted)"]);
}

#[test]
fn vmxon_in_a_guest_stops_only_that_guest() {
    contained("vmxon", "", &["executed the VMX instruction Vmxon"]);
}

#[test]
fn vmread_in_a_guest_stops_only_that_guest() {
    contained("vmread", "", &["executed the VMX instruction Vmread"]);
}

#[test]
fn spinning_with_interrupts_off_is_stopped_by_the_preemption_timer() {
    contained("spin", "budget_ms=50", &["exceeded its CPU budget of 50 ms", "interrupts off"]);
}

#[test]
fn a_bad_elf_is_refused_and_the_honest_guest_still_runs() {
    let dir = xtask::image::build_dir().join("tests").join("modules");
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("not-an-elf");
    std::fs::write(&junk, "this is not an ELF file, just text that pretends to be a guest\n".repeat(64)).unwrap();
    let run = Boot::bochs("guest-bad-elf").module(hello(), "guest:hello").module(junk, "guest:junk").run();
    assert_hello_completed(&run);
    run.assert_line(&["guest junk: not started: bad ELF: no ELF magic"])
        .assert_line(&["guests: 1 finished, 1 stopped or refused"]);
}

#[test]
fn per_tenant_metrics_are_printed_in_prometheus_format_at_shutdown() {
    let run = Boot::bochs("metrics").module(hello(), "guest:hello").run();
    assert_hello_completed(&run);
    let serial = run.serial();
    let start = serial.find("# tensorvisor metrics begin").expect("metrics block");
    let end = serial.find("# tensorvisor metrics end").expect("metrics block end");
    let block = &serial[start..end];
    // hello makes one bad console write and one unknown call among its hypercalls.
    let value = |metric: &str| -> u64 {
        let line = block.lines().find(|l| l.starts_with(&format!("{metric}{{tenant=\"hello\"}}"))).unwrap_or_else(|| panic!("{metric} in\n{block}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("tensorvisor_tenant_hypercalls_total") >= 10, "{block}");
    assert_eq!(value("tensorvisor_tenant_hypercall_errors_total"), 2, "{block}");
    assert_eq!(value("tensorvisor_tenant_faults_total"), 0, "{block}");
    assert_eq!(value("tensorvisor_tenant_memory_bytes"), 4 << 20, "{block}");
    assert!(block.contains("# TYPE tensorvisor_tenant_hypercalls_total counter"));
}
