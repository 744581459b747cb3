//! Thin `unsafe` wrappers over the VMX instructions (SDM Vol. 3C, chapter 31 "VMX Instruction
//! Reference"), returning [`VmFail`] on VMfailInvalid/VMfailValid.
//!
//! Each wrapper documents the preconditions whose violation would fault (#UD, #GP) or corrupt
//! memory; conditions the processor checks and reports with VMfail are *not* preconditions, they
//! come back as errors.

use crate::error::{VmFail, VmInstructionError};

/// INVEPT types (SDM 31.3 "INVEPT").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum InveptType {
    /// Invalidate mappings tagged with the given EPTP.
    SingleContext = 1,
    /// Invalidate mappings tagged with any EPTP.
    AllContext = 2,
}

/// INVVPID types (SDM 31.3 "INVVPID").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum InvvpidType {
    /// One linear address for one VPID.
    IndividualAddress = 0,
    /// Every mapping of one VPID.
    SingleContext = 1,
    /// Every mapping of every VPID except 0.
    AllContext = 2,
    /// Every mapping of one VPID except global translations.
    SingleContextRetainingGlobals = 3,
}

/// The 128-bit INVEPT descriptor (SDM 31.3, figure 31-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct InveptDescriptor {
    /// The EPTP whose mappings are invalidated (single-context).
    pub eptp: u64,
    /// Reserved, must be 0.
    pub reserved: u64,
}

/// The 128-bit INVVPID descriptor (SDM 31.3, figure 31-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct InvvpidDescriptor {
    /// VPID in bits 15:0; bits 63:16 reserved, must be 0.
    pub vpid: u64,
    /// The linear address (individual-address type).
    pub linear_address: u64,
}

