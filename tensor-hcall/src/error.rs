//! The one error enum of the ABI, shared by hypervisor and guests.

use core::fmt;

/// A hypercall error. RAX holds the negative discriminant (two's complement) on return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i64)]
pub enum HcallError {
    /// The call number (or sub-operation) is unknown to this hypervisor. Never a fault.
    NotSupported = -1,
    /// An argument is malformed (reserved field or flag set, bad enum value, zero length).
    InvalidArgument = -2,
    /// The caller may not make this call (CPL > 0 without policy, or a forbidden operation).
    PermissionDenied = -3,
    /// A guest-physical range is unmapped, misaligned or lacks the needed permission.
    BadAddress = -4,
    /// A handle is unknown, closed, of the wrong kind, or belongs to another tenant.
    BadHandle = -5,
    /// A per-tenant quota (registered bytes, in-flight operations, KV-cache bytes) is exceeded.
    QuotaExceeded = -6,
    /// The resource is busy (e.g. a region still used by in-flight operations).
    Busy = -7,
    /// The hypervisor is out of memory for this request.
    NoMemory = -8,
    /// A shape is invalid: zero dimension, element count overflow, or shapes that do not fit the
    /// operation.
    BadShape = -9,
    /// Strides overflow, reach outside the region, or violate the dtype's layout rules.
    BadStrides = -10,
    /// The dtype is unknown or not accepted by the operation.
    BadDtype = -11,
    /// The rank is 0 or above [`crate::MAX_RANK`].
    BadRank = -12,
    /// An offset or length reaches outside a registered region or guest buffer.
    OutOfBounds = -13,
    /// The completion ring is full.
    RingFull = -14,
    /// A ring index is beyond the ring (producer more than `entries` ahead of consumer).
    BadRingIndex = -15,
    /// No such model is loaded.
    NoSuchModel = -16,
    /// The guest's ABI major version is not served.
    VersionMismatch = -17,
    /// A hypervisor-internal failure; the hypervisor logs it.
    Internal = -18,
    /// A code this side of the ABI does not know (a newer peer). Never returned by a hypervisor.
    Unrecognized = -4095,
}

impl HcallError {
    /// Every error, for tables and tests.
    pub const ALL: [HcallError; 19] = [
        HcallError::NotSupported,
        HcallError::InvalidArgument,
        HcallError::PermissionDenied,
        HcallError::BadAddress,
        HcallError::BadHandle,
        HcallError::QuotaExceeded,
        HcallError::Busy,
        HcallError::NoMemory,
        HcallError::BadShape,
        HcallError::BadStrides,
        HcallError::BadDtype,
        HcallError::BadRank,
        HcallError::OutOfBounds,
        HcallError::RingFull,
        HcallError::BadRingIndex,
        HcallError::NoSuchModel,
        HcallError::VersionMismatch,
        HcallError::Internal,
        HcallError::Unrecognized,
    ];

    /// The negative code.
    pub const fn code(self) -> i64 {
        self as i64
    }

    /// The error for a negative code; unknown negative codes become [`HcallError::Unrecognized`],
    /// non-negative ones are not errors (`None`).
    pub fn from_code(code: i64) -> Option<HcallError> {
        if code >= 0 {
            return None;
        }
        Some(
            HcallError::ALL
                .iter()
                .copied()
                .find(|e| e.code() == code)
                .unwrap_or(HcallError::Unrecognized),
        )
    }
}

impl fmt::Display for HcallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", self.code())
    }
}

/// The largest success value a call can return (RAX must stay non-negative as an i64).
pub const MAX_RESULT: u64 = i64::MAX as u64;

/// Encodes a call's outcome into RAX: the value on success (at most [`MAX_RESULT`], larger values
/// become [`HcallError::Internal`]), the negative error code otherwise.
pub fn encode_result(r: Result<u64, HcallError>) -> u64 {
    match r {
        Ok(v) if v <= MAX_RESULT => v,
        Ok(_) => HcallError::Internal.code() as u64,
        Err(e) => e.code() as u64,
    }
}

/// Decodes RAX after a hypercall.
pub fn decode_result(rax: u64) -> Result<u64, HcallError> {
    match HcallError::from_code(rax as i64) {
        None => Ok(rax),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_negative_and_round_trip() {
        for (i, e) in HcallError::ALL.iter().enumerate() {
            assert!(e.code() < 0);
            assert_eq!(HcallError::from_code(e.code()), Some(*e));
            assert_eq!(decode_result(encode_result(Err(*e))), Err(*e));
            for other in &HcallError::ALL[i + 1..] {
                assert_ne!(e.code(), other.code());
            }
        }
        assert_eq!(HcallError::from_code(-999), Some(HcallError::Unrecognized));
        assert_eq!(HcallError::from_code(0), None);
    }

    #[test]
    fn results() {
        assert_eq!(decode_result(encode_result(Ok(0))), Ok(0));
        assert_eq!(decode_result(encode_result(Ok(MAX_RESULT))), Ok(MAX_RESULT));
        assert_eq!(
            encode_result(Ok(MAX_RESULT + 1)),
            HcallError::Internal.code() as u64
        );
        assert_eq!(encode_result(Err(HcallError::NotSupported)), u64::MAX);
    }
}
