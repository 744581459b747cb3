use super::*;

const BASE: &str = r#"[machine]
cpus = 4
memory_mib = 64
kv_cache_mib = 16

[[tenants]]
name = "alice"
guest = "hello"
memory_mib = 8
cpus = [1]
weight = 100
cpu_budget_ms = 2000
[tenants.quota]
registered_mib = 4
inflight_ops = 64
kv_cache_mib = 4

[[tenants]]
name = "bob"
guest = "hello"
memory_mib = 8
cpus = [2]
weight = 100
cpu_budget_ms = 2000
[tenants.quota]
registered_mib = 4
inflight_ops = 64
kv_cache_mib = 4
"#;

fn guests() -> PathBuf {
    crate::root().join("guests")
}

/// BASE with line `line` (1-based) replaced by `with`.
fn edit(line: usize, with: &str) -> String {
    BASE.lines().enumerate().map(|(i, l)| if i + 1 == line { with } else { l }).collect::<Vec<_>>().join("\n") + "\n"
}

fn error(text: &str) -> String {
    match compile("bad.toml", text, &guests()) {
        Ok(c) => panic!("accepted:\n{text}\n{}", c.summary()),
        Err(e) => e,
    }
}

fn assert_names(e: &str, line: usize, field: &str, also: &str) {
    assert!(e.starts_with(&format!("bad.toml:{line}: ")), "expected line {line}: {e}");
    assert!(e.contains(field), "expected field `{field}`: {e}");
    assert!(e.contains(also), "expected `{also}`: {e}");
}

#[test]
fn the_base_and_the_repository_configs_compile() {
    let c = compile("base.toml", BASE, &guests()).unwrap();
    assert_eq!(c.manifest.tenants.len(), 2);
    assert_eq!(c.manifest.tenants[1].cpus, [2]);
    assert_eq!(hypervisor::manifest::decode_and_validate(&c.bytes).unwrap(), c.manifest);
    for file in ["tenants.toml", "attack.toml"] {
        let c = compile_file(&crate::root().join("config").join(file)).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.summary().contains("alice"));
    }
    let attack = compile_file(&crate::root().join("config/attack.toml")).unwrap();
    let names: Vec<&str> = attack.manifest.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "mallory"]);
    assert_eq!(attack.manifest.tenants[2].guest, "hostile");
}

#[test]
fn unknown_field() {
    let e = error(&edit(11, "colour = \"red\""));
    assert_names(&e, 11, "colour", "tenant #0");
    assert!(e.contains("unknown field"), "{e}");
    // In a nested table and in the machine section too.
    let e = error(&edit(28, "kv_cache_bytes = 4"));
    assert_names(&e, 28, "kv_cache_bytes", "tenant #1");
    let e = error(&edit(3, "memory_gib = 64"));
    assert_names(&e, 3, "memory_gib", "unknown field");
}

#[test]
fn too_much_memory() {
    let e = error(&edit(21, "memory_mib = 4096"));
    assert_names(&e, 21, "memory_mib", "`bob`");
    assert!(e.contains("4096 is outside 2..=64"), "{e}");
    // Each within limits, together over the pool.
    let e = error(&edit(21, "memory_mib = 60"));
    assert_names(&e, 21, "memory_mib", "the tenants together ask for 68, the machine has 64");
    // A quota above what it limits.
    let e = error(&edit(14, "registered_mib = 9"));
    assert_names(&e, 14, "quota.registered_mib", "more than the tenant's 8 MiB");
}

#[test]
fn overlapping_cpu_pinning() {
    let e = error(&edit(22, "cpus = [3, 1]"));
    assert_names(&e, 22, "cpus", "CPU 1 is already pinned by tenant #0");
    let e = error(&edit(22, "cpus = [7]"));
    assert_names(&e, 22, "cpus", "CPU 7 does not exist");
    let e = error(&edit(22, "cpus = [0]"));
    assert_names(&e, 22, "cpus", "CPU 0 is the boot CPU");
}

