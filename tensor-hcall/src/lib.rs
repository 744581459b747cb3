//! The tensor hypercall ABI shared by the tensorvisor hypervisor and its guests: version, CPUID
//! signature, call numbers, register convention, errors, `repr(C)` descriptors and ring layouts.
//!
//! - Discovery: [`cpuid`] (leaf 0x4000_0000 signature `"TensorVisor\0"`, leaf 0x4000_0001
//!   version and [`cpuid::Features`]).
//! - Calls: [`call`] documents the register convention (RAX number, RBX/RCX/RDX/RSI arguments,
//!   RAX result, negative = [`HcallError`]) and decodes registers into [`call::Hypercall`].
//! - Data: [`desc`] holds every descriptor and ring layout with compile-time size/offset checks
//!   and byte codecs; [`validate`] the pure checks the hypervisor runs on copied descriptors.
//!
//! Compatibility: a released call number, descriptor layout or error code never changes; new
//! behaviour comes with a new call number and a feature bit, and a minor version bump. A guest
//! whose major version differs is refused with `VersionMismatch`.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod boot;
pub mod call;
pub mod cpuid;
pub mod desc;
pub mod error;
pub mod linux;
pub mod validate;

pub use call::{CallNumber, HcallRegs, Hypercall};
pub use error::{decode_result, encode_result, HcallError};

/// An ABI version: major changes break compatibility, minor ones add calls or features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbiVersion {
    /// Incompatible revisions.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

impl AbiVersion {
    /// `major << 16 | minor`, as CPUID leaf 0x4000_0001 EAX carries it.
    pub const fn to_u32(self) -> u32 {
        (self.major as u32) << 16 | self.minor as u32
    }

    /// Inverse of [`Self::to_u32`].
    pub const fn from_u32(v: u32) -> Self {
        AbiVersion {
            major: (v >> 16) as u16,
            minor: v as u16,
        }
    }

    /// A guest built for `self` can use a hypervisor offering `offered`.
    pub const fn compatible_with(self, offered: AbiVersion) -> bool {
        self.major == offered.major && self.minor <= offered.minor
    }
}

/// The ABI version this crate defines.
pub const ABI_VERSION: AbiVersion = AbiVersion { major: 1, minor: 1 };

#[cfg(test)]
mod validate_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_encoding_and_compatibility() {
        assert_eq!(ABI_VERSION.to_u32(), 0x0001_0001);
        assert_eq!(
            AbiVersion::from_u32(0x0002_0003),
            AbiVersion { major: 2, minor: 3 }
        );
        let v10 = AbiVersion { major: 1, minor: 0 };
        let v11 = AbiVersion { major: 1, minor: 1 };
        assert!(v10.compatible_with(v11));
        assert!(!v11.compatible_with(v10));
        assert!(!v10.compatible_with(AbiVersion { major: 2, minor: 0 }));
    }
}
