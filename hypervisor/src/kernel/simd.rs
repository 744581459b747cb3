//! The engine's SIMD kernels in this soft-float kernel: the hard-float object `engine-simd`.
//!
//! This kernel is built for `x86_64-unknown-none`, which does float arithmetic in software, so
//! the engine compiled into it has only its portable kernels, run as integer code. `xtask`
//! builds the crate `engine-simd` for a hard-float target into one relocatable object that
//! exports `tvk_init`, and passes its path in `TV_KERNEL_OBJECT`; `build.rs` links it and sets
//! the cfg `kernel_object`. [`features`] hands the object this kernel's allocator and panic,
//! takes its table of C-ABI kernels (integer and pointer arguments only) and returns the
//! [`CpuFeatures`] that send the engine's products, activation quantization, attention and
//! norms there. Their vector registers are this CPU's own between guest runs: every vCPU's
//! x87/SSE/AVX state is saved right after its VM exit and MXCSR reset (see [`super::fpu`]).
//!
//! A kernel built without the object (plain `cargo build`) runs the portable kernels and says
//! so; both give the bits the host engine gives with the same kernels.

use engine::cpu::CpuFeatures;

#[cfg(kernel_object)]
mod linked {
    use engine::kernels::table::{global_alloc, global_dealloc, Hooks, KernelTable, TABLE_VERSION};

    extern "C" {
        /// Exported by the object (see `engine-simd`): takes the hooks, returns the table or
        /// null (hooks of another version).
        fn tvk_init(hooks: *const Hooks) -> *const KernelTable;
    }

    /// # Safety
    /// `msg` points at `len` bytes of UTF-8.
    unsafe extern "C" fn panic(msg: *const u8, len: usize) -> ! {
        // SAFETY: `len` bytes at `msg` (the caller's contract).
        let bytes = unsafe { core::slice::from_raw_parts(msg, len) };
        panic!("engine kernel object: {}", core::str::from_utf8(bytes).unwrap_or("(message not UTF-8)"))
    }

    /// The kernel heap serves the object's allocations.
    static HOOKS: Hooks = Hooks { version: TABLE_VERSION, alloc: global_alloc, dealloc: global_dealloc, panic };

    pub fn table() -> Option<&'static KernelTable> {
        static TABLE: spin::Once<usize> = spin::Once::new();
        // SAFETY: `HOOKS` lives for the program and its functions keep the `Hooks` contract;
        // this runs once, before any kernel.
        let t = *TABLE.call_once(|| unsafe { tvk_init(&HOOKS) } as usize) as *const KernelTable;
        // SAFETY: null, or the object's table, a static that lives for the program.
        unsafe { t.as_ref() }
    }
}

/// The kernels the engine runs here: the object's table where it is linked (after
/// [`super::fpu::enable`] on this CPU, which its CPUID/XGETBV detection needs), the portable
/// kernels otherwise. Logs which, once.
pub fn features() -> CpuFeatures {
    static LOGGED: spin::Once<()> = spin::Once::new();
    let cpu = pick();
    LOGGED.call_once(|| log::info!("engine kernels: {}", cpu.describe()));
    cpu
}

#[cfg(kernel_object)]
fn pick() -> CpuFeatures {
    match linked::table() {
        // SAFETY: the table is the linked object's; its functions keep the `KernelTable`
        // contract (they check their arguments and touch only what those describe), and
        // `fpu::enable` gives every CPU that runs the engine the SSE/AVX state they use.
        Some(t) => match unsafe { CpuFeatures::external(t) } {
            Some(c) => c,
            None => {
                log::error!("engine kernel object: table version {} is not this kernel's; portable kernels", t.version);
                CpuFeatures::portable()
            }
        },
        None => {
            log::error!("engine kernel object: refused this kernel's hooks; portable kernels");
            CpuFeatures::portable()
        }
    }
}

#[cfg(not(kernel_object))]
fn pick() -> CpuFeatures {
    static SAID: spin::Once<()> = spin::Once::new();
    SAID.call_once(|| log::warn!("engine kernel object not linked (build through xtask): the soft-float portable kernels run"));
    CpuFeatures::portable()
}
