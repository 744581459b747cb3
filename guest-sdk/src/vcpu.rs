//! Multi-vCPU tenants: which vCPU is running, and which physical CPU serves it.
//!
//! How a tenant's vCPUs start (the hypervisor's side is `hypervisor/src/kernel/vmm`): every vCPU
//! enters the image's entry point, in 64-bit mode with the same page tables, with RDI = the
//! boot-information page and RSI = its vCPU index (`0..boot.vcpu_count`). Each has its own
//! [`VCPU_STACK_BYTES`] stack: vCPU `i`'s RSP starts `i * VCPU_STACK_BYTES` below the top of
//! guest memory, so the image must end below `memory_size - vcpu_count * VCPU_STACK_BYTES`. So
//! the entry point is
//!
//! ```text
//! extern "C" fn _start(boot: &'static GuestBootInfo, vcpu: u64) -> !
//! ```
//!
//! and code that must run once (printing a banner, setting up the tensor ring) checks
//! `vcpu == 0`. The vCPUs share all of the tenant's memory (statics included: use atomics to
//! cooperate), its tensor handles, its ring and its sessions. The tenant has one engine request
//! in flight at a time: an engine call (doorbell, prefill, generate) made while another of its
//! vCPUs waits for one is answered `Busy`. `console::exit` from any vCPU ends the whole tenant;
//! a vCPU with nothing more to do should spin (`core::hint::spin_loop`) rather than HLT (which
//! stops the tenant).

pub use tensor_hcall::boot::{VcpuPlacement, MSR_VCPU, VCPU_STACK_BYTES};

/// Which vCPU this is and which physical CPU handled the question (a synthetic MSR read, so
/// the answer comes from the CPU that took the exit).
#[cfg(target_arch = "x86_64")]
pub fn placement() -> VcpuPlacement {
    // SAFETY: the hypervisor lets every guest read MSR_VCPU.
    VcpuPlacement::from_msr(unsafe { crate::arch::rdmsr(MSR_VCPU) })
}
