//! Metrics: ListMetricDescriptors and ListPodSandboxMetrics (cAdvisor's
//! names, containerd's label keys, values from cgroups and the pod's
//! network namespace), and berthd's own Prometheus endpoint
//! (`[metrics] address`). Needs root: real pods.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BASE_KEYS: [&str; 5] = ["pod", "namespace", "container", "id", "image"];

/// What kubelet's cAdvisor-compatible collector expects at least.
const EXPECTED: &[&str] = &[
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_cpu_system_seconds_total",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_memory_rss",
    "container_memory_cache",
    "container_memory_swap",
    "container_oom_events_total",
    "container_network_receive_bytes_total",
    "container_network_receive_packets_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_packets_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_fs_usage_bytes",
    "container_processes",
    "container_threads",
    "container_start_time_seconds",
    "container_spec_memory_limit_bytes",
    "container_spec_cpu_quota",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
];

async fn descriptors(d: &Berthd) -> HashMap<String, cri::MetricDescriptor> {
    d.runtime()
        .await
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect()
}

async fn pod_metrics(d: &Berthd) -> Vec<cri::PodSandboxMetrics> {
    d.runtime()
        .await
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap_or_else(|e| panic!("ListPodSandboxMetrics: {e:?}\n{}", d.log_tail()))
        .into_inner()
        .pod_metrics
}

/// The labels of a metric by key, checked against its descriptor.
fn labels_of(
    descs: &HashMap<String, cri::MetricDescriptor>,
    m: &cri::Metric,
) -> HashMap<String, String> {
    let d = descs
        .get(&m.name)
        .unwrap_or_else(|| panic!("{} has no descriptor", m.name));
    assert_eq!(
        d.label_keys.len(),
        m.label_values.len(),
        "{}: keys {:?} values {:?}",
        m.name,
        d.label_keys,
        m.label_values
    );
    d.label_keys
        .iter()
        .cloned()
        .zip(m.label_values.iter().cloned())
        .collect()
}

/// The value of the one metric `name` without labels beyond the base.
fn value(metrics: &[cri::Metric], name: &str) -> u64 {
    let found: Vec<&cri::Metric> = metrics.iter().filter(|m| m.name == name).collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0].value.as_ref().unwrap().value
}

