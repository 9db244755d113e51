//! CreateContainer, RemoveContainer, UpdateContainerResources and
//! ReopenContainerLog: a container's records, bundle and shim task.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_shim_client::ATTACH_URI;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use k8s_cri::v1 as cri;

use crate::config::RuntimeHandler;
use crate::error::{Error, Result};
use crate::shims::{self, SECOND};
use crate::spec::{self, SpecInput};
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};
use crate::util::{self, now_ns};

use super::{blocking, write_owner, Cri};

impl Cri {
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
            image_volumes: Vec::new(),
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
            let shares_pids = ns.pid == cri::NamespaceMode::Target as i32
                || ns.pid == cri::NamespaceMode::Node as i32;
            if shares_pids && self.runs_in_vm(&pod) {
                return Err(Error::InvalidArgument(format!(
                    "pod {} runs in a VM: its containers get PID namespaces of their own",
                    pod.id
                )));
            }
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
        self.nri_post_create_container(&id).await;
        Ok(id)
    }

    pub(super) async fn create_container_inner(
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
        // A user-namespaced pod's rootfs shows the image's setuid-root
        // files as the pod's unprivileged host uid's: harmless to the host,
        // and a nosuid the container could not clear (it is locked in the
        // pod's user namespace) would break them inside.
        let host_nosuid = handler.is_berth_shim()
            && handler.binary_name.is_none()
            && pod.namespaces.user.is_none();
        let key = record.rootfs_key.clone();
        let image_id = image.id.clone();
        let userns = match &pod.namespaces.user {
            Some(ns) => spec::pod_user_mapping(&spec::pod_namespace_options(&pod.config))?
                .map(|m| (ns.clone(), (m.host_uid, m.host_gid))),
            None => None,
        };
        {
            let rootfs = rootfs.clone();
            let bundle = bundle.clone();
            blocking(move || {
                util::create_private_dir(&bundle)?;
                std::fs::create_dir_all(&rootfs)
                    .map_err(|e| Error::internal(rootfs.display(), e))?;
                let m = images.prepare_rootfs(&image_id, &key)?;
                match &userns {
                    // The pod's root owns the image's root-owned files, as
                    // the host's root does on disk.
                    Some((userns, root)) => {
                        let ns = crate::sandbox::open_user_namespace(userns)?;
                        berth_image::mount_overlay_idmapped(
                            &m,
                            &rootfs,
                            std::os::fd::AsFd::as_fd(&ns),
                            *root,
                            &bundle.join("idmapped-layers"),
                        )?
                    }
                    None => berth_image::mount_overlay(&m, &rootfs)?,
                }
                if host_nosuid {
                    util::remount_nosuid(&rootfs)?;
                }
                Ok(())
            })
            .await?;
        }
        write_owner(&bundle, &pod.id, &pod.runtime_handler);
        let image_volumes = self
            .mount_image_volumes(record, pod.namespaces.user.as_deref())
            .await?;
        let mut built = spec::container_oci_spec(&SpecInput {
            id: &record.id,
            pod,
            config: &record.config,
            image: &image.config,
            image_name: &record.image_ref,
            rootfs: &rootfs,
            oom_score_adj_floor: self.oom_floor,
            target_pid,
            image_volumes: &image_volumes,
        })?;
        if host_nosuid {
            built
                .spec
                .annotations_mut()
                .get_or_insert_with(Default::default)
                .insert(
                    berth_common::annotations::ROOTFS_HOST_NOSUID.into(),
                    "true".into(),
                );
        }
        self.nri_create_container(pod, record, &mut built.spec)
            .await?;
        let config = serde_json::to_vec(&built.spec)
            .map_err(|e| Error::internal("serializing config.json", e))?;
        util::write_private_file(&bundle.join("config.json"), &config)
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
        // The shim relays the output (to the log, if any, and to attach
        // sessions) and, with `stdin` set, holds the container's stdin open
        // for attach sessions to feed.
        create.stdout = if record.log_path.is_empty() {
            ATTACH_URI.to_owned()
        } else {
            format!("crilog://{}", record.log_path)
        };
        if !record.config.tty {
            create.stderr = create.stdout.clone();
        }
        if record.config.stdin {
            create.stdin = ATTACH_URI.to_owned();
        }
        create.options = shims::options_field(handler);
        let r: api::CreateTaskResponse = self
            .shims
            .create_task(&address, &create, 60 * SECOND)
            .await?;
        record.pid = r.pid;
        Ok(())
    }

    /// The shim of a pod, started with its first container (again if it
    /// died). Called with
    /// the pod's lock held.
    pub(super) async fn pod_shim(
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

    pub(super) async fn delete_in_shim(
        &self,
        pod: &PodRecord,
        handler: &RuntimeHandler,
        c: &ContainerRecord,
    ) {
        let address = self.store.pod(&pod.id).and_then(|p| p.shim_address);
        let Some(address) = address else { return };
        let mut del = api::DeleteRequest::new();
        del.id = c.id.clone();
        match self.shims.delete_task(&address, &del, 30 * SECOND).await {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(Error::FailedPrecondition(_)) => {
                let mut kill = api::KillRequest::new();
                kill.id = c.id.clone();
                kill.signal = 9;
                kill.all = true;
                let _ = self.shims.kill(&address, &kill, 10 * SECOND).await;
                let mut wait = api::WaitRequest::new();
                wait.id = c.id.clone();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.shims.wait(&address, &wait, 0),
                )
                .await;
                let _ = self.shims.delete_task(&address, &del, 30 * SECOND).await;
            }
            Err(e) => {
                tracing::warn!(container = %c.id, "deleting in the shim: {e}; cleaning up with `delete`");
                let _ = self.shims.delete(handler, &c.id, &c.bundle).await;
            }
        }
    }

    pub(super) async fn cleanup_container_files(&self, c: &ContainerRecord) {
        let images = Arc::clone(&self.images);
        let bundle = c.bundle.clone();
        let key = c.rootfs_key.clone();
        let record = c.clone();
        let r = blocking(move || {
            util::unmount_all(&bundle.join("rootfs"));
            util::remove_dir_all_unmounting(&bundle)?;
            images.remove_rootfs(&key)?;
            super::image_volumes::release_image_volumes(&images, &record)?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(container = %c.id, "cleaning up: {e}");
        }
    }

    pub(crate) fn shim_address_of(&self, c: &ContainerRecord) -> Result<String> {
        self.store
            .pod(&c.pod_id)
            .and_then(|p| p.shim_address)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("container {}: its pod has no shim", c.id))
            })
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
        self.nri_remove_container(&c).await;
        self.cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.layer_usage
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
        // The same mapping as at creation (hugepage limits included), with
        // what NRI plugins changed.
        let (r, res) = self.nri_update_container(&c, r).await?;
        self.apply_container_resources(&c, r, res).await?;
        self.nri_post_update_container(&id).await;
        Ok(())
    }

    /// Applies resources to a container's cgroup (when it has one) and
    /// records them: UpdateContainerResources' path, and NRI plugins'
    /// updates of other containers.
    pub(crate) async fn apply_container_resources(
        &self,
        c: &ContainerRecord,
        r: cri::LinuxContainerResources,
        res: oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        let id = c.id.clone();
        if c.state == ContainerState::Running || c.state == ContainerState::Created {
            let address = self.shim_address_of(c)?;
            let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
            any.type_url =
                "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
            any.value = serde_json::to_vec(&res).unwrap_or_default();
            let mut u = api::UpdateTaskRequest::new();
            u.id = id.clone();
            u.resources = containerd_shim_protos::protobuf::MessageField::some(any);
            let _: Empty = self.shims.update(&address, &u, 30 * SECOND).await?;
        }
        self.store.update_container(&id, |c| {
            let linux = c.config.linux.get_or_insert_with(Default::default);
            let cur = linux.resources.get_or_insert_with(Default::default);
            let oom = cur.oom_score_adj;
            *cur = r;
            cur.oom_score_adj = oom;
        })?;
        Ok(())
    }

    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let c = self.running_container(id)?;
        let id = c.id.clone();
        let address = self.shim_address_of(&c)?;
        let client = self.shims.client(&address).await?;
        client
            .reopen_log(&id)
            .await
            .map_err(|e| Error::from_ttrpc("ReopenLog", e))
    }
}
