//! Weight matrices as zero-copy views and the matrix-vector / matrix-matrix products.

use alloc::vec;
use alloc::vec::Vec;

use crate::cpu::CpuFeatures;
use crate::kernels;
use crate::parallel::Parallel;
use core::sync::atomic::{AtomicUsize, Ordering};
use crate::quant::{ActFormat, Acts, ActsRef, GgmlType};
use core::ops::Range;

/// Where and how to compute.
#[derive(Clone, Copy)]
pub struct Compute<'p> {
    pub cpu: CpuFeatures,
    pub par: &'p dyn Parallel,
}

/// A row-major matrix of `rows` rows of `cols` elements, each row stored contiguously in GGML
/// blocks (GGUF dims `[cols, rows]`).
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> Matrix<'a> {
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols)
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// `out[r] = row_r · x` for every row.
    pub fn matvec(&self, c: Compute<'_>, x: &[f32], out: &mut [f32]) {
        self.matmul(c, x, 1, out)
    }

    /// `out[t * rows + r] = row_r · x_t` for `n` activation rows `x_t` (each `cols` long).
    pub fn matmul(&self, c: Compute<'_>, x: &[f32], n: usize, out: &mut [f32]) {
        matmul_many(c, &[*self], x, n, &mut [out])
    }

    /// Rows `range` of this matrix against all activation rows into `tile` (`[row][token]`,
    /// `range.len() * acts.len()` values). Groups of four tokens go through [`kernels::dot4`]
    /// (each weight block unpacked once for the four), the remaining tokens through
    /// [`kernels::gemv`] (four rows at a time); both give the bits of [`kernels::dot`].
    /// Through the kernel table where `cpu` has one (see [`kernels::table`]).
    pub fn rows_into(&self, cpu: CpuFeatures, acts: &[ActsRef<'_>], range: Range<usize>, tile: &mut [f32]) {
        if let Some(t) = cpu.table() {
            return t.rows_into(self, acts, range, tile);
        }
        let n = acts.len();
        let n4 = n / 4 * 4;
        const RB: usize = 16;
        // llama.cpp's CPU backend computes products of >= 8 rows with un-repacked K-quant
        // weights (Q6_K) in its tiled matmul, whose rounding differs from `vec_dot`'s.
        let tiled = n >= crate::quant::TILED_MIN_ROWS && crate::quant::has_tiled(self.ty);
        // Q4_K weights are repacked by llama.cpp (Q4_K x8): full groups of four tokens go
        // through its GEMM (`ggml_gemm_q4_K_8x8_q8_K`), the rest through its GEMV.
        let gemm4 = self.ty == GgmlType::Q4_K;
        // One token (a decode): the whole range in one kernel call where the type has one.
        if n == 1 && !tiled {
            let rb = self.row_bytes();
            let w = &self.data[range.start * rb..range.end * rb];
            if kernels::gemv(cpu, self.ty, w, acts[0], &mut tile[..range.len()]) {
                return;
            }
        }
        let mut r0 = range.start;
        while r0 < range.end {
            let r1 = (r0 + RB).min(range.end);
            let panel: Vec<&[u8]> = if n4 > 0 { (r0..r1).map(|r| self.row(r)).collect() } else { Vec::new() };
            let at = (r0 - range.start) * n;
            let done = n4 > 0
                && if gemm4 {
                    kernels::gemm_q4k(cpu, &panel, acts, n4, &mut tile[at..], n)
                } else if tiled {
                    self.ty == GgmlType::Q6_K && kernels::gemm_q6k_tiled(cpu, &panel, acts, n4, &mut tile[at..], n)
                } else {
                    kernels::gemm_q0(cpu, self.ty, &panel, acts, n4, &mut tile[at..], n)
                };
            for t in (0..if done { 0 } else { n4 }).step_by(4) {
                for r in r0..r1 {
                    let v = if gemm4 {
                        kernels::dot4_gemm(cpu, self.ty, self.row(r), &acts[t..t + 4])
                    } else if tiled {
                        kernels::dot4_tiled(cpu, self.ty, self.row(r), &acts[t..t + 4])
                    } else {
                        kernels::dot4(cpu, self.ty, self.row(r), &acts[t..t + 4])
                    };
                    let v = v.unwrap_or([f32::NAN; 4]);
                    let at = (r - range.start) * n + t;
                    tile[at..at + 4].copy_from_slice(&v);
                }
            }
            for (t, &a) in acts.iter().enumerate().skip(n4) {
                if tiled {
                    for r in r0..r1 {
                        tile[(r - range.start) * n + t] = kernels::dot_tiled(cpu, self.ty, self.row(r), a).unwrap_or(f32::NAN);
                    }
                    continue;
                }
                let mut col = [0.0f32; RB];
                let rb = self.row_bytes();
                if kernels::gemv(cpu, self.ty, &self.data[r0 * rb..r1 * rb], a, &mut col[..r1 - r0]) {
                    for (r, v) in (r0..r1).zip(col) {
                        tile[(r - range.start) * n + t] = v;
                    }
                    continue;
                }
                for r in r0..r1 {
                    tile[(r - range.start) * n + t] = kernels::dot(cpu, self.ty, self.row(r), a).unwrap_or(f32::NAN);
                }
            }
            r0 = r1;
        }
    }
}