#[test]
fn missing_guest_file() {
    let e = error(&edit(20, "guest = \"helo\""));
    assert_names(&e, 20, "guest", "no guest `helo`");
    assert!(e.contains("hello") && e.contains("hostile"), "lists the guests: {e}");
}

#[test]
fn duplicate_name() {
    let e = error(&edit(19, "name = \"alice\""));
    assert_names(&e, 19, "name", "also used by tenant #0");
}

#[test]
fn bad_weight() {
    let e = error(&edit(23, "weight = 0"));
    assert_names(&e, 23, "weight", "0 is outside 1..=1000");
    let e = error(&edit(11, "weight = 1001"));
    assert_names(&e, 11, "weight", "1001 is outside 1..=1000");
    // Not a number the field can hold: the parser's error, still with line and tenant.
    let e = error(&edit(11, "weight = -3"));
    assert_names(&e, 11, "tenant #0", "-3");
}

#[test]
fn missing_field_and_bad_syntax() {
    let e = error(&edit(12, ""));
    assert!(e.contains("cpu_budget_ms") && e.contains("tenant #0"), "{e}");
    let e = error(&edit(7, "name = \"alice"));
    assert!(e.starts_with("bad.toml:7:"), "{e}");
    let e = error(&edit(7, "name = \"al ice\""));
    assert_names(&e, 7, "name", "character 0x20 at 2");
}

#[test]
fn passed_through_devices_are_checked_with_file_line_and_field() {
    // alice gets the e1000 by address, with the testing flag; it compiles and round-trips.
    let ok = edit(11, "weight = 100\ndevices = [\"00:03.0\"]").replacen("kv_cache_mib = 4\n", "kv_cache_mib = 4\n[tenants.policy]\npassthrough_without_iommu = true\n", 1);
    let c = compile("ok.toml", &ok, &guests()).unwrap();
    assert_eq!(c.manifest.tenants[0].devices, ["00:03.0"]);
    assert!(c.manifest.tenants[0].flags.contains(Flags::PASSTHROUGH_WITHOUT_IOMMU));
    assert!(c.summary().contains("devices 00:03.0 (allowed without an IOMMU: testing only)"), "{}", c.summary());
    // Bad address syntax: the line of the `devices` key.
    let e = error(&edit(23, "weight = 100\ndevices = [\"0:3.0\"]"));
    assert_names(&e, 24, "tenant #1 `bob`: devices:", "expected a PCI address `bb:dd.f`");
    // Two tenants claiming one device: the later one, on its `devices` line.
    let both = edit(11, "weight = 100\ndevices = [\"00:03.0\"]");
    let both = both.replace("cpus = [2]\nweight = 100", "cpus = [2]\nweight = 100\ndevices = [\"00:03.0\"]");
    let e = error(&both);
    assert_names(&e, 25, "tenant #1 `bob`: devices:", "device 00:03.0 is already passed through to tenant #0");
    // An unknown policy key is still refused (the flag's name is exact).
    let e = error(&edit(28, "kv_cache_mib = 4\n[tenants.policy]\npassthrough = true"));
    assert!(e.starts_with("bad.toml:30: ") && e.contains("passthrough"), "{e}");
}

/// BASE with a third tenant, `tux`, booting Linux from files in a scratch directory: its line
/// 30 is `[[tenants]]`, 32 `kind`, 33 `kernel`, 34 `initrd`, 35 `cmdline`, 36 `memory_mib`.
const LINUX: &str = r#"
[[tenants]]
name = "tux"
kind = "linux"
kernel = "vmlinux"
initrd = "initramfs.cpio"
cmdline = "console=ttyS0 tv.max_tokens=4"
memory_mib = 40
weight = 7
cpu_budget_ms = 60000
[tenants.quota]
registered_mib = 4
inflight_ops = 16
kv_cache_mib = 4
"#;

/// A scratch directory with a fake vmlinux (an x86-64 ELF header), a fake bzImage (`HdrS` at
/// 0x202), an initramfs and a file that is no kernel.
fn linux_files(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tv-manifest-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("other")).unwrap();
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[18] = 62;
    std::fs::write(dir.join("vmlinux"), &elf).unwrap();
    std::fs::write(dir.join("other").join("vmlinux"), &elf).unwrap();
    let mut bz = vec![0u8; 0x400];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(dir.join("bzImage"), &bz).unwrap();
    std::fs::write(dir.join("initramfs.cpio"), b"070701").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not a kernel").unwrap();
    dir
}

