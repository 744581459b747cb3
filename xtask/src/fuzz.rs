//! `cargo xtask fuzz hcall --cases N [--seed S]`: millions of randomized adversarial hypercalls
//! against the real dispatcher (`hypervisor::dispatch::fuzz`, the code the hypervisor runs) with
//! the tiny model loaded, in chunks on every core. A panic or an invariant violation is a failure.

use engine::cpu::CpuFeatures;
use hypervisor::dispatch::{fuzz, EngineHost};
use std::time::Instant;

const CHUNK: u64 = 50_000;

fn tiny_host() -> Result<EngineHost, String> {
    let bytes: &'static [u8] = Box::leak(engine::tiny::tiny_gemma3(1).into_boxed_slice());
    let g = engine::gguf::Gguf::parse(bytes).map_err(|e| e.to_string())?;
    let model = engine::model::Model::from_gguf(&g).map_err(|e| e.to_string())?;
    let tok = engine::tokenizer::Tokenizer::from_gguf(&g).map_err(|e| e.to_string())?;
    let mut host = EngineHost::new(CpuFeatures::portable());
    host.add("tiny", model, tok);
    Ok(host)
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("hcall") {
        return Err("usage: cargo xtask fuzz hcall --cases N [--seed S]".into());
    }
    let (mut cases, mut seed) = (1_000_000u64, 1u64);
    while let Some(a) = it.next() {
        let v = it.next().and_then(|v| v.parse().ok()).ok_or(format!("{a} needs a number"))?;
        match a.as_str() {
            "--cases" => cases = v,
            "--seed" => seed = v,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    let chunks = cases.div_ceil(CHUNK);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let start = Instant::now();
    let results: Vec<Result<fuzz::FuzzReport, u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let mut host = tiny_host().expect("tiny model");
                    let mut out = Vec::new();
                    for c in (w..chunks).step_by(workers as usize) {
                        let n = CHUNK.min(cases - c * CHUNK);
                        let chunk_seed = seed.wrapping_mul(1_000_003).wrapping_add(c);
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fuzz::run(chunk_seed, n, &mut host)));
                        out.push(r.map_err(|_| chunk_seed));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut total = fuzz::FuzzReport::default();
    let mut panicked = Vec::new();
    for r in results {
        match r {
            Ok(r) => {
                total.cases += r.cases;
                total.ok += r.ok;
                total.errors += r.errors;
                total.ring_entries += r.ring_entries;
                total.violations += r.violations;
            }
            Err(seed) => panicked.push(seed),
        }
    }
    let failures = total.violations + panicked.len() as u64;
    println!(
        "{{\"fuzz\":\"hcall\",\"cases_run\":{},\"succeeded\":{},\"refused\":{},\"ring_entries\":{},\"violations\":{},\"panicked_chunks\":{:?},\"failures\":{failures},\"seconds\":{:.1}}}",
        total.cases,
        total.ok,
        total.errors,
        total.ring_entries,
        total.violations,
        panicked,
        start.elapsed().as_secs_f64()
    );
    if failures == 0 { Ok(()) } else { Err(format!("{failures} failures (rerun a panicked chunk with --seed)")) }
}
