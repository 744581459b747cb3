//! Gemma 3 from GGUF metadata: configuration, weights (zero-copy), the forward pass, and a
//! session that owns the KV cache.
//!
//! The forward pass follows llama.cpp's graph for `gemma3` so that greedy outputs agree token for
//! token: activations are quantized to Q8_0/Q8_K for quantized weights, the KV cache holds f16,
//! queries and attention probabilities are rounded to f16 before their products (as GGML's f16
//! matrix multiplication does), GeGLU uses GELU(tanh) evaluated on f16-rounded inputs (GGML's
//! table), and RMSNorm sums squares in f64.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::half::{f16_to_f32, f32_to_f16, round_f16};
use crate::kernels;
use crate::quant::dequantize_row;
use crate::parallel::for_each_item;
use crate::tensor::{matmul_many, Compute, Matrix};

/// Errors loading a model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    Gguf(GgufError),
    /// `general.architecture` is not one this engine implements.
    UnsupportedArchitecture(String),
    /// A required metadata key is missing or has the wrong type.
    MissingMetadata(String),
    /// A required tensor is missing.
    MissingTensor(String),
    /// A tensor's shape or type does not fit the configuration.
    BadTensor(String),
    /// Inconsistent hyper-parameters.
    BadConfig(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gguf(e) => write!(f, "{e}"),
            Self::UnsupportedArchitecture(a) => write!(f, "unsupported architecture '{a}'"),
            Self::MissingMetadata(k) => write!(f, "missing or invalid metadata '{k}'"),
            Self::MissingTensor(t) => write!(f, "missing tensor '{t}'"),
            Self::BadTensor(t) => write!(f, "tensor has an unexpected shape or type: {t}"),
            Self::BadConfig(m) => write!(f, "bad model configuration: {m}"),
        }
    }
}

impl From<GgufError> for ModelError {
    fn from(e: GgufError) -> Self {
        Self::Gguf(e)
    }
}

/// Hyper-parameters of a Gemma 3 model.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    /// RoPE base of the global (full-attention) layers.
    pub rope_base_global: f32,
    /// RoPE base of the sliding-window layers.
    pub rope_base_local: f32,
    /// RoPE frequency scale of the global layers (1 / linear scaling factor).
    pub rope_scale_global: f32,
    pub sliding_window: usize,
    /// Every `swa_pattern`-th layer (the last of each group) is global.
    pub swa_pattern: usize,
    /// Multiplier applied to queries (Gemma's `query_pre_attn_scalar`^-1/2).
    pub attn_scale: f32,
}

impl Config {
    /// True if layer `il` uses sliding-window attention.
    pub fn is_local(&self, il: usize) -> bool {
        self.swa_pattern != 0 && il % self.swa_pattern < self.swa_pattern - 1
    }

    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, ModelError> {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::MissingMetadata("general.architecture".into()))?;
        if arch != "gemma3" {
            return Err(ModelError::UnsupportedArchitecture(arch.into()));
        }
        let u = |k: &str| -> Result<usize, ModelError> {
            let key = format!("{arch}.{k}");
            g.get(&key)
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .ok_or(ModelError::MissingMetadata(key))
        };
        let f = |k: &str, default: f32| -> f32 {
            g.get(&format!("{arch}.{k}")).and_then(|v| v.as_f32()).unwrap_or(default)
        };
        let n_embd = u("embedding_length")?;
        let n_layer = u("block_count")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = u("attention.head_count_kv").unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(ModelError::BadConfig(format!("heads {n_head} / kv heads {n_head_kv}")));
        }
        let head_dim = u("attention.key_length").unwrap_or(n_embd / n_head);
        if head_dim == 0 || head_dim % 2 != 0 || u("attention.value_length").unwrap_or(head_dim) != head_dim {
            return Err(ModelError::BadConfig(format!("head dim {head_dim}")));
        }
        let emb = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let n_vocab = emb.dims.get(1).copied().unwrap_or(0) as usize;
        let scaling = f("rope.scaling.factor", 1.0);
        // llama.cpp: Gemma 3 27B scales queries by (n_embd / n_head)^-1/2, the others by
        // head_dim^-1/2 (query_pre_attn_scalar).
        let attn_scale = if n_layer == 62 {
            1.0 / libm::sqrtf((n_embd / n_head) as f32)
        } else {
            1.0 / libm::sqrtf(head_dim as f32)
        };
        Ok(Config {
            n_embd,
            n_layer,
            n_ff: u("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            context_length: u("context_length").unwrap_or(32768),
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-6),
            rope_base_global: f("rope.freq_base", 1_000_000.0),
            rope_base_local: f("rope.freq_base_swa", 10_000.0),
            rope_scale_global: if scaling > 0.0 { 1.0 / scaling } else { 1.0 },
            sliding_window: u("attention.sliding_window").unwrap_or(512),
            swa_pattern: 6,
            attn_scale,
        })
    }
}

