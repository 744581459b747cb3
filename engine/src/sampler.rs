//! Sampling: greedy, temperature, top-k, top-p, repetition penalty, with a seeded RNG.

use alloc::vec::Vec;

/// xorshift64* — small, fast, deterministic for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that small seeds still give well-mixed states (never 0).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Sampling parameters. `temperature <= 0` means greedy.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 1.0 disables; applied to tokens among the last `repeat_last_n`.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

pub struct Sampler {
    pub config: SamplerConfig,
    rng: Rng,
}

/// Index of the largest value (the first one on ties), as llama.cpp's greedy sampler picks:
/// exactly the scan `if v > logits[best] { best = i }` from index 0 (a NaN is never greater,
/// and a NaN first stays the answer; -0.0 and +0.0 are equal). It compares integer keys
/// instead of floats, because the hypervisor's soft-float build pays a library call per float
/// comparison, 262,144 per decoded token.
pub fn argmax(logits: &[f32]) -> u32 {
    /// An integer that orders like the float (non-NaN `v`; -0.0 as +0.0).
    fn key(bits: u32) -> i32 {
        let b = if bits == 0x8000_0000 { 0 } else { bits as i32 };
        if b < 0 {
            b ^ i32::MAX
        } else {
            b
        }
    }
    let is_nan = |bits: u32| bits & 0x7fff_ffff > 0x7f80_0000;
    let Some(first) = logits.first().map(|v| v.to_bits()) else { return 0 };
    if is_nan(first) {
        return 0;
    }
    let (mut best, mut best_key) = (0, key(first));
    for (i, v) in logits.iter().enumerate().skip(1) {
        let bits = v.to_bits();
        if !is_nan(bits) && key(bits) > best_key {
            best = i;
            best_key = key(bits);
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let rng = Rng::new(config.seed);
        Self { config, rng }
    }

    /// Picks the next token from `logits` given the tokens so far (`history`).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.config;
        if c.repeat_penalty != 1.0 {
            let from = history.len().saturating_sub(c.repeat_last_n);
            let mut seen: Vec<u32> = history[from..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / c.repeat_penalty } else { *l * c.repeat_penalty };
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l / c.temperature)).collect();
        // Candidates in order: scaled logit descending, then token id (a strict total order).
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let n = if c.top_k > 0 && c.top_k < cand.len() { c.top_k } else { cand.len() };
        // The result is defined on all `n` candidates in order, but with a large vocabulary
        // almost all of them are too improbable to change a single f32 sum: sort only the
        // best `m` (a partial selection, then a sort of those), and widen `m` only when what
        // was left out could have mattered (see `pick`). The tokens are the full sort's.
        let mut m = FIRST_PREFIX.min(n);
        loop {
            if m < cand.len() {
                cand.select_nth_unstable_by(m, order);
            }
            cand[..m].sort_unstable_by(order);
            let rng = self.rng.clone();
            let next = (m < n).then(|| cand[m].1);
            if let Some(t) = self.pick(&cand[..m], next) {
                return t;
            }
            self.rng = rng;
            m = (m * 8).min(n);
        }
    }

    /// The sampling rule on the best candidates in order (`cand`, non-empty): softmax, top-p,
    /// then a draw. `left_out`: the scaled logit of the best candidate not in `cand` (every
    /// other left-out one is at most it), `None` when none was left out. Returns `None` (the
    /// generator untouched) when the left-out candidates could change the result: a sum they
    /// could move by rounding, a top-p mass not reached without them, or a draw that falls
    /// past `cand`; with nothing left out it always picks.
    fn pick(&mut self, cand: &[(u32, f32)], left_out: Option<f32>) -> Option<u32> {
        let c = &self.config;
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| libm::expf(l - max)).collect();
        let sum: f32 = probs.iter().sum();
        // Each left-out term is at most `p_next` (expf is monotone): below half an ulp of the
        // running sum, none of them changes it, nor the sum of normalized terms below.
        let p_next = left_out.map(|v| libm::expf(v - max));
        if p_next.is_some_and(|p| !below_half_ulp(p, sum)) {
            return None;
        }
        for p in probs.iter_mut() {
            *p /= sum;
        }
        let q_next = p_next.map(|p| p / sum);
        let mut keep = probs.len();
        let mut truncated = false;
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, &p) in probs.iter().enumerate() {
                cum += p;
                if cum >= c.top_p {
                    keep = i + 1;
                    truncated = true;
                    break;
                }
            }
            if !truncated && q_next.is_some() {
                return None;
            }
        }
        let probs = &probs[..keep];
        let total: f32 = probs.iter().sum();
        if !truncated && q_next.is_some_and(|q| !below_half_ulp(q, total)) {
            return None;
        }
        let mut r = self.rng.next_f32() * total;
        for (i, &p) in probs.iter().enumerate() {
            if r < p {
                return Some(cand[i].0);
            }
            r -= p;
        }
        if !truncated && left_out.is_some() {
            return None;
        }
        Some(cand[keep - 1].0)
    }
}

/// How many candidates [`Sampler::sample`] sorts first (then 8×, 64×, ... as needed).
const FIRST_PREFIX: usize = 1024;

/// `p` (≥ 0) is below half an ulp of the positive, finite `s`, so `s + p` rounds to `s` (and so
/// does adding any smaller non-negative value, again and again). False for anything else,
/// NaN included.
fn below_half_ulp(p: f32, s: f32) -> bool {
    if !(s.is_finite() && s > 0.0 && p >= 0.0) {
        return false;
    }
    let ulp = f32::from_bits(s.to_bits() + 1) - s;
    p < ulp * 0.5
}
