//! SentencePiece-style tokenizer from GGUF metadata (`tokenizer.ggml.*`), with byte fallback,
//! plus Gemma's chat template.
//!
//! Encoding matches llama.cpp's SPM tokenizer: user-defined (and, when asked, control) tokens
//! are split out of the text first; each remaining fragment has spaces replaced by `▁` and is
//! split into UTF-8 characters, then the adjacent pair whose concatenation is the vocabulary
//! entry with the highest score is merged repeatedly (leftmost first on ties); characters that
//! are not in the vocabulary become `<0xXX>` byte tokens.

use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Ordering;

use crate::gguf::Gguf;
use crate::model::ModelError;

/// Token attributes from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_i64(v: i64) -> Self {
        match v {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

pub struct Tokenizer {
    pieces: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<TokenKind>,
    lookup: BTreeMap<String, u32>,
    byte_tokens: [Option<u32>; 256],
    /// Tokens split out of raw text before SPM (user-defined; control ones when parsing
    /// specials), longest first.
    specials: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        // Max-heap: higher score first, then the leftmost pair.
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, ModelError> {
        let model = g.get("tokenizer.ggml.model").and_then(|v| v.as_str()).unwrap_or("");
        if model != "llama" {
            return Err(ModelError::MissingMetadata(alloc::format!(
                "tokenizer.ggml.model = '{model}' (only SentencePiece 'llama' is supported)"
            )));
        }
        let tokens = g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .ok_or_else(|| ModelError::MissingMetadata("tokenizer.ggml.tokens".into()))?
            .strings()?;
        let n = tokens.len();
        let mut scores = g
            .get("tokenizer.ggml.scores")
            .and_then(|v| v.as_array())
            .map(|a| a.f32s())
            .unwrap_or_default();
        scores.resize(n, 0.0);
        let mut kinds: Vec<TokenKind> = g
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .map(|a| a.i64s().into_iter().map(TokenKind::from_i64).collect())
            .unwrap_or_default();
        kinds.resize(n, TokenKind::Normal);
        let id = |k: &str| {
            g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32).filter(|&v| (v as usize) < n)
        };
        let flag = |k: &str, d: bool| g.get(k).and_then(|v| v.as_bool()).unwrap_or(d);

        let mut lookup = BTreeMap::new();
        let mut byte_tokens = [None; 256];
        let mut pieces = Vec::with_capacity(n);
        for (i, &t) in tokens.iter().enumerate() {
            // First occurrence wins, as in llama.cpp's token_to_id map.
            lookup.entry(String::from(t)).or_insert(i as u32);
            if kinds[i] == TokenKind::Byte {
                if let Some(b) = parse_byte_token(t) {
                    byte_tokens[b as usize] = Some(i as u32);
                }
            }
            pieces.push(String::from(t));
        }
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(kinds[i as usize], TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown)
                    && !pieces[i as usize].is_empty()
            })
            .collect();
        specials.sort_by(|&a, &b| pieces[b as usize].len().cmp(&pieces[a as usize].len()));
        let eot = lookup.get("<end_of_turn>").copied();
        Ok(Tokenizer {
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            eot: id("tokenizer.ggml.eot_token_id").or(eot),
            add_bos: flag("tokenizer.ggml.add_bos_token", true),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", false),
            pieces,
            scores,
            kinds,
            lookup,
            byte_tokens,
            specials,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|s| s.as_str())
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.lookup.get(piece).copied()
    }

    /// True for tokens that end generation (EOS, end-of-turn).
    pub fn is_end(&self, id: u32) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }

    /// Encodes `text`; `add_special` adds BOS (if the model wants it), `parse_special` also
    /// recognises control tokens such as `<start_of_turn>` in the text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        // Fragments: Ok(text) or Err(token id).
        let mut frags: Vec<Result<&str, u32>> = alloc::vec![Ok(text)];
        for &sid in &self.specials {
            let kind = self.kinds[sid as usize];
            if !parse_special && kind != TokenKind::UserDefined {
                continue;
            }
            let sp = self.pieces[sid as usize].as_str();
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Ok(mut s) => {
                        while let Some(at) = s.find(sp) {
                            if at > 0 {
                                next.push(Ok(&s[..at]));
                            }
                            next.push(Err(sid));
                            s = &s[at + sp.len()..];
                        }
                        if !s.is_empty() {
                            next.push(Ok(s));
                        }
                    }
                    Err(t) => next.push(Err(t)),
                }
            }
            frags = next;
        }
        let mut prev_special = true;
        for f in frags {
            match f {
                Err(t) => {
                    out.push(t);
                    prev_special = true;
                }
                Ok(s) => {
                    let mut text = String::new();
                    if self.add_space_prefix && prev_special {
                        text.push('▁');
                    }
                    for ch in s.chars() {
                        text.push(if ch == ' ' { '▁' } else { ch });
                    }
                    self.spm(&text, &mut out);
                    prev_special = false;
                }
            }
        }
        out
    }

    fn spm(&self, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (start, ch)) in text.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: usize, r: usize| {
            let s = &text[syms[l].start..syms[r].start + syms[r].len];
            if let Some(&id) = self.lookup.get(s) {
                heap.push(Bigram { score: self.scores[id as usize], left: l, right: r, len: s.len() });
            }
        };
        for i in 1..syms.len() {
            try_add(&mut heap, &syms, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.len {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nx) = syms[r].next {
                syms[nx].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                try_add(&mut heap, &syms, p, l);
            }
            if let Some(nx) = syms[l].next {
                try_add(&mut heap, &syms, l, nx);
            }
        }
        let mut cur = if syms.is_empty() { None } else { Some(0) };
        while let Some(i) = cur {
            let s = &text[syms[i].start..syms[i].start + syms[i].len];
            match self.lookup.get(s) {
                Some(&id) => out.push(id),
                None => {
                    for b in s.bytes() {
                        if let Some(t) = self.byte_tokens[b as usize] {
                            out.push(t);
                        }
                    }
                }
            }
            cur = syms[i].next;
        }
    }

    /// The bytes a token stands for (control tokens render as nothing).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(p) = self.pieces.get(id as usize) else { return Vec::new() };
        match self.kinds[id as usize] {
            TokenKind::Control | TokenKind::Unused => Vec::new(),
            TokenKind::Byte => parse_byte_token(p).map(|b| alloc::vec![b]).unwrap_or_default(),
            TokenKind::UserDefined => p.as_bytes().to_vec(),
            _ => p.replace('▁', " ").into_bytes(),
        }
    }

    /// Decodes tokens to text (invalid UTF-8 from partial byte sequences is replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&t| self.token_bytes(t)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Gemma's chat template for one user turn, ready for the model's reply.
    pub fn chat_prompt(user: &str) -> String {
        alloc::format!("<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n")
    }
}

fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
