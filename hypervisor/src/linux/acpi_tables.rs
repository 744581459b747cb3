//! The ACPI tables a Linux tenant is given (ACPI 6.5 chapter 5): RSDP (revision 2), XSDT, FADT,
//! a minimal DSDT and the MADT, and the fixed PM1 registers the FADT names ([`Pm1`]).
//!
//! **Why a FADT, and why not a hardware-reduced one.** Linux reads the MADT early
//! (`acpi_boot_init`) and would find its CPUs without a FADT, but ACPICA finds the DSDT only
//! through the FADT, and `acpi_tb_load_namespace` fails with `AE_NO_ACPI_TABLES` when there is
//! no DSDT; `acpi_bus_init` then reports "Unable to load the System Description Tables" and ACPI
//! is disabled for the rest of the boot. A *hardware-reduced* FADT (flag HW_REDUCED_ACPI, §4.1)
//! would avoid the PM1 registers, but Linux 6.1 then replaces the 8259A with a null legacy PIC
//! (`acpi_generic_reduced_hw_init`, arch/x86/kernel/acpi/boot.c): without an I/O APIC (this
//! platform has none) the UART's IRQ 4 would have no interrupt controller at all and the
//! 8250 driver could not open ttyS0. So the FADT is a classic one with the least fixed hardware
//! ACPI allows (§4.8): a PM1a event block and a PM1a control block (I/O ports [`PM1A_EVT_PORT`],
//! [`PM1A_CNT_PORT`], emulated by [`Pm1`]), SCI on ISA IRQ 9 (never raised: no event ever
//! becomes pending), no SMI command port (so the platform is always in ACPI mode, SCI_EN reads
//! 1), no PM timer (optional since ACPI 5.0A; the kernel's clocks are the TSC, whose frequency
//! CPUID reports, and the local APIC's TSC-deadline timer), no GPE blocks, no FACS, and a DSDT
//! with `\_S5` (power-off through PM1a_CNT) and, given a memory window, the PCI host bridge
//! `\_SB.PCI0` ([`pci_host_bridge_aml`]) through which Linux enumerates bus 0. Reset goes through the
//! FADT reset register (RESET_REG_SUP): [`RESET_PORT`]/[`RESET_VALUE`].
//!
//! The MADT lists one enabled local APIC per vCPU (APIC id = processor uid = index), the local
//! APIC at 0xfee0_0000, PCAT_COMPAT (the tenant has the dual 8259A, `crate::legacy_pc`), an NMI
//! on LINT1 for all processors, and an I/O APIC only if the caller asks for one.

use alloc::vec::Vec;

/// The xAPIC MMIO base (Intel SDM Vol. 3A 10.4.1, the reset value of IA32_APIC_BASE).
pub const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
/// I/O port of the FADT reset register (the conventional PCI reset control register).
pub const RESET_PORT: u16 = 0xcf9;
/// The value Linux writes to [`RESET_PORT`] to reset (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = 0x06;
/// The PM1a event block (§4.8.3.1): PM1_STS (2 bytes) then PM1_EN (2 bytes).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// The PM1a control block (§4.8.3.2): PM1_CNT, 2 bytes.
pub const PM1A_CNT_PORT: u16 = 0x604;
/// The ISA IRQ the FADT names as the SCI (the conventional one; it is never raised).
pub const SCI_IRQ: u16 = 9;
/// The SLP_TYP value `\_S5` declares.
pub const S5_SLP_TYP: u8 = 5;
/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"TNSRVR";
/// FADT "Hypervisor Vendor Identity" (§5.2.9, offset 268).
pub const HYPERVISOR_VENDOR: [u8; 8] = *b"TnsrVisr";

/// What the platform has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (1..=255), APIC ids 0..cpus.
    pub cpus: u32,
    /// An I/O APIC to list: (id, MMIO address, first GSI).
    pub io_apic: Option<(u8, u32, u32)>,
    /// The PCI host bridge's memory window (where the BARs are): with it, the DSDT declares the
    /// host bridge `\_SB.PCI0` (PNP0A03) for bus 0 with this window, I/O ports 0–0xcf7 and
    /// 0xd00–0xffff and the configuration ports 0xcf8–0xcff ([`pci_host_bridge_aml`]).
    pub pci_window: Option<core::ops::Range<u32>>,
}

