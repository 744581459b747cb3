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
}

const_assert_eq!(core::mem::size_of::<GuestBootInfo>(), 272);
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
        b[32..].copy_from_slice(&self.args);
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
        }
    }
}

/// A synthetic, read-only MSR holding the tenant's id (the hypervisor's range 0x4c56_5400..).
/// Outside the ranges KVM (0x4b56_4d00) and Hyper-V (0x4000_0000) use.
pub const MSR_TENANT_ID: u32 = 0x4c56_5400;

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
        let mut bad = b;
        bad.args_len = 10_000;
        assert_eq!(bad.args(), "scenario=triple-fault budget_ms=50");
    }
}
