//! Kernels compiled in another unit, reached through a table of C-ABI functions.
//!
//! The hypervisor is built for the soft-float `x86_64-unknown-none` target: its code keeps
//! floats in integer registers and does float arithmetic in software, and the SIMD kernels
//! cannot be compiled into it. The crate `engine-simd` compiles this same engine for a
//! hard-float target and exports its hot loops as C functions whose arguments and results are
//! integers and pointers only (a float travels as its bits), so both calling conventions agree
//! on them; [`KernelTable`] holds those functions. A [`crate::cpu::CpuFeatures`] made by
//! [`crate::cpu::CpuFeatures::external`] sends every call the table covers there. The
//! functions behind it run the same code as the local kernels, so they return the same bits.
//!
//! What the table covers is what dominates a token outside the matrix products too: the
//! products (by row range), activation quantization, the attention's f32 dots and softmax,
//! RMSNorm, the query/key heads' norm and RoPE, and GeGLU; and the exact sequential row
//! arithmetic of the guests' own tensor operations ([`crate::seqops`]).

use crate::quant::{ActsRef, BlockQ8K, BlockQ8_0, GgmlType};
use alloc::vec::Vec;
use core::ops::Range;

/// The layout of [`KernelTable`] and [`Hooks`]; a table of another version is refused.
pub const TABLE_VERSION: u32 = 3;

/// [`KernelTable::features`]: AVX2, FMA and F16C are used.
pub const FEATURE_AVX2_FMA: u32 = 1;
/// [`KernelTable::features`]: AVX-512 F/BW/VL are available.
pub const FEATURE_AVX512: u32 = 2;

/// The format of a [`RawActs`] row (the element type behind its pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RawFormat {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q8_0 = 3,
    Q8K = 4,
}

impl RawFormat {
    fn from_u32(v: u32) -> Option<Self> {
        [Self::F32, Self::F16, Self::BF16, Self::Q8_0, Self::Q8K]
            .into_iter()
            .find(|f| *f as u32 == v)
    }
}

/// One activation row across the boundary: `len` elements of the format's type at `ptr`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct RawActs {
    pub format: u32,
    pub ptr: *const u8,
    pub len: usize,
}

impl RawActs {
    /// The raw parts of a borrowed row.
    pub fn of(a: ActsRef<'_>) -> Self {
        let (format, ptr, len) = match a {
            ActsRef::F32(v) => (RawFormat::F32, v.as_ptr() as *const u8, v.len()),
            ActsRef::F16(v) => (RawFormat::F16, v.as_ptr() as *const u8, v.len()),
            ActsRef::BF16(v) => (RawFormat::BF16, v.as_ptr() as *const u8, v.len()),
            ActsRef::Q8_0(v) => (RawFormat::Q8_0, v.as_ptr() as *const u8, v.len()),
            ActsRef::Q8K(v) => (RawFormat::Q8K, v.as_ptr() as *const u8, v.len()),
        };
        Self {
            format: format as u32,
            ptr,
            len,
        }
    }

    /// The row again; `None` for an unknown format, a null or misaligned pointer.
    ///
    /// # Safety
    /// Unless `None` is returned, `ptr` must be valid for reads of `len` elements of the
    /// format's type for `'a`, not written meanwhile: what [`RawActs::of`] gives for a row
    /// that outlives `'a`.
    pub unsafe fn view<'a>(&self) -> Option<ActsRef<'a>> {
        /// # Safety
        /// As [`RawActs::view`], for elements of type `T`.
        unsafe fn slice<'a, T>(p: *const u8, len: usize) -> Option<&'a [T]> {
            if p.is_null() || !(p as usize).is_multiple_of(core::mem::align_of::<T>()) {
                return None;
            }
            // SAFETY: non-null and aligned (checked); valid for `len` elements of `T` for 'a
            // and not mutated (the caller's contract).
            Some(unsafe { core::slice::from_raw_parts(p as *const T, len) })
        }
        // SAFETY: the element type matches the format, as `RawActs::of` pairs them; the
        // rest is the caller's contract.
        unsafe {
            Some(match RawFormat::from_u32(self.format)? {
                RawFormat::F32 => ActsRef::F32(slice::<f32>(self.ptr, self.len)?),
                RawFormat::F16 => ActsRef::F16(slice::<u16>(self.ptr, self.len)?),
                RawFormat::BF16 => ActsRef::BF16(slice::<u16>(self.ptr, self.len)?),
                RawFormat::Q8_0 => ActsRef::Q8_0(slice::<BlockQ8_0>(self.ptr, self.len)?),
                RawFormat::Q8K => ActsRef::Q8K(slice::<BlockQ8K>(self.ptr, self.len)?),
            })
        }
    }
}

