//! Guest-physical and host-physical addresses as distinct types with checked arithmetic: an
//! overflow or an address beyond what the hardware can express is an error, never a wrap.

use core::fmt;

/// Guest-physical addresses a 4-level EPT walk can translate: bits 47:0 (SDM 29.3.2).
pub const GPA_LIMIT: u64 = 1 << 48;
/// Host-physical addresses an EPT entry can hold: bits 51:12 (SDM 29.3.2, MAXPHYADDR ≤ 52).
pub const HPA_LIMIT: u64 = 1 << 52;

/// An address that overflowed or left the range of its address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrError {
    /// "guest-physical" or "host-physical".
    pub space: &'static str,
    /// The base of the failed computation.
    pub base: u64,
    /// The offset added, if any.
    pub offset: u64,
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} address {:#x} + {:#x} out of range",
            self.space, self.base, self.offset
        )
    }
}

macro_rules! phys_addr {
    ($(#[$m:meta])* $name:ident, $limit:expr, $space:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The exclusive upper bound of this address space.
            pub const LIMIT: u64 = $limit;

            /// The address `raw`, or an error if it is at or beyond [`Self::LIMIT`].
            pub const fn new(raw: u64) -> Result<Self, AddrError> {
                if raw < Self::LIMIT {
                    Ok($name(raw))
                } else {
                    Err(AddrError { space: $space, base: raw, offset: 0 })
                }
            }

            /// The raw value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// `self + offset`, or an error if that overflows or reaches [`Self::LIMIT`].
            pub const fn checked_add(self, offset: u64) -> Result<Self, AddrError> {
                match self.0.checked_add(offset) {
                    Some(v) if v < Self::LIMIT => Ok($name(v)),
                    _ => Err(AddrError { space: $space, base: self.0, offset }),
                }
            }

            /// `self - other` if `other <= self`.
            pub const fn checked_offset_from(self, other: Self) -> Option<u64> {
                self.0.checked_sub(other.0)
            }

            /// True if the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align.wrapping_sub(1)) == 0
            }

            /// The address rounded down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                $name(self.0 & !(align.wrapping_sub(1)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}:{:#x}", $space, self.0)
            }
        }
    };
}

phys_addr!(
    /// A guest-physical address (GPA), below 2^48.
    GuestPhysAddr, GPA_LIMIT, "guest-physical"
);
phys_addr!(
    /// A host-physical address (HPA), below 2^52.
    HostPhysAddr, HPA_LIMIT, "host-physical"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_and_limits() {
        assert!(GuestPhysAddr::new(GPA_LIMIT - 1).is_ok());
        assert!(GuestPhysAddr::new(GPA_LIMIT).is_err());
        assert!(HostPhysAddr::new(HPA_LIMIT - 1).is_ok());
        assert!(HostPhysAddr::new(u64::MAX).is_err());
    }

    #[test]
    fn checked_arithmetic() {
        let a = GuestPhysAddr::new(0x1000).unwrap();
        assert_eq!(a.checked_add(0x2000).unwrap().as_u64(), 0x3000);
        assert!(
            a.checked_add(GPA_LIMIT - 0x1000).is_err(),
            "reaching the limit is an error"
        );
        assert!(
            a.checked_add(u64::MAX).is_err(),
            "overflow is an error, not a wrap"
        );
        let h = HostPhysAddr::new(0x20_1000).unwrap();
        assert_eq!(h.align_down(0x20_0000).as_u64(), 0x20_0000);
        assert!(h.is_aligned(0x1000) && !h.is_aligned(0x20_0000));
        assert_eq!(
            h.checked_offset_from(HostPhysAddr::new(0x20_0000).unwrap()),
            Some(0x1000)
        );
        assert_eq!(HostPhysAddr::new(0).unwrap().checked_offset_from(h), None);
    }
}
