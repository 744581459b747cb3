//! The tenant manifest: the compact binary form of `config/tenants.toml` that `xtask` compiles
//! and hands to the hypervisor as a boot module, and the validation both of them run.
//!
//! `cargo xtask config check` parses the TOML, builds a [`Manifest`], calls [`validate`] (the
//! function below, so the rules cannot drift apart) and [`encode`]s it. At boot the hypervisor
//! runs [`decode_and_validate`] (the whole manifest, strictly) or [`decode_and_admit`] (which
//! refuses only the bad tenants and names each with its error) on the module's bytes: nothing in
//! the bytes is trusted, every field is range-checked and every error names the tenant and the
//! field, using the TOML key names.
//!
//! # Byte layout (version 2, all integers little-endian)
//!
//! ```text
//! header, 40 bytes
//!   0  [u8; 8]  magic  "TVMANIF\0"
//!   8  u16      version (2)
//!  10  u16      header length (40)
//!  12  u16      tenant entry length (80)
//!  14  u16      tenant count n (1..=MAX_TENANTS)
//!  16  u32      total length in bytes (header + entries + string area)
//!  20  u32      CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320) of the whole manifest with
//!               these four bytes taken as zero
//!  24  u16      machine.cpus: physical CPUs the configuration is written for
//!  26  u16      reserved, 0
//!  28  u32      machine.memory_mib: memory for all tenants' RAM together
//!  32  u32      machine.kv_cache_mib: KV-cache bytes for all tenants together, in MiB
//!  36  u32      reserved, 0
//! n tenant entries, 80 bytes each, from offset 40
//!   0  StrRef   name          (a StrRef is u16 offset into the string area, u16 length)
//!   4  StrRef   guest         kind 0: the guest ELF's name (a crate under guests/, delivered as
//!                             module `guest:NAME`); kind 1: the kernel's module name
//!                             (delivered as `kernel:NAME`)
//!   8  StrRef   args          words handed to the guest (may be empty)
//!  12  [StrRef; 4] models     the models the tenant may open sessions on (count at 47)
//!  28  u32      memory_mib    guest RAM
//!  32  u32      cpu_budget_ms CPU time the tenant's vCPUs may use in all
//!  36  u32      quota.inflight_ops
//!  40  u32      flags         bit 0 user_mode_hypercalls, bit 1 completion_interrupts,
//!                             bit 2 passthrough_without_iommu (testing only)
//!  44  u16      weight        engine weight, 1..=1000
//!  46  u8       vcpus         1..=MAX_VCPUS
//!  47  u8       model count   0..=MAX_MODELS
//!  48  [u8; 8]  cpus          physical CPU of vCPU i; all 0xFF = not pinned (floats on the
//!                             boot CPU; see `placement`); entries at and past `vcpus` are 0xFF
//!  56  u32      quota.registered_mib
//!  60  u32      quota.kv_cache_mib
//!  64  StrRef   devices       PCI devices passed through, comma-separated selectors
//!                             (`bb:dd.f` or `vvvv:dddd`); empty: none. Manifests written before
//!                             this field had 0 here, which reads as no devices.
//!  68  u8       kind          0 Rust guest, 1 Linux kernel (64-bit boot protocol)
//!  69  [u8; 3]  reserved, 0
//!  72  StrRef   initrd        kind 1: the initramfs' module name (`initrd:NAME`); empty: none.
//!                             Kind 0: empty
//!  76  StrRef   cmdline       kind 1: the kernel command line; kind 0: empty
//! string area: from 40 + 80 n to the total length; printable ASCII, no terminators
//!
//! Version 2 added `kind`, `initrd` and `cmdline` (the entry grew from 72 to 80 bytes); a
//! version-1 manifest is refused with `header.version` (xtask writes the manifest with the image).
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// `"TVMANIF\0"`.
pub const MAGIC: [u8; 8] = *b"TVMANIF\0";
pub const VERSION: u16 = 2;
pub const HEADER_LEN: usize = 40;
pub const ENTRY_LEN: usize = 80;
/// The largest manifest the hypervisor reads (header, entries and strings).
pub const MAX_LEN: usize = 64 * 1024;