fn linux_config(with: &[(usize, &str)]) -> String {
    let text = format!("{}{}", BASE.replace("memory_mib = 64", "memory_mib = 256"), LINUX);
    text.lines().enumerate().map(|(i, l)| with.iter().find(|(n, _)| *n == i + 1).map_or(l, |(_, w)| *w)).collect::<Vec<_>>().join("\n") + "\n"
}

fn linux_error(dir: &Path, text: &str) -> String {
    match compile_in("bad.toml", text, &guests(), dir) {
        Ok(c) => panic!("accepted:\n{text}\n{}", c.summary()),
        Err(e) => e,
    }
}

#[test]
fn a_linux_tenant_compiles_with_its_weight_quotas_and_modules() {
    let dir = linux_files("ok");
    let text = linux_config(&[]);
    assert_eq!(text.lines().nth(31), Some("kind = \"linux\""), "the line numbers the tests use");
    assert_eq!(text.lines().nth(35), Some("memory_mib = 40"));
    let c = compile_in("linux.toml", &text, &guests(), &dir).unwrap_or_else(|e| panic!("{e}"));
    let tux = &c.manifest.tenants[2];
    let boot = tux.linux.as_ref().expect("a Linux tenant");
    assert_eq!((boot.kernel.as_str(), boot.initrd.as_str(), boot.cmdline.as_str()), ("vmlinux", "initramfs.cpio", "console=ttyS0 tv.max_tokens=4"));
    assert_eq!((tux.weight, tux.memory_mib, tux.quota.inflight_ops, tux.guest.as_str()), (7, 40, 16, ""));
    assert_eq!(c.modules, [("kernel:vmlinux".to_string(), dir.join("vmlinux")), ("initrd:initramfs.cpio".to_string(), dir.join("initramfs.cpio"))]);
    assert_eq!(c.guests(), ["hello"], "no guest ELF for the Linux tenant");
    assert!(c.summary().contains("tux          linux vmlinux"), "{}", c.summary());
    assert_eq!(hypervisor::manifest::decode_and_validate(&c.bytes).unwrap(), c.manifest);
    // A bzImage, no initramfs, the default command line.
    let c = compile_in("linux.toml", &linux_config(&[(33, "kernel = \"bzImage\""), (34, ""), (35, "")]), &guests(), &dir).unwrap();
    let boot = c.manifest.tenants[2].linux.as_ref().unwrap();
    assert_eq!((boot.kernel.as_str(), boot.initrd.as_str(), boot.cmdline.as_str()), ("bzImage", "", crate::image::LINUX_CMDLINE));
    assert_eq!(c.modules.len(), 1);
}

