//! Needs the real model (`cargo xtask model`). Checks the tokenizer, the greedy 32-token
//! continuations and the top-5 next-token logits against llama.cpp references committed in
//! `tests/data/llama_refs.json` (made by `scripts/engine/gen_llama_refs.py`).
//!
//! Logit tolerance: |ours − llama.cpp| ≤ 1.0 for each of llama.cpp's top-5 tokens (logits are
//! 10–30). Justification, measured on this model with llama.cpp's own intermediate tensors
//! (`scripts/engine/dump_llama_tensors.py` + `examples/trace.rs`): every op we reproduce
//! bit-exactly (Q8_0/Q5_0 dots, f16 attention, softmax, GELU table, RMSNorm, RoPE) leaves
//! zero difference, but a single differently rounded f32 in one quantized matmul flips an
//! int8 activation rounding in a later layer and moves final logits by 0.1–0.5. Two paths are
//! not bit-exact yet (llama.cpp's 4-token Q4_K GEMM during prefill, and its Q6_K kernel), and
//! the first-token logits after prefill still differ by up to 0.54 (was 0.88 before the
//! kernels followed GGML's accumulation order); 1.0 keeps about 2x margin over that.

mod common;

use engine::cpu::CpuFeatures;
use engine::gguf::Gguf;
use engine::host::ThreadPool;
use engine::model::{Model, Session};
use engine::sampler::argmax;
use engine::tensor::Compute;
use engine::tokenizer::Tokenizer;

/// See the module docs: measured worst case 0.54 on these prompts.
const ABS_TOL: f32 = 1.0;
const REL_TOL: f32 = 0.0;

struct Setup {
    bytes: Vec<u8>,
    refs: common::Json,
}

fn setup() -> Setup {
    let bytes = std::fs::read(common::model_path()).expect("read model");
    Setup { bytes, refs: common::parse_json(include_str!("data/llama_refs.json")) }
}

/// One reference case's result: (case, prompt tokens, our greedy tokens, our first logits).
type CaseResult = (usize, Vec<u32>, Vec<u32>, Vec<f32>);

/// Runs every reference case.
fn run_cases(s: &Setup, greedy: bool) -> Vec<CaseResult> {
    let g = Gguf::parse(&s.bytes).expect("parse gguf");
    let model = Model::from_gguf(&g).expect("load model");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let pool = ThreadPool::new(2);
    let comp = Compute { cpu: CpuFeatures::detect(), par: &pool };
    let cases = s.refs.get("cases").arr();
    assert!(cases.len() >= 10);
    let mut out = Vec::new();
    for (ci, c) in cases.iter().enumerate() {
        let ids = tok.encode(c.get("prompt").str(), true, c.get("parse_special").bool());
        let n = if greedy { c.get("tokens").arr().len() } else { 0 };
        let mut sess = Session::new(&model, ids.len() + n + 1);
        let first = sess.eval(comp, &ids).unwrap();
        let mut logits = first.clone();
        let mut got = Vec::new();
        for _ in 0..n {
            let t = argmax(&logits);
            got.push(t);
            logits = sess.eval(comp, &[t]).unwrap();
        }
        out.push((ci, ids, got, first));
    }
    out
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let s = setup();
    let g = Gguf::parse(&s.bytes).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    for c in s.refs.get("cases").arr() {
        let ids = tok.encode(c.get("prompt").str(), true, c.get("parse_special").bool());
        assert_eq!(ids, c.get("prompt_tokens").u32s(), "{:?}", c.get("prompt").str());
        // Decoding our greedy reference tokens gives llama.cpp's text.
        assert_eq!(tok.decode(&c.get("tokens").u32s()), c.get("text").str());
    }
}

#[test]
fn top5_logits_within_tolerance_of_llama_cpp() {
    let s = setup();
    let cases = s.refs.get("cases").arr();
    let mut worst = 0.0f32;
    let mut failures = Vec::new();
    for (ci, _, _, logits) in run_cases(&s, false) {
        for pair in cases[ci].get("top5").arr() {
            let (t, l) = (pair.arr()[0].num() as usize, pair.arr()[1].num() as f32);
            let diff = (logits[t] - l).abs();
            worst = worst.max(diff);
            if diff > ABS_TOL + REL_TOL * l.abs() {
                failures.push(format!("case {ci}: logit of token {t}: {} vs llama.cpp {l}", logits[t]));
            }
        }
    }
    eprintln!("largest top-5 logit difference vs llama.cpp: {worst}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn greedy_32_tokens_match_llama_cpp() {
    let s = setup();
    let g = Gguf::parse(&s.bytes).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let cases = s.refs.get("cases").arr();
    let mut failures = Vec::new();
    for (ci, _, got, _) in run_cases(&s, true) {
        let want = cases[ci].get("tokens").u32s();
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            failures.push(format!(
                "case {ci}: first difference at token {at}\n  ours:  {:?}\n  llama: {:?}",
                tok.decode(&got),
                tok.decode(&want)
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn model_header_and_norm_weights() {
    let bytes = std::fs::read(common::model_path()).expect("read model");
    let g = Gguf::parse(&bytes).unwrap();
    let m = Model::from_gguf(&g).unwrap();
    let c = &m.config;
    assert_eq!((c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim), (640, 18, 4, 1, 256));
    assert_eq!(c.n_vocab, 262_144);
    // The converter stores Gemma's (1 + w): norm weights are centred well above zero.
    let mean: f32 = m.layers[0].attn_norm.iter().sum::<f32>() / c.n_embd as f32;
    assert!(mean > 0.5, "attn_norm mean {mean}");
    // Corrupting the real file: truncated and with a tensor offset out of bounds.
    for cut in [3usize, 100, 5000, g.data_offset - 1, bytes.len() / 2] {
        assert!(Gguf::parse(&bytes[..cut]).is_err());
    }
}
