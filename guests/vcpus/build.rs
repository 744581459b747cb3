fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed={dir}/../linker.ld");
    println!("cargo:rustc-link-arg=-T{dir}/../linker.ld");
    println!("cargo:rustc-link-arg=--no-pie");
}
