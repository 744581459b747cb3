//! GGUF (versions 2 and 3) reader over a byte slice.
//!
//! Layout (all little endian): magic `GGUF`, version u32, tensor count u64, metadata count u64,
//! the metadata key/value pairs, the tensor infos, padding to `general.alignment` (default 32),
//! then the tensor data. Tensors are returned as zero-copy views into the slice. Every length,
//! count and offset read from the file is bounds-checked: a truncated or corrupt file gives a
//! [`GgufError`], never a panic.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::quant::GgmlType;

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML supports at most four dimensions.
pub const MAX_DIMS: u32 = 4;

/// What went wrong reading a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufError {
    /// The file ended before a field that was needed: `what` at byte `offset`.
    Truncated { what: &'static str, offset: usize },
    /// The first four bytes are not `GGUF`.
    BadMagic(u32),
    /// A GGUF version this reader does not understand.
    UnsupportedVersion(u32),
    /// A metadata value type id that GGUF does not define.
    UnknownValueType { key: String, type_id: u32 },
    /// A string that is not valid UTF-8 where text is required.
    InvalidUtf8 { offset: usize },
    /// A tensor of a type this engine cannot use (or an unknown type id).
    UnsupportedTensorType { tensor: String, type_id: u32 },
    /// A tensor with zero or more than four dimensions, or a zero-sized dimension.
    BadDimensions { tensor: String },
    /// The row length is not a multiple of the type's block size.
    BadRowLength { tensor: String, row: u64, block: u64 },
    /// A size computation overflowed.
    Overflow { what: &'static str },
    /// A tensor's data lies (partly) outside the file.
    TensorOutOfBounds { tensor: String, offset: u64, size: u64, data_len: u64 },
    /// A tensor's offset is not a multiple of the alignment.
    MisalignedTensor { tensor: String, offset: u64 },
    /// `general.alignment` is zero, not a power of two, or of the wrong type.
    BadAlignment(u64),
    /// Two tensors with the same name.
    DuplicateTensor(String),
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, offset } => {
                write!(f, "GGUF truncated: {what} at byte {offset} runs past the end of the file")
            }
            Self::BadMagic(m) => write!(f, "not a GGUF file (magic {m:#010x}, expected 'GGUF')"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported GGUF version {v} (need 2 or 3)"),
            Self::UnknownValueType { key, type_id } => {
                write!(f, "GGUF metadata '{key}' has unknown value type {type_id}")
            }
            Self::InvalidUtf8 { offset } => write!(f, "GGUF string at byte {offset} is not UTF-8"),
            Self::UnsupportedTensorType { tensor, type_id } => {
                write!(f, "tensor '{tensor}' has unsupported ggml type {type_id}")
            }
            Self::BadDimensions { tensor } => write!(f, "tensor '{tensor}' has invalid dimensions"),
            Self::BadRowLength { tensor, row, block } => write!(
                f,
                "tensor '{tensor}' row length {row} is not a multiple of the block size {block}"
            ),
            Self::Overflow { what } => write!(f, "GGUF size overflow computing {what}"),
            Self::TensorOutOfBounds { tensor, offset, size, data_len } => write!(
                f,
                "tensor '{tensor}' data [{offset}, +{size}) lies outside the data section ({data_len} bytes)"
            ),
            Self::MisalignedTensor { tensor, offset } => {
                write!(f, "tensor '{tensor}' offset {offset} is not aligned")
            }
            Self::BadAlignment(a) => write!(f, "invalid general.alignment {a}"),
            Self::DuplicateTensor(n) => write!(f, "duplicate tensor name '{n}'"),
        }
    }
}

/// Metadata value type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// Size in bytes of a scalar of this type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        Some(match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::String | Self::Array => return None,
        })
    }
}

