//! CPU features the kernels may use: detected with CPUID (works without std, so the
//! hypervisor can call [`CpuFeatures::detect`] on each CPU), or asserted by the caller through the
//! `unsafe` [`CpuFeatures::assume`].

use crate::kernels::table::{KernelTable, FEATURE_AVX2_FMA, FEATURE_AVX512, TABLE_VERSION};

/// SIMD features available to the kernels, or the table of kernels compiled elsewhere that
/// takes their calls. A value claiming a feature or a table can only be made by detection or by
/// `unsafe` code, because running those kernels on a CPU without the feature is undefined
/// behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuFeatures {
    avx2_fma: bool,
    avx512: bool,
    table: Option<&'static KernelTable>,
}

impl PartialEq for CpuFeatures {
    fn eq(&self, o: &Self) -> bool {
        let same_table = match (self.table, o.table) {
            (Some(a), Some(b)) => core::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.avx2_fma == o.avx2_fma && self.avx512 == o.avx512 && same_table
    }
}

impl Eq for CpuFeatures {}

impl CpuFeatures {
    /// No SIMD: the portable kernels only.
    pub const fn portable() -> Self {
        Self { avx2_fma: false, avx512: false, table: None }
    }

    /// The kernels `table` covers run there (see [`crate::kernels::table`]); the rest run the
    /// portable code here. `None` if the table is of another [`TABLE_VERSION`].
    ///
    /// # Safety
    /// Every function of `table` must do what [`KernelTable`] documents, reading and writing
    /// only the memory its arguments describe, on every CPU that runs the engine (whose vector
    /// state, if the functions use it, must be enabled there and not be another context's).
    #[allow(unsafe_code)] // declares a precondition only; the body is safe
    pub unsafe fn external(table: &'static KernelTable) -> Option<Self> {
        (table.version == TABLE_VERSION).then_some(Self { avx2_fma: false, avx512: false, table: Some(table) })
    }

    /// The table of kernels compiled elsewhere that takes this engine's calls, if any.
    pub fn table(&self) -> Option<&'static KernelTable> {
        self.table
    }

    /// What the kernels run on, in words (for logs).
    pub fn describe(&self) -> &'static str {
        match (self.table, self.avx2_fma) {
            (Some(t), _) if t.features & FEATURE_AVX2_FMA != 0 && t.features & FEATURE_AVX512 != 0 => {
                "AVX2+FMA kernels (AVX-512 present) from the hard-float kernel object"
            }
            (Some(t), _) if t.features & FEATURE_AVX2_FMA != 0 => "AVX2+FMA kernels from the hard-float kernel object",
            (Some(_), _) => "portable kernels from the hard-float kernel object (no AVX2+FMA on this CPU)",
            (None, true) => "AVX2+FMA kernels",
            (None, false) => "portable kernels",
        }
    }

    /// Reads the running CPU's features with CPUID and XGETBV.
    pub fn detect() -> Self {
        let (avx2_fma, avx512) = crate::kernels::detect();
        Self { avx2_fma, avx512, table: None }
    }

    /// Features as the caller states them.
    ///
    /// # Safety
    /// Every feature claimed must be supported by every CPU that runs the kernels, and enabled
    /// by the OS/hypervisor (XCR0).
    #[allow(unsafe_code)] // declares a precondition only; the body is safe
    pub const unsafe fn assume(avx2_fma: bool, avx512: bool) -> Self {
        Self { avx2_fma, avx512, table: None }
    }

    /// AVX2, FMA and F16C usable.
    pub fn avx2_fma(&self) -> bool {
        self.avx2_fma
    }

    /// AVX-512 F/BW/VL usable.
    pub fn avx512(&self) -> bool {
        self.avx512
    }
}
