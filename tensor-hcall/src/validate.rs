//! Pure validation of guest-supplied descriptors, run by the hypervisor on its own copy of each
//! descriptor (copy, then validate, then use). Every function is total: hostile values give an
//! [`HcallError`], never a panic or an overflow.

use crate::desc::{
    DType, GenerateDesc, OpCode, RingSetupDesc, RingSetupFlags, SqEntry, TensorDesc, CACHE_LINE,
    MAX_RANK, MAX_RING_ENTRIES,
};
use crate::error::HcallError;

/// The most tokens one `SessionGenerate` may ask for.
pub const MAX_GENERATE_TOKENS: u32 = 1 << 16;

/// A validated tensor: what the engine needs, with the byte range it touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorLayout {
    /// Element type.
    pub dtype: DType,
    /// Number of dimensions.
    pub rank: usize,
    /// Dimensions (slots beyond `rank` are 0).
    pub shape: [u64; MAX_RANK],
    /// Strides in elements (slots beyond `rank` are 0).
    pub strides: [u64; MAX_RANK],
    /// Region handle.
    pub region: u64,
    /// Byte offset of element 0 in the region.
    pub offset: u64,
    /// Number of elements.
    pub elements: u64,
    /// Bytes from `offset` to one past the last byte touched.
    pub byte_len: u64,
    /// Row-major contiguous.
    pub contiguous: bool,
    /// No two elements share storage (required of outputs).
    pub non_overlapping: bool,
}

impl TensorLayout {
    /// The dimensions in use.
    pub fn dims(&self) -> &[u64] {
        &self.shape[..self.rank]
    }
}

/// Validates a tensor descriptor against the length of its region.
///
/// Errors: `InvalidArgument` (reserved or unused slots non-zero, misaligned offset), `BadDtype`,
/// `BadRank`, `BadShape` (a zero dimension, element-count overflow, block dtype with a last
/// dimension not a multiple of the block), `BadStrides` (overflow, block layout rules),
/// `OutOfBounds` (the last byte lies beyond `region_len`).
pub fn validate_tensor(d: &TensorDesc, region_len: u64) -> Result<TensorLayout, HcallError> {
    if d.reserved != 0 {
        return Err(HcallError::InvalidArgument);
    }
    let dtype = DType::try_from(d.dtype)?;
    let rank = d.rank as usize;
    if rank == 0 || rank > MAX_RANK {
        return Err(HcallError::BadRank);
    }
    if d.shape[rank..]
        .iter()
        .chain(&d.strides[rank..])
        .any(|&v| v != 0)
    {
        return Err(HcallError::InvalidArgument);
    }
    let shape = &d.shape[..rank];
    let strides = &d.strides[..rank];
    let mut elements: u64 = 1;
    let mut max_off: u64 = 0;
    for (&n, &s) in shape.iter().zip(strides) {
        if n == 0 {
            return Err(HcallError::BadShape);
        }
        elements = elements.checked_mul(n).ok_or(HcallError::BadShape)?;
        max_off = (n - 1)
            .checked_mul(s)
            .and_then(|v| v.checked_add(max_off))
            .ok_or(HcallError::BadStrides)?;
    }
    let block = dtype.block_elems();
    let byte_len = if block == 1 {
        if !d.offset.is_multiple_of(dtype.block_bytes()) {
            return Err(HcallError::InvalidArgument);
        }
        max_off
            .checked_add(1)
            .and_then(|v| v.checked_mul(dtype.block_bytes()))
            .ok_or(HcallError::BadStrides)?
    } else {
        // Block dtypes: the last dimension is whole blocks, contiguous; other strides whole blocks.
        let last = rank - 1;
        if !shape[last].is_multiple_of(block) {
            return Err(HcallError::BadShape);
        }
        if strides[last] != 1
            || strides[..last]
                .iter()
                .zip(&shape[..last])
                .any(|(&s, &n)| n > 1 && s % block != 0)
        {
            return Err(HcallError::BadStrides);
        }
        (max_off / block + 1)
            .checked_mul(dtype.block_bytes())
            .ok_or(HcallError::BadStrides)?
    };
    let end = d
        .offset
        .checked_add(byte_len)
        .ok_or(HcallError::OutOfBounds)?;
    if end > region_len {
        return Err(HcallError::OutOfBounds);
    }
    let mut expect = 1u64;
    let mut contiguous = true;
    for k in (0..rank).rev() {
        if shape[k] > 1 && strides[k] != expect {
            contiguous = false;
        }
        // Cannot overflow: the product of the dims was checked above.
        expect = expect.saturating_mul(shape[k]);
    }
    let mut out = TensorLayout {
        dtype,
        rank,
        shape: [0; MAX_RANK],
        strides: [0; MAX_RANK],
        region: d.region,
        offset: d.offset,
        elements,
        byte_len,
        contiguous,
        non_overlapping: non_overlapping(shape, strides),
    };
    out.shape[..rank].copy_from_slice(shape);
    out.strides[..rank].copy_from_slice(strides);
    Ok(out)
}

