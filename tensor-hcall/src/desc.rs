//! `repr(C)` descriptors and ring layouts with explicit padding, every size and offset asserted at
//! compile time. Each descriptor also has a byte codec (`from_bytes`/`to_bytes`, little-endian)
//! so the hypervisor decodes a *copy* of guest memory and never forms a reference into it.

use bitflags::bitflags;
use static_assertions::{const_assert, const_assert_eq};

use core::mem::{align_of, offset_of, size_of};

/// The highest tensor rank.
pub const MAX_RANK: usize = 4;
/// The most entries a submission or completion ring may have (a power of two).
pub const MAX_RING_ENTRIES: u32 = 4096;
/// Cache-line size the ring indices are separated by.
pub const CACHE_LINE: usize = 64;

/// A fixed-size little-endian field of a descriptor.
trait WireField: Sized {
    const SIZE: usize;
    fn get(b: &[u8]) -> Self;
    fn put(&self, b: &mut [u8]);
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl WireField for $t {
            const SIZE: usize = size_of::<$t>();
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; size_of::<$t>()];
                a.copy_from_slice(&b[..size_of::<$t>()]);
                <$t>::from_le_bytes(a)
            }
            fn put(&self, b: &mut [u8]) {
                b[..size_of::<$t>()].copy_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
wire_int!(u8, u16, u32, u64, i64);

impl<T: WireField + Copy + Default, const N: usize> WireField for [T; N] {
    const SIZE: usize = T::SIZE * N;
    fn get(b: &[u8]) -> Self {
        let mut out = [T::default(); N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = T::get(&b[i * T::SIZE..]);
        }
        out
    }
    fn put(&self, b: &mut [u8]) {
        for (i, v) in self.iter().enumerate() {
            v.put(&mut b[i * T::SIZE..]);
        }
    }
}

/// Declares a `repr(C)` descriptor with no implicit padding, its compile-time size/offset checks
/// and its byte codec.
macro_rules! descriptor {
    (
        $(#[$m:meta])*
        pub struct $name:ident (size $size:literal, align $align:literal) {
            $( $(#[$fm:meta])* pub $f:ident : $t:ty = $off:literal, )*
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(C, align($align))]
        pub struct $name {
            $( $(#[$fm])* pub $f: $t, )*
        }

        const_assert_eq!(size_of::<$name>(), $size);
        const_assert_eq!(align_of::<$name>(), $align);
        // No implicit padding: the fields add up to the size.
        const_assert_eq!(0 $(+ size_of::<$t>())*, $size);
        $( const_assert_eq!(offset_of!($name, $f), $off); )*

        impl $name {
            /// Size in bytes of the wire form (= `size_of::<Self>()`).
            pub const SIZE: usize = $size;

            /// Decodes the little-endian wire form (a copy of guest memory).
            pub fn from_bytes(b: &[u8; $size]) -> Self {
                $name { $( $f: <$t as WireField>::get(&b[$off..]), )* }
            }

            /// Encodes the little-endian wire form.
            pub fn to_bytes(&self) -> [u8; $size] {
                let mut b = [0u8; $size];
                $( WireField::put(&self.$f, &mut b[$off..]); )*
                b
            }
        }

        impl Default for $name {
            /// All zeros.
            fn default() -> Self {
                Self::from_bytes(&[0u8; $size])
            }
        }

        impl WireField for $name {
            const SIZE: usize = $size;
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; $size];
                a.copy_from_slice(&b[..$size]);
                Self::from_bytes(&a)
            }
            fn put(&self, b: &mut [u8]) {
                b[..$size].copy_from_slice(&self.to_bytes());
            }
        }
    };
}

/// Element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    /// IEEE binary32.
    F32 = 1,
    /// IEEE binary16.
    F16 = 2,
    /// bfloat16.
    Bf16 = 3,
    /// Blocks of 32 int8 values with one f16 scale: 34 bytes per 32 elements (GGML `Q8_0`).
    Q8_0 = 4,
    /// Signed 32-bit integers.
    I32 = 5,
    /// Unsigned 32-bit integers (token ids).
    U32 = 6,
}

impl DType {
    /// Elements per storage block (1 for scalar types).
    pub const fn block_elems(self) -> u64 {
        match self {
            DType::Q8_0 => 32,
            _ => 1,
        }
    }

    /// Bytes per storage block.
    pub const fn block_bytes(self) -> u64 {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::Q8_0 => 34,
        }
    }

    /// Floating-point (or quantized floating-point) data.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::Bf16 | DType::Q8_0)
    }
}

impl TryFrom<u32> for DType {
    type Error = crate::HcallError;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        Ok(match v {
            1 => DType::F32,
            2 => DType::F16,
            3 => DType::Bf16,
            4 => DType::Q8_0,
            5 => DType::I32,
            6 => DType::U32,
            _ => return Err(crate::HcallError::BadDtype),
        })
    }
}

