//! The platform a Linux tenant sees, as plain host-tested logic: the boot protocols and boot
//! structures ([`boot`]), the e820 map ([`e820`]). The bare-metal side
//! (`kernel/vmm/linux/`) wires these to VMX exits and guest memory.

pub mod acpi_tables;
pub mod boot;
pub mod decode;
pub mod e820;
