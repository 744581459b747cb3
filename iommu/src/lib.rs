//! Intel VT-d (Virtualization Technology for Directed I/O): DMAR table parsing, root/context and
//! second-level translation tables per domain, invalidation and fault reporting.
#![no_std]
