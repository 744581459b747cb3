use super::*;
use alloc::string::ToString;
use alloc::vec;

fn tenant(name: &str, cpus: &[u8]) -> Tenant {
    Tenant {
        name: name.to_string(),
        guest: "hello".to_string(),
        args: "prompt=1,2 max_tokens=3".to_string(),
        memory_mib: 8,
        vcpus: if cpus.is_empty() { 1 } else { cpus.len() as u8 },
        cpus: cpus.to_vec(),
        models: vec!["tiny.gguf".to_string()],
        quota: Quota { registered_mib: 4, inflight_ops: 64, kv_cache_mib: 4 },
        weight: 100,
        flags: Flags::COMPLETION_INTERRUPTS,
        cpu_budget_ms: 2000,
        devices: vec![],
        linux: None,
    }
}

fn linux_tenant(name: &str) -> Tenant {
    Tenant {
        guest: String::new(),
        args: String::new(),
        memory_mib: 96,
        linux: Some(LinuxBoot { kernel: "vmlinux".to_string(), initrd: "initramfs.cpio".to_string(), cmdline: "console=ttyS0 tv.max_tokens=4".to_string() }),
        ..tenant(name, &[])
    }
}

fn manifest() -> Manifest {
    Manifest {
        machine: Machine { cpus: 4, memory_mib: 64, kv_cache_mib: 16 },
        tenants: vec![tenant("alice", &[1]), tenant("bob", &[2]), tenant("mallory", &[])],
    }
}

fn field_of(r: Result<impl core::fmt::Debug, ManifestError>) -> (Option<usize>, &'static str, Problem) {
    let e = r.expect_err("should be refused");
    (e.tenant.map(|t| t.0), e.field, e.problem)
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn round_trip_is_exact_and_the_layout_is_as_documented() {
    let m = manifest();
    let bytes = encode(&m).unwrap();
    assert_eq!(&bytes[..8], b"TVMANIF\0");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 2);
    assert_eq!(u16::from_le_bytes([bytes[14], bytes[15]]), 3);
    assert_eq!(u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize, bytes.len());
    // alice's entry: weight at +44, vcpus at +46, pinning at +48.
    let e = HEADER_LEN;
    assert_eq!(u16::from_le_bytes([bytes[e + 44], bytes[e + 45]]), 100);
    assert_eq!(bytes[e + 46], 1);
    assert_eq!(&bytes[e + 48..e + 56], &[1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    // mallory floats: all 0xFF.
    let e = HEADER_LEN + 2 * ENTRY_LEN;
    assert_eq!(&bytes[e + 48..e + 56], &[0xFF; 8]);
    // Identical strings are stored once ("hello", the args and the model name).
    let strings = &bytes[HEADER_LEN + 3 * ENTRY_LEN..];
    assert_eq!(strings.len(), "alice".len() + "hello".len() + "prompt=1,2 max_tokens=3".len() + "tiny.gguf".len() + "bob".len() + "mallory".len());
    assert_eq!(decode_and_validate(&bytes).unwrap(), m);
}

#[test]
fn every_single_bit_flip_is_refused() {
    let bytes = encode(&manifest()).unwrap();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            assert!(decode_and_validate(&b).is_err(), "flip of bit {bit} of byte {i} accepted");
        }
    }
}

#[test]
fn every_truncation_is_refused_without_panicking() {
    let bytes = encode(&manifest()).unwrap();
    for len in 0..bytes.len() {
        assert!(decode_and_validate(&bytes[..len]).is_err(), "truncated to {len} accepted");
    }
}

