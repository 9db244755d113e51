//! berthd's records of pods and containers: an in-memory index over a redb
//! file, written through on every change so that a `kill -9` loses nothing
//! a client was told. A name is reserved exactly when a record holds it,
//! in the same transaction, so a crash cannot leave a name reserved by
//! nothing (or a record without its name).
// The closures run by ReopeningDb::with return redb's own (large) error
// type, once per transaction.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use berth_image::db::ReopeningDb;
use k8s_cri::v1 as cri;
use prost::bytes::Bytes;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PodState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// Paths of a pod's pinned namespaces (none: the host's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's PID namespace, held by its pause container.
    pub pid: Option<PathBuf>,
    /// Its user namespace (hostUsers: false), owner of its network, IPC
    /// and UTS namespaces.
    #[serde(default)]
    pub user: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub state: PodState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub namespaces: PodNamespaces,
    /// The pod's directory (hostname, hosts, resolv.conf, shm, ns pins).
    pub dir: PathBuf,
    /// The cgroup parent of its containers.
    pub cgroup_parent: String,
    /// The address of the pod's shim, once it has one.
    pub shim_address: Option<String>,
    /// The pause container's pid when the pod shares its PID namespace.
    pub pause_pid: Option<u32>,
    /// The pod's IP addresses (none with the host network).
    pub ips: Vec<String>,
}

impl PodRecord {
    pub fn name(&self) -> String {
        let m = self.config.metadata.clone().unwrap_or_default();
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: cri::ContainerConfig,
    /// The image as the request named it, and as the store knows it.
    pub image_ref: String,
    pub image_id: String,
    /// The image's repo digest, if it has one (ContainerStatus.image_ref).
    pub image_repo_digest: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: u32,
    pub bundle: PathBuf,
    /// Absolute path of its CRI log (empty: none).
    pub log_path: String,
    /// The image store's rootfs key.
    pub rootfs_key: String,
    /// The process user the spec was given: uid, gid, supplemental groups.
    #[serde(default)]
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// Its image volumes (CRI Mount.image): which mount, which image.
    #[serde(default)]
    pub image_volumes: Vec<ImageVolume>,
}

/// An image mounted as a volume: `config.mounts[mount]`, the image's
/// rootfs key in the image store, and its digest (what ContainerStatus
/// reports).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageVolume {
    pub mount: usize,
    pub rootfs_key: String,
    pub image_ref: String,
}

impl ContainerRecord {
    pub fn name(&self) -> String {
        let m = self.config.metadata.clone().unwrap_or_default();
        format!("{}_{}_{}", m.name, self.pod_id, m.attempt)
    }
}

#[derive(Default)]
struct Index {
    pods: HashMap<String, PodRecord>,
    containers: HashMap<String, ContainerRecord>,
    /// Reserved names: pod name -> id, container name -> id.
    pod_names: HashMap<String, String>,
    container_names: HashMap<String, String>,
    /// Pod id -> its containers' ids: kubelet asks for a pod's containers
    /// (PodSandboxStatus, stats) every second, for every pod.
    pod_containers: HashMap<String, std::collections::BTreeSet<String>>,
    /// The unfiltered ListPodSandbox and ListContainers items in wire form,
    /// kept until a record of their kind changes: kubelet's PLEG lists the
    /// whole node every second, and pods change far less often.
    pod_list: Option<Bytes>,
    container_list: Option<Bytes>,
}

impl Index {
    fn insert_pod(&mut self, pod: PodRecord) {
        self.pod_list = None;
        self.pods.insert(pod.id.clone(), pod);
    }

    fn remove_pod(&mut self, id: &str) -> Option<PodRecord> {
        let pod = self.pods.remove(id)?;
        self.pod_list = None;
        Some(pod)
    }

    fn insert_container(&mut self, c: ContainerRecord) {
        self.container_list = None;
        self.pod_containers
            .entry(c.pod_id.clone())
            .or_default()
            .insert(c.id.clone());
        self.containers.insert(c.id.clone(), c);
    }

    fn remove_container(&mut self, id: &str) -> Option<ContainerRecord> {
        let c = self.containers.remove(id)?;
        self.container_list = None;
        if let Some(ids) = self.pod_containers.get_mut(&c.pod_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.pod_containers.remove(&c.pod_id);
            }
        }
        Some(c)
    }
}

#[derive(Clone)]
pub struct Store {
    db: Arc<ReopeningDb>,
    index: Arc<Mutex<Index>>,
    pub path: PathBuf,
}

