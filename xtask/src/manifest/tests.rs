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
