//! Generates the berth.v1 gRPC server and client from proto/ with protox
//! (pure Rust: no protoc needed).

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["berth/v1/images.proto"], ["proto"])
        .expect("compiling proto/berth/v1/images.proto");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generating the berth.v1 services");
}
