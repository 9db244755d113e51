//! ListMetricDescriptors and ListPodSandboxMetrics: container metrics under
//! cAdvisor's names, for a kubelet that takes /metrics/cadvisor from the
//! runtime (PodAndContainerStatsFromCRI) instead of running cAdvisor.
//!
//! Label keys are those of containerd's CRI plugin (which kubelet's own
//! tests use too): `pod, namespace, container, id, image`, then the
//! metric's own (`interface`, `device`, ...). Container metrics carry the
//! container's name, id and image; pod metrics (the network) an empty
//! container and image and the pod's id. Values come from the container's
//! cgroup (berth-cgroups, v1, v2 or hybrid; for a VM pod's containers, the
//! guest's cgroup through the shim's Stats and Pids), its CRI resources, its
//! writable layer and the pod's network namespace. CRI values are
//! integers: seconds are whole seconds, as containerd and CRI-O report
//! them. Only ready pods and running containers are reported.
//!
//! The descriptor table (names, help texts, label keys) is in
//! `descriptors.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use berth_cgroups::stats::Stats;
use berth_image::ImageStore;
use k8s_cri::v1 as cri;

use crate::netns::{parse_net_dev, HostNetns};
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};
use crate::util::now_ns;

use containerd_shim_protos::cgroups::metrics as v1;
use futures_util::StreamExt;

use super::stats::{dir_usage, STATS_CONCURRENCY};
use super::{blocking, Cri};

mod descriptors;
use descriptors::*;

const NS_PER_SECOND: u64 = 1_000_000_000;

/// The metrics of one object (a container or a pod), with its base label
/// values.
struct Out {
    labels: Vec<String>,
    timestamp: i64,
    metrics: Vec<cri::Metric>,
}

impl Out {
    fn new(labels: Vec<String>, timestamp: i64) -> Out {
        debug_assert_eq!(labels.len(), BASE.len());
        Out {
            labels,
            timestamp,
            metrics: Vec::new(),
        }
    }

    fn push(&mut self, d: &Desc, value: u64) {
        self.push_with(d, &[], value)
    }