descriptor! {
    /// A tensor over a registered region (argument of `TensorCreate`). Element `(i0, .., i{r-1})`
    /// lives at element offset `Σ i_k * strides[k]` from byte `offset` of the region; for block
    /// dtypes the last dimension is contiguous (stride 1) and a multiple of the block, and the
    /// byte offset of element offset `e` is `e / block_elems * block_bytes`. Slots beyond `rank`
    /// and `reserved` must be 0.
    pub struct TensorDesc (size 96, align 8) {
        /// [`DType`] value.
        pub dtype: u32 = 0,
        /// Number of dimensions, 1..=[`MAX_RANK`].
        pub rank: u32 = 4,
        /// Region handle from `RegisterMemory`.
        pub region: u64 = 8,
        /// Byte offset of element 0 in the region.
        pub offset: u64 = 16,
        /// Dimensions, outermost first.
        pub shape: [u64; MAX_RANK] = 24,
        /// Strides in elements, outermost first.
        pub strides: [u64; MAX_RANK] = 56,
        /// Must be 0.
        pub reserved: u64 = 88,
    }
}

/// Tensor operations in submission entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum OpCode {
    /// `out[.., m, n] = Σ_k a[.., m, k] * b[.., n, k]` (b holds rows of length k, the layout of
    /// LLM weight matrices; b may be Q8_0).
    Matmul = 1,
    /// `out = a + b`, same shapes.
    Add = 2,
    /// `out = a * b`, same shapes.
    Mul = 3,
    /// Softmax over the last dimension.
    Softmax = 4,
    /// `out = a / rms(a) * weight` over the last dimension; `params[0]` = epsilon (f32 bits).
    RmsNorm = 5,
    /// Rotary position embedding over the last dimension (pairs); `params[0]` = position of row
    /// 0, `params[1]` = theta base (f32 bits).
    Rope = 6,
}

impl OpCode {
    /// Number of input tensors.
    pub const fn inputs(self) -> usize {
        match self {
            OpCode::Matmul | OpCode::Add | OpCode::Mul | OpCode::RmsNorm => 2,
            OpCode::Softmax | OpCode::Rope => 1,
        }
    }

    /// Number of `params` words used.
    pub const fn params(self) -> usize {
        match self {
            OpCode::RmsNorm => 1,
            OpCode::Rope => 2,
            _ => 0,
        }
    }
}

impl TryFrom<u16> for OpCode {
    type Error = crate::HcallError;
    /// Unknown operations are `NotSupported`.
    fn try_from(v: u16) -> Result<Self, Self::Error> {
        Ok(match v {
            1 => OpCode::Matmul,
            2 => OpCode::Add,
            3 => OpCode::Mul,
            4 => OpCode::Softmax,
            5 => OpCode::RmsNorm,
            6 => OpCode::Rope,
            _ => return Err(crate::HcallError::NotSupported),
        })
    }
}

descriptor! {
    /// A submission-queue entry: one tensor operation on tensor handles.
    pub struct SqEntry (size 64, align 8) {
        /// Opaque to the hypervisor; copied into the completion.
        pub user_data: u64 = 0,
        /// [`OpCode`] value.
        pub opcode: u16 = 8,
        /// Must be 0 (no flags defined yet).
        pub flags: u16 = 10,
        /// Must be 0.
        pub reserved: u32 = 12,
        /// Input tensor handles, then the output handle in slot 3; unused slots 0.
        pub tensors: [u64; 4] = 16,
        /// Operation parameters; unused words 0.
        pub params: [u64; 2] = 48,
    }
}

descriptor! {
    /// A completion-queue entry.
    pub struct CqEntry (size 32, align 8) {
        /// The submission's `user_data`.
        pub user_data: u64 = 0,
        /// 0 on success, else a negative [`crate::HcallError`] code.
        pub status: i64 = 8,
        /// Result size (bytes written) on success.
        pub result: u64 = 16,
        /// 0.
        pub reserved: u64 = 24,
    }
}

descriptor! {
    /// One ring index alone in its cache line, so producer and consumer never share a line.
    pub struct RingIndex (size 64, align 64) {
        /// Free-running index (wraps at 2^32); slot = index & (entries - 1).
        pub value: u32 = 0,
        /// Padding to the cache line.
        pub pad: [u8; 60] = 4,
    }
}

