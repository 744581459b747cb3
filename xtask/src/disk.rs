//! Model-store disk images for the hypervisor's NVMe driver. The layout is documented in
//! `hypervisor::store` (a 4 KiB header with a table of named, SHA-256-checked extents, then the
//! models 4 KiB-aligned); this module writes it with the same code the hypervisor parses with.
//!
//! `cargo xtask disk OUT [NAME=FILE ...]` writes a store (the tiny test model when no file is
//! given); boot it with `-drive file=OUT,if=none,id=nvm,format=raw -device nvme,serial=tv,drive=nvm`.

use hypervisor::store::{build_header, sha256, Entry, ALIGN};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// The engine's tiny random-weight Gemma 3 model (a few MB, deterministic per seed).
pub fn tiny_model(seed: u64) -> Vec<u8> {
    engine::tiny::tiny_gemma3(seed)
}

/// Writes a raw disk image holding a model store with `models`, padded to whole MiB. Returns the
/// entries as written.
pub fn write_store(path: &Path, models: &[(&str, &[u8])]) -> Result<Vec<Entry>, String> {
    let described: Vec<(&str, u64, [u8; 32])> = models.iter().map(|(n, b)| (*n, b.len() as u64, sha256(b))).collect();
    let (header, entries) = build_header(&described).map_err(|e| format!("model store: {e}"))?;
    let mut f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    f.write_all(&header).map_err(io)?;
    for (e, (_, bytes)) in entries.iter().zip(models) {
        f.seek(SeekFrom::Start(e.offset)).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
    }
    let end = entries.iter().map(|e| e.offset + e.len).max().unwrap_or(ALIGN);
    f.set_len(end.next_multiple_of(1 << 20)).map_err(io)?;
    Ok(entries)
}

/// Writes a disk image of `len` bytes with no model store (all zeros).
pub fn write_blank(path: &Path, len: u64) -> Result<(), String> {
    let f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(len).map_err(|e| format!("{}: {e}", path.display()))
}

/// `cargo xtask disk OUT [NAME=FILE ...]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let Some(out) = args.first() else {
        return Err("usage: cargo xtask disk OUT.img [NAME=FILE ...]".into());
    };
    let mut owned: Vec<(String, Vec<u8>)> = Vec::new();
    for a in &args[1..] {
        let (name, file) = a.split_once('=').ok_or(format!("expected NAME=FILE, got `{a}`"))?;
        owned.push((name.to_string(), fs::read(file).map_err(|e| format!("{file}: {e}"))?));
    }
    if owned.is_empty() {
        owned.push(("tiny".into(), tiny_model(1)));
    }
    let models: Vec<(&str, &[u8])> = owned.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    for e in write_store(Path::new(out), &models)? {
        println!("{} {} bytes at {:#x} sha256 {}", e.name, e.len, e.offset, hypervisor::store::hex(&e.sha256));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor::store::{Header, HEADER_BYTES};

    #[test]
    fn written_store_parses_and_extents_hold_the_models() {
        let dir = std::env::temp_dir().join(format!("tv-disk-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("store.img");
        let a = vec![1u8; 5000];
        let b = vec![2u8; 4096];
        write_store(&p, &[("a", &a), ("b", &b)]).unwrap();
        let img = fs::read(&p).unwrap();
        assert_eq!(img.len(), 1 << 20);
        let h: &[u8; HEADER_BYTES] = img[..HEADER_BYTES].try_into().unwrap();
        let parsed = Header::parse(h, img.len() as u64).unwrap();
        for (e, m) in parsed.entries.iter().zip([&a, &b]) {
            let bytes = &img[e.offset as usize..(e.offset + e.len) as usize];
            assert_eq!(bytes, m.as_slice());
            assert_eq!(sha256(bytes), e.sha256);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