/// One transformer block's weights.
pub struct Layer<'a> {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix<'a>,
    pub wk: Matrix<'a>,
    pub wv: Matrix<'a>,
    pub wo: Matrix<'a>,
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
    pub post_attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub gate: Matrix<'a>,
    pub up: Matrix<'a>,
    pub down: Matrix<'a>,
    pub post_ffn_norm: Vec<f32>,
}

/// A loaded Gemma 3 model borrowing its weights from the GGUF bytes.
pub struct Model<'a> {
    pub config: Config,
    pub tok_embd: Matrix<'a>,
    /// The output projection (tied to the embedding unless `output.weight` exists).
    pub output: Matrix<'a>,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer<'a>>,
    /// `round_f16(gelu(x))` for every f16 bit pattern `x` (GGML's GELU table), see [`geglu`].
    gelu_f16: Vec<f32>,
}

fn tensor<'a, 'g>(g: &'g Gguf<'a>, name: &str) -> Result<&'g TensorInfo<'a>, ModelError> {
    g.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.into()))
}

fn matrix<'a>(g: &Gguf<'a>, name: &str, cols: usize, rows: usize) -> Result<Matrix<'a>, ModelError> {
    let t = tensor(g, name)?;
    if t.dims.len() != 2 || t.dims[0] != cols as u64 || t.dims[1] != rows as u64 {
        return Err(ModelError::BadTensor(format!(
            "{name}: dims {:?}, expected [{cols}, {rows}]",
            t.dims
        )));
    }
    Ok(Matrix { ty: t.ty, rows, cols, data: t.data })
}

fn vector(g: &Gguf<'_>, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let t = tensor(g, name)?;
    if t.n_elements() != n as u64 || t.ty.block_size() != 1 {
        return Err(ModelError::BadTensor(format!("{name}: dims {:?}, expected [{n}]", t.dims)));
    }
    let mut v = vec![0.0; n];
    dequantize_row(t.ty, t.data, &mut v);
    Ok(v)
}

impl<'a> Model<'a> {
    pub fn from_gguf(g: &Gguf<'a>) -> Result<Self, ModelError> {
        let c = Config::from_gguf(g)?;
        let (d, hd) = (c.n_embd, c.head_dim);
        let tok_embd = matrix(g, "token_embd.weight", d, c.n_vocab)?;
        let output = match g.tensor("output.weight") {
            Some(_) => matrix(g, "output.weight", d, c.n_vocab)?,
            None => tok_embd,
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(g, &n("attn_norm"), d)?,
                wq: matrix(g, &n("attn_q"), d, c.n_head * hd)?,
                wk: matrix(g, &n("attn_k"), d, c.n_head_kv * hd)?,
                wv: matrix(g, &n("attn_v"), d, c.n_head_kv * hd)?,
                wo: matrix(g, &n("attn_output"), c.n_head * hd, d)?,
                q_norm: vector(g, &n("attn_q_norm"), hd)?,
                k_norm: vector(g, &n("attn_k_norm"), hd)?,
                post_attn_norm: vector(g, &n("post_attention_norm"), d)?,
                ffn_norm: vector(g, &n("ffn_norm"), d)?,
                gate: matrix(g, &n("ffn_gate"), d, c.n_ff)?,
                up: matrix(g, &n("ffn_up"), d, c.n_ff)?,
                down: matrix(g, &n("ffn_down"), c.n_ff, d)?,
                post_ffn_norm: vector(g, &n("post_ffw_norm"), d)?,
            });
        }
        let output_norm = vector(g, "output_norm.weight", d)?;
        let gelu_f16 = (0..=u16::MAX).map(|h| round_f16(gelu(f16_to_f32(h)))).collect();
        Ok(Model { config: c, tok_embd, output, output_norm, layers, gelu_f16 })
    }

    /// Bytes of weights read to decode one token (all layer matrices plus the output matrix).
    pub fn weight_bytes_per_token(&self) -> usize {
        let m = |m: &Matrix<'_>| m.data.len();
        self.layers
            .iter()
            .map(|l| m(&l.wq) + m(&l.wk) + m(&l.wv) + m(&l.wo) + m(&l.gate) + m(&l.up) + m(&l.down))
            .sum::<usize>()
            + m(&self.output)
    }
}

