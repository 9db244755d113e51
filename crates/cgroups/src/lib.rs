//! Cgroup management for berth: hierarchy discovery (v1, v2 and hybrid
//! hosts), resolution of an OCI `cgroupsPath`, creation, process placement,
//! resources (with runc's v1-to-v2 conversions), device control (v1 lists,
//! v2 eBPF), freezing, statistics and OOM notifications.
//!
//! The library is synchronous and free of global state so that the runtime
//! can call it from a forked child as well as from the parent.

mod bpf;
pub mod devices;
mod error;
mod freezer;
mod fs;
mod hierarchy;
mod manager;
mod oom;
mod path;
pub mod resources;
pub mod stats;
mod stats_files;

pub use error::{Error, Result};
pub use hierarchy::{discover, layout, Hierarchy, HierarchyKind, Layout};
pub use manager::{Manager, Part};
pub use oom::OomWatcher;
pub use path::{resolve_cgroups_path, CgroupPath};
pub use stats::Stats;
pub use stats_files::StatsFiles;