pub const MAX_TENANTS: usize = 64;
pub const MAX_VCPUS: usize = 8;
pub const MAX_MODELS: usize = 4;
/// PCI devices passed through to one tenant.
pub const MAX_DEVICES: usize = 4;
/// Longest tenant, guest or model name.
pub const MAX_NAME_LEN: usize = 32;
/// Longest guest argument string.
pub const MAX_ARGS_LEN: usize = 1024;
/// The most CPUs a manifest may describe.
pub const MAX_CPUS: u16 = 64;
/// Guest RAM per tenant (the VMM's identity map covers 1 GiB); at least 2 MiB (image and stack).
pub const MIN_TENANT_MEMORY_MIB: u32 = 2;
pub const MAX_TENANT_MEMORY_MIB: u32 = 1024;
/// A Linux tenant's RAM: the kernel, its initramfs and page cache need at least 32 MiB (the
/// VMM's Linux loader refuses less); Debian's 6.1 with the test initramfs wants about 96.
pub const MIN_LINUX_MEMORY_MIB: u32 = 32;
/// Longest Linux kernel command line (the kernel's own limit on x86 is 2048 bytes).
pub const MAX_CMDLINE_LEN: usize = 1024;
const KIND_RUST: u8 = 0;
const KIND_LINUX: u8 = 1;
/// Memory and KV-cache pools a manifest may declare.
pub const MAX_POOL_MIB: u32 = 1 << 20;
pub const MAX_INFLIGHT_OPS: u32 = 4096;
pub const MAX_WEIGHT: u16 = 1000;
/// One hour of CPU time.
pub const MAX_CPU_BUDGET_MS: u32 = 3_600_000;
const UNPINNED: u8 = 0xFF;

/// Per-tenant policy flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u32);

impl Flags {
    /// User mode (CPL 3) in the guest may make tensor hypercalls.
    pub const USER_MODE_HYPERCALLS: Flags = Flags(1 << 0);
    /// The guest may ask for completion interrupts on its rings.
    pub const COMPLETION_INTERRUPTS: Flags = Flags(1 << 1);
    /// Testing only: the tenant's devices are passed through even when no IOMMU confines their
    /// DMA (emulators without one); the hypervisor logs a warning for each.
    pub const PASSTHROUGH_WITHOUT_IOMMU: Flags = Flags(1 << 2);
    pub const ALL: Flags = Flags(0b111);

    pub const fn empty() -> Self {
        Flags(0)
    }
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// `None` when a bit no version-1 flag uses is set.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::ALL.0 == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    #[must_use]
    pub const fn with(self, other: Flags, on: bool) -> Self {
        if on {
            Flags(self.0 | other.0)
        } else {
            Flags(self.0 & !other.0)
        }
    }
}

/// The machine-wide part of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub cpus: u16,
    pub memory_mib: u32,
    pub kv_cache_mib: u32,
}

/// Per-tenant quotas, charged by the dispatcher and the engine scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub registered_mib: u32,
    pub inflight_ops: u32,
    pub kv_cache_mib: u32,
}

/// How a Linux tenant boots (`kind = "linux"`): module names of its kernel and initramfs, and
/// the kernel command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The kernel (vmlinux or bzImage), delivered as module `kernel:NAME`.
    pub kernel: String,
    /// The initramfs, delivered as module `initrd:NAME`; empty: none.
    pub initrd: String,
    pub cmdline: String,
}

/// One tenant's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    /// The Rust guest's name (`guest:NAME` module); empty for a Linux tenant.
    pub guest: String,
    pub args: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Physical CPU of each vCPU (`vcpus` entries), or empty: not pinned.
    pub cpus: Vec<u8>,
    pub models: Vec<String>,
    pub quota: Quota,
    pub weight: u16,
    pub flags: Flags,
    pub cpu_budget_ms: u32,
    /// PCI devices passed through to the tenant, as written (`bb:dd.f` or `vvvv:dddd`).
    pub devices: Vec<String>,
    /// `Some`: a Linux tenant (`kind = "linux"`) booted from these modules instead of `guest`.
    pub linux: Option<LinuxBoot>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub machine: Machine,
    pub tenants: Vec<Tenant>,
}