/// What [`KernelTable::quantize`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RawQuant {
    /// [`crate::quant::quantize_q8_0`]: `n / 32` [`BlockQ8_0`]s.
    Q8_0 = 0,
    /// [`crate::quant::quantize_q8_k`]: `n / 256` [`BlockQ8K`]s.
    Q8K = 1,
    /// [`crate::quant::quantize_q8_k_4x8`]: `n / 256` [`BlockQ8K`]s.
    Q8K4x8 = 2,
}

impl RawQuant {
    pub fn from_u32(v: u32) -> Option<Self> {
        [Self::Q8_0, Self::Q8K, Self::Q8K4x8]
            .into_iter()
            .find(|f| *f as u32 == v)
    }
}

/// Status of a table call: done.
pub const CALL_OK: u32 = 0;
/// Status of a table call: the arguments were refused (bad type, format, length or pointer);
/// nothing was written.
pub const CALL_BAD_ARGS: u32 = 1;

/// The functions a kernel unit exports. Every function checks what it can of its arguments
/// (returning [`CALL_BAD_ARGS`] and writing nothing when they do not fit) and reads and writes
/// only the memory they describe; pointers must be valid for what their lengths say. A float
/// argument or result is its IEEE bits (`u32` for f32, `u64` for f64).
#[repr(C)]
pub struct KernelTable {
    /// [`TABLE_VERSION`] of the unit that made it.
    pub version: u32,
    /// What its kernels use: [`FEATURE_AVX2_FMA`], [`FEATURE_AVX512`].
    pub features: u32,
    /// [`crate::tensor::Matrix::rows_into`]: the matrix of GGML type `ty` (`rows` rows of `cols`
    /// elements in the `w_len` bytes at `w`), rows `lo..hi` against the `n_acts` rows at `acts`,
    /// into the `tile_len` floats at `tile` (`(hi - lo) * n_acts` of them used).
    pub rows_into: unsafe extern "C" fn(
        ty: u32,
        w: *const u8,
        w_len: usize,
        rows: usize,
        cols: usize,
        acts: *const RawActs,
        n_acts: usize,
        lo: usize,
        hi: usize,
        tile: *mut f32,
        tile_len: usize,
    ) -> u32,
    /// Quantizes the `n` floats at `x` as `kind` ([`RawQuant`]) into the `out_len` blocks at
    /// `out` (exactly as many as `n` makes).
    pub quantize: unsafe extern "C" fn(
        kind: u32,
        x: *const f32,
        n: usize,
        out: *mut u8,
        out_len: usize,
    ) -> u32,
    /// [`super::dot_f32`] (`vecdot` 0) or [`super::dot_f32_vecdot`] (1) of the `n` floats at
    /// `a` and `b`; the result's bits go to `*out`.
    pub dot_f32: unsafe extern "C" fn(
        vecdot: u32,
        a: *const f32,
        b: *const f32,
        n: usize,
        out: *mut u32,
    ) -> u32,
    /// [`super::dot_f32_x4`]: `a` (`n` floats) with the four rows `b[0..4]` (`n` floats each)
    /// into `out[0..4]`.
    pub dot_f32_x4:
        unsafe extern "C" fn(a: *const f32, n: usize, b: *const *const f32, out: *mut f32) -> u32,
    /// [`super::softmax_exp`] on the `n` floats at `x` with the maximum's bits `max`; the
    /// sum's f64 bits go to `*out`.
    pub softmax_exp: unsafe extern "C" fn(x: *mut f32, n: usize, max: u32, out: *mut u64) -> u32,
    /// [`super::axpy`]: `y += a · x` over `n` floats.
    pub axpy: unsafe extern "C" fn(a: u32, x: *const f32, y: *mut f32, n: usize) -> u32,
    /// [`crate::model::rms_norm`] of the `n` floats at `x` with the weights at `w` (`n`).
    pub rms_norm: unsafe extern "C" fn(x: *mut f32, w: *const f32, n: usize, eps: u32) -> u32,
    /// [`crate::model::qk_head`] of the `n` floats at `x`: norm weights at `w` (`n`), the
    /// `tab_len` (sin, cos) pairs at `tab` (at least `n / 2`), the scale `scale` when
    /// `has_scale` is 1.
    pub qk_head: unsafe extern "C" fn(x: *mut f32, w: *const f32, n: usize, eps: u32, tab: *const [f32; 2], tab_len: usize, has_scale: u32, scale: u32) -> u32,
    /// [`crate::model::geglu_rows`] over the `n` floats at `g` and `u` with the `table_len`
    /// (65,536) floats of the GELU table at `table`.
    pub geglu_rows: unsafe extern "C" fn(g: *mut f32, u: *const f32, n: usize, table: *const f32, table_len: usize) -> u32,
    /// [`crate::seqops::matvec`]: the `k` floats at `a` against the `n` rows of `k` floats at
    /// `b`, into the `n` floats at `out`.
    pub seq_matvec: unsafe extern "C" fn(a: *const f32, k: usize, b: *const f32, n: usize, out: *mut f32) -> u32,
    /// [`crate::seqops::row`]: `op` ([`crate::seqops::SeqOp`]) on the `n` floats at `x`, with
    /// the `y_len` floats at `y` (at least `n` where the op reads them) and the f32 bits `a`,
    /// `b`.
    pub seq_row: unsafe extern "C" fn(op: u32, x: *mut f32, n: usize, y: *const f32, y_len: usize, a: u32, b: u32) -> u32,
}

