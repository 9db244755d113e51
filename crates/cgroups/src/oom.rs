//! OOM notifications: the v1 memory.oom_control eventfd, or inotify on the
//! v2 memory.events file.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::fs;
use crate::{Error, Manager, Result};

enum Source {
    V1 { _control: OwnedFd },
    V2 { dir: PathBuf },
}

/// Becomes readable when the cgroup hits OOM; `consume` says how many times.
pub struct OomWatcher {
    fd: OwnedFd,
    source: Source,
    seen: u64,
}

fn io_err(path: PathBuf) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::Read {
        path,
        source: e.into(),
    }
}

impl OomWatcher {
    pub fn new(m: &Manager) -> Result<OomWatcher> {
        if let Some(dir) = m.v1_path("memory") {
            let efd = rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )
            .map_err(io_err(dir.join("cgroup.event_control")))?;
            let control_path = dir.join("memory.oom_control");
            let control = rustix::fs::open(
                &control_path,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(io_err(control_path.clone()))?;
            use std::os::fd::AsRawFd;
            fs::write(
                dir,
                "cgroup.event_control",
                format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
            )?;
            return Ok(OomWatcher {
                fd: efd,
                source: Source::V1 { _control: control },
                seen: m.oom_kill_count(),
            });
        }
        let dir = m
            .unified_path()
            .ok_or_else(|| Error::Unsupported("no memory controller to watch for OOM".into()))?
            .to_owned();
        let ino = rustix::fs::inotify::init(
            rustix::fs::inotify::CreateFlags::CLOEXEC | rustix::fs::inotify::CreateFlags::NONBLOCK,
        )
        .map_err(io_err(dir.join("memory.events")))?;
        rustix::fs::inotify::add_watch(
            &ino,
            dir.join("memory.events"),
            rustix::fs::inotify::WatchFlags::MODIFY,
        )
        .map_err(io_err(dir.join("memory.events")))?;
        let seen = m.oom_kill_count();
        Ok(OomWatcher {
            fd: ino,
            source: Source::V2 { dir },
            seen,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Drains the notification and returns the number of new OOM events.
    pub fn consume(&mut self) -> u64 {
        let mut buf = [0u8; 4096];
        match &self.source {
            Source::V1 { .. } => {
                let mut count = [0u8; 8];
                match rustix::io::read(&self.fd, &mut count) {
                    Ok(8) => u64::from_ne_bytes(count),
                    _ => 0,
                }
            }
            Source::V2 { dir } => {
                while rustix::io::read(&self.fd, &mut buf).is_ok_and(|n| n > 0) {}
                let now = fs::read_keyed(dir, "memory.events")
                    .ok()
                    .and_then(|e| fs::keyed(&e, "oom_kill").or(fs::keyed(&e, "oom")))
                    .unwrap_or(self.seen);
                let new = now.saturating_sub(self.seen);
                self.seen = now;
                new
            }
        }
    }
}
