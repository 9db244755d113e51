//! berth-runtime: an OCI runtime as a library. It takes an OCI bundle and a
//! state directory and runs containers: namespaces, root filesystem,
//! process setup, hooks and cgroup placement. It is synchronous and forks;
//! it knows nothing of CRI, pods or images.

mod attrs;
mod channel;
pub mod cloned_exe;
mod container;
mod error;
pub mod features;
mod handshake;
mod hooks;
mod id;
mod idmap;
mod init;
mod io_relay;
mod manage;
mod mount_opts;
mod namespaces;
mod process;
mod rootfs;
mod seccomp;
mod spec;
mod state;
mod sys;
mod util;

/// Resolution inside untrusted roots, shared with the daemon side.
pub(crate) use berth_common::safe_path;

pub use container::{CreateOptions, ExecOptions, ExecResult, ProcessIo, Runtime};
pub use error::{Error, Result};
pub use spec::{check_config_bytes, Bundle};
pub use state::{OciState, Status, OCI_VERSION};
