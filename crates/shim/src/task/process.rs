//! What the shim holds for each container and process, and how a request
//! finds them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::types::task::Status;
use oci_spec::runtime::Process;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::error::{Result, ShimError};
use crate::stdio::{IoHandle, StdioSpec};

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// Neither the exit nor the time limit has come yet.
pub(super) const ENDING_NONE: u8 = 0;
/// The process was reaped before its time limit expired.
pub(super) const ENDING_REAPED: u8 = 1;
/// The time limit expired first and the shim killed the process.
pub(super) const ENDING_TIMED_OUT: u8 = 2;

pub(super) struct Proc {
    pub(super) pid: i32,
    pub(super) status: Status,
    pub(super) stdio: StdioSpec,
    pub(super) exit: watch::Sender<Option<Exit>>,
    pub(super) io: IoHandle,
    /// An exec's process spec, until Start runs it.
    pub(super) spec: Option<Process>,
    /// An exec's time limit (probes), counted from its start.
    pub(super) timeout: Option<std::time::Duration>,
    /// ENDING_NONE, ENDING_REAPED or ENDING_TIMED_OUT: whichever of the exit
    /// and the time limit came first.
    pub(super) ending: Arc<AtomicU8>,
}

impl Proc {
    pub(super) fn new(stdio: StdioSpec) -> Proc {
        Proc {
            pid: 0,
            status: Status::CREATED,
            stdio,
            exit: watch::channel(None).0,
            io: IoHandle::default(),
            spec: None,
            timeout: None,
            ending: Arc::new(AtomicU8::new(ENDING_NONE)),
        }
    }

    /// How it ended, once it has.
    pub(super) fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }
}

pub(super) struct Container {
    pub(super) bundle: PathBuf,
    pub(super) backend: Arc<Backend>,
    pub(super) init: Proc,
    pub(super) execs: HashMap<String, Proc>,
    pub(super) rootfs_mounted: bool,
    pub(super) oom_killed: Arc<AtomicBool>,
    pub(super) stats: Arc<std::sync::Mutex<crate::backend::StatsCache>>,
}

/// How a request names a process that is not there.
pub(super) fn no_exec(id: &str, exec_id: &str) -> ShimError {
    ShimError::not_found(format_args!("exec {exec_id} of {id}"))
}

fn no_container(id: &str) -> ShimError {
    ShimError::not_found(format_args!("container {id}"))
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) containers: HashMap<String, Container>,
    /// pid -> (container id, exec id ("" for the init)).
    pub(super) pids: HashMap<i32, (String, String)>,
    /// Exits reaped before their pid was recorded (an exec that ended at once).
    pub(super) early: HashMap<i32, u32>,
}

impl Inner {
    pub(super) fn container(&self, id: &str) -> Result<&Container> {
        self.containers.get(id).ok_or_else(|| no_container(id))
    }

    pub(super) fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers.get_mut(id).ok_or_else(|| no_container(id))
    }

    /// A container and one of its processes: the init for an empty
    /// `exec_id`, else that exec.
    pub(super) fn process(&self, id: &str, exec_id: &str) -> Result<(&Container, &Proc)> {
        let c = self.container(id)?;
        let p = if exec_id.is_empty() {
            &c.init
        } else {
            c.execs.get(exec_id).ok_or_else(|| no_exec(id, exec_id))?
        };
        Ok((c, p))
    }

    pub(super) fn process_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Proc> {
        let c = self.container_mut(id)?;
        if exec_id.is_empty() {
            Ok(&mut c.init)
        } else {
            c.execs.get_mut(exec_id).ok_or_else(|| no_exec(id, exec_id))
        }
    }
}
