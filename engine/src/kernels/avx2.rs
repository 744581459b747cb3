//! AVX2 + FMA dot products. Each `unsafe fn` here requires AVX2, FMA and F16C; the safe
//! wrappers are only called by [`super::dot`] after a [`crate::cpu::CpuFeatures`] value said
//! so, and such a value with `avx2_fma` set can only be made by detection or by the `unsafe`
//! `CpuFeatures::assume`.

use alloc::vec::Vec;
use core::arch::x86_64::*;

use crate::half::f16_to_f32;
use crate::quant::{scale_min_k4, ActsRef, BlockQ8K, BlockQ8_0, GgmlType};

#[inline]
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Dot product for the types with an AVX2 kernel; `None` for the others (and for mismatched
/// formats or lengths), which then use the portable code.
pub fn dot(ty: GgmlType, w: &[u8], acts: ActsRef<'_>) -> Option<f32> {
    match (ty, acts) {
        (GgmlType::Q8_0, ActsRef::Q8_0(a)) if w.len() == 34 * a.len() => {
            // SAFETY: AVX2/FMA availability is guaranteed by the caller (module docs); the
            // kernel reads only within `w` (34 bytes per block of `a`, checked) and `a`.
            Some(unsafe { dot_q8_0(w, a) })
        }
        (GgmlType::Q4_0, ActsRef::Q8_0(a)) if w.len() == 18 * a.len() => {
            // SAFETY: as above; 18 bytes per block checked.
            Some(unsafe { dot_q4_0(w, a) })
        }
        (GgmlType::Q5_0, ActsRef::Q8_0(a)) if w.len() == 22 * a.len() => {
            // SAFETY: as above; 22 bytes per block checked.
            Some(unsafe { dot_q5_0(w, a) })
        }
        (GgmlType::Q4_K, ActsRef::Q8K(a)) if w.len() == 144 * a.len() => {
            // SAFETY: as above; 144 bytes per block checked.
            Some(unsafe { dot_q4_k(w, a) })
        }
        (GgmlType::Q6_K, ActsRef::Q8K(a)) if w.len() == 210 * a.len() => {
            // SAFETY: as above; 210 bytes per block checked.
            Some(unsafe { dot_q6_k(w, a) })
        }
        _ => None,
    }
}

/// The activation blocks of four rows when all have format `F` and `blocks` blocks.
fn four<'a, T>(acts: &[ActsRef<'a>], blocks: usize, get: impl Fn(ActsRef<'a>) -> Option<&'a [T]>) -> Option<[&'a [T]; 4]> {
    if acts.len() != 4 {
        return None;
    }
    let mut out: [&[T]; 4] = [&[]; 4];
    for (o, a) in out.iter_mut().zip(acts) {
        let s = get(*a)?;
        if s.len() != blocks {
            return None;
        }
        *o = s;
    }
    Some(out)
}

fn q8_0_of(a: ActsRef<'_>) -> Option<&[BlockQ8_0]> {
    match a {
        ActsRef::Q8_0(v) => Some(v),
        _ => None,
    }
}

fn q8k_of(a: ActsRef<'_>) -> Option<&[BlockQ8K]> {
    match a {
        ActsRef::Q8K(v) => Some(v),
        _ => None,
    }
}

/// Dots of one weight row with four activation rows (`acts.len() == 4`), each bit-identical
/// to [`dot`] on that row: every weight block is unpacked once and used for the four tokens,
/// whose accumulators see exactly the operations of the one-token kernels, in the same order.
/// `None` for the types without such a kernel (and mismatched formats or lengths).
pub fn dot4(ty: GgmlType, w: &[u8], acts: &[ActsRef<'_>]) -> Option<[f32; 4]> {
    let bb = ty.block_bytes();
    if bb == 0 || !w.len().is_multiple_of(bb) {
        return None;
    }
    let nb = w.len() / bb;
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let a = four(acts, nb, q8_0_of)?;
            // SAFETY: AVX2/FMA availability is guaranteed by the caller (module docs); `w`
            // holds `nb` blocks of the type's size and every `a[t]` holds `nb` blocks.
            Some(unsafe {
                match ty {
                    GgmlType::Q8_0 => dot4_q0::<0>(w, a),
                    GgmlType::Q4_0 => dot4_q0::<1>(w, a),
                    _ => dot4_q0::<2>(w, a),
                }
            })
        }
        GgmlType::Q4_K => {
            let a = four(acts, nb, q8k_of)?;
            // SAFETY: as above (144-byte blocks, `nb` of them, and `nb` Q8_K blocks per row).
            Some(unsafe { dot4_q4_k(w, a) })
        }
        GgmlType::Q6_K => {
            let a = four(acts, nb, q8k_of)?;
            // SAFETY: as above (210-byte blocks).
            Some(unsafe { dot4_q6_k(w, a) })
        }
        _ => None,
    }
}

/// `out[r] = row_r · a` for the `out.len()` rows stored one after another in `w`, each
/// bit-identical to [`dot`]. Rows go four at a time through one loop (four independent
/// accumulator chains, the activation block loaded once per group), so a long matrix-vector
/// product pays no per-row call, slicing or dispatch; the last `len % 4` rows go one by one.
/// `false` (nothing written) unless `ty` is Q8_0, Q4_0 or Q5_0 with Q8_0 activations and `w`
/// holds exactly `out.len()` rows of whole blocks.
pub fn gemv(ty: GgmlType, w: &[u8], acts: ActsRef<'_>, out: &mut [f32]) -> bool {
    if let ActsRef::Q8K(a) = acts {
        let bb = match ty {
            GgmlType::Q4_K => 144,
            GgmlType::Q6_K => 210,
            _ => return false,
        };
        if w.len() != bb * a.len() * out.len() {
            return false;
        }
        // SAFETY: AVX2/FMA guaranteed by the caller; `w` holds `out.len()` rows of `a.len()`
        // blocks of the type (checked above).
        unsafe {
            if ty == GgmlType::Q4_K {
                gemv_k::<144>(w, a, out)
            } else {
                gemv_k::<210>(w, a, out)
            }
        }
        return true;
    }
    let ActsRef::Q8_0(a) = acts else { return false };
    let bb = match ty {
        GgmlType::Q8_0 => 34,
        GgmlType::Q4_0 => 18,
        GgmlType::Q5_0 => 22,
        _ => return false,
    };
    if w.len() != bb * a.len() * out.len() {
        return false;
    }
    // SAFETY: AVX2/FMA availability is guaranteed by the caller (module docs); `w` holds
    // `out.len()` rows of `a.len()` blocks of the type (checked above).
    unsafe {
        match ty {
            GgmlType::Q8_0 => gemv_q0::<0>(w, a, out),
            GgmlType::Q4_0 => gemv_q0::<1>(w, a, out),
            _ => gemv_q0::<2>(w, a, out),
        }
    }
    true
}

/// The loop of [`gemv`] for Q4_K (`BB` = 144) and Q6_K (210): the one-row kernels, row after
/// row, inlined into one loop (their rows are 4-8 blocks long here, so the per-row call and
/// dispatch were a noticeable part of each).
///
/// # Safety
/// AVX2+FMA present; `w` holds `out.len()` rows of `a.len()` blocks of the type.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_k<const BB: usize>(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    let rb = BB * a.len();
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb.max(1))) {
        // SAFETY: one row of `a.len()` blocks of the type.
        *o = unsafe { if BB == 144 { dot_q4_k(row, a) } else { dot_q6_k(row, a) } };
    }
}