/// What is wrong, without where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The bytes end before `needed` bytes.
    Truncated { needed: usize, len: usize },
    TooLong { len: usize, max: usize },
    BadMagic,
    UnsupportedVersion(u16),
    /// A layout field (header or entry length, total length) disagrees with version 1.
    BadLayout { expected: u64, found: u64 },
    ChecksumMismatch { stored: u32, computed: u32 },
    /// A reserved field is not zero.
    NotZero,
    /// A string reference points outside the string area.
    StringOutOfBounds,
    Empty,
    NameTooLong { len: usize, max: usize },
    /// A character outside `A-Z a-z 0-9 . _ -` (names) or printable ASCII (arguments).
    BadCharacter { byte: u8, at: usize },
    /// The same name is used by tenant `other` (its index).
    Duplicate { other: usize },
    OutOfRange { value: u64, min: u64, max: u64 },
    /// The tenants together ask for more than the machine's pool.
    PoolExceeded { total: u64, pool: u64 },
    /// A quota larger than what it limits (registered memory above the tenant's RAM).
    ExceedsMemory { value: u64, memory: u64 },
    UnknownFlags(u32),
    /// Pinning lists a number of CPUs different from `vcpus`.
    PinningCount { cpus: usize, vcpus: u8 },
    CpuOutOfRange { cpu: u8, cpus: u16 },
    /// The CPU is pinned twice in this tenant, or was pinned by tenant `other`.
    CpuOverlap { cpu: u8, other: Option<usize> },
    /// CPU 0, the boot CPU, runs the unpinned vCPUs and the engine: it cannot be pinned (so the
    /// unpinned tenants always have a CPU).
    BootCpuPinned,
    TooMany { count: usize, max: usize },
    /// A device selector that does not parse.
    BadDevice(crate::pci::SelectorError),
    /// The device is named twice in this tenant, or already passed through to tenant `other`.
    DeviceTaken { device: String, other: Option<usize> },
    /// A field that a tenant of this kind does not take (`args` or `devices` of a Linux tenant,
    /// `kernel` of a Rust guest).
    NotForKind { kind: &'static str },
    /// A kind byte other than 0 (Rust guest) and 1 (Linux).
    UnknownKind(u8),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Truncated { needed, len } => write!(f, "truncated: {len} bytes, {needed} needed"),
            Problem::TooLong { len, max } => write!(f, "{len} bytes, at most {max} allowed"),
            Problem::BadMagic => write!(f, "not a tensorvisor manifest (bad magic)"),
            Problem::UnsupportedVersion(v) => write!(f, "version {v} is not supported (this hypervisor reads {VERSION})"),
            Problem::BadLayout { expected, found } => write!(f, "{found}, expected {expected}"),
            Problem::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum {stored:#010x} stored, {computed:#010x} computed: the manifest is corrupt")
            }
            Problem::NotZero => write!(f, "reserved, must be 0"),
            Problem::StringOutOfBounds => write!(f, "string reference outside the string area"),
            Problem::Empty => write!(f, "must not be empty"),
            Problem::NameTooLong { len, max } => write!(f, "{len} characters, at most {max} allowed"),
            Problem::BadCharacter { byte, at } => write!(f, "character {byte:#04x} at {at} is not allowed"),
            Problem::Duplicate { other } => write!(f, "also used by tenant #{other}"),
            Problem::OutOfRange { value, min, max } => write!(f, "{value} is outside {min}..={max}"),
            Problem::PoolExceeded { total, pool } => write!(f, "the tenants together ask for {total}, the machine has {pool}"),
            Problem::ExceedsMemory { value, memory } => write!(f, "{value} MiB is more than the tenant's {memory} MiB of memory"),
            Problem::UnknownFlags(bits) => write!(f, "unknown flag bits {bits:#x}"),
            Problem::PinningCount { cpus, vcpus } => write!(f, "{cpus} CPUs listed for {vcpus} vCPUs"),
            Problem::CpuOutOfRange { cpu, cpus } => write!(f, "CPU {cpu} does not exist (the machine has {cpus})"),
            Problem::CpuOverlap { cpu, other: None } => write!(f, "CPU {cpu} is listed twice"),
            Problem::CpuOverlap { cpu, other: Some(o) } => write!(f, "CPU {cpu} is already pinned by tenant #{o}"),
            Problem::BootCpuPinned => write!(f, "CPU 0 is the boot CPU, which runs the unpinned vCPUs and the engine: it cannot be pinned"),
            Problem::TooMany { count, max } => write!(f, "{count}, at most {max} allowed"),
            Problem::BadDevice(e) => write!(f, "{e}"),
            Problem::DeviceTaken { device, other: None } => write!(f, "device {device} is listed twice"),
            Problem::DeviceTaken { device, other: Some(o) } => write!(f, "device {device} is already passed through to tenant #{o}"),
            Problem::NotForKind { kind } => write!(f, "not for a {kind} tenant"),
            Problem::UnknownKind(k) => write!(f, "unknown tenant kind {k} (0 Rust guest, 1 Linux)"),
        }
    }
}

/// An error with where it is: the tenant (index and name, when the entry got that far) and the
/// field, named as in the TOML (`quota.kv_cache_mib`, `machine.cpus`, `header.checksum`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub tenant: Option<(usize, String)>,
    pub field: &'static str,
    pub problem: Problem,
}

impl ManifestError {
    fn global(field: &'static str, problem: Problem) -> Self {
        Self { tenant: None, field, problem }
    }
    fn at(index: usize, name: &str, field: &'static str, problem: Problem) -> Self {
        Self { tenant: Some((index, String::from(name))), field, problem }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some((i, name)) if !name.is_empty() => write!(f, "tenant #{i} `{name}`: {}: {}", self.field, self.problem),
            Some((i, _)) => write!(f, "tenant #{i}: {}: {}", self.field, self.problem),
            None => write!(f, "{}: {}", self.field, self.problem),
        }
    }
}