/// What a kernel unit built as a standalone object needs from its host: memory and a way to
/// stop. Given once, when the host asks for the table.
#[repr(C)]
pub struct Hooks {
    /// [`Hooks`] of this version.
    pub version: u32,
    /// Allocates `size` bytes aligned to `align` (a power of two); null when out of memory.
    pub alloc: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// Frees what `alloc` gave for this `size` and `align`.
    pub dealloc: unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize),
    /// A kernel panicked (a bug: its arguments were checked) with the `len`-byte UTF-8 message
    /// at `msg`; does not return.
    pub panic: unsafe extern "C" fn(msg: *const u8, len: usize) -> !,
}

/// [`Hooks::alloc`] served by the global allocator of the program this engine is compiled
/// into: what a host that calls the table passes (the hypervisor, the native benchmark).
///
/// # Safety
/// As `GlobalAlloc::alloc`, for a layout of `size` and `align`.
pub unsafe extern "C" fn global_alloc(size: usize, align: usize) -> *mut u8 {
    match core::alloc::Layout::from_size_align(size, align) {
        // SAFETY: a valid layout (checked) of non-zero size (checked).
        Ok(l) if size != 0 => unsafe { alloc::alloc::alloc(l) },
        _ => core::ptr::null_mut(),
    }
}

/// [`Hooks::dealloc`] for what [`global_alloc`] gave.
///
/// # Safety
/// `p` came from [`global_alloc`] with this `size` and `align`.
pub unsafe extern "C" fn global_dealloc(p: *mut u8, size: usize, align: usize) {
    if let Ok(l) = core::alloc::Layout::from_size_align(size, align) {
        // SAFETY: allocated by `global_alloc` with this layout (the caller's contract).
        unsafe { alloc::alloc::dealloc(p, l) }
    }
}

impl core::fmt::Debug for KernelTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KernelTable")
            .field("version", &self.version)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// A refused call: the table's own checks disagreed with the caller's (a bug on one side).
fn refused(what: &str) -> ! {
    panic!("kernel table: {what} refused its arguments")
}

