//! Tensor element types: block layouts, scalar dequantizers, activation quantizers (Q8_0, Q8_K)
//! and the portable (scalar) dot products. The SIMD kernels in [`crate::kernels`] must agree
//! with these.
//!
//! Block layouts follow GGML (`ggml-common.h`): all scales are little-endian binary16 unless
//! said otherwise.

use alloc::vec;
use alloc::vec::Vec;

use crate::half::{bf16_to_f32, f16_to_f32, f32_to_f16};

/// K-quant super-block size.
pub const QK_K: usize = 256;
/// Block size of Q4_0, Q5_0 and Q8_0.
pub const QK: usize = 32;

/// GGML tensor types this engine handles (ids as in `ggml.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q5_0,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    BF16,
}

impl GgmlType {
    pub fn from_u32(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            6 => Self::Q5_0,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q5_0 => 6,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => QK,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// Bytes of a row of `n` elements (`n` a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.block_bytes()
    }

    /// The activation format the dot product of this weight type consumes.
    pub fn act_format(self) -> ActFormat {
        match self {
            Self::F32 => ActFormat::F32,
            Self::F16 => ActFormat::F16,
            Self::BF16 => ActFormat::BF16,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => ActFormat::Q8_0,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => ActFormat::Q8_K,
        }
    }
}

