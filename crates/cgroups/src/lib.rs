//! Cgroup management for berth: hierarchy discovery (v1, v2 and hybrid hosts),
//! resolution of an OCI `cgroupsPath`, creation, process placement and removal.
//!
//! The library is synchronous and free of global state so that the runtime can
//! call it from a forked child as well as from the parent.

mod error;
mod hierarchy;
mod manager;
mod path;

pub use error::{Error, Result};
pub use hierarchy::{discover, layout, Hierarchy, HierarchyKind, Layout};
pub use manager::Manager;
pub use path::{resolve_cgroups_path, CgroupPath};