/// Why the tables could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiBuildError {
    /// Zero vCPUs, or more than an xAPIC id can name.
    BadCpuCount(u32),
    /// The tables need more room than the area given.
    DoesNotFit { need: usize, room: usize },
}

/// What a write to the high byte of PM1_CNT asks for (§4.8.3.2.1, Table 4.13: SLP_TYP is
/// bits 12:10 and SLP_EN bit 13 of PM1_CNT, i.e. bits 4:2 and 5 of its high byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleepRequest {
    /// SLP_EN with the `\_S5` type: power off.
    PowerOff,
    /// SLP_EN with another type (no other sleep state is declared).
    Unsupported { slp_typ: u8 },
    /// SLP_EN clear: nothing happens.
    None,
}

/// Decodes a byte written to bits 15:8 of PM1_CNT.
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

/// PM1_CNT.SCI_EN (bit 0): the platform is in ACPI mode (always, without an SMI command port).
pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
/// PM1_CNT bits the OS may write and read back (Table 4.13): BM_RLD (1), GBL_RLS (2, write-only,
/// reads 0) aside, only BM_RLD is kept; SLP_TYP/SLP_EN are commands, not state.
const PM1_CNT_KEPT: u16 = 1 << 1;
/// PM1_EN bits that exist (Table 4.11): TMR_EN 0, GBL_EN 5, PWRBTN_EN 8, SLPBTN_EN 9, RTC_EN 10,
/// PCIEXP_WAKE_DIS 14. The status bits of PM1_STS never become set: no event source exists.
const PM1_EN_BITS: u16 = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 14);

/// The PM1a event and control registers (§4.8.3.1, §4.8.3.2) at [`PM1A_EVT_PORT`]..+4 and
/// [`PM1A_CNT_PORT`]..+2, accessed a byte at a time ([`Pm1::read`], [`Pm1::write`] split wider
/// port accesses). PM1_STS is write-one-to-clear and stays 0 (nothing ever raises an event,
/// so the SCI is never asserted); PM1_EN keeps the enable bits that exist (the OS checks that
/// GBL_EN sticks before it uses the global lock); PM1_CNT reads SCI_EN set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pm1 {
    enable: u16,
    control: u16,
}

impl Pm1 {
    /// Whether `port` is one of the PM1 registers' bytes.
    pub fn claims(port: u16) -> bool {
        (PM1A_EVT_PORT..PM1A_EVT_PORT + 4).contains(&port) || (PM1A_CNT_PORT..PM1A_CNT_PORT + 2).contains(&port)
    }