#[inline]
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block's 12 scale bytes.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Dequantizes one row: `src` holds `dst.len()` elements of type `ty`.
///
/// Panics only if the slice lengths disagree with the type (a caller bug, not a data error:
/// tensor sizes are validated by the GGUF reader).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), ty.row_bytes(dst.len()), "dequantize_row: size mismatch");
    match ty {
        GgmlType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::Q4_0 => {
            for (y, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(18)) {
                let d = f16_to_f32(le16(b, 0));
                let qs = &b[2..18];
                for j in 0..16 {
                    y[j] = ((qs[j] & 0xf) as i32 - 8) as f32 * d;
                    y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (y, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(22)) {
                let d = f16_to_f32(le16(b, 0));
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = ((((qs[j] & 0xf) as u32) | h0) as i32 - 16) as f32 * d;
                    y[j + 16] = ((((qs[j] >> 4) as u32) | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (y, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(34)) {
                let d = f16_to_f32(le16(b, 0));
                for j in 0..QK {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_K => {
            for (y, b) in dst.chunks_exact_mut(QK_K).zip(src.chunks_exact(144)) {
                let d = f16_to_f32(le16(b, 0));
                let dmin = f16_to_f32(le16(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for c in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * c, scales);
                    let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, mm1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, mm2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        y[64 * c + l] = d1 * (q[l] & 0xf) as f32 - mm1;
                        y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - mm2;
                    }
                }
            }
        }
        GgmlType::Q5_K => {
            for (y, b) in dst.chunks_exact_mut(QK_K).zip(src.chunks_exact(176)) {
                let d = f16_to_f32(le16(b, 0));
                let dmin = f16_to_f32(le16(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                for c in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * c, scales);
                    let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, mm1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, mm2) = (d * sc2 as f32, dmin * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        let lo = (q[l] & 0xf) + if qh[l] & u1 != 0 { 16 } else { 0 };
                        let hi = (q[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 };
                        y[64 * c + l] = d1 * lo as f32 - mm1;
                        y[64 * c + 32 + l] = d2 * hi as f32 - mm2;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (y, b) in dst.chunks_exact_mut(QK_K).zip(src.chunks_exact(210)) {
                let d = f16_to_f32(le16(b, 208));
                for half in 0..2 {
                    let ql = &b[64 * half..64 * half + 64];
                    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Activation formats (what the other operand of a dot product is converted to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ActFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q8_K,
}

/// A Q8_0 activation block: 32 int8 values and their scale (already rounded through f16, as
/// GGML stores it).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f32,
    pub qs: [i8; QK],
}

/// A Q8_K activation block: 256 int8 values, an f32 scale and the sums of each 16 values.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; 16],
}

/// One activation row converted for a weight type's dot product.
#[derive(Debug, Clone, PartialEq)]
pub enum Acts {
    F32(Vec<f32>),
    /// binary16 bits.
    F16(Vec<u16>),
    /// bfloat16 bits.
    BF16(Vec<u16>),
    Q8_0(Vec<BlockQ8_0>),
    Q8K(Vec<BlockQ8K>),
}

impl Acts {
    /// The row borrowed, as the kernels take it.
    pub fn view(&self) -> ActsRef<'_> {
        match self {
            Self::F32(v) => ActsRef::F32(v),
            Self::F16(v) => ActsRef::F16(v),
            Self::BF16(v) => ActsRef::BF16(v),
            Self::Q8_0(v) => ActsRef::Q8_0(v),
            Self::Q8K(v) => ActsRef::Q8K(v),
        }
    }
}

/// One converted activation row, borrowed: what the kernels take (an [`Acts`] through
/// [`Acts::view`], or rows handed over by another compilation unit, see
/// [`crate::kernels::table`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActsRef<'a> {
    F32(&'a [f32]),
    /// binary16 bits.
    F16(&'a [u16]),
    /// bfloat16 bits.
    BF16(&'a [u16]),
    Q8_0(&'a [BlockQ8_0]),
    Q8K(&'a [BlockQ8K]),
}

/// Round to nearest, ties to even (what `_mm256_round_ps` and GGML's `nearest_int` do).
#[inline]
pub fn round_even(x: f32) -> f32 {
    // 1.5 * 2^23: adding and subtracting rounds |x| < 2^22 to an integer in the current mode.
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() >= 4_194_304.0 {
        return x;
    }
    (x + MAGIC) - MAGIC
}

/// Quantizes 32 values to Q8_0 the way GGML's AVX2 path does (scale 127/amax, ties to even).
pub fn quantize_q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    let mut out = alloc::vec![BlockQ8_0 { d: 0.0, qs: [0; QK] }; x.len() / QK];
    quantize_q8_0_into(x, &mut out);
    out
}

/// [`quantize_q8_0`] into `out` (its first `x.len() / 32` blocks; the rest untouched).
pub fn quantize_q8_0_into(x: &[f32], out: &mut [BlockQ8_0]) {
    for (c, b) in x.chunks_exact(QK).zip(out) {
        let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in b.qs.iter_mut().zip(c) {
            *q = round_even(v * id) as i8;
        }
        b.d = f16_to_f32(f32_to_f16(d));
    }
}

/// Quantizes to Q8_K as GGML's reference does (scale -127/max of the signed extreme).
pub fn quantize_q8_k(x: &[f32]) -> Vec<BlockQ8K> {
    quantize_q8_k_with(x, false)
}

/// Quantizes to Q8_K as GGML's AVX2 `ggml_quantize_mat_q8_K_4x8` does for the rows it packs
/// four at a time (activations of the repacked Q4_K GEMM): as [`quantize_q8_k`], except that
/// when both `+max` and `−max` occur in a block the positive one sets the sign.
pub fn quantize_q8_k_4x8(x: &[f32]) -> Vec<BlockQ8K> {
    quantize_q8_k_with(x, true)
}

fn quantize_q8_k_with(x: &[f32], prefer_positive: bool) -> Vec<BlockQ8K> {
    let mut out = alloc::vec![BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; 16] }; x.len() / QK_K];
    quantize_q8_k_into(x, prefer_positive, &mut out);
    out
}

/// [`quantize_q8_k`] (or, with `prefer_positive`, [`quantize_q8_k_4x8`]) into `out` (its
/// first `x.len() / 256` blocks; the rest untouched).
pub fn quantize_q8_k_into(x: &[f32], prefer_positive: bool, out: &mut [BlockQ8K]) {
    for (c, o) in x.chunks_exact(QK_K).zip(out) {
        *o = q8k_block(c, prefer_positive);
    }
}

/// One Q8_K block of the 256 values `c`.
fn q8k_block(c: &[f32], prefer_positive: bool) -> BlockQ8K {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in c {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut b = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; 16] };
    if amax == 0.0 {
        return b;
    }
    if prefer_positive && c.contains(&amax) {
        max = amax;
    }
    let iscale = -127.0 / max;
    for (q, &v) in b.qs.iter_mut().zip(c) {
        *q = (round_even(iscale * v) as i32).min(127) as i8;
    }
    for j in 0..16 {
        b.bsums[j] = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
    }
    b.d = 1.0 / iscale;
    b
}

/// f32 to bfloat16 with round-to-nearest-even (NaN kept quiet).
pub fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if f.is_nan() {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Converts an activation row into the format `fmt`.
pub fn quantize_acts(fmt: ActFormat, x: &[f32]) -> Acts {
    match fmt {
        ActFormat::F32 => Acts::F32(x.to_vec()),
        ActFormat::F16 => Acts::F16(x.iter().map(|&v| f32_to_f16(v)).collect()),
        ActFormat::BF16 => Acts::BF16(x.iter().map(|&v| f32_to_bf16(v)).collect()),
        ActFormat::Q8_0 => Acts::Q8_0(quantize_q8_0(x)),
        ActFormat::Q8_K => Acts::Q8K(quantize_q8_k(x)),
    }
}

/// Portable dot product of one weight row (`w`, type `ty`) with converted activations.
/// Returns `None` when the activation format does not match the type or the lengths disagree.
pub fn dot_scalar(ty: GgmlType, w: &[u8], acts: ActsRef<'_>) -> Option<f32> {
    match (ty, acts) {
        (GgmlType::F32, ActsRef::F32(a)) => {
            (w.len() == 4 * a.len()).then(|| {
                w.chunks_exact(4)
                    .zip(a)
                    .map(|(c, &y)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * y)
                    .sum()
            })
        }
        (GgmlType::F16, ActsRef::F16(a)) => (w.len() == 2 * a.len()).then(|| {
            w.chunks_exact(2)
                .zip(a)
                .map(|(c, &y)| f16_to_f32(u16::from_le_bytes([c[0], c[1]])) * f16_to_f32(y))
                .sum()
        }),
        (GgmlType::BF16, ActsRef::BF16(a)) => (w.len() == 2 * a.len()).then(|| {
            w.chunks_exact(2)
                .zip(a)
                .map(|(c, &y)| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])) * bf16_to_f32(y))
                .sum()
        }),
        (GgmlType::Q8_0, ActsRef::Q8_0(a)) => (w.len() == 34 * a.len()).then(|| {
            let mut acc = Lanes::default();
            for (b, y) in w.chunks_exact(34).zip(a) {
                let lanes = lane_sums(|e| (b[2 + e] as i8) as i32 * y.qs[e] as i32);
                acc.fma_all(f16_to_f32(le16(b, 0)) * y.d, &lanes);
            }
            acc.hsum()
        }),
        (GgmlType::Q4_0, ActsRef::Q8_0(a)) => (w.len() == 18 * a.len()).then(|| {
            let mut acc = Lanes::default();
            for (b, y) in w.chunks_exact(18).zip(a) {
                let q = |e: usize| if e < 16 { (b[2 + e] & 0xf) as i32 } else { (b[2 + e - 16] >> 4) as i32 };
                let lanes = lane_sums(|e| (q(e) - 8) * y.qs[e] as i32);
                acc.fma_all(f16_to_f32(le16(b, 0)) * y.d, &lanes);
            }
            acc.hsum()
        }),
        (GgmlType::Q5_0, ActsRef::Q8_0(a)) => (w.len() == 22 * a.len()).then(|| {
            let mut acc = Lanes::default();
            for (b, y) in w.chunks_exact(22).zip(a) {
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let q = |e: usize| {
                    let lo = if e < 16 { b[6 + e] & 0xf } else { b[6 + e - 16] >> 4 } as i32;
                    lo | (((qh >> e) & 1) << 4) as i32
                };
                let lanes = lane_sums(|e| (q(e) - 16) * y.qs[e] as i32);
                acc.fma_all(f16_to_f32(le16(b, 0)) * y.d, &lanes);
            }
            acc.hsum()
        }),
        (GgmlType::Q4_K, ActsRef::Q8K(a)) => (w.len() == 144 * a.len()).then(|| {
            // As GGML's repacked Q4_K x8 kernels (what llama.cpp runs on AVX2): per super-block,
            // the exact integer sums scaled by d·d8 and dmin·d8, accumulated with FMA.
            let (mut acc, mut accm) = (0.0f32, 0.0f32);
            for (b, y) in w.chunks_exact(144).zip(a) {
                let (isum, msum) = q4k_block_isums(b, y);
                acc = libm::fmaf(isum as f32, f16_to_f32(le16(b, 0)) * y.d, acc);
                accm = libm::fmaf(msum as f32, f16_to_f32(le16(b, 2)) * y.d, accm);
            }
            acc - accm
        }),
        (GgmlType::Q5_K, ActsRef::Q8K(a)) => (w.len() == 176 * a.len()).then(|| {
            let mut s = 0.0f32;
            for (b, y) in w.chunks_exact(176).zip(a) {
                let (isum, msum) = q5k_block_isums(b, y);
                s += f16_to_f32(le16(b, 0)) * y.d * isum as f32
                    - f16_to_f32(le16(b, 2)) * y.d * msum as f32;
            }
            s
        }),
        (GgmlType::Q6_K, ActsRef::Q8K(a)) => (w.len() == 210 * a.len()).then(|| {
            // As GGML's AVX2 `ggml_vec_dot_q6_K_q8_K` (Q6_K is not repacked on x86): eight
            // exact integer lanes per super-block (`q6k_lane_sums`), `acc = fma(d8·d, lane,
            // acc)` per lane, `hsum` at the end.
            let mut acc = Lanes::default();
            for (b, y) in w.chunks_exact(210).zip(a) {
                acc.fma_all(y.d * f16_to_f32(le16(b, 208)), &q6k_lane_sums(b, y));
            }
            acc.hsum()
        }),
        _ => None,
    }
}

/// Minimum number of activation rows from which GGML's CPU backend takes its tiled K-quant
/// matmul (`ggml_compute_forward_mul_mat_tiled`, `ggml_tiled_min_batch`) for weights that
/// are not repacked; with fewer rows it uses the per-row `vec_dot`.
pub const TILED_MIN_ROWS: usize = 8;

/// Whether GGML's tiled matmul handles this weight type in our model's setting (Q6_K: the
/// only K-quant llama.cpp leaves un-repacked on AVX2; Q4_K is repacked to Q4_K x8 instead).
pub fn has_tiled(ty: GgmlType) -> bool {
    ty == GgmlType::Q6_K
}

/// Dot product as GGML's tiled K-quant matmul (`tiled_run_microtile_avx2`, Q6_K: SUBBLK 16,
/// act-bias) computes it: per super-block the exact integer sum `I = Σ sc·(q−32)·y`, then
/// `res = d·I` (f32 multiply) and `acc = fma(res, d8, acc)`. `None` for other types.
pub fn dot_tiled_scalar(ty: GgmlType, w: &[u8], acts: ActsRef<'_>) -> Option<f32> {
    match (ty, acts) {
        (GgmlType::Q6_K, ActsRef::Q8K(a)) if w.len() == 210 * a.len() => {
            let mut acc = 0.0f32;
            for (b, y) in w.chunks_exact(210).zip(a) {
                let res = f16_to_f32(le16(b, 208)) * q6k_block_isum(b, y) as f32;
                acc = libm::fmaf(res, y.d, acc);
            }
            Some(acc)
        }
        _ => None,
    }
}

/// Dot product in the order of GGML's AVX2 repacked GEMM `ggml_gemm_q4_K_8x8_q8_K` (tokens in
/// groups of four): per 64-value sub-block pair `sb` the exact integer sums, `acc =
/// fma(isum_sb, d·d8, acc)` and `accm = fma(msum_sb, dmin·d8, accm)`; result `acc − accm`.
/// `None` for other types.
pub fn dot_gemm4_scalar(ty: GgmlType, w: &[u8], acts: ActsRef<'_>) -> Option<f32> {
    match (ty, acts) {
        (GgmlType::Q4_K, ActsRef::Q8K(a)) if w.len() == 144 * a.len() => {
            let (mut acc, mut accm) = (0.0f32, 0.0f32);
            for (b, y) in w.chunks_exact(144).zip(a) {
                let (dd, dm) = (f16_to_f32(le16(b, 0)) * y.d, f16_to_f32(le16(b, 2)) * y.d);
                for (isum, msum) in q4k_sb_isums(b, y) {
                    acc = libm::fmaf(isum as f32, dd, acc);
                    accm = libm::fmaf(msum as f32, dm, accm);
                }
            }
            Some(acc - accm)
        }
        _ => None,
    }
}

/// Integer parts of a Q4_K × Q8_K block per 64-value sub-block pair: (Σ scale·q4·q8, Σ min·bsum).
pub fn q4k_sb_isums(b: &[u8], y: &BlockQ8K) -> [(i32, i32); 4] {
    let scales = &b[4..16];
    let qs = &b[16..144];
    let mut out = [(0i32, 0i32); 4];
    for (c, o) in out.iter_mut().enumerate() {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (mut s1, mut s2) = (0i32, 0i32);
        for l in 0..32 {
            s1 += (qs[32 * c + l] & 0xf) as i32 * y.qs[64 * c + l] as i32;
            s2 += (qs[32 * c + l] >> 4) as i32 * y.qs[64 * c + 32 + l] as i32;
        }
        let bs1 = y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32;
        let bs2 = y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32;
        *o = (sc1 as i32 * s1 + sc2 as i32 * s2, m1 as i32 * bs1 + m2 as i32 * bs2);
    }
    out
}

/// Eight f32 accumulators standing for the lanes of an AVX2 register, so that the portable
/// kernels round exactly as the SIMD ones (and as GGML's AVX2 code): lane `l` of a 32-value group
/// holds the exact integer sum of values `4l..4l+4`, each block adds `d · lane` with one fused
/// multiply-add per lane, and the lanes are summed at the end as `hsum` does.
#[derive(Default, Clone, Copy)]
pub struct Lanes(pub [f32; 8]);

impl Lanes {
    /// `acc[l] = fma(d, lanes[l], acc[l])`.
    #[inline]
    pub fn fma_all(&mut self, d: f32, lanes: &[i32; 8]) {
        for (a, &v) in self.0.iter_mut().zip(lanes) {
            *a = libm::fmaf(d, v as f32, *a);
        }
    }

    /// `(l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`: the order of GGML's `hsum_float_8`.
    #[inline]
    pub fn hsum(&self) -> f32 {
        hsum8(&self.0)
    }
}

/// Horizontal sum of eight lanes in the order of the AVX2 `hsum` (128-bit halves added, then
/// `movehl`, then `movehdup`).
#[inline]
pub fn hsum8(v: &[f32; 8]) -> f32 {
    let s = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Lane sums of 32 products `f(e)`: lane `l` holds `f(4l) + .. + f(4l+3)`.
#[inline]
fn lane_sums(f: impl Fn(usize) -> i32) -> [i32; 8] {
    let mut out = [0i32; 8];
    for (l, o) in out.iter_mut().enumerate() {
        *o = f(4 * l) + f(4 * l + 1) + f(4 * l + 2) + f(4 * l + 3);
    }
    out
}

/// The eight i32 lanes of GGML's AVX2 `ggml_vec_dot_q6_K_q8_K` for one super-block: lane `m`
/// holds `Σ sc·q·y` over the values `128j + 32c + 4m .. +4` (j < 2, c < 4; `q` the unsigned
/// 6-bit quant, `sc` its 16-value scale) minus `32·(bsum[2m]·sc[2m] + bsum[2m+1]·sc[2m+1])`.
/// Exact integers, so only the lane assignment matters.
pub fn q6k_lane_sums(b: &[u8], y: &BlockQ8K) -> [i32; 8] {
    let q6 = |e: usize| -> i32 {
        let (half, r) = (e / 128, e % 128);
        let (j, l) = (r / 32, r % 32);
        let ql = &b[64 * half..64 * half + 64];
        let qh = b[128 + 32 * half + l];
        // j = 0: ql[l] low, 1: ql[l+32] low, 2: ql[l] high, 3: ql[l+32] high.
        let lo = match j {
            0 => ql[l] & 0xf,
            1 => ql[l + 32] & 0xf,
            2 => ql[l] >> 4,
            _ => ql[l + 32] >> 4,
        };
        (lo | (((qh >> (2 * j)) & 3) << 4)) as i32
    };
    let sc = |k: usize| (b[192 + k] as i8) as i32;
    let mut out = [0i32; 8];
    for (m, o) in out.iter_mut().enumerate() {
        let mut s = 0i32;
        for jc in 0..8 {
            let base = 32 * jc + 4 * m;
            let mut p = 0i32;
            for t in 0..4 {
                p += q6(base + t) * y.qs[base + t] as i32;
            }
            s = s.wrapping_add(p * sc((base) / 16));
        }
        let sub = (y.bsums[2 * m] as i32 * sc(2 * m) + y.bsums[2 * m + 1] as i32 * sc(2 * m + 1)) << 5;
        *o = s.wrapping_sub(sub);
    }
    out
}

/// f32 dot product as the AVX2 kernel computes it: eight fused-multiply-add lanes over full
/// groups of eight, `hsum`, then the remaining products added one by one (unfused).
pub fn dot_f32_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 8 * 8;
    let mut acc = [0.0f32; 8];
    for (x, y) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] = libm::fmaf(x[l], y[l], acc[l]);
        }
    }
    let mut s = hsum8(&acc);
    for i in full..n {
        s += a[i] * b[i];
    }
    s
}

/// f32 dot product in the order of GGML's AVX2 `ggml_vec_dot_f16` (what llama.cpp's attention
/// runs for a single query token, where tinyBLAS is skipped): four 8-lane FMA accumulators over
/// groups of 32 (`acc[(i % 32) / 8]`), reduced as `GGML_F32x8_REDUCE` (`(a0+a2) + (a1+a3)`,
/// halves added, two `hadd`s), then the leftover products (f32) added in f64.
pub fn dot_f32_vecdot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 32 * 32;
    let mut acc = [[0.0f32; 8]; 4];
    for (x, y) in a[..full].chunks_exact(32).zip(b[..full].chunks_exact(32)) {
        for (j, aj) in acc.iter_mut().enumerate() {
            for (l, v) in aj.iter_mut().enumerate() {
                *v = libm::fmaf(x[8 * j + l], y[8 * j + l], *v);
            }
        }
    }
    let mut v = [0.0f32; 8];
    for (l, o) in v.iter_mut().enumerate() {
        *o = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    let mut s = ((t[0] + t[1]) + (t[2] + t[3])) as f64;
    for i in full..n {
        s += (a[i] * b[i]) as f64;
    }
    s as f32
}

/// GGML's vectorised `expf` (`ggml_v_expf`, AVX2 flavour, from ARM's optimized routines) for
/// one lane; `all_small` is false when any lane of the same 8-group has |n| > 126 (the
/// slow-path blend is then used for every lane of the group).
fn v_expf_lane(x: f32, slow: bool) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = libm::fmaf(x, f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    let b = libm::fmaf(-n, f32::from_bits(0x35bf_be8e), libm::fmaf(-n, f32::from_bits(0x3f31_7200), x));
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = libm::fmaf(
        libm::fmaf(libm::fmaf(f32::from_bits(0x3c07_2010), b, f32::from_bits(0x3d2b_9f17)), u,
            libm::fmaf(f32::from_bits(0x3e2a_af33), b, f32::from_bits(0x3eff_fedb))),
        u,
        f32::from_bits(0x3f7f_fff6) * b,
    );
    if !slow {
        return libm::fmaf(j, k, k);
    }
    let c = n.abs() > 126.0;
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else if c {
        libm::fmaf(s2, j, s2) * s1
    } else {
        libm::fmaf(k, j, k)
    }
}

/// `n` of `ggml_v_expf` for one lane (to decide the slow path).
fn v_expf_n(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000);
    libm::fmaf(x, f32::from_bits(0x3fb8_aa3b), r) - r
}

/// Softmax numerators as GGML's `ggml_vec_soft_max_f32` on AVX2: `x[i] = v_expf(x[i] − max)` in
/// groups of eight (`x.len()` must be a multiple of 8), each group summed in f32 (`hsum`
/// order) and the group sums added in f64. Returns the f64 sum.
pub fn softmax_exp_lanes(x: &mut [f32], max: f32) -> f64 {
    assert!(x.len().is_multiple_of(8), "softmax_exp_lanes: length {} not a multiple of 8", x.len());
    let mut sum = 0.0f64;
    for g in x.chunks_exact_mut(8) {
        let mut d = [0.0f32; 8];
        for (dv, &v) in d.iter_mut().zip(g.iter()) {
            *dv = v - max;
        }
        let slow = d.iter().any(|&v| v_expf_n(v).abs() > 126.0);
        for (gv, &dv) in g.iter_mut().zip(&d) {
            *gv = v_expf_lane(dv, slow);
        }
        let mut arr = [0.0f32; 8];
        arr.copy_from_slice(g);
        sum += hsum8(&arr) as f64;
    }
    sum
}

/// Integer parts of a Q4_K × Q8_K block: (Σ scale·q4·q8, Σ min·bsum).
pub fn q4k_block_isums(b: &[u8], y: &BlockQ8K) -> (i32, i32) {
    let scales = &b[4..16];
    let qs = &b[16..144];
    let (mut isum, mut msum) = (0i32, 0i32);
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (mut s1, mut s2) = (0i32, 0i32);
        for l in 0..32 {
            s1 += (qs[32 * c + l] & 0xf) as i32 * y.qs[64 * c + l] as i32;
            s2 += (qs[32 * c + l] >> 4) as i32 * y.qs[64 * c + 32 + l] as i32;
        }
        isum += sc1 as i32 * s1 + sc2 as i32 * s2;
        let bs1 = y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32;
        let bs2 = y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32;
        msum += m1 as i32 * bs1 + m2 as i32 * bs2;
    }
    (isum, msum)
}

/// Integer parts of a Q5_K × Q8_K block: (Σ scale·q5·q8, Σ min·bsum).
pub fn q5k_block_isums(b: &[u8], y: &BlockQ8K) -> (i32, i32) {
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    let (mut isum, mut msum) = (0i32, 0i32);
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (mut s1, mut s2) = (0i32, 0i32);
        for l in 0..32 {
            let lo = (qs[32 * c + l] & 0xf) as i32 + (((qh[l] >> (2 * c)) & 1) as i32) * 16;
            let hi = (qs[32 * c + l] >> 4) as i32 + (((qh[l] >> (2 * c + 1)) & 1) as i32) * 16;
            s1 += lo * y.qs[64 * c + l] as i32;
            s2 += hi * y.qs[64 * c + 32 + l] as i32;
        }
        isum += sc1 as i32 * s1 + sc2 as i32 * s2;
        let bs1 = y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32;
        let bs2 = y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32;
        msum += m1 as i32 * bs1 + m2 as i32 * bs2;
    }
    (isum, msum)
}

/// Integer part of a Q6_K × Q8_K block: Σ scale·(q6−32)·q8.
pub fn q6k_block_isum(b: &[u8], y: &BlockQ8K) -> i32 {
    let mut isum = 0i32;
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let yq = &y.qs[128 * half..128 * half + 128];
        let mut sub = [0i32; 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            sub[is] += q1 * yq[l] as i32;
            sub[is + 2] += q2 * yq[l + 32] as i32;
            sub[is + 4] += q3 * yq[l + 64] as i32;
            sub[is + 6] += q4 * yq[l + 96] as i32;
        }
        for (k, s) in sub.iter().enumerate() {
            isum += (sc[k] as i8) as i32 * s;
        }
    }
    isum
}

/// Dequantizes a whole tensor (`n` elements) into a new vector.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    dequantize_row(ty, src, &mut v);
    v
}
