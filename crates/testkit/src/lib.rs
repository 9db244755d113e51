//! Test support shared by berth's crates, so that each helper exists once.
//!
//! Everything here works on the real host as root, with real tools: no
//! mocks. By concern:
//!
//! * [`names`]: names unique to a test process ([`names::unique`]) and the
//!   locks that serialize tests sharing a host resource.
//! * [`procs`]: finding, checking and killing processes by command line.
//! * [`mounts`]: what is mounted below a directory, and unmounting it.
//! * [`cgroups`]: a cgroup's directories in every hierarchy, its pids, and
//!   killing and removing a whole cgroup tree.
//! * [`tools`]: preconditions that fail loudly (root, installed tools, a
//!   static busybox).
//! * [`cmd`]: running client commands with a deadline ([`cmd::run_in`]).
//! * [`scratch`]: a self-cleaning directory under /tmp, and global paths a
//!   test must remove again if it created them.
//! * [`rootfs`]: a busybox root filesystem for bundles, and busybox OCI
//!   archives (built with umoci) for containerd and podman.
//! * [`containerd`]: a private containerd 1.6 ([`containerd::Containerd`],
//!   driven with ctr; [`containerd::cri::CriContainerd`], with its CRI
//!   plugin and a synchronous CRI client).
//! * [`images`]: a real registry (docker-registry), hand-made tarballs and
//!   OCI/Docker images, a minimal registry HTTP client.
//! * [`nri_plugin`] (feature `nri`): an NRI plugin that connects to a
//!   runtime's NRI socket, records the events it gets and adjusts, fails or
//!   ignores container creations as told.
//!
//! [`prelude`] gathers the host helpers for a glob import.

pub mod cgroups;
pub mod cmd;
pub mod containerd;
pub mod images;
pub mod mounts;
pub mod names;
#[cfg(feature = "nri")]
pub mod nri_plugin;
pub mod procs;
pub mod rootfs;
pub mod scratch;
pub mod tools;

/// The host helpers, for `use berth_testkit::prelude::*;`.
pub mod prelude {
    pub use crate::cgroups::*;
    pub use crate::cmd::*;
    pub use crate::containerd;
    pub use crate::mounts::*;
    pub use crate::names::*;
    pub use crate::procs::{kill_processes_mentioning, processes_mentioning};
    pub use crate::rootfs::*;
    pub use crate::scratch::*;
    pub use crate::tools::*;
}
