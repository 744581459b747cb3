//! VMCS fields as typed encodings (Intel SDM Vol. 3D, appendix B; encoding layout in Vol. 3C,
//! 25.11.2 "VMREAD, VMWRITE, and Encodings of VMCS Fields").
//!
//! One enum per (width, area): the width is part of the type, so `Guest16::Cs.write(vmcs, x)`
//! takes a `u16` and `Control64::EptPointer.write(vmcs, x)` a `u64`. Read-only data fields
//! (`ReadOnly32`, `ReadOnly64`, `ReadOnlyNatural`) have `read` but no `write`. Only "full"
//! encodings are modelled: a 64-bit host reads and writes 64-bit fields whole.
//!
//! Encoding bits: 0 access type (full/high), 9:1 index, 11:10 type (0 control, 1 read-only data,
//! 2 guest state, 3 host state), 14:13 width (0 16-bit, 1 64-bit, 2 32-bit, 3 natural).

use crate::access::VmcsAccess;
use crate::error::VmFail;

/// The width of a VMCS field, from bits 14:13 of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldWidth {
    /// 16-bit field.
    Bits16 = 0,
    /// 64-bit field.
    Bits64 = 1,
    /// 32-bit field.
    Bits32 = 2,
    /// Natural width (64 bits on Intel 64 processors).
    Natural = 3,
}

/// The area of a VMCS field, from bits 11:10 of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldArea {
    /// VM-execution, VM-exit and VM-entry control fields.
    Control = 0,
    /// VM-exit information (read-only data) fields.
    ReadOnly = 1,
    /// Guest-state area.
    Guest = 2,
    /// Host-state area.
    Host = 3,
}

/// Decodes the width of any field encoding (SDM 25.11.2).
pub const fn encoding_width(encoding: u32) -> FieldWidth {
    match (encoding >> 13) & 3 {
        0 => FieldWidth::Bits16,
        1 => FieldWidth::Bits64,
        2 => FieldWidth::Bits32,
        _ => FieldWidth::Natural,
    }
}

/// Decodes the area of any field encoding (SDM 25.11.2).
pub const fn encoding_area(encoding: u32) -> FieldArea {
    match (encoding >> 10) & 3 {
        0 => FieldArea::Control,
        1 => FieldArea::ReadOnly,
        2 => FieldArea::Guest,
        _ => FieldArea::Host,
    }
}

/// A typed VMCS field: its encoding, width, area and the Rust type of its value.
pub trait VmcsField: Copy {
    /// The value type (`u16`, `u32` or `u64`; natural-width fields are `u64`).
    type Value: Copy;
    /// The width every field of this type has.
    const WIDTH: FieldWidth;
    /// The area every field of this type belongs to.
    const AREA: FieldArea;
    /// The field's VMREAD/VMWRITE encoding (full access).
    fn encoding(self) -> u32;
    /// The field's name, as the enum variant spells it.
    fn name(self) -> &'static str;
}

