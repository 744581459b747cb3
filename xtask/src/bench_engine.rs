//! `cargo xtask bench engine`: prefill (128-token prompt) and decode (128 tokens) tokens/s with
//! 1 and 2 threads, for this engine (`tvgen`) and for llama.cpp (llama-cpp-python built from
//! source by `scripts/engine/install_llama_cpp.sh`, run by `scripts/engine/bench_llama.py`), in
//! one run on the same machine. Prints one JSON object with the ratios (engine / llama.cpp).
//! Each run also measures the machine's read bandwidth (`tvgen --membw`, a streaming sum over
//! 2 MiB pages, as the engine keeps its weights: `engine_huge_page_mb` says how much it got) and
//! reports decode's bound: bandwidth / weight bytes per token.
//! Rounds alternate between the two engines (default 3; each side keeps its best prefill and
//! best decode), and the JSON carries the load average before and after.
//! Options: `--prompt N`, `--gen N`, `--threads 1,2`, `--rounds N`.

use std::process::Command;

fn field(json: &str, key: &str) -> Result<f64, String> {
    let pat = format!("\"{key}\":");
    let at = json.find(&pat).ok_or_else(|| format!("no '{key}' in output: {json}"))? + pat.len();
    let rest = json[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().map_err(|_| format!("bad '{key}' in output: {json}"))
}

fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The one-minute load average (0 where /proc/loadavg is unreadable): a benchmark on a
/// machine that is busy with other work says so in its JSON.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

pub fn run(args: &[String]) -> Result<(), String> {
    let (mut n_prompt, mut n_gen, mut threads, mut rounds) = (128usize, 128usize, vec![1usize, 2], 3usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--prompt" => n_prompt = v()?.parse().map_err(|_| "bad --prompt")?,
            "--gen" => n_gen = v()?.parse().map_err(|_| "bad --gen")?,
            "--rounds" => rounds = v()?.parse::<usize>().map_err(|_| "bad --rounds")?.max(1),
            "--threads" => {
                threads = v()?.split(',').map(|t| t.parse().map_err(|_| "bad --threads")).collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    let root = std::env::var_os("TENSORVISOR_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let model = crate::model::ensure()?;
    eprintln!("building tvgen (release)...");
    output(
        Command::new(env!("CARGO")).current_dir(&root).args([
            "build", "--release", "-p", "engine", "--features", "std", "--bin", "tvgen",
        ]),
        "cargo build",
    )?;
    eprintln!("building llama.cpp (llama-cpp-python from source; first time only, 10-20 min)...");
    let llama_dir = output(Command::new("bash").arg(root.join("scripts/engine/install_llama_cpp.sh")), "install_llama_cpp.sh")?;
    let llama_dir = llama_dir.lines().last().unwrap_or("").to_string();
    let tvgen = root.join("target/release/tvgen");
    let mut rows = Vec::new();
    let mut weight_bytes = 0.0f64;
    let mut huge_bytes = 0.0f64;
    let load_before = load_average();
    for &t in &threads {
        // Rounds alternate between the two engines, so load from elsewhere on a shared machine
        // hits both alike; each side keeps its best prefill and its best decode.
        let (mut ep, mut ed, mut lp, mut ld) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for _ in 0..rounds {
            let out = output(
                Command::new(&tvgen)
                    .arg("--model").arg(&model)
                    .args(["--prompt", "", "--bench-prompt", &n_prompt.to_string()])
                    .args(["--max-tokens", &(n_gen + 1).to_string(), "--temp", "0", "--ignore-eos", "--json"])
                    .args(["--threads", &t.to_string()]),
                "tvgen",
            )?;
            ep = ep.max(field(&out, "prefill_tok_s")?);
            ed = ed.max(field(&out, "decode_tok_s")?);
            weight_bytes = field(&out, "weight_bytes_per_token")?;
            huge_bytes = field(&out, "huge_page_bytes")?;
            let out = output(
                Command::new("python3")
                    .env("PYTHONPATH", &llama_dir)
                    .arg(root.join("scripts/engine/bench_llama.py"))
                    .arg(&model)
                    .args([t.to_string(), n_prompt.to_string(), n_gen.to_string(), "1".to_string()]),
                "bench_llama.py",
            )?;
            lp = lp.max(field(&out, "prefill_tok_s")?);
            ld = ld.max(field(&out, "decode_tok_s")?);
        }
        // Decode's memory-bandwidth bound: weight bytes read per token / measured read bandwidth.
        let bw = field(
            &output(Command::new(&tvgen).args(["--membw", "--threads", &t.to_string()]), "tvgen --membw")?,
            "read_bytes_per_s",
        )?;
        let bound = bw / weight_bytes.max(1.0);
        eprintln!(
            "threads {t}: engine prefill {ep:.1} decode {ed:.1} tok/s; llama.cpp prefill {lp:.1} decode {ld:.1} tok/s; \
             read bandwidth {:.1} GB/s, decode bound {bound:.1} tok/s",
            bw / 1e9
        );
        rows.push(format!(
            "{{\"threads\":{t},\"engine\":{{\"prefill_tok_s\":{ep:.2},\"decode_tok_s\":{ed:.2}}},\
             \"llama_cpp\":{{\"prefill_tok_s\":{lp:.2},\"decode_tok_s\":{ld:.2}}},\
             \"ratio\":{{\"prefill\":{:.3},\"decode\":{:.3}}},\
             \"bandwidth\":{{\"read_gb_s\":{:.2},\"weight_mb_per_token\":{:.1},\"decode_bound_tok_s\":{bound:.1},\
             \"engine_fraction_of_bound\":{:.3},\"llama_cpp_fraction_of_bound\":{:.3}}}}}",
            ep / lp,
            ed / ld,
            bw / 1e9,
            weight_bytes / 1e6,
            ed / bound,
            ld / bound
        ));
    }
    println!(
        "{{\"model\":\"{}\",\"prompt_tokens\":{n_prompt},\"decode_tokens\":{n_gen},\"rounds\":{rounds},\
         \"load_average\":{{\"before\":{load_before:.2},\"after\":{:.2}}},\"engine_huge_page_mb\":{:.1},\"goal\":{{\"decode\":1.2,\"prefill\":1.0}},\"runs\":[{}]}}",
        model.display(),
        load_average(),
        huge_bytes / 1e6,
        rows.join(",")
    );
    Ok(())
}
