//! GGUF reader: round trip of every metadata type, and corrupt files (truncation, bad magic,
//! huge counts, out-of-bounds offsets, unknown types) give errors, never panics.

use engine::gguf::{Gguf, GgufError, Value};
use engine::quant::GgmlType;
use engine::tiny::{tiny_gemma3, GgufWriter, MetaValue};

fn sample_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.meta("a.u8", MetaValue::U8(200));
    w.meta("a.i8", MetaValue::I8(-5));
    w.meta("a.u16", MetaValue::U16(60000));
    w.meta("a.i16", MetaValue::I16(-30000));
    w.meta("a.u32", MetaValue::U32(4_000_000_000));
    w.meta("a.i32", MetaValue::I32(-2_000_000_000));
    w.meta("a.f32", MetaValue::F32(1.5));
    w.meta("a.bool", MetaValue::Bool(true));
    w.meta("a.str", MetaValue::Str("héllo".into()));
    w.meta("a.u64", MetaValue::U64(u64::MAX));
    w.meta("a.i64", MetaValue::I64(i64::MIN));
    w.meta("a.f64", MetaValue::F64(-2.25));
    w.meta("a.arr", MetaValue::Array(5, vec![MetaValue::I32(1), MetaValue::I32(-2), MetaValue::I32(3)]));
    w.meta("a.strs", MetaValue::Array(8, vec![MetaValue::Str("x".into()), MetaValue::Str("yz".into())]));
    w.meta(
        "a.nested",
        MetaValue::Array(9, vec![MetaValue::Array(0, vec![MetaValue::U8(7)]), MetaValue::Array(0, vec![])]),
    );
    w.tensor("t.f32", &[4, 2], GgmlType::F32, (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect());
    w.tensor("t.q8", &[32], GgmlType::Q8_0, vec![1; 34]);
    w.finish()
}

#[test]
fn roundtrip_all_value_types() {
    let bytes = sample_file();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get("a.u8"), Some(&Value::U8(200)));
    assert_eq!(g.get("a.i8"), Some(&Value::I8(-5)));
    assert_eq!(g.get("a.u16"), Some(&Value::U16(60000)));
    assert_eq!(g.get("a.i16"), Some(&Value::I16(-30000)));
    assert_eq!(g.get("a.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(g.get("a.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(g.get("a.f32"), Some(&Value::F32(1.5)));
    assert_eq!(g.get("a.bool"), Some(&Value::Bool(true)));
    assert_eq!(g.get("a.str").unwrap().as_str(), Some("héllo"));
    assert_eq!(g.get("a.u64"), Some(&Value::U64(u64::MAX)));
    assert_eq!(g.get("a.i64"), Some(&Value::I64(i64::MIN)));
    assert_eq!(g.get("a.f64"), Some(&Value::F64(-2.25)));
    assert_eq!(g.get("a.arr").unwrap().as_array().unwrap().i64s(), vec![1, -2, 3]);
    assert_eq!(g.get("a.strs").unwrap().as_array().unwrap().strings().unwrap(), vec!["x", "yz"]);
    let nested: Vec<_> = g.get("a.nested").unwrap().as_array().unwrap().iter().collect();
    assert_eq!(nested.len(), 2);
    assert_eq!(nested[0].as_array().unwrap().iter().collect::<Vec<_>>(), vec![Value::U8(7)]);
    let t = g.tensor("t.f32").unwrap();
    assert_eq!(t.dims, vec![4, 2]);
    assert_eq!(t.data.len(), 32);
    assert_eq!(&t.data[4..8], &1.0f32.to_le_bytes());
    // Zero-copy: the view points into the file.
    let base = bytes.as_ptr() as usize;
    assert_eq!(t.data.as_ptr() as usize - base, g.data_offset + t.offset as usize);
    assert_eq!(g.tensor("t.q8").unwrap().data, &[1u8; 34][..]);
    assert_eq!((g.data_offset + g.tensor("t.q8").unwrap().offset as usize) % 32, 0);
}

/// Byte offset just after the metadata key `key`'s name (where its type id starts).
fn key_end(bytes: &[u8], key: &str) -> usize {
    let pos = bytes.windows(key.len()).position(|w| w == key.as_bytes()).unwrap();
    pos + key.len()
}

fn check_err(bytes: &[u8]) -> GgufError {
    match std::panic::catch_unwind(|| Gguf::parse(bytes).map(|_| ())) {
        Ok(Err(e)) => {
            assert!(!e.to_string().is_empty());
            e
        }
        Ok(Ok(())) => panic!("corrupt file parsed successfully"),
        Err(_) => panic!("parser panicked"),
    }
}

#[test]
fn every_truncation_is_an_error() {
    for bytes in [sample_file(), tiny_gemma3(3)] {
        let g = Gguf::parse(&bytes).unwrap();
        let header_end = g.data_offset;
        // Every prefix that cuts the header or metadata, and a spread through the data.
        let mut cuts: Vec<usize> = (0..header_end.min(20_000)).collect();
        cuts.extend((header_end..bytes.len()).step_by(997));
        cuts.push(bytes.len() - 1);
        for cut in cuts {
            let e = check_err(&bytes[..cut]);
            assert!(
                matches!(e, GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. }),
                "cut {cut}: {e:?}"
            );
        }
    }
}

