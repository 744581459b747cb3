//! Extended page tables (Intel SDM Vol. 3C, 29.3): typed entries, guest-physical address spaces
//! built as plain logic over a frame source, EPTP construction, INVEPT and VPID management.
//!
//! [`GuestAddressSpace`] builds and edits one guest's 4-level EPT through a [`FrameSource`]
//! (the hypervisor's frame allocator and direct map; a heap fake in host tests, feature `fake`),
//! so the host tests exercise the same table logic the hypervisor runs. The only `unsafe` here
//! is the INVEPT/INVVPID forwarding to `vmx` and the `FrameSource` contract.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod addr;
pub mod entry;
pub mod eptp;
pub mod frame;
pub mod space;
pub mod vpid;

#[cfg(test)]
mod space_tests;

pub use addr::{AddrError, GuestPhysAddr, HostPhysAddr};
pub use entry::{EptEntry, EptPerms};
pub use eptp::{Eptp, EptpError};
#[cfg(any(test, feature = "fake"))]
pub use frame::fake;
pub use frame::{FrameSource, Table};
pub use space::{EptError, GuestAddressSpace, NeedsInvept, PageSize, PageSizes, Translation};
pub use vpid::{Vpid, VpidAllocator};