/// RMSNorm in place: `x * (mean(x²) + eps)^-1/2 * w` (the GGUF stores Gemma's `1 + w`).
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / libm::sqrtf(mean + eps);
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * scale) * g;
    }
}

/// GELU (tanh approximation) as GGML computes it in f32.
fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    // GGML's C is compiled with FMA contraction: `1 + a·x·x` becomes `fma(a·x, x, 1)`.
    0.5 * x * (1.0 + libm::tanhf(SQRT_2_OVER_PI * x * libm::fmaf(COEF_A * x, x, 1.0)))
}

/// GeGLU: `gelu(g) * u`, with GGML's f16 GELU table (input and output rounded to f16).
pub fn geglu(g: f32, u: f32) -> f32 {
    if g <= -10.0 {
        0.0
    } else if g >= 10.0 {
        g * u
    } else {
        round_f16(gelu(round_f16(g))) * u
    }
}

/// [`geglu`] with the precomputed table (`table[h] = round_f16(gelu(h as f16))`): the same bits.
#[inline]
fn geglu_table(table: &[f32], g: f32, u: f32) -> f32 {
    if g <= -10.0 {
        0.0
    } else if g >= 10.0 {
        g * u
    } else {
        table[f32_to_f16(g) as usize] * u
    }
}

/// NeoX-style RoPE on one head vector.
/// `(sin, cos)` of every rotation angle of a `dim`-wide head at `pos`, with GGML's angle
/// recurrence (`theta *= base^(-2/dim)`). The same for every head of a token, so computed once.
fn rope_table(tab: &mut [[f32; 2]], dim: usize, pos: usize, base: f32, freq_scale: f32) {
    let theta_scale = libm::powf(base, -2.0 / dim as f32);
    let mut theta = pos as f32;
    for sc in tab.iter_mut() {
        let t = freq_scale * theta;
        *sc = [libm::sinf(t), libm::cosf(t)];
        theta *= theta_scale;
    }
}

/// Rotates the two halves of one head by the angles of [`rope_table`] (NeoX order).
fn rope_apply(x: &mut [f32], tab: &[[f32; 2]]) {
    let half = x.len() / 2;
    for (i, &[s, c]) in tab.iter().enumerate().take(half) {
        let (x0, x1) = (x[i], x[i + half]);
        // GCC contracts GGML's `x0*cos - x1*sin` / `x0*sin + x1*cos` (rope_yarn, -ffp-contract=fast).
        x[i] = libm::fmaf(x0, c, -(x1 * s));
        x[i + half] = libm::fmaf(x0, s, x1 * c);
    }
}

/// One query or key head after its projection: QK-norm (RMSNorm with `w`), RoPE by the
/// `(sin, cos)` pairs of [`rope_table`] (at least `x.len() / 2` of them), then, for a query,
/// the attention scale.
pub fn qk_head(x: &mut [f32], w: &[f32], eps: f32, tab: &[[f32; 2]], scale: Option<f32>) {
    rms_norm(x, w, eps);
    rope_apply(x, tab);
    if let Some(s) = scale {
        for e in x.iter_mut() {
            *e *= s;
        }
    }
}

/// GeGLU over a row: `g[i] = gelu(g[i]) · u[i]` with GGML's f16 GELU table (`table`, one
/// entry per f16 bit pattern: see [`geglu`]).
pub fn geglu_rows(table: &[f32], g: &mut [f32], u: &[f32]) {
    for (gv, &uv) in g.iter_mut().zip(u) {
        *gv = geglu_table(table, *gv, uv);
    }
}

/// Per-token work (norms, RoPE, GELU) goes to the workers from this many tokens on (a
/// prefill); a decode step's single token stays on the calling worker.
const PAR_MIN_TOKENS: usize = 8;

