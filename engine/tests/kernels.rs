//! Every dequantizer against a straightforward per-element reference (bit-exact), and every dot
//! kernel (portable and SIMD) against an f64 sum over the dequantized operands, on random blocks
//! including edge scales (zero, subnormal, max, negative).

use engine::cpu::CpuFeatures;
use engine::half::{bf16_to_f32, f16_to_f32};
use engine::kernels;
use engine::quant::{dequantize_row, dot_scalar, quantize_acts, Acts, ActsRef, GgmlType, QK, QK_K};

fn views(a: &[Acts]) -> Vec<ActsRef<'_>> {
    a.iter().map(Acts::view).collect()
}
use engine::sampler::Rng;

const TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// f16 bit patterns used as block scales.
const EDGE_SCALES: [u16; 8] = [0x0000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x3c00, 0xbc00, 0x8001];

fn u16at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Element `i` of a row, computed directly from the format description (no shared code with
/// the engine's dequantizers beyond the f16 conversion, which is tested exhaustively).
fn reference_element(ty: GgmlType, row: &[u8], i: usize) -> f32 {
    match ty {
        GgmlType::F32 => f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap()),
        GgmlType::F16 => f16_to_f32(u16at(row, 2 * i)),
        GgmlType::BF16 => bf16_to_f32(u16at(row, 2 * i)),
        GgmlType::Q4_0 => {
            let b = &row[18 * (i / 32)..];
            let j = i % 32;
            let nib = if j < 16 { b[2 + j] & 15 } else { b[2 + j - 16] >> 4 };
            (nib as i32 - 8) as f32 * f16_to_f32(u16at(b, 0))
        }
        GgmlType::Q5_0 => {
            let b = &row[22 * (i / 32)..];
            let j = i % 32;
            let nib = if j < 16 { b[6 + j] & 15 } else { b[6 + j - 16] >> 4 };
            let qh = u32::from_le_bytes(b[2..6].try_into().unwrap());
            let hi = ((qh >> j) & 1) as i32;
            ((nib as i32 | (hi << 4)) - 16) as f32 * f16_to_f32(u16at(b, 0))
        }
        GgmlType::Q8_0 => {
            let b = &row[34 * (i / 32)..];
            (b[2 + i % 32] as i8) as f32 * f16_to_f32(u16at(b, 0))
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let bs = if ty == GgmlType::Q4_K { 144 } else { 176 };
            let b = &row[bs * (i / 256)..];
            let j = i % 256;
            let sub = j / 32; // 8 sub-blocks of 32
            let s = &b[4..16];
            let (sc, m) = if sub < 4 {
                (s[sub] & 63, s[sub + 4] & 63)
            } else {
                ((s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4), (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4))
            };
            let qoff = if ty == GgmlType::Q4_K { 16 } else { 48 };
            let byte = b[qoff + 32 * (sub / 2) + j % 32];
            let mut q = if sub.is_multiple_of(2) { byte & 15 } else { byte >> 4 } as i32;
            if ty == GgmlType::Q5_K {
                q += (((b[16 + j % 32] >> sub) & 1) as i32) << 4;
            }
            let d = f16_to_f32(u16at(b, 0)) * sc as f32;
            let dm = f16_to_f32(u16at(b, 2)) * m as f32;
            d * q as f32 - dm
        }
        GgmlType::Q6_K => {
            let b = &row[210 * (i / 256)..];
            let j = i % 256;
            let (half, r) = (j / 128, j % 128);
            let (quarter, l) = (r / 32, r % 32);
            let ql = b[64 * half + l + if quarter % 2 == 1 { 32 } else { 0 }];
            let low = if quarter < 2 { ql & 15 } else { ql >> 4 };
            let high = (b[128 + 32 * half + l] >> (2 * quarter)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            let sc = b[192 + 8 * half + 2 * quarter + l / 16] as i8;
            f16_to_f32(u16at(b, 208)) * sc as f32 * q as f32
        }
    }
}

fn random_row(rng: &mut Rng, ty: GgmlType, n: usize, scale: Option<u16>) -> Vec<u8> {
    let mut v: Vec<u8> = (0..ty.row_bytes(n)).map(|_| rng.next_u64() as u8).collect();
    let bb = ty.block_bytes();
    let set = |v: &mut Vec<u8>, at: usize, bits: u16| v[at..at + 2].copy_from_slice(&bits.to_le_bytes());
    for blk in 0..v.len() / bb {
        let o = blk * bb;
        let s = scale.unwrap_or_else(|| 0x2000 + (rng.next_u64() % 0x1000) as u16);
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => set(&mut v, o, s),
            GgmlType::Q4_K | GgmlType::Q5_K => {
                set(&mut v, o, s);
                set(&mut v, o + 2, scale.unwrap_or(0x1800));
            }
            GgmlType::Q6_K => set(&mut v, o + 208, s),
            GgmlType::F32 => {
                let f = (rng.next_f32() - 0.5) * 4.0;
                v[o..o + 4].copy_from_slice(&f.to_le_bytes());
            }
            GgmlType::F16 => set(&mut v, o, (0x3000 + (rng.next_u64() % 0x1000) as u16) | (rng.next_u64() as u16 & 0x8000)),
            GgmlType::BF16 => set(&mut v, o, (0x3e00 + (rng.next_u64() % 0x100) as u16) | (rng.next_u64() as u16 & 0x8000)),
        }
    }
    v
}

