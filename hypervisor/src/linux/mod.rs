//! The platform a Linux tenant sees, as plain host-tested logic over plain data (no unsafe, no
//! hardware access). The bare-metal side (`kernel/vmm/linux/`) wires these to VMX exits and
//! guest memory:
//!
//! - [`boot`]: bzImage and vmlinux parsing, the tenant layout, boot_params / hvm_start_info,
//!   the boot GDT and identity page tables;
//! - [`e820`]: the memory map;
//! - [`acpi_tables`]: RSDP, XSDT, FADT (hardware-reduced), DSDT, MADT;
//! - [`decode`]: the MMIO instruction decoder (iced-x86);
//! - [`gva`]: guest page-table walks, instruction fetch;
//! - [`uart`]: the 16550A on COM1;
//! - [`pci`]: configuration mechanism #1 with the host bridge and the tensor function;
//! - [`lapic`]: the local APIC (xAPIC registers, timer in all three modes);
//! - [`policy`]: the CPUID and MSR policy.
//!
//! The 8259A pair, 8254 channel 0 and CMOS clock the tenant boots on today (no local APIC yet)
//! are `crate::legacy_pc`. The local APIC and ACPI tables here are for the APIC path, not yet
//! wired into the run loop.

pub mod acpi_tables;
pub mod boot;
pub mod decode;
pub mod e820;
pub mod gva;
pub mod lapic;
pub mod pci;
pub mod policy;
pub mod uart;