/// `xn[t] = rms_norm(x[t]) · w` for every row of width `d`.
fn norm_rows(comp: Compute<'_>, x: &[f32], xn: &mut [f32], d: usize, w: &[f32], eps: f32) {
    let mut rows: Vec<&mut [f32]> = xn.chunks_exact_mut(d).collect();
    for_each_item(comp.par, &mut rows, PAR_MIN_TOKENS, &|t, row| {
        row.copy_from_slice(&x[t * d..(t + 1) * d]);
        kernels::rms_norm(comp.cpu, row, w, eps);
    });
}

/// The residual step: `o[t] = rms_norm(o[t]) · w`, then `x[t] += o[t]`, for every row.
fn add_normed(comp: Compute<'_>, x: &mut [f32], o: &mut [f32], d: usize, w: &[f32], eps: f32) {
    let mut rows: Vec<(&mut [f32], &mut [f32])> = x.chunks_exact_mut(d).zip(o.chunks_exact_mut(d)).collect();
    for_each_item(comp.par, &mut rows, PAR_MIN_TOKENS, &|_, (xr, or)| {
        kernels::rms_norm(comp.cpu, or, w, eps);
        for (a, b) in xr.iter_mut().zip(or.iter()) {
            *a += b;
        }
    });
}

/// The shape of one layer's attention over the cache (see [`attention`]).
struct AttnShape {
    n_head: usize,
    /// Query heads per KV head.
    group: usize,
    hd: usize,
    nq: usize,
    nkv: usize,
    cap: usize,
    /// Position of the first query token.
    start: usize,
    /// Sliding window (local layers).
    window: Option<usize>,
    /// One query token (decode): llama.cpp's `vec_dot` forms instead of tinyBLAS.
    single: bool,
}

/// Causal attention of the query rows `q` (`[token][head][hd]`, normed, rotated and scaled)
/// over the caches into `attn` (same layout), as llama.cpp's CPU path without flash
/// attention: scores are f16·f16 dots (one 8-lane FMA accumulator, GGML's tinyBLAS kernel),
/// the softmax uses GGML's vectorised expf over 8-aligned groups of cache positions, the
/// probabilities are rounded to f16 and multiplied with the transposed f16 V cache by the same
/// 8-lane dot. Positions outside the window are masked (-inf, weight 0), which leaves every sum
/// as GGML's. Each (token, head) is independent: they are spread over the workers
/// (round-robin, since later tokens cost more), each writing only its own rows of `attn`.
fn attention(comp: Compute<'_>, s: &AttnShape, q: &[f32], kcache: &[f32], vcache: &[f32], attn: &mut [f32]) {
    let hd = s.hd;
    let units = attn.len() / hd;
    let n = units / s.n_head;
    // Multiply-adds of the whole product; small ones (decode in the first ~64 positions) stay
    // on the calling worker, where handing out shares would cost more than it saves (measured
    // with the host pool's spinning workers: from 128 Ki multiply-adds it pays).
    let span = |t: usize| {
        let p = s.start + t;
        let first = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
        p + 1 - first
    };
    let work: usize = (0..n).map(|t| span(t) * s.n_head * 2 * hd).sum();
    let threads = if work < (1 << 17) { 1 } else { comp.par.threads().clamp(1, units.max(1)) };
    let mut shares: Vec<Share<'_>> = (0..threads).map(|_| Vec::new()).collect();
    for (u, out) in attn.chunks_exact_mut(hd).enumerate() {
        shares[u % threads].push((u, out));
    }
    let shares: Vec<spin::Mutex<Share<'_>>> = shares.into_iter().map(spin::Mutex::new).collect();
    let job = |i: usize| {
        let Some(share) = shares.get(i) else { return };
        let mut share = share.lock();
        let mut scores = vec![0.0f32; s.cap];
        let mut qh = vec![0.0f32; hd];
        for (u, out) in share.iter_mut() {
            let (t, h) = (*u / s.n_head, *u % s.n_head);
            attend(comp, s, t, h, q, kcache, vcache, &mut scores, &mut qh, out);
        }
    };
    if threads == 1 {
        job(0);
    } else {
        comp.par.run(&job);
    }
}

/// A worker's (token·heads + head, output row) pairs.
type Share<'a> = Vec<(usize, &'a mut [f32])>;

