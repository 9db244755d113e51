// The runtime binary starts on the hot path of every container: link it as
// a position-dependent executable so the loader has no relocations to apply
// (thousands for a PIE Rust binary) and no relocated pages to keep resident.
// The release build (scripts/build-release) goes further and links it
// statically with relocation-model=static, which already gives that.
fn main() {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
