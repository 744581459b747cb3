//! Building the hypervisor and bootable GRUB images (BIOS and UEFI) with its modules.

use crate::setup::{BARE_TARGET, HARD_FLOAT_TARGET};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The kernel command line recommended for a Linux tenant (README, "Linux tenants", says why
/// each option is there).
pub const LINUX_CMDLINE: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 nokaslr mitigations=off tsc=reliable noapic";

/// The module line of a Linux tenant's kernel: `linux:NAME options -- kernel command line`.
pub fn linux_module_line(name: &str, options: &str, cmdline: &str) -> String {
    format!("linux:{name} {options} -- {cmdline}")
}

/// The firmware an image is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS: GRUB's i386-pc El Torito image (QEMU's SeaBIOS, Bochs' BIOS, real PCs in CSM).
    Bios,
    /// UEFI: GRUB's x86_64-efi image on an EFI system partition inside the ISO (QEMU with OVMF).
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    fn grub_dir(self) -> &'static str {
        match self {
            Firmware::Bios => "/usr/lib/grub/i386-pc",
            Firmware::Uefi => "/usr/lib/grub/x86_64-efi",
        }
    }
}

/// A file handed to the hypervisor as a multiboot2 module, and the name it is known by.
#[derive(Clone, Debug)]
pub struct Module {
    pub path: PathBuf,
    pub name: String,
}

/// What goes into one image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// A short name, used for the image's file name.
    pub name: String,
    pub firmware: Firmware,
    /// The hypervisor's command line (e.g. `tv.scenario=pagefault`).
    pub cmdline: String,
    pub modules: Vec<Module>,
}

impl ImageSpec {
    pub fn new(name: &str, firmware: Firmware) -> Self {
        Self { name: name.to_string(), firmware, cmdline: String::new(), modules: Vec::new() }
    }

    pub fn cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = cmdline.to_string();
        self
    }

    pub fn module(mut self, path: impl Into<PathBuf>, name: &str) -> Self {
        self.modules.push(Module { path: path.into(), name: name.to_string() });
        self
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Builds happen once per process: tests build images from several threads, and a thread must
/// never copy an ELF another thread's build is relinking.
static HYPERVISOR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static GUESTS: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds the hypervisor for the bare-metal target (once per process); returns the ELF's path.
pub fn build_hypervisor() -> Result<PathBuf, String> {
    HYPERVISOR.get_or_init(build_hypervisor_now).clone()
}

fn build_hypervisor_now() -> Result<PathBuf, String> {
    let root = crate::root();
    let kernels = build_kernel_object()?;
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--package", "hypervisor", "--bin", "hypervisor", "--target", BARE_TARGET])
        .env("TV_KERNEL_OBJECT", &kernels)
        .current_dir(&root))?;
    let elf = root.join("target").join(BARE_TARGET).join("release").join("hypervisor");
    if elf.exists() { Ok(elf) } else { Err(format!("build produced no {}", elf.display())) }
}