fn container<'a>(pods: &'a [cri::PodSandboxMetrics], id: &str) -> &'a [cri::Metric] {
    pods.iter()
        .flat_map(|p| &p.container_metrics)
        .find(|c| c.container_id == id)
        .map(|c| c.metrics.as_slice())
        .unwrap_or_else(|| panic!("no metrics for container {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_name_cadvisor_metrics_with_containerd_label_keys() {
    let d = Berthd::start("mdesc");
    let descs = descriptors(&d).await;
    for name in EXPECTED {
        let desc = descs
            .get(*name)
            .unwrap_or_else(|| panic!("no descriptor {name}: {:?}", descs.keys()));
        assert!(!desc.help.is_empty(), "{name}");
        assert_eq!(desc.label_keys[..5], BASE_KEYS, "{name}");
    }
    assert_eq!(
        descs["container_network_receive_bytes_total"].label_keys[5..],
        ["interface"]
    );
    assert_eq!(
        descs["container_fs_usage_bytes"].label_keys[5..],
        ["device"]
    );
    assert_eq!(
        descs["container_blkio_device_usage_total"].label_keys[5..],
        ["device", "major", "minor", "operation"]
    );
    // No pods, no metrics.
    assert!(pod_metrics(&d).await.is_empty());
}

/// A CPU burner, a container holding 40 MiB (and writing 256 KiB to its
/// writable layer) and an idle one: CPU time
/// grows between two calls, memory shows the 40 MiB, every label matches
/// its descriptor, the pod's own interfaces are counted, and stopped pods
/// and exited containers are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_sandbox_metrics_from_cgroups_and_the_pods_network() {
    let d = Berthd::start("mpods");
    d.pull_busybox().await;
    let busybox = images().busybox.clone();
    let descs = descriptors(&d).await;
    let pod_cfg = d.pod_config("metrics", false);
    let pod = d.run_pod(&pod_cfg, "").await;

    let mut burner_cfg =
        d.container_config("burner", &busybox, &["sh", "-c", "while :; do :; done"]);
    let r = res(&mut burner_cfg);
    r.cpu_period = 100_000;
    r.cpu_quota = 50_000;
    r.cpu_shares = 512;
    let burner = d.run_container(&pod, &pod_cfg, &burner_cfg).await;
    let mut memory_cfg = d.container_config(
        "memory",
        &busybox,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/x bs=1048576 count=40 2>/dev/null; \
             dd if=/dev/zero of=/written bs=1024 count=256 2>/dev/null; sleep 1000",
        ],
    );
    res(&mut memory_cfg).memory_limit_in_bytes = 256 << 20;
    let memory = d.run_container(&pod, &pod_cfg, &memory_cfg).await;
    let idle = d.sleeper(&pod, &pod_cfg, "idle").await;
    let done = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("done", &busybox, &["true"]),
        )
        .await;
    d.wait_container(&done, Duration::from_secs(20), exited)
        .await;

    // Another pod, stopped: not reported.
    let stopped_cfg = d.pod_config("stopped", false);
    let stopped = d.run_pod(&stopped_cfg, "").await;
    d.sleeper(&stopped, &stopped_cfg, "s").await;
    d.stop_pod(&stopped).await;

    // Interfaces of the pod's own: a veth pair in its network namespace
    // (links going up send IPv6 neighbour discovery to each other).
    let pid = d.container_pid(&idle).await;
    let (ok, _, err) = host(&[
        "nsenter",
        &format!("--net=/proc/{pid}/ns/net"),
        "sh",
        "-c",
        "ip link add bv0 type veth peer name bv1 && ip link set bv0 up && ip link set bv1 up",
    ]);
    assert!(ok, "veth pair: {err}");

    // Wait for the 40 MiB and for traffic on the pair.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let pods = pod_metrics(&d).await;
        let written = value(container(&pods, &memory), "container_memory_usage_bytes") >= 40 << 20;
        // Both ends sent and received, as asserted below: each end sends its
        // neighbour discovery at its own time, up to seconds apart.
        let traffic = ["bv0", "bv1"].iter().all(|interface| {
            [
                "container_network_transmit_packets_total",
                "container_network_receive_packets_total",
            ]
            .iter()
            .all(|name| {
                pods.iter().flat_map(|p| &p.metrics).any(|m| {
                    m.name == *name
                        && m.label_values.last().map(String::as_str) == Some(*interface)
                        && m.value.as_ref().unwrap().value > 0
                })
            })
        });
        if written && traffic {
            break pods;
        }
        assert!(
            Instant::now() < deadline,
            "no memory use or traffic seen: {pods:#?}\n{}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Only the ready pod, with only its running containers.
    assert_eq!(first.len(), 1, "{first:#?}");
    let p = &first[0];
    assert_eq!(p.pod_sandbox_id, pod);
    let mut ids: Vec<&str> = p
        .container_metrics
        .iter()
        .map(|c| c.container_id.as_str())
        .collect();
    ids.sort();
    let mut want = vec![burner.as_str(), memory.as_str(), idle.as_str()];
    want.sort();
    assert_eq!(ids, want);

    // Labels: the pod's metrics name the pod, its containers' each their
    // own container, id and image.
    for m in &p.metrics {
        let l = labels_of(&descs, m);
        assert_eq!(l["pod"], "metrics");
        assert_eq!(l["namespace"], "test");
        assert_eq!(l["container"], "");
        assert_eq!(l["id"], pod);
        assert_ne!(l["interface"], "lo", "loopback is left out");
    }
    let names: HashMap<&str, &str> = [
        (burner.as_str(), "burner"),
        (memory.as_str(), "memory"),
        (idle.as_str(), "idle"),
    ]
    .into();
    for c in &p.container_metrics {
        for m in &c.metrics {
            let l = labels_of(&descs, m);
            assert_eq!(l["pod"], "metrics", "{m:?}");
            assert_eq!(l["namespace"], "test", "{m:?}");
            assert_eq!(l["container"], names[c.container_id.as_str()], "{m:?}");
            assert_eq!(l["id"], c.container_id, "{m:?}");
            assert_eq!(l["image"], busybox, "{m:?}");
        }
        for name in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_fs_usage_bytes",
            "container_start_time_seconds",
        ] {
            assert!(
                c.metrics.iter().any(|m| m.name == name),
                "{name} of {}",
                c.container_id
            );
        }
        assert!(value(&c.metrics, "container_processes") >= 1, "{c:?}");
        assert!(value(&c.metrics, "container_threads") >= 1, "{c:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let started = value(&c.metrics, "container_start_time_seconds");
        assert!(started <= now && started + 600 > now, "{started} vs {now}");
    }
    // The veth pair, both ends.
    let iface = |name: &str, interface: &str| -> u64 {
        p.metrics
            .iter()
            .find(|m| {
                m.name == name && m.label_values.last().map(String::as_str) == Some(interface)
            })
            .unwrap_or_else(|| panic!("no {name} for {interface}: {:?}", p.metrics))
            .value
            .as_ref()
            .unwrap()
            .value
    };
    for i in ["bv0", "bv1"] {
        assert!(iface("container_network_transmit_packets_total", i) > 0);
        assert!(iface("container_network_receive_packets_total", i) > 0);
        assert!(iface("container_network_receive_bytes_total", i) > 0);
    }
    // Read from inside the pod's network namespace, by threads that came
    // back from it.
    let stray = d.threads_outside_the_host_network_namespace();
    assert!(
        stray.is_empty(),
        "berthd threads in another network namespace: {stray:?}"
    );

    // Memory: the 40 MiB above what the idle container uses.
    let mem = container(&first, &memory);
    let idle_m = container(&first, &idle);
    for name in [
        "container_memory_usage_bytes",
        "container_memory_working_set_bytes",
    ] {
        assert!(
            value(mem, name) >= value(idle_m, name) + (32 << 20),
            "{name}: memory {} idle {}",
            value(mem, name),
            value(idle_m, name)
        );
    }
    assert_eq!(value(mem, "container_spec_memory_limit_bytes"), 256 << 20);
    // Its writable layer holds the 256 KiB it wrote there.
    assert!(value(mem, "container_fs_usage_bytes") >= 256 << 10);
    assert_eq!(value(idle_m, "container_spec_memory_limit_bytes"), 0);

    // CPU: grows (whole seconds) while the burner runs, in CFS periods of
    // its quota.
    let burn = container(&first, &burner);
    assert_eq!(value(burn, "container_spec_cpu_period"), 100_000);
    assert_eq!(value(burn, "container_spec_cpu_quota"), 50_000);
    assert_eq!(value(burn, "container_spec_cpu_shares"), 512);
    let before = value(burn, "container_cpu_usage_seconds_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    let later = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pods = pod_metrics(&d).await;
        let burn = container(&pods, &burner);
        if value(burn, "container_cpu_usage_seconds_total") > before
            && value(burn, "container_cpu_user_seconds_total") >= 1
        {
            break pods;
        }
        assert!(
            Instant::now() < deadline,
            "CPU time did not grow past {before} s"
        );
    };
    let burn = container(&later, &burner);
    assert!(
        value(burn, "container_cpu_cfs_periods_total") > 0,
        "{burn:?}"
    );
    // (Throttled periods too, unless a busy host gives the burner less
    // than its quota: not asserted.)
    assert_eq!(
        value(
            container(&later, &idle),
            "container_cpu_usage_seconds_total"
        ),
        0
    );

    d.remove_all_and_check().await;
}

