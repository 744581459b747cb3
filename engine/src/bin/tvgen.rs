//! `tvgen`: generate a continuation on the host.
//!
//! `tvgen --model FILE --prompt TEXT --max-tokens N --temp 0 --threads T [--json]`
//! Options: `--chat` (wrap the prompt in Gemma's chat template), `--top-k K`, `--top-p P`,
//! `--repeat-penalty R`, `--seed S`, `--ignore-eos`, `--portable` (no SIMD kernels).

use std::io::Write;
use std::process::ExitCode;

use engine::cpu::CpuFeatures;
use engine::generate::generate;
use engine::gguf::Gguf;
use engine::host::{now_ns, ThreadPool};
use engine::model::{Model, Session};
use engine::sampler::{Sampler, SamplerConfig};
use engine::tensor::Compute;
use engine::tokenizer::Tokenizer;

/// Repeated to build `--bench-prompt N` prompts.
const BENCH_SENTENCE: &str = "The history of computing is a story of people, machines and ideas. ";

struct Args {
    model: String,
    prompt: String,
    max_tokens: usize,
    threads: usize,
    json: bool,
    chat: bool,
    ignore_eos: bool,
    portable: bool,
    bench_prompt: Option<usize>,
    membw: bool,
    sampler: SamplerConfig,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: String::new(),
        prompt: String::new(),
        max_tokens: 32,
        threads: 1,
        json: false,
        chat: false,
        ignore_eos: false,
        portable: false,
        bench_prompt: None,
        membw: false,
        sampler: SamplerConfig::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(s: String, name: &str) -> Result<T, String> {
            s.parse().map_err(|_| format!("bad value '{s}' for {name}"))
        }
        match k.as_str() {
            "--model" => a.model = val("--model")?,
            "--prompt" => a.prompt = val("--prompt")?,
            "--max-tokens" => a.max_tokens = num(val(&k)?, &k)?,
            "--threads" => a.threads = num(val(&k)?, &k)?,
            "--temp" => a.sampler.temperature = num(val(&k)?, &k)?,
            "--top-k" => a.sampler.top_k = num(val(&k)?, &k)?,
            "--top-p" => a.sampler.top_p = num(val(&k)?, &k)?,
            "--repeat-penalty" => a.sampler.repeat_penalty = num(val(&k)?, &k)?,
            "--seed" => a.sampler.seed = num(val(&k)?, &k)?,
            "--json" => a.json = true,
            "--chat" => a.chat = true,
            "--ignore-eos" => a.ignore_eos = true,
            "--portable" => a.portable = true,
            "--membw" => a.membw = true,
            "--bench-prompt" => a.bench_prompt = Some(num(val(&k)?, &k)?),
            "-h" | "--help" => {
                return Err("usage: tvgen --model FILE --prompt TEXT --max-tokens N --temp T \
                            --threads T [--json] [--chat] [--top-k K] [--top-p P] \
                            [--repeat-penalty R] [--seed S] [--ignore-eos] [--portable] [--bench-prompt N] [--membw]"
                    .into())
            }
            other => return Err(format!("unknown argument '{other}' (see --help)")),
        }
    }
    if a.model.is_empty() && !a.membw {
        return Err("--model FILE is required".into());
    }
    Ok(a)
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Memory read bandwidth: `threads` workers each sum their part of a 512 MiB buffer (much
/// larger than any cache) with AVX2 loads where the CPU has them, best of 3 passes; bytes/s.
fn read_bandwidth(threads: usize) -> f64 {
    // 512 MiB on 2 MiB pages, as the model's weights are (see `HugeBuf`).
    let bytes = 512usize << 20;
    let mut buf = engine::host::HugeBuf::zeroed(bytes).unwrap_or_else(|e| panic!("cannot allocate {bytes} bytes: {e}"));
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64).to_le_bytes());
    }
    let buf = &buf;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(bytes.div_ceil(threads))
                .map(|c| s.spawn(move || engine::kernels::read_sum(CpuFeatures::detect(), c)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        });
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max(bytes as f64 / secs);
    }
    best
}