/// The loop of [`gemv`] for Q8_0 (`K` = 0), Q4_0 (1) or Q5_0 (2).
///
/// Q8_0 rows take GGML's sign trick, as in [`dot_q8_0`]. Q4_0/Q5_0 rows stay unsigned (`u`),
/// so `maddubs(u, y)` needs no sign trick, and the offset comes off as the exact integer
/// `off · Σy` per 4-byte lane, computed once per activation block for the four rows. Every lane
/// therefore holds the same integer `Σ (u − off)·y` as in the one-row kernel, which is converted
/// and accumulated in the same order. (`|u·y|` pairs stay below 2·31·127, so `maddubs` never
/// saturates.)
///
/// The four rows of a group are one span of memory, read as four interleaved short streams;
/// the span two groups ahead is prefetched a little per block so the pattern streams at full
/// speed (without it: 6.5 instead of 15 GB/s for the output matrix). Q8_0's prefetch is
/// non-temporal: that is the output matrix's once-per-token stream, which should not push the
/// layers' weights out of the caches (measured 21-24 instead of 17-21 GB/s with two threads).
///
/// # Safety
/// AVX2+FMA present; `w` holds `out.len()` rows of `a.len()` blocks of the type.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q0<const K: u8>(w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
    let bb: usize = [34, 18, 22][K as usize];
    let rb = bb * a.len();
    let span = 4 * rb;
    let off = _mm256_set1_epi8(if K == 1 { 8 } else { 16 });
    let ones = _mm256_set1_epi16(1);
    let step = span.div_ceil(a.len().max(1)).div_ceil(64) * 64;
    let groups = out.len() / 4;
    for (g, o) in out[..4 * groups].chunks_exact_mut(4).enumerate() {
        let grp = &w[span * g..span * (g + 1)];
        let ahead = grp.as_ptr().wrapping_add(2 * span);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (i, y) in a.iter().enumerate() {
            for l in (0..step).step_by(64) {
                // Prefetching is only a hint: it never faults, whatever the address.
                let p = ahead.wrapping_add(i * step + l) as *const i8;
                if K == 0 {
                    _mm_prefetch::<_MM_HINT_NTA>(p);
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(p);
                }
            }
            // SAFETY: y.qs is 32 bytes.
            let qy = unsafe { load32(y.qs.as_ptr() as *const u8) };
            let bias = if K == 0 { _mm256_setzero_si256() } else { _mm256_madd_epi16(_mm256_maddubs_epi16(off, qy), ones) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let b = &grp[r * rb + bb * i..r * rb + bb * (i + 1)];
                let p = if K == 0 {
                    // SAFETY: 32 bytes from offset 2 of the 34-byte block `b`.
                    let qx = unsafe { load32(b.as_ptr().add(2)) };
                    _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx)), ones)
                } else {
                    // SAFETY: `b` is one whole block of the type.
                    let (u, _) = unsafe { unpack_q0u::<K>(b) };
                    _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u, qy), ones), bias)
                };
                let d = _mm256_set1_ps(h2f(le16(b, 0)) * y.d);
                *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
            }
        }
        o.copy_from_slice(&[hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]);
    }
    for (r, o) in out.iter_mut().enumerate().skip(4 * groups) {
        let row = &w[rb * r..rb * (r + 1)];
        // SAFETY: one row of `a.len()` blocks of the type.
        *o = unsafe {
            match K {
                0 => dot_q8_0(row, a),
                1 => dot_q4_0(row, a),
                _ => dot_q5_0(row, a),
            }
        };
    }
}

/// One Q8_0-family block (`K`: 0 = Q8_0, 1 = Q4_0, 2 = Q5_0) as 32 signed quants and its scale.
///
/// # Safety
/// AVX2+FMA present; `b` is one whole block of the type (34, 18 or 22 bytes).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q0<const K: u8>(b: &[u8]) -> (__m256i, f32) {
    let d = h2f(le16(b, 0));
    let q = match K {
        // SAFETY: 32 bytes from offset 2 of a 34-byte block.
        0 => unsafe { load32(b.as_ptr().add(2)) },
        1 => {
            // SAFETY: 16 bytes from offset 2 of an 18-byte block.
            let q = unsafe { nibbles(b.as_ptr().add(2)) };
            _mm256_sub_epi8(q, _mm256_set1_epi8(8))
        }
        _ => {
            let shuf = _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303);
            let bitmask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
            let hb = _mm256_cmpeq_epi8(_mm256_or_si256(spread, bitmask), _mm256_set1_epi8(-1));
            // SAFETY: 16 bytes from offset 6 of a 22-byte block.
            let q = unsafe { nibbles(b.as_ptr().add(6)) };
            let q = _mm256_or_si256(q, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
            _mm256_sub_epi8(q, _mm256_set1_epi8(16))
        }
    };
    (q, d)
}

