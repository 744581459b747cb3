//! For the bare-metal target: a static executable (no PIE) with the engine's hard-float kernel
//! object linked in, as the hypervisor links it (`TV_KERNEL_OBJECT`, set by xtask).
fn main() {
    println!("cargo:rerun-if-env-changed=TV_KERNEL_OBJECT");
    println!("cargo::rustc-check-cfg=cfg(kernel_object)");
    if std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default() == "none" {
        println!("cargo:rustc-link-arg-bins=--no-pie");
        if let Ok(obj) = std::env::var("TV_KERNEL_OBJECT") {
            if !obj.is_empty() {
                println!("cargo:rerun-if-changed={obj}");
                println!("cargo:rustc-link-arg-bins={obj}");
                println!("cargo:rustc-cfg=kernel_object");
            }
        }
    }
}