/// Bytes of this process's memory on transparent huge pages (`AnonHugePages` in
/// /proc/self/smaps_rollup; 0 where unreadable): whether the model got its 2 MiB pages.
fn huge_page_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") else { return 0 };
    s.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn run() -> Result<(), String> {
    let a = parse()?;
    if a.membw {
        println!("{{\"threads\":{},\"read_bytes_per_s\":{:.0}}}", a.threads, read_bandwidth(a.threads.max(1)));
        return Ok(());
    }
    let bytes = engine::host::HugeBuf::read(std::path::Path::new(&a.model)).map_err(|e| format!("cannot read {}: {e}", a.model))?;
    let gguf = Gguf::parse(&bytes).map_err(|e| format!("{}: {e}", a.model))?;
    let model = Model::from_gguf(&gguf).map_err(|e| format!("{}: {e}", a.model))?;
    let tok = Tokenizer::from_gguf(&gguf).map_err(|e| format!("{}: {e}", a.model))?;
    let text = if a.chat { Tokenizer::chat_prompt(&a.prompt) } else { a.prompt.clone() };
    let mut prompt = tok.encode(&text, true, a.chat);
    if let Some(n) = a.bench_prompt {
        // Benchmark prompt: the same text and cut as scripts/engine/bench_llama.py.
        prompt = tok.encode(&BENCH_SENTENCE.repeat(64), true, false);
        prompt.truncate(n);
    }
    let pool = ThreadPool::new(a.threads);
    let cpu = if a.portable { CpuFeatures::portable() } else { CpuFeatures::detect() };
    let comp = Compute { cpu, par: &pool };
    let mut session = Session::new(&model, prompt.len() + a.max_tokens + 1);
    let mut sampler = Sampler::new(a.sampler.clone());
    let stdout = std::io::stdout();
    let json = a.json;
    let mut printed = 0usize;
    let mut so_far: Vec<u32> = Vec::new();
    let mut on_token = |t: u32| {
        if !json {
            so_far.push(t);
            let s = tok.decode(&so_far);
            // Print only complete characters (a partial UTF-8 sequence shows as U+FFFD).
            if !s.ends_with('\u{fffd}') && s.len() > printed {
                let mut out = stdout.lock();
                let _ = out.write_all(&s.as_bytes()[printed..]);
                let _ = out.flush();
                printed = s.len();
            }
        }
    };
    let g = generate(
        &mut session,
        comp,
        &tok,
        &mut sampler,
        &prompt,
        a.max_tokens,
        !a.ignore_eos,
        &now_ns,
        &mut on_token,
    )
    .map_err(|e| e.to_string())?;
    let prefill = if g.prefill_ns > 0 { g.prompt_tokens.len() as f64 / (g.prefill_ns as f64 * 1e-9) } else { 0.0 };
    let decode = if g.decode_ns > 0 { g.decode_evals as f64 / (g.decode_ns as f64 * 1e-9) } else { 0.0 };
    if json {
        let ids = |v: &[u32]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
        println!(
            "{{\"prompt_tokens\":[{}],\"tokens\":[{}],\"text\":{},\"prefill_tok_s\":{:.3},\"decode_tok_s\":{:.3},\"weight_bytes_per_token\":{},\"huge_page_bytes\":{}}}",
            ids(&g.prompt_tokens),
            ids(&g.tokens),
            json_str(&tok.decode(&g.tokens)),
            prefill,
            decode,
            model.weight_bytes_per_token(),
            huge_page_bytes()
        );
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} tokens, {:.1} tok/s decode]",
            g.prompt_tokens.len(),
            prefill,
            g.tokens.len(),
            decode
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tvgen: {e}");
            ExitCode::FAILURE
        }
    }
}
