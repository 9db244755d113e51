//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats: cgroup, writable-layer and network usage.

use std::path::Path;
use std::sync::Arc;

use containerd_shim_protos::api;
use futures_util::StreamExt;
use k8s_cri::v1 as cri;

use crate::error::{Error, Result};
use crate::shims::SECOND;
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};
use crate::util::{self, now_ns};

use super::{blocking, Cri};

/// How long a measured writable-layer usage stands.
pub(super) const LAYER_USAGE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Containers (or pods) whose stats are gathered at once by the list calls.
pub(super) const STATS_CONCURRENCY: usize = 16;

impl Cri {
    /// The container's cgroup statistics as its shim gives them (berth's
    /// shims send containerd's cgroups v1 Metrics, whatever the cgroup
    /// version); None for another kind.
    pub(super) async fn shim_metrics(
        &self,
        c: &ContainerRecord,
    ) -> Result<Option<containerd_shim_protos::cgroups::metrics::Metrics>> {
        let address = self.shim_address_of(c)?;
        let mut req = api::StatsRequest::new();
        req.id = c.id.clone();
        let r: api::StatsResponse = self.shims.stats(&address, &req, 10 * SECOND).await?;
        Ok(r.stats
            .as_ref()
            .filter(|a| a.type_url.ends_with("io.containerd.cgroups.v1.Metrics"))
            .and_then(|a| {
                containerd_shim_protos::protobuf::Message::parse_from_bytes(&a.value).ok()
            }))
    }

    pub async fn container_stats_of(&self, c: &ContainerRecord) -> Result<cri::ContainerStats> {
        let metrics = self.shim_metrics(c).await?;
        let now = now_ns();
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
        if let Some((bytes, inodes)) = self.writable_layer_usage(c).await {
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

    /// Bytes and inodes of a container's writable layer, measured at most
    /// once per [`LAYER_USAGE_TTL`] (as containerd's CRI refreshes snapshot
    /// usage on a period): a layer walk per call would make kubelet's stats
    /// loop grow with the files containers write.
    async fn writable_layer_usage(&self, c: &ContainerRecord) -> Option<(u64, u64)> {
        if let Some((at, bytes, inodes)) = self
            .layer_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&c.id)
        {
            if at.elapsed() < LAYER_USAGE_TTL {
                return Some((*bytes, *inodes));
            }
        }
        let images = Arc::clone(&self.images);
        let key = c.rootfs_key.clone();
        let (bytes, inodes) =
            blocking(move || Ok(images.rootfs(&key)?.map(|m| dir_usage(&m.upperdir))))
                .await
                .ok()
                .flatten()?;
        self.layer_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c.id.clone(), (std::time::Instant::now(), bytes, inodes));
        Some((bytes, inodes))
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
        let mut cs = self.store.containers();
        cs.sort_by_key(|c| c.created_at);
        cs.retain(|c| {
            c.state == ContainerState::Running
                && (f.id.is_empty() || c.id.starts_with(&f.id))
                && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                && util::labels_match(&c.config.labels, &f.label_selector)
        });
        // Each container's shim answers for it: asked several at a time.
        let calls = cs
            .into_iter()
            .map(|c| async move { self.container_stats_of(&c).await.ok() });
        futures_util::stream::iter(calls)
            .buffered(STATS_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await
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
        // The pod's own namespace, as containerd reads it: none for a
        // host-network pod (the host's traffic is not the pod's), and
        // whether or not a process of the pod still runs.
        let network = p
            .namespaces
            .net
            .as_deref()
            .and_then(|netns| crate::netns::net_dev(self.host_netns.as_deref(), netns))
            .map(|dev| network_usage(&dev, now));
        let running: Vec<ContainerRecord> = self
            .store
            .containers_of(&p.id)
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .collect();
        let processes = if self.runs_in_vm(p) {
            // The guest's processes, as the shim lists them.
            let mut n = 0;
            for c in &running {
                n += self.shim_process_count(c).await.unwrap_or(0);
            }
            n
        } else {
            running.iter().map(|c| count_cgroup_procs(c.pid)).sum()
        };
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

    /// The processes of a VM pod's container, as its shim lists them (the
    /// guest's); None when the shim cannot say.
    pub(super) async fn shim_process_count(&self, c: &ContainerRecord) -> Option<u64> {
        let address = self.shim_address_of(c).ok()?;
        let mut req = api::PidsRequest::new();
        req.id = c.id.clone();
        let r = self.shims.pids(&address, &req, 10 * SECOND).await.ok()?;
        Some(r.processes.len() as u64)
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
        let mut pods = self.store.pods();
        pods.retain(|p| {
            p.state == PodState::Ready
                && (f.id.is_empty() || p.id.starts_with(&f.id))
                && util::labels_match(&p.config.labels, &f.label_selector)
        });
        let calls = pods
            .into_iter()
            .map(|p| async move { self.pod_stats_of(&p).await });
        futures_util::stream::iter(calls)
            .buffered(STATS_CONCURRENCY)
            .collect()
            .await
    }
}

/// Bytes and inodes under a directory (a writable layer).
pub(super) fn dir_usage(dir: &Path) -> (u64, u64) {
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

/// Interface counters from a network namespace's /proc/net/dev text.
pub(super) fn network_usage(net_dev: &str, now: i64) -> cri::NetworkUsage {
    let interfaces: Vec<cri::NetworkInterfaceUsage> = crate::netns::parse_net_dev(net_dev)
        .into_iter()
        .map(|(name, f)| cri::NetworkInterfaceUsage {
            name,
            rx_bytes: Some(cri::UInt64Value { value: f[0] }),
            rx_errors: Some(cri::UInt64Value { value: f[2] }),
            tx_bytes: Some(cri::UInt64Value { value: f[8] }),
            tx_errors: Some(cri::UInt64Value { value: f[10] }),
        })
        .collect();
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| interfaces.iter().find(|i| i.name != "lo"))
        .cloned();
    cri::NetworkUsage {
        timestamp: now,
        default_interface,
        interfaces,
    }
}

/// Processes in the cgroup of a container's init, on either cgroup
/// version.
pub(super) fn count_cgroup_procs(pid: u32) -> u64 {
    berth_cgroups::Manager::of_process(pid as i32)
        .and_then(|m| m.procs())
        .map_or(0, |procs| procs.len() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_the_processes_of_a_cgroup() {
        // This test's own process is in some cgroup, on any host layout.
        assert!(super::count_cgroup_procs(std::process::id()) >= 1);
        assert_eq!(super::count_cgroup_procs(u32::MAX), 0);
    }
}
