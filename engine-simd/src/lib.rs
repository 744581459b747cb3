//! The engine's kernels compiled for a hard-float target, for the soft-float hypervisor.
//!
//! The hypervisor is built for `x86_64-unknown-none`, whose code does float arithmetic in
//! software and cannot hold the engine's AVX2 kernels. `xtask` builds this crate for
//! `x86_64-unknown-linux-gnu` (SSE2 floats; AVX2+FMA chosen at run time as everywhere else)
//! with the feature `object` as a static library, links it into one relocatable object that
//! exports the single symbol `tvk_init`, and the hypervisor links that object. `tvk_init`
//! returns a [`KernelTable`] of this crate's C-ABI functions, whose arguments and results are
//! integers and pointers only, so the two calling conventions agree; the hypervisor's engine
//! sends the products, activation quantization, attention dots, softmax and RMSNorm there
//! (see `engine::kernels::table`).
//!
//! Without `object` this is an ordinary library: the host tests call the same table and
//! check that every route gives the bits of the engine's own kernels.
//!
//! In the hypervisor these functions run with interrupts off (its host code runs with IF=0
//! outside its `sti; hlt` waits, and NMI, #DF and #MC have their own IST stacks), so the
//! red zone of the prebuilt `core` functions they may call is never overwritten; this crate
//! and the engine are compiled with `-C no-redzone` all the same.

#![no_std]

extern crate alloc;

use core::ops::Range;
use core::sync::atomic::{AtomicU32, Ordering};
use engine::cpu::CpuFeatures;
use engine::kernels::table::{
    rows_into_args, KernelTable, RawQuant, CALL_BAD_ARGS, CALL_OK, FEATURE_AVX2_FMA, FEATURE_AVX512, TABLE_VERSION,
};
use engine::quant::{BlockQ8K, BlockQ8_0, QK, QK_K};

/// The CPU features detected once ([`FEATURE_AVX2_FMA`], [`FEATURE_AVX512`]), `u32::MAX` until
/// then: CPUID is slow under a hypervisor (it exits), and the kernels ask for every call.
static FEATURES: AtomicU32 = AtomicU32::new(u32::MAX);

fn features() -> u32 {
    let f = FEATURES.load(Ordering::Relaxed);
    if f != u32::MAX {
        return f;
    }
    let cpu = CpuFeatures::detect();
    let f = if cpu.avx2_fma() { FEATURE_AVX2_FMA } else { 0 } | if cpu.avx512() { FEATURE_AVX512 } else { 0 };
    FEATURES.store(f, Ordering::Relaxed);
    f
}

/// The features as the engine takes them: detected (see [`features`]).
fn cpu() -> CpuFeatures {
    let f = features();
    // SAFETY: `f` is what `CpuFeatures::detect` found on this CPU (CPUID and XGETBV), and the
    // host enables the same vector state on every CPU that runs the engine.
    unsafe { CpuFeatures::assume(f & FEATURE_AVX2_FMA != 0, f & FEATURE_AVX512 != 0) }
}

/// This unit's kernels, as the hypervisor calls them (the host tests call them too).
pub fn table() -> &'static KernelTable {
    static TABLE: spin::Once<KernelTable> = spin::Once::new();
    TABLE.call_once(|| KernelTable {
        version: TABLE_VERSION,
        features: features(),
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
    })
}

/// A pointer a slice of `T` may start at: non-null and aligned.
fn usable<T>(p: *const T) -> bool {
    !p.is_null() && (p as usize).is_multiple_of(core::mem::align_of::<T>())
}

/// # Safety
/// As [`KernelTable::rows_into`] documents.
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn rows_into(
    ty: u32,
    w: *const u8,
    w_len: usize,
    rows: usize,
    cols: usize,
    acts: *const engine::kernels::table::RawActs,
    n_acts: usize,
    lo: usize,
    hi: usize,
    tile: *mut f32,
    tile_len: usize,
) -> u32 {
    let range: Range<usize> = lo..hi;
    // SAFETY: the pointers are valid for what their lengths say (the table's contract).
    let Some((m, views, tile)) = (unsafe { rows_into_args(ty, w, w_len, rows, cols, acts, n_acts, range.clone(), tile, tile_len) }) else {
        return CALL_BAD_ARGS;
    };
    m.rows_into(cpu(), &views, range, tile);
    CALL_OK
}

