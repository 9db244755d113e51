//! Generates the NRI messages (rust-protobuf 3) and the ttrpc clients and
//! servers (async) from proto/nri.proto into OUT_DIR.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=proto/nri.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .input("proto/nri.proto")
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating the NRI protocol from proto/nri.proto");
    // `include!` refuses inner attributes and inner doc comments, which the
    // generators put at the top of each file.
    for name in ["nri.rs", "nri_ttrpc.rs"] {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path).expect("reading generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("writing generated code");
    }
}