bitflags! {
    /// `RingControl::flags`, written by the guest.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RingControlFlags: u32 {
        /// Do not inject completion interrupts; the guest polls (virtio `NO_INTERRUPT` idea).
        const SUPPRESS_COMPLETION_INTERRUPTS = 1 << 0;
    }
}

descriptor! {
    /// The shared control block of one ring pair, in guest memory: four indices in four cache
    /// lines, then guest flags. The guest produces SQ entries and consumes CQ entries; the
    /// hypervisor consumes SQ entries and produces CQ entries.
    pub struct RingControl (size 320, align 64) {
        /// SQ producer (guest writes).
        pub sq_producer: RingIndex = 0,
        /// SQ consumer (hypervisor writes).
        pub sq_consumer: RingIndex = 64,
        /// CQ producer (hypervisor writes).
        pub cq_producer: RingIndex = 128,
        /// CQ consumer (guest writes).
        pub cq_consumer: RingIndex = 192,
        /// [`RingControlFlags`].
        pub flags: u32 = 256,
        /// Interrupt only when the CQ producer passes this index (virtio event-index idea).
        pub cq_event_index: u32 = 260,
        /// Padding to the cache line.
        pub pad: [u8; 56] = 264,
    }
}

bitflags! {
    /// `RingSetupDesc::flags`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RingSetupFlags: u32 {
        /// Signal completions with interrupt `notify_vector` (32..=255).
        const INTERRUPT = 1 << 0;
    }
}

descriptor! {
    /// Argument of `RingSetup`.
    pub struct RingSetupDesc (size 48, align 8) {
        /// GPA of the [`RingControl`] (64-byte aligned).
        pub control_gpa: u64 = 0,
        /// GPA of `sq_entries` [`SqEntry`]s (64-byte aligned).
        pub sq_gpa: u64 = 8,
        /// GPA of `cq_entries` [`CqEntry`]s (64-byte aligned).
        pub cq_gpa: u64 = 16,
        /// SQ size, a power of two ≤ [`MAX_RING_ENTRIES`].
        pub sq_entries: u32 = 24,
        /// CQ size, a power of two ≤ [`MAX_RING_ENTRIES`].
        pub cq_entries: u32 = 28,
        /// Interrupt vector with [`RingSetupFlags::INTERRUPT`], else 0.
        pub notify_vector: u32 = 32,
        /// [`RingSetupFlags`].
        pub flags: u32 = 36,
        /// Must be 0.
        pub reserved: u64 = 40,
    }
}

bitflags! {
    /// Flags of `RegisterMemory`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RegionFlags: u64 {
        /// The engine may read the region.
        const READ = 1 << 0;
        /// The engine may write the region.
        const WRITE = 1 << 1;
    }
}

descriptor! {
    /// Argument of `SessionGenerate`: generate up to `max_tokens` tokens into a registered region
    /// as u32 token ids.
    pub struct GenerateDesc (size 64, align 8) {
        /// Session handle.
        pub session: u64 = 0,
        /// Output region handle.
        pub out_region: u64 = 8,
        /// Byte offset in the output region (4-byte aligned).
        pub out_offset: u64 = 16,
        /// 1..=[`crate::validate::MAX_GENERATE_TOKENS`].
        pub max_tokens: u32 = 24,
        /// Top-k (0 = off).
        pub top_k: u32 = 28,
        /// Temperature, f32 bits (0 = greedy).
        pub temperature_bits: u32 = 32,
        /// Top-p, f32 bits in (0, 1].
        pub top_p_bits: u32 = 36,
        /// Sampling seed.
        pub seed: u64 = 40,
        /// Stop at this token id (with flag bit 0).
        pub stop_token: u32 = 48,
        /// Bit 0: `stop_token` is valid.
        pub flags: u32 = 52,
        /// Must be 0.
        pub reserved: u64 = 56,
    }
}

descriptor! {
    /// `Query` kind 0: the ABI and its limits.
    pub struct AbiInfo (size 32, align 8) {
        /// [`crate::AbiVersion`] as u32.
        pub abi_version: u32 = 0,
        /// 0.
        pub reserved: u32 = 4,
        /// [`crate::cpuid::Features`] bits.
        pub features: u64 = 8,
        /// [`MAX_RANK`].
        pub max_rank: u32 = 16,
        /// [`MAX_RING_ENTRIES`].
        pub max_ring_entries: u32 = 20,
        /// Number of loaded models.
        pub models: u32 = 24,
        /// The tenant's in-flight operation quota.
        pub max_inflight: u32 = 28,
    }
}

