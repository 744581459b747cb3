//! `cargo xtask`: build, image, run, test and bench tensorvisor.
fn main() {}
