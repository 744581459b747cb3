//! Tensor operations over registered guest memory.
//!
//! The arithmetic is [`engine::seqops`], run through the engine's kernels (the hypervisor's
//! hard-float kernel object when it is linked; the same bits either way).
//!
//! Operands are streamed row by row from where the guest put them (through the checked
//! [`GuestMemory`] accessors) into f32 working rows, and results are written back in place. The
//! arithmetic is specified so a guest can check results bit for bit with its own scalar code:
//! f32 throughout, sums accumulated sequentially in index order with separate multiply and add
//! (no fused multiply-add), `exp`, `sqrt`, `pow`, `sin` and `cos` from the `libm` crate (musl's
//! algorithms), f16/bf16 converted with round-to-nearest-even, Q8_0 dequantized as
//! `scale(f16) * q`.
//! - `Matmul`: `out[.., m, n] = Σ_k a[.., m, k] * b[.., n, k]`.
//! - `Add`, `Mul`: element-wise.
//! - `Softmax` (last dimension): `e_i = expf(x_i - max)`, `out_i = e_i / Σ e`.
//! - `RmsNorm` (last dimension): `s = Σ x_i * x_i`, `r = 1 / sqrtf(s / n + eps)`,
//!   `out_i = x_i * r * w_i`; `eps` = `params[0]` as f32 bits.
//! - `Rope` (last dimension `d`, pairs `(i, i + d/2)`): the row's position is `params[0]` plus
//!   its index along dimension `rank - 2` (0 for rank 1); `theta = pos * powf(base, -(2i)/d)` with
//!   `base` = `params[1]` as f32 bits; `out_i = x_i cosθ - x_{i+d/2} sinθ`,
//!   `out_{i+d/2} = x_i sinθ + x_{i+d/2} cosθ`.

use super::{GuestMemory, Tensor};
use alloc::vec;
use alloc::vec::Vec;
use engine::cpu::CpuFeatures;
use engine::half::{bf16_to_f32, f16_to_f32, f32_to_f16};
use engine::kernels::{seq_matvec, seq_row};
use engine::seqops::SeqOp;
use tensor_hcall::desc::{DType, OpCode};
use tensor_hcall::HcallError;

/// The element offsets of every row start (last index 0) of a tensor, in row-major order.
fn row_offsets(t: &Tensor) -> Vec<u64> {
    let l = &t.layout;
    let lead = &l.shape[..l.rank - 1];
    let rows: u64 = lead.iter().product();
    let mut out = Vec::with_capacity(rows as usize);
    for mut r in 0..rows {
        let mut off = 0;
        for k in (0..l.rank - 1).rev() {
            off += (r % l.shape[k]) * l.strides[k];
            r /= l.shape[k];
        }
        out.push(off);
    }
    out
}

fn elem_size(d: DType) -> u64 {
    d.block_bytes()
}

/// Reads the row starting at element offset `row` into `buf` (length = the last dimension).
fn load_row(t: &Tensor, row: u64, buf: &mut [f32], mem: &dyn GuestMemory) -> Result<(), HcallError> {
    let l = &t.layout;
    let base = t.region_gpa + l.offset;
    let stride = l.strides[l.rank - 1];
    match l.dtype {
        DType::Q8_0 => {
            let blocks = buf.len() / 32;
            let mut bytes = vec![0u8; blocks * 34];
            mem.read(base + row / 32 * 34, &mut bytes)?;
            for (b, out) in bytes.chunks_exact(34).zip(buf.chunks_exact_mut(32)) {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                for (o, &q) in out.iter_mut().zip(&b[2..]) {
                    *o = d * f32::from(q as i8);
                }
            }
        }
        dt => {
            let size = elem_size(dt);
            let decode = |c: &[u8]| -> f32 {
                match dt {
                    DType::F16 => f16_to_f32(u16::from_le_bytes([c[0], c[1]])),
                    DType::Bf16 => bf16_to_f32(u16::from_le_bytes([c[0], c[1]])),
                    DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
                    DType::U32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
                    _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                }
            };
            if stride == 1 {
                let mut bytes = vec![0u8; buf.len() * size as usize];
                mem.read(base + row * size, &mut bytes)?;
                for (o, c) in buf.iter_mut().zip(bytes.chunks_exact(size as usize)) {
                    *o = decode(c);
                }
            } else {
                let mut c = [0u8; 4];
                for (i, o) in buf.iter_mut().enumerate() {
                    mem.read(base + (row + i as u64 * stride) * size, &mut c[..size as usize])?;
                    *o = decode(&c);
                }
            }
        }
    }
    Ok(())
}