/// # Safety
/// AVX2+FMA present; `w` is whole blocks of the `K` type, one per block of every `a[t]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_q0<const K: u8>(w: &[u8], a: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    let bb = match K {
        0 => 34,
        1 => 18,
        _ => 22,
    };
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, b) in w.chunks_exact(bb).enumerate() {
        // SAFETY: `b` is one whole block.
        let (qx, dw) = unsafe { unpack_q0::<K>(b) };
        let ax = _mm256_sign_epi8(qx, qx);
        for t in 0..4 {
            let y = &a[t][i];
            // SAFETY: y.qs is 32 bytes.
            let qy = unsafe { load32(y.qs.as_ptr() as *const u8) };
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(qy, qx)), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y.d), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// The shape checks the panel GEMMs share: up to 16 rows of whole `bb`-byte blocks, all with
/// the same count `nb`; `n4` a multiple of four, at most `acts.len()` and `stride`; room in
/// `out` for every row; and the first `n4` activation rows in the format `get` picks, `nb`
/// blocks each. `Some((nb, those rows))` when all hold.
fn panel_shape<'a, T>(
    rows: &[&[u8]],
    acts: &[ActsRef<'a>],
    n4: usize,
    out_len: usize,
    stride: usize,
    bb: usize,
    get: fn(ActsRef<'a>) -> Option<&'a [T]>,
) -> Option<(usize, Vec<&'a [T]>)> {
    let first = rows.first()?;
    if rows.len() > 16 || !n4.is_multiple_of(4) || n4 > acts.len() || n4 > stride || first.len() % bb != 0 {
        return None;
    }
    let nb = first.len() / bb;
    if rows.iter().any(|r| r.len() != nb * bb) || out_len < (rows.len() - 1) * stride + n4 {
        return None;
    }
    let ys = acts[..n4].iter().map(|a| get(*a).filter(|v| v.len() == nb)).collect::<Option<Vec<_>>>()?;
    Some((nb, ys))
}

/// Products of up to 16 weight rows of a Q8_0-family type (`rows`, each `nb` blocks) with the
/// first `n4` (a multiple of four) activation rows: `out[r * stride + t] = dot(rows[r], acts[t])`
/// bit for bit. Each weight block is unpacked once into a panel and then meets every token; the
/// inner tile is two rows by four tokens (eight accumulators), and per (row, token, block) the
/// work is `maddubs`, `madd`, one correction, `cvt`, the scale product and the FMA: Q4_0/Q5_0
/// keep their quants unsigned and take the offset off as the exact per-lane integer
/// `off · Σy` (computed once per token block for all rows), Q8_0 keeps the sign trick. Every
/// lane holds the same integer as in the one-row kernel and every accumulator sees the same
/// FMAs in the same order (GGML's one-accumulator Q8_0-family dot), so the bits are equal.
/// `false` (nothing written) for other types, formats or shapes.
pub fn gemm_q0(ty: GgmlType, rows: &[&[u8]], acts: &[ActsRef<'_>], n4: usize, out: &mut [f32], stride: usize) -> bool {
    let (bb, off) = match ty {
        GgmlType::Q8_0 => (34, 0u8),
        GgmlType::Q4_0 => (18, 8),
        GgmlType::Q5_0 => (22, 16),
        _ => return false,
    };
    if rows.is_empty() {
        return true;
    }
    let Some((nb, ys)) = panel_shape(rows, acts, n4, out.len(), stride, bb, q8_0_of) else { return false };
    // SAFETY: AVX2/FMA/F16C guaranteed by the caller (module docs); the shapes were checked
    // above: every row holds `nb` blocks of `bb` bytes, every `ys[t]` `nb` blocks, and `out`
    // has room for `rows.len()` rows of `stride >= n4` values.
    unsafe { gemm_q0_impl(ty, bb, off, nb, rows, &ys, out, stride) };
    true
}

/// [`gemm_q0`] after its checks.
///
/// # Safety
/// AVX2+FMA+F16C present; the shapes as checked by [`gemm_q0`].
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_q0_impl(ty: GgmlType, bb: usize, off: u8, nb: usize, rows: &[&[u8]], ys: &[&[BlockQ8_0]], out: &mut [f32], stride: usize) {
    let n4 = ys.len();
    // The panel: per (row, block) the bytes maddubs takes unsigned (|q| for Q8_0, the raw
    // quants otherwise), the signs (Q8_0 only) and the weight scale.
    let m = rows.len() * nb;
    let mut u = alloc::vec![[0u8; 32]; m];
    let mut sg = alloc::vec![[0u8; 32]; if off == 0 { m } else { 0 }];
    let mut dw = alloc::vec![0f32; m];
    for (r, row) in rows.iter().enumerate() {
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let k = r * nb + b;
            // SAFETY: AVX2/FMA/F16C guaranteed by the caller (module docs); `blk` is one whole
            // block of the type; the stores go to 32-byte arrays.
            unsafe {
                let (q, d) = match ty {
                    GgmlType::Q8_0 => unpack_q0::<0>(blk),
                    GgmlType::Q4_0 => unpack_q0u::<1>(blk),
                    _ => unpack_q0u::<2>(blk),
                };
                dw[k] = d;
                if off == 0 {
                    _mm256_storeu_si256(u[k].as_mut_ptr() as *mut __m256i, _mm256_sign_epi8(q, q));
                    _mm256_storeu_si256(sg[k].as_mut_ptr() as *mut __m256i, q);
                } else {
                    _mm256_storeu_si256(u[k].as_mut_ptr() as *mut __m256i, q);
                }
            }
        }
    }
    let mut bias = alloc::vec![[0i32; 8]; if off == 0 { 0 } else { 4 * nb }];
    for t in (0..n4).step_by(4) {
        let y = [ys[t], ys[t + 1], ys[t + 2], ys[t + 3]];
        if off != 0 {
            for (j, yt) in y.iter().enumerate() {
                for (b, blk) in yt.iter().enumerate() {
                    // SAFETY: as above; qs is 32 bytes, the store goes to an [i32; 8].
                    unsafe { offset_lanes(off, blk, &mut bias[j * nb + b]) };
                }
            }
        }
        let mut r = 0;
        while r < rows.len() {
            let two = r + 1 < rows.len();
            let r1 = if two { r + 1 } else { r };
            let (ua, ub) = (&u[r * nb..(r + 1) * nb], &u[r1 * nb..(r1 + 1) * nb]);
            let (da, db) = (&dw[r * nb..(r + 1) * nb], &dw[r1 * nb..(r1 + 1) * nb]);
            // SAFETY: as above; every slice holds `nb` entries (checked when built).
            let v = unsafe {
                if off == 0 {
                    tile2x4::<true>([ua, ub], [da, db], [&sg[r * nb..(r + 1) * nb], &sg[r1 * nb..(r1 + 1) * nb]], &[], y, nb)
                } else {
                    tile2x4::<false>([ua, ub], [da, db], [&[], &[]], &bias, y, nb)
                }
            };
            out[r * stride + t..r * stride + t + 4].copy_from_slice(&v[0]);
            if two {
                out[r1 * stride + t..r1 * stride + t + 4].copy_from_slice(&v[1]);
            }
            r += 2;
        }
    }
}

/// One Q4_K super-block unpacked for [`gemm_q4k`]: the low and high nibbles of each 64-value
/// sub-block pair as bytes, the eight 6-bit scales (as the `i16` pairs `maddubs` results are
/// multiplied by) and mins, and the two f16 scales as f32.
#[derive(Clone, Copy)]
struct Q4kPanel {
    q: [[u8; 32]; 8],
    sc: [i16; 8],
    mn: [i32; 8],
    d: f32,
    dmin: f32,
}

/// Products of up to 16 Q4_K rows with the first `n4` (a multiple of four) Q8_K activation
/// rows in llama.cpp's repacked Q4_K GEMM order (`dot4_gemm`), bit for bit: for every output,
/// per super-block and 64-value sub-block pair, `acc = fma(isum, d·d8, acc)` and
/// `accm = fma(msum, dmin·d8, accm)`, result `acc − accm`. The rows' blocks are unpacked once
/// for all tokens; two rows by four tokens form the eight lanes of one vector, so the exact
/// integer sums of eight outputs are reduced together (integer adds: any order is exact) and
/// their FMAs run lane-wise (each lane keeps its own order).
pub fn gemm_q4k(rows: &[&[u8]], acts: &[ActsRef<'_>], n4: usize, out: &mut [f32], stride: usize) -> bool {
    if rows.is_empty() {
        return true;
    }
    let Some((nb, ys)) = panel_shape(rows, acts, n4, out.len(), stride, 144, q8k_of) else { return false };
    // SAFETY: AVX2/FMA/F16C guaranteed by the caller (module docs); shapes checked above.
    unsafe { gemm_q4k_impl(nb, rows, &ys, out, stride) };
    true
}

/// [`gemm_q4k`] after its checks.
///
/// # Safety
/// AVX2+FMA+F16C present; every row holds `nb` 144-byte blocks, every `ys[t]` `nb` blocks,
/// `ys.len()` is a multiple of four and `out` has room for `rows.len()` rows of
/// `stride >= ys.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_q4k_impl(nb: usize, rows: &[&[u8]], ys: &[&[BlockQ8K]], out: &mut [f32], stride: usize) {
    let n4 = ys.len();
    let mut panel: Vec<Q4kPanel> = Vec::with_capacity(rows.len() * nb);
    for row in rows {
        for b in row.chunks_exact(144) {
            let mut p = Q4kPanel { q: [[0; 32]; 8], sc: [0; 8], mn: [0; 8], d: f16_to_f32(le16(b, 0)), dmin: f16_to_f32(le16(b, 2)) };
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &b[4..16]);
                p.sc[j] = sc as i16;
                p.mn[j] = m as i32;
            }
            for c in 0..4 {
                for k in 0..32 {
                    let v = b[16 + 32 * c + k];
                    p.q[2 * c][k] = v & 0xf;
                    p.q[2 * c + 1][k] = v >> 4;
                }
            }
            panel.push(p);
        }
    }
    for t in (0..n4).step_by(4) {
        let y = [ys[t], ys[t + 1], ys[t + 2], ys[t + 3]];
        let mut r = 0;
        while r < rows.len() {
            let two = r + 1 < rows.len();
            let r1 = if two { r + 1 } else { r };
            // SAFETY: AVX2/FMA/F16C guaranteed by the caller (module docs); both panel rows
            // hold `nb` blocks and every `y[t]` `nb` blocks.
            let v = unsafe { q4k_tile2x4([&panel[r * nb..(r + 1) * nb], &panel[r1 * nb..(r1 + 1) * nb]], y) };
            out[r * stride + t..r * stride + t + 4].copy_from_slice(&v[..4]);
            if two {
                out[r1 * stride + t..r1 * stride + t + 4].copy_from_slice(&v[4..]);
            }
            r += 2;
        }
    }
}

