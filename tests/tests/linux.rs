//! The stock Debian kernel as a tenant, in Bochs (VT-x): the uncompressed vmlinux through the
//! 64-bit boot protocol, beside a Rust guest tenant, both from a tenant manifest (the Linux
//! tenant is a `kind = "linux"` entry with its own weight, memory and quotas), with the tiny
//! model loaded by the hypervisor. One boot checks: the kernel reaches the initramfs marker;
//! `tv-generate` (a static Linux program on the SDK's `linux` transport: sysfs-mapped hypercall
//! page and window) generates exactly the host engine's tokens, its prefill and generate calls
//! parking the vCPU while the engine scheduler runs their units (as a Rust tenant's VMCALLs
//! do); `tv-hostile` gets the documented errors and
//! faults while the kernel carries on to `tensorvisor-linux: done` and its own reset; the Rust
//! tenant completes. The platform is the local APIC one: the kernel finds its CPU in the ACPI
//! MADT, its local APIC at 0xfee00000 (xAPIC MMIO emulated through EPT violations) and runs its
//! clock events on the APIC's TSC-deadline timer, while COM1's IRQ 4 reaches it from the 8259A
//! through LINT0 (ExtINT). The boot time (the kernel's uptime when /init runs) is printed.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use tests::{engine_cli, json_ids, Boot, HvKernels};
use xtask::emulator::Verdict;
use xtask::image::{guest_elf, linux_module_line, LINUX_CMDLINE};
use xtask::linux::{kernel_args, InitMode, DONE_MARKER, INIT_MARKER, PLATFORM_MARKER};

/// `xtask::linux::initramfs` writes through a temporary file named after the process id, so the
/// tests of this binary (one process, several threads) build their initramfs one at a time.
fn initramfs(mode: InitMode) -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    xtask::linux::initramfs(mode).expect("the initramfs")
}

