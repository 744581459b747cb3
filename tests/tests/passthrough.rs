//! PCI passthrough in Bochs (VT-x + EPT, PCI, no IOMMU), one boot: Bochs' emulated Intel
//! 82540EM (e1000) is given by the manifest to tenant `nic`, whose guest drives it through its
//! BAR: reads STATUS and the MAC address the bochsrc configures from the EEPROM through EERD,
//! programs receive address 0 with it and reads it back, then takes the NIC's interrupt (INTx
//! through the I/O APIC, forwarded by the hypervisor): raised five times through ICS, received
//! in its IDT handler, cleared through ICR and acknowledged with DONE; raised with interrupts off
//! (held until STI); raised by the device itself (transmit queue empty); left unserviced (one interrupt only: the line stays masked); acknowledged
//! without clearing (delivered again); tenant `nodev`, without the device, is
//! refused the interrupt, reads the same guest-physical address and is stopped by an EPT
//! violation. Since Bochs has no IOMMU the passthrough is allowed only by
//! the manifest's testing flag, with a warning; a tenant asking for the same NIC without the
//! flag, and one asking for the host bridge, are refused and the rest carries on.

use std::time::Duration;
use tests::Boot;
use xtask::emulator::Verdict;
use xtask::image::guest_elf;

const MAC: &str = "52:54:00:12:34:56";

/// Tenant ids follow manifest order: `strict` 1, `bridge` 2, `nic` 3, `nodev` 4. Each has 8 MiB,
/// so the hypervisor places BAR0 (128 KiB) at guest-physical 8 MiB, the first 128 KiB-aligned
/// address above its RAM.
const CONFIG: &str = r#"
[machine]
cpus = 1
memory_mib = 64
kv_cache_mib = 16

[[tenants]]
name = "strict"
guest = "pcidev"
args = "mac=52:54:00:12:34:56"
memory_mib = 8
weight = 100
cpu_budget_ms = 2000
devices = ["8086:100e"]
[tenants.quota]
registered_mib = 1
inflight_ops = 1
kv_cache_mib = 1

[[tenants]]
name = "bridge"
guest = "pcidev"
memory_mib = 8
weight = 100
cpu_budget_ms = 2000
devices = ["00:00.0"]
[tenants.quota]
registered_mib = 1
inflight_ops = 1
kv_cache_mib = 1
[tenants.policy]
passthrough_without_iommu = true

[[tenants]]
name = "nic"
guest = "pcidev"
args = "mac=52:54:00:12:34:56"
memory_mib = 8
weight = 100
cpu_budget_ms = 2000
devices = ["00:02.0"]
[tenants.quota]
registered_mib = 1
inflight_ops = 1
kv_cache_mib = 1
[tenants.policy]
passthrough_without_iommu = true

[[tenants]]
name = "nodev"
guest = "pcidev"
args = "probe=0x805400"
memory_mib = 8
weight = 100
cpu_budget_ms = 2000
[tenants.quota]
registered_mib = 1
inflight_ops = 1
kv_cache_mib = 1
"#;

