//! `tvtiny [--seed S] OUT.gguf`: writes the tiny random-weight Gemma 3 model.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seed = 1u64;
    let mut out = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                i += 1;
                match args.get(i).and_then(|s| s.parse().ok()) {
                    Some(s) => seed = s,
                    None => {
                        eprintln!("tvtiny: --seed needs a number");
                        return ExitCode::FAILURE;
                    }
                }
            }
            p => out = Some(p.to_string()),
        }
        i += 1;
    }
    let Some(out) = out else {
        eprintln!("usage: tvtiny [--seed S] OUT.gguf");
        return ExitCode::FAILURE;
    };
    let bytes = engine::tiny::tiny_gemma3(seed);
    if let Err(e) = std::fs::write(&out, &bytes) {
        eprintln!("tvtiny: cannot write {out}: {e}");
        return ExitCode::FAILURE;
    }
    println!("{out} ({} bytes, seed {seed})", bytes.len());
    ExitCode::SUCCESS
}
