//! The boot-information page a guest finds at entry.
//!
//! The hypervisor starts a 64-bit guest with paging on (an identity map of the first GiB of its
//! guest-physical space, 2 MiB pages), interrupts off, no IDT, RSP at the top of its memory and
//! RDI holding the guest-physical address of a [`GuestBootInfo`]. The page is mapped read-only:
//! a guest that writes it is stopped.

use static_assertions::{const_assert, const_assert_eq};

/// `GuestBootInfo::magic`: "TVBOOT01" read as a little-endian u64.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"TVBOOT01");

/// Guest-physical address of the boot-information page.
pub const BOOT_INFO_GPA: u64 = 0x1000;

/// Bytes of the argument string a guest receives (its module's command line).
pub const MAX_ARGS: usize = 240;

/// Passed-through devices the boot-information page can list.
pub const MAX_BOOT_DEVICES: usize = 4;

/// One memory BAR of a PCI device passed through to the guest: where the guest finds it. The
/// window is mapped uncached in the guest's EPT; the guest's own page tables (the identity map
/// of the first GiB) reach it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceWindow {
    pub vendor: u16,
    pub device: u16,
    /// The function's host PCI address (bus << 8 | device << 3 | function).
    pub bdf: u16,
    /// The BAR's index in the function's header.
    pub bar: u8,
    pub reserved: u8,
    pub reserved2: u64,
    /// Guest-physical address of the BAR's first byte.
    pub gpa: u64,
    /// Bytes (whole pages).
    pub len: u64,
}

// `to_bytes` writes this layout; the guest reads the struct in place.
const_assert_eq!(core::mem::size_of::<DeviceWindow>(), 32);
const_assert_eq!(core::mem::offset_of!(DeviceWindow, bdf), 4);
const_assert_eq!(core::mem::offset_of!(DeviceWindow, bar), 6);
const_assert_eq!(core::mem::offset_of!(DeviceWindow, gpa), 16);
const_assert_eq!(core::mem::offset_of!(DeviceWindow, len), 24);

/// What the hypervisor tells a guest at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestBootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// The ABI version ([`crate::ABI_VERSION`] packed as major << 16 | minor).
    pub abi_version: u32,
    /// The tenant's id (also readable through the tenant-id MSR).
    pub tenant_id: u32,
    /// Bytes of guest-physical memory, from 0.
    pub memory_size: u64,
    /// Valid bytes of `args`.
    pub args_len: u32,
    pub reserved: u32,
    /// The guest's arguments (UTF-8, space-separated `key=value` words).
    pub args: [u8; MAX_ARGS],
    /// Valid entries of `devices` (0 when nothing is passed through). Added after `args`: a
    /// guest built before it reads the first 272 bytes, which did not change.
    pub device_count: u32,
    pub reserved2: u32,
    pub devices: [DeviceWindow; MAX_BOOT_DEVICES],
    /// How many vCPUs the tenant has (1 when it has one; 0 from a hypervisor that predates
    /// multi-vCPU tenants). Every vCPU enters the image's entry point with RDI = this page and
    /// RSI = its vCPU index (0..vcpu_count), on its own 64 KiB stack: vCPU `i`'s stack ends
    /// `i * 64 KiB` below the top of guest memory. vCPU 0 is started first; the others start
    /// at the same time and share the tenant's memory (see [`MSR_VCPU`]).
    pub vcpu_count: u32,
    pub reserved3: u32,
}

/// Bytes of stack each vCPU gets at the top of guest memory, vCPU 0 highest.
pub const VCPU_STACK_BYTES: u64 = 64 * 1024;

const_assert_eq!(core::mem::size_of::<GuestBootInfo>(), 416);
const_assert_eq!(core::mem::offset_of!(GuestBootInfo, vcpu_count), 408);
const_assert_eq!(core::mem::offset_of!(GuestBootInfo, devices), 280);
const_assert_eq!(core::mem::offset_of!(GuestBootInfo, args), 32);
const_assert!(core::mem::size_of::<GuestBootInfo>() <= 2048);

impl GuestBootInfo {
    /// The arguments as text: `args_len` bytes, clamped to [`MAX_ARGS`] and cut at the first
    /// NUL ("" when they are not valid UTF-8).
    pub fn args(&self) -> &str {
        let n = (self.args_len as usize).min(MAX_ARGS);
        let a = &self.args[..n];
        let a = a.iter().position(|&c| c == 0).map_or(a, |z| &a[..z]);
        core::str::from_utf8(a).unwrap_or("")
    }

    /// The value of `key=value` among the arguments.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args()
            .split_ascii_whitespace()
            .find_map(|w| w.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }

    /// The structure as the bytes the hypervisor writes into guest memory.
    pub fn to_bytes(&self) -> [u8; core::mem::size_of::<GuestBootInfo>()] {
        let mut b = [0u8; core::mem::size_of::<GuestBootInfo>()];
        b[0..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..12].copy_from_slice(&self.abi_version.to_le_bytes());
        b[12..16].copy_from_slice(&self.tenant_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.memory_size.to_le_bytes());
        b[24..28].copy_from_slice(&self.args_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.reserved.to_le_bytes());
        b[32..272].copy_from_slice(&self.args);
        b[272..276].copy_from_slice(&self.device_count.to_le_bytes());
        b[276..280].copy_from_slice(&self.reserved2.to_le_bytes());
        for (i, d) in self.devices.iter().enumerate() {
            let at = 280 + 32 * i;
            b[at..at + 2].copy_from_slice(&d.vendor.to_le_bytes());
            b[at + 2..at + 4].copy_from_slice(&d.device.to_le_bytes());
            b[at + 4..at + 6].copy_from_slice(&d.bdf.to_le_bytes());
            b[at + 6] = d.bar;
            b[at + 7] = d.reserved;
            b[at + 8..at + 16].copy_from_slice(&d.reserved2.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&d.gpa.to_le_bytes());
            b[at + 24..at + 32].copy_from_slice(&d.len.to_le_bytes());
        }
        b[408..412].copy_from_slice(&self.vcpu_count.to_le_bytes());
        b[412..416].copy_from_slice(&self.reserved3.to_le_bytes());
        b
    }

