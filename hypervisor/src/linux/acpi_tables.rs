//! The ACPI tables a Linux tenant is given (ACPI 6.5 chapter 5): RSDP (revision 2), XSDT, FADT,
//! a minimal DSDT and the MADT.
//!
//! **Why a FADT.** Linux reads the MADT early (`acpi_boot_init`) and would find its CPUs without
//! a FADT, but ACPICA finds the DSDT only through the FADT, and `acpi_tb_load_namespace` fails
//! with `AE_NO_ACPI_TABLES` when there is no DSDT; `acpi_bus_init` then reports "Unable to load
//! the System Description Tables" and ACPI is disabled for the rest of the boot. So the tenant
//! gets a FADT marked **hardware-reduced** (flag HW_REDUCED_ACPI, §5.2.9 Table 5.10; §4.1): no
//! PM1/GPE blocks, no FACS, no SCI, no legacy PIT/PIC (Linux's `acpi_generic_reduced_hw_init`
//! then installs no PIT and a null legacy PIC), and a DSDT whose only object is `\_S5` so that
//! power-off works through the FADT's sleep control register. Reset goes through the FADT reset
//! register (RESET_REG_SUP). Both registers are I/O ports the hypervisor traps:
//! [`RESET_PORT`]/[`RESET_VALUE`] and [`SLEEP_CONTROL_PORT`] (see [`sleep_control_write`]).
//!
//! The MADT lists one enabled local APIC per vCPU (APIC id = processor uid = index), the local
//! APIC at 0xfee0_0000, no 8259 (PCAT_COMPAT clear), an NMI on LINT1 for all processors, and an
//! I/O APIC only if the caller asks for one.

use alloc::vec::Vec;

/// The xAPIC MMIO base (Intel SDM Vol. 3A 10.4.1, the reset value of IA32_APIC_BASE).
pub const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
/// I/O port of the FADT reset register (the conventional PCI reset control register).
pub const RESET_PORT: u16 = 0xcf9;
/// The value Linux writes to [`RESET_PORT`] to reset (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = 0x06;
/// I/O port of the FADT SLEEP_CONTROL_REG (hardware-reduced sleep, §4.8.3.7).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// I/O port of the FADT SLEEP_STATUS_REG.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// The SLP_TYP value `\_S5` declares.
pub const S5_SLP_TYP: u8 = 5;
/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"TNSRVR";
/// FADT "Hypervisor Vendor Identity" (§5.2.9, offset 268).
pub const HYPERVISOR_VENDOR: [u8; 8] = *b"TnsrVisr";

/// What the platform has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (1..=255), APIC ids 0..cpus.
    pub cpus: u32,
    /// An I/O APIC to list: (id, MMIO address, first GSI).
    pub io_apic: Option<(u8, u32, u32)>,
}

/// Why the tables could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiBuildError {
    /// Zero vCPUs, or more than an xAPIC id can name.
    BadCpuCount(u32),
    /// The tables need more room than the area given.
    DoesNotFit { need: usize, room: usize },
}

/// What a write to [`SLEEP_CONTROL_PORT`] asks for (§4.8.3.7: SLP_TYP bits 4:2, SLP_EN bit 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleepRequest {
    /// SLP_EN with the `\_S5` type: power off.
    PowerOff,
    /// SLP_EN with another type (no other sleep state is declared).
    Unsupported { slp_typ: u8 },
    /// SLP_EN clear: nothing happens.
    None,
}

/// Decodes a byte written to the sleep control register.
pub fn sleep_control_write(value: u8) -> SleepRequest {
    let slp_typ = (value >> 2) & 7;
    if value & (1 << 5) == 0 {
        SleepRequest::None
    } else if slp_typ == S5_SLP_TYP {
        SleepRequest::PowerOff
    } else {
        SleepRequest::Unsupported { slp_typ }
    }
}

const HEADER: usize = 36;
/// Offsets inside the blob [`build`] returns.
pub const RSDP_OFFSET: usize = 0;
const RSDP_LEN: usize = 36;

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |s, &x| s.wrapping_add(x)))
}

/// A table: header (§5.2.6) plus body, checksum filled.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((HEADER + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(&OEM_ID);
    let mut table_id = *b"TV      ";
    table_id[3..7].copy_from_slice(signature);
    t.extend_from_slice(&table_id);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"TVSR"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// Generic Address Structure (§5.2.3.2): space 1 = System I/O, 8-bit register, byte access.
