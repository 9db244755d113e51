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
pub mod backend;
pub mod client;
pub mod crilog;
mod events;
pub mod logger;
pub mod metrics;
mod reaper;
pub mod start;
mod stdio;
mod sys;
pub mod task;

pub use args::Args;

/// containerd's names for the task service.
pub const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
pub const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";

/// The annotation CRI daemons put on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
