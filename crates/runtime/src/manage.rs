//! Operations on a container's cgroup: update, pause, resume, ps, events.

use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use crate::error::Op;
use crate::state::Status;
use crate::{Error, Result, Runtime};

/// One line of `berth events`, in runc's format.
#[derive(Debug, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<berth_cgroups::Stats>,
}

impl Runtime {
    /// The container's cgroups (for a monitor's stats and OOM watch).
    pub fn cgroups(&self, id: &str) -> Result<berth_cgroups::Manager> {
        let (state, _) = self.load(id)?;
        Ok(state.cgroups())
    }

    /// `update`: applies new resource limits to a live container.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let (state, dir) = self.load(id)?;
        let status = state.status(&dir);
        if status == Status::Stopped {
            return Err(Error::wrong_state(id, status, Op::Update));
        }
        state.cgroups().apply(resources)?;
        Ok(())
    }

    /// `pause`: freezes every process of the container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let (state, dir) = self.load(id)?;
        let status = state.status(&dir);
        // runc pauses a created container too (its init waits frozen).
        if status != Status::Running && status != Status::Created {
            return Err(Error::wrong_state(id, status, Op::Pause));
        }
        state.cgroups().freeze()?;
        Ok(())
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let (state, dir) = self.load(id)?;
        let status = state.status(&dir);
        if status != Status::Paused {
            return Err(Error::wrong_state(id, status, Op::Resume));
        }
        state.cgroups().thaw()?;
        Ok(())
    }

    /// The pids of every process in the container (`ps`), sub-cgroups the
    /// container made included, as runc lists them. A stopped container
    /// whose cgroup is already gone has none.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let (state, _) = self.load(id)?;
        all_pids(&state.cgroups())
    }

    /// Resource usage of a container (`events --stats`).
    pub fn stats(&self, id: &str) -> Result<Event> {
        let (state, dir) = self.load(id)?;
        if state.status(&dir) == Status::Stopped {
            return Err(Error::wrong_state(id, Status::Stopped, Op::Stats));
        }
        Ok(Event {
            kind: "stats",
            id: id.to_owned(),
            data: Some(state.cgroups().stats()?),
        })
    }

    /// `events`: calls `emit` with a stats event every `interval` and an
    /// "oom" event whenever the container hits its memory limit, until the
    /// container stops or `emit` returns false.
    pub fn events(
        &self,
        id: &str,
        interval: Duration,
        mut emit: impl FnMut(&Event) -> bool,
    ) -> Result<()> {
        let (state, dir) = self.load(id)?;
        let cgroups = state.cgroups();
        let mut oom = berth_cgroups::OomWatcher::new(&cgroups).ok();
        loop {
            if state.status(&dir) == Status::Stopped {
                return Ok(());
            }
            let event = Event {
                kind: "stats",
                id: id.to_owned(),
                data: Some(cgroups.stats()?),
            };
            if !emit(&event) {
                return Ok(());
            }
            let deadline = std::time::Instant::now() + interval;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let ready = match &oom {
                    Some(w) => {
                        let mut fds = [rustix::event::PollFd::from_borrowed_fd(
                            w.fd(),
                            rustix::event::PollFlags::IN,
                        )];
                        let ts = rustix::event::Timespec {
                            tv_sec: left.as_secs() as i64,
                            tv_nsec: left.subsec_nanos() as i64,
                        };
                        matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
                    }
                    None => {
                        std::thread::sleep(left);
                        false
                    }
                };
                if ready {
                    let count = oom.as_mut().map(|w| w.consume()).unwrap_or(0);
                    for _ in 0..count.max(1) {
                        let event = Event {
                            kind: "oom",
                            id: id.to_owned(),
                            data: None,
                        };
                        if !emit(&event) {
                            return Ok(());
                        }
                    }
                }
                if state.status(&dir) == Status::Stopped {
                    return Ok(());
                }
            }
        }
    }
}

/// Every process in the cgroup and the cgroups below it, in any hierarchy,
/// sorted and without duplicates.
pub(crate) fn all_pids(cgroups: &berth_cgroups::Manager) -> Result<Vec<i32>> {
    let mut pids = cgroups.procs()?;
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for (_, top) in cgroups.paths() {
        push_subdirs(top, &mut dirs);
    }
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        push_subdirs(&dir, &mut dirs);
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn push_subdirs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
}
