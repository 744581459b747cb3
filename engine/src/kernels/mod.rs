//! Dot-product kernels: run-time choice between the portable versions in [`crate::quant`] and
//! the x86-64 SIMD versions. This module and its children are the only places in the crate
//! allowed to use `unsafe` (for `core::arch` intrinsics).
#![allow(unsafe_code)]

// SIMD kernels need an SSE-enabled float ABI: the plain `x86_64-unknown-none` target is
// soft-float, so there (unless the build enables SSE) only the portable kernels exist.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod avx2;
pub mod table;

use crate::cpu::CpuFeatures;
use crate::quant::{dot_scalar, ActFormat, Acts, ActsRef, GgmlType};

/// Dot product of a weight row of type `ty` with converted activations, using the fastest kernel
/// `cpu` allows. `None` if the activation format does not fit the weight type.
#[inline]
pub fn dot(cpu: CpuFeatures, ty: GgmlType, w: &[u8], acts: ActsRef<'_>) -> Option<f32> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        if let Some(v) = avx2::dot(ty, w, acts) {
            return Some(v);
        }
    }
    let _ = cpu;
    dot_scalar(ty, w, acts)
}

/// Dots of one weight row with four activation rows (`acts.len() == 4`): `out[t]` equals
/// `dot(cpu, ty, w, acts[t])` bit for bit (the SIMD kernels unpack each weight block once for
/// the four tokens but keep every token's own accumulation order). `None` as [`dot`].
#[inline]
pub fn dot4(cpu: CpuFeatures, ty: GgmlType, w: &[u8], acts: &[ActsRef<'_>]) -> Option<[f32; 4]> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        if let Some(v) = avx2::dot4(ty, w, acts) {
            return Some(v);
        }
    }
    if acts.len() != 4 {
        return None;
    }
    Some([
        dot(cpu, ty, w, acts[0])?,
        dot(cpu, ty, w, acts[1])?,
        dot(cpu, ty, w, acts[2])?,
        dot(cpu, ty, w, acts[3])?,
    ])
}

/// `out[r] = row_r · acts` for the `out.len()` rows stored one after another in `w`, each equal
/// to [`dot`] bit for bit, in one call (a decode's matrix-vector products). `false` (nothing
/// written) where no such loop exists: the caller then goes row by row.
#[inline]
pub fn gemv(cpu: CpuFeatures, ty: GgmlType, w: &[u8], acts: ActsRef<'_>, out: &mut [f32]) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::gemv(ty, w, acts, out);
    }
    let _ = (cpu, ty, w, acts, out);
    false
}

/// Products of up to 16 weight rows of a Q8_0-family type with the first `n4` (a multiple of
/// four) activation rows into `out[r * stride + t]`, each equal to [`dot`] bit for bit, with the
/// weight blocks unpacked once for all tokens. `false` (nothing written) where no such kernel
/// exists (the portable path, other types): the caller then uses [`dot4`].
#[inline]
pub fn gemm_q0(cpu: CpuFeatures, ty: GgmlType, rows: &[&[u8]], acts: &[ActsRef<'_>], n4: usize, out: &mut [f32], stride: usize) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::gemm_q0(ty, rows, acts, n4, out, stride);
    }
    let _ = (cpu, ty, rows, acts, n4, out, stride);
    false
}

/// Products of up to 16 Q4_K weight rows with the first `n4` (a multiple of four) activation
/// rows into `out[r * stride + t]`, each equal to [`dot4_gemm`] (llama.cpp's repacked Q4_K
/// GEMM order) bit for bit, with the weight blocks unpacked once for all tokens. `false`
/// (nothing written) where no such kernel exists: the caller then uses [`dot4_gemm`].
#[inline]
pub fn gemm_q4k(cpu: CpuFeatures, rows: &[&[u8]], acts: &[ActsRef<'_>], n4: usize, out: &mut [f32], stride: usize) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::gemm_q4k(rows, acts, n4, out, stride);
    }
    let _ = (cpu, rows, acts, n4, out, stride);
    false
}

/// Products of up to 16 Q6_K weight rows with the first `n4` (a multiple of four) activation
/// rows into `out[r * stride + t]`, each equal to [`dot4_tiled`] (GGML's tiled K-quant order)
/// bit for bit, with the weight blocks unpacked once for all tokens. `false` (nothing
/// written) where no such kernel exists: the caller then uses [`dot4_tiled`].
#[inline]
pub fn gemm_q6k_tiled(cpu: CpuFeatures, rows: &[&[u8]], acts: &[ActsRef<'_>], n4: usize, out: &mut [f32], stride: usize) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::gemm_q6k_tiled(rows, acts, n4, out, stride);
    }
    let _ = (cpu, rows, acts, n4, out, stride);
    false
}

