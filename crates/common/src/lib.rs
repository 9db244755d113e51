//! berth-common: the small, container-free pieces both sides of berth use.
//! The runtime side (`berth`, the shim) and the daemon side (`berthd`,
//! `berthctl`) link it; it never forks, execs, or enters a namespace, so
//! the daemon can use it without linking the runtime.

pub mod annotations;
pub mod fd;
pub mod idmapped;
pub mod kernel;
pub mod kernel_file;
pub mod logrus;
pub mod memory;
pub mod net;
pub mod safe_path;
pub mod seccomp_profile;
pub mod signal;
pub mod socket;
pub mod time;