/// Re-seals a manifest after an edit, as a forger with the algorithm would.
fn reseal(b: &mut [u8]) {
    let crc = manifest_crc(b);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn resealed_forgeries_are_refused_by_the_field_checks() {
    let good = encode(&manifest()).unwrap();
    let e1 = HEADER_LEN + ENTRY_LEN; // bob
    let cases: &[(usize, &[u8], &str)] = &[
        (8, &[1, 0], "header.version"),              // version 1 (72-byte entries, no kind)
        (8, &[3, 0], "header.version"),
        (12, &[72, 0], "header.entry_len"),
        (26, &[1, 0], "header.reserved"),
        (14, &[0, 0], "tenants"),
        (24, &[0, 0], "machine.cpus"),
        (e1, &[0xFF, 0xFF], "name"),                 // string offset outside the area
        (e1 + 28, &[0, 0x10, 0, 0], "memory_mib"),   // 4096 MiB
        (e1 + 44, &[0xE9, 0x03], "weight"),          // 1001
        (e1 + 44, &[0, 0], "weight"),
        (e1 + 46, &[9], "vcpus"),
        (e1 + 47, &[5], "models"),
        (e1 + 48, &[1], "cpus"),                     // alice's CPU
        (e1 + 48, &[9], "cpus"),                     // no such CPU
        (e1 + 49, &[3], "cpus"),                     // 2 CPUs for 1 vCPU
        (e1 + 40, &[8, 0, 0, 0], "flags"),
        (e1 + 36, &[0, 0, 0, 0], "quota.inflight_ops"),
        (e1 + 56, &[9, 0, 0, 0], "quota.registered_mib"), // above the tenant's 8 MiB
        (e1 + 60, &[0, 0, 0, 0], "quota.kv_cache_mib"),
        (e1 + 32, &[0, 0, 0, 0], "cpu_budget_ms"),
        (e1 + 68, &[2], "kind"),
        (e1 + 69, &[1], "reserved"),
        (e1 + 70, &[0, 1], "reserved"),
        (e1 + 72, &[0, 0, 1, 0], "kernel"),          // an initrd on a Rust guest
        (e1 + 76, &[0, 0, 1, 0], "kernel"),          // a command line on a Rust guest
        (e1 + 68, &[1], "args"),                     // bob made Linux: his args are not for it
        (e1 + 64, &[0xF0, 0xFF, 1, 0], "devices"), // string offset outside the area
    ];
    for &(at, patch, field) in cases {
        let mut b = good.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        reseal(&mut b);
        let e = decode_and_validate(&b).expect_err(field);
        assert_eq!(e.field, field, "patch at {at}: {e}");
    }
}

#[test]
fn a_bad_name_character_is_reported_at_its_position() {
    let mut m = manifest();
    m.tenants[1].name = "b b".to_string();
    assert_eq!(field_of(validate(&m)), (Some(1), "name", Problem::BadCharacter { byte: b' ', at: 1 }));
    m.tenants[1].name = "x".repeat(33);
    assert_eq!(field_of(validate(&m)), (Some(1), "name", Problem::NameTooLong { len: 33, max: 32 }));
    m.tenants[1].name = String::new();
    assert_eq!(field_of(validate(&m)), (Some(1), "name", Problem::Empty));
}

#[test]
fn duplicate_names_overlapping_pins_and_pools_name_the_later_tenant() {
    let mut m = manifest();
    m.tenants[2].name = "alice".to_string();
    assert_eq!(field_of(validate(&m)), (Some(2), "name", Problem::Duplicate { other: 0 }));

    let mut m = manifest();
    m.tenants[1].cpus = vec![1];
    assert_eq!(field_of(validate(&m)), (Some(1), "cpus", Problem::CpuOverlap { cpu: 1, other: Some(0) }));

    let mut m = manifest();
    m.tenants[1].cpus = vec![2, 2];
    m.tenants[1].vcpus = 2;
    assert_eq!(field_of(validate(&m)), (Some(1), "cpus", Problem::CpuOverlap { cpu: 2, other: None }));

    let mut m = manifest();
    m.tenants[2].memory_mib = 60;
    m.tenants[2].quota.registered_mib = 1;
    assert_eq!(field_of(validate(&m)), (Some(2), "memory_mib", Problem::PoolExceeded { total: 76, pool: 64 }));

    let mut m = manifest();
    m.tenants[2].quota.kv_cache_mib = 9;
    assert_eq!(field_of(validate(&m)), (Some(2), "quota.kv_cache_mib", Problem::PoolExceeded { total: 17, pool: 16 }));

    let mut m = manifest();
    m.tenants[2].memory_mib = 2000;
    assert_eq!(field_of(validate(&m)), (Some(2), "memory_mib", Problem::OutOfRange { value: 2000, min: 2, max: 64 }));
}

#[test]
fn the_boot_cpu_cannot_be_pinned_so_unpinned_tenants_always_have_it() {
    let mut m = manifest();
    m.tenants[0].cpus = vec![0, 1];
    m.tenants[0].vcpus = 2;
    assert_eq!(field_of(validate(&m)), (Some(0), "cpus", Problem::BootCpuPinned));
    // Every CPU but the boot CPU pinned, with an unpinned tenant: it runs on CPU 0.
    m.tenants[0].cpus = vec![1];
    m.tenants[0].vcpus = 1;
    m.tenants[1].cpus = vec![2, 3];
    m.tenants[1].vcpus = 2;
    assert!(m.tenants[2].cpus.is_empty());
    validate(&m).unwrap();
}

#[test]
fn weights_are_one_to_a_thousand() {
    let mut m = manifest();
    for (w, ok) in [(0, false), (1, true), (1000, true), (1001, false)] {
        m.tenants[0].weight = w;
        assert_eq!(validate(&m).is_ok(), ok, "weight {w}");
    }
}

#[test]
fn admission_refuses_only_the_bad_tenant() {
    let good = encode(&manifest()).unwrap();
    let mut b = good.clone();
    let e1 = HEADER_LEN + ENTRY_LEN;
    b[e1 + 48] = 1; // bob pinned on alice's CPU
    reseal(&mut b);
    let a = decode_and_admit(&b).unwrap();
    let names: Vec<&str> = a.tenants.iter().map(|(_, t)| t.name.as_str()).collect();
    assert_eq!(names, ["alice", "mallory"]);
    assert_eq!(a.refused.len(), 1);
    assert_eq!(a.refused[0].to_string(), "tenant #1 `bob`: cpus: CPU 1 is already pinned by tenant #0");
    // A broken checksum refuses everything.
    b[20] ^= 1;
    assert_eq!(decode_and_admit(&b).unwrap_err().field, "header.checksum");
}

#[test]
fn random_bytes_never_panic() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let good = encode(&manifest()).unwrap();
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
        }
        reseal(&mut b);
        let _ = decode_and_validate(&b);
        let _ = decode_and_admit(&b);
    }
}