/// A sufficient test that distinct indices reach distinct elements: ordered by stride, each
/// dimension's stride exceeds the largest offset reachable by the dimensions inside it.
fn non_overlapping(shape: &[u64], strides: &[u64]) -> bool {
    let mut dims: [(u64, u64); MAX_RANK] = [(0, 0); MAX_RANK];
    let mut n = 0;
    for (&len, &s) in shape.iter().zip(strides) {
        if len > 1 {
            dims[n] = (s, len);
            n += 1;
        }
    }
    let dims = &mut dims[..n];
    dims.sort_unstable();
    let mut reach: u64 = 0; // largest offset reachable by the inner dims
    for &(s, len) in dims.iter() {
        if s <= reach {
            return false;
        }
        reach = match (len - 1).checked_mul(s).and_then(|v| v.checked_add(reach)) {
            Some(r) => r,
            None => return false,
        };
    }
    true
}

/// A validated submission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidOp {
    /// The operation.
    pub op: OpCode,
    /// Input tensor handles (`inputs[..op.inputs()]` are used).
    pub inputs: [u64; 3],
    /// Output tensor handle.
    pub output: u64,
    /// Parameters.
    pub params: [u64; 2],
    /// The submitter's user data.
    pub user_data: u64,
}

/// Validates the fixed part of a submission entry (before handles are looked up).
/// Unknown opcode → `NotSupported`; flags/reserved/unused slots non-zero → `InvalidArgument`;
/// a required handle 0 → `BadHandle`.
pub fn validate_sq_entry(e: &SqEntry) -> Result<ValidOp, HcallError> {
    let op = OpCode::try_from(e.opcode)?;
    if e.flags != 0 || e.reserved != 0 {
        return Err(HcallError::InvalidArgument);
    }
    let n = op.inputs();
    if e.tensors[n..3].iter().any(|&h| h != 0) || e.params[op.params()..].iter().any(|&p| p != 0) {
        return Err(HcallError::InvalidArgument);
    }
    if e.tensors[..n].contains(&0) || e.tensors[3] == 0 {
        return Err(HcallError::BadHandle);
    }
    Ok(ValidOp {
        op,
        inputs: [e.tensors[0], e.tensors[1], e.tensors[2]],
        output: e.tensors[3],
        params: e.params,
        user_data: e.user_data,
    })
}

/// Checks the shapes and dtypes of an operation's tensors (after handle lookup).
/// Mismatched shapes → `BadShape`; unaccepted dtypes → `BadDtype`; an output whose elements may
/// overlap → `BadStrides`.
pub fn check_op_shapes(
    op: OpCode,
    inputs: &[TensorLayout],
    out: &TensorLayout,
) -> Result<(), HcallError> {
    if inputs.len() != op.inputs() {
        return Err(HcallError::InvalidArgument);
    }
    if !out.non_overlapping {
        return Err(HcallError::BadStrides);
    }
    if !matches!(out.dtype, DType::F32 | DType::F16) {
        return Err(HcallError::BadDtype);
    }
    let a = &inputs[0];
    let float_activation =
        |t: &TensorLayout| matches!(t.dtype, DType::F32 | DType::F16 | DType::Bf16);
    if !float_activation(a) {
        return Err(HcallError::BadDtype);
    }
    let last = |t: &TensorLayout| t.shape[t.rank - 1];
    match op {
        OpCode::Matmul => {
            let b = &inputs[1];
            if !b.dtype.is_float() {
                return Err(HcallError::BadDtype);
            }
            let r = a.rank;
            if r < 2 || b.rank != r || out.rank != r {
                return Err(HcallError::BadShape);
            }
            let batch_ok =
                a.dims()[..r - 2] == b.dims()[..r - 2] && a.dims()[..r - 2] == out.dims()[..r - 2];
            // a [.., m, k], b [.., n, k], out [.., m, n]
            if !batch_ok
                || last(a) != last(b)
                || out.shape[r - 2] != a.shape[r - 2]
                || last(out) != b.shape[r - 2]
            {
                return Err(HcallError::BadShape);
            }
        }
        OpCode::Add | OpCode::Mul => {
            let b = &inputs[1];
            if !float_activation(b) {
                return Err(HcallError::BadDtype);
            }
            if a.dims() != b.dims() || a.dims() != out.dims() {
                return Err(HcallError::BadShape);
            }
        }
        OpCode::Softmax => {
            if a.dims() != out.dims() {
                return Err(HcallError::BadShape);
            }
        }
        OpCode::RmsNorm => {
            let w = &inputs[1];
            if !float_activation(w) {
                return Err(HcallError::BadDtype);
            }
            if a.dims() != out.dims() || w.rank != 1 || w.shape[0] != last(a) {
                return Err(HcallError::BadShape);
            }
        }
        OpCode::Rope => {
            if a.dims() != out.dims() || last(a) % 2 != 0 {
                return Err(HcallError::BadShape);
            }
        }
    }
    Ok(())
}