/// CRC-32 (IEEE 802.3): reflected, polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// The CRC of a manifest with its checksum field (bytes 20..24) taken as zero.
fn manifest_crc(bytes: &[u8]) -> u32 {
    let head = bytes.get(..20).unwrap_or(bytes);
    let tail = bytes.get(24..).unwrap_or(&[]);
    let mut crc = !0u32;
    for &b in head.iter().chain([0u8; 4].iter()).chain(tail) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

// ---------------------------------------------------------------------------------------------
// Validation of plain data (shared by xtask and the hypervisor)
// ---------------------------------------------------------------------------------------------

fn check_name(s: &str, max: usize) -> Result<(), Problem> {
    if s.is_empty() {
        return Err(Problem::Empty);
    }
    if s.len() > max {
        return Err(Problem::NameTooLong { len: s.len(), max });
    }
    match s.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')) {
        Some(at) => Err(Problem::BadCharacter { byte: s.as_bytes()[at], at }),
        None => Ok(()),
    }
}

fn check_args(s: &str) -> Result<(), Problem> {
    check_printable(s, MAX_ARGS_LEN)
}

fn check_printable(s: &str, max: usize) -> Result<(), Problem> {
    if s.len() > max {
        return Err(Problem::NameTooLong { len: s.len(), max });
    }
    match s.bytes().position(|b| !(0x20..=0x7e).contains(&b)) {
        Some(at) => Err(Problem::BadCharacter { byte: s.as_bytes()[at], at }),
        None => Ok(()),
    }
}

fn in_range(value: u64, min: u64, max: u64) -> Result<(), Problem> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Problem::OutOfRange { value, min, max })
    }
}

/// Checks the machine section.
pub fn validate_machine(m: &Machine) -> Result<(), ManifestError> {
    in_range(m.cpus.into(), 1, MAX_CPUS.into()).map_err(|p| ManifestError::global("machine.cpus", p))?;
    in_range(m.memory_mib.into(), MIN_TENANT_MEMORY_MIB.into(), MAX_POOL_MIB.into())
        .map_err(|p| ManifestError::global("machine.memory_mib", p))?;
    in_range(m.kv_cache_mib.into(), 1, MAX_POOL_MIB.into()).map_err(|p| ManifestError::global("machine.kv_cache_mib", p))
}

