//! A vCPU's x87/SSE/AVX register state while it does not run: the save area's form and size,
//! and the image a new vCPU starts from.
//!
//! VM entries and exits neither load nor save this state (Intel SDM Vol. 3C, 28.3 and 29.5 list
//! what they switch; the x87/SSE/AVX registers are not among them), so the hypervisor saves it
//! after each exit and restores it before each entry (`kernel::fpu::GuestFpu`). With XSAVE the
//! area holds every component the host's XCR0 enables, in the standard (non-compacted) form, and
//! its size is CPUID.(EAX=0DH,ECX=0):EBX, the size for the XCR0 in force (SDM Vol. 1, 13.2);
//! without XSAVE it is the 512-byte FXSAVE image (SDM Vol. 1, 10.5.1). Guests cannot change
//! XCR0: XSETBV always exits in VMX non-root operation (SDM Vol. 3C, 26.1.2) and the hypervisor
//! answers it with #GP, so the host's XCR0 is in force while any guest runs.

/// The area's alignment: XSAVE/XRSTOR need 64 bytes (FXSAVE 16).
pub const AREA_ALIGN: usize = 64;
/// The area the hypervisor reserves per vCPU. x87, SSE, AVX and the three AVX-512 components
/// take 2,688 bytes in the standard form; a larger XCR0 (AMX tiles) is refused.
pub const AREA_CAPACITY: usize = 4096;
/// The legacy region (the FXSAVE image) and the XSAVE header after it (SDM Vol. 1, 13.4).
pub const LEGACY_SIZE: usize = 512;
pub const HEADER_SIZE: usize = 64;

/// XCR0 bits (SDM Vol. 1, 13.3).
pub const XCR0_X87: u64 = 1;
pub const XCR0_SSE: u64 = 1 << 1;
pub const XCR0_AVX: u64 = 1 << 2;

/// The x87 control word and MXCSR after FNINIT / at reset (SDM Vol. 1, 8.1.5 and 10.2.3.1).
pub const FCW_INIT: u16 = 0x037f;
pub const MXCSR_INIT: u32 = 0x1f80;
/// Their offsets in the legacy region (SDM Vol. 1, table 10-2).
const FCW_OFFSET: usize = 0;
const MXCSR_OFFSET: usize = 24;

/// How the state is saved: FXSAVE64/FXRSTOR64 where the CPU has no XSAVE (XCR0 0), else
/// XSAVE64/XRSTOR64 with the requested-feature bitmap XCR0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveForm {
    Fxsave,
    Xsave { xcr0: u64 },
}

/// The form and the number of bytes of the area the instructions use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaLayout {
    pub form: SaveForm,
    pub size: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XstateError {
    /// XCR0 without the x87 bit, which XSETBV never accepts.
    NoX87(u64),
    /// CPUID's size is smaller than the legacy region plus the header.
    TooSmall(u32),
    /// CPUID's size does not fit the area reserved per vCPU.
    TooLarge(u32),
}

impl core::fmt::Display for XstateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            XstateError::NoX87(x) => write!(f, "XCR0 {x:#x} lacks the x87 bit"),
            XstateError::TooSmall(n) => write!(f, "XSAVE area size {n} is below {}", LEGACY_SIZE + HEADER_SIZE),
            XstateError::TooLarge(n) => write!(f, "XSAVE area size {n} exceeds the {AREA_CAPACITY} bytes reserved per vCPU"),
        }
    }
}

impl AreaLayout {
    /// The layout for the host's XCR0 (0: no XSAVE) and CPUID.(0DH,0):EBX read with that XCR0.
    pub fn new(xcr0: u64, cpuid_0d_ebx: u32) -> Result<Self, XstateError> {
        if xcr0 == 0 {
            return Ok(Self { form: SaveForm::Fxsave, size: LEGACY_SIZE });
        }
        if xcr0 & XCR0_X87 == 0 {
            return Err(XstateError::NoX87(xcr0));
        }
        let size = cpuid_0d_ebx as usize;
        if size < LEGACY_SIZE + HEADER_SIZE {
            return Err(XstateError::TooSmall(cpuid_0d_ebx));
        }
        if size > AREA_CAPACITY {
            return Err(XstateError::TooLarge(cpuid_0d_ebx));
        }
        Ok(Self { form: SaveForm::Xsave { xcr0 }, size })
    }

    /// Writes the architectural initial state into `area[..size]`: FCW 037FH and MXCSR 1F80H,
    /// every other byte zero. For FXRSTOR that is the FNINIT state with empty x87 tags and zero
    /// registers; for XRSTOR the header's XSTATE_BV is 0, which puts every component in its
    /// initial configuration, and MXCSR, which XRSTOR loads from memory whenever SSE or AVX is
    /// requested (SDM Vol. 1, 13.8.1), holds its reset value.
    pub fn write_init(&self, area: &mut [u8]) {
        let area = &mut area[..self.size];
        area.fill(0);
        area[FCW_OFFSET..FCW_OFFSET + 2].copy_from_slice(&FCW_INIT.to_le_bytes());
        area[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&MXCSR_INIT.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_xsave_is_the_fxsave_image() {
        assert_eq!(AreaLayout::new(0, 0), Ok(AreaLayout { form: SaveForm::Fxsave, size: 512 }));
    }

    #[test]
    fn xsave_takes_cpuids_size_for_the_enabled_components() {
        // x87|SSE|AVX: 576 + 256 bytes of YMM upper halves.
        let l = AreaLayout::new(XCR0_X87 | XCR0_SSE | XCR0_AVX, 832).unwrap();
        assert_eq!(l, AreaLayout { form: SaveForm::Xsave { xcr0: 7 }, size: 832 });
        // With the AVX-512 components.
        assert_eq!(AreaLayout::new(0xe7, 2688).unwrap().size, 2688);
    }

    #[test]
    fn impossible_or_oversized_areas_are_refused() {
        assert_eq!(AreaLayout::new(XCR0_SSE, 576), Err(XstateError::NoX87(2)));
        assert_eq!(AreaLayout::new(3, 512), Err(XstateError::TooSmall(512)));
        // AMX tile data alone is 8 KiB.
        assert_eq!(AreaLayout::new(0x60207, 11008), Err(XstateError::TooLarge(11008)));
        assert!(AreaLayout::new(3, 4097).unwrap_err().to_string().contains("4096"));
    }

    #[test]
    fn the_initial_image_is_fninit_and_mxcsr_reset_with_an_empty_header() {
        let l = AreaLayout::new(7, 832).unwrap();
        let mut area = [0xaau8; AREA_CAPACITY];
        l.write_init(&mut area);
        assert_eq!(&area[0..2], &[0x7f, 0x03]);
        assert_eq!(&area[24..28], &[0x80, 0x1f, 0, 0]);
        assert!(area[2..24].iter().chain(&area[28..832]).all(|&b| b == 0));
        // XSTATE_BV and XCOMP_BV (bytes 512..528) are zero: every component initial, standard form.
        assert!(area[512..528].iter().all(|&b| b == 0));
        // Bytes past the size are not the area's.
        assert!(area[832..].iter().all(|&b| b == 0xaa));
    }
}
