//! Images and registries, for berth-image's tests and berthd's.
//!
//! Everything here is plain Rust plus a few Debian tools so that a test
//! controls every byte of the images it feeds to the store:
//!
//! * [`Registry`]: a real `docker-registry` (distribution 2.8) on 127.0.0.1,
//!   optionally behind htpasswd basic auth, torn down on drop.
//! * [`tarball`](self::tarball): a tar writer that emits header bytes itself, so tests can
//!   write the hostile archives (`../` names, absolute names, links out of
//!   the root, ...) that well-behaved tar libraries refuse to produce.
//! * [`oci`](self::oci): config/manifest/index assembly (OCI and Docker schema 2
//!   media types), written as an OCI layout directory, an oci-archive, a
//!   `docker save` tarball, or pushed to a registry over the distribution API.
//!
//! (The tar module is `tarball`, not `tar`, so that `use support::*;` does not
//! shadow the `tar` crate.)
//! * [`fixtures`](self::fixtures): ready-made images (a busybox rootfs in three
//!   layers with whiteouts and links, a multi-platform index).
//! * `tls` (feature `tls`): the registry behind TLS, with its own PKI.
//!
//! Test crates use it as their `support` module: `use berth_testkit::images
//! as support; use support::*;`. The self-checks that prove these fixtures
//! are accepted by skopeo, umoci and the registry are this crate's test
//! `selftest`.
//!
//! Helpers return `std::io::Result` with messages that say what was being
//! attempted, so a test can `.expect("...")` and still get a useful failure.

pub mod fixtures;
pub mod http;
pub mod oci;
pub mod registry;
pub mod tarball;
pub mod tempdir;
#[cfg(feature = "tls")]
pub mod tls;

// Functions and types in separate groups: rustfmt's 2021 and 2024 styles
// sort mixed-case lists differently, and this file must pass both.
pub use fixtures::{busybox_image, busybox_rootfs_layers, multi_platform_index, platform_index};
pub use oci::{write_docker_archive, write_oci_archive, write_oci_layout};

pub use fixtures::{BUSYBOX_ABSENT, BUSYBOX_PRESENT};
pub use http::RegistryClient;
pub use oci::{
    Artifact, Blob, BuiltImage, BuiltIndex, Format, Image, ImageConfig, Index, OciLayout, Platform,
};
pub use registry::Registry;
pub use tarball::{Compression, Entry, EntryKind, Layer, LongNames};
pub use tempdir::TempDir;

use std::io;
use std::process::{Command, Stdio};

/// Builds an `io::Error` carrying `msg`; the helpers' errors are for humans
/// reading a failed test, so one kind is enough.
pub(crate) fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Prefixes an error with what was being attempted ("writing blob ...: No
/// space left on device") so failures are actionable without a backtrace.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> io::Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> io::Result<T> {
        self.map_err(|e| err(format!("{}: {e}", what())))
    }
}

/// Runs `cmd` (stdin /dev/null) and returns its stdout. The error names
/// `what` ran and, if it could not start, the Debian `package` to install;
/// if it failed, its status and stderr.
pub(crate) fn tool_stdout(cmd: &mut Command, what: &str, package: &str) -> io::Result<Vec<u8>> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        err(format!(
            "running {what} ({e}); install it with: apt-get install {package}"
        ))
    })?;
    if !out.status.success() {
        return Err(err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// `sha256:<hex>` of `bytes`, the digest form used by OCI and the registry.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