/// Writes `vals` as the row starting at element offset `row` of `out` (F32 or F16).
fn store_row(out: &Tensor, row: u64, vals: &[f32], mem: &dyn GuestMemory) -> Result<(), HcallError> {
    let l = &out.layout;
    let base = out.region_gpa + l.offset;
    let size = elem_size(l.dtype);
    let encode = |v: f32, c: &mut [u8]| match l.dtype {
        DType::F16 => c.copy_from_slice(&f32_to_f16(v).to_le_bytes()),
        _ => c.copy_from_slice(&v.to_le_bytes()),
    };
    let stride = l.strides[l.rank - 1];
    if stride == 1 {
        let mut bytes = vec![0u8; vals.len() * size as usize];
        for (c, &v) in bytes.chunks_exact_mut(size as usize).zip(vals) {
            encode(v, c);
        }
        mem.write(base + row * size, &bytes)
    } else {
        let mut c = [0u8; 4];
        for (i, &v) in vals.iter().enumerate() {
            encode(v, &mut c[..size as usize]);
            mem.write(base + (row + i as u64 * stride) * size, &c[..size as usize])?;
        }
        Ok(())
    }
}


fn last(t: &Tensor) -> usize {
    t.layout.shape[t.layout.rank - 1] as usize
}

/// Runs `op`; returns the output's size in bytes.
pub fn run(op: OpCode, ins: &[Tensor], out: &Tensor, params: [u64; 2], mem: &dyn GuestMemory, cpu: CpuFeatures) -> Result<u64, HcallError> {
    let out_rows = row_offsets(out);
    let width = last(out);
    let mut row = vec![0.0f32; width];
    match op {
        OpCode::Matmul => {
            let (a, b) = (&ins[0], &ins[1]);
            let r = a.layout.rank;
            let (m, n, k) = (a.layout.shape[r - 2] as usize, b.layout.shape[r - 2] as usize, last(a));
            let (a_rows, b_rows) = (row_offsets(a), row_offsets(b));
            let mut a_row = vec![0.0f32; k];
            let mut b_mat = vec![0.0f32; n * k];
            for batch in 0..a_rows.len() / m.max(1) {
                for j in 0..n {
                    load_row(b, b_rows[batch * n + j], &mut b_mat[j * k..(j + 1) * k], mem)?;
                }
                for i in 0..m {
                    load_row(a, a_rows[batch * m + i], &mut a_row, mem)?;
                    seq_matvec(cpu, &a_row, &b_mat, &mut row);
                    store_row(out, out_rows[batch * m + i], &row, mem)?;
                }
            }
        }
        OpCode::Add | OpCode::Mul => {
            let (a, b) = (&ins[0], &ins[1]);
            let (a_rows, b_rows) = (row_offsets(a), row_offsets(b));
            let mut other = vec![0.0f32; width];
            for (i, &o) in out_rows.iter().enumerate() {
                load_row(a, a_rows[i], &mut row, mem)?;
                load_row(b, b_rows[i], &mut other, mem)?;
                seq_row(cpu, if op == OpCode::Add { SeqOp::Add } else { SeqOp::Mul }, &mut row, &other, 0.0, 0.0);
                store_row(out, o, &row, mem)?;
            }
        }
        OpCode::Softmax => {
            let a_rows = row_offsets(&ins[0]);
            for (i, &o) in out_rows.iter().enumerate() {
                load_row(&ins[0], a_rows[i], &mut row, mem)?;
                seq_row(cpu, SeqOp::Softmax, &mut row, &[], 0.0, 0.0);
                store_row(out, o, &row, mem)?;
            }
        }
        OpCode::RmsNorm => {
            let eps = f32::from_bits(params[0] as u32);
            let a_rows = row_offsets(&ins[0]);
            let mut w = vec![0.0f32; width];
            load_row(&ins[1], 0, &mut w, mem)?;
            for (i, &o) in out_rows.iter().enumerate() {
                load_row(&ins[0], a_rows[i], &mut row, mem)?;
                seq_row(cpu, SeqOp::RmsNorm, &mut row, &w, eps, 0.0);
                store_row(out, o, &row, mem)?;
            }
        }
        OpCode::Rope => {
            let a = &ins[0];
            let base = f32::from_bits(params[1] as u32);
            let a_rows = row_offsets(a);
            let l = &a.layout;
            let along = if l.rank >= 2 { l.shape[l.rank - 2] } else { 1 };
            for (i, &o) in out_rows.iter().enumerate() {
                load_row(a, a_rows[i], &mut row, mem)?;
                let pos = params[0].wrapping_add(i as u64 % along) as f32;
                seq_row(cpu, SeqOp::Rope, &mut row, &[], pos, base);
                store_row(out, o, &row, mem)?;
            }
        }
    }
    Ok(out.layout.elements * elem_size(out.layout.dtype))
}