/// One Q6_K super-block unpacked for [`gemm_q6k_tiled`]: its unsigned 6-bit quants as
/// [`q6k_unpack`] lays them out, the scale-pair vectors and sign-extended scales of
/// [`q6k_scales`], and `d`.
#[derive(Clone, Copy)]
struct Q6kPanel {
    q: [[__m256i; 4]; 2],
    scv: [__m256i; 8],
    sc16: __m256i,
    d: f32,
}

/// Products of up to 16 Q6_K rows with the first `n4` (a multiple of four) Q8_K activation
/// rows in GGML's tiled order ([`dot4_tiled`]), bit for bit: per super-block the exact integer
/// sum `I`, `res = d·I`, `acc = fma(res, d8, acc)`. Each row's blocks are unpacked once for
/// all tokens; two rows by four tokens make the eight lanes of one vector (integer sums
/// reduced together, the multiply and FMA lane-wise, each lane in its own output's order).
pub fn gemm_q6k_tiled(rows: &[&[u8]], acts: &[ActsRef<'_>], n4: usize, out: &mut [f32], stride: usize) -> bool {
    if rows.is_empty() {
        return true;
    }
    let Some((nb, ys)) = panel_shape(rows, acts, n4, out.len(), stride, 210, q8k_of) else { return false };
    // SAFETY: AVX2/FMA/F16C guaranteed by the caller (module docs); shapes checked above.
    unsafe { gemm_q6k_tiled_impl(nb, rows, &ys, out, stride) };
    true
}

/// [`gemm_q6k_tiled`] after its checks.
///
/// # Safety
/// AVX2+FMA+F16C present; every row holds `nb` 210-byte blocks, every `ys[t]` `nb` blocks,
/// `ys.len()` is a multiple of four and `out` has room for `rows.len()` rows of
/// `stride >= ys.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_q6k_tiled_impl(nb: usize, rows: &[&[u8]], ys: &[&[BlockQ8K]], out: &mut [f32], stride: usize) {
    let n4 = ys.len();
    let mut panel: Vec<Q6kPanel> = Vec::with_capacity(rows.len() * nb);
    for row in rows {
        for b in row.chunks_exact(210) {
            // SAFETY: `b` is one whole block.
            let q = unsafe { q6k_unpack(b) };
            let (scv, sc16) = q6k_scales(b);
            panel.push(Q6kPanel { q, scv, sc16, d: h2f(le16(b, 208)) });
        }
    }
    for t in (0..n4).step_by(4) {
        let y = [ys[t], ys[t + 1], ys[t + 2], ys[t + 3]];
        let mut r = 0;
        while r < rows.len() {
            let two = r + 1 < rows.len();
            let r1 = if two { r + 1 } else { r };
            let (p0, p1) = (&panel[r * nb..(r + 1) * nb], &panel[r1 * nb..(r1 + 1) * nb]);
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let mut v = [_mm256_setzero_si256(); 8];
                for (k, yt) in y.iter().enumerate() {
                    v[k] = q6k_sumi(&p0[i].q, &p0[i].scv, p0[i].sc16, &yt[i]);
                    v[k + 4] = q6k_sumi(&p1[i].q, &p1[i].scv, p1[i].sc16, &yt[i]);
                }
                let isum = _mm256_cvtepi32_ps(hsum8_i32(v));
                let dx = _mm256_set_m128(_mm_set1_ps(p1[i].d), _mm_set1_ps(p0[i].d));
                let d8 = _mm256_setr_ps(y[0][i].d, y[1][i].d, y[2][i].d, y[3][i].d, y[0][i].d, y[1][i].d, y[2][i].d, y[3][i].d);
                acc = _mm256_fmadd_ps(_mm256_mul_ps(dx, isum), d8, acc);
            }
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` is 32 bytes.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
            out[r * stride + t..r * stride + t + 4].copy_from_slice(&lanes[..4]);
            if two {
                out[r1 * stride + t..r1 * stride + t + 4].copy_from_slice(&lanes[4..]);
            }
            r += 2;
        }
    }
}

/// Eight i32 vectors to one vector of their eight lane sums (lane `k` = sum of `v[k]`).
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8_i32(v: [__m256i; 8]) -> __m256i {
    let a0 = _mm256_hadd_epi32(v[0], v[1]);
    let a1 = _mm256_hadd_epi32(v[2], v[3]);
    let a2 = _mm256_hadd_epi32(v[4], v[5]);
    let a3 = _mm256_hadd_epi32(v[6], v[7]);
    let b0 = _mm256_hadd_epi32(a0, a1);
    let b1 = _mm256_hadd_epi32(a2, a3);
    _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(b0, b1), _mm256_permute2x128_si256::<0x31>(b0, b1))
}

/// Two Q4_K panel rows by four tokens (see [`gemm_q4k`]); lanes `4r + t`.
///
/// # Safety
/// AVX2+FMA present; `p[0]`, `p[1]` and every `y[t]` hold the same number of blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_tile2x4(p: [&[Q4kPanel]; 2], y: [&[BlockQ8K]; 4]) -> [f32; 8] {
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    for i in 0..p[0].len() {
        let (w0, w1) = (&p[0][i], &p[1][i]);
        let yd = _mm256_setr_ps(y[0][i].d, y[1][i].d, y[2][i].d, y[3][i].d, y[0][i].d, y[1][i].d, y[2][i].d, y[3][i].d);
        let dd = _mm256_mul_ps(_mm256_set_m128(_mm_set1_ps(w1.d), _mm_set1_ps(w0.d)), yd);
        let dm = _mm256_mul_ps(_mm256_set_m128(_mm_set1_ps(w1.dmin), _mm_set1_ps(w0.dmin)), yd);
        for c in 0..4 {
            // SAFETY: the panel arrays are 32 bytes; the Q8_K quants at 64c and 64c + 32 lie
            // within its 256 bytes.
            let (l0, h0, l1, h1) =
                unsafe { (load32(w0.q[2 * c].as_ptr()), load32(w0.q[2 * c + 1].as_ptr()), load32(w1.q[2 * c].as_ptr()), load32(w1.q[2 * c + 1].as_ptr())) };
            let s = [
                (_mm256_set1_epi16(w0.sc[2 * c]), _mm256_set1_epi16(w0.sc[2 * c + 1])),
                (_mm256_set1_epi16(w1.sc[2 * c]), _mm256_set1_epi16(w1.sc[2 * c + 1])),
            ];
            let mut v = [_mm256_setzero_si256(); 8];
            let mut b1 = [0i32; 8];
            let mut b2 = [0i32; 8];
            for t in 0..4 {
                let yb = &y[t][i];
                // SAFETY: as above.
                let (y1, y2) = unsafe { (load32(yb.qs.as_ptr().add(64 * c) as *const u8), load32(yb.qs.as_ptr().add(64 * c + 32) as *const u8)) };
                for (r, (lo, hi)) in [(l0, h0), (l1, h1)].into_iter().enumerate() {
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y1), s[r].0);
                    let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y2), s[r].1);
                    v[4 * r + t] = _mm256_add_epi32(p1, p2);
                }
                let (s1, s2) = (yb.bsums[4 * c] as i32 + yb.bsums[4 * c + 1] as i32, yb.bsums[4 * c + 2] as i32 + yb.bsums[4 * c + 3] as i32);
                b1[t] = s1;
                b1[t + 4] = s1;
                b2[t] = s2;
                b2[t + 4] = s2;
            }
            let isum = hsum8_i32(v);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), dd, acc);
            let m1 = _mm256_set_m128i(_mm_set1_epi32(w1.mn[2 * c]), _mm_set1_epi32(w0.mn[2 * c]));
            let m2 = _mm256_set_m128i(_mm_set1_epi32(w1.mn[2 * c + 1]), _mm_set1_epi32(w0.mn[2 * c + 1]));
            // SAFETY: [i32; 8] arrays are 32 bytes.
            let (bv1, bv2) = unsafe { (load32(b1.as_ptr() as *const u8), load32(b2.as_ptr() as *const u8)) };
            let msum = _mm256_add_epi32(_mm256_mullo_epi32(m1, bv1), _mm256_mullo_epi32(m2, bv2));
            accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), dm, accm);
        }
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` is 32 bytes.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(acc, accm)) };
    out
}