/// Dot product in the order of GGML's tiled K-quant matmul (see
/// [`crate::quant::dot_tiled_scalar`]), bit-identical on every path. `None` for the types
/// without a tiled form.
#[inline]
pub fn dot_tiled(cpu: CpuFeatures, ty: GgmlType, w: &[u8], acts: ActsRef<'_>) -> Option<f32> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        if let Some(v) = avx2::dot_tiled(ty, w, acts) {
            return Some(v);
        }
    }
    let _ = cpu;
    crate::quant::dot_tiled_scalar(ty, w, acts)
}

/// [`dot_tiled`] of one weight row with four activation rows, bit for bit.
#[inline]
pub fn dot4_tiled(cpu: CpuFeatures, ty: GgmlType, w: &[u8], acts: &[ActsRef<'_>]) -> Option<[f32; 4]> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        if let Some(v) = avx2::dot4_tiled(ty, w, acts) {
            return Some(v);
        }
    }
    if acts.len() != 4 {
        return None;
    }
    Some([
        dot_tiled(cpu, ty, w, acts[0])?,
        dot_tiled(cpu, ty, w, acts[1])?,
        dot_tiled(cpu, ty, w, acts[2])?,
        dot_tiled(cpu, ty, w, acts[3])?,
    ])
}

/// Dots of one weight row with four activation rows in the order of GGML's repacked AVX2
/// GEMM (see [`crate::quant::dot_gemm4_scalar`]), bit-identical on every path. `None` for
/// the types without that form (only Q4_K has one).
#[inline]
pub fn dot4_gemm(cpu: CpuFeatures, ty: GgmlType, w: &[u8], acts: &[ActsRef<'_>]) -> Option<[f32; 4]> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        if let Some(v) = avx2::dot4_gemm(ty, w, acts) {
            return Some(v);
        }
    }
    let _ = cpu;
    if acts.len() != 4 {
        return None;
    }
    let d = |t: usize| crate::quant::dot_gemm4_scalar(ty, w, acts[t]);
    Some([d(0)?, d(1)?, d(2)?, d(3)?])
}

/// CPUID-based detection: (AVX2+FMA+F16C, AVX-512 F/BW/VL).
pub fn detect() -> (bool, bool) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return avx2::detect();
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    (false, false)
}

/// f32 dot product (attention scores, small vectors).
#[inline]
pub fn dot_f32(cpu: CpuFeatures, a: &[f32], b: &[f32]) -> f32 {
    if let Some(t) = cpu.table() {
        return t.dot_f32(a, b, false);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::dot_f32(a, b);
    }
    let _ = cpu;
    crate::quant::dot_f32_lanes(a, b)
}

/// Four [`dot_f32`]s of `a` with the rows `b[k]` (each as long as `a`), bit-identical to four
/// calls, run side by side where SIMD allows. `None` if a length differs.
#[inline]
pub fn dot_f32_x4(cpu: CpuFeatures, a: &[f32], b: [&[f32]; 4]) -> Option<[f32; 4]> {
    if let Some(t) = cpu.table() {
        return t.dot_f32_x4(a, b);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::dot_f32_x4(a, b);
    }
    let _ = cpu;
    if b.iter().any(|r| r.len() != a.len()) {
        return None;
    }
    Some(b.map(|r| crate::quant::dot_f32_lanes(a, r)))
}

/// f32 dot product in the order of GGML's `ggml_vec_dot_f16` (see
/// [`crate::quant::dot_f32_vecdot_lanes`]), bit-identical on every path.
#[inline]
pub fn dot_f32_vecdot(cpu: CpuFeatures, a: &[f32], b: &[f32]) -> f32 {
    if let Some(t) = cpu.table() {
        return t.dot_f32(a, b, true);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::dot_f32_vecdot(a, b);
    }
    let _ = cpu;
    crate::quant::dot_f32_vecdot_lanes(a, b)
}

/// Softmax numerators in place, `x[i] = exp(x[i] − max)` with GGML's vectorised `expf`, in
/// groups of eight (`x.len()` a multiple of 8); returns their sum (f32 per group, f64 across
/// groups), bit-identical on every path (see [`crate::quant::softmax_exp_lanes`]).
#[inline]
pub fn softmax_exp(cpu: CpuFeatures, x: &mut [f32], max: f32) -> f64 {
    if let Some(t) = cpu.table() {
        return t.softmax_exp(x, max);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::softmax_exp(x, max);
    }
    let _ = cpu;
    crate::quant::softmax_exp_lanes(x, max)
}