/// # Safety
/// As [`KernelTable::quantize`] documents.
unsafe extern "C" fn quantize(kind: u32, x: *const f32, n: usize, out: *mut u8, out_len: usize) -> u32 {
    let Some(kind) = RawQuant::from_u32(kind) else { return CALL_BAD_ARGS };
    if !usable(x) {
        return CALL_BAD_ARGS;
    }
    // SAFETY: non-null, aligned, `n` floats (the table's contract).
    let x = unsafe { core::slice::from_raw_parts(x, n) };
    match kind {
        RawQuant::Q8_0 => {
            let out = out as *mut BlockQ8_0;
            if !usable(out) || out_len != n / QK {
                return CALL_BAD_ARGS;
            }
            // SAFETY: non-null, aligned, `out_len` initialized blocks lent for the call.
            engine::quant::quantize_q8_0_into(x, unsafe { core::slice::from_raw_parts_mut(out, out_len) });
        }
        RawQuant::Q8K | RawQuant::Q8K4x8 => {
            let out = out as *mut BlockQ8K;
            if !usable(out) || out_len != n / QK_K {
                return CALL_BAD_ARGS;
            }
            // SAFETY: as above.
            let out = unsafe { core::slice::from_raw_parts_mut(out, out_len) };
            engine::quant::quantize_q8_k_into(x, kind == RawQuant::Q8K4x8, out);
        }
    }
    CALL_OK
}

/// # Safety
/// As [`KernelTable::dot_f32`] documents.
unsafe extern "C" fn dot_f32(vecdot: u32, a: *const f32, b: *const f32, n: usize, out: *mut u32) -> u32 {
    if !usable(a) || !usable(b) || !usable(out) || vecdot > 1 {
        return CALL_BAD_ARGS;
    }
    // SAFETY: non-null, aligned, `n` floats each (the table's contract).
    let (a, b) = unsafe { (core::slice::from_raw_parts(a, n), core::slice::from_raw_parts(b, n)) };
    let v = if vecdot == 1 { engine::kernels::dot_f32_vecdot(cpu(), a, b) } else { engine::kernels::dot_f32(cpu(), a, b) };
    // SAFETY: `out` is a valid, aligned u32 (checked non-null and aligned; the contract).
    unsafe { out.write(v.to_bits()) };
    CALL_OK
}

/// # Safety
/// As [`KernelTable::dot_f32_x4`] documents.
unsafe extern "C" fn dot_f32_x4(a: *const f32, n: usize, b: *const *const f32, out: *mut f32) -> u32 {
    if !usable(a) || !usable(b) || !usable(out) {
        return CALL_BAD_ARGS;
    }
    // SAFETY: four row pointers at `b` (the contract; non-null and aligned, checked).
    let rows = unsafe { core::slice::from_raw_parts(b, 4) };
    if !rows.iter().all(|&r| usable(r)) {
        return CALL_BAD_ARGS;
    }
    // SAFETY: each row and `a` hold `n` floats (the contract).
    let (a, rows) = unsafe { (core::slice::from_raw_parts(a, n), rows.iter().map(|&r| core::slice::from_raw_parts(r, n))) };
    let mut it = rows;
    let (Some(r0), Some(r1), Some(r2), Some(r3)) = (it.next(), it.next(), it.next(), it.next()) else { return CALL_BAD_ARGS };
    let Some(v) = engine::kernels::dot_f32_x4(cpu(), a, [r0, r1, r2, r3]) else { return CALL_BAD_ARGS };
    // SAFETY: `out` holds four floats (the contract).
    unsafe { core::ptr::copy_nonoverlapping(v.as_ptr(), out, 4) };
    CALL_OK
}

/// # Safety
/// As [`KernelTable::softmax_exp`] documents.
unsafe extern "C" fn softmax_exp(x: *mut f32, n: usize, max: u32, out: *mut u64) -> u32 {
    if !usable(x) || !usable(out) || !n.is_multiple_of(8) {
        return CALL_BAD_ARGS;
    }
    // SAFETY: `n` floats lent mutably for the call (the contract).
    let x = unsafe { core::slice::from_raw_parts_mut(x, n) };
    let sum = engine::kernels::softmax_exp(cpu(), x, f32::from_bits(max));
    // SAFETY: `out` is a valid, aligned u64 (checked; the contract).
    unsafe { out.write(sum.to_bits()) };
    CALL_OK
}

