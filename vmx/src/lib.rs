//! VT-x hardware model, without policy: VMX capability MSRs, the VMXON region, typed VMCS fields
//! and controls, exit reasons and their decoded qualifications (Intel SDM Vol. 3C, chapters 24-28).
#![no_std]