/// Products of fewer weight bytes × tokens than this run on one worker: a 0.4 MB decode
/// product takes ~40 µs alone, and handing half of it to a spinning worker of the host pool
/// costs a few µs (it was 512 KiB while the pool's workers slept between products).
const PAR_MIN_BYTES: usize = 1 << 17;

/// A worker's share of a one-token product: (matrix, its rows, where their outputs go).
type Pieces<'o> = Vec<(usize, Range<usize>, &'o mut [f32])>;

/// Several matrices with the same `cols` applied to the same `n` activation rows in one
/// parallel region (q/k/v, gate/up): `outs[m][t * rows_m + r] = mats[m].row_r · x_t`. The rows
/// of all matrices are split among the workers as one range, so each worker gets an equal
/// share of the work and [`Parallel::run`] is called once. Activations are quantized once per
/// format.
pub fn matmul_many(c: Compute<'_>, mats: &[Matrix<'_>], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
    assert_eq!(mats.len(), outs.len());
    let Some(first) = mats.first() else { return };
    let cols = first.cols;
    assert_eq!(x.len(), n * cols);
    for (m, o) in mats.iter().zip(outs.iter()) {
        assert_eq!(m.cols, cols);
        assert_eq!(o.len(), n * m.rows);
    }
    // One activation conversion per distinct format.
    let mut fmts: Vec<ActFormat> = Vec::new();
    for m in mats {
        if !fmts.contains(&m.ty.act_format()) {
            fmts.push(m.ty.act_format());
        }
    }
    // Rows in full groups of four meet repacked Q4_K weights through llama.cpp's GEMM, whose
    // activations come from `ggml_quantize_mat_q8_K_4x8` (sign rule on ±max ties).
    let gemm4 = mats.iter().any(|m| m.ty == GgmlType::Q4_K);
    let n4 = n / 4 * 4;
    // Quantized on all workers for a prefill (each token's row is independent).
    let mut slots: Vec<(ActFormat, usize, Option<Acts>)> =
        fmts.iter().flat_map(|&f| (0..n).map(move |t| (f, t, None))).collect();
    crate::parallel::for_each_item(c.par, &mut slots, 8, &|_, (f, t, out)| {
        let r = &x[*t * cols..(*t + 1) * cols];
        *out = Some(kernels::quantize_acts(c.cpu, *f, r, gemm4 && *t < n4));
    });
    let mut slots = slots.into_iter();
    let acts: Vec<Vec<Acts>> = fmts
        .iter()
        .map(|_| slots.by_ref().take(n).map(|(f, _, a)| a.unwrap_or_else(|| crate::quant::quantize_acts(f, &[]))).collect())
        .collect();
    let views: Vec<Vec<ActsRef<'_>>> = acts.iter().map(|v| v.iter().map(Acts::view).collect()).collect();
    let acts_of = |m: &Matrix<'_>| &views[fmts.iter().position(|&f| f == m.ty.act_format()).unwrap_or(0)][..];
    // Global row index space: the matrices one after another.
    let mut offsets = Vec::with_capacity(mats.len() + 1);
    let mut total = 0;
    for m in mats {
        offsets.push(total);
        total += m.rows;
    }
    offsets.push(total);
    // Handing work to other workers has a fixed cost (tens of microseconds for a std thread):
    // small products (decode's per-layer matrices) run on the calling worker alone.
    let bytes: usize = mats.iter().map(|m| m.data.len()).sum();
    let threads = if bytes * n < PAR_MIN_BYTES { 1 } else { c.par.threads().max(1).min(total.div_ceil(16)).max(1) };
    // The rows are cut into chunks (about eight per worker, multiples of 16 rows) that the
    // workers take in turn from a shared counter, as llama.cpp does: a worker slowed by the
    // machine's other work takes fewer chunks instead of holding up the whole product.
    let chunk = if threads == 1 { total.max(1) } else { total.div_ceil(threads * 8).div_ceil(16) * 16 };
    let ranges: Vec<Range<usize>> = (0..total.div_ceil(chunk)).map(|k| k * chunk..((k + 1) * chunk).min(total)).collect();
    let next = AtomicUsize::new(0);
    let run = |job: &(dyn Fn(usize) + Sync)| {
        if threads == 1 {
            job(0)
        } else {
            c.par.run(job)
        }
    };
    if n == 1 {
        // One token: a chunk's `[row][token]` tile is its rows of the outputs themselves, so
        // each chunk's pieces of them are written directly (no tile, no copy: the output
        // matrix's 262,144 logits per decoded token).
        let mut pieces: Vec<Pieces<'_>> = (0..ranges.len()).map(|_| Vec::new()).collect();
        for (mi, o) in outs.iter_mut().enumerate() {
            let mut rest: &mut [f32] = o;
            let mut pos = 0;
            for (range, share) in ranges.iter().zip(pieces.iter_mut()) {
                let (lo, hi) = (range.start.max(offsets[mi]), range.end.min(offsets[mi + 1]));
                if lo >= hi {
                    continue;
                }
                let (lo, hi) = (lo - offsets[mi], hi - offsets[mi]);
                let (head, tail) = core::mem::take(&mut rest).split_at_mut(hi - pos);
                share.push((mi, lo..hi, &mut head[lo - pos..]));
                rest = tail;
                pos = hi;
            }
        }
        let slots: Vec<spin::Mutex<Pieces<'_>>> = pieces.into_iter().map(spin::Mutex::new).collect();
        run(&|_| {
            while let Some(slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) {
                for (mi, range, out) in slot.lock().iter_mut() {
                    let m = &mats[*mi];
                    m.rows_into(c.cpu, acts_of(m), range.clone(), out);
                }
            }
        });
        return;
    }
    // Each chunk fills its own tile ([row][token] over its global rows), copied into the
    // outputs afterwards. The worker that takes a chunk allocates its tile, so the zeroing
    // (megabytes per product for a long prompt) runs in parallel too.
    let mut tiles: Vec<Vec<f32>> = ranges.iter().map(|_| Vec::new()).collect();
    {
        let slots: Vec<spin::Mutex<&mut Vec<f32>>> = tiles.iter_mut().map(spin::Mutex::new).collect();
        run(&|_| loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let (Some(slot), Some(range)) = (slots.get(k), ranges.get(k)) else { break };
            let mut tile = slot.lock();
            **tile = vec![0.0; range.len() * n];
            for (mi, m) in mats.iter().enumerate() {
                let (lo, hi) = (range.start.max(offsets[mi]), range.end.min(offsets[mi + 1]));
                if lo >= hi {
                    continue;
                }
                let at = (lo - range.start) * n;
                let part = &mut tile[at..at + (hi - lo) * n];
                m.rows_into(c.cpu, acts_of(m), lo - offsets[mi]..hi - offsets[mi], part);
            }
        });
    }
    // The copy into the outputs, spread over the workers by groups of 16 tokens (each group's
    // rows of every output are one contiguous slice per matrix).
    const TG: usize = 16;
    let mut groups: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(TG)).map(|_| Vec::with_capacity(mats.len())).collect();
    for (m, o) in mats.iter().zip(outs.iter_mut()) {
        for (gi, chunk) in o.chunks_mut(TG * m.rows).enumerate() {
            groups[gi].push(chunk);
        }
    }
    crate::parallel::for_each_item(c.par, &mut groups, 2, &|gi, dst| {
        let tokens = gi * TG..(gi * TG + TG).min(n);
        for (tile, range) in tiles.iter().zip(&ranges) {
            scatter_tile(tile, range.clone(), n, tokens.clone(), &offsets, mats, dst);
        }
    });
}

