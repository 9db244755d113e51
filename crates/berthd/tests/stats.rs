//! The CRI stats a kubelet's summary API is built from: ContainerStats,
//! ListContainerStats, PodSandboxStats and ListPodSandboxStats, on real
//! containers that burn CPU and fill memory and their writable layer.
//! Needs root.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

/// ContainerStats, ListContainerStats, PodSandboxStats,
/// ListPodSandboxStats: CPU, memory working set, the writable layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_and_pod_stats() {
    let d = Berthd::start("stats");
    d.pull_busybox().await;
    let mut pod_cfg = d.pod_config("stats", false);
    pod_cfg.labels = labels(&[("app", "stats")]);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config(
        "busy",
        &images().busybox,
        &[
            "sh",
            "-c",
            "head -c 2097152 /dev/zero > /written; x=$(head -c 4194304 /dev/zero | tr '\\0' a); \
             echo ready; sleep 1000",
        ],
    );
    cfg.labels = labels(&[("role", "busy")]);
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let idle = d.sleeper(&pod, &pod_cfg, "idle").await;
    let done = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("done", &images().busybox, &["true"]),
        )
        .await;
    d.wait_container(&done, Duration::from_secs(10), exited)
        .await;
    let log = std::path::PathBuf::from(&pod_cfg.log_directory).join("busy/0.log");
    eventually("the container to be ready", Duration::from_secs(20), || {
        cri_log_records(&log).iter().any(|r| r.2 == "ready")
    })
    .await;

    let mut rt = d.runtime().await;
    let first = d.container_stats(&c).await;
    let attrs = first.attributes.clone().unwrap();
    assert_eq!(attrs.id, c);
    assert_eq!(attrs.metadata.unwrap().name, "busy");
    assert_eq!(attrs.labels, labels(&[("role", "busy")]));
    let cpu = first.cpu.unwrap();
    assert!(cpu.timestamp > 0);
    assert!(cpu.usage_core_nano_seconds.unwrap().value > 0, "{cpu:?}");
    let mem = first.memory.unwrap();
    let ws = mem.working_set_bytes.unwrap().value;
    assert!(ws > 0, "{mem:?}");
    let wl = first.writable_layer.clone().unwrap();
    assert!(
        wl.used_bytes.unwrap().value >= 2 << 20,
        "the 2 MiB file in the writable layer: {wl:?}"
    );
    assert!(wl.inodes_used.unwrap().value >= 1);
    assert!(!wl.fs_id.unwrap().mountpoint.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = d.container_stats(&c).await;
    let second_cpu = second.cpu.unwrap();
    assert!(
        second_cpu.usage_nano_cores.is_some(),
        "usage_nano_cores once there are two samples"
    );
    // The shim keeps the cgroup's files open between calls: what runs in
    // the container after that still shows.
    let burn = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: c.clone(),
            cmd: [
                "sh",
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(burn.exit_code, 0);
    let third = d.container_stats(&c).await;
    let (before, after) = (
        second_cpu.usage_core_nano_seconds.unwrap().value,
        third.cpu.unwrap().usage_core_nano_seconds.unwrap().value,
    );
    assert!(
        after >= before + 10_000_000,
        "the exec's CPU time in the container's usage: {before} -> {after}"
    );

    let list = |f: cri::ContainerStatsFilter| {
        let mut rt = rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_container_stats(cri::ListContainerStatsRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut running = vec![c.clone(), idle.clone()];
    running.sort();
    assert_eq!(
        list(Default::default()).await,
        running,
        "running containers only"
    );
    assert_eq!(
        list(cri::ContainerStatsFilter {
            id: c.clone(),
            ..Default::default()
        })
        .await,
        vec![c.clone()]
    );
    assert_eq!(
        list(cri::ContainerStatsFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })
        .await,
        running
    );
    assert_eq!(
        list(cri::ContainerStatsFilter {
            label_selector: labels(&[("role", "busy")]),
            ..Default::default()
        })
        .await,
        vec![c.clone()]
    );

    let ps = d.pod_stats(&pod).await;
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod);
    assert_eq!(ps.attributes.as_ref().unwrap().labels, pod_cfg.labels);
    let linux = ps.linux.unwrap();
    assert!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(
        linux.memory.unwrap().working_set_bytes.unwrap().value > 0,
        "{ws}"
    );
    assert!(linux.process.unwrap().process_count.unwrap().value >= 2);
    let net = linux.network.unwrap();
    assert!(net.interfaces.iter().any(|i| i.name == "lo"), "{net:?}");
    assert_eq!(linux.containers.len(), 2);

    let pods = |f: cri::PodSandboxStatsFilter| {
        let mut rt = rt.clone();
        async move {
            rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(pods(Default::default()).await, vec![pod.clone()]);
    assert_eq!(
        pods(cri::PodSandboxStatsFilter {
            label_selector: labels(&[("app", "stats")]),
            ..Default::default()
        })
        .await,
        vec![pod.clone()]
    );
    assert!(pods(cri::PodSandboxStatsFilter {
        id: UNKNOWN.into(),
        ..Default::default()
    })
    .await
    .is_empty());
    d.remove_all_and_check().await;
}