#[test]
fn bad_magic_and_version() {
    let mut b = sample_file();
    b[0] = b'X';
    assert!(matches!(check_err(&b), GgufError::BadMagic(_)));
    let mut b = sample_file();
    b[4..8].copy_from_slice(&99u32.to_le_bytes());
    assert_eq!(check_err(&b), GgufError::UnsupportedVersion(99));
    assert!(matches!(check_err(b"GGU"), GgufError::Truncated { .. }));
}

#[test]
fn huge_counts_and_lengths() {
    // Tensor count, metadata count.
    for at in [8usize, 16] {
        let mut b = sample_file();
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        check_err(&b);
        let mut b = sample_file();
        b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        check_err(&b);
    }
    // A string length.
    let mut b = sample_file();
    let at = key_end(&b, "a.str") + 4;
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::Truncated { .. }));
    // An array length (fixed-size elements: the byte count overflows) and a string array.
    for key in ["a.arr", "a.strs"] {
        let mut b = sample_file();
        let at = key_end(&b, key) + 8;
        b[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(matches!(check_err(&b), GgufError::Truncated { .. }), "{key}");
    }
    // A key length.
    let mut b = sample_file();
    b[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    check_err(&b);
}

fn tensor_info_at(bytes: &[u8], name: &str) -> usize {
    // Tensor names appear after the metadata; take the last occurrence.
    let pos = bytes.windows(name.len()).rposition(|w| w == name.as_bytes()).unwrap();
    pos + name.len()
}

#[test]
fn bad_tensor_infos() {
    let b0 = sample_file();
    let at = tensor_info_at(&b0, "t.f32"); // n_dims u32, dims 2*u64, type u32, offset u64
    let (ty_at, off_at) = (at + 4 + 16, at + 4 + 16 + 4);

    let mut b = b0.clone();
    b[ty_at..ty_at + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::UnsupportedTensorType { type_id: 77, .. }));

    let mut b = b0.clone();
    b[off_at..off_at + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::TensorOutOfBounds { .. }));

    let mut b = b0.clone();
    b[off_at..off_at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::TensorOutOfBounds { .. }));

    let mut b = b0.clone();
    b[off_at..off_at + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::MisalignedTensor { .. }));

    let mut b = b0.clone();
    b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::BadDimensions { .. }));

    let mut b = b0.clone();
    b[at + 4..at + 12].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    b[at + 12..at + 20].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    check_err(&b);

    let mut b = b0.clone();
    b[at + 4..at + 12].copy_from_slice(&0u64.to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::BadDimensions { .. }));

    // Q8_0 row length must be a multiple of 32.
    let at = tensor_info_at(&b0, "t.q8");
    let mut b = b0.clone();
    b[at + 4..at + 12].copy_from_slice(&33u64.to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::BadRowLength { .. }));
}

#[test]
fn unknown_value_type_and_bad_alignment() {
    let mut b = sample_file();
    let at = key_end(&b, "a.u8");
    b[at..at + 4].copy_from_slice(&13u32.to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::UnknownValueType { type_id: 13, .. }));
    let mut b = sample_file();
    let at = key_end(&b, "a.arr") + 4;
    b[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(check_err(&b), GgufError::UnknownValueType { type_id: 1000, .. }));

    let mut w = GgufWriter::new();
    w.meta("general.alignment", MetaValue::U32(24));
    assert_eq!(check_err(&w.finish()), GgufError::BadAlignment(24));
}

#[test]
fn random_byte_flips_never_panic() {
    let base = tiny_gemma3(5);
    let header_end = Gguf::parse(&base).unwrap().data_offset;
    let mut rng = engine::sampler::Rng::new(42);
    for _ in 0..3000 {
        let mut b = base[..header_end + 64.min(base.len() - header_end)].to_vec();
        for _ in 0..4 {
            let at = (rng.next_u64() % b.len() as u64) as usize;
            b[at] = rng.next_u64() as u8;
        }
        // Ok or Err are both fine (a flip may hit a string body); a panic is not.
        let r = std::panic::catch_unwind(|| Gguf::parse(&b).map(|_| ()));
        assert!(r.is_ok(), "panic on a corrupt file");
    }
}