#[test]
fn dequantizers_match_reference_bit_exactly() {
    let mut rng = Rng::new(7);
    let n = 2 * QK_K;
    for ty in TYPES {
        let mut scales: Vec<Option<u16>> = vec![None, None, None];
        if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            scales.extend(EDGE_SCALES.iter().map(|&s| Some(s)));
        }
        for sc in scales {
            for _ in 0..20 {
                let row = random_row(&mut rng, ty, n, sc);
                let mut out = vec![0.0f32; n];
                dequantize_row(ty, &row, &mut out);
                for (i, &got) in out.iter().enumerate() {
                    let want = reference_element(ty, &row, i);
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{ty:?} scale {sc:?} element {i}: {got} != {want}"
                    );
                }
            }
        }
    }
}

fn dequant_acts(a: &Acts) -> Vec<f64> {
    match a {
        Acts::F32(v) => v.iter().map(|&x| x as f64).collect(),
        Acts::F16(v) => v.iter().map(|&x| f16_to_f32(x) as f64).collect(),
        Acts::BF16(v) => v.iter().map(|&x| bf16_to_f32(x) as f64).collect(),
        Acts::Q8_0(b) => b.iter().flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)).collect(),
        Acts::Q8K(b) => b.iter().flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)).collect(),
    }
}

#[test]
fn activation_quantizers_roundtrip() {
    let mut rng = Rng::new(9);
    for fmt_ty in [GgmlType::Q8_0, GgmlType::Q4_K] {
        for case in 0..4 {
            let x: Vec<f32> = (0..QK_K)
                .map(|_| match case {
                    0 => 0.0,
                    1 => (rng.next_f32() - 0.5) * 1e-30,
                    2 => (rng.next_f32() - 0.5) * 1e4,
                    _ => rng.next_f32() - 0.5,
                })
                .collect();
            let a = quantize_acts(fmt_ty.act_format(), &x);
            let back = dequant_acts(&a);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            for (b, &v) in back.iter().zip(&x) {
                // Half a quantization step, plus the f16 rounding of the Q8_0 scale (whose
                // subnormal step is 2^-24, times up to 128 quants).
                let f16_err = if fmt_ty == GgmlType::Q8_0 { 128.0 * 6.0e-8 } else { 0.0 };
                let tol = amax / 127.0 * 0.51 + amax * 1e-3 + f16_err;
                assert!((b - v as f64).abs() <= tol, "case {case}: {b} vs {v}");
            }
            if let Acts::Q8K(bl) = &a {
                for blk in bl {
                    for j in 0..16 {
                        let s: i32 = blk.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
                        assert_eq!(s, blk.bsums[j] as i32);
                    }
                }
            }
        }
    }
}