/// A free TCP port on the loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over HTTP/1.0: (status line, headers and body as text).
async fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .expect("the response in time")
        .unwrap();
    let status = text.lines().next().unwrap_or_default().to_owned();
    (status, text)
}

/// The value of the sample `name{labels...}` (labels in any order; the
/// sample may have more), if there is one.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (label_text, v) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| v.trim().parse().ok())?
    })
}

const RUNTIME: &str = "runtime.v1.RuntimeService";

fn rpc_count(text: &str, metric: &str, method: &str, code: Option<&str>) -> f64 {
    let mut labels = vec![("grpc_service", RUNTIME), ("grpc_method", method)];
    if let Some(c) = code {
        labels.push(("grpc_code", c));
    }
    sample(text, metric, &labels).unwrap_or(0.0)
}

/// The ports of TCP sockets a process listens on.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpoint_counts_rpcs_errors_and_objects() {
    let port = free_port();
    let d = Berthd::start_with(
        "mprom",
        &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"),
    );
    assert!(listening_ports(d.pid().unwrap()).contains(&port));
    let (status, text) = http_get(port, "/metrics").await;
    assert!(status.contains(" 200 "), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    let (status, _) = http_get(port, "/other").await;
    assert!(status.contains(" 404 "), "{status}");

    let versions = rpc_count(&text, "grpc_server_started_total", "Version", None);
    let mut rt = d.runtime().await;
    for _ in 0..3 {
        rt.version(cri::VersionRequest::default()).await.unwrap();
    }
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: UNKNOWN.into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("prom", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    d.sleeper(&pod, &pod_cfg, "sleeper").await;

    let (_, text) = http_get(port, "/metrics").await;
    for line in [
        "# TYPE grpc_server_started_total counter",
        "# TYPE grpc_server_handled_total counter",
        "# TYPE grpc_server_handling_seconds histogram",
        "# TYPE berthd_pod_sandboxes gauge",
        "# TYPE berthd_containers gauge",
        "# TYPE berthd_image_pull_bytes_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert_eq!(
        rpc_count(&text, "grpc_server_started_total", "Version", None),
        versions + 3.0,
        "{text}"
    );
    assert!(rpc_count(&text, "grpc_server_handled_total", "Version", Some("OK")) >= 3.0);
    assert!(rpc_count(&text, "grpc_server_handling_seconds_count", "Version", None) >= 3.0);
    assert_eq!(
        rpc_count(
            &text,
            "grpc_server_handled_total",
            "ContainerStatus",
            Some("NotFound")
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "grpc_server_handled_total",
            &[
                ("grpc_service", "runtime.v1.ImageService"),
                ("grpc_method", "PullImage"),
                ("grpc_code", "OK")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "berthd_pod_sandboxes", &[("state", "ready")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "berthd_pod_sandboxes", &[("state", "notready")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "berthd_containers", &[("state", "running")]),
        Some(1.0)
    );
    // The image came from the registry, not from a store that had it.
    let pulled = sample(&text, "berthd_image_pull_bytes_total", &[]).unwrap();
    assert!(pulled > 1000.0, "{pulled}");

    d.stop_pod(&pod).await;
    let (_, text) = http_get(port, "/metrics").await;
    assert_eq!(
        sample(&text, "berthd_pod_sandboxes", &[("state", "notready")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "berthd_containers", &[("state", "exited")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "berthd_containers", &[("state", "running")]),
        Some(0.0)
    );
    d.remove_all_and_check().await;
}

/// Without `[metrics] address` nothing serves /metrics: none of berthd's
/// listeners (the streaming server's) answers it. A bad address stops
/// berthd at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_metrics_listener_unless_configured() {
    let d = Berthd::start("mnone");
    let ports = listening_ports(d.pid().unwrap());
    assert!(!ports.is_empty(), "the streaming server listens");
    for port in ports {
        let (status, text) = http_get(port, "/metrics").await;
        assert!(!status.contains(" 200 "), "port {port} serves {text}");
        assert!(!text.contains("grpc_server_started_total"), "{text}");
    }

    let stderr = berthd_refusing("[metrics]\naddress = \"localhost\"\n");
    assert!(stderr.contains("metrics.address"), "{stderr}");
}