/// The list in `slot`, or the one `build` makes of `records`, kept there.
fn cached<'a, R: 'a>(
    slot: &mut Option<Bytes>,
    records: &mut dyn Iterator<Item = &'a R>,
    build: impl FnOnce(&mut dyn Iterator<Item = &'a R>) -> Vec<u8>,
) -> Bytes {
    slot.get_or_insert_with(|| Bytes::from(build(records)))
        .clone()
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::internal(dir.display(), e))?;
        }
        let db = ReopeningDb::create(path)
            .map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
        db.with(|db| {
            let w = db.begin_write()?;
            w.open_table(PODS)?;
            w.open_table(CONTAINERS)?;
            w.commit()?;
            Ok(())
        })
        .map_err(db_err)?;
        let mut index = Index::default();
        for (k, v) in db.rows(PODS).map_err(db_err)? {
            match serde_json::from_slice::<PodRecord>(&v) {
                Ok(p) => {
                    index.pod_names.insert(p.name(), p.id.clone());
                    index.pods.insert(p.id.clone(), p);
                }
                Err(e) => tracing::error!("pod record {k}: {e}; ignoring it"),
            }
        }
        for (k, v) in db.rows(CONTAINERS).map_err(db_err)? {
            match serde_json::from_slice::<ContainerRecord>(&v) {
                Ok(c) => {
                    index.container_names.insert(c.name(), c.id.clone());
                    index.insert_container(c);
                }
                Err(e) => tracing::error!("container record {k}: {e}; ignoring it"),
            }
        }
        Ok(Store {
            db: Arc::new(db),
            index: Arc::new(Mutex::new(index)),
            path: path.to_owned(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        value: Option<&[u8]>,
    ) -> Result<()> {
        self.db
            .with(|db| {
                let w = db.begin_write()?;
                {
                    let mut t = w.open_table(table)?;
                    match value {
                        Some(v) => {
                            t.insert(id, v)?;
                        }
                        None => {
                            t.remove(id)?;
                        }
                    }
                }
                w.commit()?;
                Ok(())
            })
            .map_err(db_err)
    }

    /// Adds a pod, reserving its name.
    pub fn add_pod(&self, pod: PodRecord) -> Result<()> {
        let mut index = self.lock();
        let name = pod.name();
        if let Some(other) = index.pod_names.get(&name) {
            return Err(Error::AlreadyExists(format!(
                "pod name {name:?} is reserved by pod {other}"
            )));
        }
        self.write(
            PODS,
            &pod.id,
            Some(&serde_json::to_vec(&pod).map_err(db_err)?),
        )?;
        index.pod_names.insert(name, pod.id.clone());
        index.insert_pod(pod);
        Ok(())
    }

    pub fn update_pod(&self, id: &str, f: impl FnOnce(&mut PodRecord)) -> Result<PodRecord> {
        let mut index = self.lock();
        let mut pod = index
            .pods
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))?;
        f(&mut pod);
        self.write(PODS, id, Some(&serde_json::to_vec(&pod).map_err(db_err)?))?;
        index.insert_pod(pod.clone());
        Ok(pod)
    }

    pub fn remove_pod(&self, id: &str) -> Result<()> {
        let mut index = self.lock();
        if index.pods.contains_key(id) {
            self.write(PODS, id, None)?;
            if let Some(p) = index.remove_pod(id) {
                index.pod_names.remove(&p.name());
            }
        }
        Ok(())
    }

    pub fn pod(&self, id: &str) -> Option<PodRecord> {
        self.lock().pods.get(id).cloned()
    }

    pub fn pods(&self) -> Vec<PodRecord> {
        self.lock().pods.values().cloned().collect()
    }

    /// What `f` makes of each pod it keeps, computed under the index's lock
    /// without copying the records (the list calls kubelet makes every
    /// second go through here).
    pub fn map_pods<T>(&self, f: impl FnMut(&PodRecord) -> Option<T>) -> Vec<T> {
        self.lock().pods.values().filter_map(f).collect()
    }

    /// Every pod's ListPodSandbox item as `build` writes them from the
    /// records, built under the store's lock the first time after a pod
    /// changed and kept until the next change.
    pub fn pod_list(
        &self,
        build: impl FnOnce(&mut dyn Iterator<Item = &PodRecord>) -> Vec<u8>,
    ) -> Bytes {
        let index = &mut *self.lock();
        cached(&mut index.pod_list, &mut index.pods.values(), build)
    }

    /// What `f` makes of all pods, under the store's lock.
    pub fn with_pods<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &PodRecord>) -> T) -> T {
        f(&mut self.lock().pods.values())
    }

    /// [`Store::with_pods`] for containers.
    pub fn with_containers<T>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = &ContainerRecord>) -> T,
    ) -> T {
        f(&mut self.lock().containers.values())
    }

    /// [`Store::pod_list`] for ListContainers.
    pub fn container_list(
        &self,
        build: impl FnOnce(&mut dyn Iterator<Item = &ContainerRecord>) -> Vec<u8>,
    ) -> Bytes {
        let index = &mut *self.lock();
        cached(
            &mut index.container_list,
            &mut index.containers.values(),
            build,
        )
    }

    /// [`Store::map_pods`] for containers.
    pub fn map_containers<T>(&self, f: impl FnMut(&ContainerRecord) -> Option<T>) -> Vec<T> {
        self.lock().containers.values().filter_map(f).collect()
    }

    pub fn add_container(&self, c: ContainerRecord) -> Result<()> {
        let mut index = self.lock();
        let name = c.name();
        if let Some(other) = index.container_names.get(&name) {
            return Err(Error::AlreadyExists(format!(
                "container name {name:?} is reserved by container {other}"
            )));
        }
        self.write(
            CONTAINERS,
            &c.id,
            Some(&serde_json::to_vec(&c).map_err(db_err)?),
        )?;
        index.container_names.insert(name, c.id.clone());
        index.insert_container(c);
        Ok(())
    }

    pub fn update_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord> {
        let mut index = self.lock();
        let mut c = index
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        f(&mut c);
        self.write(
            CONTAINERS,
            id,
            Some(&serde_json::to_vec(&c).map_err(db_err)?),
        )?;
        index.insert_container(c.clone());
        Ok(c)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let mut index = self.lock();
        if let Some(c) = index.containers.get(id).cloned() {
            self.write(CONTAINERS, id, None)?;
            index.remove_container(id);
            index.container_names.remove(&c.name());
        }
        Ok(())
    }

    pub fn container(&self, id: &str) -> Option<ContainerRecord> {
        self.lock().containers.get(id).cloned()
    }

    /// What `f` makes of a container, under the store's lock without
    /// copying the record; None if there is no such container.
    pub fn with_container<T>(&self, id: &str, f: impl FnOnce(&ContainerRecord) -> T) -> Option<T> {
        self.lock().containers.get(id).map(f)
    }

    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.lock().containers.values().cloned().collect()
    }

    pub fn containers_of(&self, pod_id: &str) -> Vec<ContainerRecord> {
        let index = self.lock();
        index
            .pod_containers
            .get(pod_id)
            .into_iter()
            .flatten()
            .filter_map(|id| index.containers.get(id).cloned())
            .collect()
    }

    /// What `f` makes of a pod and its containers, under the store's lock
    /// without copying the records (kubelet asks for every pod's status
    /// every second); None if there is no such pod.
    pub fn with_pod<T>(
        &self,
        id: &str,
        f: impl FnOnce(&PodRecord, &mut dyn Iterator<Item = &ContainerRecord>) -> T,
    ) -> Option<T> {
        let index = self.lock();
        let pod = index.pods.get(id)?;
        let mut containers = index
            .pod_containers
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|c| index.containers.get(c));
        Some(f(pod, &mut containers))
    }

    /// Resolves a full id or a unique prefix of one (as crictl users type).
    /// A full id (what kubelet sends) is found without a scan.
    pub fn resolve_pod(&self, id: &str) -> Result<String> {
        let index = self.lock();
        if index.pods.contains_key(id) {
            return Ok(id.to_owned());
        }
        resolve(id, index.pods.keys(), "pod sandbox")
    }

    pub fn resolve_container(&self, id: &str) -> Result<String> {
        let index = self.lock();
        if index.containers.contains_key(id) {
            return Ok(id.to_owned());
        }
        resolve(id, index.containers.keys(), "container")
    }
}

fn resolve<'a>(id: &str, keys: impl Iterator<Item = &'a String>, what: &str) -> Result<String> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} id is empty")));
    }
    let matches: Vec<&String> = keys.filter(|k| k.starts_with(id)).collect();
    if let Some(exact) = matches.iter().find(|k| k.as_str() == id) {
        return Ok((*exact).clone());
    }
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::NotFound(format!("{what} {id:?} not found"))),
        _ => Err(Error::InvalidArgument(format!(
            "{what} id prefix {id:?} is ambiguous"
        ))),
    }
}
