//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and
//! ListPodSandbox: pods, their namespaces and their pause process.

use prost::bytes::Bytes;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use k8s_cri::v1 as cri;
use serde_json::json;

use crate::config::RuntimeHandler;
use crate::error::{Error, Result};
use crate::sandbox::{self, NamespaceRequest};
use crate::shims::{self, SECOND};
use crate::spec::{self};
use crate::store::{PodRecord, PodState};
use crate::util::{self, now_ns};

use super::{blocking, write_owner, Cri};

impl Cri {
    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        req: cri::RunPodSandboxRequest,
    ) -> Result<String> {
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("RunPodSandbox: config is missing".into()))?;
        let meta = config.metadata.clone().ok_or_else(|| {
            Error::InvalidArgument("pod sandbox config: metadata is missing".into())
        })?;
        if meta.name.is_empty() || meta.namespace.is_empty() {
            return Err(Error::InvalidArgument(
                "pod sandbox metadata: name and namespace are required".into(),
            ));
        }
        let handler_name = if req.runtime_handler.is_empty() {
            self.config.default_runtime.clone()
        } else {
            req.runtime_handler.clone()
        };
        let handler = self.handler(&handler_name)?;
        let ns = spec::pod_namespace_options(&config);
        let host_net = ns.network == cri::NamespaceMode::Node as i32;
        let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
        let pid_mode = cri::NamespaceMode::try_from(ns.pid).map_err(|_| {
            Error::InvalidArgument(format!("pid namespace mode {} is unknown", ns.pid))
        })?;
        if pid_mode == cri::NamespaceMode::Target {
            return Err(Error::InvalidArgument(
                "a pod's pid namespace cannot target a container".into(),
            ));
        }
        if handler.is_vm() {
            // The pod is its VM: nothing of the host's can be shared, and
            // the guest agent gives every container its own PID namespace.
            for (what, v) in [("network", ns.network), ("ipc", ns.ipc), ("pid", ns.pid)] {
                if v == cri::NamespaceMode::Node as i32 {
                    return Err(Error::InvalidArgument(format!(
                        "runtime handler {handler_name:?} runs pods in VMs: the host's {what} namespace cannot be shared"
                    )));
                }
            }
            if pid_mode == cri::NamespaceMode::Pod {
                return Err(Error::InvalidArgument(format!(
                    "runtime handler {handler_name:?}: a pod-wide PID namespace (shareProcessNamespace) is not supported in VMs yet"
                )));
            }
        }
        for (what, v) in [("network", ns.network), ("ipc", ns.ipc)] {
            if v != cri::NamespaceMode::Pod as i32 && v != cri::NamespaceMode::Node as i32 {
                return Err(Error::InvalidArgument(format!(
                    "{what} namespace mode {v} is not valid for a pod"
                )));
            }
        }
        let user = spec::pod_user_mapping(&ns)?;
        if user.is_some() && host_net {
            return Err(Error::InvalidArgument(
                "a pod with a user namespace of its own cannot use the host's network".into(),
            ));
        }
        if user.is_some() && !self.supports_user_namespaces(&handler) {
            return Err(Error::InvalidArgument(match &self.idmapped_rootfs {
                Err(e) if handler.supports_user_namespaces() => {
                    format!("pods with user namespaces need id-mapped mounts, which fail here: {e}")
                }
                _ => format!("runtime handler {handler_name:?} cannot run pods in user namespaces"),
            }));
        }
        let hostname = if host_net {
            if config.hostname.is_empty() {
                rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned()
            } else {
                config.hostname.clone()
            }
        } else if config.hostname.is_empty() {
            meta.name.chars().take(63).collect()
        } else {
            config.hostname.clone()
        };
        sandbox::check_hostname(&hostname)?;
        let linux = config.linux.clone().unwrap_or_default();
        let cgroup_parent = linux.cgroup_parent.clone();
        if cgroup_parent.split('/').any(|c| c == "..") {
            return Err(Error::InvalidArgument(format!(
                "cgroup_parent {cgroup_parent:?} contains \"..\""
            )));
        }
        let mut sysctls: Vec<(String, String)> = linux.sysctls.clone().into_iter().collect();
        sysctls.sort();
        let ns_req = NamespaceRequest {
            net: !host_net,
            ipc: !host_ipc,
            uts: !host_net,
            hostname: hostname.clone(),
            sysctls,
            user,
        };
        sandbox::check_sysctls(&ns_req)?;
        let resolv = sandbox::resolv_conf(config.dns_config.as_ref())?;

        let id = util::new_id();
        let mut record = PodRecord {
            id: id.clone(),
            config: config.clone(),
            runtime_handler: handler_name,
            state: PodState::Ready,
            created_at: now_ns(),
            namespaces: Default::default(),
            dir: self.config.pods_dir().join(&id),
            cgroup_parent,
            shim_address: None,
            pause_pid: None,
            ips: Vec::new(),
        };
        let _reservation = self.reserve(format!("pod/{}", record.name()))?;
        if let Some(other) = self
            .store
            .pods()
            .into_iter()
            .find(|p| p.name() == record.name())
        {
            return Err(Error::AlreadyExists(format!(
                "pod name {:?} is reserved by pod {}",
                record.name(),
                other.id
            )));
        }
        let lock = self.pod_lock(&id);
        let _guard = lock.lock().await;
        let dir = record.dir.clone();
        let shm_size = self.config.shm_size;
        let hosts = sandbox::hosts_file(host_net);
        let holder = self.pause_binary.clone();
        let setup = {
            let dir = dir.clone();
            let hostname = hostname.clone();
            blocking(move || {
                util::create_private_dir(&dir)?;
                for (name, text) in [
                    ("hostname", format!("{hostname}\n")),
                    ("hosts", hosts),
                    ("resolv.conf", resolv),
                ] {
                    std::fs::write(dir.join(name), text)
                        .map_err(|e| Error::internal(dir.join(name).display(), e))?;
                }
                let namespaces = sandbox::create_namespaces(&dir, &ns_req, &holder)?;
                if ns_req.ipc {
                    sandbox::mount_shm(&dir, shm_size)?;
                }
                Ok(namespaces)
            })
            .await
        };
        let result = match setup {
            Ok(namespaces) => {
                record.namespaces = namespaces;
                write_owner(&record.dir, &record.id, &record.runtime_handler);
                let network = match record.namespaces.net.clone() {
                    Some(netns) => self.attach_network(&record, &netns).await,
                    None => Ok(Vec::new()),
                };
                match network {
                    Ok(ips) => {
                        record.ips = ips;
                        let shared_pid = pid_mode == cri::NamespaceMode::Pod;
                        if shared_pid || handler.wants_sandbox_container() {
                            self.start_pause(&handler, &mut record, shared_pid).await
                        } else {
                            Ok(())
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let mut result = result.and_then(|_| self.store.add_pod(record.clone()));
        if result.is_ok() {
            // Listed first: a plugin synchronizing meanwhile sees the pod
            // either in its list or in this event.
            result = self.nri_run_pod_sandbox(&record).await;
        }
        if let Err(e) = result {
            if let Err(rm) = self.store.remove_pod(&record.id) {
                tracing::warn!(pod = %record.id, "unlisting a failed pod: {rm}");
            }
            if let Some(address) = &record.shim_address {
                self.end_task(address, &record.id).await;
                self.shims.shutdown(address).await;
            }
            if let Err(del) = self.network.detach(&record.id).await {
                tracing::warn!(pod = %record.id, "detaching the network of a failed pod: {del}");
            }
            self.teardown_pod_files(&record).await;
            return Err(e);
        }
        tracing::info!(pod = %id, name = %record.name(), ips = ?record.ips, "pod sandbox ready");
        Ok(id)
    }

    /// CNI ADD for a pod's network namespace; its IPs.
    async fn attach_network(
        &self,
        pod: &PodRecord,
        netns: &std::path::Path,
    ) -> Result<Vec<String>> {
        let meta = pod.config.metadata.clone().unwrap_or_default();
        let port_mappings = pod.config.port_mappings.clone();
        self.network
            .attach(&crate::network::Attachment {
                pod_id: &pod.id,
                name: &meta.name,
                namespace: &meta.namespace,
                uid: &meta.uid,
                netns,
                port_mappings: &port_mappings,
                annotations: &pod.config.annotations,
                dns: pod.config.dns_config.as_ref(),
            })
            .await
    }

    /// The pause container holding a PID namespace the pod's containers share.
    pub(super) async fn start_pause(
        self: &Arc<Self>,
        handler: &RuntimeHandler,
        pod: &mut PodRecord,
        shared_pid: bool,
    ) -> Result<()> {
        let bundle = pod.dir.join("pause");
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| Error::internal(rootfs.display(), e))?;
        std::fs::copy(&self.pause_binary, rootfs.join("pause"))
            .map_err(|e| Error::internal("copying berth-pause", e))?;
        let mut config = spec::pause_spec(pod, &rootfs, self.oom_floor)?;
        if handler.is_vm() {
            spec::size_vm_sandbox(&mut config, pod);
        }
        let config = serde_json::to_vec(&config)
            .map_err(|e| Error::internal("serializing the pause config", e))?;
        util::write_private_file(&bundle.join("config.json"), &config)
            .map_err(|e| Error::internal("writing the pause config", e))?;
        write_owner(&bundle, &pod.id, &pod.runtime_handler);
        let address = self.shims.start(handler, &pod.id, &bundle).await?;
        // Known before Create, so that a failure below can stop this shim.
        pod.shim_address = Some(address.clone());
        let mut create = api::CreateTaskRequest::new();
        create.id = pod.id.clone();
        create.bundle = bundle.display().to_string();
        create.options = shims::options_field(handler);
        let r: api::CreateTaskResponse = self
            .shims
            .create_task(&address, &create, 30 * SECOND)
            .await?;
        let mut start = api::StartRequest::new();
        start.id = pod.id.clone();
        let _: api::StartResponse = self.shims.start_task(&address, &start, 30 * SECOND).await?;
        pod.pause_pid = Some(r.pid);
        self.watch_sandbox(pod.id.clone(), address.clone());
        if shared_pid {
            pod.namespaces.pid = Some(PathBuf::from(format!("/proc/{}/ns/pid", r.pid)));
        }
        Ok(())
    }

    pub(super) async fn stop_pause(&self, pod: &PodRecord) {
        let Some(address) = &pod.shim_address else {
            return;
        };
        if !self.end_task(address, &pod.id).await {
            // The shim is gone (killed, crashed): what it held may not be,
            // a VM above all. Its binary's `delete` ends it, as containerd
            // does after a dead shim.
            let handler = self
                .config
                .handler(&pod.runtime_handler)
                .unwrap_or_default();
            if let Err(e) = self
                .shims
                .delete(&handler, &pod.id, &pod.dir.join("pause"))
                .await
            {
                tracing::warn!(pod = %pod.id, "cleaning up after the pod's dead shim: {e}");
            }
        }
    }

    /// Kills, waits for and deletes a task in a shim, whatever its state;
    /// whether the shim answered the delete.
    pub(super) async fn end_task(&self, address: &str, id: &str) -> bool {
        let mut kill = api::KillRequest::new();
        kill.id = id.to_owned();
        kill.signal = 9;
        kill.all = true;
        let _ = self.shims.kill(address, &kill, 10 * SECOND).await;
        let mut wait = api::WaitRequest::new();
        wait.id = id.to_owned();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.shims.wait(address, &wait, 10 * SECOND),
        )
        .await;
        let mut del = api::DeleteRequest::new();
        del.id = id.to_owned();
        match self.shims.delete_task(address, &del, 10 * SECOND).await {
            Ok(_) | Err(Error::NotFound(_)) => true,
            Err(_) => false,
        }
    }

    /// Releases a pod's namespaces, shm and files. Idempotent.
    pub(super) async fn teardown_pod_files(&self, pod: &PodRecord) {
        let dir = pod.dir.clone();
        let _ = blocking(move || {
            sandbox::release_namespaces(&dir);
            sandbox::unmount_shm(&dir);
            util::remove_dir_all_unmounting(&dir)
        })
        .await;
    }

    pub async fn stop_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let Ok(id) = self.store.resolve_pod(id) else {
            return Ok(());
        };
        let containers = self.store.containers_of(&id);
        let mut stops = Vec::new();
        for c in containers {
            let this = Arc::clone(self);
            stops.push(tokio::spawn(
                async move { this.stop_container(&c.id, 0).await },
            ));
        }
        for s in stops {
            if let Ok(Err(e)) = s.await {
                tracing::warn!(pod = %id, "stopping a container: {e}");
            }
        }
        let lock = self.pod_lock(&id);
        let _guard = lock.lock().await;
        let Some(pod) = self.store.pod(&id) else {
            return Ok(());
        };
        self.nri_stop_pod_sandbox(&pod).await;
        if pod.pause_pid.is_some() {
            self.stop_pause(&pod).await;
        }
        // DEL while the namespace still exists; a failure leaves it pinned
        // so that the next Stop or Remove tries again, as containerd does.
        self.network.detach(&id).await?;
        let dir = pod.dir.clone();
        blocking(move || {
            sandbox::release_namespaces(&dir);
            sandbox::unmount_shm(&dir);
            Ok(())
        })
        .await?;
        self.store.update_pod(&id, |p| {
            p.state = PodState::NotReady;
            p.pause_pid = None;
            p.namespaces = Default::default();
        })?;
        Ok(())
    }

    pub async fn remove_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let Ok(id) = self.store.resolve_pod(id) else {
            return Ok(());
        };
        self.stop_pod_sandbox(&id).await?;
        for c in self.store.containers_of(&id) {
            self.remove_container(&c.id).await?;
        }
        let lock = self.pod_lock(&id);
        let _guard = lock.lock().await;
        let Some(pod) = self.store.pod(&id) else {
            return Ok(());
        };
        // Containers whose creation finished while we waited for the lock.
        for c in self.store.containers_of(&id) {
            self.remove_container(&c.id).await?;
        }
        let pod = self.store.pod(&id).unwrap_or(pod);
        tracing::debug!(pod = %id, shim = ?pod.shim_address, "removing the pod");
        if let Some(address) = &pod.shim_address {
            self.shims.shutdown(address).await;
        }
        self.teardown_pod_files(&pod).await;
        self.store.remove_pod(&id)?;
        self.nri_remove_pod_sandbox(&pod).await;
        self.pod_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.release_memory_soon();
        Ok(())
    }

    /// Once pods are gone, what their requests allocated is free but still
    /// held by malloc: handed back to the kernel a moment later, once for
    /// a burst of removals.
    fn release_memory_soon(&self) {
        if self
            .trim_scheduled
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let flag = Arc::clone(&self.trim_scheduled);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            flag.store(false, std::sync::atomic::Ordering::Release);
            let _ = tokio::task::spawn_blocking(berth_common::memory::release_free_memory).await;
        });
    }

    pub fn pod_status_of(&self, p: &PodRecord) -> cri::PodSandboxStatus {
        let ns = spec::pod_namespace_options(&p.config);
        cri::PodSandboxStatus {
            id: p.id.clone(),
            metadata: p.config.metadata.clone(),
            state: pod_state_cri(p.state) as i32,
            created_at: p.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: p.ips.first().cloned().unwrap_or_default(),
                additional_ips: p
                    .ips
                    .iter()
                    .skip(1)
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: Some(ns) }),
            }),
            labels: p.config.labels.clone(),
            annotations: p.config.annotations.clone(),
            runtime_handler: p.runtime_handler.clone(),
        }
    }

    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let id = self.store.resolve_pod(id)?;
        // Built from the records under the store's lock: copying them (a
        // pod's and its containers' whole configs) was most of the call.
        let (status, containers_statuses, verbose_pod) = self
            .store
            .with_pod(&id, |p, containers| {
                (
                    self.pod_status_of(p),
                    containers.map(|c| self.container_status_of(c)).collect(),
                    verbose.then(|| p.clone()),
                )
            })
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))?;
        let mut info = HashMap::new();
        if let Some(p) = verbose_pod {
            let v = json!({
                "pid": p.pause_pid.unwrap_or(0),
                "runtimeHandler": p.runtime_handler,
                "shimAddress": p.shim_address,
                "namespaces": p.namespaces,
                "cgroupParent": p.cgroup_parent,
                "podDirectory": p.dir,
                "config": p.config,
            });
            let mut v = v;
            if self.runs_in_vm(&p) {
                v["vm"] = self.vm_info(&p);
            }
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses,
            timestamp: now_ns(),
        })
    }

    /// What a VM pod costs: the VM its shim booted (QEMU's `-smp` and
    /// `-m`, read from its command line rather than sized again here), the
    /// overhead the pod's RuntimeClass declared, and what QEMU holds on the
    /// host beyond the guest's RAM now (its anonymous memory: RssAnon; the
    /// guest RAM it touched is shared memory, RssShmem).
    fn vm_info(&self, p: &crate::store::PodRecord) -> serde_json::Value {
        let handler = self.config.handler(&p.runtime_handler).unwrap_or_default();
        let qemu = p.pause_pid.and_then(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kb = |key: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let arg = |flag: &str| {
                args.iter()
                    .position(|a| *a == flag.as_bytes())
                    .and_then(|i| args.get(i + 1))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            Some(json!({
                "pid": pid,
                "vcpus": arg("-smp")?.parse::<u32>().ok()?,
                "guestMemoryMiB": arg("-m")?.trim_end_matches('M').parse::<u64>().ok()?,
                "anonymousBytes": kb("RssAnon:")? * 1024,
                "guestMemoryTouchedBytes": kb("RssShmem:").unwrap_or(0) * 1024,
            }))
        });
        let overhead = p
            .config
            .linux
            .as_ref()
            .and_then(|l| l.overhead.clone())
            .unwrap_or_default();
        json!({
            "hypervisor": handler.hypervisor.clone().unwrap_or_else(|| "qemu".into()),
            "runtimeClassOverhead": {
                "memoryBytes": overhead.memory_limit_in_bytes,
                "cpuQuota": overhead.cpu_quota,
                "cpuPeriod": overhead.cpu_period,
            },
            "qemu": qemu,
        })
    }

    /// The pods `filter` keeps, oldest first, in wire form (see
    /// [`wire`](super::wire)).
    pub fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Bytes {
        let f = filter.unwrap_or_default();
        let write = |pods: &mut dyn Iterator<Item = &PodRecord>| {
            let mut items = super::wire::Items::default();
            for p in pods {
                let state = pod_state_cri(p.state) as i32;
                let keep = (f.id.is_empty() || p.id.starts_with(&f.id))
                    && f.state.as_ref().is_none_or(|s| state == s.state)
                    && util::labels_match(&p.config.labels, &f.label_selector);
                if keep {
                    items.pod(p, state);
                }
            }
            items.into_wire()
        };
        // kubelet's PLEG asks for all of them, every second.
        if f == cri::PodSandboxFilter::default() {
            return self.store.pod_list(write);
        }
        Bytes::from(self.store.with_pods(write))
    }
}

fn pod_state_cri(s: PodState) -> cri::PodSandboxState {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}
