//! What a Linux tenant sees of the tensor ABI: a paravirtual PCI function whose two memory BARs
//! are the *hypercall page* and the tenant's *shared tensor window*.
//!
//! Unmodified Linux user space reaches the hypervisor without a kernel module: a program maps
//! `/sys/bus/pci/devices/0000:00:01.0/resource0` (the hypercall page) and `resource1` (the
//! window) and reads the window's guest-physical base from the `resource` file. The function has
//! a configuration space and nothing else: no interrupts, no DMA, no I/O BARs.
//!
//! ## The hypercall page (BAR 0, 4 KiB)
//! Reads of the page never exit: the hypervisor backs it with a page the guest may read but not
//! write. A store traps to the hypervisor, which decodes the instruction and emulates it. Stores
//! to [`HP_ARG0`]..=[`HP_ARG3`] set the arguments (RBX, RCX, RDX, RSI of the VMCALL register
//! convention in [`crate::call`]); a 64-bit store of the call number to [`HP_CALL`] runs the
//! call and, before the vCPU executes the instruction after the store, leaves the result in
//! [`HP_RESULT`] (the value RAX would hold: ≥ 0 success, < 0 [`crate::HcallError`]) and
//! increments [`HP_SEQUENCE`]. A call that needs the engine (prefill, generate, a doorbell with
//! entries) parks the vCPU meanwhile, as a VMCALL does, while the hypervisor's engine scheduler
//! runs it among the other tenants' work.
//! Any other store (another offset, a width other than 8 bytes, a misaligned one) is dropped and
//! counted as an error of the tenant. Each vCPU has its own argument registers in the page at
//! `HP_VCPU_STRIDE * vcpu` (the first Linux tenant has one vCPU).
//!
//! Guest-physical addresses in the arguments and descriptors are those of the window: a program
//! that mapped `resource1` at `p` finds window byte `i` at `p + i` and at guest-physical
//! `window_base + i`.
//!
//! ## The window (BAR 1)
//! Ordinary tenant memory that the e820 map does not list as RAM, so the Linux kernel never
//! allocates it; it is the only memory a Linux program can register with the ABI.
//!
//! VMCALL from user mode stays governed by the tenant's `user_mode_hypercalls` policy: without
//! it, a VMCALL at CPL 3 returns [`crate::HcallError::PermissionDenied`].

/// PCI vendor id of the function. Not a PCI-SIG assignment: the function exists only inside
/// tensorvisor tenants, where no real device can collide with it.
pub const PCI_VENDOR_ID: u16 = 0x7476;
/// PCI device id of the tensor function.
pub const PCI_DEVICE_ID: u16 = 0x0001;
/// PCI class code: co-processor (0x0b40), as a processing accelerator would report.
pub const PCI_CLASS: u32 = 0x0b_40_00;
/// The function's bus/device/function: 00:01.0 (00:00.0 is the host bridge).
pub const PCI_BDF: (u8, u8, u8) = (0, 1, 0);

/// Size of BAR 0, the hypercall page.
pub const HYPERCALL_PAGE_SIZE: u64 = 0x1000;

/// Offset of the call number; a store here runs the call.
pub const HP_CALL: u64 = 0x00;
/// Offset of argument 0 (RBX).
pub const HP_ARG0: u64 = 0x08;
/// Offset of argument 1 (RCX).
pub const HP_ARG1: u64 = 0x10;
/// Offset of argument 2 (RDX).
pub const HP_ARG2: u64 = 0x18;
/// Offset of argument 3 (RSI).
pub const HP_ARG3: u64 = 0x20;
/// Offset of the result of the last call (read-only).
pub const HP_RESULT: u64 = 0x28;
/// Offset of the count of calls made through the page (read-only).
pub const HP_SEQUENCE: u64 = 0x30;
/// Bytes of the page each vCPU owns.
pub const HP_VCPU_STRIDE: u64 = 0x40;

/// The sysfs directory of the function in a Linux tenant.
pub const SYSFS_DEVICE: &str = "/sys/bus/pci/devices/0000:00:01.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_fit_one_vcpu_slot_and_are_aligned() {
        for off in [HP_CALL, HP_ARG0, HP_ARG1, HP_ARG2, HP_ARG3, HP_RESULT, HP_SEQUENCE] {
            assert_eq!(off % 8, 0);
            assert!(off + 8 <= HP_VCPU_STRIDE);
        }
        assert_eq!(HYPERCALL_PAGE_SIZE % HP_VCPU_STRIDE, 0);
    }
}