/// `off · (y[4k] + .. + y[4k+3])` for the eight lanes `k` of one activation block.
///
/// # Safety
/// AVX2 present.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn offset_lanes(off: u8, y: &BlockQ8_0, dst: &mut [i32; 8]) {
    // SAFETY: qs is 32 bytes; dst is 32 bytes.
    unsafe {
        let qy = load32(y.qs.as_ptr() as *const u8);
        let v = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(off as i8), qy), _mm256_set1_epi16(1));
        _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, v);
    }
}

/// Two panel rows by four tokens (see [`gemm_q0`]). `SIGNED`: Q8_0 (`u` = |q|, `sg` = q, no
/// bias); otherwise `u` = unsigned quants and `bias[t * nb + b]` the offset lanes.
///
/// # Safety
/// AVX2+FMA present; `u`, `dw` (and `sg` when `SIGNED`) hold `nb` entries per row, every `y[t]`
/// `nb` blocks, and `bias` (unless `SIGNED`) `4 * nb` entries.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile2x4<const SIGNED: bool>(
    u: [&[[u8; 32]]; 2],
    dw: [&[f32]; 2],
    sg: [&[[u8; 32]]; 2],
    bias: &[[i32; 8]],
    y: [&[BlockQ8_0]; 4],
    nb: usize,
) -> [[f32; 4]; 2] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    for b in 0..nb {
        // SAFETY: `b < nb`, the length of every slice here; the arrays are 32 bytes.
        let w = unsafe { [load32(u[0][b].as_ptr()), load32(u[1][b].as_ptr())] };
        let s = if SIGNED {
            // SAFETY: as above (`sg` holds `nb` entries per row when `SIGNED`).
            unsafe { [load32(sg[0][b].as_ptr()), load32(sg[1][b].as_ptr())] }
        } else {
            w
        };
        let d = [_mm256_set1_ps(dw[0][b]), _mm256_set1_ps(dw[1][b])];
        for t in 0..4 {
            let yb = &y[t][b];
            // SAFETY: qs is 32 bytes.
            let qy = unsafe { load32(yb.qs.as_ptr() as *const u8) };
            let dy = _mm256_set1_ps(yb.d);
            let bs = if SIGNED {
                ones
            } else {
                // SAFETY: `t * nb + b < 4 * nb`, the length of `bias` when not `SIGNED`.
                unsafe { load32(bias[t * nb + b].as_ptr() as *const u8) }
            };
            for r in 0..2 {
                let p = if SIGNED {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(w[r], _mm256_sign_epi8(qy, s[r])), ones)
                } else {
                    _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w[r], qy), ones), bs)
                };
                acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(d[r], dy), _mm256_cvtepi32_ps(p), acc[r][t]);
            }
        }
    }
    let mut out = [[0f32; 4]; 2];
    for r in 0..2 {
        for t in 0..4 {
            out[r][t] = hsum(acc[r][t]);
        }
    }
    out
}

/// The quants of a Q4_0 (`K` = 1) or Q5_0 (`K` = 2) block as *unsigned* bytes (0..15 or
/// 0..31, before the offset 8 or 16 is taken off) and its scale.
///
/// # Safety
/// AVX2+FMA present; `b` is one whole block of the type (18 or 22 bytes).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q0u<const K: u8>(b: &[u8]) -> (__m256i, f32) {
    let d = h2f(le16(b, 0));
    if K == 1 {
        // SAFETY: 16 bytes from offset 2 of an 18-byte block.
        return (unsafe { nibbles(b.as_ptr().add(2)) }, d);
    }
    let shuf = _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303);
    let bitmask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
    let hb = _mm256_cmpeq_epi8(_mm256_or_si256(spread, bitmask), _mm256_set1_epi8(-1));
    // SAFETY: 16 bytes from offset 6 of a 22-byte block.
    let q = unsafe { nibbles(b.as_ptr().add(6)) };
    (_mm256_or_si256(q, _mm256_and_si256(hb, _mm256_set1_epi8(0x10))), d)
}

/// # Safety
/// AVX2+FMA present; `w` is whole 144-byte blocks, one per block of every `a[t]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_q4_k(w: &[u8], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    let mut acc = [0.0f32; 4];
    let mut mins_acc = [0.0f32; 4];
    let m4 = _mm256_set1_epi8(0xf);
    for (i, b) in w.chunks_exact(144).enumerate() {
        let scales = &b[4..16];
        let mut sumi = [_mm256_setzero_si256(); 4];
        let mut msum = [0i32; 4];
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
            // SAFETY: 32 bytes at 16 + 32c (c < 4) lie within the 144-byte block.
            let q = unsafe { load32(b.as_ptr().add(16 + 32 * c)) };
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            let (s1, s2) = (_mm256_set1_epi16(sc1 as i16), _mm256_set1_epi16(sc2 as i16));
            for t in 0..4 {
                let y = &a[t][i];
                msum[t] += m1 as i32 * (y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32)
                    + m2 as i32 * (y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32);
                // SAFETY: the Q8_K quants at 64c and 64c + 32 lie within its 256 bytes.
                let (y1, y2) = unsafe {
                    (load32(y.qs.as_ptr().add(64 * c) as *const u8), load32(y.qs.as_ptr().add(64 * c + 32) as *const u8))
                };
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y1), s1);
                let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y2), s2);
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p1, p2));
            }
        }
        let (d, dmin) = (h2f(le16(b, 0)), h2f(le16(b, 2)));
        for t in 0..4 {
            let yd = a[t][i].d;
            acc[t] = fmaf(hsum_i32(sumi[t]) as f32, d * yd, acc[t]);
            mins_acc[t] = fmaf(msum[t] as f32, dmin * yd, mins_acc[t]);
        }
    }
    [acc[0] - mins_acc[0], acc[1] - mins_acc[1], acc[2] - mins_acc[2], acc[3] - mins_acc[3]]
}

