//! berthd's side of NRI (berth-nri): the [`Domain`] plugins see the
//! runtime through, and one `Cri::nri_*` method per lifecycle step for the
//! CRI service to call, so that the call sites stay one line and every
//! conversion between berthd's records and NRI's types lives here.
//!
//! What fails a CRI request, as containerd decides: a plugin's error at
//! RunPodSandbox, CreateContainer, StartContainer and
//! UpdateContainerResources. The other events only tell plugins what
//! happened; an error there is logged.
//!
//! Locks: NRI holds its plugin list for each event, and the CRI service
//! may hold a pod's lock while it waits on plugins (creation). So nothing
//! here that a plugin can trigger ([`Domain`]'s methods, through a
//! plugin's answer or its UpdateContainers) takes a pod lock or calls back
//! into NRI: the store is read as it is, and updates go straight to the
//! shim, as UpdateContainerResources does after its own NRI step.

use std::sync::{Arc, Weak};

use berth_nri::{self as nri, Domain, Nri};
use k8s_cri::v1 as cri;
use oci_spec::runtime as oci;

use crate::error::{Error, Result};
use crate::service::Cri;
use crate::spec;
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};

/// Starts NRI as configured (nothing listens when it is off). Called once
/// recovery is done, so that the first plugins synchronize with the pods
/// and containers berthd found again.
pub(crate) fn start(cri: &Arc<Cri>) -> Result<()> {
    let config = cri.config.nri.nri_config()?;
    let domain = Arc::new(CriDomain {
        cri: Arc::downgrade(cri),
    });
    let _ = cri.nri.set(Nri::start(config, domain)?);
    Ok(())
}

/// What plugins see of berthd. Weak: NRI lives inside the `Cri` it serves.
struct CriDomain {
    cri: Weak<Cri>,
}

#[async_trait::async_trait]
impl Domain for CriDomain {
    async fn list_pods_and_containers(&self) -> (Vec<nri::PodSandbox>, Vec<nri::Container>) {
        let Some(cri) = self.cri.upgrade() else {
            return Default::default();
        };
        // The store's own snapshot, without pod locks: a creation holding
        // one may be waiting for this plugin list (see the module's note).
        // A container being created is not in the store until it is.
        let pods = cri.store.pods().iter().map(pod_sandbox).collect();
        let containers = cri.store.containers().iter().map(container_of).collect();
        (pods, containers)
    }

    async fn update_containers(
        &self,
        updates: Vec<nri::ContainerUpdate>,
    ) -> Vec<nri::ContainerUpdate> {
        let Some(cri) = self.cri.upgrade() else {
            return updates;
        };
        let mut failed = Vec::new();
        for u in updates {
            if let Err(e) = cri.apply_nri_update(&u).await {
                // NRI's answer carries the failed updates, not why.
                tracing::warn!(container = %u.container_id, "nri: an update plugins asked failed: {e}");
                failed.push(u);
            }
        }
        failed
    }
}

impl Cri {
    /// NRI, when it is on.
    fn enabled_nri(&self) -> Option<&Nri> {
        self.nri.get().map(|n| &**n).filter(|n| n.is_enabled())
    }

    /// Tells plugins berthd is going down and removes the NRI socket.
    pub(crate) async fn shutdown_nri(&self) {
        if let Some(nri) = self.enabled_nri() {
            nri.shutdown().await;
        }
    }

    /// The pod a container belongs to, as plugins see it (its id only if
    /// the pod is gone).
    fn nri_pod_of(&self, pod_id: &str) -> nri::PodSandbox {
        self.store
            .pod(pod_id)
            .map(|p| pod_sandbox(&p))
            .unwrap_or_else(|| nri::PodSandbox {
                id: pod_id.to_owned(),
                ..Default::default()
            })
    }

