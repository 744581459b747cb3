//! Host tests of the validators, including randomized and adversarial cases checked against a
//! brute-force reference.

use std::collections::HashSet;
use std::vec::Vec;

use crate::desc::*;
use crate::validate::*;
use crate::HcallError;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn tensor(dtype: DType, shape: &[u64], strides: &[u64], offset: u64) -> TensorDesc {
    let mut d = TensorDesc {
        dtype: dtype as u32,
        rank: shape.len() as u32,
        region: 1,
        offset,
        ..TensorDesc::default()
    };
    d.shape[..shape.len()].copy_from_slice(shape);
    d.strides[..strides.len()].copy_from_slice(strides);
    d
}

#[test]
fn contiguous_tensor() {
    let l = validate_tensor(&tensor(DType::F32, &[2, 3, 4], &[12, 4, 1], 16), 16 + 96).unwrap();
    assert_eq!(
        (l.elements, l.byte_len, l.contiguous, l.non_overlapping),
        (24, 96, true, true)
    );
    assert_eq!(l.dims(), &[2, 3, 4]);
    assert_eq!(
        validate_tensor(&tensor(DType::F32, &[2, 3, 4], &[12, 4, 1], 16), 16 + 95),
        Err(HcallError::OutOfBounds)
    );
    // Transposed view: in bounds, not contiguous, still non-overlapping.
    let l = validate_tensor(&tensor(DType::F16, &[4, 3], &[1, 4], 0), 24).unwrap();
    assert!(!l.contiguous && l.non_overlapping);
    // Broadcast (stride 0) is a valid input but overlapping.
    let l = validate_tensor(&tensor(DType::F32, &[8, 4], &[0, 1], 0), 16).unwrap();
    assert!(!l.non_overlapping);
}

#[test]
fn rejects_each_malformation() {
    let ok = tensor(DType::F32, &[2, 2], &[2, 1], 0);
    assert!(validate_tensor(&ok, 16).is_ok());
    let mut d = ok;
    d.dtype = 0;
    assert_eq!(validate_tensor(&d, 16), Err(HcallError::BadDtype));
    d = ok;
    d.dtype = 99;
    assert_eq!(validate_tensor(&d, 16), Err(HcallError::BadDtype));
    d = ok;
    d.rank = 0;
    assert_eq!(validate_tensor(&d, 16), Err(HcallError::BadRank));
    d.rank = MAX_RANK as u32 + 1;
    assert_eq!(validate_tensor(&d, 16), Err(HcallError::BadRank));
    d.rank = u32::MAX;
    assert_eq!(validate_tensor(&d, 16), Err(HcallError::BadRank));
    d = ok;
    d.shape[3] = 1; // beyond rank
    assert_eq!(validate_tensor(&d, 16), Err(HcallError::InvalidArgument));
    d = ok;
    d.reserved = 1;
    assert_eq!(validate_tensor(&d, 16), Err(HcallError::InvalidArgument));
    d = ok;
    d.shape[0] = 0;
    assert_eq!(validate_tensor(&d, 16), Err(HcallError::BadShape));
    // Element count overflow.
    let d = tensor(DType::F32, &[1 << 32, 1 << 32, 2], &[0, 0, 0], 0);
    assert_eq!(validate_tensor(&d, u64::MAX), Err(HcallError::BadShape));
    // Stride overflow.
    let d = tensor(DType::F32, &[3, 2], &[u64::MAX / 2, 1], 0);
    assert_eq!(validate_tensor(&d, u64::MAX), Err(HcallError::BadStrides));
    // Byte length overflow (elements fit, bytes do not).
    let d = tensor(DType::F32, &[1 << 62], &[1], 0);
    assert_eq!(validate_tensor(&d, u64::MAX), Err(HcallError::BadStrides));
    // Offset + length overflow.
    let d = tensor(DType::F32, &[4], &[1], u64::MAX - 3);
    assert_eq!(validate_tensor(&d, u64::MAX), Err(HcallError::OutOfBounds));
    // Misaligned offset.
    let d = tensor(DType::F32, &[4], &[1], 2);
    assert_eq!(validate_tensor(&d, 64), Err(HcallError::InvalidArgument));
    // Strides reaching outside the region.
    let d = tensor(DType::F32, &[2, 2], &[1000, 1], 0);
    assert_eq!(validate_tensor(&d, 4000), Err(HcallError::OutOfBounds));
    assert!(validate_tensor(&d, 4008).is_ok());
}

