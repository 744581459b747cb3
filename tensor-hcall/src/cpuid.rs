//! Hypervisor discovery through CPUID (leaves 0x4000_0000 and 0x4000_0001).
//!
//! A guest first checks CPUID.1:ECX\[31\] ("hypervisor present"), then leaf 0x4000_0000:
//! EAX = highest hypervisor leaf, EBX:ECX:EDX = the 12-byte signature `"TensorVisor\0"`.
//! Leaf 0x4000_0001: EAX = ABI version (major << 16 | minor), EBX = feature bits 31:0,
//! ECX = feature bits 63:32, EDX = 0.

use bitflags::bitflags;

use crate::AbiVersion;

/// Signature leaf.
pub const SIGNATURE_LEAF: u32 = 0x4000_0000;
/// Version and features leaf.
pub const FEATURES_LEAF: u32 = 0x4000_0001;
/// The highest hypervisor leaf this ABI defines.
pub const MAX_LEAF: u32 = FEATURES_LEAF;
/// The 12-byte signature in EBX, ECX, EDX (little-endian, like "GenuineIntel").
pub const SIGNATURE: [u8; 12] = *b"TensorVisor\0";

bitflags! {
    /// Features a hypervisor offers (leaf 0x4000_0001 EBX/ECX). A guest uses a call only if its
    /// feature bit is set; new calls come with new bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Features: u64 {
        /// `ConsoleWrite` and `Exit`.
        const CONSOLE = 1 << 0;
        /// `Query`.
        const QUERY = 1 << 1;
        /// `RegisterMemory` / `UnregisterMemory`.
        const MEMORY = 1 << 2;
        /// `TensorCreate` / `TensorDestroy`.
        const TENSORS = 1 << 3;
        /// `RingSetup` / `Doorbell` and the tensor operations on rings.
        const RINGS = 1 << 4;
        /// Completion interrupts on a guest-chosen vector.
        const COMPLETION_INTERRUPTS = 1 << 5;
        /// LLM sessions (`SessionOpen`, `SessionPrefill`, `SessionGenerate`, `SessionClose`).
        const SESSIONS = 1 << 6;
        /// `DeviceIrqBind` / `DeviceIrqDone`: a passed-through device's INTx forwarded.
        const DEVICE_INTERRUPTS = 1 << 7;
    }
}

/// The registers (EAX, EBX, ECX, EDX) the hypervisor returns for a hypervisor CPUID leaf, or
/// `None` for leaves above [`MAX_LEAF`] (the hypervisor then returns zeros, like real CPUs).
pub fn leaf(leaf: u32, version: AbiVersion, features: Features) -> Option<[u32; 4]> {
    match leaf {
        SIGNATURE_LEAF => {
            let [b, c, d] = signature_registers();
            Some([MAX_LEAF, b, c, d])
        }
        FEATURES_LEAF => {
            let f = features.bits();
            Some([version.to_u32(), f as u32, (f >> 32) as u32, 0])
        }
        _ => None,
    }
}

/// The signature as EBX, ECX, EDX.
pub fn signature_registers() -> [u32; 3] {
    let w = |i: usize| {
        u32::from_le_bytes([
            SIGNATURE[i],
            SIGNATURE[i + 1],
            SIGNATURE[i + 2],
            SIGNATURE[i + 3],
        ])
    };
    [w(0), w(4), w(8)]
}

/// What a guest learned from CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypervisorInfo {
    /// The ABI version offered.
    pub version: AbiVersion,
    /// The features offered.
    pub features: Features,
}

/// Guest side: interprets the outputs of leaf 0x4000_0000 and 0x4000_0001. `None` if the
/// signature is not ours or the features leaf is missing. Unknown feature bits are dropped.
pub fn detect(signature_leaf: [u32; 4], features_leaf: [u32; 4]) -> Option<HypervisorInfo> {
    let [max, b, c, d] = signature_leaf;
    if [b, c, d] != signature_registers() || max < FEATURES_LEAF {
        return None;
    }
    let [v, lo, hi, _] = features_leaf;
    Some(HypervisorInfo {
        version: AbiVersion::from_u32(v),
        features: Features::from_bits_truncate(u64::from(lo) | (u64::from(hi) << 32)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ABI_VERSION;

    #[test]
    fn signature_round_trip() {
        let regs = leaf(SIGNATURE_LEAF, ABI_VERSION, Features::all()).unwrap();
        assert_eq!(regs[0], 0x4000_0001);
        let mut bytes = [0u8; 12];
        for (i, r) in regs[1..].iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&bytes, b"TensorVisor\0");
        let f = leaf(
            FEATURES_LEAF,
            ABI_VERSION,
            Features::CONSOLE | Features::SESSIONS,
        )
        .unwrap();
        let info = detect(regs, f).unwrap();
        assert_eq!(info.version, ABI_VERSION);
        assert_eq!(info.features, Features::CONSOLE | Features::SESSIONS);
        assert_eq!(leaf(0x4000_0002, ABI_VERSION, Features::all()), None);
    }

    #[test]
    fn foreign_hypervisors_are_not_detected() {
        let kvm = [
            0x4000_0001,
            u32::from_le_bytes(*b"KVMK"),
            u32::from_le_bytes(*b"VMKV"),
            u32::from_le_bytes(*b"M\0\0\0"),
        ];
        assert_eq!(detect(kvm, [0x10000, 1, 0, 0]), None);
        let mut ours = leaf(SIGNATURE_LEAF, ABI_VERSION, Features::all()).unwrap();
        ours[0] = SIGNATURE_LEAF; // no features leaf
        assert_eq!(detect(ours, [0; 4]), None);
        // Unknown feature bits from a newer hypervisor are ignored.
        let sig = leaf(SIGNATURE_LEAF, ABI_VERSION, Features::all()).unwrap();
        assert_eq!(
            detect(sig, [0x10000, u32::MAX, u32::MAX, 0])
                .unwrap()
                .features,
            Features::all()
        );
    }
}
