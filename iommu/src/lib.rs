//! Intel VT-d (Virtualization Technology for Directed I/O, spec rev. 4.x): the hardware model,
//! no policy. Plain logic over plain data, host-tested:
//!
//! - [`dmar`]: the ACPI DMAR table (DRHD units, RMRRs, device scopes), bounds-checked;
//! - [`regs`]: the remapping unit's register offsets and typed register values;
//! - [`tables`]: root and context tables ([`ContextTables`]) and per-domain second-level page
//!   tables ([`Domain`]) built over a [`FrameSource`];
//! - [`fault`]: fault-recording register decoding (source id, address, reason).
//!
//! The hypervisor owns the policy (which device gets which domain) and the register accesses.
//! The only `unsafe` here is the [`FrameSource`] contract, because hardware walks the frames.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod addr;
pub mod dmar;
pub mod fault;
pub mod frame;
pub mod regs;
pub mod tables;

pub use addr::{AddrError, HostPhys, Iova, SourceId};
pub use fault::{FaultReason, FaultRecord};
#[cfg(any(test, feature = "fake"))]
pub use frame::fake;
pub use frame::{FrameSource, Table};
pub use tables::{AddressWidth, ContextTables, Domain, DomainId, MapError, Perms};