#[test]
fn passed_through_devices_round_trip_and_bad_ones_name_the_field() {
    let mut m = manifest();
    m.tenants[0].devices = vec!["00:03.0".to_string(), "8086:100e".to_string()];
    m.tenants[1].flags = Flags::PASSTHROUGH_WITHOUT_IOMMU;
    let bytes = encode(&m).unwrap();
    let back = decode_and_validate(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.tenants[0].devices, ["00:03.0", "8086:100e"]);
    assert!(back.tenants[1].devices.is_empty() && back.tenants[1].flags.contains(Flags::PASSTHROUGH_WITHOUT_IOMMU));
    // The device list lives in the string area behind the entry's StrRef at 64.
    let e0 = HEADER_LEN;
    let (off, len) = (u16::from_le_bytes([bytes[e0 + 64], bytes[e0 + 65]]), u16::from_le_bytes([bytes[e0 + 66], bytes[e0 + 67]]));
    let strings = &bytes[HEADER_LEN + 3 * ENTRY_LEN..];
    assert_eq!(&strings[usize::from(off)..usize::from(off + len)], b"00:03.0,8086:100e");

    let mut bad = manifest();
    bad.tenants[1].devices = vec!["0:3.0".to_string()];
    assert_eq!(field_of(validate(&bad)), (Some(1), "devices", Problem::BadDevice(crate::pci::SelectorError::Syntax)));
    bad.tenants[1].devices = vec!["00:03.9".to_string()];
    assert_eq!(field_of(validate(&bad)), (Some(1), "devices", Problem::BadDevice(crate::pci::SelectorError::OutOfRange)));
    bad.tenants[1].devices = vec!["00:03.0".to_string(), "00:03.0".to_string()];
    assert_eq!(field_of(validate(&bad)), (Some(1), "devices", Problem::DeviceTaken { device: "00:03.0".to_string(), other: None }));
    bad.tenants[1].devices = vec!["00:0a.0".to_string(); 5];
    assert_eq!(field_of(validate(&bad)), (Some(1), "devices", Problem::TooMany { count: 5, max: MAX_DEVICES }));
    // Two tenants claiming one device: the later one is refused, naming the earlier.
    bad.tenants[0].devices = vec!["00:03.0".to_string()];
    bad.tenants[2].devices = vec!["00:03.0".to_string()];
    bad.tenants[1].devices = vec![];
    assert_eq!(
        field_of(validate(&bad)),
        (Some(2), "devices", Problem::DeviceTaken { device: "00:03.0".to_string(), other: Some(0) })
    );
    let msg = validate(&bad).unwrap_err().to_string();
    assert_eq!(msg, "tenant #2 `mallory`: devices: device 00:03.0 is already passed through to tenant #0");
    // The hypervisor admits the first claimant and refuses only the second.
    let mut ok_first = manifest();
    ok_first.tenants[0].devices = vec!["00:03.0".to_string()];
    let mut bytes = encode(&ok_first).unwrap();
    // Forge tenant 2's device list to point at tenant 0's string.
    let e2 = HEADER_LEN + 2 * ENTRY_LEN;
    let r0 = bytes[e0 + 64..e0 + 68].to_vec();
    bytes[e2 + 64..e2 + 68].copy_from_slice(&r0);
    reseal(&mut bytes);
    let a = decode_and_admit(&bytes).unwrap();
    assert_eq!(a.tenants.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(a.refused.len(), 1);
    assert_eq!(a.refused[0].field, "devices");
}

#[test]
fn rust_guests_without_devices_have_zeros_after_the_quotas() {
    // No devices, kind 0 (Rust guest), no initrd or command line: entry bytes 64..80 are zero.
    let bytes = encode(&manifest()).unwrap();
    for i in 0..3 {
        let e = HEADER_LEN + i * ENTRY_LEN;
        assert_eq!(&bytes[e + 64..e + 80], &[0u8; 16]);
    }
    assert!(decode_and_validate(&bytes).unwrap().tenants.iter().all(|t| t.devices.is_empty() && t.linux.is_none()));
}

#[test]
fn linux_tenants_round_trip_and_their_fields_are_checked() {
    let mut m = manifest();
    m.machine.memory_mib = 256;
    m.tenants.push(linux_tenant("tux"));
    let bytes = encode(&m).unwrap();
    let e3 = HEADER_LEN + 3 * ENTRY_LEN;
    assert_eq!(bytes[e3 + 68], 1, "kind 1: Linux");
    let strings = &bytes[HEADER_LEN + 4 * ENTRY_LEN..];
    let string = |at: usize| {
        let (off, len) = (usize::from(u16::from_le_bytes([bytes[e3 + at], bytes[e3 + at + 1]])), usize::from(u16::from_le_bytes([bytes[e3 + at + 2], bytes[e3 + at + 3]])));
        core::str::from_utf8(&strings[off..off + len]).unwrap().to_string()
    };
    assert_eq!((string(4), string(72), string(76)), ("vmlinux".to_string(), "initramfs.cpio".to_string(), "console=ttyS0 tv.max_tokens=4".to_string()));
    let back = decode_and_validate(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.tenants[3].weight, 100, "a Linux tenant has its weight and quotas like any other");
    assert_eq!(back.tenants[3].quota, Quota { registered_mib: 4, inflight_ops: 64, kv_cache_mib: 4 });
    // No initrd: an empty reference.
    m.tenants[3].linux.as_mut().unwrap().initrd.clear();
    assert_eq!(decode_and_validate(&encode(&m).unwrap()).unwrap(), m);

    let check = |edit: &dyn Fn(&mut Tenant)| {
        let mut bad = m.clone();
        edit(&mut bad.tenants[3]);
        field_of(validate(&bad))
    };
    let linux = Problem::NotForKind { kind: "Linux" };
    assert_eq!(check(&|t| t.memory_mib = 16), (Some(3), "memory_mib", Problem::OutOfRange { value: 16, min: 32, max: 256 }));
    assert_eq!(check(&|t| t.vcpus = 2), (Some(3), "vcpus", Problem::OutOfRange { value: 2, min: 1, max: 1 }));
    assert_eq!(check(&|t| t.args = "prompt=1".to_string()), (Some(3), "args", linux.clone()));
    assert_eq!(check(&|t| t.guest = "hello".to_string()), (Some(3), "guest", linux.clone()));
    assert_eq!(check(&|t| t.devices = vec!["00:03.0".to_string()]), (Some(3), "devices", linux.clone()));
    assert_eq!(check(&|t| t.linux.as_mut().unwrap().kernel.clear()), (Some(3), "kernel", Problem::Empty));
    assert_eq!(check(&|t| t.linux.as_mut().unwrap().initrd = "a/b".to_string()), (Some(3), "initrd", Problem::BadCharacter { byte: b'/', at: 1 }));
    assert_eq!(check(&|t| t.linux.as_mut().unwrap().cmdline = "a\nb".to_string()), (Some(3), "cmdline", Problem::BadCharacter { byte: b'\n', at: 1 }));
    assert_eq!(check(&|t| t.linux.as_mut().unwrap().cmdline = "x".repeat(1025)), (Some(3), "cmdline", Problem::NameTooLong { len: 1025, max: MAX_CMDLINE_LEN }));
    let msg = validate(&{
        let mut bad = m.clone();
        bad.tenants[3].vcpus = 2;
        bad
    })
    .unwrap_err()
    .to_string();
    assert_eq!(msg, "tenant #3 `tux`: vcpus: 2 is outside 1..=1");
}