/// The unsigned 6-bit quants of one Q6_K block as GGML's AVX2 kernel unpacks them:
/// `[h][j]` holds values `128h + 32j .. +32`.
///
/// # Safety
/// AVX2 present; `b` is one whole 210-byte block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_unpack(b: &[u8]) -> [[__m256i; 4]; 2] {
    let m4 = _mm256_set1_epi8(0xf);
    let m2 = _mm256_set1_epi8(3);
    let mut out = [[_mm256_setzero_si256(); 4]; 2];
    for (h, o) in out.iter_mut().enumerate() {
        // SAFETY: ql (64 bytes at 64h) and qh (32 bytes at 128 + 32h) lie within the block.
        let (ql0, ql1, qh) =
            unsafe { (load32(b.as_ptr().add(64 * h)), load32(b.as_ptr().add(64 * h + 32)), load32(b.as_ptr().add(128 + 32 * h))) };
        *o = [
            _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2))),
            _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2))),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), m2)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), m2)),
            ),
        ];
    }
    out
}

/// The per-scale-pair vectors (low 8 i16 `sc[2i]`, high 8 `sc[2i+1]`), as GGML's
/// `_mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, get_scale_shuffle(i)))`, and the
/// sign-extended 16 scales.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_scales(b: &[u8]) -> ([__m256i; 8], __m256i) {
    let sc = &b[192..208];
    let mut v = [_mm256_setzero_si256(); 8];
    for (i, o) in v.iter_mut().enumerate() {
        let s_lo = (sc[2 * i] as i8) as i16;
        let s_hi = (sc[2 * i + 1] as i8) as i16;
        *o = _mm256_set_m128i(_mm_set1_epi16(s_hi), _mm_set1_epi16(s_lo));
    }
    let mut s16 = [0i16; 16];
    for (o, &x) in s16.iter_mut().zip(sc) {
        *o = (x as i8) as i16;
    }
    // SAFETY: s16 is 16 i16 = 32 readable bytes.
    let all = unsafe { _mm256_loadu_si256(s16.as_ptr() as *const __m256i) };
    (v, all)
}

/// The eight i32 lanes of GGML's `ggml_vec_dot_q6_K_q8_K` for one block (see
/// `quant::q6k_lane_sums`).
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_sumi(q: &[[__m256i; 4]; 2], scv: &[__m256i; 8], sc16: __m256i, y: &BlockQ8K) -> __m256i {
    // SAFETY: bsums is 16 i16 = 32 readable bytes.
    let q8sums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i) };
    let q8sclsub = _mm256_slli_epi32::<5>(_mm256_madd_epi16(q8sums, sc16));
    let mut sumi = _mm256_setzero_si256();
    for h in 0..2 {
        for j in 0..4 {
            // SAFETY: the 32-byte Q8_K slice at 128h + 32j lies within its 256 quants.
            let yv = unsafe { load32(y.qs.as_ptr().add(128 * h + 32 * j) as *const u8) };
            let p = _mm256_madd_epi16(scv[4 * h + j], _mm256_maddubs_epi16(q[h][j], yv));
            sumi = _mm256_add_epi32(sumi, p);
        }
    }
    _mm256_sub_epi32(sumi, q8sclsub)
}

/// # Safety
/// AVX2+FMA present; `w` is whole 210-byte blocks, one per block of every `a[t]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_q6_k(w: &[u8], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, b) in w.chunks_exact(210).enumerate() {
        // SAFETY: `b` is one whole block.
        let q = unsafe { q6k_unpack(b) };
        let (scv, sc16) = q6k_scales(b);
        let dx = h2f(le16(b, 208));
        for t in 0..4 {
            let y = &a[t][i];
            let sumi = q6k_sumi(&q, &scv, sc16, y);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y.d * dx), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// GGML's tiled Q6_K matmul order (see `quant::dot_tiled_scalar`); `None` for other types.
pub fn dot_tiled(ty: GgmlType, w: &[u8], acts: ActsRef<'_>) -> Option<f32> {
    match (ty, acts) {
        (GgmlType::Q6_K, ActsRef::Q8K(a)) if w.len() == 210 * a.len() => {
            // SAFETY: AVX2/FMA guaranteed by the caller (module docs); 210 bytes per block checked.
            Some(unsafe { dot4_q6_k_tiled_n::<1>(w, [a; 4]) }[0])
        }
        _ => None,
    }
}

/// [`dot_tiled`] for four activation rows.
pub fn dot4_tiled(ty: GgmlType, w: &[u8], acts: &[ActsRef<'_>]) -> Option<[f32; 4]> {
    if ty != GgmlType::Q6_K || !w.len().is_multiple_of(210) {
        return None;
    }
    let a = four(acts, w.len() / 210, q8k_of)?;
    // SAFETY: as above; `w` holds `nb` blocks and every `a[t]` holds `nb` blocks.
    Some(unsafe { dot4_q6_k_tiled_n::<4>(w, a) })
}

/// The first `N` of four tiled Q6_K dots: per block the exact integer sum (the lanes of
/// `q6k_sumi` added), `res = d·I`, `acc = fma(res, d8, acc)`.
///
/// # Safety
/// AVX2+FMA present; `w` is whole 210-byte blocks, one per block of every `a[t]` (t < N).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_q6_k_tiled_n<const N: usize>(w: &[u8], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    let mut acc = [0.0f32; 4];
    for (i, b) in w.chunks_exact(210).enumerate() {
        // SAFETY: `b` is one whole block.
        let q = unsafe { q6k_unpack(b) };
        let (scv, sc16) = q6k_scales(b);
        let dx = h2f(le16(b, 208));
        for t in 0..N {
            let y = &a[t][i];
            let isum = hsum_i32(q6k_sumi(&q, &scv, sc16, y));
            acc[t] = fmaf(dx * isum as f32, y.d, acc[t]);
        }
    }
    acc
}

