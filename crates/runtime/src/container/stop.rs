//! `kill` and `delete`, and the signalling and waiting they share.

use std::time::{Duration, Instant};

use super::Runtime;
use crate::error::{Context, Op};
use crate::state::{hook_state, State, Status};
use crate::{hooks, sys, Error, Result};

impl Runtime {
    /// `kill`: sends `signal` to the init, or with `all` to every process
    /// in the container's cgroup. As with runc, the init of a stopped
    /// container cannot be signalled ("container not running", which
    /// containerd reads as "process already finished"), but `all` still
    /// reaches whatever is left in its cgroup, and does nothing once the
    /// cgroup is gone.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let (state, dir) = self.load(id)?;
        let status = state.status(&dir);
        if all {
            if status == Status::Stopped && !state.cgroups().exists() {
                return Ok(());
            }
            return signal_all(&state, signal);
        }
        if status == Status::Stopped {
            return Err(Error::wrong_state(id, status, Op::Kill));
        }
        signal_init(&state, signal)?;
        if status == Status::Paused && signal == libc::SIGKILL {
            // A frozen process acts on SIGKILL only once thawed (runc thaws too).
            thaw(&state);
        }
        Ok(())
    }

    /// `delete`: removes a stopped or created (or, with `force`, any)
    /// container: kills what is left of it, runs poststop hooks, removes
    /// its cgroup and state. As runc's, it fails only for a container that
    /// does not exist or is running or paused without `force`; a cgroup
    /// that cannot be removed is logged as an error, the state goes anyway.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let (state, dir) = match self.load(id) {
            Ok(x) => x,
            // A container that was never fully created, or whose state file is
            // unreadable: with --force, clear what is there.
            Err(Error::ContainerNotFound(_) | Error::ParseConfig { .. }) if force => {
                // runc succeeds here; leave nothing behind of a half-made container.
                let dir = self.state_dir(id);
                let _ = std::fs::remove_dir_all(&dir.path);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let status = state.status(&dir);
        match status {
            Status::Stopped => {}
            Status::Created | Status::Creating => {
                let _ = signal_init(&state, libc::SIGKILL);
                wait_gone(&state);
            }
            Status::Running | Status::Paused if force => {
                let _ = signal_init(&state, libc::SIGKILL);
                if let Err(e) = signal_all(&state, libc::SIGKILL) {
                    log::warn!("killing the processes of {id}: {e}");
                }
                wait_gone(&state);
            }
            Status::Running | Status::Paused => {
                return Err(Error::wrong_state(id, status, Op::Delete))
            }
        }
        // What is left in the cgroup is killed, as runc's destroy does, when
        // the container has no PID namespace of its own (its processes
        // outlive its init) or with --force: a cgroup holding processes
        // cannot be removed. (A container's own PID namespace dies with its
        // init; what else sits in its cgroup is not the container's.)
        let cgroups = state.cgroups();
        let kill_leftovers = || {
            if let Err(e) = signal_all(&state, libc::SIGKILL) {
                log::warn!("killing the processes left in {id}'s cgroup: {e}");
            }
            wait_cgroup_empty(&cgroups);
        };
        // A stopped container with its own PID namespace has nothing left
        // (the kernel killed the namespace with its init): its cgroup is
        // removed at once, without walking it for processes (`run` ends
        // this way every time); only if that fails are leftovers killed.
        let quiet = status == Status::Stopped && state.own_pid_ns;
        if !quiet && (force || !state.own_pid_ns) && cgroups.exists() {
            kill_leftovers();
        }
        let mut removed = cgroups.remove();
        if removed.is_err() && quiet && force {
            kill_leftovers();
            removed = cgroups.remove();
        }
        let hook_input = hook_state(id, Status::Stopped, 0, &state.bundle, &state.annotations);
        hooks::run_hooks_warn("poststop", &state.poststop, &hook_input);
        dir.remove()
            .ctx(|| format!("removing {}", dir.path.display()))?;
        if let Err(e) = removed {
            log::error!("removing the cgroup of {id}: {e}");
        }
        Ok(())
    }
}

/// Signals the init through a pidfd, after checking it is still our init.
fn signal_init(state: &State, signal: i32) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(state.init_pid)
        .ok_or_else(|| Error::Init("bad init pid".into()))?;
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e).ctx(|| format!("opening process {}", state.init_pid)),
    };
    if !state.init_alive() || signal == 0 {
        // Signal 0 only asks whether the init exists (runc's `kill ID 0`).
        return Ok(());
    }
    let sig = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| Error::UnknownSignal(signal.to_string()))?;
    match rustix::process::pidfd_send_signal(&pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("signalling the container init ({})", state.init_pid)),
    }
}

/// Waits (up to 10 s) for the init to be gone.
fn wait_gone(state: &State) {
    let Some(pid) = rustix::process::Pid::from_raw(state.init_pid) else {
        return;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.init_alive() && Instant::now() < deadline {
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }
}

/// Signals every process in the container's cgroup (and the cgroups below
/// it). Processes forked meanwhile are caught by further passes, until one
/// finds nobody new; after SIGKILL a frozen cgroup is thawed so that its
/// processes can die.
fn signal_all(state: &State, signal: i32) -> Result<()> {
    let cgroups = state.cgroups();
    let mut signalled = std::collections::HashSet::new();
    for _ in 0..16 {
        let fresh: Vec<i32> = crate::manage::all_pids(&cgroups)?
            .into_iter()
            .filter(|pid| signalled.insert(*pid))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            match sys::kill(pid, signal) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e).ctx(|| format!("signalling process {pid}")),
            }
        }
    }
    if signal == libc::SIGKILL {
        thaw(state);
    }
    Ok(())
}

/// Waits (up to 5 s) for the processes of a cgroup to be gone.
fn wait_cgroup_empty(cgroups: &berth_cgroups::Manager) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut delay = Duration::from_micros(200);
    while crate::manage::all_pids(cgroups).is_ok_and(|p| !p.is_empty()) && Instant::now() < deadline
    {
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

fn thaw(state: &State) {
    for (key, path) in &state.cgroup_paths {
        if key.split(',').any(|c| c == "freezer") {
            let _ = std::fs::write(path.join("freezer.state"), "THAWED");
        } else if key.is_empty() {
            let _ = std::fs::write(path.join("cgroup.freeze"), "0");
        }
    }
}
