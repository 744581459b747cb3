//! Weight matrices as zero-copy views and the matrix-vector / matrix-matrix products.

use alloc::vec;
use alloc::vec::Vec;

use crate::cpu::CpuFeatures;
use crate::kernels;
use crate::parallel::{split_range, Parallel};
use crate::quant::{quantize_acts, Acts, GgmlType};

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
        assert_eq!(x.len(), n * self.cols);
        assert_eq!(out.len(), n * self.rows);
        let fmt = self.ty.act_format();
        let acts: Vec<Acts> = x.chunks_exact(self.cols).map(|r| quantize_acts(fmt, r)).collect();
        let threads = c.par.threads().max(1);
        // Rows are split among workers; each worker fills its own [rows_i x n] tile, transposed
        // back afterwards (so every worker writes one contiguous chunk).
        let mut tiles: Vec<Vec<f32>> = (0..threads)
            .map(|i| vec![0.0; split_range(self.rows, threads, i, 16).len() * n])
            .collect();
        {
            let slots: Vec<spin::Mutex<&mut Vec<f32>>> =
                tiles.iter_mut().map(spin::Mutex::new).collect();
            let job = |i: usize| {
                let range = split_range(self.rows, threads, i, 16);
                let mut tile = slots[i].lock();
                const RB: usize = 8;
                let mut r0 = range.start;
                while r0 < range.end {
                    let r1 = (r0 + RB).min(range.end);
                    for (t, a) in acts.iter().enumerate() {
                        for r in r0..r1 {
                            let v = kernels::dot(c.cpu, self.ty, self.row(r), a).unwrap_or(f32::NAN);
                            tile[(r - range.start) * n + t] = v;
                        }
                    }
                    r0 = r1;
                }
            };
            c.par.run(&job);
        }
        for (i, tile) in tiles.iter().enumerate() {
            let range = split_range(self.rows, threads, i, 16);
            for (k, r) in range.enumerate() {
                for t in 0..n {
                    out[t * self.rows + r] = tile[k * n + t];
                }
            }
        }
    }
}