#[test]
fn dot_kernels_match_reference() {
    let mut rng = Rng::new(11);
    let simd = CpuFeatures::detect();
    let n = 4 * QK_K;
    for ty in TYPES {
        let mut scales: Vec<Option<u16>> = vec![None; 6];
        if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            scales.extend(EDGE_SCALES.iter().map(|&s| Some(s)));
        }
        for sc in scales {
            let row = random_row(&mut rng, ty, n, sc);
            let x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 3.0).collect();
            let acts_owned = quantize_acts(ty.act_format(), &x);
            let acts = acts_owned.view();
            let mut w = vec![0.0f32; n];
            dequantize_row(ty, &row, &mut w);
            let a = dequant_acts(&acts_owned);
            let want: f64 = w.iter().zip(&a).map(|(&p, &q)| p as f64 * q).sum();
            let mag: f64 = w.iter().zip(&a).map(|(&p, &q)| (p as f64 * q).abs()).sum();
            for (name, got) in [
                ("scalar", dot_scalar(ty, &row, acts).unwrap()),
                ("dispatch", kernels::dot(simd, ty, &row, acts).unwrap()),
                ("portable", kernels::dot(CpuFeatures::portable(), ty, &row, acts).unwrap()),
            ] {
                let got = got as f64;
                if !want.is_finite() || mag > f32::MAX as f64 / 4.0 {
                    // Max scales: the f32 kernels overflow exactly where the sum leaves f32 range.
                    assert!(!got.is_finite() || got.abs() > f32::MAX as f64 / 64.0 || mag > f32::MAX as f64,
                        "{ty:?} {name} scale {sc:?}: {got} vs {want}");
                    continue;
                }
                let tol = mag * 2e-6 + 1e-30;
                assert!((got - want).abs() <= tol, "{ty:?} {name} scale {sc:?}: {got} vs {want} (tol {tol})");
            }
        }
    }
    assert!(kernels::dot(simd, GgmlType::Q4_K, &[0u8; 144], quantize_acts(engine::quant::ActFormat::Q8_0, &[0.0; 32]).view()).is_none());
}

#[test]
fn f32_helpers_agree() {
    let mut rng = Rng::new(3);
    let simd = CpuFeatures::detect();
    for n in [1usize, 7, 8, 9, 64, 257] {
        let a: Vec<f32> = (0..n).map(|_| rng.next_f32() - 0.5).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.next_f32() - 0.5).collect();
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((kernels::dot_f32(simd, &a, &b) as f64 - want).abs() < 1e-5);
        let mut y1 = b.clone();
        kernels::axpy(simd, 0.75, &a, &mut y1);
        for i in 0..n {
            assert!((y1[i] - (b[i] + 0.75 * a[i])).abs() < 1e-6);
        }
    }
}

/// The portable kernels emulate the AVX2 lanes (and GGML's accumulation order), so both give
/// the same bits: the hypervisor (portable) and the host CLI (AVX2) produce the same tokens.
#[test]
fn portable_and_simd_kernels_are_bit_identical() {
    let mut rng = Rng::new(21);
    let simd = CpuFeatures::detect();
    let n = 4 * QK_K;
    for ty in TYPES {
        for _ in 0..8 {
            let row = random_row(&mut rng, ty, n, None);
            let x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 7.0).collect();
            let acts_owned = quantize_acts(ty.act_format(), &x);
            let acts = acts_owned.view();
            let a = kernels::dot(simd, ty, &row, acts).unwrap();
            let b = kernels::dot(CpuFeatures::portable(), ty, &row, acts).unwrap();
            assert_eq!(a.to_bits(), b.to_bits(), "{ty:?}: {a} vs {b}");
        }
    }
    for len in [8usize, 64, 96, 256, 257, 300] {
        let a: Vec<f32> = (0..len).map(|_| rng.next_f32() - 0.5).collect();
        let b: Vec<f32> = (0..len).map(|_| rng.next_f32() - 0.5).collect();
        let (s, p) = (kernels::dot_f32(simd, &a, &b), kernels::dot_f32(CpuFeatures::portable(), &a, &b));
        assert_eq!(s.to_bits(), p.to_bits());
        let (s, p) = (kernels::dot_f32_vecdot(simd, &a, &b), kernels::dot_f32_vecdot(CpuFeatures::portable(), &a, &b));
        assert_eq!(s.to_bits(), p.to_bits());
    }
    // Softmax numerators: normal range, large negatives (slow path, underflow) and -inf masks.
    let mut x: Vec<f32> = (0..64).map(|i| (rng.next_f32() - 0.5) * 40.0 - (i as f32)).collect();
    x[3] = f32::NEG_INFINITY;
    x[40] = -150.0;
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let (mut xs, mut xp) = (x.clone(), x.clone());
    let ss = kernels::softmax_exp(simd, &mut xs, max);
    let sp = kernels::softmax_exp(CpuFeatures::portable(), &mut xp, max);
    assert_eq!(ss.to_bits(), sp.to_bits());
    for ((a, b), v) in xs.iter().zip(&xp).zip(&x) {
        assert_eq!(a.to_bits(), b.to_bits());
        // GGML's expf is within ~2 ulp of the true value.
        let want = ((*v - max) as f64).exp();
        assert!((*a as f64 - want).abs() <= want * 3e-7 + 1e-38, "{a} vs {want}");
    }
}

