//! Generates from proto/ with protox (pure Rust: no protoc needed): the
//! berth.shim.v1 and berth.agent.v1 messages (prost only: the shim serves them over ttrpc), and
//! with the `grpc` feature the berth.v1 gRPC server and client (tonic).

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        ["berth/shim/v1/shim.proto", "berth/agent/v1/agent.proto"],
        ["proto"],
    )
    .expect("compiling proto/berth/shim/v1/shim.proto and proto/berth/agent/v1/agent.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generating the berth.shim.v1 messages");
    #[cfg(feature = "grpc")]
    {
        let fds = protox::compile(["berth/v1/images.proto"], ["proto"])
            .expect("compiling proto/berth/v1/images.proto");
        tonic_prost_build::configure()
            .compile_fds(fds)
            .expect("generating the berth.v1 services");
    }
}
