//! The stock Debian kernel as a tenant, in Bochs: the uncompressed vmlinux through the 64-bit
//! boot protocol, beside a Rust guest tenant.

use std::time::{Duration, Instant};
use tests::Boot;
use xtask::emulator::Verdict;
use xtask::image::guest_elf;
use xtask::linux::{InitMode, DONE_MARKER, INIT_MARKER};

/// The command line a Linux tenant boots with (README "Linux tenants" explains each option).
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 nokaslr mitigations=off tsc=reliable no_timer_check acpi=off nosmp noapic";


#[test]
fn debian_kernel_boots_to_the_initramfs_marker_beside_a_rust_tenant() {
    let hello = guest_elf("hello").expect("build the hello guest");
    let kernel = xtask::linux::kernel().expect("Debian's kernel");
    let initramfs = xtask::linux::initramfs(InitMode::Test).expect("the initramfs");
    let mut boot = Boot::bochs("linux")
        .module(hello, "guest:hello")
        .module(&kernel.vmlinux, &format!("linux:tux mem_mib=192 -- {CMDLINE}"))
        .module(&initramfs, "initrd:tux");
    boot.memory_mib = 512;
    boot.timeout = Duration::from_secs(600);
    let started = Instant::now();
    let run = boot.run();
    let wall = started.elapsed();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["guest tux: loaded: Linux kernel"])
        .assert_line(&["[tux] [    0.000000] Linux version", &kernel.version])
        .assert_line(&["[tux] ", INIT_MARKER])
        .assert_line(&["[tux] ", DONE_MARKER])
        .assert_order(INIT_MARKER, DONE_MARKER)
        .assert_line(&["guest tux: stopped: reset requested"])
        .assert_line(&["[hello] hello guest done: 0 failed checks"])
        .assert_line(&["guest hello: exited with status 0"])
        .assert_line(&["guests: 2 finished, 0 stopped or refused"])
        .assert_no_line("guest tux: stopped: VM entry failed");
    // The boot time: the hypervisor's clock (TSC) at the marker, and Bochs' wall time in all.
    let at_marker = run.serial().lines().find(|l| l.contains(INIT_MARKER)).unwrap_or_default().to_string();
    println!("linux boot: marker line `{at_marker}`; whole Bochs run {:.1} s wall (image build included: {:.1} s)", run.outcome.elapsed.as_secs_f64(), wall.as_secs_f64());
}
