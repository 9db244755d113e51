//! Every process the agent starts is waited for here, and as PID 1 so is
//! every process the guest orphans. One place calls waitpid(-1): a second
//! waiter (tokio::process, std's Child::wait) would steal exit statuses.
//! Spawning and reaping take the same lock, so an exit cannot be reaped
//! before its waiter is registered (and a failed exec, which std reaps
//! itself inside spawn, is never reaped here).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::{wait, WaitOptions};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal (as a shell reports it).
    pub code: i32,
    /// The terminating signal, 0 if the process exited.
    pub signal: i32,
}

/// Exits of processes nobody waited for yet, kept this long: a container's
/// init becomes the agent's child when `berth create` exits, and may end
/// before its PID is read from the PID file and watched.
const UNCLAIMED_FOR: Duration = Duration::from_secs(30);
const UNCLAIMED_MAX: usize = 1024;

#[derive(Default)]
struct Waiting {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: VecDeque<(i32, Exit, Instant)>,
}

#[derive(Clone)]
pub struct Reaper {
    waiting: Arc<Mutex<Waiting>>,
}

impl Reaper {
    /// Starts reaping every child on SIGCHLD: the agent is PID 1 or a
    /// subreaper, and its children are its own or left to it.
    pub fn start() -> io::Result<Reaper> {
        let reaper = Reaper {
            waiting: Arc::new(Mutex::new(Waiting::default())),
        };
        let mut children = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap();
                if children.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `command`; the receiver gets its exit.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut waiting = self.lock();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// The exit of `pid`, a process the agent inherited (a container's
    /// init or exec once `berth` that started it exited).
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        let fresh = |at: &Instant| at.elapsed() < UNCLAIMED_FOR;
        if let Some(i) = waiting
            .unclaimed
            .iter()
            .position(|(p, _, at)| *p == pid && fresh(at))
        {
            let (_, exit, _) = waiting.unclaimed.remove(i).unwrap_or((
                pid,
                Exit {
                    code: 255,
                    signal: 0,
                },
                Instant::now(),
            ));
            let _ = tx.send(exit);
        } else {
            waiting.waiters.insert(pid, tx);
        }
        rx
    }

    fn reap(&self) {
        let mut waiting = self.lock();
        loop {
            // wait(2), any child: waitpid(None) would be waitpid(0), only
            // children in the agent's process group, and a process that
            // made its own session (one with a terminal) would stay a zombie.
            let Ok(Some((pid, status))) = wait(WaitOptions::NOHANG) else {
                return;
            };
            let exit = match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => Exit { code, signal: 0 },
                (None, Some(sig)) => Exit {
                    code: 128 + sig,
                    signal: sig,
                },
                (None, None) => continue,
            };
            let pid = pid.as_raw_nonzero().get();
            if let Some(tx) = waiting.waiters.remove(&pid) {
                let _ = tx.send(exit);
            } else {
                let now = Instant::now();
                waiting
                    .unclaimed
                    .retain(|(_, _, at)| now.duration_since(*at) < UNCLAIMED_FOR);
                if waiting.unclaimed.len() >= UNCLAIMED_MAX {
                    waiting.unclaimed.pop_front();
                }
                waiting.unclaimed.push_back((pid, exit, now));
            }
        }
    }
}