#[test]
fn bochs_e1000_is_driven_by_its_tenant_with_its_interrupt_and_unreachable_for_another() {
    let compiled = xtask::manifest::compile("passthrough.toml", CONFIG, &xtask::root().join("guests")).expect("the passthrough configuration compiles");
    let dir = xtask::image::build_dir().join("tests").join("passthrough");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("manifest.bin");
    std::fs::write(&manifest, &compiled.bytes).unwrap();
    let mut boot = Boot::bochs("passthrough-e1000")
        .module(&manifest, "manifest")
        .module(guest_elf("pcidev").unwrap(), "guest:pcidev")
        .bochs_lines(&["pci: enabled=1, chipset=i440fx, slot1=e1000", &format!("e1000: enabled=1, mac={MAC}, ethmod=null")]);
    boot.timeout = Duration::from_secs(300);
    let run = boot.run();
    run.assert_verdict(Verdict::Success)
        .assert_line(&["pci: 00:02.0 [8086:100e] network controller", "BAR0 mem32", "128 KiB"])
        .assert_line(&["iommu: no DMAR table: no IOMMU"])
        .assert_line(&["manifest: 4 tenant(s) admitted, 0 refused"])
        // No IOMMU and no testing flag: refused.
        .assert_line(&["guest strict: not started: passthrough refused: device 8086:100e: 00:02.0: no IOMMU to confine its DMA"])
        // The host bridge stays with the hypervisor, flag or not.
        .assert_line(&["guest bridge: not started: passthrough refused: device 00:00.0", "platform infrastructure the hypervisor keeps"])
        // The flag allows it, with a warning.
        .assert_line(&["WARN", "passthrough: tenant nic: 00:02.0: passthrough without an IOMMU: the device's DMA is not confined"])
        .assert_line(&["passthrough: tenant nic: 00:02.0 [8086:100e] BAR0 host 0x", "-> guest-physical 0x800000 (128 KiB, uncached)"])
        // The hypervisor owns the interrupt controllers; the NIC's INTA# is routed by the PIIX3
        // swizzle (device 2, INTA# -> PIRQB# -> I/O APIC input 17) and stays masked until bound.
        .assert_line(&["irq: I/O APIC", "GSI 0-23, every input masked"])
        .assert_line(&["irq: boot CPU APIC id 0; 8259 masked; PCI INTx routing: PIIX3 (PIRQA-D on I/O APIC inputs 16-19)"])
        .assert_line(&[
            "passthrough: tenant nic: 00:02.0 assigned: memory decoding and bus mastering on",
            "DMA NOT confined (no IOMMU)",
            "INTA# -> GSI 17, host vector 0x50, forwarded once the guest binds it",
        ])
        .assert_line(&["[nic] pcidev: device 8086:100e at 00:02.0 BAR0 guest-physical 0x800000, 128 KiB"])
        // The known register values: STATUS as Bochs' model resets it (link up, full duplex,
        // 1000 Mb/s), the MAC from the bochsrc in EEPROM words 0-2 read through EERD, and
        // receive address 0 as the guest programmed it (Bochs does not preload RAL0/RAH0).
        .assert_line(&["[nic] pcidev: STATUS 0x80080783 (link up: true, full duplex: true)"])
        .assert_line(&["[nic] pcidev: EEPROM words 0-2 through EERD: 52:54:00:12:34:56 (done: true)"])
        .assert_line(&["[nic] pcidev: RAL0/RAH0 0x00000000/0x00000000 before, 0x12005452/0x80005634 after programming: receive address 52:54:00:12:34:56 (address valid: true)"])
        .assert_line(&["[nic] pcidev: EEPROM and receive address match the configured 52:54:00:12:34:56"])
        // Interrupt forwarding: bad calls refused, then five ICS-raised interrupts delivered at
        // the guest's vector, each cleared by reading ICR (INT_ASSERTED | RXDMT0) and DONE.
        .assert_line(&["[nic] pcidev: DONE before BIND: InvalidArgument; BIND to exception vector 0x10: InvalidArgument"])
        .assert_line(&["[nic] pcidev: DeviceIrqBind(vector 0x60): ok"])
        // Read back from the I/O APIC: masked before, then vector 0x50, level-triggered, unmasked.
        .assert_line(&["irq: tenant 3: 00:02.0 INTA# (GSI 17, host vector 0x50) bound to guest vector 0x60 (Armed); redirection entry 0x0000000000010000 (vector 0x0, Edge, ActiveHigh, masked) -> 0x0000000000008050 (vector 0x50, Level, ActiveHigh, unmasked)"])
        .assert_line(&["[nic] pcidev: 5/5 ICS-triggered interrupts received on vector 0x60 (5 in the handler), ICR 0x80000010 each time: same; 5 DONE; ICR after 0x00000000"])
        // Raised while the guest has interrupts off: held by the hypervisor until its STI.
        .assert_line(&["[nic] pcidev: raised with interrupts off: held while off: true, delivered after STI: true"])
        // An interrupt the device raises by itself (TXQE, a little after TCTL.EN with an empty
        // ring): delivered with ICR INT_ASSERTED | TXQE.
        .assert_line(&["[nic] pcidev: interrupt raised by the device itself: true, ICR 0x80000002"])
        // A cause the guest never services: one interrupt, then the line stays masked (no
        // storm); DONE with the cause still set unmasks a line still asserted: it comes again.
        // (Bochs' I/O APIC has no remote IRR: it re-delivers an asserted level input whenever
        // an entry is written, as BIND again does here, unless the entry is masked.)
        .assert_line(&["[nic] pcidev: unserviced cause (ICR not read, no DONE, bound again): 1 interrupt(s) while the line stayed asserted"])
        // The hypervisor masked the entry when the interrupt came (read back before the rebind).
        .assert_line(&["irq: tenant 3: 00:02.0 INTA# (GSI 17, host vector 0x50) bound to guest vector 0x60 (InService); redirection entry 0x0000000000018050 (vector 0x50, Level, ActiveHigh, masked) -> 0x0000000000018050"])
        .assert_line(&["[nic] pcidev: DONE with the cause still set: delivered again: true; ICR 0x80000010 read, DONE; 9 interrupt(s) in all"])
        .assert_line(&["[nic] pcidev: device interrupts forwarded as expected"])
        // The hypervisor's side: 9 host interrupts for 9 injections and 9 DONEs, no more.
        .assert_line(&["irq: 00:02.0 GSI 17 released (Armed, redirection entry 0x0000000000008050", "9 interrupt(s) taken, 9 injected, 9 DONE; line masked"])
        .assert_line(&["guest nic: exited with status 0"])
        .assert_line(&["passthrough: 00:02.0 released: decoding and bus mastering off, unassigned"])
        // The other tenant sees no device and cannot reach the registers at the same address.
        .assert_line(&["[nodev] pcidev: 0 device window(s) in the boot information"])
        .assert_line(&["[nodev] pcidev: DeviceIrqBind for 00:02.0 (not given to this tenant): BadHandle"])
        .assert_line(&["[nodev] pcidev: no e1000 here; reading guest-physical 0x805400 anyway"])
        .assert_line(&["guest nodev: stopped: EPT violation: read of GPA 0x805400"])
        .assert_no_line("from a device this guest was not given")
        .assert_line(&["guests: 1 finished, 3 stopped or refused"]);
}
