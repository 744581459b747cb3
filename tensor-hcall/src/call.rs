//! Call numbers and the register convention.
//!
//! | register | on VMCALL                  | on return                                |
//! |----------|----------------------------|------------------------------------------|
//! | RAX      | call number ([`CallNumber`]) | result: ≥ 0 success, < 0 [`HcallError`] |
//! | RBX      | argument 0                 | preserved                                |
//! | RCX      | argument 1                 | preserved                                |
//! | RDX      | argument 2                 | preserved                                |
//! | RSI      | argument 3                 | preserved                                |
//!
//! Every other register is preserved. Unused arguments must be 0 (else `InvalidArgument`), so
//! that they can gain a meaning later. An unknown call number returns `NotSupported`; it never
//! faults the guest. Calls from CPL > 0 are refused with `PermissionDenied` unless the tenant's
//! policy allows them.

use crate::error::HcallError;

/// The registers of one hypercall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HcallRegs {
    /// Call number.
    pub rax: u64,
    /// Argument 0.
    pub rbx: u64,
    /// Argument 1.
    pub rcx: u64,
    /// Argument 2.
    pub rdx: u64,
    /// Argument 3.
    pub rsi: u64,
}

macro_rules! calls {
    ($( $(#[$m:meta])* $var:ident = $n:literal, )*) => {
        /// Hypercall numbers (RAX). Released numbers never change meaning.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u64)]
        pub enum CallNumber {
            $( $(#[$m])* $var = $n, )*
        }

        impl CallNumber {
            /// Every call number.
            pub const ALL: &'static [CallNumber] = &[$(CallNumber::$var),*];
        }

        impl TryFrom<u64> for CallNumber {
            type Error = HcallError;

            /// Unknown numbers are [`HcallError::NotSupported`].
            fn try_from(n: u64) -> Result<Self, HcallError> {
                match n {
                    $( $n => Ok(CallNumber::$var), )*
                    _ => Err(HcallError::NotSupported),
                }
            }
        }
    };
}

calls! {
    /// `ConsoleWrite(gpa, len)`: writes `len` bytes of UTF-8-ish text at `gpa` to the tenant's
    /// console log (at most [`MAX_CONSOLE_WRITE`] per call). Returns bytes written.
    ConsoleWrite = 0x01,
    /// `Exit(status)`: the guest is done; `status` (low 32 bits) is logged. Does not return.
    Exit = 0x02,
    /// `Query(kind, out_gpa, out_len)`: writes a [`crate::desc::AbiInfo`] (kind 0) or the
    /// [`crate::desc::ModelInfo`] of model `kind - 1` to guest memory. Returns bytes written.
    Query = 0x03,
    /// `RegisterMemory(gpa, len, flags)`: pins a guest range for zero-copy use; flags are
    /// [`crate::desc::RegionFlags`]. Returns a region handle.
    RegisterMemory = 0x10,
    /// `UnregisterMemory(handle)`: fails with `Busy` while operations use the region.
    UnregisterMemory = 0x11,
    /// `TensorCreate(desc_gpa)`: copies and validates a [`crate::desc::TensorDesc`]. Returns a
    /// tensor handle.
    TensorCreate = 0x20,
    /// `TensorDestroy(handle)`.
    TensorDestroy = 0x21,
    /// `RingSetup(desc_gpa)`: copies a [`crate::desc::RingSetupDesc`]. Returns a ring handle.
    RingSetup = 0x30,
    /// `Doorbell(ring)`: consumes every submission between the consumer and producer indices that
    /// has a free completion slot; beyond the tenant's in-flight quota, entries complete with
    /// `QuotaExceeded` without running. Returns the number consumed.
    Doorbell = 0x31,
    /// `SessionOpen(model_id, max_context)`: returns a session handle.
    SessionOpen = 0x40,
    /// `SessionPrefill(session, region, offset, count)`: feeds `count` u32 tokens read from a
    /// registered region.
    SessionPrefill = 0x41,
    /// `SessionGenerate(desc_gpa)`: runs a [`crate::desc::GenerateDesc`]. Returns tokens produced.
    SessionGenerate = 0x42,
    /// `SessionClose(session)`: frees the session and its KV cache.
    SessionClose = 0x43,
    /// `DeviceIrqBind(bdf, vector)`: forwards the legacy interrupt (INTx) of the passed-through
    /// PCI function `bdf` (bus << 8 | device << 3 | function, as in its
    /// [`crate::boot::DeviceWindow`]) to the caller as external interrupt `vector` (32..=255).
    /// The line is level-triggered: after each interrupt it stays masked until
    /// `DeviceIrqDone`. Binding again changes the vector. Returns 0.
    DeviceIrqBind = 0x50,
    /// `DeviceIrqDone(bdf)`: the guest has cleared the interrupt's cause in the device; the
    /// line is unmasked (if the device still asserts it, it is delivered again). Returns 0.
    DeviceIrqDone = 0x51,
}

/// The most bytes one `ConsoleWrite` accepts.
pub const MAX_CONSOLE_WRITE: u64 = 4096;

/// A decoded hypercall with its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Hypercall {
    ConsoleWrite {
        gpa: u64,
        len: u64,
    },
    Exit {
        status: u32,
    },
    Query {
        kind: u64,
        out_gpa: u64,
        out_len: u64,
    },
    RegisterMemory {
        gpa: u64,
        len: u64,
        flags: u64,
    },
    UnregisterMemory {
        handle: u64,
    },
    TensorCreate {
        desc_gpa: u64,
    },
    TensorDestroy {
        handle: u64,
    },
    RingSetup {
        desc_gpa: u64,
    },
    Doorbell {
        ring: u64,
    },
    SessionOpen {
        model_id: u64,
        max_context: u64,
    },
    SessionPrefill {
        session: u64,
        region: u64,
        offset: u64,
        count: u64,
    },
    SessionGenerate {
        desc_gpa: u64,
    },
    SessionClose {
        session: u64,
    },
    DeviceIrqBind {
        bdf: u64,
        vector: u64,
    },
    DeviceIrqDone {
        bdf: u64,
    },
}

impl Hypercall {
    /// Decodes the registers: unknown number → `NotSupported`; a non-zero unused argument or a
    /// status above 32 bits → `InvalidArgument`.
    pub fn decode(r: &HcallRegs) -> Result<Hypercall, HcallError> {
        use CallNumber as C;
        let number = CallNumber::try_from(r.rax)?;
        let args = [r.rbx, r.rcx, r.rdx, r.rsi];
        let used = Self::arg_count(number);
        if args[used..].iter().any(|&a| a != 0) {
            return Err(HcallError::InvalidArgument);
        }
        let [a, b, c, d] = args;
        Ok(match number {
            C::ConsoleWrite => Hypercall::ConsoleWrite { gpa: a, len: b },
            C::Exit => Hypercall::Exit {
                status: u32::try_from(a).map_err(|_| HcallError::InvalidArgument)?,
            },
            C::Query => Hypercall::Query {
                kind: a,
                out_gpa: b,
                out_len: c,
            },
            C::RegisterMemory => Hypercall::RegisterMemory {
                gpa: a,
                len: b,
                flags: c,
            },
            C::UnregisterMemory => Hypercall::UnregisterMemory { handle: a },
            C::TensorCreate => Hypercall::TensorCreate { desc_gpa: a },
            C::TensorDestroy => Hypercall::TensorDestroy { handle: a },
            C::RingSetup => Hypercall::RingSetup { desc_gpa: a },
            C::Doorbell => Hypercall::Doorbell { ring: a },
            C::SessionOpen => Hypercall::SessionOpen {
                model_id: a,
                max_context: b,
            },
            C::SessionPrefill => Hypercall::SessionPrefill {
                session: a,
                region: b,
                offset: c,
                count: d,
            },
            C::SessionGenerate => Hypercall::SessionGenerate { desc_gpa: a },
            C::SessionClose => Hypercall::SessionClose { session: a },
            C::DeviceIrqBind => Hypercall::DeviceIrqBind { bdf: a, vector: b },
            C::DeviceIrqDone => Hypercall::DeviceIrqDone { bdf: a },
        })
    }

    /// How many of RBX, RCX, RDX, RSI a call uses.
    pub const fn arg_count(n: CallNumber) -> usize {
        use CallNumber as C;
        match n {
            C::Exit
            | C::UnregisterMemory
            | C::TensorCreate
            | C::TensorDestroy
            | C::RingSetup
            | C::Doorbell => 1,
            C::SessionGenerate | C::SessionClose | C::DeviceIrqDone => 1,
            C::ConsoleWrite | C::SessionOpen | C::DeviceIrqBind => 2,
            C::Query | C::RegisterMemory => 3,
            C::SessionPrefill => 4,
        }
    }

    /// The call number.
    pub const fn number(&self) -> CallNumber {
        match self {
            Hypercall::ConsoleWrite { .. } => CallNumber::ConsoleWrite,
            Hypercall::Exit { .. } => CallNumber::Exit,
            Hypercall::Query { .. } => CallNumber::Query,
            Hypercall::RegisterMemory { .. } => CallNumber::RegisterMemory,
            Hypercall::UnregisterMemory { .. } => CallNumber::UnregisterMemory,
            Hypercall::TensorCreate { .. } => CallNumber::TensorCreate,
            Hypercall::TensorDestroy { .. } => CallNumber::TensorDestroy,
            Hypercall::RingSetup { .. } => CallNumber::RingSetup,
            Hypercall::Doorbell { .. } => CallNumber::Doorbell,
            Hypercall::SessionOpen { .. } => CallNumber::SessionOpen,
            Hypercall::SessionPrefill { .. } => CallNumber::SessionPrefill,
            Hypercall::SessionGenerate { .. } => CallNumber::SessionGenerate,
            Hypercall::SessionClose { .. } => CallNumber::SessionClose,
            Hypercall::DeviceIrqBind { .. } => CallNumber::DeviceIrqBind,
            Hypercall::DeviceIrqDone { .. } => CallNumber::DeviceIrqDone,
        }
    }

    /// Guest side: the registers to load before VMCALL.
    pub const fn to_regs(&self) -> HcallRegs {
        let (a, b, c, d) = match *self {
            Hypercall::ConsoleWrite { gpa, len } => (gpa, len, 0, 0),
            Hypercall::Exit { status } => (status as u64, 0, 0, 0),
            Hypercall::Query {
                kind,
                out_gpa,
                out_len,
            } => (kind, out_gpa, out_len, 0),
            Hypercall::RegisterMemory { gpa, len, flags } => (gpa, len, flags, 0),
            Hypercall::UnregisterMemory { handle } => (handle, 0, 0, 0),
            Hypercall::TensorCreate { desc_gpa } => (desc_gpa, 0, 0, 0),
            Hypercall::TensorDestroy { handle } => (handle, 0, 0, 0),
            Hypercall::RingSetup { desc_gpa } => (desc_gpa, 0, 0, 0),
            Hypercall::Doorbell { ring } => (ring, 0, 0, 0),
            Hypercall::SessionOpen {
                model_id,
                max_context,
            } => (model_id, max_context, 0, 0),
            Hypercall::SessionPrefill {
                session,
                region,
                offset,
                count,
            } => (session, region, offset, count),
            Hypercall::SessionGenerate { desc_gpa } => (desc_gpa, 0, 0, 0),
            Hypercall::SessionClose { session } => (session, 0, 0, 0),
            Hypercall::DeviceIrqBind { bdf, vector } => (bdf, vector, 0, 0),
            Hypercall::DeviceIrqDone { bdf } => (bdf, 0, 0, 0),
        };
        HcallRegs {
            rax: self.number() as u64,
            rbx: a,
            rcx: b,
            rdx: c,
            rsi: d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_is_not_supported() {
        for &n in CallNumber::ALL {
            assert_eq!(CallNumber::try_from(n as u64), Ok(n));
        }
        for n in [0u64, 4, 0x12, 0x44, 0x52, u64::MAX, 1 << 63] {
            assert_eq!(CallNumber::try_from(n), Err(HcallError::NotSupported));
            assert_eq!(
                Hypercall::decode(&HcallRegs {
                    rax: n,
                    ..Default::default()
                }),
                Err(HcallError::NotSupported)
            );
        }
    }

    #[test]
    fn decode_encode_round_trip() {
        let calls = [
            Hypercall::ConsoleWrite {
                gpa: 0x1000,
                len: 12,
            },
            Hypercall::Exit { status: 7 },
            Hypercall::Query {
                kind: 0,
                out_gpa: 0x2000,
                out_len: 32,
            },
            Hypercall::RegisterMemory {
                gpa: 0x10_0000,
                len: 0x20_0000,
                flags: 3,
            },
            Hypercall::SessionPrefill {
                session: 1,
                region: 2,
                offset: 3,
                count: 4,
            },
            Hypercall::Doorbell { ring: 9 },
            Hypercall::DeviceIrqBind {
                bdf: 0x10,
                vector: 0x60,
            },
            Hypercall::DeviceIrqDone { bdf: 0x10 },
        ];
        for c in calls {
            assert_eq!(Hypercall::decode(&c.to_regs()), Ok(c));
        }
    }

    #[test]
    fn unused_arguments_must_be_zero() {
        let mut r = Hypercall::Exit { status: 1 }.to_regs();
        r.rcx = 1;
        assert_eq!(Hypercall::decode(&r), Err(HcallError::InvalidArgument));
        let mut r = Hypercall::ConsoleWrite { gpa: 1, len: 2 }.to_regs();
        r.rsi = 5;
        assert_eq!(Hypercall::decode(&r), Err(HcallError::InvalidArgument));
        let r = HcallRegs {
            rax: CallNumber::Exit as u64,
            rbx: 1 << 32,
            ..Default::default()
        };
        assert_eq!(Hypercall::decode(&r), Err(HcallError::InvalidArgument));
    }

    #[test]
    fn random_registers_never_panic() {
        let mut s = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut ok = 0;
        for _ in 0..20_000 {
            let r = HcallRegs {
                rax: next() % 0x50,
                rbx: next() % 3,
                rcx: next() % 3,
                rdx: next() % 3,
                rsi: next() % 3,
            };
            if let Ok(c) = Hypercall::decode(&r) {
                ok += 1;
                assert_eq!(c.to_regs(), r);
            }
        }
        assert!(ok > 100, "{ok}");
    }
}
