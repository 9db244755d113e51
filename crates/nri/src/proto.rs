//! The NRI wire types and ttrpc services, generated from proto/nri.proto
//! (rust-protobuf 3 messages, async ttrpc clients and servers). berthd does
//! not need them; they are public for NRI plugins written in Rust, such as
//! the one in this crate's tests.
#![allow(
    missing_docs,
    dead_code,
    unused_mut,
    unused_imports,
    unused_qualifications,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    clippy::all,
    clippy::pedantic
)]

/// Messages and enums.
pub mod nri {
    include!(concat!(env!("OUT_DIR"), "/nri.rs"));
}

/// The `Runtime` and `Plugin` services: clients, server traits and
/// `create_*` registration helpers.
pub mod nri_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/nri_ttrpc.rs"));
}
