//! berth-runtime: an OCI runtime as a library. It takes an OCI bundle and a
//! state directory and runs containers: namespaces, root filesystem,
//! process setup, hooks and cgroup placement. It is synchronous and forks;
//! it knows nothing of CRI, pods or images.

pub mod attrs;
mod channel;
pub mod cloned_exe;
mod container;
mod error;
pub mod features;
pub mod hooks;
pub mod id;
pub mod idmap;
mod init;
mod io_relay;
pub mod manage;
pub mod mount_opts;
mod namespaces;
pub mod process;
mod rootfs;
pub mod safe_path;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
mod sys;
pub mod util;

pub use container::{CreateOptions, ExecOptions, ExecResult, ProcessIo, Runtime};
pub use error::{Error, Result};
pub use spec::Bundle;
pub use state::{OciState, Status, OCI_VERSION};