#[test]
fn block_dtype_rules() {
    // 2 rows of 64 Q8_0 elements: 2 blocks per row, 34 bytes each.
    let l = validate_tensor(&tensor(DType::Q8_0, &[2, 64], &[64, 1], 0), 136).unwrap();
    assert_eq!(l.byte_len, 136);
    assert_eq!(
        validate_tensor(&tensor(DType::Q8_0, &[2, 64], &[64, 1], 0), 135),
        Err(HcallError::OutOfBounds)
    );
    assert_eq!(
        validate_tensor(&tensor(DType::Q8_0, &[2, 48], &[48, 1], 0), 1000),
        Err(HcallError::BadShape)
    );
    assert_eq!(
        validate_tensor(&tensor(DType::Q8_0, &[2, 64], &[64, 2], 0), 1000),
        Err(HcallError::BadStrides)
    );
    assert_eq!(
        validate_tensor(&tensor(DType::Q8_0, &[2, 64], &[65, 1], 0), 1000),
        Err(HcallError::BadStrides)
    );
}

/// The byte range a tensor touches, by enumerating every element (small shapes only).
fn brute_force(d: &TensorDesc) -> Option<(u64, Vec<u64>)> {
    let dtype = DType::try_from(d.dtype).ok()?;
    let rank = d.rank as usize;
    let mut offsets = Vec::new();
    let mut idx = [0u64; MAX_RANK];
    loop {
        let mut e: u128 = 0;
        for (i, s) in idx.iter().zip(&d.strides).take(rank) {
            e += u128::from(*i) * u128::from(*s);
        }
        offsets.push(u64::try_from(e).ok()?);
        let mut k = rank;
        loop {
            if k == 0 {
                let max = *offsets.iter().max()?;
                let bytes =
                    u128::from(max / dtype.block_elems() + 1) * u128::from(dtype.block_bytes());
                return Some((u64::try_from(bytes).ok()?, offsets));
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < d.shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

#[test]
fn randomized_against_brute_force() {
    let mut r = Rng(0xDEAD_BEEF_CAFE_F00D);
    let scalar = [DType::F32, DType::F16, DType::Bf16, DType::I32, DType::U32];
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..20_000 {
        let rank = 1 + r.below(MAX_RANK as u64) as usize;
        let dtype = scalar[r.below(scalar.len() as u64) as usize];
        let shape: Vec<u64> = (0..rank).map(|_| 1 + r.below(4)).collect();
        let strides: Vec<u64> = (0..rank).map(|_| r.below(24)).collect();
        let offset = r.below(16) * dtype.block_bytes();
        let d = tensor(dtype, &shape, &strides, offset);
        let (bytes, offsets) = brute_force(&d).unwrap();
        let region_len = r.below(offset + bytes + 16);
        let got = validate_tensor(&d, region_len);
        if offset + bytes <= region_len {
            let l = got.unwrap();
            assert_eq!(l.byte_len, bytes);
            assert_eq!(l.elements, offsets.len() as u64);
            let distinct = offsets.iter().collect::<HashSet<_>>().len() == offsets.len();
            // The overlap test is sound: it never calls an overlapping layout non-overlapping.
            if l.non_overlapping {
                assert!(distinct, "{d:?}");
            }
            if l.contiguous {
                assert!(distinct && bytes == offsets.len() as u64 * dtype.block_bytes());
            }
            accepted += 1;
        } else {
            assert_eq!(
                got,
                Err(HcallError::OutOfBounds),
                "{d:?} region {region_len}"
            );
            rejected += 1;
        }
    }
    assert!(accepted > 1000 && rejected > 1000, "{accepted} {rejected}");
}

#[test]
fn adversarial_descriptors_never_panic() {
    let mut r = Rng(0x0123_4567_89AB_CDEF);
    let mut ok = 0;
    for i in 0..200_000u64 {
        let mut b = [0u8; TensorDesc::SIZE];
        for chunk in b.chunks_mut(8) {
            let v = match r.below(6) {
                0 => 0,
                1 => 1,
                2 => u64::MAX,
                3 => 1 << r.below(64),
                4 => r.below(8),
                _ => r.next(),
            };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        let mut d = TensorDesc::from_bytes(&b);
        if i % 2 == 0 {
            // Keep some descriptors close to valid so deeper checks run.
            d.dtype = 1 + (d.dtype % 6);
            d.rank = 1 + (d.rank % 4);
            d.reserved = 0;
            for k in d.rank as usize..MAX_RANK {
                d.shape[k] = 0;
                d.strides[k] = 0;
            }
        }
        if let Ok(l) = validate_tensor(&d, r.next()) {
            ok += 1;
            assert!(l.offset.checked_add(l.byte_len).is_some());
        }
        let _ = validate_sq_entry(&SqEntry::from_bytes(&b[..64].try_into().unwrap()));
        let _ = validate_ring_setup(&RingSetupDesc::from_bytes(&b[..48].try_into().unwrap()));
        let _ = validate_generate(
            &GenerateDesc::from_bytes(&b[..64].try_into().unwrap()),
            r.next(),
        );
    }
    assert!(ok > 100, "{ok}");
}

fn layout(dtype: DType, shape: &[u64]) -> TensorLayout {
    let mut strides = [0u64; MAX_RANK];
    let mut s = 1;
    for k in (0..shape.len()).rev() {
        strides[k] = s;
        s *= shape[k];
    }
    validate_tensor(&tensor(dtype, shape, &strides[..shape.len()], 0), u64::MAX).unwrap()
}

#[test]
fn op_entries_and_shapes() {
    let e = SqEntry {
        user_data: 7,
        opcode: OpCode::Matmul as u16,
        tensors: [1, 2, 0, 3],
        ..SqEntry::default()
    };
    let v = validate_sq_entry(&e).unwrap();
    assert_eq!(
        (v.op, v.inputs, v.output, v.user_data),
        (OpCode::Matmul, [1, 2, 0], 3, 7)
    );
    assert_eq!(
        validate_sq_entry(&SqEntry { opcode: 99, ..e }),
        Err(HcallError::NotSupported)
    );
    assert_eq!(
        validate_sq_entry(&SqEntry { flags: 1, ..e }),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_sq_entry(&SqEntry {
            tensors: [1, 2, 5, 3],
            ..e
        }),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_sq_entry(&SqEntry {
            tensors: [1, 0, 0, 3],
            ..e
        }),
        Err(HcallError::BadHandle)
    );
    assert_eq!(
        validate_sq_entry(&SqEntry {
            tensors: [1, 2, 0, 0],
            ..e
        }),
        Err(HcallError::BadHandle)
    );
    assert_eq!(
        validate_sq_entry(&SqEntry {
            params: [1, 0],
            ..e
        }),
        Err(HcallError::InvalidArgument)
    );
    let rms = SqEntry {
        opcode: OpCode::RmsNorm as u16,
        params: [1e-6f32.to_bits() as u64, 0],
        ..e
    };
    assert!(validate_sq_entry(&rms).is_ok());

    let a = layout(DType::F32, &[4, 8]);
    let b = layout(DType::Q8_0, &[16, 32]);
    let b_bad = layout(DType::F32, &[16, 7]);
    let out = layout(DType::F32, &[4, 16]);
    assert_eq!(
        check_op_shapes(OpCode::Matmul, &[a, layout(DType::F32, &[16, 8])], &out),
        Ok(())
    );
    assert_eq!(
        check_op_shapes(OpCode::Matmul, &[a, b], &out),
        Err(HcallError::BadShape),
        "k mismatch"
    );
    assert_eq!(
        check_op_shapes(OpCode::Matmul, &[a, b_bad], &out),
        Err(HcallError::BadShape)
    );
    let a32 = layout(DType::F32, &[4, 32]);
    assert_eq!(check_op_shapes(OpCode::Matmul, &[a32, b], &out), Ok(()));
    assert_eq!(check_op_shapes(OpCode::Add, &[a, a], &a), Ok(()));
    assert_eq!(
        check_op_shapes(OpCode::Add, &[a, out], &a),
        Err(HcallError::BadShape)
    );
    assert_eq!(
        check_op_shapes(OpCode::Add, &[a, layout(DType::I32, &[4, 8])], &a),
        Err(HcallError::BadDtype)
    );
    assert_eq!(
        check_op_shapes(OpCode::RmsNorm, &[a, layout(DType::F32, &[8])], &a),
        Ok(())
    );
    assert_eq!(
        check_op_shapes(OpCode::RmsNorm, &[a, layout(DType::F32, &[4])], &a),
        Err(HcallError::BadShape)
    );
    assert_eq!(
        check_op_shapes(
            OpCode::Rope,
            &[layout(DType::F32, &[2, 5])],
            &layout(DType::F32, &[2, 5])
        ),
        Err(HcallError::BadShape)
    );
    assert_eq!(check_op_shapes(OpCode::Softmax, &[a], &a), Ok(()));
    assert_eq!(
        check_op_shapes(OpCode::Softmax, &[a, a], &a),
        Err(HcallError::InvalidArgument)
    );
    // An overlapping (broadcast) output is refused.
    let bcast = validate_tensor(&tensor(DType::F32, &[4, 8], &[0, 1], 0), 64).unwrap();
    assert_eq!(
        check_op_shapes(OpCode::Softmax, &[a], &bcast),
        Err(HcallError::BadStrides)
    );
}

#[test]
fn rings() {
    let ok = RingSetupDesc {
        control_gpa: 0x1000,
        sq_gpa: 0x2000,
        cq_gpa: 0x2000 + 64 * 64,
        sq_entries: 64,
        cq_entries: 64,
        ..RingSetupDesc::default()
    };
    let l = validate_ring_setup(&ok).unwrap();
    assert_eq!(l.sq, (0x2000, 0x3000));
    assert_eq!(l.cq, (0x3000, 0x3800));
    assert_eq!(
        validate_ring_setup(&RingSetupDesc {
            sq_entries: 48,
            ..ok
        }),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_ring_setup(&RingSetupDesc {
            sq_entries: 0,
            ..ok
        }),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_ring_setup(&RingSetupDesc {
            cq_entries: 8192,
            ..ok
        }),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_ring_setup(&RingSetupDesc {
            sq_gpa: 0x2008,
            ..ok
        }),
        Err(HcallError::BadAddress)
    );
    assert_eq!(
        validate_ring_setup(&RingSetupDesc {
            cq_gpa: 0x2FC0,
            ..ok
        }),
        Err(HcallError::BadAddress),
        "overlap"
    );
    assert_eq!(
        validate_ring_setup(&RingSetupDesc {
            control_gpa: 0x2040,
            ..ok
        }),
        Err(HcallError::BadAddress)
    );
    assert_eq!(
        validate_ring_setup(&RingSetupDesc { cq_gpa: !63, ..ok }),
        Err(HcallError::BadAddress)
    );
    assert_eq!(
        validate_ring_setup(&RingSetupDesc {
            notify_vector: 40,
            ..ok
        }),
        Err(HcallError::InvalidArgument)
    );
    let irq = RingSetupDesc {
        flags: RingSetupFlags::INTERRUPT.bits(),
        notify_vector: 40,
        ..ok
    };
    assert!(validate_ring_setup(&irq).is_ok());
    assert_eq!(
        validate_ring_setup(&RingSetupDesc {
            notify_vector: 2,
            ..irq
        }),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_ring_setup(&RingSetupDesc { flags: 2, ..ok }),
        Err(HcallError::InvalidArgument)
    );

    assert_eq!(ring_pending(10, 14, 64), Ok(4));
    assert_eq!(ring_pending(u32::MAX - 1, 2, 64), Ok(4), "wrap-around");
    assert_eq!(ring_pending(10, 10 + 64, 64), Ok(64));
    assert_eq!(ring_pending(10, 10 + 65, 64), Err(HcallError::BadRingIndex));
    assert_eq!(
        ring_pending(10, 9, 64),
        Err(HcallError::BadRingIndex),
        "producer behind consumer"
    );
    assert_eq!(ring_slot(130, 64), 2);
    let mut r = Rng(77);
    for _ in 0..10_000 {
        let (c, p) = (r.next() as u32, r.next() as u32);
        let entries = 1 << r.below(13);
        if let Ok(n) = ring_pending(c, p, entries) {
            assert!(n <= entries);
            assert_eq!(c.wrapping_add(n), p);
        }
    }
}

#[test]
fn generate() {
    let ok = GenerateDesc {
        session: 1,
        out_region: 2,
        out_offset: 8,
        max_tokens: 16,
        temperature_bits: 0.7f32.to_bits(),
        top_p_bits: 0.9f32.to_bits(),
        ..GenerateDesc::default()
    };
    assert_eq!(validate_generate(&ok, 8 + 64), Ok(()));
    assert_eq!(validate_generate(&ok, 8 + 63), Err(HcallError::OutOfBounds));
    assert_eq!(
        validate_generate(&GenerateDesc { session: 0, ..ok }, 100),
        Err(HcallError::BadHandle)
    );
    assert_eq!(
        validate_generate(
            &GenerateDesc {
                max_tokens: 0,
                ..ok
            },
            100
        ),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_generate(
            &GenerateDesc {
                out_offset: 6,
                ..ok
            },
            100
        ),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_generate(
            &GenerateDesc {
                temperature_bits: f32::NAN.to_bits(),
                ..ok
            },
            100
        ),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_generate(
            &GenerateDesc {
                top_p_bits: 0,
                ..ok
            },
            100
        ),
        Err(HcallError::InvalidArgument)
    );
    assert_eq!(
        validate_generate(
            &GenerateDesc {
                out_offset: u64::MAX - 3,
                ..ok
            },
            u64::MAX
        ),
        Err(HcallError::OutOfBounds)
    );
    assert_eq!(
        validate_generate(&GenerateDesc { flags: 2, ..ok }, 100),
        Err(HcallError::InvalidArgument)
    );
}
