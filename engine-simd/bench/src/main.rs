//! The hypervisor's engine, timed natively: this program is built, like the hypervisor, for the
//! soft-float `x86_64-unknown-none` target with the engine's hard-float kernel object linked in,
//! and runs as a static Linux executable (its own `_start`, raw system calls, an `mmap`ed heap),
//! so the same core times both ways the hypervisor can run a model: the portable kernels as
//! soft-float code, and the object's kernels through the table. `cargo xtask bench hvengine`
//! builds and runs it. Built for any other target it only says so.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hvengine-bench is a static x86_64-unknown-none executable: run `cargo xtask bench hvengine`");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod bare;