/// # Safety
/// As [`KernelTable::axpy`] documents.
unsafe extern "C" fn axpy(a: u32, x: *const f32, y: *mut f32, n: usize) -> u32 {
    if !usable(x) || !usable(y) {
        return CALL_BAD_ARGS;
    }
    // SAFETY: `n` floats at `x`, and `n` at `y` lent mutably (the contract).
    let (x, y) = unsafe { (core::slice::from_raw_parts(x, n), core::slice::from_raw_parts_mut(y, n)) };
    engine::kernels::axpy(cpu(), f32::from_bits(a), x, y);
    CALL_OK
}

/// # Safety
/// As [`KernelTable::rms_norm`] documents.
unsafe extern "C" fn rms_norm(x: *mut f32, w: *const f32, n: usize, eps: u32) -> u32 {
    if !usable(x) || !usable(w) {
        return CALL_BAD_ARGS;
    }
    // SAFETY: `n` floats at `x` lent mutably and `n` at `w` (the contract).
    let (x, w) = unsafe { (core::slice::from_raw_parts_mut(x, n), core::slice::from_raw_parts(w, n)) };
    engine::model::rms_norm(x, w, f32::from_bits(eps));
    CALL_OK
}

/// # Safety
/// As [`KernelTable::qk_head`] documents.
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn qk_head(x: *mut f32, w: *const f32, n: usize, eps: u32, tab: *const [f32; 2], tab_len: usize, has_scale: u32, scale: u32) -> u32 {
    if !usable(x) || !usable(w) || !usable(tab) || tab_len < n / 2 || has_scale > 1 {
        return CALL_BAD_ARGS;
    }
    // SAFETY: `n` floats at `x` lent mutably, `n` at `w`, `tab_len` pairs at `tab` (the contract).
    let (x, w, tab) = unsafe { (core::slice::from_raw_parts_mut(x, n), core::slice::from_raw_parts(w, n), core::slice::from_raw_parts(tab, tab_len)) };
    engine::model::qk_head(x, w, f32::from_bits(eps), tab, (has_scale == 1).then(|| f32::from_bits(scale)));
    CALL_OK
}

/// # Safety
/// As [`KernelTable::geglu_rows`] documents.
unsafe extern "C" fn geglu_rows(g: *mut f32, u: *const f32, n: usize, table: *const f32, table_len: usize) -> u32 {
    // One entry per f16 bit pattern: the lookup indexes it by any of them.
    if !usable(g) || !usable(u) || !usable(table) || table_len != 1 << 16 {
        return CALL_BAD_ARGS;
    }
    // SAFETY: `n` floats at `g` lent mutably and at `u`, `table_len` at `table` (the contract).
    let (g, u, table) = unsafe { (core::slice::from_raw_parts_mut(g, n), core::slice::from_raw_parts(u, n), core::slice::from_raw_parts(table, table_len)) };
    engine::model::geglu_rows(table, g, u);
    CALL_OK
}

/// # Safety
/// As [`KernelTable::seq_matvec`] documents.
unsafe extern "C" fn seq_matvec(a: *const f32, k: usize, b: *const f32, n: usize, out: *mut f32) -> u32 {
    let Some(b_len) = k.checked_mul(n) else { return CALL_BAD_ARGS };
    if !usable(a) || !usable(b) || !usable(out) {
        return CALL_BAD_ARGS;
    }
    // SAFETY: `k` floats at `a`, `n` rows of `k` at `b`, `n` at `out` lent mutably (the contract).
    let (a, b, out) = unsafe { (core::slice::from_raw_parts(a, k), core::slice::from_raw_parts(b, b_len), core::slice::from_raw_parts_mut(out, n)) };
    engine::seqops::matvec(a, b, out);
    CALL_OK
}