    /// RunPodSandbox, once the pod is ready and listed: a plugin's error
    /// fails the request.
    pub(crate) async fn nri_run_pod_sandbox(&self, pod: &PodRecord) -> Result<()> {
        let Some(nri) = self.enabled_nri() else {
            return Ok(());
        };
        Ok(nri.run_pod_sandbox(&pod_sandbox(pod)).await?)
    }

    /// StopPodSandbox, once per pod: only while it is still ready (kubelet
    /// stops pods again and RemovePodSandbox stops first).
    pub(crate) async fn nri_stop_pod_sandbox(&self, pod: &PodRecord) {
        let Some(nri) = self.enabled_nri() else {
            return;
        };
        if pod.state == PodState::Ready {
            logged(
                "StopPodSandbox",
                &pod.id,
                nri.stop_pod_sandbox(&pod_sandbox(pod)).await,
            );
        }
    }

    pub(crate) async fn nri_remove_pod_sandbox(&self, pod: &PodRecord) {
        let Some(nri) = self.enabled_nri() else {
            return;
        };
        logged(
            "RemovePodSandbox",
            &pod.id,
            nri.remove_pod_sandbox(&pod_sandbox(pod)).await,
        );
    }

    /// CreateContainer, with the typed spec built and config.json not yet
    /// written: plugins' adjustments are applied to `spec`. An error (a
    /// plugin refused, plugins conflicted, or they asked what berth cannot
    /// apply) fails the creation, which the caller undoes.
    pub(crate) async fn nri_create_container(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        spec: &mut oci::Spec,
    ) -> Result<()> {
        let Some(nri) = self.enabled_nri() else {
            return Ok(());
        };
        let mut ctr = nri::container_from_spec(spec);
        identify(&mut ctr, c);
        let adjustment = nri.create_container(&pod_sandbox(pod), &ctr).await?;
        if !adjustment.is_empty() {
            tracing::debug!(container = %c.id, ?adjustment, "nri: plugins adjusted the container");
            adjustment.apply_to_spec(spec)?;
        }
        Ok(())
    }

    /// PostCreateContainer, once the container is created and listed.
    pub(crate) async fn nri_post_create_container(&self, id: &str) {
        self.nri_container_event(id, Event::PostCreate).await;
    }

    /// StartContainer, before the container's process is released: a
    /// plugin's error fails the start.
    pub(crate) async fn nri_start_container(&self, c: &ContainerRecord) -> Result<()> {
        let Some(nri) = self.enabled_nri() else {
            return Ok(());
        };
        let pod = self.nri_pod_of(&c.pod_id);
        Ok(nri.start_container(&pod, &container_of(c)).await?)
    }

    pub(crate) async fn nri_post_start_container(&self, id: &str) {
        self.nri_container_event(id, Event::PostStart).await;
    }

    /// UpdateContainerResources' NRI step: plugins may change the
    /// resources asked for. Returns what to apply: the CRI resources to
    /// record (those asked, with what plugins changed that CRI can say)
    /// and the OCI resources for the shim (all of it, pids limit and other
    /// fields CRI lacks included).
    pub(crate) async fn nri_update_container(
        &self,
        c: &ContainerRecord,
        asked: cri::LinuxContainerResources,
    ) -> Result<(cri::LinuxContainerResources, oci::LinuxResources)> {
        let Some(nri) = self.enabled_nri() else {
            let res = spec::oci_resources(&asked);
            return Ok((asked, res));
        };
        let pod = self.nri_pod_of(&c.pod_id);
        let wanted = nri::resources_from_oci(&spec::oci_resources(&asked));
        let adjusted = nri
            .update_container(&pod, &container_of(c), &wanted)
            .await?;
        let mut r = asked;
        set_cri_resources(&mut r, &adjusted);
        let mut res = spec::oci_resources(&r);
        adjusted.apply_to_oci(&mut res);
        Ok((r, res))
    }

    pub(crate) async fn nri_post_update_container(&self, id: &str) {
        self.nri_container_event(id, Event::PostUpdate).await;
    }