macro_rules! vmcs_fields {
    (
        $(#[$meta:meta])*
        $name:ident: $ty:ty, $width:ident, $area:ident {
            $( $(#[$vmeta:meta])* $var:ident = $enc:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $var = $enc, )*
        }

        impl $name {
            /// Every field of this type.
            pub const ALL: &'static [$name] = &[$($name::$var),*];

            /// Reads the field from `vmcs` with VMREAD.
            pub fn read<V: VmcsAccess + ?Sized>(self, vmcs: &V) -> Result<$ty, VmFail> {
                // VMREAD zero-extends; the width of the field is the width of `$ty`.
                vmcs.vmread(self as u32).map(|v| v as $ty)
            }
        }

        impl VmcsField for $name {
            type Value = $ty;
            const WIDTH: FieldWidth = FieldWidth::$width;
            const AREA: FieldArea = FieldArea::$area;
            fn encoding(self) -> u32 {
                self as u32
            }
            fn name(self) -> &'static str {
                match self {
                    $( $name::$var => stringify!($var), )*
                }
            }
        }
    };
}

macro_rules! writable {
    ($($name:ident: $ty:ty),* $(,)?) => {$(
        impl $name {
            /// Writes the field in `vmcs` with VMWRITE.
            pub fn write<V: VmcsAccess + ?Sized>(self, vmcs: &mut V, value: $ty) -> Result<(), VmFail> {
                vmcs.vmwrite(self as u32, u64::from(value))
            }
        }
    )*};
}

vmcs_fields! {
    /// 16-bit control fields (SDM B.1.1, table B-1).
    Control16: u16, Bits16, Control {
        Vpid = 0x0000,
        PostedInterruptNotificationVector = 0x0002,
        EptpIndex = 0x0004,
        HlatPrefixSize = 0x0006,
        LastPidPointerIndex = 0x0008,
    }
}

vmcs_fields! {
    /// 16-bit guest-state fields (SDM B.1.2, table B-2).
    Guest16: u16, Bits16, Guest {
        EsSelector = 0x0800,
        CsSelector = 0x0802,
        SsSelector = 0x0804,
        DsSelector = 0x0806,
        FsSelector = 0x0808,
        GsSelector = 0x080A,
        LdtrSelector = 0x080C,
        TrSelector = 0x080E,
        InterruptStatus = 0x0810,
        PmlIndex = 0x0812,
        Uinv = 0x0814,
    }
}

vmcs_fields! {
    /// 16-bit host-state fields (SDM B.1.3, table B-3).
    Host16: u16, Bits16, Host {
        EsSelector = 0x0C00,
        CsSelector = 0x0C02,
        SsSelector = 0x0C04,
        DsSelector = 0x0C06,
        FsSelector = 0x0C08,
        GsSelector = 0x0C0A,
        TrSelector = 0x0C0C,
    }
}

vmcs_fields! {
    /// 64-bit control fields, full encodings (SDM B.2.1, table B-4).
    Control64: u64, Bits64, Control {
        IoBitmapA = 0x2000,
        IoBitmapB = 0x2002,
        MsrBitmap = 0x2004,
        ExitMsrStoreAddress = 0x2006,
        ExitMsrLoadAddress = 0x2008,
        EntryMsrLoadAddress = 0x200A,
        ExecutiveVmcsPointer = 0x200C,
        PmlAddress = 0x200E,
        TscOffset = 0x2010,
        VirtualApicAddress = 0x2012,
        ApicAccessAddress = 0x2014,
        PostedInterruptDescriptorAddress = 0x2016,
        VmFunctionControls = 0x2018,
        EptPointer = 0x201A,
        EoiExitBitmap0 = 0x201C,
        EoiExitBitmap1 = 0x201E,
        EoiExitBitmap2 = 0x2020,
        EoiExitBitmap3 = 0x2022,
        EptpListAddress = 0x2024,
        VmreadBitmapAddress = 0x2026,
        VmwriteBitmapAddress = 0x2028,
        VirtualizationExceptionInfoAddress = 0x202A,
        XssExitingBitmap = 0x202C,
        EnclsExitingBitmap = 0x202E,
        SubPagePermissionTablePointer = 0x2030,
        TscMultiplier = 0x2032,
        TertiaryProcessorBasedControls = 0x2034,
        EnclvExitingBitmap = 0x2036,
    }
}

vmcs_fields! {
    /// 64-bit read-only data field (SDM B.2.2, table B-5).
    ReadOnly64: u64, Bits64, ReadOnly {
        GuestPhysicalAddress = 0x2400,
    }
}

vmcs_fields! {
    /// 64-bit guest-state fields, full encodings (SDM B.2.3, table B-6).
    Guest64: u64, Bits64, Guest {
        VmcsLinkPointer = 0x2800,
        Ia32Debugctl = 0x2802,
        Ia32Pat = 0x2804,
        Ia32Efer = 0x2806,
        Ia32PerfGlobalCtrl = 0x2808,
        Pdpte0 = 0x280A,
        Pdpte1 = 0x280C,
        Pdpte2 = 0x280E,
        Pdpte3 = 0x2810,
        Ia32Bndcfgs = 0x2812,
        Ia32RtitCtl = 0x2814,
        Ia32LbrCtl = 0x2816,
        Ia32Pkrs = 0x2818,
    }
}

vmcs_fields! {
    /// 64-bit host-state fields, full encodings (SDM B.2.4, table B-7).
    Host64: u64, Bits64, Host {
        Ia32Pat = 0x2C00,
        Ia32Efer = 0x2C02,
        Ia32PerfGlobalCtrl = 0x2C04,
        Ia32Pkrs = 0x2C06,
    }
}

vmcs_fields! {
    /// 32-bit control fields (SDM B.3.1, table B-8).
    Control32: u32, Bits32, Control {
        PinBasedControls = 0x4000,
        PrimaryProcessorBasedControls = 0x4002,
        ExceptionBitmap = 0x4004,
        PageFaultErrorCodeMask = 0x4006,
        PageFaultErrorCodeMatch = 0x4008,
        Cr3TargetCount = 0x400A,
        ExitControls = 0x400C,
        ExitMsrStoreCount = 0x400E,
        ExitMsrLoadCount = 0x4010,
        EntryControls = 0x4012,
        EntryMsrLoadCount = 0x4014,
        EntryInterruptionInfo = 0x4016,
        EntryExceptionErrorCode = 0x4018,
        EntryInstructionLength = 0x401A,
        TprThreshold = 0x401C,
        SecondaryProcessorBasedControls = 0x401E,
        PleGap = 0x4020,
        PleWindow = 0x4022,
        InstructionTimeoutControl = 0x4024,
    }
}

vmcs_fields! {
    /// 32-bit read-only data fields (SDM B.3.2, table B-9).
    ReadOnly32: u32, Bits32, ReadOnly {
        VmInstructionError = 0x4400,
        ExitReason = 0x4402,
        ExitInterruptionInfo = 0x4404,
        ExitInterruptionErrorCode = 0x4406,
        IdtVectoringInfo = 0x4408,
        IdtVectoringErrorCode = 0x440A,
        ExitInstructionLength = 0x440C,
        ExitInstructionInfo = 0x440E,
    }
}

vmcs_fields! {
    /// 32-bit guest-state fields (SDM B.3.3, table B-10).
    Guest32: u32, Bits32, Guest {
        EsLimit = 0x4800,
        CsLimit = 0x4802,
        SsLimit = 0x4804,
        DsLimit = 0x4806,
        FsLimit = 0x4808,
        GsLimit = 0x480A,
        LdtrLimit = 0x480C,
        TrLimit = 0x480E,
        GdtrLimit = 0x4810,
        IdtrLimit = 0x4812,
        EsAccessRights = 0x4814,
        CsAccessRights = 0x4816,
        SsAccessRights = 0x4818,
        DsAccessRights = 0x481A,
        FsAccessRights = 0x481C,
        GsAccessRights = 0x481E,
        LdtrAccessRights = 0x4820,
        TrAccessRights = 0x4822,
        InterruptibilityState = 0x4824,
        ActivityState = 0x4826,
        Smbase = 0x4828,
        Ia32SysenterCs = 0x482A,
        PreemptionTimerValue = 0x482E,
    }
}

vmcs_fields! {
    /// 32-bit host-state field (SDM B.3.4, table B-11).
    Host32: u32, Bits32, Host {
        Ia32SysenterCs = 0x4C00,
    }
}

vmcs_fields! {
    /// Natural-width control fields (SDM B.4.1, table B-12).
    ControlNatural: u64, Natural, Control {
        Cr0GuestHostMask = 0x6000,
        Cr4GuestHostMask = 0x6002,
        Cr0ReadShadow = 0x6004,
        Cr4ReadShadow = 0x6006,
        Cr3Target0 = 0x6008,
        Cr3Target1 = 0x600A,
        Cr3Target2 = 0x600C,
        Cr3Target3 = 0x600E,
    }
}

vmcs_fields! {
    /// Natural-width read-only data fields (SDM B.4.2, table B-13).
    ReadOnlyNatural: u64, Natural, ReadOnly {
        ExitQualification = 0x6400,
        IoRcx = 0x6402,
        IoRsi = 0x6404,
        IoRdi = 0x6406,
        IoRip = 0x6408,
        GuestLinearAddress = 0x640A,
    }
}

vmcs_fields! {
    /// Natural-width guest-state fields (SDM B.4.3, table B-14).
    GuestNatural: u64, Natural, Guest {
        Cr0 = 0x6800,
        Cr3 = 0x6802,
        Cr4 = 0x6804,
        EsBase = 0x6806,
        CsBase = 0x6808,
        SsBase = 0x680A,
        DsBase = 0x680C,
        FsBase = 0x680E,
        GsBase = 0x6810,
        LdtrBase = 0x6812,
        TrBase = 0x6814,
        GdtrBase = 0x6816,
        IdtrBase = 0x6818,
        Dr7 = 0x681A,
        Rsp = 0x681C,
        Rip = 0x681E,
        Rflags = 0x6820,
        PendingDebugExceptions = 0x6822,
        Ia32SysenterEsp = 0x6824,
        Ia32SysenterEip = 0x6826,
        Ia32SCet = 0x6828,
        Ssp = 0x682A,
        Ia32InterruptSspTableAddr = 0x682C,
    }
}

vmcs_fields! {
    /// Natural-width host-state fields (SDM B.4.4, table B-15).
    HostNatural: u64, Natural, Host {
        Cr0 = 0x6C00,
        Cr3 = 0x6C02,
        Cr4 = 0x6C04,
        FsBase = 0x6C06,
        GsBase = 0x6C08,
        TrBase = 0x6C0A,
        GdtrBase = 0x6C0C,
        IdtrBase = 0x6C0E,
        Ia32SysenterEsp = 0x6C10,
        Ia32SysenterEip = 0x6C12,
        Rsp = 0x6C14,
        Rip = 0x6C16,
        Ia32SCet = 0x6C18,
        Ssp = 0x6C1A,
        Ia32InterruptSspTableAddr = 0x6C1C,
    }
}

writable!(
    Control16: u16,
    Guest16: u16,
    Host16: u16,
    Control32: u32,
    Guest32: u32,
    Host32: u32,
    Control64: u64,
    Guest64: u64,
    Host64: u64,
    ControlNatural: u64,
    GuestNatural: u64,
    HostNatural: u64,
);

/// True if `encoding` is one of the read-only data fields modelled here.
pub fn is_read_only(encoding: u32) -> bool {
    encoding_area(encoding) == FieldArea::ReadOnly
}

/// Every encoding modelled in this module, in no particular order (used by the fake VMCS and tests).
pub fn all_encodings() -> impl Iterator<Item = u32> {
    fn enc<F: VmcsField>(all: &'static [F]) -> impl Iterator<Item = u32> {
        all.iter().map(|f| f.encoding())
    }
    enc(Control16::ALL)
        .chain(enc(Guest16::ALL))
        .chain(enc(Host16::ALL))
        .chain(enc(Control64::ALL))
        .chain(enc(ReadOnly64::ALL))
        .chain(enc(Guest64::ALL))
        .chain(enc(Host64::ALL))
        .chain(enc(Control32::ALL))
        .chain(enc(ReadOnly32::ALL))
        .chain(enc(Guest32::ALL))
        .chain(enc(Host32::ALL))
        .chain(enc(ControlNatural::ALL))
        .chain(enc(ReadOnlyNatural::ALL))
        .chain(enc(GuestNatural::ALL))
        .chain(enc(HostNatural::ALL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn check<F: VmcsField>(all: &[F]) {
        for f in all {
            let e = f.encoding();
            assert_eq!(encoding_width(e), F::WIDTH, "{} {e:#x}", f.name());
            assert_eq!(encoding_area(e), F::AREA, "{} {e:#x}", f.name());
            assert_eq!(e & 1, 0, "{}: full encodings are even", f.name());
            assert_eq!(e & (1 << 12), 0, "{}: bit 12 is reserved", f.name());
            assert_eq!(e >> 15, 0, "{}: bits 31:15 are reserved", f.name());
        }
    }

    #[test]
    fn encodings_agree_with_their_type() {
        check(Control16::ALL);
        check(Guest16::ALL);
        check(Host16::ALL);
        check(Control64::ALL);
        check(ReadOnly64::ALL);
        check(Guest64::ALL);
        check(Host64::ALL);
        check(Control32::ALL);
        check(ReadOnly32::ALL);
        check(Guest32::ALL);
        check(Host32::ALL);
        check(ControlNatural::ALL);
        check(ReadOnlyNatural::ALL);
        check(GuestNatural::ALL);
        check(HostNatural::ALL);
    }

    #[test]
    fn encodings_are_unique() {
        let all: std::vec::Vec<u32> = all_encodings().collect();
        let set: HashSet<u32> = all.iter().copied().collect();
        assert_eq!(all.len(), set.len());
        assert!(all.len() > 150, "{}", all.len());
    }

    #[test]
    fn well_known_encodings() {
        assert_eq!(Control64::EptPointer.encoding(), 0x201A);
        assert_eq!(ReadOnly32::ExitReason.encoding(), 0x4402);
        assert_eq!(GuestNatural::Rip.encoding(), 0x681E);
        assert_eq!(HostNatural::Rip.encoding(), 0x6C16);
        assert_eq!(Guest32::PreemptionTimerValue.encoding(), 0x482E);
        assert_eq!(
            Control32::SecondaryProcessorBasedControls.encoding(),
            0x401E
        );
        assert_eq!(Guest64::VmcsLinkPointer.name(), "VmcsLinkPointer");
        assert!(is_read_only(ReadOnlyNatural::ExitQualification.encoding()));
        assert!(!is_read_only(GuestNatural::Rip.encoding()));
    }
}
