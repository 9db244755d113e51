//! How processes end: reaped exits, exits a runtime reports (gVisor), and
//! OOM kills, turned into exit records, events and woken waiters.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::task::Status;

use super::process::{Exit, ENDING_NONE, ENDING_REAPED};
use super::Service;
use crate::backend::{Backend, ExitWaiter};
use crate::events::{timestamp, Event};

/// An OOM watcher as something tokio can wait on.
struct OomFd(berth_cgroups::OomWatcher);

impl AsRawFd for OomFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd().as_raw_fd()
    }
}

impl Service {
    /// Records a reaped process: exit status, events, waiters.
    pub fn on_exit(self: &Arc<Self>, pid: i32, code: u32) {
        let mut inner = self.lock();
        let Some((cid, exec_id)) = inner.pids.remove(&pid) else {
            inner.early.insert(pid, code);
            return;
        };
        drop(inner);
        self.on_exit_of(pid, &cid, &exec_id, code);
    }

    /// Records how a process ended, found by its container and exec id
    /// (runtimes whose processes are not the shim's children report exits
    /// this way).
    pub fn on_exit_of(self: &Arc<Self>, pid: i32, cid: &str, exec_id: &str, code: u32) {
        let (cid, exec_id) = (cid.to_owned(), exec_id.to_owned());
        let mut inner = self.lock();
        let Ok(c) = inner.container_mut(&cid) else {
            return;
        };
        let bundle = c.bundle.clone();
        let oom = c.oom_killed.load(Ordering::Relaxed);
        let proc = if exec_id.is_empty() {
            &mut c.init
        } else if let Some(p) = c.execs.get_mut(&exec_id) {
            p
        } else {
            return;
        };
        if proc.exited().is_some() || proc.status == Status::STOPPED {
            // Already recorded (gVisor containers of one pod share a pid).
            return;
        }
        let _ = proc.ending.compare_exchange(
            ENDING_NONE,
            ENDING_REAPED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let drained = std::mem::take(&mut proc.io.drained);
        let exit_tx = proc.exit.clone();
        proc.status = Status::STOPPED;
        drop(inner);
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            // Logs first: a client that sees the exit must find the output complete.
            let drain = async {
                for d in drained {
                    let _ = d.await;
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
            let at = SystemTime::now();
            if exec_id.is_empty() {
                let record = serde_json::json!({"exit_status": code, "exited_at": crate::crilog::rfc3339_nano(at), "oom_killed": oom});
                let _ = std::fs::write(bundle.join("berth-exit.json"), record.to_string());
            }
            exit_tx.send_replace(Some(Exit { status: code, at }));
            let mut e = ev::TaskExit::new();
            e.container_id = cid.clone();
            e.id = if exec_id.is_empty() {
                cid.clone()
            } else {
                exec_id.clone()
            };
            e.pid = pid as u32;
            e.exit_status = code;
            e.exited_at = MessageField::some(timestamp(at));
            publisher.publish(Event::Exit(e));
        });
    }

    pub(super) fn register_pid(self: &Arc<Self>, pid: i32, cid: &str, exec_id: &str) {
        let early = {
            let mut inner = self.lock();
            inner.pids.insert(pid, (cid.to_owned(), exec_id.to_owned()));
            inner.early.remove(&pid)
        };
        if let Some(code) = early {
            self.on_exit(pid, code);
        }
    }

    /// For a container whose process is the sandbox's, not its own: asks
    /// the runtime (on a thread, it blocks) when the container ends.
    pub(super) fn wait_outside(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        pid: i32,
        wait: ExitWaiter,
    ) {
        let svc = Arc::clone(self);
        let handle = tokio::runtime::Handle::current();
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        std::thread::spawn(move || {
            let (code, helper) = wait();
            handle.spawn(async move {
                {
                    let mut inner = svc.lock();
                    // A VM's waiter learns of OOM kills with the exit.
                    let oom = inner.container(&id).ok().filter(|c| {
                        exec_id.is_empty()
                            && matches!(&*c.backend, Backend::Vm(_))
                            && c.oom_killed.load(Ordering::Relaxed)
                    });
                    if oom.is_some() {
                        let mut e = ev::TaskOOM::new();
                        e.container_id = id.clone();
                        svc.publisher.publish(Event::Oom(e));
                    }
                    // The pid is the sandbox's, shared by the pod's
                    // containers: forget it only if it is still ours.
                    if inner.pids.get(&pid).is_some_and(|(c, _)| *c == id) {
                        inner.pids.remove(&pid);
                    }
                    if let Some(helper) = helper {
                        inner.early.remove(&helper);
                    }
                }
                svc.on_exit_of(pid, &id, &exec_id, code);
            });
        });
    }

    /// Publishes the container's OOM kills and remembers that one happened.
    pub(super) fn watch_oom(
        self: &Arc<Self>,
        id: &str,
        backend: &Backend,
        pid: i32,
        flag: Arc<AtomicBool>,
    ) {
        let Ok(cgroups) = backend.cgroups(id, pid) else {
            return;
        };
        let Ok(watcher) = berth_cgroups::OomWatcher::new(&cgroups) else {
            return;
        };
        let Ok(fd) = crate::sys::async_fd(OomFd(watcher)) else {
            return;
        };
        let publisher = self.publisher.clone();
        let id = id.to_owned();
        let svc = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut fd = fd;
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                let n = guard.get_inner_mut().0.consume();
                guard.clear_ready();
                if n > 0 {
                    flag.store(true, Ordering::Relaxed);
                    let mut e = ev::TaskOOM::new();
                    e.container_id = id.clone();
                    publisher.publish(Event::Oom(e));
                }
                let gone = svc
                    .upgrade()
                    .is_none_or(|s| !s.lock().containers.contains_key(&id));
                if gone {
                    return;
                }
            }
        });
    }
}