    /// A metric with the values of the descriptor's own label keys.
    fn push_with(&mut self, d: &Desc, extra: &[&str], value: u64) {
        debug_assert_eq!(extra.len(), d.extra.len(), "{}", d.name);
        let mut label_values = self.labels.clone();
        label_values.extend(extra.iter().map(|v| v.to_string()));
        self.metrics.push(cri::Metric {
            name: d.name.to_owned(),
            timestamp: self.timestamp,
            metric_type: d.kind as i32,
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

impl Cri {
    /// ListMetricDescriptors: every metric ListPodSandboxMetrics may report.
    pub fn metric_descriptors(&self) -> Vec<cri::MetricDescriptor> {
        descriptors()
    }

    /// ListPodSandboxMetrics: the ready pods, oldest first, each with its
    /// network counters and its running containers' metrics.
    pub async fn list_pod_sandbox_metrics(&self) -> Vec<cri::PodSandboxMetrics> {
        let mut pods: Vec<PodRecord> = self
            .store
            .pods()
            .into_iter()
            .filter(|p| p.state == PodState::Ready)
            .collect();
        pods.sort_by_key(|p| p.created_at);
        let mut work: Vec<(PodRecord, Vec<(ContainerRecord, Measured)>)> = Vec::new();
        for p in pods {
            let mut cs = self.store.containers_of(&p.id);
            cs.retain(|c| c.state == ContainerState::Running && c.pid > 0);
            cs.sort_by_key(|c| c.created_at);
            let measured = if self.runs_in_vm(&p) {
                // Their cgroups are the guest's: the shim has them.
                let calls = cs.into_iter().map(|c| async move {
                    let stats = self.shim_cgroup_stats(&c).await?;
                    Some((c, stats))
                });
                futures_util::stream::iter(calls)
                    .buffered(STATS_CONCURRENCY)
                    .filter_map(std::future::ready)
                    .collect()
                    .await
            } else {
                cs.into_iter().map(|c| (c, Measured::HostCgroup)).collect()
            };
            work.push((p, measured));
        }
        let images = Arc::clone(&self.images);
        // The writable layers' filesystem, named as ContainerStats names it.
        let fs_device = self.config.root.join("images").display().to_string();
        let host_netns = self.host_netns.clone();
        blocking(move || {
            let mut devices = HashMap::new();
            Ok(work
                .iter()
                .map(|(p, cs)| {
                    pod_metrics(
                        p,
                        host_netns.as_deref(),
                        cs,
                        &images,
                        &fs_device,
                        &mut devices,
                    )
                })
                .collect())
        })
        .await
        .unwrap_or_default()
    }
}

/// Where a container's cgroup statistics come from.
enum Measured {
    /// Its init's cgroup, read here.
    HostCgroup,
    /// Its shim's Stats and Pids (a VM pod's containers: their cgroups
    /// are the guest's): the statistics and the number of processes.
    Shim(Box<Stats>, u64),
}

impl Cri {
    /// A VM pod's container's cgroup statistics and process count, from
    /// its shim; None when it cannot say (the container has just exited).
    async fn shim_cgroup_stats(&self, c: &ContainerRecord) -> Option<Measured> {
        let stats = stats_of_v1(&self.shim_metrics(c).await.ok()??);
        let processes = self.shim_process_count(c).await.unwrap_or(0);
        Some(Measured::Shim(Box::new(stats), processes))
    }
}

/// containerd's cgroups v1 Metrics (a shim's Stats) as berth-cgroups
/// statistics, memory.stat's figures under their v1 keys.
fn stats_of_v1(m: &v1::Metrics) -> Stats {
    let mut s = Stats::default();
    let cpu = &m.cpu;
    s.cpu.usage.total = cpu.usage.total;
    s.cpu.usage.user = cpu.usage.user;
    s.cpu.usage.kernel = cpu.usage.kernel;
    s.cpu.throttling.periods = cpu.throttling.periods;
    s.cpu.throttling.throttled_periods = cpu.throttling.throttled_periods;
    s.cpu.throttling.throttled_time = cpu.throttling.throttled_time;
    let mem = &m.memory;
    let entry = |e: &v1::MemoryEntry| berth_cgroups::stats::MemoryEntry {
        limit: e.limit,
        usage: e.usage,
        max: e.max,
        failcnt: e.failcnt,
    };
    s.memory.cache = mem.cache;
    s.memory.usage = entry(&mem.usage);
    s.memory.swap = entry(&mem.swap);
    s.memory.oom_kill = m.memory_oom_control.oom_kill;
    s.memory.raw = [
        ("rss", mem.rss),
        ("total_rss", mem.total_rss),
        ("mapped_file", mem.mapped_file),
        ("pgfault", mem.pg_fault),
        ("pgmajfault", mem.pg_maj_fault),
        ("inactive_file", mem.inactive_file),
        ("total_inactive_file", mem.total_inactive_file),
        ("swap", mem.swap.usage),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    s.pids.current = m.pids.current;
    s.pids.limit = m.pids.limit;
    let entries = |list: &[v1::BlkIOEntry]| {
        list.iter()
            .map(|e| berth_cgroups::stats::BlkioEntry {
                major: e.major,
                minor: e.minor,
                op: e.op.clone(),
                value: e.value,
            })
            .collect()
    };
    s.blkio.io_service_bytes_recursive = entries(&m.blkio.io_service_bytes_recursive);
    s.blkio.io_serviced_recursive = entries(&m.blkio.io_serviced_recursive);
    s
}

fn pod_metrics(
    p: &PodRecord,
    host_netns: Option<&HostNetns>,
    containers: &[(ContainerRecord, Measured)],
    images: &ImageStore,
    fs_device: &str,
    devices: &mut HashMap<(u64, u64), String>,
) -> cri::PodSandboxMetrics {
    let meta = p.config.metadata.clone().unwrap_or_default();
    let mut pod = Out::new(
        vec![
            meta.name.clone(),
            meta.namespace.clone(),
            String::new(),
            p.id.clone(),
            String::new(),
        ],
        now_ns(),
    );
    // A host-network pod has no interfaces of its own.
    if let Some(dev) = p
        .namespaces
        .net
        .as_deref()
        .and_then(|netns| crate::netns::net_dev(host_netns, netns))
    {
        network_metrics(&mut pod, &dev);
    }
    let container_metrics = containers
        .iter()
        .filter_map(|(c, measured)| {
            let image = c
                .config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| c.image_ref.clone());
            let labels = vec![
                meta.name.clone(),
                meta.namespace.clone(),
                c.config.metadata.clone().unwrap_or_default().name,
                c.id.clone(),
                image,
            ];
            let metrics = container_metrics(c, measured, labels, images, fs_device, devices)?;
            Some(cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics,
            })
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: p.id.clone(),
        metrics: pod.metrics,
        container_metrics,
    }
}

/// A running container's metrics; None when its cgroup cannot be read (it
/// has just exited).
fn container_metrics(
    c: &ContainerRecord,
    measured: &Measured,
    labels: Vec<String>,
    images: &ImageStore,
    fs_device: &str,
    devices: &mut HashMap<(u64, u64), String>,
) -> Option<Vec<cri::Metric>> {
    let read_here;
    let (stats, processes, threads) = match measured {
        Measured::HostCgroup => {
            let cgroup = berth_cgroups::Manager::of_process(c.pid as i32).ok()?;
            read_here = cgroup.stats().ok()?;
            let procs = cgroup.procs().unwrap_or_default();
            let threads = if read_here.pids.current > 0 {
                read_here.pids.current
            } else {
                procs.iter().map(|p| count_threads(*p)).sum()
            };
            (&read_here, procs.len() as u64, threads)
        }
        // The guest's cgroup v2: pids.current counts its tasks.
        Measured::Shim(stats, processes) => (&**stats, *processes, stats.pids.current),
    };
    let now = now_ns();
    let mut out = Out::new(labels, now);
    cgroup_metrics(&mut out, stats, processes, threads, &mut |major, minor| {
        devices
            .entry((major, minor))
            .or_insert_with(|| device_name(major, minor))
            .clone()
    });
    if let Some(upper) = images
        .rootfs(&c.rootfs_key)
        .ok()
        .flatten()
        .map(|m| m.upperdir)
    {
        out.push_with(&FS_USAGE, &[fs_device], dir_usage(&upper).0);
    }
    out.push(&START_TIME, c.started_at.max(0) as u64 / NS_PER_SECOND);
    out.push(&LAST_SEEN, now.max(0) as u64 / NS_PER_SECOND);
    spec_metrics(&mut out, c);
    Some(out.metrics)
}

/// CPU, memory, process and block I/O metrics from a cgroup's stats.
fn cgroup_metrics(
    out: &mut Out,
    s: &Stats,
    processes: u64,
    threads: u64,
    device: &mut dyn FnMut(u64, u64) -> String,
) {
    let cpu = &s.cpu;
    out.push(&CPU_USAGE, cpu.usage.total / NS_PER_SECOND);
    out.push(&CPU_USER, cpu.usage.user / NS_PER_SECOND);
    out.push(&CPU_SYSTEM, cpu.usage.kernel / NS_PER_SECOND);
    out.push(&CFS_PERIODS, cpu.throttling.periods);
    out.push(&CFS_THROTTLED_PERIODS, cpu.throttling.throttled_periods);
    out.push(
        &CFS_THROTTLED_SECONDS,
        cpu.throttling.throttled_time / NS_PER_SECOND,
    );

    let m = &s.memory;
    // No memory controller: nothing to say rather than zeros.
    if !m.raw.is_empty() || m.usage.usage > 0 {
        // memory.stat's keys: cgroup v2 has `anon`, v1 `rss` and (with
        // hierarchy) `total_*` over the subtree.
        let v2 = m.raw.contains_key("anon");
        let stat = |v1_keys: &[&str], v2_key: &str| -> u64 {
            if v2 {
                m.raw.get(v2_key).copied().unwrap_or(0)
            } else {
                v1_keys
                    .iter()
                    .find_map(|k| m.raw.get(*k).copied())
                    .unwrap_or(0)
            }
        };
        let usage = m.usage.usage;
        let inactive_file = stat(&["total_inactive_file", "inactive_file"], "inactive_file");
        out.push(&MEMORY_USAGE, usage);
        // cAdvisor's working set: usage less what reclaim takes first.
        out.push(&MEMORY_WORKING_SET, usage.saturating_sub(inactive_file));
        out.push(&MEMORY_RSS, stat(&["total_rss", "rss"], "anon"));
        out.push(&MEMORY_CACHE, m.cache);
        let swap = if v2 {
            m.swap.usage
        } else {
            stat(&["total_swap", "swap"], "")
        };
        out.push(&MEMORY_SWAP, swap);
        out.push(
            &MEMORY_MAPPED_FILE,
            stat(&["total_mapped_file", "mapped_file"], "file_mapped"),
        );
        if m.usage.max > 0 && m.usage.max != u64::MAX {
            out.push(&MEMORY_MAX_USAGE, m.usage.max);
        }
        out.push(&MEMORY_FAILCNT, m.usage.failcnt);
        for (kind, v1_total) in [
            ("pgfault", "total_pgfault"),
            ("pgmajfault", "total_pgmajfault"),
        ] {
            out.push_with(&MEMORY_FAILURES, &[kind, "container"], stat(&[kind], kind));
            out.push_with(
                &MEMORY_FAILURES,
                &[kind, "hierarchy"],
                stat(&[v1_total, kind], kind),
            );
        }
        out.push(&OOM_EVENTS, m.oom_kill);
    }

    out.push(&PROCESSES, processes);
    out.push(&THREADS, threads);
    out.push(&THREADS_MAX, s.pids.limit);

    for e in &s.blkio.io_service_bytes_recursive {
        let dev = device(e.major, e.minor);
        out.push_with(
            &BLKIO_DEVICE_USAGE,
            &[&dev, &e.major.to_string(), &e.minor.to_string(), &e.op],
            e.value,
        );
        match e.op.to_ascii_lowercase().as_str() {
            "read" => out.push_with(&FS_READS_BYTES, &[&dev], e.value),
            "write" => out.push_with(&FS_WRITES_BYTES, &[&dev], e.value),
            _ => {}
        }
    }
    for e in &s.blkio.io_serviced_recursive {
        let d = match e.op.to_ascii_lowercase().as_str() {
            "read" => &FS_READS,
            "write" => &FS_WRITES,
            _ => continue,
        };
        out.push_with(d, &[&device(e.major, e.minor)], e.value);
    }
}

/// What the container asked for (CRI resources, as updated since).
fn spec_metrics(out: &mut Out, c: &ContainerRecord) {
    let r = c
        .config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default();
    if r.cpu_period > 0 {
        out.push(&SPEC_CPU_PERIOD, r.cpu_period as u64);
    }
    if r.cpu_quota > 0 {
        out.push(&SPEC_CPU_QUOTA, r.cpu_quota as u64);
    }
    if r.cpu_shares > 0 {
        out.push(&SPEC_CPU_SHARES, r.cpu_shares as u64);
    }
    // 0: no limit, as cAdvisor reports it.
    out.push(&SPEC_MEMORY_LIMIT, r.memory_limit_in_bytes.max(0) as u64);
    if r.memory_swap_limit_in_bytes > 0 {
        out.push(&SPEC_MEMORY_SWAP_LIMIT, r.memory_swap_limit_in_bytes as u64);
    }
}

/// Counters of the interfaces in /proc/net/dev text, loopback left out
/// (as cAdvisor does).
fn network_metrics(out: &mut Out, dev: &str) {
    for (name, f) in parse_net_dev(dev) {
        if name == "lo" {
            continue;
        }
        let name = [name.as_str()];
        out.push_with(&NET_RX_BYTES, &name, f[0]);
        out.push_with(&NET_RX_PACKETS, &name, f[1]);
        out.push_with(&NET_RX_ERRORS, &name, f[2]);
        out.push_with(&NET_RX_DROPPED, &name, f[3]);
        out.push_with(&NET_TX_BYTES, &name, f[8]);
        out.push_with(&NET_TX_PACKETS, &name, f[9]);
        out.push_with(&NET_TX_ERRORS, &name, f[10]);
        out.push_with(&NET_TX_DROPPED, &name, f[11]);
    }
}

fn count_threads(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count() as u64)
}

/// `/dev/<name>` of a block device, else `major:minor`.
fn device_name(major: u64, minor: u64) -> String {
    std::fs::read_link(format!("/sys/dev/block/{major}:{minor}"))
        .ok()
        .and_then(|p| {
            p.file_name()
                .map(|n| format!("/dev/{}", n.to_string_lossy()))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn keys_of(name: &str) -> Vec<String> {
        descriptors()
            .into_iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no descriptor {name}"))
            .label_keys
    }

    /// `cgroup_metrics` of `s` for a container, checked with [`check`].
    fn cgroup_metrics_of(s: &Stats, processes: u64, threads: u64) -> Vec<cri::Metric> {
        let labels = ["p", "ns", "c", "id", "img"].map(String::from).to_vec();
        let mut out = Out::new(labels, 1);
        cgroup_metrics(&mut out, s, processes, threads, &mut |ma, mi| {
            format!("{ma}:{mi}")
        });
        check(&out.metrics);
        out.metrics
    }

    /// One metric's value, by name.
    fn value_of(metrics: &[cri::Metric], name: &str) -> u64 {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .value
            .as_ref()
            .unwrap()
            .value
    }

    /// Every metric has a descriptor, and as many label values as its
    /// descriptor has keys (kubelet drops the metric otherwise).
    fn check(metrics: &[cri::Metric]) {
        for m in metrics {
            assert_eq!(
                m.label_values.len(),
                keys_of(&m.name).len(),
                "{}: {:?}",
                m.name,
                m.label_values
            );
            let d = DESCRIPTORS.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(m.metric_type, d.kind as i32, "{}", m.name);
        }
    }

    #[test]
    fn descriptors_are_unique_described_and_start_with_the_base_keys() {
        let ds = descriptors();
        let names: HashSet<&str> = ds.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), ds.len());
        for d in &ds {
            assert!(!d.help.is_empty(), "{}", d.name);
            assert_eq!(d.label_keys[..5], BASE.map(String::from), "{}", d.name);
            let keys: HashSet<&String> = d.label_keys.iter().collect();
            assert_eq!(keys.len(), d.label_keys.len(), "{}", d.name);
            // Counters end in _total, as Prometheus names them.
            let total = d.name.ends_with("_total");
            let counter = DESCRIPTORS.iter().find(|x| x.name == d.name).unwrap().kind == COUNTER;
            assert!(
                total == counter || d.name == "container_memory_failcnt",
                "{}",
                d.name
            );
        }
    }

    #[test]
    fn net_dev_counters_by_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  \
             eth0:  123456     789    1    2    0     0          0         0    65432     321    3    4    0     0       0          0\n";
        let parsed = parse_net_dev(text);
        assert_eq!(parsed.len(), 2);
        let mut out = Out::new(
            vec!["p".into(), "ns".into(), "".into(), "id".into(), "".into()],
            1,
        );
        network_metrics(&mut out, text);
        check(&out.metrics);
        let get = |name: &str| {
            let m = out.metrics.iter().find(|m| m.name == name).unwrap();
            assert_eq!(m.label_values[5], "eth0");
            m.value.as_ref().unwrap().value
        };
        assert_eq!(get("container_network_receive_bytes_total"), 123456);
        assert_eq!(get("container_network_receive_packets_total"), 789);
        assert_eq!(get("container_network_receive_errors_total"), 1);
        assert_eq!(get("container_network_receive_packets_dropped_total"), 2);
        assert_eq!(get("container_network_transmit_bytes_total"), 65432);
        assert_eq!(get("container_network_transmit_packets_total"), 321);
        assert_eq!(get("container_network_transmit_errors_total"), 3);
        assert_eq!(get("container_network_transmit_packets_dropped_total"), 4);
        // Loopback left out.
        assert_eq!(out.metrics.len(), 8);
    }

    #[test]
    fn cgroup_stats_become_cadvisor_metrics() {
        use berth_cgroups::stats::BlkioEntry;
        let mut s = Stats::default();
        s.cpu.usage.total = 3_500_000_000;
        s.cpu.usage.user = 2_000_000_000;
        s.cpu.usage.kernel = 1_500_000_000;
        s.memory.usage.usage = 100 << 20;
        s.memory.cache = 30 << 20;
        for (k, v) in [
            ("anon", 60u64 << 20),
            ("file", 30 << 20),
            ("inactive_file", 20 << 20),
            ("file_mapped", 1 << 20),
            ("pgfault", 7),
            ("pgmajfault", 1),
        ] {
            s.memory.raw.insert(k.into(), v);
        }
        s.pids.limit = 100;
        s.blkio.io_service_bytes_recursive.push(BlkioEntry {
            major: 7,
            minor: 0,
            op: "Read".into(),
            value: 4096,
        });
        let metrics = cgroup_metrics_of(&s, 2, 3);
        let get = |name: &str| value_of(&metrics, name);
        assert_eq!(get("container_cpu_usage_seconds_total"), 3);
        assert_eq!(get("container_cpu_user_seconds_total"), 2);
        assert_eq!(get("container_cpu_system_seconds_total"), 1);
        assert_eq!(get("container_memory_usage_bytes"), 100 << 20);
        assert_eq!(get("container_memory_working_set_bytes"), 80 << 20);
        assert_eq!(get("container_memory_rss"), 60 << 20);
        assert_eq!(get("container_memory_cache"), 30 << 20);
        assert_eq!(get("container_memory_mapped_file"), 1 << 20);
        assert_eq!(get("container_processes"), 2);
        assert_eq!(get("container_threads"), 3);
        assert_eq!(get("container_threads_max"), 100);
        assert_eq!(get("container_blkio_device_usage_total"), 4096);
        assert_eq!(get("container_fs_reads_bytes_total"), 4096);
        let blkio = metrics
            .iter()
            .find(|m| m.name == "container_blkio_device_usage_total")
            .unwrap();
        assert_eq!(blkio.label_values[5..], ["7:0", "7", "0", "Read"]);
        // No peak known: no max usage rather than a zero.
        assert!(!metrics
            .iter()
            .any(|m| m.name == "container_memory_max_usage_bytes"));
    }

    #[test]
    fn a_shims_v1_metrics_become_the_same_cadvisor_metrics() {
        let mut m = v1::Metrics::new();
        let cpu = m.cpu.mut_or_insert_default();
        cpu.usage.mut_or_insert_default().total = 3_500_000_000;
        cpu.usage.mut_or_insert_default().user = 2_000_000_000;
        cpu.throttling.mut_or_insert_default().periods = 40;
        let mem = m.memory.mut_or_insert_default();
        mem.usage.mut_or_insert_default().usage = 100 << 20;
        mem.cache = 30 << 20;
        mem.rss = 60 << 20;
        mem.total_rss = 60 << 20;
        mem.total_inactive_file = 20 << 20;
        mem.mapped_file = 1 << 20;
        mem.swap.mut_or_insert_default().usage = 2 << 20;
        m.memory_oom_control.mut_or_insert_default().oom_kill = 1;
        m.pids.mut_or_insert_default().current = 5;
        let s = stats_of_v1(&m);
        let metrics = cgroup_metrics_of(&s, 2, s.pids.current);
        let get = |name: &str| value_of(&metrics, name);
        assert_eq!(get("container_cpu_usage_seconds_total"), 3);
        assert_eq!(get("container_cpu_user_seconds_total"), 2);
        assert_eq!(get("container_cpu_cfs_periods_total"), 40);
        assert_eq!(get("container_memory_usage_bytes"), 100 << 20);
        assert_eq!(get("container_memory_working_set_bytes"), 80 << 20);
        assert_eq!(get("container_memory_rss"), 60 << 20);
        assert_eq!(get("container_memory_cache"), 30 << 20);
        assert_eq!(get("container_memory_mapped_file"), 1 << 20);
        assert_eq!(get("container_memory_swap"), 2 << 20);
        assert_eq!(get("container_oom_events_total"), 1);
        assert_eq!(get("container_processes"), 2);
        assert_eq!(get("container_threads"), 5);
    }

    /// This test process's own cgroup, on whatever layout the host has.
    #[test]
    fn reads_a_live_cgroup() {
        let cgroup = berth_cgroups::Manager::of_process(std::process::id() as i32).unwrap();
        let s = cgroup.stats().unwrap();
        let mut out = Out::new(vec![String::new(); 5], 1);
        cgroup_metrics(&mut out, &s, 1, 1, &mut |ma, mi| device_name(ma, mi));
        check(&out.metrics);
        assert!(out
            .metrics
            .iter()
            .any(|m| m.name == "container_cpu_usage_seconds_total"));
    }
}
