//! AVX2 + FMA kernels (filled in below).
use crate::quant::{Acts, GgmlType};

pub fn dot(_ty: GgmlType, _w: &[u8], _acts: &Acts) -> Option<f32> {
    None
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}