fn gas_io8(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1;
    g[1] = 8;
    g[2] = 0;
    g[3] = 1;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// FADT offsets (§5.2.9 Table 5.9).
pub mod fadt {
    pub const DSDT: usize = 40;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const SLEEP_CONTROL_REG: usize = 244;
    pub const SLEEP_STATUS_REG: usize = 256;
    pub const HYPERVISOR_VENDOR: usize = 268;
    /// Length of a revision 6 FADT.
    pub const LEN: usize = 276;

    /// Fixed feature flags (Table 5.10).
    pub const PWR_BUTTON: u32 = 1 << 4;
    pub const SLP_BUTTON: u32 = 1 << 5;
    pub const RESET_REG_SUP: u32 = 1 << 10;
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
    /// IA-PC boot architecture flags (Table 5.11). LEGACY_DEVICES (bit 0) and 8042 (bit 1)
    /// stay clear: there are neither.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    pub const MSI_NOT_SUPPORTED: u16 = 1 << 3;
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

fn fadt(dsdt: u64) -> Vec<u8> {
    use fadt::*;
    let mut b = alloc::vec![0u8; LEN - HEADER];
    let mut put = |at: usize, v: &[u8]| b[at - HEADER..at - HEADER + v.len()].copy_from_slice(v);
    put(DSDT, &(dsdt as u32).to_le_bytes());
    put(X_DSDT, &dsdt.to_le_bytes());
    put(
        IAPC_BOOT_ARCH,
        &(VGA_NOT_PRESENT | MSI_NOT_SUPPORTED | CMOS_RTC_NOT_PRESENT).to_le_bytes(),
    );
    put(
        FLAGS,
        &(HW_REDUCED_ACPI | RESET_REG_SUP | PWR_BUTTON | SLP_BUTTON).to_le_bytes(),
    );
    put(RESET_REG, &gas_io8(RESET_PORT));
    put(fadt::RESET_VALUE, &[super::acpi_tables::RESET_VALUE]);
    put(MINOR_VERSION, &[5]);
    put(SLEEP_CONTROL_REG, &gas_io8(SLEEP_CONTROL_PORT));
    put(SLEEP_STATUS_REG, &gas_io8(SLEEP_STATUS_PORT));
    put(
        fadt::HYPERVISOR_VENDOR,
        &super::acpi_tables::HYPERVISOR_VENDOR,
    );
    table(b"FACP", 6, &b)
}

/// The DSDT's AML (ACPI 6.5 §20): `Name (_S5, Package (2) { 5, 0 })`:
/// NameOp 0x08, NameString "_S5_", PackageOp 0x12, PkgLength 6 (itself, NumElements and two
/// BytePrefix-ed constants), NumElements 2, BytePrefix 0x0a 5, BytePrefix 0x0a 0.
pub const DSDT_AML: [u8; 12] = [
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x0a, S5_SLP_TYP, 0x0a, 0x00,
];

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LOCAL_APIC_ADDRESS.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // flags: PCAT_COMPAT clear, no 8259s
    for i in 0..cfg.cpus {
        // Processor Local APIC (§5.2.12.2): type 0, length 8, uid, APIC id, flags (Enabled).
        b.extend_from_slice(&[0, 8, i as u8, i as u8]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    if let Some((id, address, gsi_base)) = cfg.io_apic {
        // I/O APIC (§5.2.12.3): type 1, length 12.
        b.extend_from_slice(&[1, 12, id, 0]);
        b.extend_from_slice(&address.to_le_bytes());
        b.extend_from_slice(&gsi_base.to_le_bytes());
    }
    // Local APIC NMI (§5.2.12.7): type 4, length 6, uid 0xff (all), flags 0 (bus default), LINT1.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    table(b"APIC", 5, &b)
}

/// Builds all tables into one blob to be copied to guest-physical `base` (16-byte aligned),
/// at most `room` bytes. The RSDP is at offset 0 and points at the XSDT; every table pointer is
/// an absolute GPA.
pub fn build(base: u64, room: usize, cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiBuildError> {
    if cfg.cpus == 0 || cfg.cpus > 255 {
        return Err(AcpiBuildError::BadCpuCount(cfg.cpus));
    }
    let align = |n: usize| n.div_ceil(16) * 16;
    let xsdt_off = align(RSDP_LEN);
    let xsdt_len = HEADER + 2 * 8;
    let fadt_off = align(xsdt_off + xsdt_len);
    let dsdt_off = align(fadt_off + fadt::LEN);
    let dsdt = table(b"DSDT", 2, &DSDT_AML);
    let madt_off = align(dsdt_off + dsdt.len());
    let madt = madt(cfg);
    let need = madt_off + madt.len();
    if need > room {
        return Err(AcpiBuildError::DoesNotFit { need, room });
    }
    let gpa = |off: usize| base + off as u64;
    let mut x = Vec::new();
    x.extend_from_slice(&gpa(fadt_off).to_le_bytes());
    x.extend_from_slice(&gpa(madt_off).to_le_bytes());
    let xsdt = table(b"XSDT", 1, &x);

    // RSDP (§5.2.5.3): signature, checksum (first 20 bytes), OEM id, revision 2, RSDT 0,
    // length 36, XSDT address, extended checksum (all 36 bytes), 3 reserved.
    let mut rsdp = [0u8; RSDP_LEN];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(&OEM_ID);
    rsdp[15] = 2;
    rsdp[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    rsdp[24..32].copy_from_slice(&gpa(xsdt_off).to_le_bytes());
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);

    let mut out = alloc::vec![0u8; need];
    for (off, t) in [
        (RSDP_OFFSET, &rsdp[..]),
        (xsdt_off, &xsdt[..]),
        (fadt_off, &fadt(gpa(dsdt_off))[..]),
        (dsdt_off, &dsdt[..]),
        (madt_off, &madt[..]),
    ] {
        out[off..off + t.len()].copy_from_slice(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::{read_table, AcpiError, Madt, MadtEntry, Rsdp, Tables};

    const BASE: u64 = 0xe_0000;

    fn reader(blob: &[u8]) -> impl FnMut(u64, &mut [u8]) -> bool + '_ {
        move |a, buf| {
            let Some(off) = a.checked_sub(BASE).map(|o| o as usize) else {
                return false;
            };
            match blob.get(off..off + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
    }

    #[test]
    fn rsdp_checksums_and_xsdt_pointer() {
        let blob = build(
            BASE,
            0x1_0000,
            &AcpiConfig {
                cpus: 1,
                io_apic: None,
            },
        )
        .unwrap();
        assert_eq!(
            sum(&blob[..20]),
            0,
            "ACPI 1.0 checksum over the first 20 bytes"
        );
        assert_eq!(sum(&blob[..36]), 0, "extended checksum over all 36 bytes");
        let r = Rsdp::parse(&blob[..36]).unwrap();
        assert_eq!(r.revision, 2);
        assert_eq!(r.oem_id, OEM_ID);
        assert_eq!(r.xsdt, Some(BASE + 0x30));
        // Corrupting any byte breaks a checksum the parser checks.
        let mut bad = blob.clone();
        bad[30] ^= 1;
        assert_eq!(Rsdp::parse(&bad[..36]), Err(AcpiError::BadRsdp));
    }

    #[test]
    fn tables_parse_back_with_valid_checksums() {
        let cfg = AcpiConfig {
            cpus: 4,
            io_apic: Some((4, 0xfec0_0000, 0)),
        };
        let blob = build(BASE, 0x1_0000, &cfg).unwrap();
        let mut rd = reader(&blob);
        let t = Tables::new(&blob[..36], &mut rd).unwrap();
        let sigs: Vec<[u8; 4]> = t.entries.iter().map(|e| e.0).collect();
        assert_eq!(sigs, [*b"FACP", *b"APIC"]);
        let madt = t.load(b"APIC", &mut rd).unwrap();
        let m = Madt::new(&madt).unwrap();
        assert_eq!(m.local_apic_address(), 0xfee0_0000);
        assert!(!m.has_8259());
        let ps = m.processors();
        assert_eq!(ps.len(), 4);
        for (i, p) in ps.iter().enumerate() {
            assert_eq!((p.apic_id, p.uid, p.usable), (i as u32, i as u32, true));
        }
        let entries: Vec<MadtEntry> = m.entries().collect();
        assert!(entries.contains(&MadtEntry::IoApic {
            id: 4,
            address: 0xfec0_0000,
            gsi_base: 0
        }));
        assert!(entries.contains(&MadtEntry::LocalApicNmi {
            uid: 0xff,
            flags: 0,
            lint: 1
        }));
        assert!(!entries.iter().any(|e| matches!(e, MadtEntry::Other { .. })));

        // FADT -> DSDT, both checksummed; read_table verifies each checksum.
        let f = t.load(b"FACP", &mut rd).unwrap();
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "FADT revision");
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let x_dsdt = u64::from_le_bytes(f[140..148].try_into().unwrap());
        assert_eq!(u64::from(u32_at(&f, 40)), x_dsdt);
        let flags = u32_at(&f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let boot_arch = u16::from_le_bytes([f[109], f[110]]);
        assert_eq!(boot_arch & 0b11, 0, "no legacy devices, no 8042");
        assert_eq!(
            &f[116..128],
            &[1, 8, 0, 1, 0xf9, 0x0c, 0, 0, 0, 0, 0, 0],
            "RESET_REG: I/O 0xcf9"
        );
        assert_eq!(f[128], 6);
        assert_eq!(&f[244..248], &[1, 8, 0, 1]);
        assert_eq!(u16::from_le_bytes([f[248], f[249]]), SLEEP_CONTROL_PORT);
        assert_eq!(u16::from_le_bytes([f[260], f[261]]), SLEEP_STATUS_PORT);
        assert_eq!(&f[268..276], b"TnsrVisr");
        let d = read_table(&mut rd, x_dsdt).unwrap();
        assert_eq!(&d[..4], b"DSDT");
        assert_eq!(&d[36..], &DSDT_AML);
        // Every table in the blob sums to zero.
        for (sig, addr) in t
            .entries
            .iter()
            .copied()
            .chain([(*b"DSDT", x_dsdt), (*b"XSDT", BASE + 0x30)])
        {
            let off = (addr - BASE) as usize;
            let len = u32_at(&blob, off + 4) as usize;
            assert_eq!(
                sum(&blob[off..off + len]),
                0,
                "{:?}",
                core::str::from_utf8(&sig)
            );
        }
    }

    #[test]
    fn corrupt_table_is_caught_by_the_parser() {
        let blob = build(
            BASE,
            0x1_0000,
            &AcpiConfig {
                cpus: 2,
                io_apic: None,
            },
        )
        .unwrap();
        let mut rd = reader(&blob);
        let t = Tables::new(&blob[..36], &mut rd).unwrap();
        let madt_at = t.find(b"APIC").unwrap();
        let mut bad = blob.clone();
        bad[(madt_at - BASE) as usize + 44] ^= 0x01; // the first local APIC entry
        let mut rd = reader(&bad);
        assert_eq!(
            t.load(b"APIC", &mut rd),
            Err(AcpiError::BadChecksum {
                signature: *b"APIC",
                address: madt_at
            })
        );
    }

    #[test]
    fn dsdt_aml_declares_s5() {
        // NameOp, "_S5_", PackageOp with PkgLength covering exactly the rest.
        assert_eq!(DSDT_AML[0], 0x08);
        assert_eq!(&DSDT_AML[1..5], b"_S5_");
        assert_eq!(DSDT_AML[5], 0x12);
        assert_eq!(usize::from(DSDT_AML[6]), DSDT_AML.len() - 6);
        assert_eq!(DSDT_AML[7], 2);
        assert_eq!(DSDT_AML[9], S5_SLP_TYP);
    }

    #[test]
    fn sleep_and_reset_registers() {
        // Linux's hardware-reduced S5 write: SLP_TYP << 2 | SLP_EN.
        assert_eq!(sleep_control_write((5 << 2) | 0x20), SleepRequest::PowerOff);
        assert_eq!(sleep_control_write(5 << 2), SleepRequest::None);
        assert_eq!(
            sleep_control_write((3 << 2) | 0x20),
            SleepRequest::Unsupported { slp_typ: 3 }
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            build(
                BASE,
                0x1000,
                &AcpiConfig {
                    cpus: 0,
                    io_apic: None
                }
            ),
            Err(AcpiBuildError::BadCpuCount(0))
        );
        assert_eq!(
            build(
                BASE,
                0x1000,
                &AcpiConfig {
                    cpus: 256,
                    io_apic: None
                }
            ),
            Err(AcpiBuildError::BadCpuCount(256))
        );
        assert!(matches!(
            build(
                BASE,
                0x100,
                &AcpiConfig {
                    cpus: 1,
                    io_apic: None
                }
            ),
            Err(AcpiBuildError::DoesNotFit { room: 0x100, .. })
        ));
        // 255 CPUs fit the 64 KiB area.
        let b = build(
            BASE,
            0x1_0000,
            &AcpiConfig {
                cpus: 255,
                io_apic: None,
            },
        )
        .unwrap();
        let mut rd = reader(&b);
        let t = Tables::new(&b[..36], &mut rd).unwrap();
        let madt = t.load(b"APIC", &mut rd).unwrap();
        assert_eq!(Madt::new(&madt).unwrap().processors().len(), 255);
    }
}
