//! Debug helper: evaluates a prompt and writes every traced activation as raw little-endian
//! f32 (`OUT/NAME-LAYER.f32`) plus `OUT/index.txt`, for comparison with llama.cpp's tensors
//! (`scripts/engine/dump_llama_tensors.py`).
//!
//! `cargo run --release -p engine --features std --example trace -- MODEL PROMPT OUT [--portable] [--then T1,T2,..]`

use std::io::Write;

use engine::cpu::CpuFeatures;
use engine::gguf::Gguf;
use engine::host::ThreadPool;
use engine::model::{Model, Session};
use engine::tensor::Compute;
use engine::tokenizer::Tokenizer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (model, prompt, out) = (&args[1], &args[2], &args[3]);
    let portable = args.iter().any(|a| a == "--portable");
    let bytes = std::fs::read(model).expect("read model");
    let g = Gguf::parse(&bytes).expect("parse");
    let m = Model::from_gguf(&g).expect("model");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let mut ids = tok.encode(prompt, true, true);
    // `--then T1,T2,..`: evaluate the prompt, then the tokens one by one, tracing only the last
    // single-token (decode) step.
    let then: Vec<u32> = args
        .iter()
        .position(|a| a == "--then")
        .map(|i| args[i + 1].split(',').map(|t| t.parse().expect("token id")).collect())
        .unwrap_or_default();
    let pool = ThreadPool::new(2);
    let cpu = if portable { CpuFeatures::default() } else { CpuFeatures::detect() };
    let comp = Compute { cpu, par: &pool };
    let mut s = Session::new(&m, ids.len() + then.len() + 1);
    if let Some((&last, before)) = then.split_last() {
        s.eval(comp, &ids).expect("eval");
        for &t in before {
            s.eval(comp, &[t]).expect("eval");
        }
        ids = vec![last];
    }
    std::fs::create_dir_all(out).unwrap();
    let mut index = std::fs::File::create(format!("{out}/index.txt")).unwrap();
    let logits = s
        .eval_traced(comp, &ids, &mut |name, il, v| {
            let path = format!("{out}/{name}-{il}.f32");
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(&path, bytes).unwrap();
            writeln!(index, "{name} {il} {}", v.len()).unwrap();
        })
        .expect("eval");
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(format!("{out}/logits.f32"), bytes).unwrap();
    println!("{ids:?}");
}
