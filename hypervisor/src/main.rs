//! The tensorvisor bare-metal binary.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the hypervisor runs on bare metal: build and boot it with `cargo xtask run`");
    std::process::exit(2);
}
