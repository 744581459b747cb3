//! vCPU pinning and two-vCPU tenants on a booted system (Bochs with three CPUs, VT-x), from
//! `config/pinning.toml`: `pinned`'s two vCPUs run on CPUs 1 and 2 only (at the same time,
//! cooperating through shared memory), `floating` and both vCPUs of `duo` on the boot CPU, and
//! `absent`, pinned to a CPU that does not exist here, is refused alone.
//!
//! The evidence comes from both sides: each guest vCPU reads a synthetic MSR whose value the
//! hypervisor fills in on the physical CPU that handled that exit (its CPU number and the APIC
//! id CPUID reports there), and the hypervisor counts every tenant's exits per physical CPU. If
//! pinning were ignored, `pinned` would report CPU 0 (and fail its own `cpu=1` check), and its
//! exits would be counted on CPU 0.
//!
//! Bochs with three CPUs costs about three times the CPU time of one: the guests are tiny.

use std::time::Duration;
use tests::Boot;
use xtask::emulator::Verdict;
use xtask::image::guest_elf;

/// The per-CPU exit counts of tenant `name` ("guest NAME: exits by CPU: cpu0=N cpu1=M ...").
fn exits_by_cpu(serial: &str, name: &str) -> Vec<u64> {
    let marker = format!("guest {name}: exits by CPU:");
    let line = serial.lines().find_map(|l| l.split_once(&marker).map(|(_, r)| r.to_string())).unwrap_or_else(|| panic!("no {marker:?} line"));
    line.split_whitespace().map(|w| w.split_once('=').unwrap().1.parse().unwrap()).collect()
}

#[test]
fn a_pinned_vcpu_runs_on_its_cpu_and_a_two_vcpu_tenant_shares_memory() {
    let config = xtask::root().join("config").join("pinning.toml");
    let compiled = xtask::manifest::compile_file(&config).expect("config/pinning.toml compiles");
    let dir = xtask::image::build_dir().join("tests").join("pinning");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("manifest.bin");
    std::fs::write(&manifest, &compiled.bytes).unwrap();
    let mut boot = Boot::bochs("pinning").cpus(3).module(&manifest, "manifest").module(guest_elf("vcpus").unwrap(), "guest:vcpus");
    boot.timeout = Duration::from_secs(300);
    let run = boot.run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["smp: 3 of 3 CPUs online; VMXON done on 2 application processors"])
        .assert_line(&["manifest: 4 tenant(s) admitted, 0 refused"])
        // The configuration names CPU 3; this machine has two: that tenant alone is refused.
        .assert_line(&["ERROR", "guest absent: not started: pinned to CPU 3, which did not come up"])
        .assert_no_line("guest absent: loaded")
        .assert_line(&["guest pinned: vCPU 0 pinned to CPU 1"])
        .assert_line(&["guest pinned: vCPU 1 pinned to CPU 2"])
        .assert_line(&["guest floating: vCPU 0 floats on the boot CPU (CPU 0)"])
        .assert_line(&["guest duo: vCPU 1 floats on the boot CPU (CPU 0)"])
        .assert_line(&["placement: CPUs up [0, 1, 2]; running pinned vCPUs [1, 2]; engine workers [0]"])
        .assert_line(&["cpu 1: runs 1 pinned vCPU(s) (APIC id 1)"])
        .assert_line(&["cpu 2: runs 1 pinned vCPU(s) (APIC id 2)"])
        // The guests' own view, answered by the CPU that handled each exit.
        .assert_line(&["[pinned] vcpus: vCPU 0 of 2: MSR says vCPU 0 on CPU 1, APIC id 1"])
        .assert_line(&["[pinned] vcpus: vCPU 1 of 2: MSR says vCPU 1 on CPU 2, APIC id 2"])
        .assert_line(&["[pinned] vcpus: vCPU 0: 200 more exits, every one handled on CPU 1"])
        .assert_line(&["[pinned] vcpus: check ok: vCPU 0 runs on the CPU its arguments name"])
        .assert_line(&["[floating] vcpus: vCPU 0 of 1: MSR says vCPU 0 on CPU 0, APIC id 0"])
        .assert_line(&["[floating] vcpus: check ok: vCPU 0 runs on the CPU its arguments name"])
        // The pinned vCPU's engine call parked on CPU 1 and was completed by the boot CPU.
        .assert_line(&["engine: pinned: doorbell request done in 1 unit(s)"])
        .assert_line(&["[pinned] vcpus: check ok: an engine add through the ring completed with the exact sum"])
        // Two vCPUs of one tenant: each its own index, cooperating through shared memory; the
        // pinned tenant's two run on two CPUs at once.
        .assert_line(&["[pinned] vcpus: vCPU 1 reported through shared memory: vCPU 1 on CPU 2, APIC id 2; shared sum 500500"])
        .assert_line(&["[duo] vcpus: vCPU 0 of 2: MSR says vCPU 0 on CPU 0"])
        .assert_line(&["[duo] vcpus: vCPU 1 of 2: MSR says vCPU 1 on CPU 0"])
        .assert_line(&["[duo] vcpus: vCPU 1 reported through shared memory: vCPU 1 on CPU 0, APIC id 0; shared sum 500500"])
        .assert_line(&["guest pinned: exited with status 0"])
        .assert_line(&["guest floating: exited with status 0"])
        .assert_line(&["guest duo: exited with status 0"])
        .assert_line(&["guests: 3 finished, 1 stopped or refused"])
        .assert_no_line("check FAILED");
    // The hypervisor's count: every exit of `pinned` on CPUs 1 and 2, none of the others' there.
    let serial = run.serial();
    let pinned = exits_by_cpu(serial, "pinned");
    assert_eq!(pinned.len(), 3, "CPUs 0, 1 and 2: {pinned:?}");
    assert_eq!(pinned[0], 0, "no exit of the pinned tenant on CPU 0: {pinned:?}");
    assert!(pinned[1] > 200 && pinned[2] > 200, "the pinned tenant's exits on CPUs 1 and 2: {pinned:?}");
    for name in ["floating", "duo"] {
        let c = exits_by_cpu(serial, name);
        assert!(c[0] > 200 && c[1..].iter().all(|&n| n == 0), "{name} ran on the boot CPU only: {c:?}");
    }
}
