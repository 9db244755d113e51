// The runtime binary starts on the hot path of every container: link it as
// a position-dependent executable so the loader has no relocations to apply
// (thousands for a PIE Rust binary) and no relocated pages to keep resident.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