/// GGML's repacked Q4_K GEMM order for four tokens (see `quant::dot_gemm4_scalar`).
pub fn dot4_gemm(ty: GgmlType, w: &[u8], acts: &[ActsRef<'_>]) -> Option<[f32; 4]> {
    if ty != GgmlType::Q4_K || !w.len().is_multiple_of(144) {
        return None;
    }
    let a = four(acts, w.len() / 144, q8k_of)?;
    // SAFETY: AVX2/FMA guaranteed by the caller (module docs); `w` holds `nb` 144-byte
    // blocks and every `a[t]` holds `nb` blocks.
    Some(unsafe { dot4_q4_k_gemm(w, a) })
}

/// # Safety
/// AVX2+FMA present; `w` is whole 144-byte blocks, one per block of every `a[t]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_q4_k_gemm(w: &[u8], a: [&[BlockQ8K]; 4]) -> [f32; 4] {
    let mut acc = [0.0f32; 4];
    let mut mins_acc = [0.0f32; 4];
    let m4 = _mm256_set1_epi8(0xf);
    for (i, b) in w.chunks_exact(144).enumerate() {
        let scales = &b[4..16];
        let (d, dmin) = (h2f(le16(b, 0)), h2f(le16(b, 2)));
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
            // SAFETY: 32 bytes at 16 + 32c (c < 4) lie within the 144-byte block.
            let q = unsafe { load32(b.as_ptr().add(16 + 32 * c)) };
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            let (s1, s2) = (_mm256_set1_epi16(sc1 as i16), _mm256_set1_epi16(sc2 as i16));
            for t in 0..4 {
                let y = &a[t][i];
                let msum = m1 as i32 * (y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32)
                    + m2 as i32 * (y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32);
                // SAFETY: the Q8_K quants at 64c and 64c + 32 lie within its 256 bytes.
                let (y1, y2) = unsafe {
                    (load32(y.qs.as_ptr().add(64 * c) as *const u8), load32(y.qs.as_ptr().add(64 * c + 32) as *const u8))
                };
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y1), s1);
                let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y2), s2);
                let isum = hsum_i32(_mm256_add_epi32(p1, p2));
                acc[t] = fmaf(isum as f32, d * y.d, acc[t]);
                mins_acc[t] = fmaf(msum as f32, dmin * y.d, mins_acc[t]);
            }
        }
    }
    [acc[0] - mins_acc[0], acc[1] - mins_acc[1], acc[2] - mins_acc[2], acc[3] - mins_acc[3]]
}

/// binary16 to f32 with F16C.
#[target_feature(enable = "avx2,fma,f16c")]
fn h2f(h: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// Horizontal sum of eight f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of products of 32 signed bytes, as eight i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    let p16 = _mm256_maddubs_epi16(ax, sy);
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// Loads 32 bytes.
///
/// # Safety
/// `p` must be valid for reading 32 bytes (any alignment).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// 16 bytes of nibbles expanded to 32 bytes: low nibbles then high nibbles.
///
/// # Safety
/// `p` must be valid for reading 16 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes.
    let q = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let m = _mm_set1_epi8(0xf);
    let lo = _mm_and_si128(q, m);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
    _mm256_set_m128i(hi, lo)
}

/// # Safety
/// AVX2+FMA present; `w.len() == 34 * a.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    // One accumulator, blocks in order (as GGML's `ggml_vec_dot_q8_0_q8_0`), so the float
    // rounding is the same as llama.cpp's.
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(34).zip(a) {
        // SAFETY: a 34-byte block: 32 bytes from offset 2; y.qs is 32 bytes.
        let (qx, qy) = unsafe { (load32(b.as_ptr().add(2)), load32(y.qs.as_ptr() as *const u8)) };
        let d = _mm256_set1_ps(h2f(le16(b, 0)) * y.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(qx, qy)), acc);
    }
    hsum(acc)
}

/// # Safety
/// AVX2+FMA present; `w.len() == 18 * a.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(18).zip(a) {
        // SAFETY: 16 bytes from offset 2 of an 18-byte chunk; y.qs is 32 bytes.
        let (q, qy) = unsafe { (nibbles(b.as_ptr().add(2)), load32(y.qs.as_ptr() as *const u8)) };
        let qx = _mm256_sub_epi8(q, _mm256_set1_epi8(8));
        let d = _mm256_set1_ps(h2f(le16(b, 0)) * y.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(qx, qy)), acc);
    }
    hsum(acc)
}

/// # Safety
/// AVX2+FMA present; `w.len() == 22 * a.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let shuf = _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303);
    let bitmask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    for (b, y) in w.chunks_exact(22).zip(a) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        // Byte e of `hb` is 0xff when bit e of qh is set.
        let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
        let hb = _mm256_cmpeq_epi8(_mm256_or_si256(spread, bitmask), _mm256_set1_epi8(-1));
        // SAFETY: 16 bytes from offset 6 of a 22-byte chunk; y.qs is 32 bytes.
        let (q, qy) = unsafe { (nibbles(b.as_ptr().add(6)), load32(y.qs.as_ptr() as *const u8)) };
        let q = _mm256_or_si256(q, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
        let qx = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        let d = _mm256_set1_ps(h2f(le16(b, 0)) * y.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(qx, qy)), acc);
    }
    hsum(acc)
}

/// # Safety
/// AVX2+FMA present; `w.len() == 144 * a.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_q4_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    let mut mins_acc = 0.0f32;
    let m4 = _mm256_set1_epi8(0xf);
    for (b, y) in w.chunks_exact(144).zip(a) {
        let scales = &b[4..16];
        let mut sumi = _mm256_setzero_si256();
        let mut msum = 0i32;
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
            msum += m1 as i32 * (y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32)
                + m2 as i32 * (y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32);
            // SAFETY: 32 bytes at 16 + 32c (c < 4) lie within the 144-byte block; the Q8_K
            // quants at 64c and 64c + 32 lie within its 256 bytes.
            let (q, y1, y2) = unsafe {
                (
                    load32(b.as_ptr().add(16 + 32 * c)),
                    load32(y.qs.as_ptr().add(64 * c) as *const u8),
                    load32(y.qs.as_ptr().add(64 * c + 32) as *const u8),
                )
            };
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y1), _mm256_set1_epi16(sc1 as i16));
            let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y2), _mm256_set1_epi16(sc2 as i16));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p1, p2));
        }
        // As GGML's repacked Q4_K x8 kernels: the super-block's exact integer sum, scaled
        // by d·d8 (and the mins by dmin·d8) with one fused multiply-add each.
        let isum = hsum_i32(sumi);
        acc = fmaf(isum as f32, h2f(le16(b, 0)) * y.d, acc);
        mins_acc = fmaf(msum as f32, h2f(le16(b, 2)) * y.d, mins_acc);
    }
    acc - mins_acc
}

/// Exact sum of eight i32 lanes (wrapping, as the integer adds).
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Scalar fused multiply-add `a·b + c`.
#[target_feature(enable = "avx2,fma,f16c")]
fn fmaf(a: f32, b: f32, c: f32) -> f32 {
    _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)))
}

/// # Safety
/// AVX2+FMA present; `w.len() == 210 * a.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_q6_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    // GGML's AVX2 `ggml_vec_dot_q6_K_q8_K` (Q6_K is not repacked on x86): exact integer
    // lanes per block, one 8-lane FMA accumulator, `hsum`.
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(210).zip(a) {
        // SAFETY: `b` is one whole block.
        let q = unsafe { q6k_unpack(b) };
        let (scv, sc16) = q6k_scales(b);
        let sumi = q6k_sumi(&q, &scv, sc16, y);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y.d * h2f(le16(b, 208))), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// f32 dot product.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: AVX2/FMA guaranteed by the caller (module docs); bounds handled inside.
    unsafe { dot_f32_avx2(a, b) }
}

