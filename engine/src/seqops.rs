//! Row operations with exact sequential f32 semantics: the arithmetic of the tensor ABI's
//! operations (see `hypervisor::dispatch::ops`, which streams guest rows through these). Sums
//! run in index order with a separate multiply and add (never fused), and `expf`, `sqrtf`,
//! `powf`, `sinf` and `cosf` are the `libm` crate's, so a guest can reproduce every bit with its
//! own scalar code. Plain IEEE arithmetic: the same bits compiled soft-float (the hypervisor's
//! portable build) or hard-float (the kernel object, reached through
//! [`crate::kernels::seq_matvec`] and [`crate::kernels::seq_row`]).

/// The element-wise and per-row operations of [`seq_row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SeqOp {
    /// `x_i += y_i`.
    Add = 0,
    /// `x_i *= y_i`.
    Mul = 1,
    /// `e_i = expf(x_i − max)`, `x_i = e_i / Σ e` (sum in index order).
    Softmax = 2,
    /// `s = Σ x_i·x_i`, `r = 1 / sqrtf(s / n + eps)`, `x_i = x_i · r · y_i` (`y` the weights).
    RmsNorm = 3,
    /// Rotates the pairs `(i, i + n/2)` by `θ = pos · powf(base, −2i / n)`.
    Rope = 4,
}

impl SeqOp {
    pub fn from_u32(v: u32) -> Option<Self> {
        [Self::Add, Self::Mul, Self::Softmax, Self::RmsNorm, Self::Rope].into_iter().find(|o| *o as u32 == v)
    }
}

/// Sequential f32 dot product: index order, separate multiply and add.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        acc += x * y;
    }
    acc
}

/// `out[j] = dot(a, b[j·k .. (j+1)·k])` with `k = a.len()`, for every `j < out.len()` (`b`
/// holds at least `out.len()` rows of `k`).
pub fn matvec(a: &[f32], b: &[f32], out: &mut [f32]) {
    let k = a.len();
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot(a, &b[j * k..(j + 1) * k]);
    }
}

/// `op` on the row `x` in place. `y`: the other operand (Add, Mul) or the weights (RmsNorm),
/// at least as long as `x`, ignored otherwise; `a`, `b`: `eps` (RmsNorm), or the position and
/// the base (Rope).
pub fn row(op: SeqOp, x: &mut [f32], y: &[f32], a: f32, b: f32) {
    match op {
        SeqOp::Add => x.iter_mut().zip(y).for_each(|(x, y)| *x += y),
        SeqOp::Mul => x.iter_mut().zip(y).for_each(|(x, y)| *x *= y),
        SeqOp::Softmax => {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for v in x.iter_mut() {
                *v = libm::expf(*v - max);
                sum += *v;
            }
            for v in x.iter_mut() {
                *v /= sum;
            }
        }
        SeqOp::RmsNorm => {
            let mut s = 0.0f32;
            for v in x.iter() {
                s += v * v;
            }
            let r = 1.0 / libm::sqrtf(s / x.len() as f32 + a);
            for (v, w) in x.iter_mut().zip(y) {
                *v = *v * r * w;
            }
        }
        SeqOp::Rope => {
            let (pos, base) = (a, b);
            let width = x.len();
            let half = width / 2;
            for p in 0..half {
                let theta = pos * libm::powf(base, -((2 * p) as f32) / width as f32);
                let (s, c) = (libm::sinf(theta), libm::cosf(theta));
                let (x0, x1) = (x[p], x[p + half]);
                x[p] = x0 * c - x1 * s;
                x[p + half] = x0 * s + x1 * c;
            }
        }
    }
}
