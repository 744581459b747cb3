//! CPU features the kernels may use: detected with CPUID (works without std, so the
//! hypervisor can call [`CpuFeatures::detect`] on each CPU), or asserted by the caller through the
//! `unsafe` [`CpuFeatures::assume`].

/// SIMD features available to the kernels. A value claiming a feature can only be made by
/// detection or by `unsafe` code, because running those kernels on a CPU without the feature is
/// undefined behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    avx2_fma: bool,
    avx512: bool,
}

impl CpuFeatures {
    /// No SIMD: the portable kernels only.
    pub const fn portable() -> Self {
        Self { avx2_fma: false, avx512: false }
    }

    /// Reads the running CPU's features with CPUID and XGETBV.
    pub fn detect() -> Self {
        let (avx2_fma, avx512) = crate::kernels::detect();
        Self { avx2_fma, avx512 }
    }

    /// Features as the caller states them.
    ///
    /// # Safety
    /// Every feature claimed must be supported by every CPU that runs the kernels, and enabled
    /// by the OS/hypervisor (XCR0).
    #[allow(unsafe_code)] // declares a precondition only; the body is safe
    pub const unsafe fn assume(avx2_fma: bool, avx512: bool) -> Self {
        Self { avx2_fma, avx512 }
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
