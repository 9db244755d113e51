//! The CRI runtime: pods and containers over the image store and shims.
//!
//! One module per RPC family, each with its own `impl Cri` block, as
//! containerd's CRI plugin keeps one file per family: `pod` (sandboxes),
//! `container` (create, remove, update, log reopening), `lifecycle`
//! (start, stop, exit watching), `status` (status and lists), `exec`
//! (ExecSync), `stats` and `recovery` (what a restart finds).

mod container;
mod exec;
mod image_volumes;
mod lifecycle;
mod metrics;
mod pod;
mod recovery;
mod stats;
mod status;
mod wire;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_image::ImageStore;
use k8s_cri::v1 as cri;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::config::{Config, RestrictOom, RuntimeHandler};
use crate::error::{Error, Result};
use crate::shims::Shims;
use crate::store::Store;
use crate::util::{self, now_ns};

/// Exit code recorded when how a container ended cannot be known (its
/// shim died with it).
pub const UNKNOWN_EXIT: i32 = 255;

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
    /// Writable-layer usage by container, with when it was measured:
    /// walking a layer is kept to once per [`stats::LAYER_USAGE_TTL`].
    layer_usage: Mutex<HashMap<String, (std::time::Instant, u64, u64)>>,
    /// Serialises operations on one pod (create/stop/remove of it and its
    /// containers' shim start).
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A malloc_trim is scheduled (pod::release_memory_soon).
    trim_scheduled: Arc<std::sync::atomic::AtomicBool>,
    pause_binary: PathBuf,
    /// Whether container rootfs overlays can be id-mapped here (probed at
    /// start): user-namespaced pods need it.
    idmapped_rootfs: std::result::Result<(), String>,
    /// Running pulls' progress (berth.v1.Images/WatchPull).
    pub pulls: Arc<crate::pull_progress::Board>,
    /// Pod networking (CNI).
    pub network: crate::network::Network,
    /// The host's network namespace, to come back to from a pod's
    /// (port-forward sockets, metrics).
    pub(crate) host_netns: Option<Arc<crate::netns::HostNetns>>,
    /// The streaming server, started once the service exists.
    pub stream: std::sync::OnceLock<Arc<berth_stream::Server>>,
    /// NRI plugins' socket and connections (crate::nri), started after
    /// recovery.
    pub(crate) nri: std::sync::OnceLock<Arc<berth_nri::Nri>>,
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

pub(crate) static PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-pause"));

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("a blocking task", e))?
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
        let idmapped_rootfs = {
            let scratch = config.root.join("cri").join("idmap-probe");
            let holder = pause_binary.clone();
            blocking(move || {
                Ok(crate::sandbox::probe_idmapped_rootfs(&scratch, &holder)
                    .map_err(|e| e.to_string()))
            })
            .await?
        };
        if let Err(e) = &idmapped_rootfs {
            tracing::warn!("pods with user namespaces are not supported here: {e}");
        }
        let shims = Arc::new(Shims::new(
            &config.socket,
            &config.state,
            config.shim_dirs.clone(),
        ));
        let network = crate::network::Network::new(
            config.cni.clone(),
            config.root.join("cri").join("network"),
        );
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
            layer_usage: Mutex::new(HashMap::new()),
            pod_locks: Mutex::new(HashMap::new()),
            trim_scheduled: Arc::default(),
            pause_binary,
            idmapped_rootfs,
            pulls: Arc::default(),
            network,
            host_netns: crate::netns::HostNetns::pin().map(Arc::new),
            stream: std::sync::OnceLock::new(),
            nri: std::sync::OnceLock::new(),
        });
        cri.recover().await;
        let backend = Arc::new(crate::streaming::CriBackend {
            cri: Arc::downgrade(&cri),
        });
        let stream_config = cri.config.stream.server_config()?;
        let server = berth_stream::Server::start(stream_config, backend)
            .await
            .map_err(|e| Error::Config(format!("starting the streaming server: {e}")))?;
        let _ = cri.stream.set(server);
        crate::nri::start(&cri)?;
        Ok(cri)
    }

    /// Whether pods of `handler` may have a user namespace of their own.
    pub fn supports_user_namespaces(&self, handler: &crate::config::RuntimeHandler) -> bool {
        handler.supports_user_namespaces() && self.idmapped_rootfs.is_ok()
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

    /// Whether a pod runs in a VM (the `vm` class): its containers' pids
    /// and cgroups are the guest's, not the host's.
    pub(crate) fn runs_in_vm(&self, pod: &crate::store::PodRecord) -> bool {
        self.config
            .handler(&pod.runtime_handler)
            .is_some_and(|h| h.is_vm())
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

fn write_pause(path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, PAUSE).map_err(|e| Error::internal(tmp.display(), e))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| Error::internal(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::internal(path.display(), e))
}