/// Copies the tokens `tokens` of a worker's tile (`[row][token]` over the global rows `range`)
/// into `dst` (per matrix, those tokens' rows of its output, `[token][row]`). Rows go in
/// groups of up to 16 within one matrix, so each token gets one short contiguous run: a plain
/// row-by-row transpose stores with a stride of `rows * 4` bytes, which for 2048-row outputs is
/// a multiple of 4 KiB and keeps evicting the same L1 set (it was 6% of a prefill).
fn scatter_tile(
    tile: &[f32],
    range: Range<usize>,
    n: usize,
    tokens: Range<usize>,
    offsets: &[usize],
    mats: &[Matrix<'_>],
    dst: &mut [&mut [f32]],
) {
    let mut g = range.start;
    while g < range.end {
        let mi = offsets.partition_point(|&o| o <= g) - 1;
        let rows = mats[mi].rows;
        let r0 = g - offsets[mi];
        let len = 16.min(range.end - g).min(offsets[mi + 1] - g);
        let k0 = g - range.start;
        for t in tokens.clone() {
            let at = (t - tokens.start) * rows + r0;
            for (j, d) in dst[mi][at..at + len].iter_mut().enumerate() {
                *d = tile[(k0 + j) * n + t];
            }
        }
        g += len;
    }
}