/// The multi-token kernels (`dot4`) give the bits of `dot`, on the SIMD and the portable path.
#[test]
fn multi_token_kernels_equal_single_dots() {
    let mut rng = Rng::new(33);
    let n = 4 * QK_K;
    for cpu in [CpuFeatures::detect(), CpuFeatures::portable()] {
        for ty in TYPES {
            let rows: Vec<Vec<u8>> = (0..4).map(|_| random_row(&mut rng, ty, n, None)).collect();
            let acts_owned: Vec<_> = (0..4)
                .map(|_| {
                    let x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 5.0).collect();
                    quantize_acts(ty.act_format(), &x)
                })
                .collect();
            let acts_v = views(&acts_owned);
            let acts = &acts_v[..];
            let got = kernels::dot4(cpu, ty, &rows[0], acts).unwrap();
            for t in 0..4 {
                let want = kernels::dot(cpu, ty, &rows[0], acts[t]).unwrap();
                assert_eq!(got[t].to_bits(), want.to_bits(), "{ty:?} dot4 token {t}");
            }
        }
    }
}

/// `gemv` over 1..=9 rows (full groups of four and the rows left over) gives the bits of `dot`
/// for every row, for each type it has a loop for, and refuses a `w` that is not whole rows.
#[test]
fn gemv_equals_single_dots() {
    let mut rng = Rng::new(34);
    let n = 4 * QK_K;
    let cpu = CpuFeatures::detect();
    let mut covered = 0;
    for ty in TYPES {
        let x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 5.0).collect();
        let acts_owned = quantize_acts(ty.act_format(), &x);
        let acts = acts_owned.view();
        for rows in 1..=9 {
            let data: Vec<Vec<u8>> = (0..rows).map(|_| random_row(&mut rng, ty, n, None)).collect();
            let w: Vec<u8> = data.concat();
            let mut out = vec![f32::NAN; rows];
            if !kernels::gemv(cpu, ty, &w, acts, &mut out) {
                continue;
            }
            covered += 1;
            for (r, row) in data.iter().enumerate() {
                let want = kernels::dot(cpu, ty, row, acts).unwrap();
                assert_eq!(out[r].to_bits(), want.to_bits(), "{ty:?} gemv of {rows} rows, row {r}");
            }
            assert!(!kernels::gemv(cpu, ty, &w[1..], acts, &mut out), "{ty:?}: a partial row is refused");
        }
    }
    // Q8_0, Q4_0, Q5_0, Q4_K and Q6_K have the loop wherever AVX2+FMA exist.
    if cpu.avx2_fma() {
        assert_eq!(covered, 45);
    }
}

/// The llama.cpp multi-row forms (tiled Q6_K, repacked Q4_K GEMM for four tokens): the SIMD and
/// portable paths give the same bits, `dot4_tiled` equals four `dot_tiled`, and both stay close
/// to the one-row kernels (only the rounding order differs).
#[test]
fn tiled_and_gemm_kernels_are_bit_identical_across_paths() {
    let mut rng = Rng::new(45);
    let n = 4 * QK_K;
    let port = CpuFeatures::portable();
    let simd = CpuFeatures::detect();
    for ty in [GgmlType::Q6_K, GgmlType::Q4_K] {
        for _ in 0..6 {
            let row = random_row(&mut rng, ty, n, None);
            let acts_owned: Vec<_> = (0..4)
                .map(|_| {
                    let x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 5.0).collect();
                    quantize_acts(ty.act_format(), &x)
                })
                .collect();
            let acts_v = views(&acts_owned);
            let acts = &acts_v[..];
            let (s4, p4) = if ty == GgmlType::Q6_K {
                for &a in acts {
                    let (s, p) = (kernels::dot_tiled(simd, ty, &row, a).unwrap(), kernels::dot_tiled(port, ty, &row, a).unwrap());
                    assert_eq!(s.to_bits(), p.to_bits(), "{ty:?} dot_tiled: {s} vs {p}");
                }
                (kernels::dot4_tiled(simd, ty, &row, acts).unwrap(), kernels::dot4_tiled(port, ty, &row, acts).unwrap())
            } else {
                assert!(kernels::dot_tiled(simd, ty, &row, acts[0]).is_none());
                (kernels::dot4_gemm(simd, ty, &row, acts).unwrap(), kernels::dot4_gemm(port, ty, &row, acts).unwrap())
            };
            for t in 0..4 {
                assert_eq!(s4[t].to_bits(), p4[t].to_bits(), "{ty:?} token {t}: {} vs {}", s4[t], p4[t]);
                if ty == GgmlType::Q6_K {
                    assert_eq!(s4[t].to_bits(), kernels::dot_tiled(port, ty, &row, acts[t]).unwrap().to_bits());
                }
                let one = kernels::dot(simd, ty, &row, acts[t]).unwrap();
                assert!((one - s4[t]).abs() <= 1e-4 * (1.0 + one.abs()), "{ty:?}: {one} vs {}", s4[t]);
            }
        }
    }
}

