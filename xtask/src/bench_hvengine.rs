//! `cargo xtask bench hvengine [--model FILE] [--prompt N] [--decode N]`: the two ways the
//! hypervisor can run a model, timed natively on this machine's core. `engine-simd-bench` is
//! built like the hypervisor (soft-float `x86_64-unknown-none`, the engine's hard-float kernel
//! object linked in) but as a static Linux executable; it evaluates a prompt and greedy decode
//! steps on one thread with the portable kernels as soft-float code (the hypervisor without
//! the object) and then through the object's table (what it runs now), checks that both give
//! the same tokens, and prints one JSON line with tokens/s and the ratios. The default model is
//! Gemma 3 270M (`cargo xtask model`); the soft-float run is slow, so the counts are small.

use crate::setup::BARE_TARGET;
use std::process::Command;

pub fn run(args: &[String]) -> Result<(), String> {
    let mut model = None;
    let (mut prompt, mut decode) = (8usize, 4usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(std::path::PathBuf::from(val()?)),
            "--prompt" => prompt = val()?.parse().map_err(|e| format!("--prompt: {e}"))?,
            "--decode" => decode = val()?.parse().map_err(|e| format!("--decode: {e}"))?,
            other => return Err(format!("unknown argument {other}: bench hvengine [--model FILE] [--prompt N] [--decode N]")),
        }
    }
    let model = match model {
        Some(m) => m,
        None => crate::model::ensure()?,
    };
    let root = crate::root();
    let object = crate::image::build_kernel_object()?;
    eprintln!("xtask: building hvengine-bench for {BARE_TARGET} with {}", object.display());
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--package", "engine-simd-bench", "--bin", "hvengine-bench", "--target", BARE_TARGET])
        .env("TV_KERNEL_OBJECT", &object)
        .current_dir(&root)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("building hvengine-bench failed".into());
    }
    let exe = root.join("target").join(BARE_TARGET).join("release").join("hvengine-bench");
    eprintln!("xtask: {} {} {prompt} {decode} (soft-float first: slow)", exe.display(), model.display());
    let out = Command::new(&exe).arg(&model).arg(prompt.to_string()).arg(decode.to_string()).output().map_err(|e| format!("{}: {e}", exe.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("hvengine-bench failed ({})", out.status));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}
