//! Generates CRI v1 (proto/api.proto) with protox (pure Rust: no protoc):
//! messages, the gRPC servers and the clients, with serde derives (berthd
//! keeps pod and container configs in its store as JSON).

fn main() {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let fds = protox::compile(["api.proto"], ["proto"]).expect("compiling proto/api.proto");
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // Lists the server may send partly pre-encoded (src/listing.rs).
        .extern_path(
            ".runtime.v1.ListPodSandboxResponse",
            "crate::listing::ListPodSandboxResponse",
        )
        .extern_path(
            ".runtime.v1.ListContainersResponse",
            "crate::listing::ListContainersResponse",
        )
        .compile_fds(fds)
        .expect("generating runtime.v1");
}