impl KernelTable {
    /// The products of rows `range` of `m` with `acts` into `tile`, as
    /// [`crate::tensor::Matrix::rows_into`].
    pub fn rows_into(
        &self,
        m: &crate::tensor::Matrix<'_>,
        acts: &[ActsRef<'_>],
        range: Range<usize>,
        tile: &mut [f32],
    ) {
        let mut few = [RawActs {
            format: 0,
            ptr: core::ptr::null(),
            len: 0,
        }; 8];
        let many: Vec<RawActs>;
        let raw: &[RawActs] = if acts.len() <= few.len() {
            for (r, a) in few.iter_mut().zip(acts) {
                *r = RawActs::of(*a);
            }
            &few[..acts.len()]
        } else {
            many = acts.iter().map(|a| RawActs::of(*a)).collect();
            &many
        };
        // SAFETY: every pointer comes from a live slice with its length, and `tile` is
        // borrowed mutably for the call; the table's functions keep to what they are given
        // (the contract of `CpuFeatures::external`).
        let st = unsafe {
            (self.rows_into)(
                m.ty.id(),
                m.data.as_ptr(),
                m.data.len(),
                m.rows,
                m.cols,
                raw.as_ptr(),
                raw.len(),
                range.start,
                range.end,
                tile.as_mut_ptr(),
                tile.len(),
            )
        };
        if st != CALL_OK {
            refused("rows_into");
        }
    }

    /// Q8_0 activation blocks of `x` (as [`crate::quant::quantize_q8_0`]).
    pub fn quantize_q8_0(&self, x: &[f32]) -> Vec<BlockQ8_0> {
        let mut out = alloc::vec![BlockQ8_0 { d: 0.0, qs: [0; crate::quant::QK] }; x.len() / crate::quant::QK];
        self.quantize(RawQuant::Q8_0, x, out.as_mut_ptr() as *mut u8, out.len());
        out
    }

    /// Q8_K activation blocks of `x` (as [`crate::quant::quantize_q8_k`], or with `gemm4`
    /// as [`crate::quant::quantize_q8_k_4x8`]).
    pub fn quantize_q8_k(&self, x: &[f32], gemm4: bool) -> Vec<BlockQ8K> {
        let zero = BlockQ8K {
            d: 0.0,
            qs: [0; crate::quant::QK_K],
            bsums: [0; 16],
        };
        let mut out = alloc::vec![zero; x.len() / crate::quant::QK_K];
        let kind = if gemm4 {
            RawQuant::Q8K4x8
        } else {
            RawQuant::Q8K
        };
        self.quantize(kind, x, out.as_mut_ptr() as *mut u8, out.len());
        out
    }

    fn quantize(&self, kind: RawQuant, x: &[f32], out: *mut u8, out_len: usize) {
        // SAFETY: `x` is a live slice; `out` points at `out_len` initialized blocks of the
        // kind's type, borrowed mutably by the caller for this call.
        let st = unsafe { (self.quantize)(kind as u32, x.as_ptr(), x.len(), out, out_len) };
        if st != CALL_OK {
            refused("quantize");
        }
    }

    /// [`super::dot_f32`] or (`vecdot`) [`super::dot_f32_vecdot`].
    pub fn dot_f32(&self, a: &[f32], b: &[f32], vecdot: bool) -> f32 {
        assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
        let mut bits = 0u32;
        // SAFETY: two live slices of `a.len()` floats and a local for the result.
        let st =
            unsafe { (self.dot_f32)(vecdot as u32, a.as_ptr(), b.as_ptr(), a.len(), &mut bits) };
        if st != CALL_OK {
            refused("dot_f32");
        }
        f32::from_bits(bits)
    }

    /// [`super::dot_f32_x4`]; `None` if a length differs.
    pub fn dot_f32_x4(&self, a: &[f32], b: [&[f32]; 4]) -> Option<[f32; 4]> {
        if b.iter().any(|r| r.len() != a.len()) {
            return None;
        }
        let rows = b.map(|r| r.as_ptr());
        let mut out = [0f32; 4];
        // SAFETY: `a` and the four rows are live slices of `a.len()` floats; `out` is local.
        let st = unsafe { (self.dot_f32_x4)(a.as_ptr(), a.len(), rows.as_ptr(), out.as_mut_ptr()) };
        if st != CALL_OK {
            refused("dot_f32_x4");
        }
        Some(out)
    }

    /// [`super::softmax_exp`].
    pub fn softmax_exp(&self, x: &mut [f32], max: f32) -> f64 {
        let mut bits = 0u64;
        // SAFETY: `x` is borrowed mutably for the call; the result goes to a local.
        let st = unsafe { (self.softmax_exp)(x.as_mut_ptr(), x.len(), max.to_bits(), &mut bits) };
        if st != CALL_OK {
            refused("softmax_exp");
        }
        f64::from_bits(bits)
    }

    /// [`super::axpy`] over the common length of `x` and `y`.
    pub fn axpy(&self, a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: `x` is live and `y` borrowed mutably, both at least `n` floats.
        let st = unsafe { (self.axpy)(a.to_bits(), x.as_ptr(), y.as_mut_ptr(), n) };
        if st != CALL_OK {
            refused("axpy");
        }
    }

    /// [`crate::model::qk_head`] (`w` at least as long as `x`, `tab` at least half).
    pub fn qk_head(&self, x: &mut [f32], w: &[f32], eps: f32, tab: &[[f32; 2]], scale: Option<f32>) {
        assert!(w.len() >= x.len() && tab.len() >= x.len() / 2, "qk_head: short weights or angles");
        let (has, s) = match scale {
            Some(s) => (1, s.to_bits()),
            None => (0, 0),
        };
        // SAFETY: `x` is borrowed mutably for the call; `w` and `tab` are live slices of the
        // lengths passed.
        let st = unsafe { (self.qk_head)(x.as_mut_ptr(), w.as_ptr(), x.len(), eps.to_bits(), tab.as_ptr(), tab.len(), has, s) };
        if st != CALL_OK {
            refused("qk_head");
        }
    }

    /// [`crate::model::geglu_rows`] over the common length of `g` and `u`.
    pub fn geglu_rows(&self, table: &[f32], g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len());
        // SAFETY: `g` is borrowed mutably for the call, `u` and `table` are live slices.
        let st = unsafe { (self.geglu_rows)(g.as_mut_ptr(), u.as_ptr(), n, table.as_ptr(), table.len()) };
        if st != CALL_OK {
            refused("geglu_rows");
        }
    }

