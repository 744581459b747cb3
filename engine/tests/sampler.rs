//! `Sampler::sample` sorts only the best candidates it needs; it must draw exactly the tokens of
//! the rule on the fully sorted vocabulary (kept here as the reference), whatever the shape of
//! the logits: realistic, flat (the left-out tail matters and the prefix must widen), peaked,
//! with top-k, top-p and a repetition penalty.

use engine::sampler::{Rng, Sampler, SamplerConfig};

/// The rule as the sampler defined it before it learned to sort partially: every candidate
/// sorted, softmax, top-k, top-p, a draw.
fn reference(c: &SamplerConfig, rng: &mut Rng, logits: &mut [f32], history: &[u32]) -> u32 {
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
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / c.temperature)).collect();
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if c.top_k > 0 && c.top_k < cand.len() {
        cand.truncate(c.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| libm::expf(l - max)).collect();
    let sum: f32 = probs.iter().sum();
    for p in probs.iter_mut() {
        *p /= sum;
    }
    if c.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, &p) in probs.iter().enumerate() {
            cum += p;
            if cum >= c.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        cand.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut r = rng.next_f32() * total;
    for (i, &p) in probs.iter().enumerate() {
        if r < p {
            return cand[i].0;
        }
        r -= p;
    }
    cand[cand.len() - 1].0
}

/// Logits of `n` tokens: `spread` times a roughly normal value, plus `peaks` tokens far above.
fn logits(rng: &mut Rng, n: usize, spread: f32, peaks: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|_| spread * ((0..4).map(|_| rng.next_f32()).sum::<f32>() - 2.0)).collect();
    for k in 0..peaks {
        let at = (rng.next_u64() % n as u64) as usize;
        v[at] = 12.0 + k as f32;
    }
    v
}

#[test]
fn partial_sorting_draws_the_tokens_of_the_full_sort() {
    let mut gen = Rng::new(2026);
    let mut checked = 0;
    // (vocabulary, spread, peaks): Gemma-sized and realistic, flat (every token matters), peaked.
    for (n, spread, peaks) in [(262_144, 3.0, 0), (20_000, 0.01, 0), (20_000, 6.0, 3), (3_000, 1.0, 0)] {
        for temperature in [0.3f32, 0.8, 1.5] {
            for (top_k, top_p) in [(0, 1.0f32), (40, 1.0), (5_000, 0.95), (0, 0.9), (0, 0.999_999)] {
                let config = SamplerConfig { temperature, top_k, top_p, repeat_penalty: 1.1, repeat_last_n: 16, seed: gen.next_u64() };
                let mut sampler = Sampler::new(config.clone());
                let mut rng = Rng::new(config.seed);
                let base = logits(&mut gen, n, spread, peaks);
                let mut history: Vec<u32> = vec![1, 2, 3];
                let draws = if n > 100_000 { 3 } else { 12 };
                for d in 0..draws {
                    let (mut a, mut b) = (base.clone(), base.clone());
                    let got = sampler.sample(&mut a, &history);
                    let want = reference(&config, &mut rng, &mut b, &history);
                    assert_eq!(got, want, "n {n}, spread {spread}, T {temperature}, top-k {top_k}, top-p {top_p}, draw {d}");
                    history.push(got);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300);
}

/// The float scan `argmax` must equal, bit for bit.
fn argmax_by_floats(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn argmax_by_integer_keys_picks_what_the_float_scan_picks() {
    let mut gen = Rng::new(7);
    let specials = [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 1e-45, -1e-45, f32::MAX, f32::MIN];
    for case in 0..3000 {
        let n = 1 + (gen.next_u64() % 40) as usize;
        let v: Vec<f32> = (0..n)
            .map(|_| match gen.next_u64() % 4 {
                0 => specials[(gen.next_u64() % specials.len() as u64) as usize],
                1 => (gen.next_u64() % 5) as f32 - 2.0,
                _ => (gen.next_f32() - 0.5) * 100.0,
            })
            .collect();
        assert_eq!(engine::sampler::argmax(&v), argmax_by_floats(&v), "case {case}: {v:?}");
    }
    assert_eq!(engine::sampler::argmax(&[]), 0);
    assert_eq!(engine::sampler::argmax(&[-0.0, 0.0]), 0, "equal zeros: the first");
    assert_eq!(engine::sampler::argmax(&[f32::NAN, 5.0]), 0, "a NaN first is never beaten");
    assert_eq!(engine::sampler::argmax(&[1.0, f32::NAN, 2.0]), 2);
}
