//! The platform a Linux tenant sees, as plain host-tested logic over plain data (no unsafe, no
//! hardware access). The bare-metal side (`kernel/vmm/linux/`) wires these to VMX exits and
//! guest memory:
//!
//! - [`boot`]: bzImage and vmlinux parsing, the tenant layout, boot_params / hvm_start_info,
//!   the boot GDT and identity page tables;
//! - [`e820`]: the memory map;
//! - [`acpi_tables`]: RSDP, XSDT, FADT (classic, with the PM1a registers), DSDT (`\_S5`, the
//!   PCI host bridge), MADT;
//! - [`decode`]: the MMIO instruction decoder (iced-x86);
//! - [`gva`]: guest page-table walks, instruction fetch;
//! - [`uart`]: the 16550A on COM1;
//! - [`pci`]: configuration mechanism #1 with the host bridge and the tensor function;
//! - [`lapic`]: the local APIC (xAPIC registers, timer in all three modes);
//! - [`intr`]: which interrupt is next: the local APIC's or the 8259A's through LINT0 (ExtINT);
//! - [`policy`]: the CPUID and MSR policy.
//!
//! The 8259A pair, 8254 channel 0 and CMOS clock behind the local APIC are `crate::legacy_pc`.

pub mod acpi_tables;
pub mod boot;
pub mod decode;
pub mod e820;
pub mod gva;
pub mod intr;
pub mod lapic;
pub mod pci;
pub mod policy;
pub mod uart;