fn ids(v: &[u32]) -> String {
    v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

#[test]
fn debian_kernel_generates_through_the_tensor_function_beside_a_rust_tenant() {
    let dir = xtask::image::build_dir().join("tests").join("linux");
    std::fs::create_dir_all(&dir).unwrap();
    let model: PathBuf = dir.join("tiny.gguf");
    engine_cli("tvtiny", &["--seed", "1", model.to_str().unwrap()]);
    let gen_args = ["--model", model.to_str().unwrap(), "--prompt", "Hi there", "--max-tokens", "4", "--temp", "0.9", "--seed", "7",
        "--threads", "1", "--ignore-eos", "--json"];
    // The prompt's tokens (the same whatever the kernels); the generated ones come after the
    // boot, from the kernels the hypervisor says it ran.
    let prompt = json_ids(&engine_cli("tvgen", &gen_args), "prompt_tokens");

    let hello = guest_elf("hello").expect("build the hello guest");
    let kernel = xtask::linux::kernel().expect("Debian's kernel");
    let initramfs = initramfs(InitMode::Test);
    let args = kernel_args(&format!("prompt={} max_tokens=4 temp=0.9 seed=7", ids(&prompt))).unwrap();
    // Both tenants from a configuration, compiled and checked by xtask as at image time.
    let config = dir.join("linux.toml");
    let toml = format!(
        r#"[machine]
cpus = 1
memory_mib = 256
kv_cache_mib = 16

[[tenants]]
name = "hello"
guest = "hello"
memory_mib = 4
models = ["tiny.gguf"]
weight = 1
cpu_budget_ms = 2000
[tenants.quota]
registered_mib = 4
inflight_ops = 64
kv_cache_mib = 4

[[tenants]]
name = "tux"
kind = "linux"
kernel = "{}"
initrd = "{}"
cmdline = "{LINUX_CMDLINE} {args}"
memory_mib = 192
models = ["tiny.gguf"]
weight = 5
cpu_budget_ms = 3600000
[tenants.quota]
registered_mib = 8
inflight_ops = 32
kv_cache_mib = 8
"#,
        kernel.vmlinux.display(),
        initramfs.display()
    );
    std::fs::write(&config, toml).unwrap();
    let compiled = xtask::manifest::compile_file(&config).unwrap_or_else(|e| panic!("{e}"));
    let manifest = dir.join("manifest.bin");
    std::fs::write(&manifest, &compiled.bytes).unwrap();
    assert_eq!(compiled.modules.len(), 2, "the kernel and the initramfs: {:?}", compiled.modules);
    let mut boot = Boot::bochs("linux").module(&manifest, "manifest").module(&model, "model:tiny.gguf").module(hello, "guest:hello");
    for (name, path) in &compiled.modules {
        boot = boot.module(path, name);
    }
    boot.memory_mib = 512;
    boot.timeout = Duration::from_secs(900);
    let started = Instant::now();
    let run = boot.run();
    let wall = started.elapsed();
    let host = engine_cli("tvgen", &[&gen_args[..], HvKernels::of(run.serial()).tvgen_flags()].concat());
    let want = json_ids(&host, "tokens");
    assert_eq!(want.len(), 4, "host generated 4 tokens: {host}");
    run.assert_verdict(Verdict::Success)
        // The Linux tenant comes from the manifest, with its weight, memory and quotas.
        .assert_line(&["manifest: 2 tenant(s) admitted, 0 refused"])
        .assert_line(&["tenant tux: Linux kernel vmlinux (", "initramfs initramfs-test.cpio, 192 MiB, engine weight 5, quotas 8 MiB registered / 32 in-flight ops / 8 MiB KV cache"])
        .assert_line(&["guest tux: loaded: Linux kernel"])
        .assert_line(&["[tux] [    0.000000] Linux version", &kernel.version])
        .assert_line(&["[tux] ", "pci 0000:00:01.0: [7476:0001]"])
        // The platform: ACPI tables (RSDP -> XSDT -> FADT/DSDT, MADT) and the CPU found in the
        // MADT, the local APIC with its TSC-deadline timer driving the clock events.
        .assert_line(&["[tux] ", "ACPI: XSDT 0x00000000000E0030"])
        .assert_line(&["[tux] ", "ACPI: APIC 0x"])
        .assert_line(&["[tux] ", "ACPI: Using ACPI for processor (LAPIC) configuration information"])
        .assert_line(&["[tux] ", "smpboot: Allowing 1 CPUs"])
        .assert_line(&["[tux] ", "ACPI: Interpreter enabled"])
        // PCI through the DSDT's host bridge (no pci=noacpi): bus 0 with the memory window from
        // the tensor window up; the SCI's level trigger lands in the emulated ELCR.
        .assert_line(&["[tux] ", "ACPI: PCI Root Bridge [PCI0] (domain 0000 [bus 00])"])
        .assert_line(&["[tux] ", "pci_bus 0000:00: root bus resource [mem 0x0b800000-0xfebfffff window]"])
        .assert_line(&["[tux] ", "ACPI: setting ELCR to 0200 (from 0000)"])
        .assert_line(&["[tux] ", "TSC deadline timer available"])
        .assert_line(&["[tux] ", PLATFORM_MARKER, "clockevent=lapic-deadline"])
        .assert_no_line("APIC disabled by BIOS")
        .assert_line(&["[tux] ", INIT_MARKER])
        // Must-show 1: the SDK program's tokens are the host engine's.
        .assert_line(&["[tux] tv-generate: tokens=", &ids(&want)])
        // Its hypercall-page calls that need the engine went through the DRR scheduler: the
        // prefill as one unit, the four tokens as four, charged to tux.
        .assert_line(&["engine: tux: prefill request done in 1 unit(s)"])
        .assert_line(&["engine: tux: generate request done in 4 unit(s)"])
        .assert_line(&["guest tux: ", "5 engine units in 2 requests"])
        // Must-show 2: user-mode VMCALL without the policy, and memory outside the window.
        .assert_line(&["[tux] tv-hostile: user vmcall -> PermissionDenied"])
        .assert_line(&["[tux] tv-hostile: outside window -> mmap past end: refused", "read past mapping: killed by SIGSEGV", "read all-ones"])
        .assert_line(&["linux: stray load of guest-physical", "reads all ones"])
        .assert_line(&["[tux] ", DONE_MARKER])
        .assert_order(INIT_MARKER, DONE_MARKER)
        .assert_line(&["guest tux: stopped: reset requested"])
        .assert_line(&["[hello] hello guest done: 0 failed checks"])
        .assert_line(&["guest hello: exited with status 0"])
        .assert_line(&["guests: 2 finished, 0 stopped or refused"])
        .assert_no_line("tv-generate: error")
        .assert_no_line("exited with status 1")
        .assert_no_line("guest tux: stopped: VM entry failed");
    // The boot time: the kernel's uptime when /init runs, the hypervisor's clock (TSC) at the
    // marker, and Bochs' wall time in all.
    let line = |m: &str| run.serial().lines().find(|l| l.contains(m)).unwrap_or_default().to_string();
    let (at_marker, platform) = (line(INIT_MARKER), line(PLATFORM_MARKER));
    println!(
        "linux boot: `{platform}`; marker line `{at_marker}`; whole Bochs run {:.1} s wall (image build included: {:.1} s)",
        run.outcome.elapsed.as_secs_f64(),
        wall.as_secs_f64()
    );
}

/// The second, slower boot path: Debian's stock bzImage itself (the same package as the vmlinux
/// above), unchanged, as the tenant's kernel. The hypervisor tells it from an ELF by its setup
/// header, copies the protected-mode part to the header's `pref_address` (16 MiB) with
/// `init_size` of room, and enters it through the 64-bit boot protocol at load address + 0x200
/// (the decompressor's `startup_64`), RSI = a zero page holding the bzImage's own header. The
/// decompressor talks on COM1 through `earlyprintk=serial`, inflates the XZ payload in place (at
/// 16 MiB, `nokaslr`) and jumps to the kernel it produced, which reaches the initramfs and stops
/// by itself. No model and no second tenant: the decompressor alone is about two thirds of the
/// run (1.87 s of the hypervisor's 2.55 s clock, i.e. 4.5 of Bochs' 6.6 G emulated instructions:
/// about 75 s of a 112 s run), so this boot checks only the path; the tensor function is the
/// vmlinux tests' business. The boot time is printed.
#[test]
fn debian_bzimage_boots_through_its_decompressor() {
    let kernel = xtask::linux::kernel().expect("Debian's kernel");
    let initramfs = initramfs(InitMode::Test);
    let mut boot = Boot::bochs("linux-bzimage")
        .module(&kernel.bzimage, &linux_module_line("tux", "mem_mib=192", LINUX_CMDLINE))
        .module(&initramfs, "initrd:tux");
    boot.memory_mib = 512;
    boot.timeout = Duration::from_secs(900);
    let run = boot.run();
    run.assert_verdict(Verdict::Success)
        // Loaded as a bzImage: one piece, entered at pref_address (16 MiB) + 0x200.
        .assert_line(&["guest tux: loaded: Linux kernel", "(1 pieces, entry 0x1000200)"])
        // The decompressor ran (Debian builds it without X86_VERBOSE_BOOTUP, so its one line is
        // the KASLR notice; the vmlinux path never shows it), before the kernel it inflated.
        .assert_line(&["[tux] KASLR disabled: 'nokaslr' on cmdline."])
        .assert_order("KASLR disabled", "Linux version")
        .assert_line(&["[tux] [    0.000000] Linux version", &kernel.version])
        .assert_line(&["[tux] ", INIT_MARKER])
        .assert_line(&["[tux] ", DONE_MARKER])
        .assert_order(INIT_MARKER, DONE_MARKER)
        .assert_line(&["guest tux: stopped: reset requested"])
        .assert_line(&["guests: 1 finished, 0 stopped or refused"])
        .assert_no_line("guest tux: stopped: VM entry failed");
    // The hypervisor's clock (its TSC; in Bochs one tick per emulated instruction) at the
    // decompressor's notice and at the kernel's first line: the decompressor's share of the boot.
    let line = |m: &str| run.serial().lines().find(|l| l.contains(m)).unwrap_or_default().to_string();
    let clock = |m: &str| -> f64 {
        let l = line(m);
        l.trim_start_matches('[').split(']').next().and_then(|t| t.trim().parse().ok()).unwrap_or(f64::NAN)
    };
    println!(
        "linux bzImage boot: decompressor {:.2} s of hypervisor clock (KASLR notice to `Linux version`), then `{}`; whole Bochs run {:.1} s wall",
        clock("[    0.000000] Linux version") - clock("KASLR disabled"),
        line(PLATFORM_MARKER),
        run.outcome.elapsed.as_secs_f64()
    );
}

/// A kernel that is no kernel, and a real one (Debian's bzImage, whose `init_size` alone is about
/// 64 MiB) in a 32 MiB tenant, are refused with one line each before any memory is given out;
/// the Rust tenant beside them runs. In the same boot the hypervisor checks the manifest's Linux
/// entries again: one whose kernel module was not delivered is not started, and one forged to
/// 16 MiB (resealed, so only the field check can catch it) is refused.
#[test]
fn a_malformed_or_oversized_linux_tenant_is_refused_and_the_others_run() {
    use hypervisor::manifest::{self, Flags, LinuxBoot, Machine, Manifest, Quota, Tenant};
    let hello = guest_elf("hello").expect("build the hello guest");
    let kernel = xtask::linux::kernel().expect("Debian's kernel");
    let initramfs = initramfs(InitMode::Test);
    let junk = xtask::root().join("README.md");
    let rust = Tenant {
        name: "hello".into(),
        guest: "hello".into(),
        args: String::new(),
        memory_mib: 4,
        vcpus: 1,
        cpus: vec![],
        models: vec![],
        quota: Quota { registered_mib: 1, inflight_ops: 8, kv_cache_mib: 1 },
        weight: 1,
        flags: Flags::empty(),
        cpu_budget_ms: 2000,
        devices: vec![],
        linux: None,
    };
    let linux = |name: &str, kernel: &str| Tenant {
        name: name.into(),
        guest: String::new(),
        memory_mib: 64,
        linux: Some(LinuxBoot { kernel: kernel.into(), initrd: String::new(), cmdline: LINUX_CMDLINE.into() }),
        ..rust.clone()
    };
    let m = Manifest { machine: Machine { cpus: 1, memory_mib: 256, kv_cache_mib: 8 }, tenants: vec![rust.clone(), linux("ghost", "nothere"), linux("tiny", "vmlinux")] };
    let mut bytes = manifest::encode(&m).unwrap();
    // tiny's memory_mib (entry 2, offset 28) forged to 16 MiB, the checksum recomputed.
    let e2 = manifest::HEADER_LEN + 2 * manifest::ENTRY_LEN;
    bytes[e2 + 28..e2 + 32].copy_from_slice(&16u32.to_le_bytes());
    bytes[20..24].fill(0);
    let crc = manifest::crc32(&bytes);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    let dir = xtask::image::build_dir().join("tests").join("linux-refused");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.bin"), &bytes).unwrap();
    let run = Boot::bochs("linux-refused")
        .module(dir.join("manifest.bin"), "manifest")
        .module(hello, "guest:hello")
        .module(&junk, &linux_module_line("junk", "mem_mib=64", LINUX_CMDLINE))
        .module(&kernel.bzimage, &linux_module_line("small", "mem_mib=32", LINUX_CMDLINE))
        .module(&initramfs, "initrd:small")
        .run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["manifest: 2 tenant(s) admitted, 1 refused"])
        .assert_line(&["manifest: tenant refused: tenant #2 `tiny`: memory_mib: 16 is outside 32..=256"])
        .assert_line(&["tenant ghost: not started: no kernel module named kernel:nothere was delivered"])
        .assert_line(&["guest junk: not started: kernel:"])
        .assert_line(&["guest small: not started: layout:"])
        .assert_no_line("guest junk: loaded")
        .assert_no_line("guest small: loaded")
        .assert_line(&["guest hello: exited with status 0"])
        .assert_line(&["guests: 1 finished, 2 stopped or refused"]);
}