/// Checks one tenant on its own (everything that does not depend on the other tenants).
pub fn validate_tenant(index: usize, t: &Tenant, machine: &Machine) -> Result<(), ManifestError> {
    let err = |field, p| ManifestError::at(index, &t.name, field, p);
    check_name(&t.name, MAX_NAME_LEN).map_err(|p| err("name", p))?;
    let max_mem = MAX_TENANT_MEMORY_MIB.min(machine.memory_mib);
    match &t.linux {
        None => {
            check_name(&t.guest, MAX_NAME_LEN).map_err(|p| err("guest", p))?;
            check_args(&t.args).map_err(|p| err("args", p))?;
            in_range(t.memory_mib.into(), MIN_TENANT_MEMORY_MIB.into(), max_mem.into()).map_err(|p| err("memory_mib", p))?;
            in_range(t.vcpus.into(), 1, MAX_VCPUS as u64).map_err(|p| err("vcpus", p))?;
        }
        Some(l) => {
            // A Linux tenant: its kernel and initramfs modules, its command line; one vCPU (its
            // ACPI MADT lists one local APIC), no guest arguments and no passed-through devices.
            let linux = Problem::NotForKind { kind: "Linux" };
            if !t.guest.is_empty() {
                return Err(err("guest", linux));
            }
            check_name(&l.kernel, MAX_NAME_LEN).map_err(|p| err("kernel", p))?;
            if !l.initrd.is_empty() {
                check_name(&l.initrd, MAX_NAME_LEN).map_err(|p| err("initrd", p))?;
            }
            check_printable(&l.cmdline, MAX_CMDLINE_LEN).map_err(|p| err("cmdline", p))?;
            if !t.args.is_empty() {
                return Err(err("args", linux));
            }
            in_range(t.memory_mib.into(), MIN_LINUX_MEMORY_MIB.into(), max_mem.into()).map_err(|p| err("memory_mib", p))?;
            in_range(t.vcpus.into(), 1, 1).map_err(|p| err("vcpus", p))?;
            if !t.cpus.is_empty() {
                // Its one vCPU floats on the boot CPU.
                return Err(err("cpus", linux));
            }
            if !t.devices.is_empty() {
                return Err(err("devices", linux));
            }
        }
    }
    if !t.cpus.is_empty() {
        if t.cpus.len() != usize::from(t.vcpus) {
            return Err(err("cpus", Problem::PinningCount { cpus: t.cpus.len(), vcpus: t.vcpus }));
        }
        for (i, &cpu) in t.cpus.iter().enumerate() {
            if cpu == 0 {
                return Err(err("cpus", Problem::BootCpuPinned));
            }
            if u16::from(cpu) >= machine.cpus {
                return Err(err("cpus", Problem::CpuOutOfRange { cpu, cpus: machine.cpus }));
            }
            if t.cpus[..i].contains(&cpu) {
                return Err(err("cpus", Problem::CpuOverlap { cpu, other: None }));
            }
        }
    }
    if t.models.len() > MAX_MODELS {
        return Err(err("models", Problem::TooMany { count: t.models.len(), max: MAX_MODELS }));
    }
    for (i, m) in t.models.iter().enumerate() {
        check_name(m, MAX_NAME_LEN).map_err(|p| err("models", p))?;
        if let Some(other) = t.models[..i].iter().position(|o| o == m) {
            return Err(err("models", Problem::Duplicate { other }));
        }
    }
    in_range(t.quota.registered_mib.into(), 1, t.memory_mib.into()).map_err(|p| match p {
        Problem::OutOfRange { value, .. } if value > 0 => {
            err("quota.registered_mib", Problem::ExceedsMemory { value, memory: t.memory_mib.into() })
        }
        p => err("quota.registered_mib", p),
    })?;
    in_range(t.quota.inflight_ops.into(), 1, MAX_INFLIGHT_OPS.into()).map_err(|p| err("quota.inflight_ops", p))?;
    in_range(t.quota.kv_cache_mib.into(), 1, machine.kv_cache_mib.into()).map_err(|p| err("quota.kv_cache_mib", p))?;
    in_range(t.weight.into(), 1, MAX_WEIGHT.into()).map_err(|p| err("weight", p))?;
    if t.devices.len() > MAX_DEVICES {
        return Err(err("devices", Problem::TooMany { count: t.devices.len(), max: MAX_DEVICES }));
    }
    for (i, d) in t.devices.iter().enumerate() {
        let sel = crate::pci::DeviceSelector::parse(d).map_err(|e| err("devices", Problem::BadDevice(e)))?;
        if t.devices[..i].iter().any(|o| crate::pci::DeviceSelector::parse(o) == Ok(sel)) {
            return Err(err("devices", Problem::DeviceTaken { device: d.clone(), other: None }));
        }
    }
    if Flags::from_bits(t.flags.bits()).is_none() {
        return Err(err("flags", Problem::UnknownFlags(t.flags.bits() & !Flags::ALL.bits())));
    }
    in_range(t.cpu_budget_ms.into(), 1, MAX_CPU_BUDGET_MS.into()).map_err(|p| err("cpu_budget_ms", p))
}

/// Admits tenants in order, each against the machine and the tenants admitted before it:
/// names unique, pinned CPUs disjoint, memory and KV-cache pools not exceeded. (Unpinned tenants
/// always have a CPU: the boot CPU cannot be pinned.)
#[derive(Debug)]
pub struct Admission<'m> {
    machine: &'m Machine,
    admitted: Vec<(usize, &'m Tenant)>,
    memory_mib: u64,
    kv_cache_mib: u64,
}

impl<'m> Admission<'m> {
    pub fn new(machine: &'m Machine) -> Self {
        Self { machine, admitted: Vec::new(), memory_mib: 0, kv_cache_mib: 0 }
    }

    /// Admits `t` (tenant number `index`) or says why not; a refused tenant takes nothing.
    pub fn admit(&mut self, index: usize, t: &'m Tenant) -> Result<(), ManifestError> {
        validate_tenant(index, t, self.machine)?;
        let err = |field, p| ManifestError::at(index, &t.name, field, p);
        if self.admitted.len() >= MAX_TENANTS {
            return Err(err("tenants", Problem::TooMany { count: self.admitted.len() + 1, max: MAX_TENANTS }));
        }
        if let Some(&(other, _)) = self.admitted.iter().find(|(_, o)| o.name == t.name) {
            return Err(err("name", Problem::Duplicate { other }));
        }
        for &cpu in &t.cpus {
            if let Some(&(other, _)) = self.admitted.iter().find(|(_, o)| o.cpus.contains(&cpu)) {
                return Err(err("cpus", Problem::CpuOverlap { cpu, other: Some(other) }));
            }
        }
        for d in &t.devices {
            let sel = crate::pci::DeviceSelector::parse(d).ok();
            let taken = |o: &Tenant| o.devices.iter().any(|od| crate::pci::DeviceSelector::parse(od).ok() == sel);
            if let Some(&(other, _)) = self.admitted.iter().find(|(_, o)| taken(o)) {
                return Err(err("devices", Problem::DeviceTaken { device: d.clone(), other: Some(other) }));
            }
        }
        let memory = self.memory_mib + u64::from(t.memory_mib);
        if memory > self.machine.memory_mib.into() {
            return Err(err("memory_mib", Problem::PoolExceeded { total: memory, pool: self.machine.memory_mib.into() }));
        }
        let kv = self.kv_cache_mib + u64::from(t.quota.kv_cache_mib);
        if kv > self.machine.kv_cache_mib.into() {
            return Err(err("quota.kv_cache_mib", Problem::PoolExceeded { total: kv, pool: self.machine.kv_cache_mib.into() }));
        }
        self.memory_mib = memory;
        self.kv_cache_mib = kv;
        self.admitted.push((index, t));
        Ok(())
    }
}

