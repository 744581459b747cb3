//! Integration tests that boot tensorvisor images in emulators and judge what they print.
//!
//! Each test builds a GRUB image (through the same `xtask` library `cargo xtask run` uses), boots
//! it in QEMU TCG or Bochs with a timeout, and asserts on the serial log and the verdict. A failed
//! assertion shows the verdict, the emulator status and the tail of the serial log.

use std::path::PathBuf;
use std::time::Duration;
use xtask::emulator::{self, Emulator, Outcome, RunSpec};
use xtask::image::{self, Firmware, ImageSpec};

/// A boot to run: the image and how to run it.
pub struct Boot {
    pub image: ImageSpec,
    pub emulator: Emulator,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Extra QEMU arguments (devices).
    pub qemu_args: Vec<String>,
    /// Bochs: COM1 as a socket with this scripted input (see `RunSpec::console_script`).
    pub console_script: Vec<(String, String)>,
    /// Extra bochsrc lines (devices).
    pub bochs_lines: Vec<String>,
}

impl Boot {
    pub fn qemu(name: &str, firmware: Firmware) -> Self {
        Self { image: ImageSpec::new(name, firmware), emulator: Emulator::Qemu { kvm: false }, timeout: Duration::from_secs(60), memory_mib: 256, cpus: 1, qemu_args: Vec::new(), bochs_lines: Vec::new(), console_script: Vec::new() }
    }

    pub fn bochs(name: &str) -> Self {
        Self { image: ImageSpec::new(name, Firmware::Bios), emulator: Emulator::Bochs, timeout: Duration::from_secs(120), memory_mib: 128, cpus: 1, qemu_args: Vec::new(), bochs_lines: Vec::new(), console_script: Vec::new() }
    }

    pub fn cmdline(mut self, cmdline: &str) -> Self {
        self.image = self.image.cmdline(cmdline);
        self
    }

    pub fn qemu_args(mut self, args: &[&str]) -> Self {
        self.qemu_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn bochs_lines(mut self, lines: &[&str]) -> Self {
        self.bochs_lines.extend(lines.iter().map(|l| l.to_string()));
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    pub fn module(mut self, path: impl Into<PathBuf>, name: &str) -> Self {
        self.image = self.image.module(path, name);
        self
    }

    /// Builds the image and boots it; panics (failing the test) only if that cannot be done.
    pub fn run(self) -> Run {
        let iso = image::make_image(&self.image).unwrap_or_else(|e| panic!("image {}: {e}", self.image.name));
        let work = image::build_dir().join("tests").join(format!("{}-{}", self.image.name, self.image.firmware.name()));
        let mut spec = RunSpec::new(iso, self.image.firmware, self.emulator, work);
        spec.timeout = self.timeout;
        spec.memory_mib = self.memory_mib;
        spec.cpus = self.cpus;
        spec.qemu_args = self.qemu_args;
        spec.console_input = !self.console_script.is_empty();
        spec.console_script = self.console_script;
        spec.bochs_lines = self.bochs_lines;
        let outcome = emulator::boot(&spec).unwrap_or_else(|e| panic!("boot {}: {e}", self.image.name));
        Run { outcome }
    }
}

/// A finished boot, with assertions that explain themselves.
pub struct Run {
    pub outcome: Outcome,
}

impl Run {
    pub fn serial(&self) -> &str {
        &self.outcome.serial
    }

    #[track_caller]
    pub fn assert_verdict(&self, expected: emulator::Verdict) -> &Self {
        assert_eq!(self.outcome.verdict, expected, "unexpected verdict\n{}", self.outcome.describe());
        self
    }

    /// Asserts that the log has a line containing every one of `parts`.
    #[track_caller]
    pub fn assert_line(&self, parts: &[&str]) -> &Self {
        let found = self.serial().lines().any(|l| parts.iter().all(|p| l.contains(p)));
        assert!(found, "no serial line contains all of {parts:?}\n{}", self.outcome.describe());
        self
    }

    #[track_caller]
    pub fn assert_no_line(&self, part: &str) -> &Self {
        assert!(!self.serial().contains(part), "the serial log contains {part:?}\n{}", self.outcome.describe());
        self
    }

    /// Asserts the lines containing `first` and `second` both exist, in that order.
    #[track_caller]
    pub fn assert_order(&self, first: &str, second: &str) -> &Self {
        let a = self.serial().find(first);
        let b = self.serial().find(second);
        assert!(
            matches!((a, b), (Some(a), Some(b)) if a < b),
            "expected {first:?} before {second:?}\n{}",
            self.outcome.describe()
        );
        self
    }
}

/// Runs one of the engine's host command-line tools (`tvgen`, `tvtiny`) through cargo and returns
/// what it printed; panics (failing the test) if it fails.
pub fn engine_cli(bin: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--package", "engine", "--features", "std", "--bin", bin, "--"])
        .args(args)
        .current_dir(xtask::root())
        .output()
        .expect("cargo run");
    assert!(out.status.success(), "{bin} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The numbers of `"key":[1,2,3]` in a JSON line printed by `tvgen --json`.
pub fn json_ids(json: &str, key: &str) -> Vec<u32> {
    let start = json.find(&format!("\"{key}\":[")).unwrap_or_else(|| panic!("{key} in {json}")) + key.len() + 4;
    let end = start + json[start..].find(']').unwrap_or(0);
    json[start..end].split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
}

/// The kernels the hypervisor's engine ran, from its `engine kernels: ...` line (see
/// `hypervisor/src/kernel/simd.rs`): the hard-float object's AVX2+FMA kernels where the
/// emulated CPU has them, its portable kernels otherwise. Host references must use the same,
/// because the two sum in different orders for some types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvKernels {
    Avx2,
    Portable,
}

impl HvKernels {
    /// Read from a serial log; panics (showing the log's start) when the line is missing, or
    /// when the kernels did not come from the hard-float object that xtask links.
    pub fn of(serial: &str) -> Self {
        let line = serial
            .lines()
            .find(|l| l.contains("engine kernels: "))
            .unwrap_or_else(|| panic!("no \"engine kernels:\" line in the log:\n{}", &serial[..serial.len().min(4000)]));
        assert!(line.contains("from the hard-float kernel object"), "the hypervisor did not use the kernel object: {line}");
        if line.contains("AVX2+FMA kernels") {
            Self::Avx2
        } else {
            Self::Portable
        }
    }

    /// The host engine's features for the same kernels (AVX2 ones need an AVX2 host).
    pub fn cpu(self) -> engine::cpu::CpuFeatures {
        match self {
            Self::Portable => engine::cpu::CpuFeatures::portable(),
            Self::Avx2 => {
                let c = engine::cpu::CpuFeatures::detect();
                assert!(c.avx2_fma(), "the hypervisor ran AVX2+FMA kernels; this host has none to reproduce its results");
                c
            }
        }
    }

    /// The `tvgen` flags that select the same kernels.
    pub fn tvgen_flags(self) -> &'static [&'static str] {
        self.cpu();
        match self {
            Self::Portable => &["--portable"],
            Self::Avx2 => &[],
        }
    }
}
