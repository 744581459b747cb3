//! Primary fault recording (VT-d spec 7.2.1, 11.4.14): each fault-recording register is 128
//! bits; the hypervisor reads both halves, decodes them here, then clears F by writing 1.

use core::fmt;

use crate::addr::SourceId;

/// Why a DMA request was blocked (VT-d spec 7.1.3, table of non-recoverable fault reasons; the
/// legacy-mode ones the hypervisor's set-up can produce have names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// 1: the root entry for the bus is not present.
    RootNotPresent,
    /// 2: the context entry for the device is not present (a device with no domain).
    ContextNotPresent,
    /// 3: the context entry is invalid (e.g. reserved AW).
    InvalidContext,
    /// 4: the address is above the domain's address width.
    BeyondAddressWidth,
    /// 5: a write to a page without write permission (or not mapped).
    WriteDenied,
    /// 6: a read from a page without read permission (or not mapped).
    ReadDenied,
    /// 7: a paging entry could not be read (bad table address).
    PagingEntryAccess,
    /// Any other reason code, kept raw.
    Other(u8),
}

impl FaultReason {
    pub const fn from_code(c: u8) -> Self {
        match c {
            1 => Self::RootNotPresent,
            2 => Self::ContextNotPresent,
            3 => Self::InvalidContext,
            4 => Self::BeyondAddressWidth,
            5 => Self::WriteDenied,
            6 => Self::ReadDenied,
            7 => Self::PagingEntryAccess,
            o => Self::Other(o),
        }
    }
    pub const fn code(self) -> u8 {
        match self {
            Self::RootNotPresent => 1,
            Self::ContextNotPresent => 2,
            Self::InvalidContext => 3,
            Self::BeyondAddressWidth => 4,
            Self::WriteDenied => 5,
            Self::ReadDenied => 6,
            Self::PagingEntryAccess => 7,
            Self::Other(c) => c,
        }
    }
    pub const fn describe(self) -> &'static str {
        match self {
            Self::RootNotPresent => "root entry not present",
            Self::ContextNotPresent => "context entry not present (device has no domain)",
            Self::InvalidContext => "invalid context entry",
            Self::BeyondAddressWidth => "address beyond the domain's width",
            Self::WriteDenied => "write to an address not writable in the domain",
            Self::ReadDenied => "read of an address not readable in the domain",
            Self::PagingEntryAccess => "paging entry could not be read",
            Self::Other(_) => "other fault reason",
        }
    }
}

/// The kind of request that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One decoded fault record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    pub source: SourceId,
    /// The faulting page (bits 63:12 of the request address; the low 12 bits are not recorded).
    pub address: u64,
    pub reason: FaultReason,
    pub access: Access,
}

impl FaultRecord {
    /// Decodes the record from its low (bits 63:0) and high (bits 127:64) halves; `None` when
    /// its F (fault) bit, bit 127, is clear: nothing recorded there.
    pub const fn decode(lo: u64, hi: u64) -> Option<Self> {
        if hi >> 63 == 0 {
            return None;
        }
        // Bit 126 is T1 (0 = write, 1 = read) and bit 92 T2 in newer revisions; legacy requests
        // use T1 alone.
        let access = if hi & (1 << 62) != 0 { Access::Read } else { Access::Write };
        Some(Self {
            source: SourceId::from_raw((hi & 0xffff) as u16),
            address: lo & !0xfff,
            reason: FaultReason::from_code(((hi >> 32) & 0xff) as u8),
            access,
        })
    }
    /// The value to write to the high half to clear the record (F is write-1-to-clear).
    pub const CLEAR_HIGH: u64 = 1 << 63;
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source {} {} at {:#x}: reason {} ({})",
            self.source,
            match self.access {
                Access::Read => "read",
                Access::Write => "write",
            },
            self.address,
            self.reason.code(),
            self.reason.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn decodes_a_write_fault_from_an_nvme_controller() {
        // F=1, T1=0 (write), FR=5, SID=00:03.0.
        let hi = (1u64 << 63) | (5 << 32) | 0x18;
        let r = FaultRecord::decode(0x1234_5678, hi).unwrap();
        assert_eq!(r.source, SourceId::new(0, 3, 0).unwrap());
        assert_eq!((r.address, r.reason, r.access), (0x1234_5000, FaultReason::WriteDenied, Access::Write));
        assert_eq!(
            format!("{r}"),
            "source 00:03.0 write at 0x12345000: reason 5 (write to an address not writable in the domain)"
        );
    }

    #[test]
    fn empty_and_odd_records() {
        assert_eq!(FaultRecord::decode(0xdead_b000, 5 << 32), None);
        let r = FaultRecord::decode(0, (1 << 63) | (1 << 62) | (0x26 << 32) | 0x0100).unwrap();
        assert_eq!((r.access, r.reason, r.source.bus()), (Access::Read, FaultReason::Other(0x26), 1));
        for c in 0..=255u8 {
            assert_eq!(FaultReason::from_code(c).code(), c);
        }
    }
}