/// The panel GEMM for the Q8_0 family (`gemm_q0`) gives the bits of `dot` for every (row,
/// token), with an odd number of rows (the last two-row tile is half used) and two groups of
/// four tokens; it declines (returns false, writes nothing) on the portable path and for
/// other types.
#[test]
fn panel_gemm_equals_single_dots() {
    let mut rng = Rng::new(71);
    let n = 8 * QK;
    let simd = CpuFeatures::detect();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0] {
        let rows: Vec<Vec<u8>> = (0..5).map(|_| random_row(&mut rng, ty, n, None)).collect();
        let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
        let acts_owned: Vec<_> = (0..9)
            .map(|i| {
                // Token 3 is all extremes (every activation quant ±127).
                let x: Vec<f32> = (0..n).map(|j| if i == 3 { if j % 3 == 0 { -1.0 } else { 1.0 } } else { (rng.next_f32() - 0.5) * 5.0 }).collect();
                quantize_acts(ty.act_format(), &x)
            })
            .collect();
        let acts_v = views(&acts_owned);
        let acts = &acts_v[..];
        let stride = 9;
        let mut out = vec![f32::NAN; 5 * stride];
        assert!(!kernels::gemm_q0(CpuFeatures::portable(), ty, &refs, acts, 8, &mut out, stride));
        assert!(out.iter().all(|v| v.is_nan()), "portable path wrote");
        if !simd.avx2_fma() {
            continue;
        }
        assert!(kernels::gemm_q0(simd, ty, &refs, acts, 8, &mut out, stride), "{ty:?}");
        for (r, row) in rows.iter().enumerate() {
            for t in 0..8 {
                let want = kernels::dot(simd, ty, row, acts[t]).unwrap();
                assert_eq!(out[r * stride + t].to_bits(), want.to_bits(), "{ty:?} row {r} token {t}");
            }
            assert!(out[r * stride + 8].is_nan(), "token 8 is outside n4");
        }
    }
    let q6: Vec<u8> = random_row(&mut rng, GgmlType::Q6_K, 256, None);
    let acts_owned = vec![quantize_acts(GgmlType::Q6_K.act_format(), &[0.5; 256]); 4];
    let acts_v = views(&acts_owned);
    let acts = &acts_v[..];
    assert!(!kernels::gemm_q0(simd, GgmlType::Q6_K, &[&q6], acts, 4, &mut [0.0; 4], 4));
}

/// The Q4_K panel GEMM gives the bits of `dot4_gemm` (llama.cpp's repacked GEMM order) for
/// every (row, token), with an odd number of rows and two groups of four tokens; it declines on
/// the portable path and for mismatched activations.
#[test]
fn q4k_panel_gemm_equals_dot4_gemm() {
    let mut rng = Rng::new(72);
    let n = 3 * QK_K;
    let simd = CpuFeatures::detect();
    let ty = GgmlType::Q4_K;
    let rows: Vec<Vec<u8>> = (0..5).map(|_| random_row(&mut rng, ty, n, None)).collect();
    let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
    let acts_owned: Vec<_> = (0..8)
        .map(|i| {
            let x: Vec<f32> = (0..n).map(|j| if i == 5 { if j % 5 == 0 { -2.0 } else { 2.0 } } else { (rng.next_f32() - 0.5) * 5.0 }).collect();
            quantize_acts(ty.act_format(), &x)
        })
        .collect();
    let acts_v = views(&acts_owned);
    let acts = &acts_v[..];
    let stride = 8;
    let mut out = vec![f32::NAN; 5 * stride];
    assert!(!kernels::gemm_q4k(CpuFeatures::portable(), &refs, acts, 8, &mut out, stride));
    assert!(out.iter().all(|v| v.is_nan()), "portable path wrote");
    if !simd.avx2_fma() {
        return;
    }
    assert!(kernels::gemm_q4k(simd, &refs, acts, 8, &mut out, stride));
    for (r, row) in rows.iter().enumerate() {
        for t in (0..8).step_by(4) {
            let want = kernels::dot4_gemm(simd, ty, row, &acts[t..t + 4]).unwrap();
            for k in 0..4 {
                assert_eq!(out[r * stride + t + k].to_bits(), want[k].to_bits(), "row {r} token {}", t + k);
            }
        }
    }
    let q8 = vec![quantize_acts(GgmlType::Q8_0.act_format(), &vec![0.5; n]); 4];
    assert!(!kernels::gemm_q4k(simd, &refs, &views(&q8), 4, &mut out, stride));
}