/// A metadata value, borrowing strings and arrays from the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// Raw bytes of a GGUF string (UTF-8 by the spec; checked by [`Value::as_str`]).
    String(&'a [u8]),
    Array(ArrayView<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// An unsigned integer value of any width (negative signed values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v as u64),
            Self::U16(v) => Some(v as u64),
            Self::U32(v) => Some(v as u64),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => self.as_u64().map(|v| v as f32),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Self::String(s) => core::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<ArrayView<'a>> {
        match *self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata array: element type, count and its raw encoded bytes (already bounds-checked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrayView<'a> {
    pub elem_type: ValueType,
    pub len: u64,
    /// The encoded elements, exactly.
    raw: &'a [u8],
    /// Byte offset of `raw` in the file (for error messages).
    file_offset: usize,
}

impl<'a> ArrayView<'a> {
    /// Iterates the elements, decoding each (the bytes were validated at parse time, so decoding
    /// does not fail; nested arrays are returned as views).
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            cur: Cursor { buf: self.raw, pos: 0, base: self.file_offset },
            elem_type: self.elem_type,
            left: self.len,
        }
    }

    /// The elements as strings (fails on a non-string array or invalid UTF-8).
    pub fn strings(&self) -> Result<Vec<&'a str>, GgufError> {
        let mut out = Vec::with_capacity(bounded_capacity(self.len, self.raw.len(), 8));
        let mut cur = Cursor { buf: self.raw, pos: 0, base: self.file_offset };
        if self.elem_type != ValueType::String {
            return Ok(out);
        }
        for _ in 0..self.len {
            let at = cur.offset();
            let s = cur.string()?;
            out.push(core::str::from_utf8(s).map_err(|_| GgufError::InvalidUtf8 { offset: at })?);
        }
        Ok(out)
    }

    /// The elements converted to f32 (numeric arrays only; others give an empty vector).
    pub fn f32s(&self) -> Vec<f32> {
        self.iter().filter_map(|v| v.as_f32()).collect()
    }

    /// The elements converted to i64 (integer arrays only).
    pub fn i64s(&self) -> Vec<i64> {
        self.iter()
            .filter_map(|v| match v {
                Value::I8(x) => Some(x as i64),
                Value::I16(x) => Some(x as i64),
                Value::I32(x) => Some(x as i64),
                Value::I64(x) => Some(x),
                other => other.as_u64().and_then(|x| i64::try_from(x).ok()),
            })
            .collect()
    }
}

pub struct ArrayIter<'a> {
    cur: Cursor<'a>,
    elem_type: ValueType,
    left: u64,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;
    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.cur.value(self.elem_type, "array element", 0).ok()
    }
}

/// Capacity hint that a hostile count cannot blow up: at most one element per `min_size` bytes.
fn bounded_capacity(count: u64, bytes: usize, min_size: usize) -> usize {
    let limit = bytes / min_size.max(1);
    usize::try_from(count).unwrap_or(usize::MAX).min(limit)
}

#[derive(Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the whole file.
    base: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated { what, offset: self.offset() }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self) -> Result<&'a [u8], GgufError> {
        let len = self.u64("string length")?;
        let len = usize::try_from(len).map_err(|_| GgufError::Truncated {
            what: "string",
            offset: self.offset(),
        })?;
        self.take(len, "string")
    }

    /// Decodes one value; `depth` bounds nested arrays.
    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value<'a>, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("u8")?[0]),
            ValueType::I8 => Value::I8(self.array::<1>("i8")?[0] as i8),
            ValueType::Bool => Value::Bool(self.array::<1>("bool")?[0] != 0),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            ValueType::U32 => Value::U32(self.u32("u32")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            ValueType::U64 => Value::U64(self.u64("u64")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => {
                let type_id = self.u32("array element type")?;
                let elem_type = ValueType::from_u32(type_id)
                    .ok_or_else(|| GgufError::UnknownValueType { key: key.into(), type_id })?;
                let len = self.u64("array length")?;
                if depth > 4 {
                    return Err(GgufError::UnknownValueType { key: key.into(), type_id });
                }
                let start = self.pos;
                let file_offset = self.offset();
                match elem_type.fixed_size() {
                    Some(sz) => {
                        let bytes = len
                            .checked_mul(sz as u64)
                            .and_then(|b| usize::try_from(b).ok())
                            .ok_or(GgufError::Truncated { what: "array", offset: file_offset })?;
                        self.take(bytes, "array")?;
                    }
                    None => {
                        for _ in 0..len {
                            self.value(elem_type, key, depth + 1)?;
                        }
                    }
                }
                Value::Array(ArrayView {
                    elem_type,
                    len,
                    raw: &self.buf[start..self.pos],
                    file_offset,
                })
            }
        })
    }
}

