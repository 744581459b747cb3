//! The kernel table (what the hypervisor calls in the hard-float object) gives the bits of the
//! engine's own kernels, on one and on two workers, and refuses arguments that do not describe
//! what they claim without writing anything.

use engine::cpu::CpuFeatures;
use engine::gguf::Gguf;
use engine::host::ThreadPool;
use engine::kernels::table::{KernelTable, RawActs, RawQuant, CALL_BAD_ARGS, CALL_OK, TABLE_VERSION};
use std::sync::atomic::{AtomicUsize, Ordering};
use engine::model::{Model, Session};
use engine::parallel::{Parallel, Serial};
use engine::quant::{quantize_acts, ActFormat, BlockQ8_0, GgmlType};
use engine::tensor::Compute;

fn external() -> CpuFeatures {
    let t = engine_simd::table();
    assert_eq!(t.version, TABLE_VERSION);
    // SAFETY: the table is this crate's, whose functions keep the KernelTable contract; on the
    // host the vector state is the process's own.
    unsafe { CpuFeatures::external(t) }.expect("a table of this version")
}

/// Calls through [`counting`]'s table: rows_into, quantize, dot_f32, dot_f32_x4, softmax_exp,
/// rms_norm, axpy, qk_head, geglu_rows, seq_matvec, seq_row.
static CALLS: [AtomicUsize; 11] = [const { AtomicUsize::new(0) }; 11];

macro_rules! counted {
    ($name:ident, $k:expr, ($($a:ident: $t:ty),*)) => {
        unsafe extern "C" fn $name($($a: $t),*) -> u32 {
            CALLS[$k].fetch_add(1, Ordering::Relaxed);
            // SAFETY: forwarded unchanged: the caller keeps the table's contract.
            unsafe { (engine_simd::table().$name)($($a),*) }
        }
    };
}
counted!(rows_into, 0, (ty: u32, w: *const u8, w_len: usize, rows: usize, cols: usize, acts: *const RawActs, n: usize, lo: usize, hi: usize, tile: *mut f32, tl: usize));
counted!(quantize, 1, (kind: u32, x: *const f32, n: usize, out: *mut u8, len: usize));
counted!(dot_f32, 2, (v: u32, a: *const f32, b: *const f32, n: usize, out: *mut u32));
counted!(dot_f32_x4, 3, (a: *const f32, n: usize, b: *const *const f32, out: *mut f32));
counted!(softmax_exp, 4, (x: *mut f32, n: usize, max: u32, out: *mut u64));
counted!(rms_norm, 5, (x: *mut f32, w: *const f32, n: usize, eps: u32));
counted!(axpy, 6, (a: u32, x: *const f32, y: *mut f32, n: usize));
counted!(qk_head, 7, (x: *mut f32, w: *const f32, n: usize, eps: u32, tab: *const [f32; 2], tl: usize, has: u32, s: u32));
counted!(geglu_rows, 8, (g: *mut f32, u: *const f32, n: usize, table: *const f32, tl: usize));
counted!(seq_matvec, 9, (a: *const f32, k: usize, b: *const f32, n: usize, out: *mut f32));
counted!(seq_row, 10, (op: u32, x: *mut f32, n: usize, y: *const f32, yl: usize, a: u32, b: u32));

/// This crate's table behind counting wrappers.
fn counting() -> CpuFeatures {
    let t: &'static KernelTable = Box::leak(Box::new(KernelTable {
        version: TABLE_VERSION,
        features: engine_simd::table().features,
        rows_into,
        quantize,
        dot_f32,
        dot_f32_x4,
        softmax_exp,
        axpy,
        rms_norm,
        qk_head,
        geglu_rows,
        seq_matvec,
        seq_row,
    }));
    // SAFETY: the wrappers forward to this crate's table unchanged.
    unsafe { CpuFeatures::external(t) }.unwrap()
}

/// Logits of a prompt (one batch) and of the decode steps that follow it.
fn logits(m: &Model<'_>, cpu: CpuFeatures, par: &dyn Parallel, prompt: &[u32], steps: &[u32]) -> Vec<Vec<f32>> {
    let comp = Compute { cpu, par };
    let mut s = Session::new(m, prompt.len() + steps.len() + 1);
    let mut out = vec![s.eval(comp, prompt).unwrap()];
    for &t in steps {
        out.push(s.eval(comp, &[t]).unwrap());
    }
    out
}