/// Guest-physical byte ranges of a validated ring setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// `[start, end)` of the control block.
    pub control: (u64, u64),
    /// `[start, end)` of the submission entries.
    pub sq: (u64, u64),
    /// `[start, end)` of the completion entries.
    pub cq: (u64, u64),
}

/// Validates a ring setup: sizes are powers of two ≤ [`MAX_RING_ENTRIES`]
/// (`InvalidArgument`), areas 64-byte aligned, non-overflowing and disjoint (`BadAddress`),
/// the vector 32..=255 with the interrupt flag and 0 without (`InvalidArgument`).
pub fn validate_ring_setup(d: &RingSetupDesc) -> Result<RingLayout, HcallError> {
    let flags = RingSetupFlags::from_bits(d.flags).ok_or(HcallError::InvalidArgument)?;
    if d.reserved != 0 {
        return Err(HcallError::InvalidArgument);
    }
    let size_ok = |n: u32| n.is_power_of_two() && n <= MAX_RING_ENTRIES;
    if !size_ok(d.sq_entries) || !size_ok(d.cq_entries) {
        return Err(HcallError::InvalidArgument);
    }
    let vector_ok = if flags.contains(RingSetupFlags::INTERRUPT) {
        (32..=255).contains(&d.notify_vector)
    } else {
        d.notify_vector == 0
    };
    if !vector_ok {
        return Err(HcallError::InvalidArgument);
    }
    let area = |gpa: u64, len: u64| -> Result<(u64, u64), HcallError> {
        if !gpa.is_multiple_of(CACHE_LINE as u64) {
            return Err(HcallError::BadAddress);
        }
        Ok((gpa, gpa.checked_add(len).ok_or(HcallError::BadAddress)?))
    };
    let control = area(d.control_gpa, crate::desc::RingControl::SIZE as u64)?;
    let sq = area(d.sq_gpa, u64::from(d.sq_entries) * SqEntry::SIZE as u64)?;
    let cq = area(
        d.cq_gpa,
        u64::from(d.cq_entries) * crate::desc::CqEntry::SIZE as u64,
    )?;
    let disjoint = |a: (u64, u64), b: (u64, u64)| a.1 <= b.0 || b.1 <= a.0;
    if !disjoint(control, sq) || !disjoint(control, cq) || !disjoint(sq, cq) {
        return Err(HcallError::BadAddress);
    }
    Ok(RingLayout { control, sq, cq })
}

/// Entries between a consumer and a producer index of a ring of `entries` slots; a producer more
/// than `entries` ahead (or behind) is `BadRingIndex`.
pub fn ring_pending(consumer: u32, producer: u32, entries: u32) -> Result<u32, HcallError> {
    let n = producer.wrapping_sub(consumer);
    if n > entries {
        Err(HcallError::BadRingIndex)
    } else {
        Ok(n)
    }
}

/// The slot of a free-running index in a ring of `entries` (a power of two) slots.
pub const fn ring_slot(index: u32, entries: u32) -> u32 {
    index & entries.wrapping_sub(1)
}

/// Validates a generate descriptor against the output region's length.
pub fn validate_generate(d: &GenerateDesc, out_region_len: u64) -> Result<(), HcallError> {
    if d.reserved != 0 || d.flags & !1 != 0 {
        return Err(HcallError::InvalidArgument);
    }
    if d.session == 0 || d.out_region == 0 {
        return Err(HcallError::BadHandle);
    }
    if d.max_tokens == 0 || d.max_tokens > MAX_GENERATE_TOKENS || !d.out_offset.is_multiple_of(4) {
        return Err(HcallError::InvalidArgument);
    }
    let t = f32::from_bits(d.temperature_bits);
    let p = f32::from_bits(d.top_p_bits);
    let temperature_ok = t.is_finite() && t >= 0.0;
    let top_p_ok = p > 0.0 && p <= 1.0;
    if !temperature_ok || !top_p_ok {
        return Err(HcallError::InvalidArgument);
    }
    let end = d
        .out_offset
        .checked_add(u64::from(d.max_tokens) * 4)
        .ok_or(HcallError::OutOfBounds)?;
    if end > out_region_len {
        return Err(HcallError::OutOfBounds);
    }
    Ok(())
}