#[test]
fn linux_tenant_errors_name_file_line_and_field() {
    let dir = linux_files("bad");
    let e = |with: &[(usize, &str)]| linux_error(&dir, &linux_config(with));
    assert_names(&e(&[(32, "kind = \"windows\"")]), 32, "tenant #2 `tux`: kind:", "unknown kind `windows`");
    // A missing field is reported at its tenant's `[[tenants]]` line.
    assert_names(&e(&[(33, "")]), 30, "tenant #2 `tux`: kernel:", "missing");
    assert_names(&e(&[(33, "kernel = \"nope\"")]), 33, "tenant #2 `tux`: kernel:", "cannot read");
    assert_names(&e(&[(33, "kernel = \"notes.txt\"")]), 33, "tenant #2 `tux`: kernel:", "neither an x86-64 ELF vmlinux nor a bzImage");
    assert_names(&e(&[(34, "initrd = \"nope.cpio\"")]), 34, "tenant #2 `tux`: initrd:", "cannot read");
    assert_names(&e(&[(35, "cmdline = \"console=ttyS0\\u0001\"")]), 35, "tenant #2 `tux`: cmdline:", "character 0x01 at 13");
    assert_names(&e(&[(36, "memory_mib = 16")]), 36, "tenant #2 `tux`: memory_mib:", "16 is outside 32..=256");
    assert_names(&e(&[(36, "memory_mib = 40\nvcpus = 2")]), 37, "tenant #2 `tux`: vcpus:", "2 is outside 1..=1");
    assert_names(&e(&[(35, "args = \"prompt=1\"")]), 35, "tenant #2 `tux`: args:", "not for a Linux tenant");
    assert_names(&e(&[(35, "guest = \"hello\"")]), 35, "tenant #2 `tux`: guest:", "not for a Linux tenant");
    assert_names(&e(&[(35, "devices = [\"00:03.0\"]")]), 35, "tenant #2 `tux`: devices:", "not for a Linux tenant");
    // A Rust tenant with a kernel, or without a guest.
    assert_names(&e(&[(10, "kernel = \"vmlinux\"")]), 10, "tenant #0 `alice`: kernel:", "not for a Rust guest tenant");
    assert_names(&e(&[(8, "")]), 6, "tenant #0 `alice`: guest:", "missing");
    // Two tenants' kernels with one file name from different directories: one module name.
    let two = linux_config(&[]) + &LINUX.replace("\"tux\"", "\"tux2\"").replace("\"vmlinux\"", "\"other/vmlinux\"");
    let err = linux_error(&dir, &two);
    assert!(err.starts_with("bad.toml:47: tenant #3 `tux2`: kernel:") && err.contains("has the file name of another tenant's kernel"), "{err}");
    // The same file for both is one module.
    let same = linux_config(&[]).replace("memory_mib = 256", "memory_mib = 512") + &LINUX.replace("\"tux\"", "\"tux2\"");
    let c = compile_in("ok.toml", &same, &guests(), &dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.modules.len(), 2);
}

#[test]
fn a_listed_model_the_image_lacks_fails_at_image_time_with_file_line_and_field() {
    // Line 11 of BASE is alice's `weight`; give alice two models on that line, before it.
    let text = edit(11, "models = [\"tiny.gguf\", \"other.gguf\"]\nweight = 100");
    let c = compile("bad.toml", &text, &guests()).unwrap();
    assert_eq!(c.manifest.tenants[0].models, ["tiny.gguf", "other.gguf"]);
    let e = c.check_models(&["tiny.gguf"]).unwrap_err();
    assert_names(&e, 11, "tenant #0 `alice`: models", "`other.gguf` is not among the image's models (tiny.gguf)");
    let e = c.check_models(&[]).unwrap_err();
    assert_names(&e, 11, "models", "`tiny.gguf` is not among the image's models (none)");
    // Carrying both (and more) is fine; bob lists none, so he needs none.
    c.check_models(&["other.gguf", "tiny.gguf", "gemma.gguf"]).unwrap();
    assert!(c.manifest.tenants[1].models.is_empty());
    compile("base.toml", BASE, &guests()).unwrap().check_models(&[]).unwrap();
    // The repository's configurations list the model `cargo xtask run` and the tests carry.
    for file in ["tenants.toml", "attack.toml"] {
        let c = compile_file(&crate::root().join("config").join(file)).unwrap();
        c.check_models(&["tiny.gguf"]).unwrap_or_else(|e| panic!("{e}"));
        let e = c.check_models(&["gemma-3-270m-q4_k_m.gguf"]).unwrap_err();
        assert!(e.starts_with(&format!("config/{file}:")) && e.contains("tenant #0 `alice`: models: `tiny.gguf`"), "{e}");
    }
    // config/gemma.toml (what `cargo xtask run --model gemma` boots) is the other way round.
    let c = compile_file(&crate::root().join("config/gemma.toml")).unwrap();
    c.check_models(&["gemma-3-270m-q4_k_m.gguf"]).unwrap_or_else(|e| panic!("{e}"));
    let e = c.check_models(&["tiny.gguf"]).unwrap_err();
    assert!(e.starts_with("config/gemma.toml:") && e.contains("`gemma-3-270m-q4_k_m.gguf` is not among the image's models (tiny.gguf)"), "{e}");
}