/// Turns the flags a VMX instruction left into its result (SDM 31.2): CF = 1 is VMfailInvalid,
/// ZF = 1 is VMfailValid with the error number `read_error` fetches from the current VMCS.
pub fn result_from_flags(
    cf: bool,
    zf: bool,
    read_error: impl FnOnce() -> u32,
) -> Result<(), VmFail> {
    if cf {
        Err(VmFail::Invalid)
    } else if zf {
        Err(VmFail::Valid(VmInstructionError::from_number(read_error())))
    } else {
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
pub use imp::*;

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::*;
    use crate::fields::ReadOnly32;
    use core::arch::asm;

    /// Reads the VM-instruction error field after VMfailValid (which guarantees a current VMCS).
    fn instruction_error() -> u32 {
        // SAFETY: only called right after a VMX instruction reported VMfailValid, which the
        // processor does only in VMX root operation at CPL 0 with a current VMCS (SDM 31.2), so
        // VMREAD of a valid read-only field cannot fault.
        unsafe { vmread(ReadOnly32::VmInstructionError as u32) }.map_or(0, |v| v as u32)
    }

    /// VMXON: enters VMX root operation (SDM 31.3 "VMXON").
    ///
    /// # Safety
    /// - CPL 0, protected/long mode, CR4.VMXE = 1, CR0/CR4 within IA32_VMX_CR{0,4}_FIXED{0,1},
    ///   IA32_FEATURE_CONTROL locked with VMX outside SMX enabled (else #GP or #UD).
    /// - `vmxon_phys` is the 4-KiB-aligned physical address of a zeroed region of at least
    ///   IA32_VMX_BASIC\[44:32\] bytes whose first 4 bytes hold the VMCS revision identifier, and
    ///   that memory stays reserved for the processor until VMXOFF.
    pub unsafe fn vmxon(vmxon_phys: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above; the operand is a pointer to a u64 on our stack.
        unsafe {
            asm!(
                "vmxon qword ptr [{p}]", "setc {cf}", "setz {zf}",
                p = in(reg) &vmxon_phys, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                options(nostack),
            );
        }
        result_from_flags(cf != 0, zf != 0, instruction_error)
    }

    /// VMXOFF: leaves VMX operation (SDM 31.3 "VMXOFF").
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0 (else #UD/#GP).
    /// - No code may rely on VMX operation afterwards (VMCSs should have been VMCLEARed).
    pub unsafe fn vmxoff() -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above; VMXOFF has no memory operand.
        unsafe {
            asm!("vmxoff", "setc {cf}", "setz {zf}", cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        result_from_flags(cf != 0, zf != 0, instruction_error)
    }

    /// VMCLEAR: flushes a VMCS to memory and makes it clear and not current (SDM 31.3 "VMCLEAR").
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0.
    /// - `vmcs_phys` is the 4-KiB-aligned physical address of a VMCS region owned by the caller
    ///   (the processor writes it).
    pub unsafe fn vmclear(vmcs_phys: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above; the operand is a pointer to a u64 on our stack.
        unsafe {
            asm!(
                "vmclear qword ptr [{p}]", "setc {cf}", "setz {zf}",
                p = in(reg) &vmcs_phys, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                options(nostack),
            );
        }
        result_from_flags(cf != 0, zf != 0, instruction_error)
    }

    /// VMPTRLD: makes a VMCS current and active (SDM 31.3 "VMPTRLD").
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0.
    /// - `vmcs_phys` is the 4-KiB-aligned physical address of a VMCS region owned by the caller,
    ///   initialised with the revision identifier, and not current on another CPU.
    pub unsafe fn vmptrld(vmcs_phys: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above; the operand is a pointer to a u64 on our stack.
        unsafe {
            asm!(
                "vmptrld qword ptr [{p}]", "setc {cf}", "setz {zf}",
                p = in(reg) &vmcs_phys, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                options(nostack),
            );
        }
        result_from_flags(cf != 0, zf != 0, instruction_error)
    }

    /// VMPTRST: the physical address of the current VMCS (all ones if none) (SDM 31.3 "VMPTRST").
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0.
    pub unsafe fn vmptrst() -> u64 {
        let mut out: u64 = 0;
        // SAFETY: preconditions above; VMPTRST writes 8 bytes to `out`, which we own.
        unsafe {
            asm!("vmptrst qword ptr [{p}]", p = in(reg) &mut out, options(nostack));
        }
        out
    }

    /// VMREAD of a field of the current VMCS (SDM 31.3 "VMREAD").
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0 (without a current VMCS the result is VMfailInvalid).
    pub unsafe fn vmread(encoding: u32) -> Result<u64, VmFail> {
        let value: u64;
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above; both operands are registers.
        unsafe {
            asm!(
                "vmread {v}, {e}", "setc {cf}", "setz {zf}",
                v = out(reg) value, e = in(reg) u64::from(encoding),
                cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                options(nostack, nomem),
            );
        }
        // A failing VMREAD is reported with the error number of the current VMCS; reading it
        // recursively is fine because VMfailValid implies a current VMCS.
        result_from_flags(cf != 0, zf != 0, instruction_error).map(|()| value)
    }

    /// VMWRITE of a field of the current VMCS (SDM 31.3 "VMWRITE").
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0.
    /// - Writing fields that hold addresses (bitmaps, EPTP, MSR lists, host RIP/RSP, ...) hands the
    ///   processor memory: the caller answers for what the value points to.
    pub unsafe fn vmwrite(encoding: u32, value: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above; both operands are registers.
        unsafe {
            asm!(
                "vmwrite {e}, {v}", "setc {cf}", "setz {zf}",
                e = in(reg) u64::from(encoding), v = in(reg) value,
                cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                options(nostack, nomem),
            );
        }
        result_from_flags(cf != 0, zf != 0, instruction_error)
    }

    /// VMLAUNCH (SDM 31.3 "VMLAUNCH/VMRESUME"). Returns only if the launch failed; on success
    /// the guest runs and the next VM exit continues at the VMCS's host RIP with its host RSP.
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0 with a clear, current VMCS whose host state describes an
    ///   exit path that never returns into this stack frame, and whose guest state and controls
    ///   reference only memory the guest may use (EPT, bitmaps, MSR lists).
    /// - Guest general-purpose registers are whatever they are at this instruction: callers that
    ///   need them loaded do the entry in their own assembly instead.
    pub unsafe fn vmlaunch() -> VmFail {
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above.
        unsafe {
            asm!("vmlaunch", "setc {cf}", "setz {zf}", cf = out(reg_byte) cf, zf = out(reg_byte) zf);
        }
        match result_from_flags(cf != 0, zf != 0, instruction_error) {
            Err(e) => e,
            // Falling through with neither flag set cannot happen (success does not return).
            Ok(()) => VmFail::Invalid,
        }
    }

    /// VMRESUME: like [`vmlaunch`] for a launched VMCS.
    ///
    /// # Safety
    /// As for [`vmlaunch`], with a launched (not clear) current VMCS.
    pub unsafe fn vmresume() -> VmFail {
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above.
        unsafe {
            asm!("vmresume", "setc {cf}", "setz {zf}", cf = out(reg_byte) cf, zf = out(reg_byte) zf);
        }
        match result_from_flags(cf != 0, zf != 0, instruction_error) {
            Err(e) => e,
            Ok(()) => VmFail::Invalid,
        }
    }

    /// INVEPT (SDM 31.3 "INVEPT"): invalidates EPT-derived translations.
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0, on a processor with INVEPT (IA32_VMX_EPT_VPID_CAP bit 20);
    ///   otherwise #UD. Unsupported types come back as VMfailValid (error 28).
    pub unsafe fn invept(kind: InveptType, eptp: u64) -> Result<(), VmFail> {
        let desc = InveptDescriptor { eptp, reserved: 0 };
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above; the descriptor is a 16-byte value on our stack that the
        // instruction only reads.
        unsafe {
            asm!(
                "invept {t}, xmmword ptr [{d}]", "setc {cf}", "setz {zf}",
                t = in(reg) kind as u64, d = in(reg) &desc,
                cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                options(nostack, readonly),
            );
        }
        result_from_flags(cf != 0, zf != 0, instruction_error)
    }

    /// INVVPID (SDM 31.3 "INVVPID"): invalidates VPID-tagged linear translations.
    ///
    /// # Safety
    /// - In VMX root operation at CPL 0, on a processor with INVVPID (IA32_VMX_EPT_VPID_CAP bit
    ///   32); otherwise #UD. Unsupported types or VPID 0 come back as VMfailValid (error 28).
    pub unsafe fn invvpid(kind: InvvpidType, vpid: u16, linear_address: u64) -> Result<(), VmFail> {
        let desc = InvvpidDescriptor {
            vpid: u64::from(vpid),
            linear_address,
        };
        let (cf, zf): (u8, u8);
        // SAFETY: preconditions above; the descriptor is a 16-byte value on our stack that the
        // instruction only reads.
        unsafe {
            asm!(
                "invvpid {t}, xmmword ptr [{d}]", "setc {cf}", "setz {zf}",
                t = in(reg) kind as u64, d = in(reg) &desc,
                cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                options(nostack, readonly),
            );
        }
        result_from_flags(cf != 0, zf != 0, instruction_error)
    }

    /// The current VMCS of this CPU, reached with VMREAD/VMWRITE.
    ///
    /// Not `Send`: a current VMCS belongs to one logical processor.
    #[derive(Debug)]
    pub struct CurrentVmcs {
        _not_send: core::marker::PhantomData<*const ()>,
    }

    impl CurrentVmcs {
        /// # Safety
        /// - This CPU is in VMX root operation at CPL 0 for as long as the value lives, and the
        ///   VMCS the caller means is current (VMPTRLD) throughout.
        /// - Writes through it are VMWRITEs: see [`vmwrite`] for fields that hold addresses.
        pub unsafe fn assume_current() -> Self {
            CurrentVmcs {
                _not_send: core::marker::PhantomData,
            }
        }
    }

    impl crate::access::VmcsAccess for CurrentVmcs {
        fn vmread(&self, encoding: u32) -> Result<u64, VmFail> {
            // SAFETY: VMX root operation at CPL 0 is guaranteed by `assume_current`'s contract.
            unsafe { vmread(encoding) }
        }

        fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
            // SAFETY: as above; the meaning of address-holding fields is the contract the
            // creator of this value accepted in `assume_current`.
            unsafe { vmwrite(encoding, value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_vmfail() {
        assert_eq!(result_from_flags(false, false, || unreachable!()), Ok(()));
        assert_eq!(
            result_from_flags(true, false, || unreachable!()),
            Err(VmFail::Invalid)
        );
        assert_eq!(
            result_from_flags(false, true, || 11),
            Err(VmFail::Valid(VmInstructionError::VmptrldWrongRevision))
        );
    }

    #[test]
    fn descriptor_layouts() {
        assert_eq!(core::mem::size_of::<InveptDescriptor>(), 16);
        assert_eq!(core::mem::size_of::<InvvpidDescriptor>(), 16);
        assert_eq!(InvvpidType::SingleContextRetainingGlobals as u64, 3);
        assert_eq!(InveptType::AllContext as u64, 2);
    }
}