/// `Query` kind for the calling tenant's own counters ([`TenantStats`]); model kinds stay below it.
pub const QUERY_TENANT_STATS: u64 = 0x100;

descriptor! {
    /// `Query` kind [`QUERY_TENANT_STATS`]: the calling tenant's counters and gauges.
    pub struct TenantStats (size 64, align 8) {
        /// Hypercalls made (this one included) and of those answered with an error.
        pub hypercalls: u64 = 0,
        pub errors: u64 = 8,
        /// Ring operations run and tokens prefilled or generated.
        pub ops: u64 = 16,
        pub tokens: u64 = 24,
        /// Calls refused with `QuotaExceeded`.
        pub quota_refusals: u64 = 32,
        /// Nanoseconds the hypervisor spent on the tenant's exits (engine work included).
        pub hypervisor_ns: u64 = 40,
        /// Bytes registered now and bytes of KV cache held now.
        pub registered_bytes: u64 = 48,
        pub kv_cache_bytes: u64 = 56,
    }
}

descriptor! {
    /// `Query` kind `1 + i`: model `i`.
    pub struct ModelInfo (size 64, align 8) {
        /// Model id for `SessionOpen`.
        pub id: u64 = 0,
        /// Vocabulary size.
        pub vocab_size: u32 = 8,
        /// Context length.
        pub context_len: u32 = 12,
        /// NUL-padded name.
        pub name: [u8; 48] = 16,
    }
}

// The ring indices sit in distinct cache lines.
const_assert!(
    offset_of!(RingControl, sq_consumer) - offset_of!(RingControl, sq_producer) >= CACHE_LINE
);
const_assert!(
    offset_of!(RingControl, cq_producer) - offset_of!(RingControl, sq_consumer) >= CACHE_LINE
);
const_assert!(
    offset_of!(RingControl, cq_consumer) - offset_of!(RingControl, cq_producer) >= CACHE_LINE
);
const_assert!(offset_of!(RingControl, flags) - offset_of!(RingControl, cq_consumer) >= CACHE_LINE);
// Whole entries per cache line: an SQ entry fills one line, two CQ entries share one.
const_assert_eq!(SqEntry::SIZE, CACHE_LINE);
const_assert_eq!(CACHE_LINE % CqEntry::SIZE, 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_is_little_endian() {
        let t = TensorDesc {
            dtype: 1,
            rank: 2,
            region: 0x1122_3344_5566_7788,
            offset: 64,
            shape: [3, 4, 0, 0],
            strides: [4, 1, 0, 0],
            reserved: 0,
        };
        let b = t.to_bytes();
        assert_eq!(&b[0..4], &[1, 0, 0, 0]);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[24..32], &3u64.to_le_bytes());
        assert_eq!(&b[56..64], &4u64.to_le_bytes());
        assert_eq!(TensorDesc::from_bytes(&b), t);
        let c = CqEntry {
            user_data: 9,
            status: -5,
            result: 1,
            reserved: 0,
        };
        assert_eq!(&c.to_bytes()[8..16], &(-5i64).to_le_bytes());
        assert_eq!(CqEntry::from_bytes(&c.to_bytes()), c);
        let mut m = ModelInfo {
            id: 1,
            vocab_size: 262_144,
            context_len: 32_768,
            name: [0; 48],
        };
        m.name[..10].copy_from_slice(b"gemma3-270");
        assert_eq!(ModelInfo::from_bytes(&m.to_bytes()), m);
        let mut rc = RingControl::default();
        rc.cq_producer.value = 0xdead_beef;
        rc.cq_event_index = 3;
        let b = rc.to_bytes();
        assert_eq!(&b[128..132], &0xdead_beefu32.to_le_bytes());
        assert_eq!(RingControl::from_bytes(&b), rc);
    }

    #[test]
    fn enums_reject_unknown_values() {
        for v in 0..100u32 {
            match DType::try_from(v) {
                Ok(d) => assert_eq!(d as u32, v),
                Err(e) => {
                    assert_eq!(e, crate::HcallError::BadDtype);
                    assert!(v == 0 || v > 6);
                }
            }
        }
        assert_eq!(OpCode::try_from(0), Err(crate::HcallError::NotSupported));
        assert_eq!(OpCode::try_from(7), Err(crate::HcallError::NotSupported));
        assert_eq!(OpCode::try_from(1), Ok(OpCode::Matmul));
    }
}
