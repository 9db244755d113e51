//! StartContainer and StopContainer, and the watcher that records how
//! each started container ends.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use k8s_cri::v1 as cri;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::shims::SECOND;
use crate::store::ContainerState;
use crate::util::now_ns;

use super::{blocking, recovery::exit_record, Cri, UNKNOWN_EXIT};

impl Cri {
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let id = self.store.resolve_container(id)?;
        let c = self
            .store
            .container(&id)
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        if c.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                c.state
            )));
        }
        let address = self.shim_address_of(&c)?;
        let (tx, rx) = watch::channel(false);
        self.exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), rx);
        let mut start = api::StartRequest::new();
        start.id = id.clone();
        // Stamped before the process is released: a process that exits at
        // once must not look as if it finished before it started.
        let started_at = now_ns();
        let result = match self.nri_start_container(&c).await {
            Ok(()) => self.shims.start_task(&address, &start, 60 * SECOND).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => {
                self.store.update_container(&id, |c| {
                    c.state = ContainerState::Running;
                    c.started_at = started_at;
                    c.pid = r.pid;
                })?;
                self.spawn_waiter(id.clone(), address, tx);
                self.emit(
                    &id,
                    cri::ContainerEventType::ContainerStartedEvent,
                    &c.pod_id,
                );
                self.nri_post_start_container(&id).await;
                Ok(())
            }
            Err(e) => {
                self.exits
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                let msg = e.to_string();
                let _ = self.store.update_container(&id, |c| {
                    c.state = ContainerState::Exited;
                    c.finished_at = now_ns();
                    c.exit_code = 128;
                    c.reason = "StartError".into();
                    c.message = msg;
                });
                Err(e)
            }
        }
    }

    /// Waits for a container's exit in the background and records it.
    pub(super) fn spawn_waiter(
        self: &Arc<Self>,
        id: String,
        address: String,
        done: watch::Sender<bool>,
    ) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let (code, at) = match this.wait_task(&address, &id).await {
                Ok(r) => {
                    let at = r
                        .exited_at
                        .as_ref()
                        .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
                        .unwrap_or_else(now_ns);
                    (r.exit_status as i32, at)
                }
                Err(Error::NotFound(_)) => (UNKNOWN_EXIT, now_ns()),
                Err(e) => {
                    tracing::warn!(container = %id, "waiting for the exit: {e}");
                    let bundle = this
                        .store
                        .container(&id)
                        .map(|c| c.bundle)
                        .unwrap_or_default();
                    let code = exit_record(&bundle).map(|(c, _)| c);
                    if code.is_none() {
                        this.end_after_dead_shim(&id, &bundle).await;
                    }
                    (code.unwrap_or(UNKNOWN_EXIT), now_ns())
                }
            };
            let oom = match this.shims.client(&address).await {
                Ok(client) => client
                    .report(&id, "")
                    .await
                    .map(|r| r.oom_killed)
                    .unwrap_or(false),
                Err(_) => false,
            };
            this.record_exit_persistently(&id, code, at, oom).await;
            // Before StopContainer, waiting on `done`, answers.
            this.nri_stop_container(&id).await;
            let _ = done.send(true);
            this.exits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    /// Waits in the background for a pod's sandbox task to end: a sandbox
    /// that ends while the pod is ready (gVisor's sandbox or a pod's VM
    /// killed, QEMU crashed) leaves the pod not ready, as kubelet must see
    /// to recreate it.
    pub(super) fn watch_sandbox(self: &Arc<Self>, pod_id: String, address: String) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // An error: the task or its shim is gone, and so is the sandbox.
            let code = this
                .wait_task(&address, &pod_id)
                .await
                .ok()
                .map(|r| r.exit_status);
            let lock = this.pod_lock(&pod_id);
            let _guard = lock.lock().await;
            let was_ready = this
                .store
                .pod(&pod_id)
                .is_some_and(|p| p.state == crate::store::PodState::Ready && p.pause_pid.is_some());
            if !was_ready {
                return;
            }
            tracing::warn!(pod = %pod_id, exit = ?code, "the pod's sandbox ended: the pod is not ready");
            let _ = this
                .store
                .update_pod(&pod_id, |p| p.state = crate::store::PodState::NotReady);
            this.emit(
                &pod_id,
                cri::ContainerEventType::ContainerStoppedEvent,
                &pod_id,
            );
        });
    }

    /// Waits for a task's exit. A broken connection is retried a few times
    /// before the shim is taken for gone, unless its socket refuses
    /// connections already (a killed shim): a task that ended with it must
    /// not be reported running for seconds more (bench/soak). NotFound and
    /// the last error are the caller's.
    async fn wait_task(&self, address: &str, id: &str) -> Result<api::WaitResponse> {
        let mut wait = api::WaitRequest::new();
        wait.id = id.to_owned();
        let mut failures = 0;
        loop {
            match self.shims.wait(address, &wait, 0).await {
                Err(e) if !matches!(e, Error::NotFound(_)) => {
                    failures += 1;
                    if failures > 5 || crate::shims::socket_refuses(address) {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(200 * failures)).await;
                }
                answer => return answer,
            }
        }
    }

    /// The container's shim died with it still running (killed, OOM):
    /// nothing reaps it any more, so it must not run on while CRI reports
    /// it exited. The shim binary's `delete` kills and deletes it, as
    /// containerd's cleanup after a dead shim does (bench/soak's shim-kill).
    async fn end_after_dead_shim(&self, id: &str, bundle: &Path) {
        let handler = self
            .store
            .container(id)
            .and_then(|c| self.store.pod(&c.pod_id))
            .and_then(|p| self.config.handler(&p.runtime_handler))
            .unwrap_or_default();
        if let Err(e) = self.shims.delete(&handler, id, bundle).await {
            tracing::warn!(container = %id, "ending a container whose shim died: {e}");
        }
    }

    /// record_exit until the record is written: a full disk must not turn
    /// an exit into a container reported running for ever (bench/soak).
    pub(super) async fn record_exit_persistently(&self, id: &str, code: i32, at: i64, oom: bool) {
        let mut warned = false;
        loop {
            match self.record_exit(id, code, at, oom) {
                Ok(()) | Err(Error::NotFound(_)) => return,
                Err(e) => {
                    if !warned {
                        tracing::warn!(container = %id, code, "recording the exit, will retry: {e}");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    pub(super) fn record_exit(&self, id: &str, code: i32, at: i64, oom: bool) -> Result<()> {
        let c = self.store.update_container(id, |c| {
            if c.state == ContainerState::Exited {
                return;
            }
            c.state = ContainerState::Exited;
            c.exit_code = code;
            // The wall clock may have stepped back meanwhile.
            c.finished_at = at.max(c.started_at);
            c.reason = if oom {
                "OOMKilled".into()
            } else if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
        })?;
        tracing::info!(container = %id, code, oom, "container exited");
        self.emit(
            id,
            cri::ContainerEventType::ContainerStoppedEvent,
            &c.pod_id,
        );
        Ok(())
    }

    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout_s: i64) -> Result<()> {
        let Ok(id) = self.store.resolve_container(id) else {
            return Ok(());
        };
        let Some(c) = self.store.container(&id) else {
            return Ok(());
        };
        if c.state != ContainerState::Running {
            if c.state == ContainerState::Created {
                // Never started: nothing runs but its init waiting for
                // start; end it so that it exits.
                if let Ok(address) = self.shim_address_of(&c) {
                    let mut kill = api::KillRequest::new();
                    kill.id = id.clone();
                    kill.signal = 9;
                    let _ = self.shims.kill(&address, &kill, 10 * SECOND).await;
                }
                self.record_exit(&id, 137, now_ns(), false)?;
                self.nri_stop_container(&id).await;
            }
            return Ok(());
        }
        let address = self.shim_address_of(&c)?;
        let mut rx = self
            .exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        let kill = |signal: u32| {
            let mut k = api::KillRequest::new();
            k.id = id.clone();
            k.signal = signal;
            k
        };
        let wait_exit = |rx: &mut Option<watch::Receiver<bool>>, d: Duration| {
            let mut rx = rx.clone();
            async move {
                let Some(rx) = rx.as_mut() else { return true };
                tokio::time::timeout(d, async {
                    while !*rx.borrow_and_update() {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await
                .is_ok()
            }
        };
        if timeout_s > 0 {
            let images = Arc::clone(&self.images);
            let image_id = c.image_id.clone();
            let stop_signal = blocking(move || Ok(images.status(&image_id)?))
                .await
                .ok()
                .flatten()
                .and_then(|i| i.config.stop_signal)
                .and_then(|s| berth_common::signal::parse_signal(&s).ok())
                .unwrap_or(15);
            match self
                .shims
                .kill(&address, &kill(stop_signal as u32), 10 * SECOND)
                .await
            {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(container = %id, "sending the stop signal: {e}"),
            }
            if wait_exit(&mut rx, Duration::from_secs(timeout_s as u64)).await {
                return Ok(());
            }
        }
        let mut k = kill(9);
        k.all = true;
        match self.shims.kill(&address, &k, 10 * SECOND).await {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => tracing::warn!(container = %id, "SIGKILL: {e}"),
        }
        if !wait_exit(&mut rx, Duration::from_secs(30)).await {
            return Err(Error::DeadlineExceeded(format!(
                "container {id} did not exit after SIGKILL"
            )));
        }
        Ok(())
    }
}
