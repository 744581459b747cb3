//! Address and requester types. I/O-virtual addresses (what a device puts on the bus) and
//! host-physical addresses are distinct types; arithmetic on them is checked.

use core::fmt;

/// Why an address could not be made or moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrError {
    /// The value has bits above bit 51 (beyond any physical or I/O-virtual width).
    TooWide(u64),
    /// Adding an offset overflowed.
    Overflow { base: u64, offset: u64 },
}

/// The architectural limit of physical and I/O-virtual addresses in VT-d entries (bits 51:12).
pub const MAX_ADDR_BITS: u32 = 52;

macro_rules! addr_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u64);

        impl $name {
            /// `Err` if `v` does not fit in 52 bits.
            pub const fn try_new(v: u64) -> Result<Self, AddrError> {
                if v >> MAX_ADDR_BITS != 0 { Err(AddrError::TooWide(v)) } else { Ok(Self(v)) }
            }
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 % align == 0
            }
            /// `self + offset`, or an error on overflow or beyond 52 bits.
            pub fn checked_add(self, offset: u64) -> Result<Self, AddrError> {
                let v = self.0.checked_add(offset).ok_or(AddrError::Overflow { base: self.0, offset })?;
                Self::try_new(v)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

addr_type!(
    /// An I/O-virtual address: what a device uses for DMA, translated by its domain's tables.
    Iova
);
addr_type!(
    /// A host-physical address.
    HostPhys
);

/// A PCI requester (source) id: bus, device and function, as in fault records and context-table
/// indexing (VT-d 3.4: the bus selects the root entry, device:function the context entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(u16);

impl SourceId {
    /// `None` if `dev > 31` or `func > 7`.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Option<Self> {
        if dev > 31 || func > 7 {
            return None;
        }
        Some(Self(((bus as u16) << 8) | ((dev as u16) << 3) | func as u16))
    }
    pub const fn from_raw(raw: u16) -> Self {
        Self(raw)
    }
    pub const fn raw(self) -> u16 {
        self.0
    }
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub const fn dev(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }
    pub const fn func(self) -> u8 {
        (self.0 & 7) as u8
    }
    /// Device and function together: the context-table index.
    pub const fn devfn(self) -> u8 {
        (self.0 & 0xff) as u8
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus(), self.dev(), self.func())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn addresses_are_checked() {
        assert_eq!(Iova::try_new(1 << 52), Err(AddrError::TooWide(1 << 52)));
        let a = HostPhys::try_new(0x1000).unwrap();
        assert_eq!(a.checked_add(0x1000).unwrap().as_u64(), 0x2000);
        assert!(HostPhys::try_new((1 << 52) - 1).unwrap().checked_add(1).is_err());
        assert!(Iova::try_new(0).unwrap().checked_add(u64::MAX).is_err());
        assert!(a.is_aligned(4096) && !a.checked_add(1).unwrap().is_aligned(4096));
    }

    #[test]
    fn source_ids_round_trip_and_print_like_lspci() {
        let s = SourceId::new(0x12, 0x1f, 7).unwrap();
        assert_eq!((s.bus(), s.dev(), s.func(), s.devfn()), (0x12, 0x1f, 7, 0xff));
        assert_eq!(format!("{s}"), "12:1f.7");
        assert_eq!(SourceId::from_raw(0x0018), SourceId::new(0, 3, 0).unwrap());
        assert_eq!(SourceId::new(0, 32, 0), None);
        assert_eq!(SourceId::new(0, 0, 8), None);
    }
}
