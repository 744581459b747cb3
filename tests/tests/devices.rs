//! Devices owned by the hypervisor, in QEMU TCG (q35, intel-iommu, nvme): PCI enumeration, the
//! VT-d IOMMU confining the NVMe controller to its own domain, and models read from the NVMe
//! model store checked against the file's SHA-256, and the IOMMU side of PCI passthrough (a
//! tenant's domain maps its guest-physical RAM and nothing else). TCG has no VMX: none of this
//! needs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use tests::{Boot, Run};
use xtask::emulator::Verdict;
use xtask::image::Firmware;

fn work() -> PathBuf {
    let d = xtask::image::build_dir().join("tests").join("devices");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The engine's tiny GGUF model, written under a per-test name (tests run in parallel).
fn tiny_model(name: &str, seed: u64) -> PathBuf {
    let p = work().join(name);
    std::fs::write(&p, xtask::disk::tiny_model(seed)).unwrap();
    p
}

/// The file's SHA-256 as `sha256sum` computes it (independent of the hypervisor's code).
fn sha256sum(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Boots with an IOMMU and an NVMe controller backed by `disk`.
fn boot_with_disk(name: &str, disk: &Path, cmdline: &str) -> Run {
    let drive = format!("file={},if=none,id=nvm,format=raw", disk.display());
    Boot::qemu(name, Firmware::Bios)
        .cmdline(cmdline)
        .qemu_args(&["-device", "intel-iommu,intremap=off", "-drive", &drive, "-device", "nvme,serial=tvstore,drive=nvm"])
        .run()
}

/// The `bb:dd.f` of the NVMe controller as the enumeration log names it.
fn nvme_bdf(run: &Run) -> String {
    let line = run.serial().lines().find(|l| l.contains("NVMe controller") && l.contains("pci: ")).expect("NVMe in the PCI log");
    let at = line.find("pci: ").unwrap() + 5;
    line[at..at + 7].to_string()
}

#[test]
fn qemu_nvme_model_store_is_read_through_the_iommu_and_matches_sha256() {
    let model = tiny_model("tiny-ok.gguf", 1);
    let sha = sha256sum(&model);
    let disk = work().join("store-ok.img");
    xtask::disk::write_store(&disk, &[("tiny", &std::fs::read(&model).unwrap())]).unwrap();
    let run = boot_with_disk("devices-store", &disk, "tv.dump-dmar=1");
    let bdf = nvme_bdf(&run);
    // The DMAR the iommu crate's host tests parse is the one this QEMU gives.
    let captured: String = std::fs::read(xtask::root().join("iommu/testdata/qemu-7.2-q35-dmar.bin"))
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    run.assert_line(&[&format!("acpi: DMAR bytes {captured}")]);
    run.assert_verdict(Verdict::Success)
        .assert_line(&["pci: configuration space through ECAM at 0xb0000000"])
        .assert_line(&["pci: ", "[1b36:0010] NVMe controller", "BAR0 mem64", "MSI-X"])
        .assert_line(&["iommu: DMAR: host address width 39, 1 remapping unit(s), 0 RMRR(s)"])
        .assert_line(&["iommu: VT-d", "unit at 0xfed90000", "39-bit domains (3-level)"])
        .assert_line(&["iommu: translation enabled (TE true)", &format!("{bdf} in domain 1"), "their DMA is blocked"])
        .assert_line(&["nvme: ", "serial \"tvstore\"", "namespace 1:", "I/O queue pair ready"])
        .assert_line(&["model store: 1 model(s) on nvme"])
        .assert_line(&["model store: tiny: read 100%"])
        .assert_line(&["model store: tiny: 3084448 bytes read", "large-page memory", &format!("sha256 {sha} matches")])
        .assert_line(&["model store: tiny: GGUF with", "tensors, ready for the engine"])
        .assert_line(&["loading model tiny (3084448 bytes) from the NVMe model store"])
        .assert_line(&["model tiny: 6 layers", "vocab 416"])
        .assert_line(&["model store: 1 model(s) loaded"])
        .assert_line(&["iommu: no DMA faults so far"])
        .assert_order("iommu: translation enabled", "model store: tiny: read 100%")
        .assert_order("model store: 1 model(s) loaded", "boot complete")
        .assert_no_line("ERROR");
}

#[test]
fn qemu_dma_outside_the_domain_faults_and_the_hypervisor_carries_on() {
    let disk = work().join("store-fault.img");
    xtask::disk::write_store(&disk, &[("small", &[0x42u8; 8192])]).unwrap();
    let run = boot_with_disk("devices-dma-fault", &disk, "tv.iommu-test=stray-dma");
    let bdf = nvme_bdf(&run);
    let line = run.serial().lines().find(|l| l.contains("reads LBA 0 into")).unwrap_or_else(|| panic!("{}", run.outcome.describe()));
    let target = line.split("into ").nth(1).unwrap().split(',').next().unwrap().to_string();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["model store: small:", "matches"])
        .assert_line(&["iommu: DMA fault: source", &bdf, &format!("write at {target}"), "reason 5"])
        .assert_line(&["iommu test: stray DMA blocked", &bdf, &target, "target page untouched"])
        .assert_line(&["iommu test: nvme", "still serves reads after the fault"])
        .assert_order("iommu: DMA fault", "boot complete")
        .assert_no_line("not caught");
}

#[test]
fn qemu_corrupt_model_is_left_out_and_the_others_load() {
    let good = tiny_model("tiny-good.gguf", 2);
    let bad = vec![0x11u8; 64 * 1024];
    let disk = work().join("store-corrupt.img");
    let entries = xtask::disk::write_store(&disk, &[("broken", &bad), ("tiny", &std::fs::read(&good).unwrap())]).unwrap();
    // Flip one byte inside the first model's extent: its SHA-256 no longer matches the header.
    let mut img = std::fs::read(&disk).unwrap();
    img[entries[0].offset as usize + 1000] ^= 0xff;
    std::fs::write(&disk, img).unwrap();
    let run = boot_with_disk("devices-corrupt", &disk, "");
    run.assert_verdict(Verdict::Success)
        .assert_line(&["model store: broken: sha256 mismatch", "left out"])
        .assert_line(&["model store: tiny:", &format!("sha256 {} matches", sha256sum(&good))])
        .assert_line(&["model store: 1 model(s) loaded"])
        .assert_order("model store: 1 model(s) loaded", "boot complete");
}

#[test]
fn qemu_disk_without_a_store_is_reported_and_boot_continues() {
    let disk = work().join("blank.img");
    xtask::disk::write_blank(&disk, 1 << 20).unwrap();
    let run = boot_with_disk("devices-blank", &disk, "");
    run.assert_verdict(Verdict::Success)
        .assert_line(&["model store: no model store on this disk", "no models loaded from nvme", "carrying on without them"])
        .assert_line(&["model store: 0 model(s) loaded"])
        .assert_order("model store: 0 model(s) loaded", "boot complete");
}

#[test]
fn qemu_tenant_domain_maps_guest_physical_to_the_tenants_frames_and_nothing_else() {
    // The first controller is the hypervisor's model store; the second is passed through to a
    // tenant whose memory is built as for a real one (no guest runs: TCG has no VMX).
    let store = work().join("store-tenant.img");
    xtask::disk::write_store(&store, &[("small", &[0x42u8; 8192])]).unwrap();
    let tenant_disk = work().join("tenant-disk.img");
    let mut data = b"tenant-dma-proof".repeat(64);
    data.resize(1 << 20, 0);
    std::fs::write(&tenant_disk, &data).unwrap();
    let run = Boot::qemu("devices-tenant-dma", Firmware::Bios)
        .cmdline("tv.iommu-test=tenant-dma")
        .qemu_args(&[
            "-device", "intel-iommu,intremap=off",
            "-drive", &format!("file={},if=none,id=store,format=raw", store.display()),
            "-device", "nvme,serial=tvstore,drive=store",
            "-drive", &format!("file={},if=none,id=tenant,format=raw", tenant_disk.display()),
            "-device", "nvme,serial=tvtenant,drive=tenant",
        ])
        .run();
    let nvmes: Vec<String> = run
        .serial()
        .lines()
        .filter(|l| l.contains("NVMe controller") && l.contains("pci: "))
        .map(|l| {
            let at = l.find("pci: ").unwrap() + 5;
            l[at..at + 7].to_string()
        })
        .collect();
    assert_eq!(nvmes.len(), 2, "{}", run.outcome.describe());
    let (store_bdf, tenant_bdf) = (&nvmes[0], &nvmes[1]);
    run.assert_verdict(Verdict::Success)
        .assert_line(&["iommu: translation enabled (TE true)", &format!("{store_bdf} in domain 1")])
        .assert_line(&[&format!("tenant DMA test: refused as expected: device {store_bdf} ({store_bdf}) is the hypervisor's own")])
        .assert_line(&["tenant DMA test: tenant memory 4 MiB at host", &format!("passing NVMe {tenant_bdf} through")])
        .assert_line(&[&format!("{tenant_bdf} in IOMMU domain 2: guest-physical 0..0x400000 -> host"), "nothing else"])
        .assert_line(&[&format!("tenant {}: {tenant_bdf} assigned", "dma-test"), "DMA confined to the tenant's guest-physical RAM"])
        // Guest-physical 0x200000 is the tenant's frame, read back through the hypervisor's view.
        .assert_line(&[&format!("tenant DMA test: NVMe {tenant_bdf} read LBA 0 to guest-physical 0x200000"), "holds \"tenant-dma-proof\""])
        // Outside the tenant's 4 MiB: a fault with the source id and address, and it carries on.
        .assert_line(&["iommu: DMA fault: source", tenant_bdf, "write at 0x500000"])
        .assert_line(&["tenant DMA test: DMA outside the tenant's guest-physical space blocked", &format!("fault for {tenant_bdf} at 0x500000")])
        .assert_line(&[&format!("tenant DMA test: NVMe {tenant_bdf} still serves reads into the tenant after the fault")])
        .assert_line(&[&format!("{tenant_bdf} released")])
        .assert_order("tenant DMA test: DMA outside", "boot complete");
    // The only error is the fault itself: one line, for the tenant's device.
    let errors: Vec<&str> = run.serial().lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.iter().all(|l| l.contains("iommu: DMA fault: source") && l.contains(tenant_bdf.as_str())), "{errors:#?}");
    assert_eq!(errors.len(), 1, "{errors:#?}");
}
