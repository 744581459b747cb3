//! Extended page tables (Intel SDM Vol. 3C, 28.3): typed entries, guest-physical address spaces
//! built as plain logic over a frame source, EPTP construction, INVEPT and VPID management.
#![no_std]