/// Validates a whole manifest; the first error wins (what `xtask` reports at image time).
pub fn validate(m: &Manifest) -> Result<(), ManifestError> {
    validate_machine(&m.machine)?;
    if m.tenants.is_empty() || m.tenants.len() > MAX_TENANTS {
        return Err(ManifestError::global("tenants", Problem::OutOfRange { value: m.tenants.len() as u64, min: 1, max: MAX_TENANTS as u64 }));
    }
    let mut adm = Admission::new(&m.machine);
    for (i, t) in m.tenants.iter().enumerate() {
        adm.admit(i, t)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

fn put_u16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Appends `s` to the string area, reusing an identical earlier string; returns the reference.
fn intern(strings: &mut Vec<u8>, s: &str) -> Result<(u16, u16), ManifestError> {
    if s.is_empty() {
        return Ok((0, 0));
    }
    let off = match strings.windows(s.len()).position(|w| w == s.as_bytes()) {
        Some(off) => off,
        None => {
            strings.extend_from_slice(s.as_bytes());
            strings.len() - s.len()
        }
    };
    let off = u16::try_from(off).map_err(|_| ManifestError::global("strings", Problem::TooLong { len: off, max: u16::MAX.into() }))?;
    let len = u16::try_from(s.len()).map_err(|_| ManifestError::global("strings", Problem::TooLong { len: s.len(), max: u16::MAX.into() }))?;
    Ok((off, len))
}

/// Validates `m` and encodes it in the version-1 layout.
pub fn encode(m: &Manifest) -> Result<Vec<u8>, ManifestError> {
    validate(m)?;
    let n = m.tenants.len();
    let entries_end = HEADER_LEN + n * ENTRY_LEN;
    let mut out = alloc::vec![0u8; entries_end];
    let mut strings = Vec::new();
    out[..8].copy_from_slice(&MAGIC);
    put_u16(&mut out, 8, VERSION);
    put_u16(&mut out, 10, HEADER_LEN as u16);
    put_u16(&mut out, 12, ENTRY_LEN as u16);
    put_u16(&mut out, 14, n as u16);
    put_u16(&mut out, 24, m.machine.cpus);
    put_u32(&mut out, 28, m.machine.memory_mib);
    put_u32(&mut out, 32, m.machine.kv_cache_mib);
    for (i, t) in m.tenants.iter().enumerate() {
        let e = HEADER_LEN + i * ENTRY_LEN;
        let mut put_str = |out: &mut [u8], at: usize, s: &str| -> Result<(), ManifestError> {
            let (off, len) = intern(&mut strings, s)?;
            put_u16(out, e + at, off);
            put_u16(out, e + at + 2, len);
            Ok(())
        };
        put_str(&mut out, 0, &t.name)?;
        put_str(&mut out, 4, t.linux.as_ref().map_or(&t.guest, |l| &l.kernel))?;
        put_str(&mut out, 8, &t.args)?;
        for (k, model) in t.models.iter().enumerate() {
            put_str(&mut out, 12 + 4 * k, model)?;
        }
        put_u32(&mut out, e + 28, t.memory_mib);
        put_u32(&mut out, e + 32, t.cpu_budget_ms);
        put_u32(&mut out, e + 36, t.quota.inflight_ops);
        put_u32(&mut out, e + 40, t.flags.bits());
        put_u16(&mut out, e + 44, t.weight);
        out[e + 46] = t.vcpus;
        out[e + 47] = t.models.len() as u8;
        out[e + 48..e + 56].fill(UNPINNED);
        out[e + 48..e + 48 + t.cpus.len()].copy_from_slice(&t.cpus);
        put_u32(&mut out, e + 56, t.quota.registered_mib);
        put_u32(&mut out, e + 60, t.quota.kv_cache_mib);
        put_str(&mut out, 64, &t.devices.join(","))?;
        if let Some(l) = &t.linux {
            out[e + 68] = KIND_LINUX;
            put_str(&mut out, 72, &l.initrd)?;
            put_str(&mut out, 76, &l.cmdline)?;
        }
    }
    out.extend_from_slice(&strings);
    if out.len() > MAX_LEN {
        return Err(ManifestError::global("manifest", Problem::TooLong { len: out.len(), max: MAX_LEN }));
    }
    let total = out.len() as u32;
    put_u32(&mut out, 16, total);
    let crc = manifest_crc(&out);
    put_u32(&mut out, 20, crc);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Bounds-checked little-endian reads; the caller has checked the length already, the checks
/// here only keep a logic slip from becoming a panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&self, at: usize) -> u8 {
        self.0.get(at).copied().unwrap_or(0)
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.u8(at), self.u8(at + 1)])
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.u8(at), self.u8(at + 1), self.u8(at + 2), self.u8(at + 3)])
    }
}