    fn read_byte(&self, port: u16) -> u8 {
        let cnt = self.control | PM1_CNT_SCI_EN;
        match port.wrapping_sub(PM1A_EVT_PORT) {
            0 | 1 => 0,
            2 => self.enable as u8,
            3 => (self.enable >> 8) as u8,
            4 => cnt as u8,
            5 => (cnt >> 8) as u8,
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, port: u16, v: u8) -> SleepRequest {
        let (lo, hi) = (u16::from(v), u16::from(v) << 8);
        match port.wrapping_sub(PM1A_EVT_PORT) {
            2 => self.enable = (self.enable & 0xff00) | (lo & PM1_EN_BITS),
            3 => self.enable = (self.enable & 0x00ff) | (hi & PM1_EN_BITS),
            4 => self.control = (self.control & 0xff00) | (lo & PM1_CNT_KEPT),
            5 => return sleep_control_write(v),
            _ => {} // PM1_STS: write-one-to-clear of bits that are never set
        }
        SleepRequest::None
    }

    /// An IN of `size` bytes (1, 2 or 4) at `port`: little-endian over consecutive ports,
    /// all ones beyond the registers.
    pub fn read(&self, port: u16, size: u8) -> u32 {
        (0..u16::from(size.min(4))).fold(0, |v, i| v | u32::from(self.read_byte(port.wrapping_add(i))) << (8 * i))
    }

    /// An OUT of `size` bytes of `value` at `port`; what the write asks for (power-off).
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> SleepRequest {
        let mut req = SleepRequest::None;
        for i in 0..u16::from(size.min(4)) {
            let p = port.wrapping_add(i);
            if Self::claims(p) {
                match self.write_byte(p, (value >> (8 * i)) as u8) {
                    SleepRequest::None => {}
                    r => req = r,
                }
            }
        }
        req
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

/// Generic Address Structure (§5.2.3.2) for an I/O port register of `bits` bits:
/// space 1 = System I/O, bit offset 0, access size 1 (byte) / 2 (word) / 3 (dword).
fn gas_io(port: u16, bits: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1;
    g[1] = bits;
    g[2] = 0;
    g[3] = match bits {
        8 => 1,
        16 => 2,
        _ => 3,
    };
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// FADT offsets (§5.2.9 Table 5.9).
pub mod fadt {
    pub const DSDT: usize = 40;
    pub const SCI_INT: usize = 46;
    pub const SMI_CMD: usize = 48;
    pub const PM1A_EVT_BLK: usize = 56;
    pub const PM1A_CNT_BLK: usize = 64;
    pub const PM_TMR_BLK: usize = 76;
    pub const PM1_EVT_LEN: usize = 88;
    pub const PM1_CNT_LEN: usize = 89;
    pub const P_LVL2_LAT: usize = 96;
    pub const P_LVL3_LAT: usize = 98;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const X_PM1A_EVT_BLK: usize = 148;
    pub const X_PM1A_CNT_BLK: usize = 172;
    pub const HYPERVISOR_VENDOR: usize = 268;
    /// Length of a revision 6 FADT.
    pub const LEN: usize = 276;

    /// Fixed feature flags (Table 5.10).
    pub const WBINVD: u32 = 1 << 0;
    pub const PROC_C1: u32 = 1 << 2;
    pub const PWR_BUTTON: u32 = 1 << 4;
    pub const SLP_BUTTON: u32 = 1 << 5;
    pub const RESET_REG_SUP: u32 = 1 << 10;
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
    /// IA-PC boot architecture flags (Table 5.11): LEGACY_DEVICES (the UART, 8259A, 8254 and
    /// CMOS clock are ISA devices the DSDT does not enumerate); 8042 (bit 1) stays clear: there
    /// is no keyboard controller (Linux then skips probing it).
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    pub const I8042: u16 = 1 << 1;
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
    put(SCI_INT, &SCI_IRQ.to_le_bytes());
    // SMI_CMD stays 0: no SMM hand-over, the platform is in ACPI mode from the start (§5.2.9).
    put(PM1A_EVT_BLK, &u32::from(PM1A_EVT_PORT).to_le_bytes());
    put(PM1A_CNT_BLK, &u32::from(PM1A_CNT_PORT).to_le_bytes());
    put(PM1_EVT_LEN, &[4]);
    put(PM1_CNT_LEN, &[2]);
    put(X_PM1A_EVT_BLK, &gas_io(PM1A_EVT_PORT, 32));
    put(X_PM1A_CNT_BLK, &gas_io(PM1A_CNT_PORT, 16));
    // C2 and C3 not supported (latencies above 100 and 1000 µs, §5.2.9).
    put(P_LVL2_LAT, &101u16.to_le_bytes());
    put(P_LVL3_LAT, &1001u16.to_le_bytes());
    put(IAPC_BOOT_ARCH, &(LEGACY_DEVICES | VGA_NOT_PRESENT | MSI_NOT_SUPPORTED).to_le_bytes());
    put(FLAGS, &(WBINVD | PROC_C1 | RESET_REG_SUP | PWR_BUTTON | SLP_BUTTON).to_le_bytes());
    put(RESET_REG, &gas_io(RESET_PORT, 8));
    put(fadt::RESET_VALUE, &[super::acpi_tables::RESET_VALUE]);
    put(MINOR_VERSION, &[5]);
    put(fadt::HYPERVISOR_VENDOR, &super::acpi_tables::HYPERVISOR_VENDOR);
    table(b"FACP", 6, &b)
}

/// The DSDT's AML (ACPI 6.5 §20): `Name (_S5, Package (2) { 5, 0 })`:
/// NameOp 0x08, NameString "_S5_", PackageOp 0x12, PkgLength 6 (itself, NumElements and two
/// BytePrefix-ed constants), NumElements 2, BytePrefix 0x0a 5, BytePrefix 0x0a 0.
pub const DSDT_AML: [u8; 12] = [
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x0a, S5_SLP_TYP, 0x0a, 0x00,
];

/// A PkgLength (ACPI 6.5 §20.2.4) followed by `body`: the encoded length counts itself. One
/// byte up to 63, else a lead byte with the low 4 bits and 1–3 more bytes.
fn pkg(body: &[u8]) -> Vec<u8> {
    let mut n = body.len() + 1;
    let extra = if n < 0x40 {
        0
    } else {
        n += 1;
        if n < 0x1000 {
            1
        } else {
            n += 1;
            if n < 0x10_0000 { 2 } else { n += 1; 3 }
        }
    };
    let mut v = Vec::with_capacity(n);
    if extra == 0 {
        v.push(n as u8);
    } else {
        v.push(((extra as u8) << 6) | (n & 0xf) as u8);
        for i in 0..extra {
            v.push((n >> (4 + 8 * i)) as u8);
        }
    }
    v.extend_from_slice(body);
    v
}

/// Word Address Space Descriptor (§6.4.3.5.3): resource type (0 memory, 1 I/O, 2 bus numbers),
/// a producer with fixed minimum and maximum, type-specific flags, range `min..=max`.
fn word_space(kind: u8, type_flags: u8, min: u16, max: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..6].copy_from_slice(&[0x88, 13, 0, kind, 0x0c, type_flags]);
    d[8..10].copy_from_slice(&min.to_le_bytes());
    d[10..12].copy_from_slice(&max.to_le_bytes());
    d[14..16].copy_from_slice(&(max - min).wrapping_add(1).to_le_bytes());
    d
}

/// The DSDT's host bridge: `Scope (\_SB) { Device (PCI0) { Name (_HID, EisaId ("PNP0A03"))
/// Name (_UID, 0) Name (_CRS, ResourceTemplate () { ... }) } }` (ACPI 6.5 §20 encoding; the
/// resource descriptors of §6.4). `_CRS`: bus numbers 0–0 (WordBusNumber), the configuration
/// ports 0xcf8–0xcff consumed (I/O Port Descriptor), I/O windows 0–0xcf7 and 0xd00–0xffff
/// (WordIO, entire range), and `window` as memory (DWordMemory, read-write, non-cacheable),
/// then the End Tag. With it Linux enumerates bus 0 through ACPI (`acpi_pci_root`) instead of
/// needing `pci=noacpi`.
pub fn pci_host_bridge_aml(window: &core::ops::Range<u32>) -> Vec<u8> {
    let mut crs = Vec::new();
    crs.extend_from_slice(&word_space(2, 0, 0, 0));
    // I/O Port Descriptor (§6.4.2.5): 16-bit decode, 0xcf8..0xcf8, alignment 1, length 8.
    crs.extend_from_slice(&[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
    crs.extend_from_slice(&word_space(1, 0x03, 0x0000, 0x0cf7));
    crs.extend_from_slice(&word_space(1, 0x03, 0x0d00, 0xffff));
    // DWord Address Space Descriptor (§6.4.3.5.2): memory, producer, fixed min/max, read-write.
    let mut m = [0u8; 26];
    m[..6].copy_from_slice(&[0x87, 23, 0, 0, 0x0c, 0x01]);
    m[10..14].copy_from_slice(&window.start.to_le_bytes());
    m[14..18].copy_from_slice(&(window.end - 1).to_le_bytes());
    m[22..26].copy_from_slice(&(window.end - window.start).to_le_bytes());
    crs.extend_from_slice(&m);
    // End Tag (§6.4.2.9), checksum 0: "treated as correct".
    crs.extend_from_slice(&[0x79, 0x00]);

    // Buffer (BufferOp, PkgLength, BufferSize as a WordConst, the bytes).
    let mut buffer_body = alloc::vec![0x0b];
    buffer_body.extend_from_slice(&(crs.len() as u16).to_le_bytes());
    buffer_body.extend_from_slice(&crs);
    let mut device_body = Vec::new();
    device_body.extend_from_slice(b"PCI0");
    // Name (_HID, 0x030ad041): EisaId ("PNP0A03") as a DWordConst.
    device_body.extend_from_slice(&[0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03]);
    // Name (_UID, Zero).
    device_body.extend_from_slice(&[0x08, b'_', b'U', b'I', b'D', 0x00]);
    device_body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S', 0x11]);
    device_body.extend_from_slice(&pkg(&buffer_body));
    let mut scope_body = alloc::vec![b'\\', b'_', b'S', b'B', b'_'];
    scope_body.extend_from_slice(&[0x5b, 0x82]); // DeviceOp
    scope_body.extend_from_slice(&pkg(&device_body));
    let mut aml = alloc::vec![0x10]; // ScopeOp
    aml.extend_from_slice(&pkg(&scope_body));
    aml
}

/// MADT flag PCAT_COMPAT (§5.2.12, Table 5.20).
pub const MADT_PCAT_COMPAT: u32 = 1;

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LOCAL_APIC_ADDRESS.to_le_bytes());
    // Flags (§5.2.12, Table 5.20): PCAT_COMPAT, the dual 8259A is there (`crate::legacy_pc`).
    b.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
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
    let mut aml = DSDT_AML.to_vec();
    if let Some(w) = &cfg.pci_window {
        aml.extend_from_slice(&pci_host_bridge_aml(w));
    }
    let dsdt = table(b"DSDT", 2, &aml);
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
                pci_window: None,
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
            pci_window: Some(0x0b80_0000..0xfec0_0000),
        };
        let blob = build(BASE, 0x1_0000, &cfg).unwrap();
        let mut rd = reader(&blob);
        let t = Tables::new(&blob[..36], &mut rd).unwrap();
        let sigs: Vec<[u8; 4]> = t.entries.iter().map(|e| e.0).collect();
        assert_eq!(sigs, [*b"FACP", *b"APIC"]);
        let madt = t.load(b"APIC", &mut rd).unwrap();
        let m = Madt::new(&madt).unwrap();
        assert_eq!(m.local_apic_address(), 0xfee0_0000);
        assert!(m.has_8259(), "PCAT_COMPAT: the tenant has the dual 8259A");
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
        assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI: Linux keeps its 8259A");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let boot_arch = u16::from_le_bytes([f[109], f[110]]);
        assert_eq!(boot_arch & 0b11, 0b01, "legacy ISA devices, no 8042");
        assert_eq!(boot_arch & (1 << 5), 0, "the CMOS clock is there");
        assert_eq!(
            &f[116..128],
            &[1, 8, 0, 1, 0xf9, 0x0c, 0, 0, 0, 0, 0, 0],
            "RESET_REG: I/O 0xcf9"
        );
        assert_eq!(f[128], 6);
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9, "SCI on IRQ 9");
        assert_eq!(u32_at(&f, 48), 0, "no SMI_CMD: always in ACPI mode");
        assert_eq!(u32_at(&f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(&f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(&f, 76), 0, "no PM timer");
        assert_eq!((f[88], f[89]), (4, 2), "PM1 block lengths");
        assert_eq!(&f[148..160], &[1, 32, 0, 3, 0x00, 0x06, 0, 0, 0, 0, 0, 0], "X_PM1a_EVT_BLK");
        assert_eq!(&f[172..184], &[1, 16, 0, 2, 0x04, 0x06, 0, 0, 0, 0, 0, 0], "X_PM1a_CNT_BLK");
        assert_eq!(u32_at(&f, 36), 0, "no FACS");
        assert!(f[244..268].iter().all(|&b| b == 0), "no hardware-reduced sleep registers");
        assert_eq!(&f[268..276], b"TnsrVisr");
        let d = read_table(&mut rd, x_dsdt).unwrap();
        assert_eq!(&d[..4], b"DSDT");
        assert_eq!(&d[36..36 + DSDT_AML.len()], &DSDT_AML);
        assert_eq!(&d[36 + DSDT_AML.len()..], &pci_host_bridge_aml(&(0x0b80_0000..0xfec0_0000))[..]);
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
                pci_window: None,
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

    /// Decodes a PkgLength at `b[0..]`: (the length it encodes, its own size in bytes).
    fn pkg_length(b: &[u8]) -> (usize, usize) {
        let extra = usize::from(b[0] >> 6);
        if extra == 0 {
            return (usize::from(b[0] & 0x3f), 1);
        }
        let mut n = usize::from(b[0] & 0xf);
        for i in 0..extra {
            n |= usize::from(b[1 + i]) << (4 + 8 * i);
        }
        (n, 1 + extra)
    }

    #[test]
    fn pkg_lengths_count_themselves() {
        for len in [0usize, 1, 62, 63, 64, 200, 4093, 4094, 5000] {
            let body = alloc::vec![0xaau8; len];
            let p = pkg(&body);
            let (n, size) = pkg_length(&p);
            assert_eq!(n, p.len(), "body {len}");
            assert_eq!(&p[size..], &body[..]);
        }
    }

    #[test]
    fn host_bridge_aml_declares_bus_0_and_its_windows() {
        let aml = pci_host_bridge_aml(&(0x0b80_0000..0xfec0_0000));
        // Scope (\_SB) covering the whole blob.
        assert_eq!(aml[0], 0x10);
        let (n, s) = pkg_length(&aml[1..]);
        assert_eq!(1 + n, aml.len());
        let scope = &aml[1 + s..];
        assert_eq!(&scope[..5], b"\\_SB_");
        // Device (PCI0) covering the rest of the scope.
        assert_eq!(&scope[5..7], &[0x5b, 0x82]);
        let (n, s) = pkg_length(&scope[7..]);
        assert_eq!(7 + n, scope.len());
        let dev = &scope[7 + s..];
        assert_eq!(&dev[..4], b"PCI0");
        assert_eq!(&dev[4..14], &[0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03], "EisaId(PNP0A03)");
        assert_eq!(&dev[14..20], b"\x08_UID\x00");
        assert_eq!(&dev[20..26], b"\x08_CRS\x11");
        let (n, s) = pkg_length(&dev[26..]);
        assert_eq!(26 + n, dev.len());
        let buf = &dev[26 + s..];
        assert_eq!(buf[0], 0x0b, "WordConst buffer size");
        let crs = &buf[3..];
        assert_eq!(usize::from(u16::from_le_bytes([buf[1], buf[2]])), crs.len());
        // Walk the resource descriptors (§6.4.1: small items 0xxxxnnn, large 1xxxxxxx + u16).
        let mut items = Vec::new();
        let mut at = 0;
        while at < crs.len() {
            let (tag, len, hdr) = if crs[at] & 0x80 != 0 {
                (crs[at], usize::from(u16::from_le_bytes([crs[at + 1], crs[at + 2]])), 3)
            } else {
                (crs[at] & 0xf8, usize::from(crs[at] & 7), 1)
            };
            items.push((tag, &crs[at + hdr..at + hdr + len]));
            at += hdr + len;
        }
        assert_eq!(at, crs.len());
        let tags: Vec<u8> = items.iter().map(|i| i.0).collect();
        assert_eq!(tags, [0x88, 0x40, 0x88, 0x88, 0x87, 0x78], "bus, config ports, 2 I/O, memory, end");
        let word = |d: &[u8], at: usize| u16::from_le_bytes([d[at], d[at + 1]]);
        let dword = |d: &[u8], at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
        // (type, min, max, length) of the Word descriptors: bytes after the 3-byte header.
        let w: Vec<(u8, u16, u16, u16)> = items.iter().filter(|i| i.0 == 0x88).map(|i| (i.1[0], word(i.1, 5), word(i.1, 7), word(i.1, 11))).collect();
        assert_eq!(w, [(2, 0, 0, 1), (1, 0, 0xcf7, 0xcf8), (1, 0xd00, 0xffff, 0xf300)]);
        assert!(items.iter().filter(|i| i.0 == 0x88).all(|i| i.1[1] & 1 == 0), "windows are producers");
        assert_eq!(items[1].1, &[0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08], "0xcf8, 8 ports");
        let m = items[4].1;
        assert_eq!((m[0], m[1] & 1, m[2] & 1), (0, 0, 1), "memory, producer, read-write");
        assert_eq!((dword(m, 7), dword(m, 11), dword(m, 19)), (0x0b80_0000, 0xfebf_ffff, 0xf340_0000));
    }

    #[test]
    fn pm1_control_powers_off_on_s5_only() {
        // The high byte of PM1_CNT: SLP_TYP << 2 | SLP_EN (bit 13 of the register).
        assert_eq!(sleep_control_write((5 << 2) | 0x20), SleepRequest::PowerOff);
        assert_eq!(sleep_control_write(5 << 2), SleepRequest::None);
        assert_eq!(
            sleep_control_write((3 << 2) | 0x20),
            SleepRequest::Unsupported { slp_typ: 3 }
        );
        let mut pm = Pm1::default();
        // ACPICA's S5 sequence: SLP_TYP first, then SLP_EN with it, as 16-bit writes.
        assert_eq!(pm.write(PM1A_CNT_PORT, 2, 5 << 10), SleepRequest::None);
        assert_eq!(pm.write(PM1A_CNT_PORT, 2, (5 << 10) | (1 << 13) | 1), SleepRequest::PowerOff);
        assert_eq!(pm.write(PM1A_CNT_PORT + 1, 1, (5 << 2) | 0x20), SleepRequest::PowerOff, "byte access");
        assert_eq!(pm.write(PM1A_CNT_PORT, 2, (1 << 10) | (1 << 13)), SleepRequest::Unsupported { slp_typ: 1 });
        // SLP_EN/SLP_TYP are commands: PM1_CNT reads SCI_EN only.
        assert_eq!(pm.read(PM1A_CNT_PORT, 2), 1);
    }

    #[test]
    fn pm1_event_registers() {
        let mut pm = Pm1::default();
        assert!(Pm1::claims(0x600) && Pm1::claims(0x605) && !Pm1::claims(0x606) && !Pm1::claims(0x5ff));
        // PM1_EN keeps the bits that exist (GBL_EN must stick for ACPICA's global lock).
        pm.write(PM1A_EVT_PORT + 2, 2, 0xffff);
        assert_eq!(pm.read(PM1A_EVT_PORT + 2, 2), 0x4721);
        pm.write(PM1A_EVT_PORT + 2, 2, 1 << 5);
        assert_eq!(pm.read(PM1A_EVT_PORT + 2, 2), 1 << 5);
        // PM1_STS is write-one-to-clear and nothing sets it; a dword read spans STS and EN.
        pm.write(PM1A_EVT_PORT, 2, 0xffff);
        assert_eq!(pm.read(PM1A_EVT_PORT, 2), 0);
        assert_eq!(pm.read(PM1A_EVT_PORT, 4), (1 << 5) << 16);
        // Bytes past the control block read all ones.
        assert_eq!(pm.read(PM1A_CNT_PORT, 4), 0xffff_0001);
    }

    #[test]
    fn errors() {
        assert_eq!(
            build(
                BASE,
                0x1000,
                &AcpiConfig {
                    cpus: 0,
                    io_apic: None,
                    pci_window: None,
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
                    io_apic: None,
                    pci_window: None,
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
                    io_apic: None,
                    pci_window: None,
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
                pci_window: None,
            },
        )
        .unwrap();
        let mut rd = reader(&b);
        let t = Tables::new(&b[..36], &mut rd).unwrap();
        let madt = t.load(b"APIC", &mut rd).unwrap();
        assert_eq!(Madt::new(&madt).unwrap().processors().len(), 255);
    }
}
