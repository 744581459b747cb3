//! The foundation: the hypervisor boots through GRUB on BIOS and UEFI, reports its machine, and
//! faults in the hypervisor are caught, reported and end the run with a failure status.

use std::fs;
use tests::Boot;
use xtask::emulator::Verdict;
use xtask::image::Firmware;

/// A small module file, so the boot information carries a module to list.
fn module_file(name: &str, bytes: usize) -> std::path::PathBuf {
    let dir = xtask::image::build_dir().join("tests").join("modules");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    fs::write(&path, vec![0x5a; bytes]).unwrap();
    path
}

fn assert_boot_report(run: &tests::Run, firmware: &str) {
    run.assert_verdict(Verdict::Success)
        .assert_line(&["tensorvisor", "Type-1 hypervisor"])
        .assert_line(&["boot: GRUB", &format!("via {firmware}")])
        .assert_line(&["memory map from the boot loader"])
        .assert_line(&["KiB available"])
        .assert_line(&["paging: kernel image", "guard pages unmapped", "direct map at 0xffff800000000000"])
        .assert_line(&["heap: self-test passed"])
        .assert_line(&["module: \"probe.bin\" 12345 bytes"])
        .assert_line(&["modules: 1"])
        .assert_line(&["cpu: VMX"])
        .assert_order("boot complete", "tensorvisor: exit success")
        .assert_no_line("ERROR");
}

#[test]
fn qemu_bios_boots_to_banner_and_reports() {
    let run = Boot::qemu("qemu-bios", Firmware::Bios).module(module_file("probe-a", 12345), "probe.bin").run();
    assert_boot_report(&run, "BIOS");
    // QEMU's TCG has no VMX: the report says so and the hypervisor carries on.
    run.assert_line(&["no VMX: this CPU cannot run guests"]);
}

#[test]
fn qemu_uefi_boots_to_banner_and_reports() {
    let run = Boot::qemu("qemu-uefi", Firmware::Uefi).module(module_file("probe-b", 12345), "probe.bin").run();
    assert_boot_report(&run, "UEFI");
}

#[test]
fn bochs_bios_boots_and_reports_vmx_with_ept() {
    let run = Boot::bochs("bochs-bios").module(module_file("probe-c", 12345), "probe.bin").run();
    assert_boot_report(&run, "BIOS");
    run.assert_line(&["cpu: VMX yes"])
        .assert_line(&["vmx: EPT yes", "VPID yes", "unrestricted guest yes", "preemption timer yes"])
        .assert_line(&["vmx: VMX rev", "EPT[4-level"]);
}

#[test]
fn qemu_page_fault_is_caught_and_fails_the_run() {
    let run = Boot::qemu("qemu-pagefault", Firmware::Bios).cmdline("tv.scenario=pagefault").run();
    run.assert_verdict(Verdict::Failure)
        .assert_line(&["CPU exception 14: page fault (#PF)", "CR2 0x00000000deadb000"])
        .assert_line(&["page fault: read access, page not present, supervisor mode"])
        .assert_line(&["RAX 0x", "RBX 0x", "RCX 0x", "RDX 0x"])
        .assert_order("CPU exception 14", "tensorvisor: exit failure")
        .assert_no_line("read of an unmapped address returned");
}

#[test]
fn bochs_page_fault_exits_bochs_with_failure_status() {
    let run = Boot::bochs("bochs-pagefault").cmdline("tv.scenario=pagefault").run();
    run.assert_verdict(Verdict::Failure).assert_line(&["page fault (#PF)", "CR2 0x00000000deadb000"]);
    assert_eq!(run.outcome.status, Some(1), "Bochs must exit with status 1 on failure");
}

#[test]
fn qemu_stack_overflow_hits_the_guard_page() {
    let run = Boot::qemu("qemu-stack-overflow", Firmware::Bios).cmdline("tv.scenario=stack-overflow").run();
    run.assert_verdict(Verdict::Failure)
        .assert_line(&["CPU exception 8: double fault (#DF)"])
        .assert_line(&["stack overflow: CR2 is in the guard page below the boot CPU's kernel stack"]);
}

#[test]
fn qemu_panic_prints_location_and_message() {
    let run = Boot::qemu("qemu-panic", Firmware::Uefi).cmdline("tv.scenario=panic").run();
    run.assert_verdict(Verdict::Failure).assert_line(&["PANIC at hypervisor/src/main.rs:", "scenario: deliberate panic"]);
}