/// # Safety
/// AVX2+FMA present.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n <= len of both slices.
        let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i))) };
        acc = _mm256_fmadd_ps(x, y, acc);
        i += 8;
    }
    let mut s = hsum(acc);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// Four f32 dot products of `a` with `b[k]` (all as long as `a`), each bit-identical to
/// [`dot_f32`]: one 8-lane FMA chain per product, the four chains interleaved (one chain alone
/// waits on the FMA latency).
pub fn dot_f32_x4(a: &[f32], b: [&[f32]; 4]) -> Option<[f32; 4]> {
    if b.iter().any(|r| r.len() != a.len()) {
        return None;
    }
    // SAFETY: AVX2/FMA guaranteed by the caller (module docs); lengths checked.
    Some(unsafe { dot_f32_x4_avx2(a, b) })
}

/// # Safety
/// AVX2+FMA present; every `b[k]` is as long as `a`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_x4_avx2(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    let n = a.len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, the length of `a` and of every `b[k]`.
        let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(i)) };
        for k in 0..4 {
            // SAFETY: as above.
            let y = unsafe { _mm256_loadu_ps(b[k].as_ptr().add(i)) };
            acc[k] = _mm256_fmadd_ps(x, y, acc[k]);
        }
        i += 8;
    }
    let mut out = [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])];
    for (k, o) in out.iter_mut().enumerate() {
        for j in i..n {
            *o += a[j] * b[k][j];
        }
    }
    out
}

/// f32 dot product in the order of GGML's AVX2 `ggml_vec_dot_f16`.
pub fn dot_f32_vecdot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: AVX2/FMA guaranteed by the caller (module docs); bounds handled inside.
    unsafe { dot_f32_vecdot_avx2(a, b) }
}

/// # Safety
/// AVX2+FMA present.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_vecdot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, aj) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 <= i + 32 <= n <= len of both slices.
            let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i + 8 * j)), _mm256_loadu_ps(b.as_ptr().add(i + 8 * j))) };
            *aj = _mm256_fmadd_ps(x, y, *aj);
        }
        i += 32;
    }
    let x0 = _mm256_add_ps(acc[0], acc[2]);
    let x1 = _mm256_add_ps(acc[1], acc[3]);
    let x0 = _mm256_add_ps(x0, x1);
    let t0 = _mm_add_ps(_mm256_castps256_ps128(x0), _mm256_extractf128_ps::<1>(x0));
    let t1 = _mm_hadd_ps(t0, t0);
    let mut s = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
    while i < n {
        s += (a[i] * b[i]) as f64;
        i += 1;
    }
    s as f32
}

/// GGML's `ggml_v_expf` (AVX2+FMA) on eight lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn v_expf(x: __m256) -> __m256 {
    let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
    let absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let c = _mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(126.0));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_set1_ps(f32::from_bits(0x3c07_2010)), b, _mm256_set1_ps(f32::from_bits(0x3d2b_9f17))),
            u,
            _mm256_fmadd_ps(_mm256_set1_ps(f32::from_bits(0x3e2a_af33)), b, _mm256_set1_ps(f32::from_bits(0x3eff_fedb))),
        ),
        u,
        _mm256_mul_ps(_mm256_set1_ps(f32::from_bits(0x3f7f_fff6)), b),
    );
    if _mm256_movemask_ps(c) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let d = _mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(192.0));
    _mm256_or_ps(
        _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            d,
            _mm256_or_ps(
                _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// Softmax numerators (see [`super::softmax_exp`]).
pub fn softmax_exp(x: &mut [f32], max: f32) -> f64 {
    assert!(x.len().is_multiple_of(8), "softmax_exp: length {} not a multiple of 8", x.len());
    // SAFETY: AVX2/FMA guaranteed by the caller (module docs); chunks are 8 floats.
    unsafe { softmax_exp_avx2(x, max) }
}

/// # Safety
/// AVX2+FMA present; `x.len()` a multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_exp_avx2(x: &mut [f32], max: f32) -> f64 {
    let mut sum = 0.0f64;
    let m = _mm256_set1_ps(max);
    for g in x.chunks_exact_mut(8) {
        // SAFETY: `g` holds exactly 8 floats, exclusively borrowed.
        let v = unsafe { _mm256_loadu_ps(g.as_ptr()) };
        let e = v_expf(_mm256_sub_ps(v, m));
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(g.as_mut_ptr(), e) };
        sum += hsum(e) as f64;
    }
    sum
}

/// `y += a * x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: AVX2/FMA guaranteed by the caller (module docs); bounds handled inside.
    unsafe { axpy_avx2(a, x, y) }
}

/// # Safety
/// AVX2+FMA present.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n <= len of both slices; `y` is exclusively borrowed.
        unsafe {
            let yv = _mm256_loadu_ps(y.as_ptr().add(i));
            let r = _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), yv);
            _mm256_storeu_ps(y.as_mut_ptr().add(i), r);
        }
        i += 8;
    }
    while i < n {
        y[i] += a * x[i];
        i += 1;
    }
}

/// Reads CPUID/XCR0: (AVX2+FMA+F16C usable, AVX-512 F/BW/VL usable).
pub fn detect() -> (bool, bool) {
    let l1 = __cpuid(1);
    let osxsave = l1.ecx & (1 << 27) != 0;
    if !osxsave {
        return (false, false);
    }
    // SAFETY: OSXSAVE is set, so XGETBV with ECX = 0 is available.
    let xcr0 = unsafe { xgetbv0() };
    let ymm = xcr0 & 0b110 == 0b110;
    let zmm = ymm && xcr0 & 0b1110_0000 == 0b1110_0000;
    let fma = l1.ecx & (1 << 12) != 0;
    let f16c = l1.ecx & (1 << 29) != 0;
    let avx = l1.ecx & (1 << 28) != 0;
    let max_leaf = __cpuid(0).eax;
    let l7 = if max_leaf >= 7 { __cpuid_count(7, 0) } else { CpuidResult { eax: 0, ebx: 0, ecx: 0, edx: 0 } };
    let avx2 = l7.ebx & (1 << 5) != 0;
    let avx512 = l7.ebx & (1 << 16) != 0 && l7.ebx & (1 << 30) != 0 && l7.ebx & (1 << 31) != 0;
    (ymm && avx && avx2 && fma && f16c, zmm && avx512)
}

/// # Safety
/// The CPU must support XGETBV (CPUID.1:ECX.OSXSAVE).
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: the caller checked OSXSAVE.
    unsafe { _xgetbv(0) }
}

/// See [`super::read_sum`].
pub fn read_sum(v: &[u8]) -> u64 {
    // SAFETY: AVX2 guaranteed by the caller (module docs); reads stay within `v`.
    unsafe { read_sum_avx2(v) }
}

/// # Safety
/// AVX2 present.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn read_sum_avx2(v: &[u8]) -> u64 {
    let mut acc = [_mm256_setzero_si256(); 4];
    let chunks = v.chunks_exact(128);
    let tail = chunks.remainder();
    for c in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 128 bytes; 32k..32k+32 is within it.
            *a = _mm256_add_epi64(*a, unsafe { _mm256_loadu_si256(c.as_ptr().add(32 * k) as *const __m256i) });
        }
    }
    let s = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s) };
    lanes.iter().fold(super::read_sum_words(tail), |a, &b| a.wrapping_add(b))
}
