//! The CRI runtime: pods and containers over the image store and shims.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_image::ImageStore;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use k8s_cri::v1 as cri;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::config::{Config, RestrictOom, RuntimeHandler};
use crate::error::{Error, Result};
use crate::sandbox::{self, NamespaceRequest};
use crate::shims::{self, Shims, SECOND};
use crate::spec::{self, SpecInput};
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState, Store};
use crate::util::{self, now_ns};

/// Exit code recorded when how a container ended cannot be known (its
/// shim died with it).
pub const UNKNOWN_EXIT: i32 = 255;
/// Output ExecSync keeps per stream, as kubelet bounds it.
const MAX_EXEC_OUTPUT: usize = 16 << 20;

pub struct Cri {
    pub config: Config,
    pub store: Store,
    pub images: Arc<ImageStore>,
    pub shims: Arc<Shims>,
    pub events: broadcast::Sender<cri::ContainerEventResponse>,
    oom_floor: Option<i64>,
    /// Names being created (not yet in the store).
    reserving: Mutex<HashSet<String>>,
    /// Exit watchers of running containers.
    exits: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Previous CPU samples (for usage_nano_cores): id -> (ns, usage ns).
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    /// Serialises operations on one pod (create/stop/remove of it and its
    /// containers' shim start).
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pause_binary: PathBuf,
    /// Running pulls' progress (berth.v1.Images/WatchPull).
    pub pulls: Arc<crate::pull_progress::Board>,
}

struct Reservation<'a> {
    cri: &'a Cri,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.cri
            .reserving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

static PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-pause"));

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("a blocking task", e))?
}

