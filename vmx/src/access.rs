//! Access to the current VMCS behind a small trait, so code that programs or decodes a VMCS runs
//! against the real VMREAD/VMWRITE in the hypervisor and against [`FakeVmcs`] in host tests.

use crate::error::{VmFail, VmInstructionError};
use crate::fields::{all_encodings, encoding_width, is_read_only, FieldWidth, VmcsField};

/// Raw VMREAD/VMWRITE by encoding. Prefer the typed `read`/`write` methods of the field enums in
/// [`crate::fields`], which fix the value's width and offer no `write` for read-only fields.
pub trait VmcsAccess {
    /// VMREAD of the field with `encoding` (value zero-extended to 64 bits).
    fn vmread(&self, encoding: u32) -> Result<u64, VmFail>;
    /// VMWRITE of the field with `encoding`.
    fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail>;
}

/// Capacity of [`FakeVmcs`]: more than the number of modelled fields.
const FAKE_SLOTS: usize = 256;

/// An in-memory VMCS for host tests that behaves like the processor for the checks it can model:
/// VMREAD/VMWRITE of an encoding that is not modelled fail with VM-instruction error 12, VMWRITE
/// of a read-only field fails with error 13 (unless the "VMWRITE any field" capability is
/// emulated), and values are truncated to the field's width. Fields never written read as 0.
#[derive(Clone, Debug)]
pub struct FakeVmcs {
    slots: [(u32, u64); FAKE_SLOTS],
    used: usize,
    vmwrite_any_field: bool,
}

impl Default for FakeVmcs {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeVmcs {
    /// An empty fake VMCS whose read-only fields cannot be written with `vmwrite`.
    pub const fn new() -> Self {
        FakeVmcs {
            slots: [(0, 0); FAKE_SLOTS],
            used: 0,
            vmwrite_any_field: false,
        }
    }

    /// Emulates IA32_VMX_MISC bit 29: VMWRITE may write read-only fields too.
    pub fn set_vmwrite_any_field(&mut self, allowed: bool) {
        self.vmwrite_any_field = allowed;
    }

    /// Sets any modelled field, read-only ones included, as the processor would on a VM exit.
    /// Returns `false` for an encoding that is not modelled.
    pub fn preset(&mut self, encoding: u32, value: u64) -> bool {
        if !all_encodings().any(|e| e == encoding) {
            return false;
        }
        self.store(encoding, value)
    }

    /// Typed form of [`Self::preset`] for any field type, read-only ones included.
    pub fn preset_field<F: VmcsField>(&mut self, field: F, value: u64) -> bool {
        self.preset(field.encoding(), value)
    }

    /// Number of distinct fields written so far.
    pub fn fields_written(&self) -> usize {
        self.used
    }

    fn store(&mut self, encoding: u32, value: u64) -> bool {
        let value = match encoding_width(encoding) {
            FieldWidth::Bits16 => value & 0xFFFF,
            FieldWidth::Bits32 => value & 0xFFFF_FFFF,
            FieldWidth::Bits64 | FieldWidth::Natural => value,
        };
        if let Some(slot) = self.slots[..self.used]
            .iter_mut()
            .find(|(e, _)| *e == encoding)
        {
            slot.1 = value;
            return true;
        }
        match self.slots.get_mut(self.used) {
            Some(slot) => {
                *slot = (encoding, value);
                self.used += 1;
                true
            }
            None => false,
        }
    }
}

impl VmcsAccess for FakeVmcs {
    fn vmread(&self, encoding: u32) -> Result<u64, VmFail> {
        if !all_encodings().any(|e| e == encoding) {
            return Err(VmFail::Valid(VmInstructionError::UnsupportedComponent));
        }
        Ok(self.slots[..self.used]
            .iter()
            .find(|(e, _)| *e == encoding)
            .map_or(0, |s| s.1))
    }

    fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        if !all_encodings().any(|e| e == encoding) {
            return Err(VmFail::Valid(VmInstructionError::UnsupportedComponent));
        }
        if is_read_only(encoding) && !self.vmwrite_any_field {
            return Err(VmFail::Valid(VmInstructionError::VmwriteReadOnly));
        }
        if self.store(encoding, value) {
            Ok(())
        } else {
            Err(VmFail::Valid(VmInstructionError::UnsupportedComponent))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::*;

    #[test]
    fn typed_round_trip_and_width_truncation() {
        let mut v = FakeVmcs::new();
        Guest16::CsSelector.write(&mut v, 0x08).unwrap();
        Control64::EptPointer
            .write(&mut v, 0x1234_5000_005e)
            .unwrap();
        GuestNatural::Rip
            .write(&mut v, 0xffff_8000_0000_1000)
            .unwrap();
        assert_eq!(Guest16::CsSelector.read(&v), Ok(0x08));
        assert_eq!(Control64::EptPointer.read(&v), Ok(0x1234_5000_005e));
        assert_eq!(GuestNatural::Rip.read(&v), Ok(0xffff_8000_0000_1000));
        // An untyped write wider than the field is truncated as VMWRITE does.
        v.vmwrite(Guest32::CsLimit.encoding(), 0x1_ffff_ffff)
            .unwrap();
        assert_eq!(Guest32::CsLimit.read(&v), Ok(0xffff_ffff));
        assert_eq!(GuestNatural::Cr3.read(&v), Ok(0), "unwritten fields read 0");
        assert_eq!(v.fields_written(), 4);
    }

    #[test]
    fn read_only_fields_reject_vmwrite() {
        let mut v = FakeVmcs::new();
        assert_eq!(
            v.vmwrite(ReadOnly32::ExitReason.encoding(), 10),
            Err(VmFail::Valid(VmInstructionError::VmwriteReadOnly))
        );
        assert!(v.preset_field(ReadOnly32::ExitReason, 10));
        assert_eq!(ReadOnly32::ExitReason.read(&v), Ok(10));
        v.set_vmwrite_any_field(true);
        assert_eq!(v.vmwrite(ReadOnly32::ExitReason.encoding(), 12), Ok(()));
        assert_eq!(ReadOnly32::ExitReason.read(&v), Ok(12));
    }

    #[test]
    fn unknown_encodings_fail_like_hardware() {
        let mut v = FakeVmcs::new();
        let bad = 0x2001; // the "high" half of a 64-bit field is not modelled
        assert_eq!(
            v.vmread(bad),
            Err(VmFail::Valid(VmInstructionError::UnsupportedComponent))
        );
        assert_eq!(
            v.vmwrite(bad, 1),
            Err(VmFail::Valid(VmInstructionError::UnsupportedComponent))
        );
        assert!(!v.preset(0x7fff, 0));
    }
}