    /// [`crate::seqops::matvec`] (`b` at least `out.len()` rows of `a.len()`).
    pub fn seq_matvec(&self, a: &[f32], b: &[f32], out: &mut [f32]) {
        assert!(b.len() / a.len().max(1) >= out.len() || a.is_empty(), "seq_matvec: fewer rows than outputs");
        // SAFETY: `a` and `b` are live slices of the lengths implied, `out` borrowed mutably.
        let st = unsafe { (self.seq_matvec)(a.as_ptr(), a.len(), b.as_ptr(), out.len(), out.as_mut_ptr()) };
        if st != CALL_OK {
            refused("seq_matvec");
        }
    }

    /// [`crate::seqops::row`].
    pub fn seq_row(&self, op: crate::seqops::SeqOp, x: &mut [f32], y: &[f32], a: f32, b: f32) {
        // SAFETY: `x` is borrowed mutably for the call and `y` is a live slice of `y.len()`.
        let st = unsafe { (self.seq_row)(op as u32, x.as_mut_ptr(), x.len(), y.as_ptr(), y.len(), a.to_bits(), b.to_bits()) };
        if st != CALL_OK {
            refused("seq_row");
        }
    }

    /// [`crate::model::rms_norm`] (`w` at least as long as `x`).
    pub fn rms_norm(&self, x: &mut [f32], w: &[f32], eps: f32) {
        assert!(w.len() >= x.len(), "rms_norm: fewer weights than values");
        // SAFETY: `x` is borrowed mutably for the call and `w` holds at least `x.len()` floats.
        let st = unsafe { (self.rms_norm)(x.as_mut_ptr(), w.as_ptr(), x.len(), eps.to_bits()) };
        if st != CALL_OK {
            refused("rms_norm");
        }
    }
}

/// The table's `rows_into` arguments checked and turned back into the engine's types: the
/// matrix, its activation rows and the tile. `None` when they do not describe a matrix of a
/// known type, rows within it, activation rows of one known format, and a large enough tile.
///
/// # Safety
/// Unless `None` is returned: `w` valid for reads of `w_len` bytes, `acts` for `n_acts`
/// [`RawActs`] each valid as [`RawActs::view`] requires, and `tile` for writes of `tile_len`
/// floats, all for `'a` and not otherwise accessed meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn rows_into_args<'a>(
    ty: u32,
    w: *const u8,
    w_len: usize,
    rows: usize,
    cols: usize,
    acts: *const RawActs,
    n_acts: usize,
    range: Range<usize>,
    tile: *mut f32,
    tile_len: usize,
) -> Option<(crate::tensor::Matrix<'a>, Vec<ActsRef<'a>>, &'a mut [f32])> {
    let ty = GgmlType::from_u32(ty)?;
    if w.is_null()
        || acts.is_null()
        || tile.is_null()
        || !(tile as usize).is_multiple_of(4)
        || !(acts as usize).is_multiple_of(core::mem::align_of::<RawActs>())
    {
        return None;
    }
    if ty.block_size() == 0
        || !cols.is_multiple_of(ty.block_size())
        || rows.checked_mul(ty.row_bytes(cols))? != w_len
    {
        return None;
    }
    if range.start > range.end
        || range.end > rows
        || n_acts == 0
        || range.len().checked_mul(n_acts)? > tile_len
    {
        return None;
    }
    // SAFETY: non-null, aligned, `w_len` bytes / `n_acts` entries / `tile_len` floats valid
    // for 'a (the caller's contract).
    let (data, raw, tile) = unsafe {
        (
            core::slice::from_raw_parts(w, w_len),
            core::slice::from_raw_parts(acts, n_acts),
            core::slice::from_raw_parts_mut(tile, tile_len),
        )
    };
    // SAFETY: each entry is valid as `view` requires (the caller's contract).
    let views = raw
        .iter()
        .map(|r| unsafe { r.view() })
        .collect::<Option<Vec<_>>>()?;
    if views
        .iter()
        .any(|v| core::mem::discriminant(v) != core::mem::discriminant(&views[0]))
    {
        return None;
    }
    Some((
        crate::tensor::Matrix {
            ty,
            rows,
            cols,
            data,
        },
        views,
        tile,
    ))
}