/// Checks the header, layout and checksum; returns the machine section and the tenant count.
fn decode_header(bytes: &[u8]) -> Result<(Machine, usize), ManifestError> {
    let g = ManifestError::global;
    if bytes.len() < HEADER_LEN {
        return Err(g("header", Problem::Truncated { needed: HEADER_LEN, len: bytes.len() }));
    }
    if bytes.len() > MAX_LEN {
        return Err(g("header", Problem::TooLong { len: bytes.len(), max: MAX_LEN }));
    }
    let r = Reader(bytes);
    if bytes[..8] != MAGIC {
        return Err(g("header.magic", Problem::BadMagic));
    }
    let version = r.u16(8);
    if version != VERSION {
        return Err(g("header.version", Problem::UnsupportedVersion(version)));
    }
    let layout = |field, expected: u64, found: u64| {
        if expected == found {
            Ok(())
        } else {
            Err(g(field, Problem::BadLayout { expected, found }))
        }
    };
    layout("header.header_len", HEADER_LEN as u64, r.u16(10).into())?;
    layout("header.entry_len", ENTRY_LEN as u64, r.u16(12).into())?;
    let total = r.u32(16) as usize;
    layout("header.total_len", bytes.len() as u64, total as u64)?;
    let stored = r.u32(20);
    let computed = manifest_crc(bytes);
    if stored != computed {
        return Err(g("header.checksum", Problem::ChecksumMismatch { stored, computed }));
    }
    if r.u16(26) != 0 || r.u32(36) != 0 {
        return Err(g("header.reserved", Problem::NotZero));
    }
    let n = usize::from(r.u16(14));
    if n == 0 || n > MAX_TENANTS {
        return Err(g("tenants", Problem::OutOfRange { value: n as u64, min: 1, max: MAX_TENANTS as u64 }));
    }
    let needed = HEADER_LEN + n * ENTRY_LEN;
    if bytes.len() < needed {
        return Err(g("tenants", Problem::Truncated { needed, len: bytes.len() }));
    }
    let machine = Machine { cpus: r.u16(24), memory_mib: r.u32(28), kv_cache_mib: r.u32(32) };
    validate_machine(&machine)?;
    Ok((machine, n))
}

