//! Installs what the build and the emulators need on a Debian machine: the rustup target and the
//! Debian packages. Each missing piece is named before it is installed; without root (and without
//! password-less sudo) the exact command to run is printed instead.

use std::path::Path;
use std::process::Command;

/// A thing we need, the file that proves it is installed, and the Debian package that has it.
struct Need {
    what: &'static str,
    proof: &'static str,
    package: &'static str,
}

const NEEDS: &[Need] = &[
    Need { what: "QEMU (x86_64 system emulator)", proof: "/usr/bin/qemu-system-x86_64", package: "qemu-system-x86" },
    Need { what: "OVMF (UEFI firmware for QEMU)", proof: "/usr/share/OVMF/OVMF_CODE.fd", package: "ovmf" },
    Need { what: "Bochs (VT-x emulation)", proof: "/usr/bin/bochs-bin", package: "bochs" },
    Need { what: "Bochs BIOS", proof: "/usr/share/bochs/BIOS-bochs-latest", package: "bochsbios" },
    Need { what: "VGA BIOS for Bochs", proof: "/usr/share/vgabios/vgabios.bin", package: "vgabios" },
    Need { what: "Bochs terminal display", proof: "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so", package: "bochs-term" },
    Need { what: "GRUB tools", proof: "/usr/bin/grub-mkrescue", package: "grub-common" },
    Need { what: "GRUB for BIOS", proof: "/usr/lib/grub/i386-pc/multiboot2.mod", package: "grub-pc-bin" },
    Need { what: "GRUB for UEFI", proof: "/usr/lib/grub/x86_64-efi/multiboot2.mod", package: "grub-efi-amd64-bin" },
    Need { what: "xorriso (ISO images)", proof: "/usr/bin/xorriso", package: "xorriso" },
    Need { what: "mtools (EFI system partition)", proof: "/usr/bin/mformat", package: "mtools" },
    Need { what: "binutils (linking the engine's hard-float kernel object)", proof: "/usr/bin/objcopy", package: "binutils" },
];

/// The bare-metal target the hypervisor and the guests build for.
pub const BARE_TARGET: &str = "x86_64-unknown-none";

/// The hard-float target the engine's kernel object for the hypervisor is compiled for (the
/// host's own, always installed): see `build_kernel_object` in `image.rs`.
pub const HARD_FLOAT_TARGET: &str = "x86_64-unknown-linux-gnu";

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn passwordless_sudo() -> bool {
    Command::new("sudo").args(["-n", "true"]).status().map(|s| s.success()).unwrap_or(false)
}

fn run_loud(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed with {status}")) }
}

/// Makes sure the rustup target and every Debian package is present.
pub fn ensure() -> Result<(), String> {
    ensure_rust_target()?;
    let missing: Vec<&Need> = NEEDS.iter().filter(|n| !Path::new(n.proof).exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for n in &missing {
        eprintln!("xtask: missing {} ({} not found): package {}", n.what, n.proof, n.package);
    }
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    packages.dedup();
    let install = format!("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {}", packages.join(" "));
    let prefix: &[&str] = if is_root() {
        &[]
    } else if passwordless_sudo() {
        &["sudo", "-n"]
    } else {
        return Err(format!("missing Debian packages; run as root:\n  sudo sh -c '{install}'"));
    };
    eprintln!("xtask: installing {}", packages.join(" "));
    let sh = |script: &str| {
        let mut c = Command::new(prefix.first().copied().unwrap_or("sh"));
        if !prefix.is_empty() {
            c.args(&prefix[1..]).arg("sh");
        }
        c.args(["-c", script]);
        c
    };
    run_loud(&mut sh(&install))?;
    let still: Vec<&str> = NEEDS.iter().filter(|n| !Path::new(n.proof).exists()).map(|n| n.proof).collect();
    if still.is_empty() { Ok(()) } else { Err(format!("still missing after install: {}", still.join(", "))) }
}

fn ensure_rust_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate::root())
        .output()
        .map_err(|e| format!("rustup not found ({e}); install rustup first: https://rustup.rs"))?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == BARE_TARGET) {
        return Ok(());
    }
    eprintln!("xtask: installing the Rust target {BARE_TARGET}");
    run_loud(Command::new("rustup").args(["target", "add", BARE_TARGET]).current_dir(crate::root()))
}
