//! The stock Debian kernel as a tenant, in Bochs: the uncompressed vmlinux through the 64-bit
//! boot protocol, beside a Rust guest tenant.

use std::path::PathBuf;
use std::time::Duration;
use tests::Boot;
use xtask::emulator::Verdict;
use xtask::image::guest_elf;

/// The command line a Linux tenant boots with (README "Linux tenants" explains each option).
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 nokaslr mitigations=off tsc=reliable no_timer_check acpi=off nosmp noapic";

fn bringup(file: &str) -> PathBuf {
    let home = std::env::var("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/tensorvisor/linux-bringup").join(file)
}

#[test]
fn debian_kernel_boots_to_the_initramfs_marker_beside_a_rust_tenant() {
    let hello = guest_elf("hello").expect("build the hello guest");
    let mut boot = Boot::bochs("linux")
        .module(hello, "guest:hello")
        .module(bringup("vmlinux"), &format!("linux:tux mem_mib=192 -- {CMDLINE}"))
        .module(bringup("initrd.cpio"), "initrd:tux");
    boot.memory_mib = 512;
    boot.timeout = Duration::from_secs(600);
    let run = boot.run();
    println!("{}", run.serial());
    run.assert_verdict(Verdict::Success)
        .assert_line(&["[tux] tensorvisor-linux: init up"])
        .assert_line(&["guest hello: exited with status 0"]);
}
