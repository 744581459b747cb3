//! VT-x hardware model, without policy: VMX capability MSRs, the VMXON region, typed VMCS fields
//! and controls, exit reasons and their decoded qualifications (Intel SDM Vol. 3C, chapters 24-28).
//!
//! Everything here is plain data and pure functions that the host unit-tests, except the thin
//! `unsafe` wrappers over RDMSR and the VMX instructions ([`instr`], [`caps::read_raw_msrs`]),
//! which are compiled for x86_64 only and each state their preconditions. Policy (which controls
//! to want, what to do on an exit) belongs to the hypervisor.
//!
//! Section numbers follow the SDM editions from 2023 on (VMCS in chapter 25, exits in 28, VMX
//! instructions in 31); older editions number the same text one lower.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod access;
pub mod caps;
pub mod controls;
pub mod cr;
pub mod error;
pub mod fields;
pub mod instr;
pub mod msr;
pub mod region;

pub use access::{FakeVmcs, VmcsAccess};
#[cfg(target_arch = "x86_64")]
pub use caps::read_raw_msrs;
pub use caps::{AllowedSettings, CapsError, EptVpidCap, MemoryType, RawVmxMsrs, VmxCapabilities};
pub use controls::{
    ControlError, EntryControls, ExitControls, PinBasedControls, PrimaryControls, SecondaryControls,
};
pub use error::{VmFail, VmInstructionError};
pub mod exit;
pub mod exit_info;
pub mod qual;

pub use exit::{ExitReason, ExitReasonField};
pub use exit_info::{Exit, ExitDecodeError, ExitInfo};
