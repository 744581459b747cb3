//! The tensorvisor hypervisor's hardware-independent core: multiboot2 parsing, physical frame
//! allocation, page-table building, guest ELF validation, the exit policy and the tensor
//! hypercall dispatcher. These are plain functions over plain data, unit-tested on
//! the host; the bare-metal binary (`src/main.rs`) wires them to the real machine.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod accounting;
pub mod acpi;
pub mod console;
pub mod dispatch;
pub mod elf;
pub mod legacy_pc;
pub mod linux;
pub mod frames;
pub mod irq;
pub mod manifest;
pub mod multiboot2;
pub mod nvme;
pub mod paging;
pub mod placement;
pub mod pci;
pub mod sched;
pub mod store;
pub mod vcpu;
pub mod xstate;