    /// Builds one, truncating `args` to [`MAX_ARGS`] bytes at a character boundary.
    pub fn new(abi_version: u32, tenant_id: u32, memory_size: u64, args: &str) -> Self {
        let mut n = args.len().min(MAX_ARGS);
        while !args.is_char_boundary(n) {
            n -= 1;
        }
        let mut a = [0u8; MAX_ARGS];
        a[..n].copy_from_slice(&args.as_bytes()[..n]);
        Self {
            magic: BOOT_MAGIC,
            abi_version,
            tenant_id,
            memory_size,
            args_len: n as u32,
            reserved: 0,
            args: a,
            device_count: 0,
            reserved2: 0,
            devices: [DeviceWindow::default(); MAX_BOOT_DEVICES],
            vcpu_count: 1,
            reserved3: 0,
        }
    }

    /// Lists `window` among the passed-through devices; `false` when the table is full.
    pub fn add_device(&mut self, window: DeviceWindow) -> bool {
        let n = self.device_count as usize;
        if n >= MAX_BOOT_DEVICES {
            return false;
        }
        self.devices[n] = window;
        self.device_count += 1;
        true
    }

    /// The passed-through device windows (`device_count` clamped to the table).
    pub fn devices(&self) -> &[DeviceWindow] {
        &self.devices[..(self.device_count as usize).min(MAX_BOOT_DEVICES)]
    }
}

/// A synthetic, read-only MSR holding the tenant's id (the hypervisor's range 0x4c56_5400..).
/// Outside the ranges KVM (0x4b56_4d00) and Hyper-V (0x4000_0000) use.
pub const MSR_TENANT_ID: u32 = 0x4c56_5400;

/// A synthetic, read-only MSR: which vCPU is reading it and which physical CPU handled the
/// read (the exit), as [`VcpuPlacement::to_msr`] packs them. Read on a pinned vCPU, it names
/// the CPU the tenant was pinned to.
pub const MSR_VCPU: u32 = 0x4c56_5401;

/// What [`MSR_VCPU`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuPlacement {
    /// The vCPU's index in its tenant (0..vcpu_count).
    pub vcpu: u16,
    /// The physical CPU that handled the read: 0 is the boot CPU, `i` the `i`-th other CPU the
    /// hypervisor started (ACPI MADT order).
    pub cpu: u16,
    /// That CPU's initial local APIC id (CPUID.01H:EBX[31:24] on the CPU itself).
    pub apic_id: u32,
}

impl VcpuPlacement {
    /// Bits 0..16 the vCPU, 16..32 the CPU, 32..64 the APIC id.
    pub fn to_msr(self) -> u64 {
        u64::from(self.vcpu) | u64::from(self.cpu) << 16 | u64::from(self.apic_id) << 32
    }

    pub fn from_msr(v: u64) -> Self {
        Self { vcpu: v as u16, cpu: (v >> 16) as u16, apic_id: (v >> 32) as u32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_and_truncate_on_char_boundaries() {
        let b = GuestBootInfo::new(0x1_0000, 7, 4 << 20, "scenario=triple-fault budget_ms=50");
        assert_eq!(b.arg("scenario"), Some("triple-fault"));
        assert_eq!(b.arg("budget_ms"), Some("50"));
        assert_eq!(b.arg("nope"), None);
        let bytes = b.to_bytes();
        assert_eq!(&bytes[0..8], b"TVBOOT01");
        assert_eq!(bytes[12], 7);
        let long = "é".repeat(200);
        let t = GuestBootInfo::new(1, 1, 1, &long);
        assert!(t.args_len as usize <= MAX_ARGS && t.args().chars().all(|c| c == 'é'));
        assert_eq!(&bytes[272..280], &[0u8; 8], "no devices");
        assert_eq!(&bytes[408..412], &1u32.to_le_bytes(), "one vCPU unless told");
        let mut d = b;
        let w = DeviceWindow { vendor: 0x8086, device: 0x100e, bdf: 0x18, bar: 0, gpa: 0x80_0000, len: 0x2_0000, ..Default::default() };
        for _ in 0..MAX_BOOT_DEVICES {
            assert!(d.add_device(w));
        }
        assert!(!d.add_device(w), "the table holds four");
        assert_eq!(d.devices().len(), MAX_BOOT_DEVICES);
        let db = d.to_bytes();
        assert_eq!(&db[272..276], &4u32.to_le_bytes());
        assert_eq!(&db[280..286], &[0x86, 0x80, 0x0e, 0x10, 0x18, 0]);
        assert_eq!(&db[296..304], &0x80_0000u64.to_le_bytes());
        assert_eq!(&db[304..312], &0x2_0000u64.to_le_bytes());
        let mut two = b;
        two.vcpu_count = 2;
        assert_eq!(&two.to_bytes()[408..412], &2u32.to_le_bytes());
        let mut bad = b;
        bad.args_len = 10_000;
        assert_eq!(bad.args(), "scenario=triple-fault budget_ms=50");
    }

    #[test]
    fn vcpu_placement_round_trips_through_the_msr_value() {
        let p = VcpuPlacement { vcpu: 1, cpu: 3, apic_id: 6 };
        assert_eq!(p.to_msr(), 0x6_0003_0001);
        assert_eq!(VcpuPlacement::from_msr(p.to_msr()), p);
    }
}
