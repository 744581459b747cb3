//! The guest SDK: what a program running inside a tensorvisor tenant uses to find the hypervisor,
//! print on its console, exit with a status and make hypercalls (no_std core, optional `std`).
//!
//! The hypercall instruction itself lives in [`arch`] (x86_64 only); everything else is plain
//! code over the [`Transport`] trait, so the SDK's logic also runs on the host in tests.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arch;
pub mod console;
#[cfg(feature = "in-process")]
pub mod in_process;
#[cfg(all(feature = "linux", target_os = "linux", target_arch = "x86_64"))]
pub mod linux;
pub mod tensor;
pub mod vcpu;

pub use tensor_hcall::boot::GuestBootInfo;
pub use tensor_hcall::cpuid::HypervisorInfo;
pub use tensor_hcall::{CallNumber, HcallError, HcallRegs, Hypercall};

/// Bytes a transport can stage at once (descriptors, query results, console chunks).
pub const STAGE_BYTES: usize = 256;

/// How hypercalls reach the hypervisor: VMCALL in a guest ([`arch::Vmcall`]), or the real
/// dispatcher and engine in this process (`in_process::InProcess`, feature `in-process`).
pub trait Transport {
    /// Makes a hypercall and returns RAX.
    fn hypercall(&mut self, regs: HcallRegs) -> u64;
    /// CPUID as the guest sees it.
    fn cpuid(&mut self, leaf: u32) -> [u32; 4];
    /// Copies `bytes` (at most [`STAGE_BYTES`]) into memory the hypervisor can read and returns
    /// its guest-physical address; valid until the next `stage`.
    fn stage(&mut self, bytes: &[u8]) -> u64;
    /// Reads the staging area back (after the hypervisor wrote a result there).
    fn read_staged(&mut self, out: &mut [u8]);
}

/// Makes `call` and decodes RAX into a value or an [`HcallError`].
pub fn call<T: Transport + ?Sized>(t: &mut T, call: Hypercall) -> Result<u64, HcallError> {
    tensor_hcall::decode_result(t.hypercall(call.to_regs()))
}

/// Finds the tensorvisor hypervisor: the CPUID "hypervisor present" bit, then our signature
/// leaf and the version/features leaf. `None` when not running under tensorvisor.
pub fn detect<T: Transport + ?Sized>(t: &mut T) -> Option<HypervisorInfo> {
    if t.cpuid(1)[2] & (1 << 31) == 0 {
        return None;
    }
    let sig = t.cpuid(tensor_hcall::cpuid::SIGNATURE_LEAF);
    let feat = t.cpuid(tensor_hcall::cpuid::FEATURES_LEAF);
    tensor_hcall::cpuid::detect(sig, feat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor_hcall::cpuid::{leaf, Features, SIGNATURE_LEAF};
    use tensor_hcall::ABI_VERSION;
    extern crate alloc;

    /// A transport that answers like the hypervisor's CPUID policy and echoes hypercalls.
    struct Fake {
        present: bool,
        last: Option<HcallRegs>,
    }

    impl Transport for Fake {
        fn hypercall(&mut self, regs: HcallRegs) -> u64 {
            self.last = Some(regs);
            tensor_hcall::encode_result(match Hypercall::decode(&regs) {
                Ok(Hypercall::ConsoleWrite { len, .. }) => Ok(len),
                Ok(_) => Err(HcallError::NotSupported),
                Err(e) => Err(e),
            })
        }
        fn stage(&mut self, _: &[u8]) -> u64 {
            0x1000
        }
        fn read_staged(&mut self, _: &mut [u8]) {}
        fn cpuid(&mut self, l: u32) -> [u32; 4] {
            match l {
                1 => [0, 0, if self.present { 1 << 31 } else { 0 }, 0],
                l if l >= SIGNATURE_LEAF => leaf(l, ABI_VERSION, Features::CONSOLE).unwrap_or([0; 4]),
                _ => [0; 4],
            }
        }
    }

    #[test]
    fn detection_needs_the_hypervisor_bit_and_our_signature() {
        let info = detect(&mut Fake { present: true, last: None }).expect("detected");
        assert_eq!(info.version, ABI_VERSION);
        assert!(info.features.contains(Features::CONSOLE));
        assert!(detect(&mut Fake { present: false, last: None }).is_none());
    }

    /// Records the text of every ConsoleWrite.
    struct Recorder {
        staged: alloc::vec::Vec<u8>,
        writes: alloc::vec::Vec<alloc::vec::Vec<u8>>,
    }

    impl Transport for Recorder {
        fn hypercall(&mut self, regs: HcallRegs) -> u64 {
            let len = match Hypercall::decode(&regs) {
                Ok(Hypercall::ConsoleWrite { len, .. }) => len,
                _ => return tensor_hcall::encode_result(Err(HcallError::NotSupported)),
            };
            self.writes.push(self.staged[..len as usize].to_vec());
            tensor_hcall::encode_result(Ok(len))
        }
        fn stage(&mut self, b: &[u8]) -> u64 {
            self.staged = b.to_vec();
            0x1000
        }
        fn read_staged(&mut self, _: &mut [u8]) {}
        fn cpuid(&mut self, _: u32) -> [u32; 4] {
            [0; 4]
        }
    }

    #[test]
    fn a_line_is_one_console_write_and_a_long_one_is_cut_at_the_staging_size() {
        use core::fmt::Write as _;
        let mut r = Recorder { staged: alloc::vec::Vec::new(), writes: alloc::vec::Vec::new() };
        {
            let mut line = console::Line::new(&mut r);
            let _ = writeln!(line, "vCPU {} of {}: ok", 1, 2);
        }
        assert_eq!(r.writes, [b"vCPU 1 of 2: ok\n".to_vec()], "one write, on drop");
        let long = "x".repeat(STAGE_BYTES + 10);
        let mut line = console::Line::new(&mut r);
        let _ = writeln!(line, "{long}");
        let _ = line.flush();
        drop(line);
        assert_eq!(r.writes.len(), 3, "a full staging area goes out, then the rest");
        assert_eq!(r.writes[1].len(), STAGE_BYTES);
        assert_eq!(r.writes[2].len(), 11);
    }

    #[test]
    fn calls_encode_registers_and_decode_errors() {
        let mut f = Fake { present: true, last: None };
        assert_eq!(call(&mut f, Hypercall::ConsoleWrite { gpa: 0x2000, len: 5 }), Ok(5));
        let r = f.last.unwrap();
        assert_eq!((r.rax, r.rbx, r.rcx), (CallNumber::ConsoleWrite as u64, 0x2000, 5));
        assert_eq!(call(&mut f, Hypercall::Exit { status: 3 }), Err(HcallError::NotSupported));
    }
}
