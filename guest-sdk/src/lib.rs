//! The guest SDK: what a program running inside a tensorvisor tenant uses to detect the
//! hypervisor and submit tensor work through the hypercall ABI (no_std core, optional `std`).
#![no_std]
