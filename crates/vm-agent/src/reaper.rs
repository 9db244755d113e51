//! Every process the agent starts is waited for here, and as PID 1 so is
//! every process the guest orphans. One place calls waitpid(-1): a second
//! waiter (tokio::process, std's Child::wait) would steal exit statuses.
//! Spawning and reaping take the same lock, so an exit cannot be reaped
//! before its waiter is registered (and a failed exec, which std reaps
//! itself inside spawn, is never reaped here).

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::process::{waitpid, WaitOptions};
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

#[derive(Clone)]
pub struct Reaper {
    waiting: Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD. `orphans`: also reap processes nobody
    /// waits for (PID 1's duty).
    pub fn start(orphans: bool) -> io::Result<Reaper> {
        let reaper = Reaper {
            waiting: Arc::new(Mutex::new(HashMap::new())),
        };
        let mut children = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap(orphans);
                if children.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<Exit>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `command`; the receiver gets its exit.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut waiting = self.lock();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    fn reap(&self, orphans: bool) {
        let mut waiting = self.lock();
        loop {
            let next = if orphans {
                waitpid(None, WaitOptions::NOHANG)
            } else {
                // Only our own children: look at each one we wait for.
                match waiting.keys().copied().find_map(|pid| {
                    match rustix::process::Pid::from_raw(pid) {
                        Some(p) => match waitpid(Some(p), WaitOptions::NOHANG) {
                            Ok(Some(done)) => Some(Ok(Some(done))),
                            Ok(None) => None,
                            Err(e) => Some(Err(e)),
                        },
                        None => None,
                    }
                }) {
                    Some(r) => r,
                    None => Ok(None),
                }
            };
            let Ok(Some((pid, status))) = next else {
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
            if let Some(tx) = waiting.remove(&pid.as_raw_nonzero().get()) {
                let _ = tx.send(exit);
            }
        }
    }
}