/// Decodes entry `i` into plain data (strings checked to be in bounds and ASCII, the pinning
/// and model count shape checked); range rules are `validate_tenant`'s.
fn decode_entry(bytes: &[u8], n: usize, i: usize) -> Result<Tenant, ManifestError> {
    let r = Reader(bytes);
    let e = HEADER_LEN + i * ENTRY_LEN;
    let strings = bytes.get(HEADER_LEN + n * ENTRY_LEN..).unwrap_or(&[]);
    let string = |at: usize| -> Result<String, Problem> {
        let (off, len) = (usize::from(r.u16(e + at)), usize::from(r.u16(e + at + 2)));
        let s = strings.get(off..off + len).ok_or(Problem::StringOutOfBounds)?;
        match s.iter().position(|b| !(0x20..=0x7e).contains(b)) {
            Some(at) => Err(Problem::BadCharacter { byte: s[at], at }),
            // Printable ASCII is UTF-8.
            None => Ok(s.iter().map(|&b| char::from(b)).collect()),
        }
    };
    let name = string(0).map_err(|p| ManifestError::at(i, "", "name", p))?;
    let err = |field, p| ManifestError::at(i, &name, field, p);
    let guest = string(4).map_err(|p| err("guest", p))?;
    let args = string(8).map_err(|p| err("args", p))?;
    let model_count = usize::from(r.u8(e + 47));
    if model_count > MAX_MODELS {
        return Err(err("models", Problem::TooMany { count: model_count, max: MAX_MODELS }));
    }
    let mut models = Vec::new();
    for k in 0..MAX_MODELS {
        let at = 12 + 4 * k;
        if k < model_count {
            models.push(string(at).map_err(|p| err("models", p))?);
        } else if r.u32(e + at) != 0 {
            return Err(err("models", Problem::NotZero));
        }
    }
    let vcpus = r.u8(e + 46);
    in_range(vcpus.into(), 1, MAX_VCPUS as u64).map_err(|p| err("vcpus", p))?;
    let pins = &bytes[e + 48..e + 56];
    let cpus: Vec<u8> = if pins.iter().all(|&c| c == UNPINNED) {
        Vec::new()
    } else {
        let listed = pins.iter().take_while(|&&c| c != UNPINNED).count();
        if pins[listed..].iter().any(|&c| c != UNPINNED) || listed != usize::from(vcpus) {
            return Err(err("cpus", Problem::PinningCount { cpus: pins.iter().filter(|&&c| c != UNPINNED).count(), vcpus }));
        }
        pins[..listed].to_vec()
    };
    let flags_bits = r.u32(e + 40);
    let flags = Flags::from_bits(flags_bits).ok_or_else(|| err("flags", Problem::UnknownFlags(flags_bits & !Flags::ALL.bits())))?;
    if r.u8(e + 69) != 0 || r.u16(e + 70) != 0 {
        return Err(err("reserved", Problem::NotZero));
    }
    let (guest, linux) = match r.u8(e + 68) {
        KIND_RUST => {
            if r.u32(e + 72) != 0 || r.u32(e + 76) != 0 {
                return Err(err("kernel", Problem::NotForKind { kind: "Rust guest" }));
            }
            (guest, None)
        }
        KIND_LINUX => {
            let initrd = string(72).map_err(|p| err("initrd", p))?;
            let cmdline = string(76).map_err(|p| err("cmdline", p))?;
            (String::new(), Some(LinuxBoot { kernel: guest, initrd, cmdline }))
        }
        k => return Err(err("kind", Problem::UnknownKind(k))),
    };
    let list = string(64).map_err(|p| err("devices", p))?;
    let devices: Vec<String> = if list.is_empty() { Vec::new() } else { list.split(',').map(String::from).collect() };
    Ok(Tenant {
        guest,
        args,
        memory_mib: r.u32(e + 28),
        vcpus,
        cpus,
        models,
        quota: Quota { registered_mib: r.u32(e + 56), inflight_ops: r.u32(e + 36), kv_cache_mib: r.u32(e + 60) },
        weight: r.u16(e + 44),
        flags,
        cpu_budget_ms: r.u32(e + 32),
        devices,
        linux,
        name,
    })
}

/// Decodes and validates a whole manifest; any error refuses it all.
pub fn decode_and_validate(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let (machine, n) = decode_header(bytes)?;
    let tenants = (0..n).map(|i| decode_entry(bytes, n, i)).collect::<Result<Vec<_>, _>>()?;
    let m = Manifest { machine, tenants };
    validate(&m)?;
    Ok(m)
}

/// What the hypervisor starts: the tenants that passed, and each refused one with its error.
#[derive(Debug)]
pub struct Admitted {
    pub machine: Machine,
    /// (index in the manifest, tenant)
    pub tenants: Vec<(usize, Tenant)>,
    pub refused: Vec<ManifestError>,
}

/// Decodes a manifest and admits its tenants one by one: a bad header, layout or checksum
/// refuses the whole manifest; a bad entry refuses only that tenant (later tenants are checked
/// against the ones admitted, so a tenant that would overlap a refused one's CPUs is not
/// penalised for it). The hypervisor logs one line per refused tenant.
pub fn decode_and_admit(bytes: &[u8]) -> Result<Admitted, ManifestError> {
    let (machine, n) = decode_header(bytes)?;
    let decoded: Vec<Result<Tenant, ManifestError>> = (0..n).map(|i| decode_entry(bytes, n, i)).collect();
    let mut refused = Vec::new();
    let mut ok = Vec::new();
    {
        let mut adm = Admission::new(&machine);
        for (i, d) in decoded.iter().enumerate() {
            match d {
                Err(e) => refused.push(e.clone()),
                Ok(t) => match adm.admit(i, t) {
                    Ok(()) => ok.push(i),
                    Err(e) => refused.push(e),
                },
            }
        }
    }
    let tenants = decoded.into_iter().enumerate().filter_map(|(i, d)| d.ok().filter(|_| ok.contains(&i)).map(|t| (i, t))).collect();
    Ok(Admitted { machine, tenants, refused })
}

#[cfg(test)]
mod tests;
