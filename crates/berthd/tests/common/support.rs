//! The image crate's test fixtures (registry, images) berthd's tests use,
//! included module by module so that other additions to that support
//! directory (with dependencies berthd does not have) stay out.

#![allow(dead_code, unused_imports)]

#[path = "../../../image/tests/support/fixtures.rs"]
pub mod fixtures;
#[path = "../../../image/tests/support/http.rs"]
pub mod http;
#[path = "../../../image/tests/support/oci.rs"]
pub mod oci;
#[path = "../../../image/tests/support/registry.rs"]
pub mod registry;
#[path = "../../../image/tests/support/tarball.rs"]
pub mod tarball;
#[path = "../../../image/tests/support/tempdir.rs"]
pub mod tempdir;

pub use fixtures::busybox_image;
pub use registry::Registry;
pub use tarball::Compression;

use std::io;

pub(crate) fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> io::Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> io::Result<T> {
        self.map_err(|e| err(format!("{}: {e}", what())))
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
