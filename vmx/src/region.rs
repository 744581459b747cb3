//! The VMXON region and VMCS region (SDM Vol. 3C, 25.2 "Format of the VMCS Region" and 25.11.5
//! "VMXON Region"): 4-KiB-aligned memory whose first 32 bits hold the VMCS revision identifier
//! (bit 31: shadow-VMCS indicator), followed by the 32-bit VMX-abort indicator.

/// Size of the regions allocated here: the maximum IA32_VMX_BASIC may report.
pub const REGION_SIZE: usize = 4096;

/// A 4-KiB page formatted as a VMXON region or VMCS region.
#[derive(Clone)]
#[repr(C, align(4096))]
pub struct VmxRegion {
    revision: u32,
    abort_indicator: u32,
    data: [u8; REGION_SIZE - 8],
}

impl VmxRegion {
    /// A zeroed region.
    pub const fn zeroed() -> Self {
        VmxRegion {
            revision: 0,
            abort_indicator: 0,
            data: [0; REGION_SIZE - 8],
        }
    }

    /// The VMCS revision identifier (bits 30:0 of the first word).
    pub const fn revision_id(&self) -> u32 {
        self.revision & 0x7FFF_FFFF
    }

    /// The shadow-VMCS indicator (bit 31 of the first word).
    pub const fn is_shadow(&self) -> bool {
        self.revision & (1 << 31) != 0
    }

    /// The VMX-abort indicator: non-zero after a VMX abort, with the abort reason (SDM 28.7).
    pub const fn abort_indicator(&self) -> u32 {
        self.abort_indicator
    }

    fn format(&mut self, revision_id: u32, shadow: bool) {
        *self = VmxRegion::zeroed();
        self.revision = (revision_id & 0x7FFF_FFFF) | if shadow { 1 << 31 } else { 0 };
    }
}

/// The VMXON region: zeroed, with the revision identifier and bit 31 clear (SDM 25.11.5).
#[derive(Clone)]
#[repr(transparent)]
pub struct VmxonRegion(VmxRegion);

impl VmxonRegion {
    /// A zeroed region; call [`Self::init`] before VMXON.
    pub const fn zeroed() -> Self {
        VmxonRegion(VmxRegion::zeroed())
    }

    /// Zeroes the region and writes `revision_id` (from `VmxCapabilities::revision_id`).
    pub fn init(&mut self, revision_id: u32) {
        self.0.format(revision_id, false);
    }

    /// The underlying region.
    pub fn region(&self) -> &VmxRegion {
        &self.0
    }
}

/// A VMCS region: zeroed, with the revision identifier and the shadow-VMCS indicator (SDM 25.2).
/// After VMCLEAR/VMPTRLD its contents belong to the processor: software uses VMREAD/VMWRITE only.
#[derive(Clone)]
#[repr(transparent)]
pub struct VmcsRegion(VmxRegion);

impl VmcsRegion {
    /// A zeroed region; call [`Self::init`] before VMCLEAR/VMPTRLD.
    pub const fn zeroed() -> Self {
        VmcsRegion(VmxRegion::zeroed())
    }

    /// Zeroes the region and writes `revision_id`, with bit 31 set for a shadow VMCS.
    pub fn init(&mut self, revision_id: u32, shadow: bool) {
        self.0.format(revision_id, shadow);
    }

    /// The underlying region (revision and VMX-abort indicator).
    pub fn region(&self) -> &VmxRegion {
        &self.0
    }
}

const _: () = assert!(core::mem::size_of::<VmxRegion>() == REGION_SIZE);
const _: () = assert!(core::mem::align_of::<VmxRegion>() == 4096);
const _: () = assert!(core::mem::size_of::<VmcsRegion>() == REGION_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;

    #[test]
    fn init_writes_revision_and_clears_the_rest() {
        let mut r = Box::new(VmcsRegion::zeroed());
        r.0.data[100] = 0xAA;
        r.0.abort_indicator = 5;
        r.init(0x8000_0004, false);
        assert_eq!(r.region().revision_id(), 4);
        assert!(
            !r.region().is_shadow(),
            "bit 31 of the given id must not leak"
        );
        assert_eq!(r.region().abort_indicator(), 0);
        assert_eq!(r.0.data[100], 0);
        r.init(4, true);
        assert!(r.region().is_shadow());
        let mut v = Box::new(VmxonRegion::zeroed());
        v.init(0x12);
        assert_eq!(v.region().revision_id(), 0x12);
        assert!(!v.region().is_shadow());
        assert_eq!((&*v as *const VmxonRegion as usize) % 4096, 0);
    }
}
