//! SMP bring-up: CPUs found in the ACPI MADT and started with INIT-SIPI-SIPI, in QEMU TCG with 4
//! CPUs (BIOS and UEFI firmware lay out ACPI differently) and in Bochs with 2 CPUs, where the
//! application processor also enters VMX root operation.

use tests::Boot;
use xtask::emulator::Verdict;
use xtask::image::{guest_elf, Firmware};

fn four_cpus(firmware: Firmware, name: &str) {
    let run = Boot::qemu(name, firmware).cpus(4).run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["smp: MADT lists 4 CPUs (4 enabled), APIC ids [0, 1, 2, 3]"])
        .assert_line(&["smp: CPU 1 online (APIC id 1)"])
        .assert_line(&["smp: CPU 2 online (APIC id 2)"])
        .assert_line(&["smp: CPU 3 online (APIC id 3)"])
        .assert_line(&["smp: 4 of 4 CPUs online"])
        .assert_no_line("did not start")
        .assert_no_line("ERROR");
}

#[test]
fn qemu_bios_brings_up_four_cpus_from_the_madt() {
    four_cpus(Firmware::Bios, "smp-qemu-bios");
}

#[test]
fn qemu_uefi_brings_up_four_cpus_from_the_madt() {
    four_cpus(Firmware::Uefi, "smp-qemu-uefi");
}

#[test]
fn bochs_second_cpu_enters_vmx_root_and_guests_still_run() {
    let run = Boot::bochs("smp-bochs").cpus(2).module(guest_elf("hello").unwrap(), "guest:hello").run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["smp: MADT lists 2 CPUs"])
        .assert_line(&["smp: CPU 1 online (APIC id 1), VMXON done"])
        .assert_line(&["smp: 2 of 2 CPUs online; VMXON done on 1 application processors"])
        .assert_line(&["guest hello: exited with status 0"])
        .assert_no_line("ERROR");
}