/// One query token `t`, head `h` of [`attention`].
#[allow(clippy::too_many_arguments)]
fn attend(
    comp: Compute<'_>,
    s: &AttnShape,
    t: usize,
    h: usize,
    q: &[f32],
    kcache: &[f32],
    vcache: &[f32],
    scores: &mut [f32],
    qh: &mut [f32],
    out: &mut [f32],
) {
    let (hd, nkv, cap) = (s.hd, s.nkv, s.cap);
    let p = s.start + t;
    let first = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
    // One query token: llama.cpp skips tinyBLAS (`n < 2`) and runs `ggml_vec_dot_f16` (four
    // accumulators over 32-groups) for both products.
    let (lo, hi) = if s.single { (first / 32 * 32, (p + 1).div_ceil(32) * 32) } else { (first / 8 * 8, (p + 1).div_ceil(8) * 8) };
    let fdot = |a: &[f32], b: &[f32]| {
        if s.single {
            kernels::dot_f32_vecdot(comp.cpu, a, b)
        } else {
            kernels::dot_f32(comp.cpu, a, b)
        }
    };
    let kvh = h / s.group;
    for (dst, &v) in qh.iter_mut().zip(&q[t * s.nq + h * hd..t * s.nq + (h + 1) * hd]) {
        *dst = round_f16(v);
    }
    let krow = |kp: usize| &kcache[kp * nkv + kvh * hd..kp * nkv + (kvh + 1) * hd];
    let sc = &mut scores[lo..hi];
    sc.fill(f32::NEG_INFINITY);
    let mut kp = first;
    if !s.single {
        // Four positions at a time (independent FMA chains, the same bits as one by one).
        while kp + 4 <= p + 1 {
            let v = kernels::dot_f32_x4(comp.cpu, qh, [krow(kp), krow(kp + 1), krow(kp + 2), krow(kp + 3)]);
            let v = v.unwrap_or([f32::NAN; 4]);
            sc[kp - lo..kp - lo + 4].copy_from_slice(&v);
            kp += 4;
        }
    }
    for kp in kp..=p {
        sc[kp - lo] = fdot(qh, krow(kp));
    }
    let max = sc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum = kernels::softmax_exp(comp.cpu, sc, max);
    let inv = (1.0 / sum) as f32;
    for v in sc.iter_mut() {
        *v = round_f16(*v * inv);
    }
    let vrow = |dd: usize| &vcache[(kvh * hd + dd) * cap + lo..(kvh * hd + dd) * cap + hi];
    let mut dd = 0;
    if !s.single {
        while dd + 4 <= hd {
            let v = kernels::dot_f32_x4(comp.cpu, sc, [vrow(dd), vrow(dd + 1), vrow(dd + 2), vrow(dd + 3)]);
            out[dd..dd + 4].copy_from_slice(&v.unwrap_or([f32::NAN; 4]));
            dd += 4;
        }
    }
    for (k, o) in out.iter_mut().enumerate().skip(dd) {
        *o = fdot(vrow(k), sc);
    }
}

/// A generation session: the KV cache (f16) and the position reached.
pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
    /// Per layer: `[pos][kv_head * head_dim]` keys, rounded to f16 precision (as llama.cpp's
    /// f16 cache) but kept as f32 so attention needs no conversion.
    k_cache: Vec<Vec<f32>>,
    /// Per layer: values transposed, `[kv_head * head_dim][cap]` (llama.cpp's non-flash V
    /// cache layout), rounded to f16 precision.
    v_cache: Vec<Vec<f32>>,
    /// `max_len` rounded up to a multiple of 32 (attention works on 8- or 32-aligned position groups).
    cap: usize,
    max_len: usize,
    /// Tokens processed so far (the next position).
    pub pos: usize,
}

/// Errors while running a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The context (KV cache) is full.
    ContextFull { max: usize },
    /// A token id outside the vocabulary.
    BadToken(u32),
    /// An empty batch.
    Empty,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ContextFull { max } => write!(f, "context full ({max} tokens)"),
            Self::BadToken(t) => write!(f, "token id {t} is outside the vocabulary"),
            Self::Empty => write!(f, "no tokens to evaluate"),
        }
    }
}