#[test]
fn every_route_through_the_table_gives_the_bits_of_the_local_kernels() {
    let bytes = engine::tiny::tiny_gemma3(1);
    let g = Gguf::parse(&bytes).unwrap();
    let m = Model::from_gguf(&g).unwrap();
    // Longer than the sliding window (16), and 21 tokens: full groups of four through the
    // panel GEMMs and a remainder through the one-token kernels.
    let prompt: Vec<u32> = (0..21).map(|i| 2 + (i * 37) % 200).collect();
    let steps = [5, 77, 140, 9];
    // Every route is taken: a table that counts its calls and forwards them sees each kind.
    let counted = logits(&m, counting(), &Serial, &prompt, &steps);
    let local = logits(&m, CpuFeatures::detect(), &Serial, &prompt, &steps);
    assert!(counted.concat().iter().zip(&local.concat()).all(|(x, y)| x.to_bits() == y.to_bits()));
    let calls: Vec<usize> = CALLS.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let names = ["rows_into", "quantize", "dot_f32", "dot_f32_x4", "softmax_exp", "rms_norm", "axpy", "qk_head", "geglu_rows"];
    let calls = &calls[..names.len()];
    // The model uses neither axpy nor the tensor ABI's sequential operations (tested below).
    for (name, n) in names.iter().zip(calls).filter(|(name, _)| **name != "axpy") {
        assert!(*n > 0, "the model never called {name} through the table: {calls:?}");
    }
    let pool = ThreadPool::new(2);
    for (par, what) in [(&Serial as &dyn Parallel, "one worker"), (&pool as &dyn Parallel, "two workers")] {
        let local = logits(&m, CpuFeatures::detect(), par, &prompt, &steps);
        let table = logits(&m, external(), par, &prompt, &steps);
        for (k, (a, b)) in local.iter().zip(&table).enumerate() {
            assert_eq!(a.len(), b.len());
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{what}, step {k}: the table's logits differ from the local kernels'");
            assert!(a.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn the_table_refuses_what_does_not_fit_and_writes_nothing() {
    let t = engine_simd::table();
    let cols = 64;
    let rows = 3;
    let w = vec![0x11u8; GgmlType::Q8_0.row_bytes(cols) * rows];
    let acts = quantize_acts(ActFormat::Q8_0, &[0.5; 64]);
    let raw = [RawActs::of(acts.view())];
    let mut tile = [f32::NAN; 8];
    let call = |ty: u32, w_len: usize, rows: usize, acts: &[RawActs], lo: usize, hi: usize, tile: &mut [f32], tile_len: usize| {
        // SAFETY: every pointer is valid for the lengths passed where those are honest; the
        // dishonest ones are what the table must refuse before touching memory.
        unsafe { (t.rows_into)(ty, w.as_ptr(), w_len, rows, cols, acts.as_ptr(), acts.len(), lo, hi, tile.as_mut_ptr(), tile_len) }
    };
    let q8 = GgmlType::Q8_0.id();
    assert_eq!(call(q8, w.len(), rows, &raw, 0, 3, &mut tile, 8), CALL_OK);
    assert!(tile[..3].iter().all(|v| v.is_finite()) && tile[3..].iter().all(|v| v.is_nan()));
    let before = tile;
    let same = |t: &[f32; 8]| t.iter().zip(&before).all(|(a, b)| a.to_bits() == b.to_bits());
    assert_eq!(call(999, w.len(), rows, &raw, 0, 3, &mut tile, 8), CALL_BAD_ARGS, "unknown type");
    assert_eq!(call(q8, w.len() - 1, rows, &raw, 0, 3, &mut tile, 8), CALL_BAD_ARGS, "bytes short of the rows");
    assert_eq!(call(q8, w.len(), rows + 1, &raw, 0, 4, &mut tile, 8), CALL_BAD_ARGS, "more rows than bytes");
    assert_eq!(call(q8, w.len(), rows, &raw, 2, 4, &mut tile, 8), CALL_BAD_ARGS, "rows past the end");
    assert_eq!(call(q8, w.len(), rows, &raw, 2, 1, &mut tile, 8), CALL_BAD_ARGS, "a reversed range");
    assert_eq!(call(q8, w.len(), rows, &raw, 0, 3, &mut tile, 2), CALL_BAD_ARGS, "a tile too small");
    assert_eq!(call(q8, w.len(), rows, &[], 0, 3, &mut tile, 8), CALL_BAD_ARGS, "no activation rows");
    let bad_format = [RawActs { format: 77, ..raw[0] }];
    assert_eq!(call(q8, w.len(), rows, &bad_format, 0, 3, &mut tile, 8), CALL_BAD_ARGS, "an unknown format");
    let null = [RawActs { ptr: std::ptr::null(), ..raw[0] }];
    assert_eq!(call(q8, w.len(), rows, &null, 0, 3, &mut tile, 8), CALL_BAD_ARGS, "a null row");
    let skewed = [RawActs { ptr: raw[0].ptr.wrapping_add(1), ..raw[0] }];
    assert_eq!(call(q8, w.len(), rows, &skewed, 0, 3, &mut tile, 8), CALL_BAD_ARGS, "a misaligned row");
    let f32_row = [0.25f32; 64];
    let mixed = [raw[0], RawActs::of(engine::quant::ActsRef::F32(&f32_row))];
    assert_eq!(call(q8, w.len(), rows, &mixed, 0, 3, &mut tile, 8), CALL_BAD_ARGS, "rows of two formats");
    assert!(same(&tile), "a refused call wrote to the tile");

    // Quantization: the block count must be what `n` makes.
    let x = [1.0f32; 64];
    let mut out = [BlockQ8_0 { d: 0.0, qs: [0; 32] }; 3];
    // SAFETY: `x` holds 64 floats and `out` 3 blocks; the count passed is the honest 2 or 3.
    let q = |len: usize, out: &mut [BlockQ8_0; 3]| unsafe { (t.quantize)(RawQuant::Q8_0 as u32, x.as_ptr(), 64, out.as_mut_ptr() as *mut u8, len) };
    assert_eq!(q(3, &mut out), CALL_BAD_ARGS, "three blocks for 64 values");
    assert!(out.iter().all(|b| b.d == 0.0));
    assert_eq!(q(2, &mut out), CALL_OK);
    assert_eq!(&out[..2], &engine::quant::quantize_q8_0(&x)[..]);
    // SAFETY: as above; the kind is what is wrong.
    let bad_kind = unsafe { (t.quantize)(9, x.as_ptr(), 64, out.as_mut_ptr() as *mut u8, 2) };
    assert_eq!(bad_kind, CALL_BAD_ARGS);

    // Softmax takes groups of eight; f32 dots need four non-null rows.
    let mut v = [1.0f32; 12];
    let mut sum = 0u64;
    // SAFETY: `v` holds 12 floats and `sum` is a local.
    assert_eq!(unsafe { (t.softmax_exp)(v.as_mut_ptr(), 12, 1.0f32.to_bits(), &mut sum) }, CALL_BAD_ARGS);
    assert!(v.iter().all(|&e| e == 1.0) && sum == 0);
    let rows4 = [f32_row.as_ptr(), f32_row.as_ptr(), std::ptr::null(), f32_row.as_ptr()];
    let mut o4 = [0f32; 4];
    // SAFETY: `f32_row` holds 64 floats; the null row is what is wrong.
    assert_eq!(unsafe { (t.dot_f32_x4)(f32_row.as_ptr(), 64, rows4.as_ptr(), o4.as_mut_ptr()) }, CALL_BAD_ARGS);
    assert_eq!(o4, [0.0; 4]);
}

#[test]
fn the_small_routes_agree_with_the_local_kernels() {
    let ext = counting();
    let local = CpuFeatures::detect();
    let a: Vec<f32> = (0..200).map(|i| ((i * 7919) % 101) as f32 / 37.0 - 1.3).collect();
    let b: Vec<f32> = (0..200).map(|i| ((i * 104_729) % 89) as f32 / 23.0 - 1.9).collect();
    let k = engine::kernels::dot_f32;
    assert_eq!(k(ext, &a, &b).to_bits(), k(local, &a, &b).to_bits());
    let k = engine::kernels::dot_f32_vecdot;
    assert_eq!(k(ext, &a, &b).to_bits(), k(local, &a, &b).to_bits());
    let rows = [&b[..], &a[..], &b[..], &a[..]];
    assert_eq!(engine::kernels::dot_f32_x4(ext, &a, rows), engine::kernels::dot_f32_x4(local, &a, rows));
    let (mut x, mut y) = (a[..192].to_vec(), a[..192].to_vec());
    let (sx, sy) = (engine::kernels::softmax_exp(ext, &mut x, 1.5), engine::kernels::softmax_exp(local, &mut y, 1.5));
    assert_eq!(sx.to_bits(), sy.to_bits());
    assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    let (mut x, mut y) = (b.clone(), b.clone());
    engine::kernels::axpy(ext, 0.37, &a, &mut x);
    engine::kernels::axpy(local, 0.37, &a, &mut y);
    assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    let (mut x, mut y) = (a.clone(), a.clone());
    engine::kernels::rms_norm(ext, &mut x, &b, 1e-6);
    engine::kernels::rms_norm(local, &mut y, &b, 1e-6);
    assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    let tab: Vec<[f32; 2]> = (0..100).map(|i| [((i * 13) % 7) as f32 / 7.0 - 0.5, ((i * 5) % 11) as f32 / 11.0]).collect();
    for scale in [None, Some(0.125f32)] {
        let (mut x, mut y) = (a.clone(), a.clone());
        engine::kernels::qk_head(ext, &mut x, &b, 1e-6, &tab, scale);
        engine::kernels::qk_head(local, &mut y, &b, 1e-6, &tab, scale);
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "qk_head {scale:?}");
    }
    let gelu: Vec<f32> = (0..=u16::MAX).map(|h| f32::from(h % 97) / 50.0 - 1.0).collect();
    let (mut x, mut y) = (a.clone(), a.clone());
    engine::kernels::geglu_rows(ext, &gelu, &mut x, &b);
    engine::kernels::geglu_rows(local, &gelu, &mut y, &b);
    assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    // The tensor ABI's sequential arithmetic.
    let mut o1 = vec![0f32; 7];
    let mut o2 = vec![0f32; 7];
    engine::kernels::seq_matvec(ext, &a[..25], &b[..175], &mut o1);
    engine::kernels::seq_matvec(local, &a[..25], &b[..175], &mut o2);
    assert!(o1.iter().zip(&o2).all(|(p, q)| p.to_bits() == q.to_bits()));
    use engine::seqops::SeqOp;
    for (op, pa, pb) in [(SeqOp::Add, 0.0, 0.0), (SeqOp::Mul, 0.0, 0.0), (SeqOp::Softmax, 0.0, 0.0), (SeqOp::RmsNorm, 1e-5, 0.0), (SeqOp::Rope, 17.0, 10_000.0)] {
        let (mut x, mut y) = (a.clone(), a.clone());
        engine::kernels::seq_row(ext, op, &mut x, &b, pa, pb);
        engine::kernels::seq_row(local, op, &mut y, &b, pa, pb);
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{op:?}");
        assert!(x.iter().zip(&a).any(|(p, q)| p != q), "{op:?} changed nothing");
    }
    let xs: Vec<f32> = (0..512).map(|i| ((i * 31) % 97) as f32 - 48.0).collect();
    for (fmt, gemm4) in [(ActFormat::Q8_0, false), (ActFormat::Q8_K, false), (ActFormat::Q8_K, true)] {
        assert_eq!(engine::kernels::quantize_acts(ext, fmt, &xs, gemm4), engine::kernels::quantize_acts(local, fmt, &xs, gemm4), "{fmt:?} {gemm4}");
    }
    // Each went through the table (counted), not the local code.
    let calls: Vec<usize> = CALLS.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert!(calls[1..].iter().all(|&n| n > 0), "a route was not taken: {calls:?}");
}
