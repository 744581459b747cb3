//! CPU features the kernels may use. On the host they are detected at run time (`std`
//! feature); in the hypervisor the caller fills them in from CPUID.

/// SIMD features available to the kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2 and FMA (and F16C) all present and enabled by the OS (XCR0).
    pub avx2_fma: bool,
    /// AVX-512 F, BW and VL present and enabled.
    pub avx512: bool,
}

impl CpuFeatures {
    /// No SIMD: the portable kernels only.
    pub const fn portable() -> Self {
        Self { avx2_fma: false, avx512: false }
    }

    /// Detects the running CPU's features (host only).
    #[cfg(feature = "std")]
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            Self {
                avx2_fma: std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c"),
                avx512: std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::portable()
        }
    }
}