/// Must-show 4 as `cargo xtask run --linux` does it, with the typing scripted: Bochs' COM1 is a
/// socket, the shell-mode initramfs runs tv-generate and then `/bin/sh`, the tenant's COM1 goes
/// to the console unframed (`console=raw`); a typed command is evaluated by the shell and
/// `poweroff -f` stops the tenant through ACPI: the kernel's S5 write to the FADT's PM1a
/// control register (SLP_TYP from the DSDT's `\_S5`), not a reset or a halt.
#[test]
fn the_linux_shell_takes_typed_commands_on_the_console() {
    let kernel = xtask::linux::kernel().expect("Debian's kernel");
    let initramfs = initramfs(InitMode::Shell);
    let dir = xtask::image::build_dir().join("tests").join("linux-shell");
    std::fs::create_dir_all(&dir).unwrap();
    let model: PathBuf = dir.join("tiny.gguf");
    engine_cli("tvtiny", &["--seed", "1", model.to_str().unwrap()]);
    let mut boot = Boot::bochs("linux-shell")
        .module(&model, "model:tiny.gguf")
        .module(&kernel.vmlinux, &linux_module_line("tux", "mem_mib=192 console=raw", &format!("{LINUX_CMDLINE} tv.prompt=2,100 tv.max_tokens=2")))
        .module(&initramfs, "initrd:tux");
    boot.memory_mib = 512;
    boot.timeout = Duration::from_secs(900);
    boot.console_script = vec![
        ("tensorvisor-linux: shell".into(), "echo shell-says-$((6*7))\n".into()),
        ("shell-says-42".into(), "poweroff -f\n".into()),
    ];
    let run = boot.run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&[INIT_MARKER])
        .assert_line(&["tv-generate: tokens="])
        .assert_line(&["echo shell-says-$((6*7))"])
        .assert_order("echo shell-says-$((6*7))", "\nshell-says-42")
        .assert_line(&["reboot: Power down"])
        .assert_line(&["guest tux: stopped: powered off (ACPI S5)"])
        .assert_line(&["guests: 1 finished, 0 stopped or refused"]);
}