/// `y += a * x` over f32 slices.
#[inline]
pub fn axpy(cpu: CpuFeatures, a: f32, x: &[f32], y: &mut [f32]) {
    if let Some(t) = cpu.table() {
        return t.axpy(a, x, y);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::axpy(a, x, y);
    }
    let _ = cpu;
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

/// RMSNorm in place ([`crate::model::rms_norm`]), through the kernel table where there is one.
#[inline]
pub fn rms_norm(cpu: CpuFeatures, x: &mut [f32], w: &[f32], eps: f32) {
    match cpu.table() {
        Some(t) => t.rms_norm(x, w, eps),
        None => crate::model::rms_norm(x, w, eps),
    }
}

/// A query or key head's QK-norm, RoPE and scale ([`crate::model::qk_head`]), through the
/// kernel table where there is one.
#[inline]
pub fn qk_head(cpu: CpuFeatures, x: &mut [f32], w: &[f32], eps: f32, tab: &[[f32; 2]], scale: Option<f32>) {
    match cpu.table() {
        Some(t) => t.qk_head(x, w, eps, tab, scale),
        None => crate::model::qk_head(x, w, eps, tab, scale),
    }
}

/// GeGLU over a row ([`crate::model::geglu_rows`]), through the kernel table where there is one.
#[inline]
pub fn geglu_rows(cpu: CpuFeatures, table: &[f32], g: &mut [f32], u: &[f32]) {
    match cpu.table() {
        Some(t) => t.geglu_rows(table, g, u),
        None => crate::model::geglu_rows(table, g, u),
    }
}

/// [`crate::seqops::matvec`] (exact sequential dots), through the kernel table where there is
/// one.
#[inline]
pub fn seq_matvec(cpu: CpuFeatures, a: &[f32], b: &[f32], out: &mut [f32]) {
    match cpu.table() {
        Some(t) => t.seq_matvec(a, b, out),
        None => crate::seqops::matvec(a, b, out),
    }
}

/// [`crate::seqops::row`], through the kernel table where there is one.
#[inline]
pub fn seq_row(cpu: CpuFeatures, op: crate::seqops::SeqOp, x: &mut [f32], y: &[f32], a: f32, b: f32) {
    match cpu.table() {
        Some(t) => t.seq_row(op, x, y, a, b),
        None => crate::seqops::row(op, x, y, a, b),
    }
}

/// Converts an activation row into the format `fmt` ([`crate::quant::quantize_acts`]; with
/// `gemm4`, Q8_K rows as [`crate::quant::quantize_q8_k_4x8`] makes them), the quantizing
/// formats through the kernel table where there is one.
pub fn quantize_acts(cpu: CpuFeatures, fmt: ActFormat, x: &[f32], gemm4: bool) -> Acts {
    match (cpu.table(), fmt) {
        (Some(t), ActFormat::Q8_0) => Acts::Q8_0(t.quantize_q8_0(x)),
        (Some(t), ActFormat::Q8_K) => Acts::Q8K(t.quantize_q8_k(x, gemm4)),
        (_, ActFormat::Q8_K) if gemm4 => Acts::Q8K(crate::quant::quantize_q8_k_4x8(x)),
        _ => crate::quant::quantize_acts(fmt, x),
    }
}

/// Wrapping sum of `v` read as little-endian u64 words (a last partial word adds its bytes one
/// by one), with AVX2 loads (four independent 256-bit accumulators) where `cpu` allows: a memory
/// read-bandwidth probe that the adds cannot hold back, so the decode bandwidth bound
/// (`tvgen --membw`) measures what the memory gives. The same value on every path (wrapping
/// addition is associative and commutative).
pub fn read_sum(cpu: CpuFeatures, v: &[u8]) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if cpu.avx2_fma() {
        return avx2::read_sum(v);
    }
    let _ = cpu;
    read_sum_words(v)
}

/// The portable [`read_sum`] (also the AVX2 path's tail).
fn read_sum_words(v: &[u8]) -> u64 {
    let words = v.chunks_exact(8);
    let tail = words.remainder().iter().map(|&b| u64::from(b));
    words.map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])).chain(tail).fold(0u64, u64::wrapping_add)
}