/// One tensor's description and its data.
#[derive(Debug, Clone)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    /// Dimensions, innermost (contiguous) first, as GGML orders them.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// The tensor's bytes (zero-copy view).
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file borrowing from its bytes.
pub struct Gguf<'a> {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(&'a str, Value<'a>)>,
    pub tensors: Vec<TensorInfo<'a>>,
    /// Offset of the data section in the file.
    pub data_offset: usize,
}

impl<'a> Gguf<'a> {
    /// Parses `bytes` (the whole file).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut cur = Cursor { buf: bytes, pos: 0, base: 0 };
        let magic = cur.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = cur.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.u64("metadata count")?;

        // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes.
        let mut metadata = Vec::with_capacity(bounded_capacity(n_kv, bytes.len(), 13));
        for _ in 0..n_kv {
            let key_at = cur.offset();
            let key = core::str::from_utf8(cur.string()?)
                .map_err(|_| GgufError::InvalidUtf8 { offset: key_at })?;
            let type_id = cur.u32("metadata value type")?;
            let ty = ValueType::from_u32(type_id)
                .ok_or_else(|| GgufError::UnknownValueType { key: key.into(), type_id })?;
            let v = cur.value(ty, key, 0)?;
            metadata.push((key, v));
        }

        let alignment = match metadata.iter().find(|(k, _)| *k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v {
                Value::U32(a) => *a as u64,
                Value::U64(a) => *a,
                _ => return Err(GgufError::BadAlignment(0)),
            },
        };
        if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 20 {
            return Err(GgufError::BadAlignment(alignment));
        }

        struct Raw<'a> {
            name: &'a str,
            dims: Vec<u64>,
            type_id: u32,
            offset: u64,
        }
        // Each tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes.
        let mut raws = Vec::with_capacity(bounded_capacity(n_tensors, bytes.len(), 32));
        for _ in 0..n_tensors {
            let name_at = cur.offset();
            let name = core::str::from_utf8(cur.string()?)
                .map_err(|_| GgufError::InvalidUtf8 { offset: name_at })?;
            let n_dims = cur.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadDimensions { tensor: name.into() });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cur.u64("tensor dimension")?);
            }
            let type_id = cur.u32("tensor type")?;
            let offset = cur.u64("tensor offset")?;
            raws.push(Raw { name, dims, type_id, offset });
        }

        let data_offset = (cur.pos as u64)
            .checked_next_multiple_of(alignment)
            .ok_or(GgufError::Overflow { what: "data offset" })?;
        let data_len = (bytes.len() as u64).saturating_sub(data_offset);
        let data_offset = data_offset.min(bytes.len() as u64) as usize;
        let data = &bytes[data_offset..];

        let mut tensors: Vec<TensorInfo<'a>> = Vec::with_capacity(raws.len());
        for r in raws {
            let ty = GgmlType::from_u32(r.type_id).ok_or_else(|| {
                GgufError::UnsupportedTensorType { tensor: r.name.into(), type_id: r.type_id }
            })?;
            if r.dims.contains(&0) {
                return Err(GgufError::BadDimensions { tensor: r.name.into() });
            }
            let block = ty.block_size() as u64;
            if r.dims[0] % block != 0 {
                return Err(GgufError::BadRowLength {
                    tensor: r.name.into(),
                    row: r.dims[0],
                    block,
                });
            }
            let mut n: u64 = 1;
            for &d in &r.dims {
                n = n.checked_mul(d).ok_or(GgufError::Overflow { what: "tensor elements" })?;
            }
            let size = (n / block)
                .checked_mul(ty.block_bytes() as u64)
                .ok_or(GgufError::Overflow { what: "tensor bytes" })?;
            if r.offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor { tensor: r.name.into(), offset: r.offset });
            }
            let end = r.offset.checked_add(size).filter(|&e| e <= data_len).ok_or_else(|| {
                GgufError::TensorOutOfBounds {
                    tensor: r.name.into(),
                    offset: r.offset,
                    size,
                    data_len,
                }
            })?;
            if tensors.iter().any(|t| t.name == r.name) {
                return Err(GgufError::DuplicateTensor(r.name.into()));
            }
            tensors.push(TensorInfo {
                name: r.name,
                dims: r.dims,
                ty,
                offset: r.offset,
                data: &data[r.offset as usize..end as usize],
            });
        }

        Ok(Gguf { version, alignment, metadata, tensors, data_offset })
    }

    /// Looks up a metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.metadata.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Looks up a tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
