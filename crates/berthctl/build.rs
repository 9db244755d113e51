//! Compiles the CRI v1 API definition (crates/cri-api/proto/api.proto) into a protobuf
//! FileDescriptorSet with protox (pure Rust, no protoc), for berthctl to
//! read pod/container configs and print responses as protobuf JSON.

use prost::Message;

fn main() {
    println!("cargo:rerun-if-changed=../cri-api/proto/api.proto");
    let set = protox::compile(["api.proto"], ["../cri-api/proto"])
        .expect("compiling crates/cri-api/proto/api.proto");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("cri_descriptor.bin"), set.encode_to_vec())
        .expect("writing the CRI descriptor set");
}
