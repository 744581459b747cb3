//! The programs on the build host, where there is no tensorvisor PCI function: each says so and
//! fails cleanly instead of crashing or pretending.

use std::process::Command;

#[test]
fn tv_generate_without_the_device_fails_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_tv-generate")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout.lines().last().unwrap_or("");
    assert!(line.starts_with("tv-generate: error: "), "{stdout}");
    // The host may have some other device at 00:01.0: then the ids say it is not ours.
    assert!(line.contains("no tensorvisor PCI function at /sys/bus/pci/devices/0000:00:01.0") || line.contains("not tensorvisor's 7476:0001"), "{line}");
}

#[test]
fn tv_generate_refuses_bad_arguments_before_touching_anything() {
    let out = Command::new(env!("CARGO_BIN_EXE_tv-generate")).arg("prompt=1,two").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("tv-generate: error: prompt token \"two\""), "{stdout}");
}

#[test]
fn tv_hostile_without_the_device_attempts_nothing_and_says_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_tv-hostile")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("tv-hostile: user vmcall -> not attempted: no tensorvisor signature in CPUID"), "{stdout}");
    assert!(stdout.contains("tv-hostile: outside window -> not attempted: "), "{stdout}");
}
