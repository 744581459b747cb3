//! The tensor hypercall ABI shared by the tensorvisor hypervisor and its guests: version, CPUID
//! signature, call numbers, register convention, errors, `repr(C)` descriptors and ring layouts.
#![no_std]
#![forbid(unsafe_code)]
