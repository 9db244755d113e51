//! containerd-shim-berth-v2: the per-pod monitor. It speaks containerd's
//! shim v2 task API over ttrpc (both `containerd.task.v2.Task` and
//! `containerd.task.v3.Task`), holds each container's stdio, logs and exit
//! status, and outlives its client. Containers of the berth handler run
//! through berth-runtime in this process; other handlers through their OCI
//! runtime binary.
//!
//! The shim is single-threaded on purpose: the runtime library forks, and
//! a fork of a multi-threaded process may only call async-signal-safe code.

pub mod args;
mod attach;
pub mod backend;
/// The shim's client, kept here under its old path for the shim's tests.
pub use berth_shim_client as client;
pub mod crilog;
pub mod error;
mod events;
pub mod extension;
pub mod logger;
pub mod metrics;
mod reaper;
pub mod start;
mod stdio;
mod sys;
pub mod task;
pub mod vm;

pub use args::Args;

/// Where a shim runs its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// On the host: berth in process, or another OCI runtime's binary.
    Berth,
    /// In one microVM per pod (`containerd-shim-berth-vm-v2`).
    Vm,
}
pub use error::{Result, ShimError};

/// containerd's names for the task service.
pub use berth_shim_client::{TASK_SERVICE_V2, TASK_SERVICE_V3};

/// The annotation CRI daemons put on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
