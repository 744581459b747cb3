//! The library behind `cargo xtask`: tool set-up, building the hypervisor and its GRUB images,
//! booting them in QEMU or Bochs and judging the serial log. The integration tests in `tests/` use
//! the same functions, so a developer's `cargo xtask run` and CI boot images the same way.

pub mod bench_abi;
pub mod bench_engine;
pub mod bench_hvengine;
pub mod bench_hypercall;
pub mod bench_tenants;
pub mod disk;
pub mod emulator;
pub mod fuzz;
pub mod image;
pub mod linux;
pub mod manifest;
pub mod model;
pub mod setup;

use std::path::PathBuf;

/// The workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