fn container_state_cri(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

fn pod_state_cri(s: PodState) -> cri::PodSandboxState {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

impl Cri {
    /// Opens the stores, and takes back what a previous berthd left.
    pub async fn new(config: Config) -> Result<Arc<Cri>> {
        for d in [
            config.root.clone(),
            config.state.clone(),
            config.pods_dir(),
            config.containers_dir(),
            config.state.join("exec"),
        ] {
            util::create_private_dir(&d)?;
        }
        let store = Store::open(&config.root.join("cri").join("metadata.redb"))?;
        let image_options = berth_image::StoreOptions {
            insecure_registries: config.insecure_registries.clone(),
            max_concurrent_downloads: config.max_concurrent_downloads.max(1),
            hosts_dir: config.registry.config_path.clone(),
            mirrors: config
                .registry
                .mirrors
                .iter()
                .map(|(k, m)| (k.clone(), m.endpoint.clone()))
                .collect(),
            docker_config: config.registry.docker_config.clone(),
            unpack_limits: berth_image::UnpackLimits {
                layer_bytes: config.unpack.max_layer_bytes,
                image_bytes: config.unpack.max_image_bytes,
                reserve_bytes: config.unpack.reserve_bytes,
            },
            ..Default::default()
        };
        // Broken hosts files are reported now and on the pulls they affect;
        // they do not stop berthd or the other registries.
        for (file, e) in image_options.hosts_config().validate() {
            tracing::error!(file = %file.display(), "registry hosts: {e}");
        }
        let root = config.root.join("images");
        let images = blocking(move || Ok(ImageStore::open(&root, image_options)?)).await?;
        let oom_floor = match config.restrict_oom_score_adj {
            RestrictOom::True => Some(util::own_oom_score_adj()),
            RestrictOom::False => None,
            RestrictOom::Auto => (!util::can_lower_oom_score_adj()).then(util::own_oom_score_adj),
        };
        let pause_binary = config.state.join("berth-pause");
        write_pause(&pause_binary)?;
        let shims = Arc::new(Shims::new(
            &config.socket,
            &config.state,
            config.shim_dirs.clone(),
        ));
        let (events, _) = broadcast::channel(1024);
        let cri = Arc::new(Cri {
            config,
            store,
            images: Arc::new(images),
            shims,
            events,
            oom_floor,
            reserving: Mutex::new(HashSet::new()),
            exits: Mutex::new(HashMap::new()),
            cpu_samples: Mutex::new(HashMap::new()),
            pod_locks: Mutex::new(HashMap::new()),
            pause_binary,
            pulls: Arc::default(),
        });
        cri.recover().await;
        Ok(cri)
    }

    fn pod_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.pod_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn reserve(&self, name: String) -> Result<Reservation<'_>> {
        let mut set = self.reserving.lock().unwrap_or_else(|e| e.into_inner());
        if !set.insert(name.clone()) {
            return Err(Error::AlreadyExists(format!(
                "name {name:?} is being reserved by another request"
            )));
        }
        Ok(Reservation { cri: self, name })
    }

    pub fn handler(&self, name: &str) -> Result<RuntimeHandler> {
        self.config.handler(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "runtime handler {name:?} is not configured (known: {})",
                self.config.handler_names().join(", ")
            ))
        })
    }

    fn emit(&self, container_id: &str, kind: cri::ContainerEventType, pod_id: &str) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let pod_status = self.store.pod(pod_id).map(|p| self.pod_status_of(&p));
        let containers = self
            .store
            .container(container_id)
            .map(|c| vec![self.container_status_of(&c)])
            .unwrap_or_default();
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: container_id.to_owned(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: pod_status,
            containers_statuses: containers,
        });
    }

    // ------------------------------------------------------------------
    // Pods

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
        for (what, v) in [("network", ns.network), ("ipc", ns.ipc)] {
            if v != cri::NamespaceMode::Pod as i32 && v != cri::NamespaceMode::Node as i32 {
                return Err(Error::InvalidArgument(format!(
                    "{what} namespace mode {v} is not valid for a pod"
                )));
            }
        }
        if let Some(u) = ns.userns_options.as_ref() {
            if u.mode != cri::NamespaceMode::Node as i32 {
                return Err(Error::Unimplemented(
                    "user namespaces for pods are not supported yet".into(),
                ));
            }
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
                let namespaces = sandbox::create_namespaces(&dir, &ns_req)?;
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
                let shared_pid = pid_mode == cri::NamespaceMode::Pod;
                if shared_pid || handler.wants_sandbox_container() {
                    self.start_pause(&handler, &mut record, shared_pid).await
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result.and_then(|_| self.store.add_pod(record.clone())) {
            if let Some(address) = &record.shim_address {
                self.end_task(address, &record.id).await;
                self.shims.shutdown(address).await;
            }
            self.teardown_pod_files(&record).await;
            return Err(e);
        }
        tracing::info!(pod = %id, name = %record.name(), "pod sandbox ready");
        Ok(id)
    }

    /// The pause container holding a PID namespace the pod's containers share.
    async fn start_pause(
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
        let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
        for (kind, p) in [
            ("network", &pod.namespaces.net),
            ("ipc", &pod.namespaces.ipc),
            ("uts", &pod.namespaces.uts),
        ] {
            if let Some(p) = p {
                namespaces.push(json!({"type": kind, "path": p}));
            }
        }
        let parent = if pod.cgroup_parent.is_empty() {
            "/berth".to_owned()
        } else {
            pod.cgroup_parent.clone()
        };
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["/pause"], "cwd": "/", "user": {"uid": 65535, "gid": 65535},
                "env": [spec::DEFAULT_PATH], "noNewPrivileges": true,
                "capabilities": {"bounding": [], "effective": [], "permitted": []},
                "oomScoreAdj": self.oom_floor.unwrap_or(-998).max(-998),
            },
            "root": {"path": rootfs, "readonly": true},
            // What containerd's sandbox spec mounts: runtimes other than
            // berth expect /proc and /dev in every container.
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            ],
            "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": pod.id,
            },
            "linux": {
                "cgroupsPath": format!("{}/{}", parent.trim_end_matches('/'), pod.id),
                "namespaces": namespaces,
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "maskedPaths": spec::DEFAULT_MASKED, "readonlyPaths": spec::DEFAULT_READONLY,
            },
        });
        let mut config = config;
        if pod.namespaces.uts.is_some() {
            // Sandboxed runtimes (gVisor) take the pod's hostname from here,
            // not from the UTS namespace they are given.
            if let Ok(h) = std::fs::read_to_string(pod.dir.join("hostname")) {
                config["hostname"] = json!(h.trim());
            }
        }
        util::write_private_file(&bundle.join("config.json"), config.to_string().as_bytes())
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
            .call(&address, "Create", &create, 30 * SECOND)
            .await?;
        let mut start = api::StartRequest::new();
        start.id = pod.id.clone();
        let _: api::StartResponse = self
            .shims
            .call(&address, "Start", &start, 30 * SECOND)
            .await?;
        pod.pause_pid = Some(r.pid);
        if shared_pid {
            pod.namespaces.pid = Some(PathBuf::from(format!("/proc/{}/ns/pid", r.pid)));
        }
        Ok(())
    }

    async fn stop_pause(&self, pod: &PodRecord) {
        let Some(address) = &pod.shim_address else {
            return;
        };
        self.end_task(address, &pod.id).await;
    }

    /// Kills, waits for and deletes a task in a shim, whatever its state.
    async fn end_task(&self, address: &str, id: &str) {
        let mut kill = api::KillRequest::new();
        kill.id = id.to_owned();
        kill.signal = 9;
        kill.all = true;
        let _ = self
            .shims
            .call::<_, Empty>(address, "Kill", &kill, 10 * SECOND)
            .await;
        let mut wait = api::WaitRequest::new();
        wait.id = id.to_owned();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.shims
                .call::<_, api::WaitResponse>(address, "Wait", &wait, 10 * SECOND),
        )
        .await;
        let mut del = api::DeleteRequest::new();
        del.id = id.to_owned();
        let _ = self
            .shims
            .call::<_, api::DeleteResponse>(address, "Delete", &del, 10 * SECOND)
            .await;
    }

    /// Releases a pod's namespaces, shm and files. Idempotent.
    async fn teardown_pod_files(&self, pod: &PodRecord) {
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
        if pod.pause_pid.is_some() {
            self.stop_pause(&pod).await;
        }
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
        self.pod_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Ok(())
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
        let p = self
            .store
            .pod(&id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))?;
        let mut info = HashMap::new();
        let containers_statuses = self
            .store
            .containers_of(&id)
            .iter()
            .map(|c| self.container_status_of(c))
            .collect();
        if verbose {
            let v = json!({
                "pid": p.pause_pid.unwrap_or(0),
                "runtimeHandler": p.runtime_handler,
                "shimAddress": p.shim_address,
                "namespaces": p.namespaces,
                "cgroupParent": p.cgroup_parent,
                "podDirectory": p.dir,
                "config": p.config,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(self.pod_status_of(&p)),
            info,
            containers_statuses,
            timestamp: now_ns(),
        })
    }

    pub fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let f = filter.unwrap_or_default();
        let mut pods: Vec<PodRecord> = self
            .store
            .pods()
            .into_iter()
            .filter(|p| f.id.is_empty() || p.id.starts_with(&f.id))
            .filter(|p| {
                f.state
                    .as_ref()
                    .is_none_or(|s| pod_state_cri(p.state) as i32 == s.state)
            })
            .filter(|p| util::labels_match(&p.config.labels, &f.label_selector))
            .collect();
        pods.sort_by_key(|p| p.created_at);
        pods.iter()
            .map(|p| cri::PodSandbox {
                id: p.id.clone(),
                metadata: p.config.metadata.clone(),
                state: pod_state_cri(p.state) as i32,
                created_at: p.created_at,
                labels: p.config.labels.clone(),
                annotations: p.config.annotations.clone(),
                runtime_handler: p.runtime_handler.clone(),
            })
            .collect()
    }

    // ------------------------------------------------------------------
    // Containers

    pub async fn create_container(
        self: &Arc<Self>,
        req: cri::CreateContainerRequest,
    ) -> Result<String> {
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("CreateContainer: config is missing".into()))?;
        let meta = config.metadata.clone().ok_or_else(|| {
            Error::InvalidArgument("container config: metadata is missing".into())
        })?;
        if meta.name.is_empty() {
            return Err(Error::InvalidArgument(
                "container metadata: name is required".into(),
            ));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("container config: image is missing".into()))?;
        let pod_id = self.store.resolve_pod(&req.pod_sandbox_id)?;
        let pod = self
            .store
            .pod(&pod_id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {pod_id} not found")))?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        let handler = self.handler(&pod.runtime_handler)?;
        if let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only) {
            if !handler.supports_recursive_read_only() {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: runtime handler {:?} cannot make mounts recursively read-only",
                    m.container_path, pod.runtime_handler
                )));
            }
        }
        let images = Arc::clone(&self.images);
        let lookup = image_name.clone();
        let image = blocking(move || Ok(images.status(&lookup)?))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("image {image_name:?} not found: pull it first"))
            })?;

        let id = util::new_id();
        let mut record = ContainerRecord {
            id: id.clone(),
            pod_id: pod_id.clone(),
            config: config.clone(),
            // What ContainerStatus shows: a tag, even when kubelet names
            // the image by id (as containerd reports it).
            image_ref: if image_name.starts_with("sha256:") || image_name.contains('@') {
                image
                    .repo_tags
                    .first()
                    .cloned()
                    .unwrap_or_else(|| image_name.clone())
            } else {
                image_name.clone()
            },
            image_id: image.id.clone(),
            image_repo_digest: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            state: ContainerState::Created,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            bundle: self.config.containers_dir().join(&id),
            log_path: String::new(),
            rootfs_key: id.clone(),
            user: None,
        };
        let _reservation = self.reserve(format!("container/{}", record.name()))?;
        if let Some(other) = self
            .store
            .containers()
            .into_iter()
            .find(|c| c.name() == record.name())
        {
            return Err(Error::AlreadyExists(format!(
                "container name {:?} is reserved by container {}",
                record.name(),
                other.id
            )));
        }
        let log_dir = pod.config.log_directory.clone();
        if !log_dir.is_empty() && !config.log_path.is_empty() {
            record.log_path = util::check_log_path(&log_dir, &config.log_path)?;
        }
        let target_pid = {
            let ns = config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.clone())
                .unwrap_or_default();
            if ns.pid == cri::NamespaceMode::Target as i32 {
                let t = self.store.resolve_container(&ns.target_id)?;
                self.store
                    .container(&t)
                    .filter(|c| c.state == ContainerState::Running)
                    .map(|c| c.pid)
            } else {
                None
            }
        };

        // One creation at a time per pod, and none racing its stop or
        // removal: those take the same lock.
        let lock = self.pod_lock(&pod_id);
        let _pod_guard = lock.lock().await;
        match self
            .create_container_inner(&mut record, &pod, &handler, &image, target_pid)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                self.cleanup_container_files(&record).await;
                return Err(e);
            }
        }
        if let Err(e) = self.store.add_container(record.clone()) {
            self.delete_in_shim(&pod, &handler, &record).await;
            self.cleanup_container_files(&record).await;
            return Err(e);
        }
        self.emit(&id, cri::ContainerEventType::ContainerCreatedEvent, &pod_id);
        Ok(id)
    }

    async fn create_container_inner(
        self: &Arc<Self>,
        record: &mut ContainerRecord,
        pod: &PodRecord,
        handler: &RuntimeHandler,
        image: &berth_image::Image,
        target_pid: Option<u32>,
    ) -> Result<()> {
        let bundle = record.bundle.clone();
        let rootfs = bundle.join("rootfs");
        let images = Arc::clone(&self.images);
        // Seen from the host the rootfs is nosuid (no local user may run its
        // setuid binaries); berth's own runtime restores suid inside the
        // container. Other runtimes would not, so their rootfs stays as is.
        let host_nosuid = handler.is_berth_shim() && handler.binary_name.is_none();
        let key = record.rootfs_key.clone();
        let image_id = image.id.clone();
        {
            let rootfs = rootfs.clone();
            let bundle = bundle.clone();
            blocking(move || {
                util::create_private_dir(&bundle)?;
                std::fs::create_dir_all(&rootfs)
                    .map_err(|e| Error::internal(rootfs.display(), e))?;
                let m = images.prepare_rootfs(&image_id, &key)?;
                berth_image::mount_overlay(&m, &rootfs)?;
                if host_nosuid {
                    util::remount_nosuid(&rootfs)?;
                }
                Ok(())
            })
            .await?;
        }
        write_owner(&bundle, &pod.id, &pod.runtime_handler);
        let mut built = spec::container_spec(&SpecInput {
            id: &record.id,
            pod,
            config: &record.config,
            image: &image.config,
            image_name: &record.image_ref,
            rootfs: &rootfs,
            oom_score_adj_floor: self.oom_floor,
            target_pid,
        })?;
        if host_nosuid {
            built.spec["annotations"][berth_runtime::spec::ROOTFS_HOST_NOSUID] = json!("true");
        }
        util::write_private_file(
            &bundle.join("config.json"),
            &serde_json::to_vec(&built.spec).unwrap_or_default(),
        )
        .map_err(|e| Error::internal("writing config.json", e))?;
        record.user = Some(built.user);
        if !record.log_path.is_empty() {
            let log_dir = &pod.config.log_directory;
            let rel = Path::new(&record.log_path)
                .strip_prefix(log_dir)
                .map_err(|_| Error::internal("log path", "outside the log directory"))?;
            util::create_log_parent(Path::new(log_dir), rel)?;
        }
        let address = self.pod_shim(pod, handler, &record.id, &bundle).await?;
        let mut create = api::CreateTaskRequest::new();
        create.id = record.id.clone();
        create.bundle = bundle.display().to_string();
        create.terminal = record.config.tty;
        if !record.log_path.is_empty() {
            create.stdout = format!("crilog://{}", record.log_path);
            if !record.config.tty {
                create.stderr = create.stdout.clone();
            }
        }
        create.options = shims::options_field(handler);
        let r: api::CreateTaskResponse = self
            .shims
            .call(&address, "Create", &create, 60 * SECOND)
            .await?;
        record.pid = r.pid;
        Ok(())
    }

    /// The shim of a pod, started with its first container.
    /// The shim of a pod, started with its first container. Called with
    /// the pod's lock held.
    async fn pod_shim(
        &self,
        pod: &PodRecord,
        handler: &RuntimeHandler,
        id: &str,
        bundle: &Path,
    ) -> Result<String> {
        let current = self
            .store
            .pod(&pod.id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {} was removed", pod.id)))?;
        if current.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} was stopped",
                pod.id
            )));
        }
        if let Some(address) = current.shim_address {
            if self.shims.client(&address).await.is_ok() {
                return Ok(address);
            }
        }
        let address = self.shims.start(handler, id, bundle).await?;
        let a = address.clone();
        self.store
            .update_pod(&pod.id, |p| p.shim_address = Some(a))?;
        Ok(address)
    }

    async fn delete_in_shim(&self, pod: &PodRecord, handler: &RuntimeHandler, c: &ContainerRecord) {
        let address = self.store.pod(&pod.id).and_then(|p| p.shim_address);
        let Some(address) = address else { return };
        let mut del = api::DeleteRequest::new();
        del.id = c.id.clone();
        match self
            .shims
            .call::<_, api::DeleteResponse>(&address, "Delete", &del, 30 * SECOND)
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(Error::FailedPrecondition(_)) => {
                let mut kill = api::KillRequest::new();
                kill.id = c.id.clone();
                kill.signal = 9;
                kill.all = true;
                let _ = self
                    .shims
                    .call::<_, Empty>(&address, "Kill", &kill, 10 * SECOND)
                    .await;
                let mut wait = api::WaitRequest::new();
                wait.id = c.id.clone();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.shims
                        .call::<_, api::WaitResponse>(&address, "Wait", &wait, 0),
                )
                .await;
                let _ = self
                    .shims
                    .call::<_, api::DeleteResponse>(&address, "Delete", &del, 30 * SECOND)
                    .await;
            }
            Err(e) => {
                tracing::warn!(container = %c.id, "deleting in the shim: {e}; cleaning up with `delete`");
                let _ = self.shims.delete(handler, &c.id, &c.bundle).await;
            }
        }
    }

    async fn cleanup_container_files(&self, c: &ContainerRecord) {
        let images = Arc::clone(&self.images);
        let bundle = c.bundle.clone();
        let key = c.rootfs_key.clone();
        let r = blocking(move || {
            util::unmount_all(&bundle.join("rootfs"));
            util::remove_dir_all_unmounting(&bundle)?;
            images.remove_rootfs(&key)?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(container = %c.id, "cleaning up: {e}");
        }
    }

    fn shim_address_of(&self, c: &ContainerRecord) -> Result<String> {
        self.store
            .pod(&c.pod_id)
            .and_then(|p| p.shim_address)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("container {}: its pod has no shim", c.id))
            })
    }

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
        let result = self
            .shims
            .call::<_, api::StartResponse>(&address, "Start", &start, 60 * SECOND)
            .await;
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
    fn spawn_waiter(self: &Arc<Self>, id: String, address: String, done: watch::Sender<bool>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut wait = api::WaitRequest::new();
            wait.id = id.clone();
            let mut failures = 0;
            let (code, at) = loop {
                match this
                    .shims
                    .call::<_, api::WaitResponse>(&address, "Wait", &wait, 0)
                    .await
                {
                    Ok(r) => {
                        let at = r
                            .exited_at
                            .as_ref()
                            .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
                            .unwrap_or_else(now_ns);
                        break (r.exit_status as i32, at);
                    }
                    Err(Error::NotFound(_)) => break (UNKNOWN_EXIT, now_ns()),
                    Err(e) => {
                        failures += 1;
                        // A broken connection: reconnect a few times before
                        // deciding the shim is gone.
                        if failures > 5 {
                            tracing::warn!(container = %id, "waiting for the exit: {e}");
                            let code = exit_record(
                                &this
                                    .store
                                    .container(&id)
                                    .map(|c| c.bundle)
                                    .unwrap_or_default(),
                            )
                            .map(|(c, _)| c)
                            .unwrap_or(UNKNOWN_EXIT);
                            break (code, now_ns());
                        }
                        tokio::time::sleep(Duration::from_millis(200 * failures)).await;
                    }
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
            this.record_exit(&id, code, at, oom);
            let _ = done.send(true);
            this.exits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    fn record_exit(&self, id: &str, code: i32, at: i64, oom: bool) {
        let Ok(c) = self.store.update_container(id, |c| {
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
        }) else {
            return;
        };
        tracing::info!(container = %id, code, oom, "container exited");
        self.emit(
            id,
            cri::ContainerEventType::ContainerStoppedEvent,
            &c.pod_id,
        );
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
                    let _ = self
                        .shims
                        .call::<_, Empty>(&address, "Kill", &kill, 10 * SECOND)
                        .await;
                }
                self.record_exit(&id, 137, now_ns(), false);
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
                .and_then(|s| berth_runtime::signal::parse_signal(&s).ok())
                .unwrap_or(15);
            match self
                .shims
                .call::<_, Empty>(&address, "Kill", &kill(stop_signal as u32), 10 * SECOND)
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
        match self
            .shims
            .call::<_, Empty>(&address, "Kill", &k, 10 * SECOND)
            .await
        {
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

    pub async fn remove_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let Ok(id) = self.store.resolve_container(id) else {
            return Ok(());
        };
        let Some(c) = self.store.container(&id) else {
            return Ok(());
        };
        if c.state == ContainerState::Running {
            self.stop_container(&id, 0).await?;
        }
        let c = self.store.container(&id).unwrap_or(c);
        if let Some(pod) = self.store.pod(&c.pod_id) {
            if let Ok(handler) = self.handler(&pod.runtime_handler) {
                self.delete_in_shim(&pod, &handler, &c).await;
            }
        }
        self.cleanup_container_files(&c).await;
        self.store.remove_container(&id)?;
        self.cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        // The pod's shim stays until the pod is removed: kubelet replaces
        // containers, and a shim leaving while a new one starts would race.
        self.emit(
            &id,
            cri::ContainerEventType::ContainerDeletedEvent,
            &c.pod_id,
        );
        Ok(())
    }

    pub fn container_status_of(&self, c: &ContainerRecord) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: container_state_cri(c.state) as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(cri::ImageSpec {
                image: c.image_ref.clone(),
                ..Default::default()
            }),
            image_ref: c.image_repo_digest.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.log_path.clone(),
            resources: c
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            image_id: c.image_id.clone(),
            user: c
                .user
                .as_ref()
                .map(|(uid, gid, groups)| cri::ContainerUser {
                    linux: Some(cri::LinuxContainerUser {
                        uid: *uid as i64,
                        gid: *gid as i64,
                        supplemental_groups: groups.iter().map(|g| *g as i64).collect(),
                    }),
                }),
        }
    }

    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse> {
        let id = self.store.resolve_container(id)?;
        let c = self
            .store
            .container(&id)
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        let mut info = HashMap::new();
        if verbose {
            let spec: serde_json::Value = std::fs::read(c.bundle.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let v = json!({
                "sandboxID": c.pod_id,
                "pid": c.pid,
                "bundle": c.bundle,
                "runtimeSpec": spec,
                "config": c.config,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(self.container_status_of(&c)),
            info,
        })
    }

    pub fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let f = filter.unwrap_or_default();
        let mut cs: Vec<ContainerRecord> = self
            .store
            .containers()
            .into_iter()
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| {
                f.state
                    .as_ref()
                    .is_none_or(|s| container_state_cri(c.state) as i32 == s.state)
            })
            .filter(|c| util::labels_match(&c.config.labels, &f.label_selector))
            .collect();
        cs.sort_by_key(|c| c.created_at);
        cs.iter()
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(cri::ImageSpec {
                    image: c.image_ref.clone(),
                    ..Default::default()
                }),
                image_ref: c.image_repo_digest.clone(),
                state: container_state_cri(c.state) as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            })
            .collect()
    }

    pub async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<()> {
        let id = self.store.resolve_container(&req.container_id)?;
        let c = self
            .store
            .container(&id)
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        let Some(r) = req.linux else {
            return Ok(());
        };
        // The same mapping as at creation (hugepage limits included).
        let res = spec::oci_resources(&r);
        if c.state == ContainerState::Running || c.state == ContainerState::Created {
            let address = self.shim_address_of(&c)?;
            let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
            any.type_url =
                "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
            any.value = serde_json::to_vec(&res).unwrap_or_default();
            let mut u = api::UpdateTaskRequest::new();
            u.id = id.clone();
            u.resources = containerd_shim_protos::protobuf::MessageField::some(any);
            let _: Empty = self.shims.call(&address, "Update", &u, 30 * SECOND).await?;
        }
        self.store.update_container(&id, |c| {
            let linux = c.config.linux.get_or_insert_with(Default::default);
            let cur = linux.resources.get_or_insert_with(Default::default);
            let oom = cur.oom_score_adj;
            *cur = r.clone();
            cur.oom_score_adj = oom;
        })?;
        Ok(())
    }

    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let id = self.store.resolve_container(id)?;
        let c = self
            .store
            .container(&id)
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let address = self.shim_address_of(&c)?;
        let client = self.shims.client(&address).await?;
        client
            .reopen_log(&id)
            .await
            .map_err(|e| Error::from_ttrpc("ReopenLog", e))
    }

    pub async fn exec_sync(&self, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse> {
        let id = self.store.resolve_container(&req.container_id)?;
        let c = self
            .store
            .container(&id)
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("ExecSync: cmd is empty".into()));
        }
        let address = self.shim_address_of(&c)?;
        let spec: serde_json::Value = std::fs::read(c.bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Error::Internal(format!("container {id}: its config.json is unreadable"))
            })?;
        let mut process = spec["process"].clone();
        process["args"] = json!(req.cmd);
        process["terminal"] = json!(false);
        let exec_id = util::new_id()[..32].to_owned();
        let dir = self.config.state.join("exec").join(&exec_id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(dir.display(), e))?;
        let result = self
            .exec_sync_inner(&address, &id, &exec_id, &dir, process, req.timeout)
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        let mut del = api::DeleteRequest::new();
        del.id = id.clone();
        del.exec_id = exec_id;
        let _ = self
            .shims
            .call::<_, api::DeleteResponse>(&address, "Delete", &del, 10 * SECOND)
            .await;
        result
    }

    async fn exec_sync_inner(
        &self,
        address: &str,
        id: &str,
        exec_id: &str,
        dir: &Path,
        process: serde_json::Value,
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse> {
        let out = dir.join("stdout");
        let err = dir.join("stderr");
        let mut readers = Vec::new();
        let mut holders = Vec::new();
        for p in [&out, &err] {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p.as_path(),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .map_err(|e| Error::internal(format!("mkfifo {}", p.display()), e))?;
            let r = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(|e| Error::internal(p.display(), e))?;
            // Held until the shim has its write end, so that the reader
            // does not see EOF before the process even started.
            let w = tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(p)
                .map_err(|e| Error::internal(p.display(), e))?;
            readers.push(r);
            holders.push(w);
        }
        // Output is gathered into shared buffers: what was read stays even
        // when a background child keeps the pipe open past the grace time.
        let read_all = |mut r: tokio::net::unix::pipe::Receiver| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&buf);
            let task = tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    match r.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut b = sink.lock().unwrap_or_else(|e| e.into_inner());
                            let room = MAX_EXEC_OUTPUT.saturating_sub(b.len());
                            b.extend_from_slice(&chunk[..n.min(room)]);
                        }
                    }
                }
            });
            (task, buf)
        };
        let mut it = readers.into_iter();
        let (out_task, out_buf) = read_all(it.next().expect("two readers"));
        let (err_task, err_buf) = read_all(it.next().expect("two readers"));

        let mut exec = api::ExecProcessRequest::new();
        exec.id = id.to_owned();
        exec.exec_id = exec_id.to_owned();
        exec.stdout = out.display().to_string();
        exec.stderr = err.display().to_string();
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = serde_json::to_vec(&process).unwrap_or_default();
        exec.spec = containerd_shim_protos::protobuf::MessageField::some(any);
        let _: Empty = self.shims.call(address, "Exec", &exec, 30 * SECOND).await?;
        let client = self.shims.client(address).await?;
        if timeout_s > 0 {
            client
                .set_exec_timeout(id, exec_id, Duration::from_secs(timeout_s as u64))
                .await
                .map_err(|e| Error::from_ttrpc("SetExecTimeout", e))?;
        }
        let mut start = api::StartRequest::new();
        start.id = id.to_owned();
        start.exec_id = exec_id.to_owned();
        let _: api::StartResponse = self
            .shims
            .call(address, "Start", &start, 30 * SECOND)
            .await?;
        drop(holders);
        let mut wait = api::WaitRequest::new();
        wait.id = id.to_owned();
        wait.exec_id = exec_id.to_owned();
        let r: api::WaitResponse = self.shims.call(address, "Wait", &wait, 0).await?;
        let timed_out = client
            .report(id, exec_id)
            .await
            .map(|r| r.timed_out)
            .unwrap_or(false);
        // Output still held open by a background child is cut short.
        let grace = Duration::from_secs(2);
        let deadline = tokio::time::Instant::now() + grace;
        for task in [out_task, err_task] {
            let mut task = task;
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        let take = |b: &Arc<Mutex<Vec<u8>>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()))
        };
        let (stdout, stderr) = (take(&out_buf), take(&err_buf));
        if timed_out {
            return Err(Error::DeadlineExceeded(format!(
                "command {:?} timed out after {timeout_s}s",
                process["args"]
            )));
        }
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: r.exit_status as i32,
        })
    }

    // ------------------------------------------------------------------
    // Stats

    pub async fn container_stats_of(&self, c: &ContainerRecord) -> Result<cri::ContainerStats> {
        let address = self.shim_address_of(c)?;
        let mut req = api::StatsRequest::new();
        req.id = c.id.clone();
        let r: api::StatsResponse = self
            .shims
            .call(&address, "Stats", &req, 10 * SECOND)
            .await?;
        let now = now_ns();
        let metrics: Option<containerd_shim_protos::cgroups::metrics::Metrics> = r
            .stats
            .as_ref()
            .filter(|a| a.type_url.ends_with("io.containerd.cgroups.v1.Metrics"))
            .and_then(|a| {
                containerd_shim_protos::protobuf::Message::parse_from_bytes(&a.value).ok()
            });
        let u = |v: u64| Some(cri::UInt64Value { value: v });
        let mut stats = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            ..Default::default()
        };
        if let Some(m) = metrics {
            let total = m.cpu.usage.total;
            let nano_cores = {
                let mut samples = self.cpu_samples.lock().unwrap_or_else(|e| e.into_inner());
                let prev = samples.insert(c.id.clone(), (now, total));
                prev.and_then(|(t, u)| {
                    let dt = now - t;
                    (dt > 0 && total >= u)
                        .then(|| ((total - u) as u128 * 1_000_000_000 / dt as u128) as u64)
                })
            };
            stats.cpu = Some(cri::CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: u(total),
                usage_nano_cores: nano_cores.and_then(u),
            });
            let usage = m.memory.usage.usage;
            let inactive = m.memory.total_inactive_file;
            let limit = m.memory.usage.limit;
            let working_set = usage.saturating_sub(inactive);
            stats.memory = Some(cri::MemoryUsage {
                timestamp: now,
                working_set_bytes: u(working_set),
                available_bytes: (limit > 0 && limit < (1 << 62)).then(|| cri::UInt64Value {
                    value: limit.saturating_sub(working_set),
                }),
                usage_bytes: u(usage),
                rss_bytes: u(m.memory.total_rss.max(m.memory.rss)),
                page_faults: u(m.memory.pg_fault),
                major_page_faults: u(m.memory.pg_maj_fault),
            });
        }
        let images = Arc::clone(&self.images);
        let key = c.rootfs_key.clone();
        let upper = blocking(move || Ok(images.rootfs(&key)?.map(|m| m.upperdir)))
            .await
            .ok()
            .flatten();
        if let Some(upper) = upper {
            let (bytes, inodes) = blocking(move || Ok(dir_usage(&upper)))
                .await
                .unwrap_or((0, 0));
            stats.writable_layer = Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.config.root.join("images").display().to_string(),
                }),
                used_bytes: u(bytes),
                inodes_used: u(inodes),
            });
        }
        Ok(stats)
    }

    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let id = self.store.resolve_container(id)?;
        let c = self
            .store
            .container(&id)
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        self.container_stats_of(&c).await
    }

    pub async fn list_container_stats(
        &self,
        f: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        let f = f.unwrap_or_default();
        let mut out = Vec::new();
        let mut cs = self.store.containers();
        cs.sort_by_key(|c| c.created_at);
        for c in cs {
            if c.state != ContainerState::Running
                || !(f.id.is_empty() || c.id.starts_with(&f.id))
                || !(f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                || !util::labels_match(&c.config.labels, &f.label_selector)
            {
                continue;
            }
            if let Ok(s) = self.container_stats_of(&c).await {
                out.push(s);
            }
        }
        out
    }

    pub async fn pod_stats_of(&self, p: &PodRecord) -> cri::PodSandboxStats {
        let now = now_ns();
        let mut containers = Vec::new();
        for c in self.store.containers_of(&p.id) {
            if c.state == ContainerState::Running {
                if let Ok(s) = self.container_stats_of(&c).await {
                    containers.push(s);
                }
            }
        }
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| -> u64 {
            containers.iter().filter_map(f).sum()
        };
        let cpu_total = sum(&|s| {
            s.cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds.as_ref())
                .map(|v| v.value)
        });
        let cpu_cores = sum(&|s| {
            s.cpu
                .as_ref()
                .and_then(|c| c.usage_nano_cores.as_ref())
                .map(|v| v.value)
        });
        let ws = sum(&|s| {
            s.memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .map(|v| v.value)
        });
        let usage = sum(&|s| {
            s.memory
                .as_ref()
                .and_then(|m| m.usage_bytes.as_ref())
                .map(|v| v.value)
        });
        let rss = sum(&|s| {
            s.memory
                .as_ref()
                .and_then(|m| m.rss_bytes.as_ref())
                .map(|v| v.value)
        });
        let u = |v: u64| Some(cri::UInt64Value { value: v });
        let pid = p.pause_pid.or_else(|| {
            self.store
                .containers_of(&p.id)
                .iter()
                .find(|c| c.state == ContainerState::Running)
                .map(|c| c.pid)
        });
        let network = pid.and_then(|pid| network_usage(pid, now));
        let processes: u64 = self
            .store
            .containers_of(&p.id)
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| count_cgroup_procs(c.pid))
            .sum();
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: p.id.clone(),
                metadata: p.config.metadata.clone(),
                labels: p.config.labels.clone(),
                annotations: p.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: u(cpu_total),
                    usage_nano_cores: u(cpu_cores),
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: u(ws),
                    available_bytes: None,
                    usage_bytes: u(usage),
                    rss_bytes: u(rss),
                    page_faults: None,
                    major_page_faults: None,
                }),
                network,
                process: Some(cri::ProcessUsage {
                    timestamp: now,
                    process_count: u(processes),
                }),
                containers,
            }),
            windows: None,
        }
    }

    pub async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let id = self.store.resolve_pod(id)?;
        let p = self
            .store
            .pod(&id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))?;
        Ok(self.pod_stats_of(&p).await)
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        f: Option<cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        let f = f.unwrap_or_default();
        let mut out = Vec::new();
        for p in self.store.pods() {
            if p.state != PodState::Ready
                || !(f.id.is_empty() || p.id.starts_with(&f.id))
                || !util::labels_match(&p.config.labels, &f.label_selector)
            {
                continue;
            }
            out.push(self.pod_stats_of(&p).await);
        }
        out
    }

    // ------------------------------------------------------------------
    // Recovery

    /// Ends a task a crash left without a record: its shim (found again
    /// through `start`, which returns the pod's running shim) kills and
    /// deletes it; the shim is asked to leave when its pod is gone too.
    async fn reap_orphan(&self, id: &str, bundle: &Path, shutdown_shim: bool) {
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
        if shutdown_shim {
            self.shims.shutdown(&address).await;
        }
    }

    /// After a restart: reconnect to running containers' shims, record how
    /// the others ended, and remove what no record refers to.
    async fn recover(self: &Arc<Self>) {
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
                state = self
                    .shims
                    .call::<_, api::StateResponse>(address, "State", &req, 5 * SECOND)
                    .await
                    .ok();
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
                            self.record_exit(&c.id, s.exit_status as i32, at, oom);
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
                let keep_shim =
                    read_owner(&e.path()).is_some_and(|(pod, _)| pods_alive.contains(&pod));
                self.reap_orphan(&id, &e.path(), !keep_shim).await;
                util::unmount_all(&e.path().join("rootfs"));
                let _ = util::remove_dir_all_unmounting(&e.path());
                let _ = self.images.remove_rootfs(&id);
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
                    self.reap_orphan(&id, &pause, true).await;
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

/// Which pod and handler a bundle or pod directory belongs to, written
/// before any shim hears of it: recovery needs it to clean up after an
/// interrupted request.
fn write_owner(dir: &Path, pod_id: &str, handler: &str) {
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(
        dir.join("berthd.json"),
        json!({"pod": pod_id, "handler": handler}).to_string(),
    );
}

fn read_owner(dir: &Path) -> Option<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("berthd.json")).ok()?).ok()?;
    Some((
        v["pod"].as_str()?.to_owned(),
        v["handler"].as_str()?.to_owned(),
    ))
}

