//! The bare-metal half of the hypervisor: everything that touches the real machine. The logic it
//! relies on (boot-information parsing, frame allocation, page-table building) is in the library
//! and tested on the host.

pub mod boot;
pub mod cpu;
pub mod cr;
pub mod devices;
pub mod exit;
pub mod fpu;
pub mod gdt;
pub mod idt;
pub mod infer;
pub mod logger;
pub mod memory;
pub mod port;
pub mod serial;
pub mod simd;
pub mod smp;
pub mod tsc;
pub mod vmm;