/// Builds the engine's kernels hard-float for the soft-float hypervisor (crate `engine-simd`, see
/// `hypervisor/src/kernel/simd.rs`) and returns the object's path. The crate is compiled for
/// the host's x86_64 Linux target (SSE2 floats, AVX2 chosen at run time) as a static library,
/// with `panic = "abort"` (profile `kernel-object`) and no red zone; `ld -r` links what
/// `tvk_init` needs into one relocatable object, and `objcopy` makes every other symbol local,
/// so its copies of `core` and `alloc` cannot clash with the hypervisor's. Its undefined
/// symbols are `memcpy` and the like, which the hypervisor's `compiler_builtins` defines.
pub fn build_kernel_object() -> Result<PathBuf, String> {
    let root = crate::root();
    let dir = root.join("target").join("kernel-object");
    run(Command::new(env!("CARGO"))
        .args(["rustc", "--package", "engine-simd", "--features", "object", "--profile", "kernel-object"])
        .args(["--target", HARD_FLOAT_TARGET, "--crate-type", "staticlib", "--target-dir"])
        .arg(&dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cno-redzone=yes")
        .current_dir(&root))?;
    let lib = dir.join(HARD_FLOAT_TARGET).join("kernel-object").join("libengine_simd.a");
    let part = dir.join("engine-simd-partial.o");
    let obj = dir.join("engine-simd.o");
    run(Command::new("ld").args(["-r", "-u", "tvk_init", "-o"]).arg(&part).arg(&lib))?;
    run(Command::new("objcopy").arg("--keep-global-symbol=tvk_init").arg(&part).arg(&obj))?;
    Ok(obj)
}

/// Builds the guests (their own workspace under `guests/`, once per process) and returns the
/// directory holding their ELF files (`hello`, `misbehave`, ...).
pub fn build_guests() -> Result<PathBuf, String> {
    GUESTS.get_or_init(build_guests_now).clone()
}

fn build_guests_now() -> Result<PathBuf, String> {
    let guests = crate::root().join("guests");
    run(Command::new(env!("CARGO")).args(["build", "--release", "--target", BARE_TARGET]).current_dir(&guests))?;
    Ok(guests.join("target").join(BARE_TARGET).join("release"))
}

/// The path of guest `name`'s ELF, building the guests first.
pub fn guest_elf(name: &str) -> Result<PathBuf, String> {
    let path = build_guests()?.join(name);
    if path.exists() { Ok(path) } else { Err(format!("no guest named {name} under guests/")) }
}

/// Where images and run artefacts go.
pub fn build_dir() -> PathBuf {
    crate::root().join("build")
}

fn grub_cfg(spec: &ImageSpec) -> String {
    let mut cfg = String::from("set timeout=0\nset default=0\n\nmenuentry \"tensorvisor\" {\n");
    cfg.push_str(&format!("    multiboot2 /boot/hypervisor.elf {}\n", spec.cmdline));
    for (i, m) in spec.modules.iter().enumerate() {
        cfg.push_str(&format!("    module2 /boot/modules/{i} {}\n", m.name));
    }
    cfg.push_str("    boot\n}\n");
    cfg
}

/// Builds the hypervisor and an ISO image for `spec`; returns the image's path.
pub fn make_image(spec: &ImageSpec) -> Result<PathBuf, String> {
    let elf = build_hypervisor()?;
    make_image_from(&elf, spec)
}

/// Makes an ISO for `spec` around an already built hypervisor ELF.
pub fn make_image_from(elf: &Path, spec: &ImageSpec) -> Result<PathBuf, String> {
    let stage = build_dir().join("stage").join(format!("{}-{}", spec.name, spec.firmware.name()));
    let _ = fs::remove_dir_all(&stage);
    let boot = stage.join("boot");
    fs::create_dir_all(boot.join("grub")).map_err(|e| format!("{}: {e}", boot.display()))?;
    fs::create_dir_all(boot.join("modules")).map_err(|e| format!("{}: {e}", boot.display()))?;
    fs::copy(elf, boot.join("hypervisor.elf")).map_err(|e| format!("{}: {e}", elf.display()))?;
    for (i, m) in spec.modules.iter().enumerate() {
        if m.name.trim().is_empty() || m.name.contains(['\n', '\r', '"', '\'', '{', '}', ';']) {
            return Err(format!("module command line {:?} must be one line of plain words", m.name));
        }
        fs::copy(&m.path, boot.join("modules").join(i.to_string()))
            .map_err(|e| format!("module {}: {e}", m.path.display()))?;
    }
    fs::write(boot.join("grub").join("grub.cfg"), grub_cfg(spec)).map_err(|e| e.to_string())?;
    let images = build_dir().join("images");
    fs::create_dir_all(&images).map_err(|e| e.to_string())?;
    let iso = images.join(format!("{}-{}.iso", spec.name, spec.firmware.name()));
    run(Command::new("grub-mkrescue")
        .arg("-d")
        .arg(spec.firmware.grub_dir())
        .arg("-o")
        .arg(&iso)
        .arg(&stage))?;
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_lists_modules_in_order() {
        let spec = ImageSpec::new("t", Firmware::Bios)
            .cmdline("tv.scenario=panic")
            .module("/a", "manifest")
            .module("/b", "model.gguf");
        let cfg = grub_cfg(&spec);
        assert!(cfg.contains("multiboot2 /boot/hypervisor.elf tv.scenario=panic\n"));
        let a = cfg.find("module2 /boot/modules/0 manifest").unwrap();
        let b = cfg.find("module2 /boot/modules/1 model.gguf").unwrap();
        assert!(a < b);
        assert!(cfg.contains("set timeout=0"));
    }
}