    /// StopContainer, once the container has stopped, whether asked to or
    /// on its own (the exit watcher calls this, before StopContainer's
    /// caller is told).
    pub(crate) async fn nri_stop_container(&self, id: &str) {
        self.nri_container_event(id, Event::Stop).await;
    }

    /// RemoveContainer, with the record of the container just removed.
    pub(crate) async fn nri_remove_container(&self, c: &ContainerRecord) {
        let Some(nri) = self.enabled_nri() else {
            return;
        };
        let pod = self.nri_pod_of(&c.pod_id);
        logged(
            "RemoveContainer",
            &c.id,
            nri.remove_container(&pod, &container_of(c)).await,
        );
    }

    /// An event about a listed container that only informs plugins.
    async fn nri_container_event(&self, id: &str, event: Event) {
        let Some(nri) = self.enabled_nri() else {
            return;
        };
        let Some(c) = self.store.container(id) else {
            return;
        };
        let pod = self.nri_pod_of(&c.pod_id);
        let ctr = container_of(&c);
        let result = match event {
            Event::PostCreate => nri.post_create_container(&pod, &ctr).await,
            Event::PostStart => nri.post_start_container(&pod, &ctr).await,
            Event::PostUpdate => nri.post_update_container(&pod, &ctr).await,
            Event::Stop => nri.stop_container(&pod, &ctr).await,
        };
        logged(event.name(), id, result);
    }

    /// Applies resources a plugin asked for another container, through the
    /// same path as UpdateContainerResources after its NRI step (plugins
    /// are not asked again). Only a created or running container has a
    /// cgroup to change.
    async fn apply_nri_update(&self, u: &nri::ContainerUpdate) -> Result<()> {
        let c = self
            .store
            .container(&u.container_id)
            .ok_or_else(|| Error::NotFound(format!("container {} not found", u.container_id)))?;
        if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let mut r = c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default();
        set_cri_resources(&mut r, &u.resources);
        // Only what the plugin set: the shim leaves unset fields as they are.
        let mut res = oci::LinuxResources::default();
        u.resources.apply_to_oci(&mut res);
        self.apply_container_resources(&c, r, res).await
    }
}

/// The container events that only inform plugins.
#[derive(Debug, Clone, Copy)]
enum Event {
    PostCreate,
    PostStart,
    PostUpdate,
    Stop,
}

impl Event {
    /// NRI's name of the request.
    fn name(self) -> &'static str {
        match self {
            Event::PostCreate => "PostCreateContainer",
            Event::PostStart => "PostStartContainer",
            Event::PostUpdate => "PostUpdateContainer",
            Event::Stop => "StopContainer",
        }
    }
}

/// Logs a plugin's error at an event that cannot fail the request.
fn logged(event: &str, id: &str, result: nri::Result<()>) {
    if let Err(e) = result {
        tracing::warn!(id, "nri: {event}: {e}");
    }
}

/// A pod as plugins see it.
fn pod_sandbox(p: &PodRecord) -> nri::PodSandbox {
    let meta = p.config.metadata.clone().unwrap_or_default();
    let linux = p.config.linux.clone().unwrap_or_default();
    let resources = |r: Option<&cri::LinuxContainerResources>| {
        r.map(|r| nri::resources_from_oci(&spec::oci_resources(r)))
    };
    let ns = &p.namespaces;
    let namespaces = [
        ("network", &ns.net),
        ("ipc", &ns.ipc),
        ("uts", &ns.uts),
        ("pid", &ns.pid),
        ("user", &ns.user),
    ]
    .into_iter()
    .filter_map(|(kind, path)| {
        path.as_ref().map(|path| nri::LinuxNamespace {
            r#type: kind.into(),
            path: path.display().to_string(),
        })
    })
    .collect();
    nri::PodSandbox {
        id: p.id.clone(),
        name: meta.name,
        uid: meta.uid,
        namespace: meta.namespace,
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.runtime_handler.clone(),
        linux: Some(nri::LinuxPodSandbox {
            pod_overhead: resources(linux.overhead.as_ref()),
            pod_resources: resources(linux.resources.as_ref()),
            cgroup_parent: p.cgroup_parent.clone(),
            namespaces,
            ..Default::default()
        }),
        pid: p.pause_pid.unwrap_or(0),
        ips: p.ips.clone(),
    }
}

