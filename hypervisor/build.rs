//! Links the bare-metal binary with its linker script; host builds (unit tests) need none.
fn main() {
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-env-changed=TV_KERNEL_OBJECT");
    println!("cargo::rustc-check-cfg=cfg(kernel_object)");
    if target_os == "none" {
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
        // The engine's kernels compiled hard-float (crate engine-simd), as xtask builds them:
        // see src/kernel/simd.rs.
        if let Ok(obj) = std::env::var("TV_KERNEL_OBJECT") {
            if !obj.is_empty() {
                println!("cargo:rerun-if-changed={obj}");
                println!("cargo:rustc-link-arg-bins={obj}");
                println!("cargo:rustc-cfg=kernel_object");
            }
        }
    }
}
