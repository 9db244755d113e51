//! What berthd finds after a restart: shims reconnected, exits recorded,
//! orphans reaped.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use containerd_shim_protos::api;
use tokio::sync::watch;

use crate::error::Error;
use crate::sandbox::{self};
use crate::shims::SECOND;
use crate::store::{ContainerState, PodState};
use crate::util::{self, now_ns};

use super::{read_owner, Cri, UNKNOWN_EXIT};

impl Cri {
    /// Ends a task a crash left without a record: its shim (found again
    /// through `start`, which returns the pod's running shim) kills and
    /// deletes it. The shim is asked to leave unless it is the one the
    /// record of `live_pod` names: a crash between starting a pod's shim
    /// and recording it leaves a shim no one would ever stop.
    pub(super) async fn reap_orphan(&self, id: &str, bundle: &Path, live_pod: Option<&str>) {
        if !bundle.join("config.json").exists() {
            return;
        }
        let handler = read_owner(bundle)
            .and_then(|(_, h)| self.config.handler(&h))
            .unwrap_or_default();
        let address = match self.shims.start(&handler, id, bundle).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(task = %id, "finding the shim of an orphan task: {e}");
                return;
            }
        };
        self.end_task(&address, id).await;
        if let Err(e) = self.shims.delete(&handler, id, bundle).await {
            tracing::debug!(task = %id, "shim delete: {e}");
        }
        let serves_its_pod = live_pod
            .and_then(|pod| self.store.pod(pod))
            .is_some_and(|pod| pod.shim_address.as_deref() == Some(address.as_str()));
        if !serves_its_pod {
            self.shims.shutdown(&address).await;
        }
    }

    /// After a restart: reconnect to running containers' shims, record how
    /// the others ended, and remove what no record refers to.
    pub(super) async fn recover(self: &Arc<Self>) {
        for pod in self.store.pods() {
            if pod.state == PodState::Ready {
                let pinned_ok = [
                    &pod.namespaces.net,
                    &pod.namespaces.ipc,
                    &pod.namespaces.uts,
                ]
                .iter()
                .all(|p| p.as_ref().is_none_or(|p| p.exists()))
                    && pod
                        .pause_pid
                        .is_none_or(|pid| Path::new(&format!("/proc/{pid}/ns/pid")).exists());
                if !pinned_ok {
                    tracing::warn!(pod = %pod.id, "its namespaces are gone: marking it not ready");
                    let _ = self
                        .store
                        .update_pod(&pod.id, |p| p.state = PodState::NotReady);
                } else if let (Some(_), Some(address)) = (pod.pause_pid, &pod.shim_address) {
                    self.watch_sandbox(pod.id.clone(), address.clone());
                }
            }
        }
        for c in self.store.containers() {
            if c.state == ContainerState::Exited {
                continue;
            }
            let address = self.store.pod(&c.pod_id).and_then(|p| p.shim_address);
            let mut state = None;
            if let Some(address) = &address {
                let mut req = api::StateRequest::new();
                req.id = c.id.clone();
                state = self.shims.state(address, &req, 5 * SECOND).await.ok();
            }
            match (state, address) {
                (Some(s), Some(address)) => {
                    use containerd_shim_protos::types::task::Status;
                    match s.status.enum_value() {
                        Ok(Status::RUNNING) | Ok(Status::PAUSED) | Ok(Status::PAUSING) => {
                            let (tx, rx) = watch::channel(false);
                            self.exits
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(c.id.clone(), rx);
                            if c.state != ContainerState::Running {
                                let _ = self
                                    .store
                                    .update_container(&c.id, |r| r.state = ContainerState::Running);
                            }
                            self.spawn_waiter(c.id.clone(), address, tx);
                        }
                        Ok(Status::STOPPED) => {
                            let oom = match self.shims.client(&address).await {
                                Ok(cl) => cl
                                    .report(&c.id, "")
                                    .await
                                    .map(|r| r.oom_killed)
                                    .unwrap_or(false),
                                Err(_) => false,
                            };
                            let at = s
                                .exited_at
                                .as_ref()
                                .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
                                .unwrap_or_else(now_ns);
                            let code = s.exit_status as i32;
                            match self.record_exit(&c.id, code, at, oom) {
                                Ok(()) | Err(Error::NotFound(_)) => {}
                                // A full disk: retried in the background,
                                // not by holding berthd's start-up.
                                Err(_) => {
                                    let this = Arc::clone(self);
                                    let id = c.id.clone();
                                    tokio::spawn(async move {
                                        this.record_exit_persistently(&id, code, at, oom).await;
                                    });
                                }
                            }
                        }
                        _ => {}
                    }
                }
                _ => {
                    // The shim is gone: the exit record on disk is all there is.
                    let (code, oom) = exit_record(&c.bundle).unwrap_or((UNKNOWN_EXIT, false));
                    if let Some(pod) = self.store.pod(&c.pod_id) {
                        if let Ok(h) = self.handler(&pod.runtime_handler) {
                            let _ = self.shims.delete(&h, &c.id, &c.bundle).await;
                        }
                    }
                    let _ = self.store.update_container(&c.id, |r| {
                        r.state = ContainerState::Exited;
                        r.exit_code = code;
                        r.finished_at = now_ns();
                        r.reason = if oom {
                            "OOMKilled".into()
                        } else if code == UNKNOWN_EXIT {
                            "Unknown".into()
                        } else if code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        };
                        if code == UNKNOWN_EXIT {
                            r.message =
                                "the container's shim is gone; how it ended is unknown".into();
                        }
                    });
                }
            }
        }
        // Leftovers of requests a crash cut short: bundles and pod
        // directories no record refers to.
        let known: HashSet<String> = self.store.containers().into_iter().map(|c| c.id).collect();
        let pods_alive: HashSet<String> = self.store.pods().into_iter().map(|p| p.id).collect();
        for e in std::fs::read_dir(self.config.containers_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&id) {
                tracing::info!(container = %id, "removing a bundle left by an interrupted request");
                let live_pod = read_owner(&e.path())
                    .map(|(pod, _)| pod)
                    .filter(|pod| pods_alive.contains(pod));
                self.reap_orphan(&id, &e.path(), live_pod.as_deref()).await;
                util::unmount_all(&e.path().join("rootfs"));
                let _ = util::remove_dir_all_unmounting(&e.path());
                let _ = self.images.remove_rootfs(&id);
            }
        }
        // A ready pod's attachment may not have survived what took berthd
        // down (a veth deleted, an address flushed): CHECK it, and let
        // kubelet recreate the pod when it fails.
        for pod in self.store.pods() {
            if pod.state != PodState::Ready {
                continue;
            }
            if let Err(e) = self.network.check(&pod.id).await {
                tracing::warn!(pod = %pod.id, "CNI CHECK failed, marking the pod not ready: {e}");
                let _ = self
                    .store
                    .update_pod(&pod.id, |p| p.state = PodState::NotReady);
            }
        }
        // CNI attachments of pods that are gone or stopped (a crash during
        // ADD, or a DEL that failed): DEL them while their namespaces are
        // still pinned.
        for pod_id in self.network.attached_pods() {
            if self
                .store
                .pod(&pod_id)
                .is_some_and(|p| p.state == PodState::Ready)
            {
                continue;
            }
            tracing::info!(pod = %pod_id, "detaching the network of a pod left attached");
            if let Err(e) = self.network.detach(&pod_id).await {
                tracing::warn!(pod = %pod_id, "CNI DEL: {e}");
            }
        }
        let pods: HashSet<String> = self.store.pods().into_iter().map(|p| p.id).collect();
        for e in std::fs::read_dir(self.config.pods_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            if !pods.contains(&id) {
                tracing::info!(pod = %id, "removing a pod directory left by an interrupted request");
                let pause = e.path().join("pause");
                if pause.join("config.json").exists() {
                    self.reap_orphan(&id, &pause, None).await;
                }
                sandbox::release_namespaces(&e.path());
                sandbox::unmount_shm(&e.path());
                let _ = util::remove_dir_all_unmounting(&e.path());
            }
        }
        let _ = std::fs::remove_dir_all(self.config.state.join("exec"));
        let _ = util::create_private_dir(&self.config.state.join("exec"));
    }
}

/// The exit a shim recorded in the bundle: (code, OOM-killed).
pub(super) fn exit_record(bundle: &Path) -> Option<(i32, bool)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("berth-exit.json")).ok()?).ok()?;
    Some((
        v["exit_status"].as_i64()? as i32,
        v["oom_killed"].as_bool().unwrap_or(false),
    ))
}