/// A container's identity and state from its record.
fn identify(ctr: &mut nri::Container, c: &ContainerRecord) {
    ctr.id = c.id.clone();
    ctr.pod_sandbox_id = c.pod_id.clone();
    ctr.name = c.config.metadata.clone().unwrap_or_default().name;
    ctr.labels = c.config.labels.clone();
}

/// A listed container as plugins see it: its spec as written at creation
/// (config.json, with what plugins adjusted then), its identity and state
/// from the record. Resources changed since by UpdateContainerResources
/// are not in config.json; plugins heard of them in UpdateContainer.
fn container_of(c: &ContainerRecord) -> nri::Container {
    let spec = std::fs::read(c.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<oci::Spec>(&b).ok());
    let mut ctr = spec
        .as_ref()
        .map(nri::container_from_spec)
        .unwrap_or_default();
    identify(&mut ctr, c);
    ctr.state = match c.state {
        ContainerState::Created => nri::ContainerState::Created,
        ContainerState::Running => nri::ContainerState::Running,
        ContainerState::Exited => nri::ContainerState::Stopped,
        ContainerState::Unknown => nri::ContainerState::Unknown,
    };
    if matches!(c.state, ContainerState::Created | ContainerState::Running) {
        ctr.pid = c.pid;
    }
    ctr
}

/// Sets in CRI resources the fields of NRI resources that CRI has (what
/// berthd records and ContainerStatus reports); the others (pids limit,
/// memory reservation, swappiness, ...) only reach the cgroup.
fn set_cri_resources(r: &mut cri::LinuxContainerResources, n: &nri::LinuxResources) {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(v) = n.cpu.period {
        r.cpu_period = signed(v);
    }
    if let Some(v) = n.cpu.quota {
        r.cpu_quota = v;
    }
    if let Some(v) = n.cpu.shares {
        r.cpu_shares = signed(v);
    }
    if !n.cpu.cpus.is_empty() {
        r.cpuset_cpus = n.cpu.cpus.clone();
    }
    if !n.cpu.mems.is_empty() {
        r.cpuset_mems = n.cpu.mems.clone();
    }
    if let Some(v) = n.memory.limit {
        r.memory_limit_in_bytes = v;
    }
    if let Some(v) = n.memory.swap {
        r.memory_swap_limit_in_bytes = v;
    }
    for h in &n.hugepage_limits {
        r.hugepage_limits.retain(|x| x.page_size != h.page_size);
        r.hugepage_limits.push(cri::HugepageLimit {
            page_size: h.page_size.clone(),
            limit: h.limit,
        });
    }
    r.unified
        .extend(n.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nri_resources_reach_the_cri_fields_cri_has() {
        let mut r = cri::LinuxContainerResources {
            cpu_shares: 100,
            memory_limit_in_bytes: 1 << 20,
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 1,
            }],
            ..Default::default()
        };
        let n = nri::LinuxResources {
            cpu: nri::LinuxCpu {
                shares: Some(200),
                cpus: "0".into(),
                ..Default::default()
            },
            hugepage_limits: vec![nri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 2,
            }],
            pids_limit: Some(10),
            ..Default::default()
        };
        set_cri_resources(&mut r, &n);
        assert_eq!(r.cpu_shares, 200);
        assert_eq!(r.cpuset_cpus, "0");
        assert_eq!(r.memory_limit_in_bytes, 1 << 20, "unset: unchanged");
        assert_eq!(r.hugepage_limits.len(), 1);
        assert_eq!(r.hugepage_limits[0].limit, 2);
    }
}