/// The bandwidth probe's sum is the plain wrapping sum of little-endian words (and the bytes of
/// a last partial word) on every path and length.
#[test]
fn read_sum_is_the_wrapping_sum() {
    let mut rng = Rng::new(9);
    for len in [0usize, 1, 7, 8, 9, 127, 128, 129, 8000, 8003] {
        let v: Vec<u8> = (0..len).map(|_| (rng.next_f32() * 256.0) as u8).collect();
        let words = v.chunks_exact(8);
        let tail: u64 = words.remainder().iter().map(|&b| b as u64).sum();
        let want = words.map(|w| u64::from_le_bytes(w.try_into().unwrap())).fold(tail, |a, b| a.wrapping_add(b));
        assert_eq!(kernels::read_sum(CpuFeatures::detect(), &v), want);
        assert_eq!(kernels::read_sum(CpuFeatures::portable(), &v), want);
    }
}

/// Four interleaved f32 dots give the bits of four `dot_f32`s, with and without a tail.
#[test]
fn dot_f32_x4_equals_four_dots() {
    let mut rng = Rng::new(12);
    for n in [0usize, 7, 8, 256, 261] {
        let a: Vec<f32> = (0..n).map(|_| rng.next_f32() - 0.5).collect();
        let b: Vec<Vec<f32>> = (0..4).map(|_| (0..n).map(|_| (rng.next_f32() - 0.5) * 3.0).collect()).collect();
        for cpu in [CpuFeatures::detect(), CpuFeatures::portable()] {
            let got = kernels::dot_f32_x4(cpu, &a, [&b[0], &b[1], &b[2], &b[3]]).unwrap();
            for k in 0..4 {
                assert_eq!(got[k].to_bits(), kernels::dot_f32(cpu, &a, &b[k]).to_bits(), "n {n} row {k}");
            }
        }
    }
    assert!(kernels::dot_f32_x4(CpuFeatures::detect(), &[1.0; 8], [&[1.0; 8], &[1.0; 8], &[1.0; 7], &[1.0; 8]]).is_none());
}

/// The Q6_K panel GEMM gives the bits of `dot4_tiled` (GGML's tiled order) for every (row,
/// token), with an odd number of rows; it declines on the portable path.
#[test]
fn q6k_panel_gemm_equals_dot4_tiled() {
    let mut rng = Rng::new(73);
    let n = 3 * QK_K;
    let simd = CpuFeatures::detect();
    let ty = GgmlType::Q6_K;
    let rows: Vec<Vec<u8>> = (0..3).map(|_| random_row(&mut rng, ty, n, None)).collect();
    let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
    let acts_owned: Vec<_> = (0..8)
        .map(|i| {
            let x: Vec<f32> = (0..n).map(|j| if i == 2 { if j % 7 == 0 { -3.0 } else { 3.0 } } else { (rng.next_f32() - 0.5) * 5.0 }).collect();
            quantize_acts(ty.act_format(), &x)
        })
        .collect();
    let acts_v = views(&acts_owned);
    let acts = &acts_v[..];
    let stride = 8;
    let mut out = vec![f32::NAN; 3 * stride];
    assert!(!kernels::gemm_q6k_tiled(CpuFeatures::portable(), &refs, acts, 8, &mut out, stride));
    assert!(out.iter().all(|v| v.is_nan()), "portable path wrote");
    if !simd.avx2_fma() {
        return;
    }
    assert!(kernels::gemm_q6k_tiled(simd, &refs, acts, 8, &mut out, stride));
    for (r, row) in rows.iter().enumerate() {
        for t in (0..8).step_by(4) {
            let want = kernels::dot4_tiled(simd, ty, row, &acts[t..t + 4]).unwrap();
            for k in 0..4 {
                assert_eq!(out[r * stride + t + k].to_bits(), want[k].to_bits(), "row {r} token {}", t + k);
            }
        }
    }
}