/// The exit a shim recorded in the bundle: (code, OOM-killed).
fn exit_record(bundle: &Path) -> Option<(i32, bool)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("berth-exit.json")).ok()?).ok()?;
    Some((
        v["exit_status"].as_i64()? as i32,
        v["oom_killed"].as_bool().unwrap_or(false),
    ))
}

fn write_pause(path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, PAUSE).map_err(|e| Error::internal(tmp.display(), e))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| Error::internal(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::internal(path.display(), e))
}

/// Bytes and inodes under a directory (a writable layer).
fn dir_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                bytes += m.blocks() * 512;
            }
        }
    }
    (bytes, inodes)
}

/// Interface counters of the pod's network namespace, seen through one of
/// its processes.
fn network_usage(pid: u32, now: i64) -> Option<cri::NetworkUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut interfaces = Vec::new();
    for line in text.lines().skip(2) {
        let (name, rest) = line.split_once(':')?;
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 16 {
            continue;
        }
        interfaces.push(cri::NetworkInterfaceUsage {
            name: name.trim().to_owned(),
            rx_bytes: Some(cri::UInt64Value { value: f[0] }),
            rx_errors: Some(cri::UInt64Value { value: f[2] }),
            tx_bytes: Some(cri::UInt64Value { value: f[8] }),
            tx_errors: Some(cri::UInt64Value { value: f[10] }),
        });
    }
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| interfaces.iter().find(|i| i.name != "lo"))
        .cloned();
    Some(cri::NetworkUsage {
        timestamp: now,
        default_interface,
        interfaces,
    })
}

/// Processes in the cgroup (pids controller) of a container's init.
fn count_cgroup_procs(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return 0;
    };
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if controllers.split(',').any(|c| c == "pids") {
            return std::fs::read_to_string(format!("/sys/fs/cgroup/pids{path}/cgroup.procs"))
                .map(|t| t.lines().count() as u64)
                .unwrap_or(0);
        }
    }
    0
}
