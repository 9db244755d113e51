//! A helper process of a VM (QEMU, virtiofsd): started with its output in
//! a log file, in a process group of its own, and watched through a pidfd,
//! so whoever reaps it (a shim that is its children's subreaper, or this
//! module) its end is seen, and signals never reach a recycled PID.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustix::process::{
    pidfd_open, pidfd_send_signal, waitid, PidfdFlags, Signal, WaitId, WaitIdOptions,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::error::VmError;

pub struct Process {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    exited: watch::Receiver<bool>,
}

impl Process {
    /// Starts `program` with `args`, stdout and stderr into `log`.
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Process, VmError> {
        let io = |what, e| VmError::Io {
            what,
            path: log.to_owned(),
            source: e,
        };
        let out = File::create(log).map_err(|e| io("creating", e))?;
        let err = out.try_clone().map_err(|e| io("duplicating", e))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A terminal's ^C to the owner does not reach it: the owner
            // decides when it ends.
            .process_group(0)
            .spawn()
            .map_err(|e| VmError::Spawn {
                program: program.to_owned(),
                source: e,
            })?;
        let pid = child.id() as i32;
        // Not waited for through `child`: the pidfd watches it.
        drop(child);
        let pidfd = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| std::io::Error::other("PID 0"))
            .and_then(|p| pidfd_open(p, PidfdFlags::empty()).map_err(Into::into))
            .map_err(|e| VmError::Spawn {
                program: program.to_owned(),
                source: e,
            })?;
        let pidfd = Arc::new(pidfd);
        let exited = watch_exit(Arc::clone(&pidfd))?;
        Ok(Process { pid, pidfd, exited })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Writes the PID to `path`, for [`kill_recorded`] by an owner that
    /// lost this handle (a restarted shim).
    pub fn record(&self, path: &Path) -> Result<(), VmError> {
        std::fs::write(path, self.pid.to_string()).map_err(|e| VmError::Io {
            what: "writing",
            path: path.to_owned(),
            source: e,
        })
    }

    pub fn is_running(&self) -> bool {
        !*self.exited.borrow()
    }

    /// A watch that turns true when the process has exited.
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.exited.clone()
    }

    /// Resolves when the process has exited.
    pub async fn wait(&self) {
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(|gone| *gone).await;
    }

    pub fn signal(&self, signal: Signal) {
        let _ = pidfd_send_signal(self.pidfd.as_fd(), signal);
    }

    /// SIGKILL to its process group, and wait for its end. The group
    /// takes the children it forked along (virtiofsd's sandbox child,
    /// which would otherwise end only on its parent-death SIGTERM, a
    /// moment later).
    pub async fn kill(&self) {
        if self.is_running() {
            kill_group(self.pid);
        }
        self.signal(Signal::KILL);
        self.wait().await;
    }
}

/// A watch that turns true when the process behind `pidfd` has exited
/// (reaped here unless someone else already did).
fn watch_exit(pidfd: Arc<OwnedFd>) -> Result<watch::Receiver<bool>, VmError> {
    let (tx, rx) = watch::channel(false);
    let registered = PidfdReadiness(Arc::clone(&pidfd));
    // SAFETY: the descriptor is owned by the Arc held inside the AsyncFd,
    // so it stays open and the same for as long as it is registered.
    let readable = unsafe { AsyncFd::register(registered) }.map_err(|e| VmError::Io {
        what: "watching",
        path: PathBuf::from("a pidfd"),
        source: e.into_parts().1,
    })?;
    tokio::spawn(async move {
        let _ = readable.readable().await.map(|mut g| g.clear_ready());
        let _ = waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
        let _ = tx.send(true);
    });
    Ok(rx)
}

struct PidfdReadiness(Arc<OwnedFd>);

impl std::os::fd::AsRawFd for PidfdReadiness {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self.0)
    }
}

/// The last lines of a log, for an error message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    let mut out: Vec<&str> = lines.into_iter().rev().collect();
    if out.is_empty() {
        out.push("(nothing)");
    }
    format!(
        "[{}] {}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        out.join(" | ")
    )
}

/// Kills the process whose PID `pid_file` holds, if it still runs and its
/// command line names `owner_dir` (a recycled PID is left alone), and waits
/// (up to 10 s) for its end.
pub fn kill_recorded(pid_file: &Path, owner_dir: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) else {
        return;
    };
    // Checked after the pidfd is open: the PID cannot be recycled under it.
    let cmdline =
        std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
    let needle = owner_dir.to_string_lossy();
    if !String::from_utf8_lossy(&cmdline).contains(needle.as_ref()) {
        return;
    }
    kill_group(pid.as_raw_nonzero().get());
    let _ = pidfd_send_signal(pidfd.as_fd(), Signal::KILL);
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let limit = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    let _ = rustix::event::poll(&mut fds, Some(&limit));
    let _ = waitid(
        WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    );
}

/// SIGKILL to the process group `leader` leads (each helper is spawned
/// leading a group of its own). Called only while the leader is not reaped,
/// so the group's ID cannot name someone else's group.
fn kill_group(leader: i32) {
    if let Some(pgid) = rustix::process::Pid::from_raw(leader) {
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    }
}