/// # Safety
/// As [`KernelTable::seq_row`] documents.
unsafe extern "C" fn seq_row(op: u32, x: *mut f32, n: usize, y: *const f32, y_len: usize, a: u32, b: u32) -> u32 {
    use engine::seqops::SeqOp;
    let Some(op) = SeqOp::from_u32(op) else { return CALL_BAD_ARGS };
    let reads_y = matches!(op, SeqOp::Add | SeqOp::Mul | SeqOp::RmsNorm);
    if !usable(x) || !usable(y) || (reads_y && y_len < n) {
        return CALL_BAD_ARGS;
    }
    // SAFETY: `n` floats at `x` lent mutably and `y_len` at `y` (the contract).
    let (x, y) = unsafe { (core::slice::from_raw_parts_mut(x, n), core::slice::from_raw_parts(y, y_len)) };
    engine::seqops::row(op, x, y, f32::from_bits(a), f32::from_bits(b));
    CALL_OK
}

/// What the standalone object adds: the memory and panics of its host, and `tvk_init`.
#[cfg(feature = "object")]
mod object {
    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicPtr, Ordering};
    use engine::kernels::table::{Hooks, KernelTable, TABLE_VERSION};

    /// The host's hooks, set by [`tvk_init`] before any kernel runs.
    static HOOKS: AtomicPtr<Hooks> = AtomicPtr::new(core::ptr::null_mut());

    fn hooks() -> Option<&'static Hooks> {
        // SAFETY: only `tvk_init` stores here, a `&'static Hooks` it was given.
        unsafe { HOOKS.load(Ordering::Acquire).as_ref() }
    }

    struct HostAlloc;

    // SAFETY: forwards to the host's allocator, which keeps the `GlobalAlloc` contract (its
    // hook's documentation); without hooks every allocation fails (null).
    unsafe impl GlobalAlloc for HostAlloc {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            match hooks() {
                // SAFETY: the hook allocates `size` bytes aligned to `align`, or gives null.
                Some(h) => unsafe { (h.alloc)(l.size(), l.align()) },
                None => core::ptr::null_mut(),
            }
        }

        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            if let Some(h) = hooks() {
                // SAFETY: `p` came from `alloc` with this layout (GlobalAlloc's contract).
                unsafe { (h.dealloc)(p, l.size(), l.align()) }
            }
        }
    }

    #[global_allocator]
    static ALLOC: HostAlloc = HostAlloc;

    /// A bounded buffer for the panic message (no allocation while panicking).
    struct Msg {
        buf: [u8; 256],
        len: usize,
    }

    impl core::fmt::Write for Msg {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for &b in s.as_bytes() {
                if self.len == self.buf.len() {
                    break;
                }
                self.buf[self.len] = b;
                self.len += 1;
            }
            Ok(())
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        let mut m = Msg { buf: [0; 256], len: 0 };
        let _ = core::fmt::write(&mut m, format_args!("{info}"));
        // Cut at a character boundary, so the host gets valid UTF-8.
        while m.len > 0 && core::str::from_utf8(&m.buf[..m.len]).is_err() {
            m.len -= 1;
        }
        if let Some(h) = hooks() {
            // SAFETY: `m.buf[..m.len]` is valid UTF-8 (cut above) and lives for the call.
            unsafe { (h.panic)(m.buf.as_ptr(), m.len) }
        }
        loop {
            core::hint::spin_loop();
        }
    }

    /// The prebuilt `core` was compiled for unwinding and refers to these; this object is
    /// built with `panic = "abort"`, so nothing calls them.
    #[no_mangle]
    extern "C" fn rust_eh_personality() {}

    /// See [`rust_eh_personality`].
    #[no_mangle]
    extern "C" fn _Unwind_Resume() -> ! {
        panic!("_Unwind_Resume called in an abort-only object")
    }

    /// Gives the kernels the host's `hooks` (kept for the program's life) and returns their
    /// table; null if the hooks are of another version.
    ///
    /// # Safety
    /// `hooks` points at a `Hooks` valid for the rest of the program whose functions keep
    /// their documented contracts; the first call happens before any kernel runs.
    #[no_mangle]
    pub unsafe extern "C" fn tvk_init(hooks: *const Hooks) -> *const KernelTable {
        // SAFETY: valid for the program's life (the contract), or null.
        let Some(h) = (unsafe { hooks.as_ref() }) else { return core::ptr::null() };
        if h.version != TABLE_VERSION {
            return core::ptr::null();
        }
        HOOKS.store(hooks as *mut Hooks, Ordering::Release);
        super::table()
    }
}
