//! A GGUF writer and a generator of tiny Gemma 3 models (random weights, deterministic seed) for
//! tests and emulator runs. The tiny model has the real architecture (6 layers so that one is
//! global, GQA, QK-norm, tied output) and uses every tensor type the engine supports.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::half::f32_to_f16;
use crate::quant::{f32_to_bf16, GgmlType};
use crate::sampler::Rng;

/// An owned metadata value for the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and elements (all of that type).
    Array(u32, Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::Str(_) => 8,
            Self::Array(..) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::U8(v) => out.push(*v),
            Self::I8(v) => out.push(*v as u8),
            Self::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::Bool(v) => out.push(*v as u8),
            Self::Str(s) => write_str(out, s),
            Self::Array(t, items) => {
                out.extend_from_slice(&t.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            Self::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Builds a GGUF v3 file in memory.
#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, MetaValue)>,
    /// name, dims (innermost first), type, bytes.
    pub tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
    pub alignment: usize,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self { alignment: 32, ..Default::default() }
    }

    pub fn meta(&mut self, key: &str, v: MetaValue) {
        self.metadata.push((key.into(), v));
    }

    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
    }

    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            v.write(&mut out);
        }
        let align = self.alignment.max(1);
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            write_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        let base = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

/// Random bytes for `n` elements of `ty` with the block scales set so that weights have a
/// magnitude around `mag`.
pub fn random_tensor(rng: &mut Rng, ty: GgmlType, n: usize, mag: f32) -> Vec<u8> {
    let nb = n / ty.block_size();
    let mut out = Vec::with_capacity(nb * ty.block_bytes());
    let f16 = |v: f32| f32_to_f16(v).to_le_bytes();
    for _ in 0..nb {
        let start = out.len();
        match ty {
            GgmlType::F32 => {
                let v = (rng.next_f32() * 2.0 - 1.0) * mag;
                out.extend_from_slice(&v.to_le_bytes());
                continue;
            }
            GgmlType::F16 => {
                out.extend_from_slice(&f16((rng.next_f32() * 2.0 - 1.0) * mag));
                continue;
            }
            GgmlType::BF16 => {
                out.extend_from_slice(&f32_to_bf16((rng.next_f32() * 2.0 - 1.0) * mag).to_le_bytes());
                continue;
            }
            _ => {}
        }
        for _ in 0..ty.block_bytes() {
            out.push(rng.next_u64() as u8);
        }
        let b = &mut out[start..];
        let jitter = 0.5 + rng.next_f32();
        match ty {
            GgmlType::Q4_0 => b[0..2].copy_from_slice(&f16(mag / 4.0 * jitter)),
            GgmlType::Q5_0 => b[0..2].copy_from_slice(&f16(mag / 8.0 * jitter)),
            GgmlType::Q8_0 => b[0..2].copy_from_slice(&f16(mag / 64.0 * jitter)),
            GgmlType::Q4_K => {
                b[0..2].copy_from_slice(&f16(mag / 200.0 * jitter));
                b[2..4].copy_from_slice(&f16(mag / 100.0 * jitter));
            }
            GgmlType::Q5_K => {
                b[0..2].copy_from_slice(&f16(mag / 400.0 * jitter));
                b[2..4].copy_from_slice(&f16(mag / 100.0 * jitter));
            }
            GgmlType::Q6_K => b[208..210].copy_from_slice(&f16(mag / 1000.0 * jitter)),
            _ => {}
        }
    }
    out
}

/// Shape of the tiny model.
pub const TINY_EMBD: usize = 256;
pub const TINY_LAYERS: usize = 6;
pub const TINY_HEADS: usize = 4;
pub const TINY_KV_HEADS: usize = 1;
pub const TINY_HEAD_DIM: usize = 64;
pub const TINY_FF: usize = 512;

/// The tiny model's vocabulary: specials, 256 byte tokens, then letters and frequent pieces.
pub fn tiny_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut toks: Vec<String> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    for (t, ty) in [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<start_of_turn>", 3), ("<end_of_turn>", 3)] {
        toks.push(t.into());
        types.push(ty);
    }
    for b in 0..256u32 {
        toks.push(alloc::format!("<0x{b:02X}>"));
        types.push(6);
    }
    let mut normal: Vec<String> = Vec::new();
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()▁\n".chars() {
        normal.push(c.into());
    }
    for w in [
        "▁t", "he", "▁the", "in", "▁a", "er", "on", "▁o", "re", "at", "en", "▁s", "an", "or", "is",
        "▁w", "it", "▁of", "▁and", "▁to", "▁in", "ing", "▁is", "▁that", "▁it", "ed", "▁c", "▁f",
        "ou", "es", "▁h", "▁b", "▁m", "▁p", "al", "ar", "▁I", "▁The", "▁was", "▁for", "ion",
        "▁on", "▁be", "le", "▁he", "as", "ll", "▁with", "▁you", "▁capital", "▁France", "▁Paris",
        "▁hello", "▁world", "\n\n",
    ] {
        normal.push(w.into());
    }
    let mut scores = vec![0.0f32; toks.len()];
    for (i, w) in normal.into_iter().enumerate() {
        // Longer, later pieces get higher scores so merges prefer them.
        scores.push(-1000.0 + i as f32);
        toks.push(w);
        types.push(1);
    }
    while !toks.len().is_multiple_of(32) {
        toks.push(alloc::format!("<unused{}>", toks.len()));
        types.push(5);
        scores.push(0.0);
    }
    (toks, scores, types)
}