impl<'m, 'a> Session<'m, 'a> {
    /// A session with room for `max_len` tokens.
    pub fn new(model: &'m Model<'a>, max_len: usize) -> Self {
        let c = &model.config;
        let max_len = max_len.min(c.context_length).max(1);
        let kv = c.n_head_kv * c.head_dim;
        let cap = max_len.div_ceil(32) * 32;
        Session {
            model,
            k_cache: (0..c.n_layer).map(|_| vec![0.0f32; max_len * kv]).collect(),
            v_cache: (0..c.n_layer).map(|_| vec![0.0f32; cap * kv]).collect(),
            cap,
            max_len,
            pos: 0,
        }
    }

    pub fn model(&self) -> &'m Model<'a> {
        self.model
    }

    /// Forgets all tokens.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Evaluates `tokens` at the next positions and returns the logits after the last one.
    pub fn eval(&mut self, comp: Compute<'_>, tokens: &[u32]) -> Result<Vec<f32>, SessionError> {
        self.eval_traced(comp, tokens, &mut |_, _, _| {})
    }

    /// [`Session::eval`], handing intermediate activations to `trace(name, layer, values)`
    /// (names as in llama.cpp's graph: `attn_norm`, `Qcur`, `kqv_out`, `l_out`, ...; values are
    /// `[token][features]`), for comparing against llama.cpp's tensors.
    pub fn eval_traced(
        &mut self,
        comp: Compute<'_>,
        tokens: &[u32],
        trace: &mut dyn FnMut(&str, usize, &[f32]),
    ) -> Result<Vec<f32>, SessionError> {
        let m = self.model;
        let c = &m.config;
        let n = tokens.len();
        if n == 0 {
            return Err(SessionError::Empty);
        }
        if self.pos + n > self.max_len {
            return Err(SessionError::ContextFull { max: self.max_len });
        }
        let (d, hd) = (c.n_embd, c.head_dim);
        let (nq, nkv) = (c.n_head * hd, c.n_head_kv * hd);
        let start = self.pos;

        // Embedding lookup, scaled by sqrt(n_embd).
        let mut x = vec![0.0f32; n * d];
        let emb_scale = libm::sqrtf(d as f32);
        for (t, &tok) in tokens.iter().enumerate() {
            if tok as usize >= c.n_vocab {
                return Err(SessionError::BadToken(tok));
            }
            let row = &mut x[t * d..(t + 1) * d];
            dequantize_row(m.tok_embd.ty, m.tok_embd.row(tok as usize), row);
            for v in row.iter_mut() {
                *v *= emb_scale;
            }
        }

        let mut xn = vec![0.0f32; n * d];
        let mut q = vec![0.0f32; n * nq];
        let mut k = vec![0.0f32; n * nkv];
        let mut v = vec![0.0f32; n * nkv];
        let mut attn = vec![0.0f32; n * nq];
        let mut o = vec![0.0f32; n * d];
        let mut g = vec![0.0f32; n * c.n_ff];
        let mut u = vec![0.0f32; n * c.n_ff];
        // RoPE angles per token, for the local and the global layers.
        let mut rope_local = vec![[0.0f32; 2]; n * (hd / 2)];
        let mut rope_global = vec![[0.0f32; 2]; n * (hd / 2)];
        for t in 0..n {
            let span = t * (hd / 2)..(t + 1) * (hd / 2);
            rope_table(&mut rope_local[span.clone()], hd, start + t, c.rope_base_local, 1.0);
            rope_table(&mut rope_global[span], hd, start + t, c.rope_base_global, c.rope_scale_global);
        }

        for (il, l) in m.layers.iter().enumerate() {
            let local = c.is_local(il);
            norm_rows(comp, &x, &mut xn, d, &l.attn_norm, c.rms_eps);
            trace("attn_norm", il, &xn);
            matmul_many(comp, &[l.wq, l.wk, l.wv], &xn, n, &mut [&mut q, &mut k, &mut v]);
            trace("Qcur_mm", il, &q);
            trace("Kcur_mm", il, &k);
            trace("Vcur", il, &v);
            let tabs = if local { &rope_local } else { &rope_global };
            let mut qk: Vec<(&mut [f32], &mut [f32])> = q.chunks_exact_mut(nq).zip(k.chunks_exact_mut(nkv)).collect();
            for_each_item(comp.par, &mut qk, PAR_MIN_TOKENS, &|t, (qr, kr)| {
                let tab = &tabs[t * (hd / 2)..(t + 1) * (hd / 2)];
                for h in qr.chunks_exact_mut(hd) {
                    kernels::qk_head(comp.cpu, h, &l.q_norm, c.rms_eps, tab, Some(c.attn_scale));
                }
                for h in kr.chunks_exact_mut(hd) {
                    kernels::qk_head(comp.cpu, h, &l.k_norm, c.rms_eps, tab, None);
                }
            });
            drop(qk);
            for t in 0..n {
                let p = start + t;
                let kc = &mut self.k_cache[il][p * nkv..(p + 1) * nkv];
                for (dst, &s) in kc.iter_mut().zip(&k[t * nkv..(t + 1) * nkv]) {
                    *dst = round_f16(s);
                }
                let vc = &mut self.v_cache[il];
                for (e, &s) in v[t * nkv..(t + 1) * nkv].iter().enumerate() {
                    vc[e * self.cap + p] = round_f16(s);
                }
            }
            // Attention (causal; sliding window on local layers), as llama.cpp's CPU path
            // without flash attention: scores are f16·f16 dots (one 8-lane FMA accumulator,
            // GGML's llamafile/tinyBLAS kernel), the softmax uses GGML's vectorised expf over
            // 8-aligned groups of cache positions, the probabilities are rounded to f16 and
            // multiplied with the transposed f16 V cache by the same 8-lane dot. Positions
            // outside the window are masked (-inf, weight 0), which leaves every sum as GGML's.
            let shape = AttnShape {
                n_head: c.n_head,
                group: c.n_head / c.n_head_kv,
                hd,
                nq,
                nkv,
                cap: self.cap,
                start,
                window: if local { Some(c.sliding_window) } else { None },
                single: n == 1,
            };
            attention(comp, &shape, &q, &self.k_cache[il], &self.v_cache[il], &mut attn);
            trace("Qcur", il, &q);
            trace("Kcur", il, &k);
            trace("kqv_out", il, &attn);
            l.wo.matmul(comp, &attn, n, &mut o);
            trace("attn_out", il, &o);
            add_normed(comp, &mut x, &mut o, d, &l.post_attn_norm, c.rms_eps);
            // Feed-forward (GeGLU).
            norm_rows(comp, &x, &mut xn, d, &l.ffn_norm, c.rms_eps);
            trace("sa_out", il, &x);
            trace("ffn_norm", il, &xn);
            matmul_many(comp, &[l.gate, l.up], &xn, n, &mut [&mut g, &mut u]);
            trace("ffn_gate", il, &g);
            trace("ffn_up", il, &u);
            let mut gu: Vec<(&mut [f32], &[f32])> = g.chunks_exact_mut(c.n_ff).zip(u.chunks_exact(c.n_ff)).collect();
            for_each_item(comp.par, &mut gu, PAR_MIN_TOKENS, &|_, (gr, ur)| kernels::geglu_rows(comp.cpu, &m.gelu_f16, gr, ur));
            drop(gu);
            trace("ffn_geglu", il, &g);
            l.down.matmul(comp, &g, n, &mut o);
            trace("ffn_out", il, &o);
            add_normed(comp, &mut x, &mut o, d, &l.post_ffn_norm, c.rms_eps);
            trace("l_out", il, &x);
        }
        self.pos += n;

        let mut last = x[(n - 1) * d..].to_vec();
        kernels::rms_norm(comp.cpu, &mut last, &m.output_norm, c.rms_eps);
        trace("result_norm", c.n_layer, &last);
        let mut logits = vec![0.0f32; c.n_vocab];
        m.output.matvec(comp, &last, &mut logits);
        Ok(logits)
    }
}

#[cfg(test)]
mod gelu_tests {
    use super::*;

    #[test]
    fn gelu_table_gives_the_bits_of_geglu() {
        let table: Vec<f32> = (0..=u16::MAX).map(|h| round_f16(gelu(f16_to_f32(h)))).collect();
        let mut x = 0x1234_5678u32;
        for i in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let g = (x as f32 / u32::MAX as f32 - 0.5) * 24.0 * if i % 3 == 0 { 1e-3 } else { 1.0 };
            let u = 0.75 + (i % 7) as f32;
            assert_eq!(geglu(g, u).to_bits(), geglu_table(&table, g, u).to_bits(), "g = {g}");
        }
    }
}
