//! Each plugin crate's rlib carries its library's root-module symbol (`export_plugins!` emits
//! it unconditionally), so a binary linking two plugin crates in-process (`step`: resnet +
//! simclr, for the ABI-overhead pair) gets a duplicate symbol at link time. The binaries never
//! act as plugin libraries, so any one copy will do.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "android" || os.ends_with("bsd") {
        println!("cargo:rustc-link-arg-bins=-Wl,--allow-multiple-definition");
    }
}