/// Writes a tiny Gemma 3 GGUF (about 3 MB) from `seed`.
pub fn tiny_gemma3(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let (toks, scores, types) = tiny_vocab();
    let n_vocab = toks.len();
    let mut w = GgufWriter::new();
    let s = |v: &str| MetaValue::Str(v.into());
    w.meta("general.architecture", s("gemma3"));
    w.meta("general.name", s("tensorvisor tiny gemma3"));
    w.meta("general.alignment", MetaValue::U32(32));
    w.meta("gemma3.context_length", MetaValue::U32(1024));
    w.meta("gemma3.embedding_length", MetaValue::U32(TINY_EMBD as u32));
    w.meta("gemma3.block_count", MetaValue::U32(TINY_LAYERS as u32));
    w.meta("gemma3.feed_forward_length", MetaValue::U32(TINY_FF as u32));
    w.meta("gemma3.attention.head_count", MetaValue::U32(TINY_HEADS as u32));
    w.meta("gemma3.attention.head_count_kv", MetaValue::U32(TINY_KV_HEADS as u32));
    w.meta("gemma3.attention.key_length", MetaValue::U32(TINY_HEAD_DIM as u32));
    w.meta("gemma3.attention.value_length", MetaValue::U32(TINY_HEAD_DIM as u32));
    w.meta("gemma3.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-6));
    w.meta("gemma3.attention.sliding_window", MetaValue::U32(16));
    w.meta("gemma3.rope.freq_base", MetaValue::F32(1_000_000.0));
    w.meta("tokenizer.ggml.model", s("llama"));
    w.meta("tokenizer.ggml.tokens", MetaValue::Array(8, toks.into_iter().map(MetaValue::Str).collect()));
    w.meta("tokenizer.ggml.scores", MetaValue::Array(6, scores.into_iter().map(MetaValue::F32).collect()));
    w.meta("tokenizer.ggml.token_type", MetaValue::Array(5, types.into_iter().map(MetaValue::I32).collect()));
    w.meta("tokenizer.ggml.bos_token_id", MetaValue::U32(2));
    w.meta("tokenizer.ggml.eos_token_id", MetaValue::U32(1));
    w.meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    w.meta("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false));

    let d = TINY_EMBD as u64;
    let (hd, nh, nkv, ff) = (TINY_HEAD_DIM as u64, TINY_HEADS as u64, TINY_KV_HEADS as u64, TINY_FF as u64);
    let mat = |w: &mut GgufWriter, rng: &mut Rng, name: &str, ty: GgmlType, cols: u64, rows: u64, mag: f32| {
        let data = random_tensor(rng, ty, (cols * rows) as usize, mag);
        w.tensor(name, &[cols, rows], ty, data);
    };
    mat(&mut w, &mut rng, "token_embd.weight", GgmlType::Q8_0, d, n_vocab as u64, 0.05);
    let norm = |rng: &mut Rng, n: u64| -> Vec<u8> {
        (0..n).flat_map(|_| (0.8 + 0.4 * rng.next_f32()).to_le_bytes()).collect()
    };
    use GgmlType::*;
    // Per layer types of (q, k, v, o, gate, up, down): every supported type appears.
    let plan = [
        (Q4_K, Q4_K, Q6_K, Q4_K, Q4_K, Q4_K, Q6_K),
        (Q5_0, Q5_0, Q8_0, F16, Q5_K, Q5_K, Q6_K),
        (Q4_0, BF16, Q6_K, Q4_K, Q4_K, Q4_0, Q8_0),
        (F32, Q4_K, Q5_0, Q5_K, Q6_K, Q4_K, Q5_0),
        (Q8_0, Q6_K, Q4_K, Q4_0, BF16, F16, Q4_K),
        (Q4_K, Q4_K, Q6_K, Q4_K, Q4_K, Q4_K, Q6_K),
    ];
    for (il, p) in plan.iter().enumerate() {
        let n = |s: &str| alloc::format!("blk.{il}.{s}.weight");
        w.tensor(&n("attn_norm"), &[d], F32, norm(&mut rng, d));
        mat(&mut w, &mut rng, &n("attn_q"), p.0, d, nh * hd, 0.1);
        mat(&mut w, &mut rng, &n("attn_k"), p.1, d, nkv * hd, 0.1);
        mat(&mut w, &mut rng, &n("attn_v"), p.2, d, nkv * hd, 0.1);
        mat(&mut w, &mut rng, &n("attn_output"), p.3, nh * hd, d, 0.1);
        w.tensor(&n("attn_q_norm"), &[hd], F32, norm(&mut rng, hd));
        w.tensor(&n("attn_k_norm"), &[hd], F32, norm(&mut rng, hd));
        w.tensor(&n("post_attention_norm"), &[d], F32, norm(&mut rng, d));
        w.tensor(&n("ffn_norm"), &[d], F32, norm(&mut rng, d));
        mat(&mut w, &mut rng, &n("ffn_gate"), p.4, d, ff, 0.1);
        mat(&mut w, &mut rng, &n("ffn_up"), p.5, d, ff, 0.1);
        mat(&mut w, &mut rng, &n("ffn_down"), p.6, ff, d, 0.1);
        w.tensor(&n("post_ffw_norm"), &[d], F32, norm(&mut rng, d));
    }
    w.tensor("output_norm.weight", &[d], F32, norm(&mut rng, d));
    w.finish()
}
