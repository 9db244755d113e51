//! berth-cri-bench: the CRI v1 client of `bench/cri-pod-start` and
//! `bench/cri-stream-net`.
//!
//! One client for every daemon measured, so that both sides see exactly the
//! same requests, the same gRPC stack (tonic over one HTTP/2 connection on
//! the unix socket, as the kubelet keeps one) and the same clock.
//!
//! ```text
//! berth-cri-bench --socket PATH version
//! berth-cri-bench --socket PATH pull IMAGE...
//! berth-cri-bench --socket PATH run --pods N --image REF --tag TAG
//!     --cgroup-parent CG --log-dir DIR [--ids-file FILE] [--hold] [--pod-network]
//! berth-cri-bench --socket PATH cleanup --tag TAG
//! berth-cri-bench --socket PATH up --name NAME --image REF --tag TAG
//!     --cgroup-parent CG --log-dir DIR [--ids-file FILE] [--port PORT]
//! berth-cri-bench --socket PATH stream --pod ID --container ID [--port PORT]
//!     [--order KIND,...] [--rtts N] [--payload BYTES] [--check]
//! ```
//!
//! `run` starts N pods at once, each RunPodSandbox -> CreateContainer ->
//! StartContainer in its own task (one host-network pod, one busybox
//! container running `sleep 3600`), checks (untimed) that every pod is
//! SANDBOX_READY and every container CONTAINER_RUNNING, optionally holds
//! (prints a `started` JSON line and waits for a line on stdin, so the
//! caller can look at the processes), then tears every pod down the same
//! way, all at once: StopContainer (timeout 0: SIGKILL, as a `sleep` that is
//! PID 1 of its namespace ignores SIGTERM), RemoveContainer, StopPodSandbox,
//! RemovePodSandbox. It prints one JSON object: per pod the time of every
//! RPC and of the whole start and teardown sequences, the wall time of all
//! starts and of all teardowns, and the errors (RPC, gRPC code, message).
//! Whatever fails, it still tears down what it created; it exits 1 if
//! anything failed.
//!
//! Every pod and container carries the label `berth-bench=TAG`; `cleanup`
//! removes whatever carries it (for the caller's cleanup after a failure).
//! `--ids-file` gets a line `pod ID` / `container ID` as soon as one is
//! created, so the caller can find the runtime's leftovers by id.
//!
//! `--pod-network` gives the pods of `run` the pod network (namespace mode
//! POD, i.e. CNI, and the pod's name as hostname, as kubelet does for a pod
//! without hostNetwork) instead of the host's, and its check also wants an
//! IP in PodSandboxStatus. `up` and `stream` are the streaming benchmark's
//! (see the `stream` module).

mod concurrent;
mod opts;
mod portforward;
mod run;
mod stream;
mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tonic::transport::{Channel, Endpoint, Uri};

use opts::{parse, Opts, USAGE};
pub(crate) use run::{check_container, cmd_run, pod_ip, teardown_pod};

const LABEL: &str = "berth-bench";
const CONTAINER_NAME: &str = "sleep";

type Runtime = RuntimeServiceClient<Channel>;

async fn connect(socket: &Path) -> Result<Channel, String> {
    let path = socket.to_path_buf();
    // the URI is a placeholder: the connector dials the unix socket
    Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| format!("connecting to {}: {e:?}", socket.display()))
}

/// One RPC with a client-side deadline; Err is "RPC: code: message".
pub(crate) async fn rpc<T>(
    name: &str,
    limit: Duration,
    f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{name}: {:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!(
            "{name}: no answer within {} s (client deadline)",
            limit.as_secs()
        )),
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// kubelet's namespaces for a pod: the host's network for a hostNetwork
/// pod, else the pod's own (CNI); a PID namespace per container; one IPC
/// namespace per pod.
fn namespaces(pod_network: bool) -> cri::NamespaceOption {
    let network = if pod_network {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Node
    };
    cri::NamespaceOption {
        network: network as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn labels(tag: &str) -> HashMap<String, String> {
    HashMap::from([(LABEL.to_owned(), tag.to_owned())])
}

/// What kubelet would send for a pod (minus DNS and ports): on the host's
/// network, or with `pod_network` on the pod network (the pod's name as
/// its hostname).
pub(crate) fn pod_config(o: &Opts, suffix: &str, pod_network: bool) -> cri::PodSandboxConfig {
    let name = format!("{}-{suffix}", o.tag);
    let namespace = o.tag.clone();
    let uid = format!("{}-uid-{suffix}", o.tag);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            namespace: namespace.clone(),
            uid: uid.clone(),
            attempt: 0,
        }),
        hostname: if pod_network {
            name.clone()
        } else {
            String::new()
        },
        // kubelet's /var/log/pods/<namespace>_<name>_<uid>
        log_directory: o
            .log_dir
            .join(format!("{namespace}_{name}_{uid}"))
            .display()
            .to_string(),
        labels: labels(&o.tag),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: o.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(pod_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container `name` running `command` (log `<name>/0.log`).
pub(crate) fn container_config(
    o: &Opts,
    name: &str,
    command: &[&str],
    pod_network: bool,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: o.image.clone(),
            ..Default::default()
        }),
        command: command.iter().map(|c| c.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: labels(&o.tag),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(pod_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) struct IdsFile(Option<Mutex<std::fs::File>>);

impl IdsFile {
    pub(crate) fn open(path: Option<&Path>) -> Result<IdsFile, String> {
        let Some(p) = path else {
            return Ok(IdsFile(None));
        };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("opening {}: {e}", p.display()))?;
        Ok(IdsFile(Some(Mutex::new(f))))
    }

    pub(crate) fn record(&self, kind: &str, id: &str) {
        if let Some(f) = &self.0 {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(f, "{kind} {id}");
            let _ = f.flush();
        }
    }
}

/// How long `probe` spends on one RPC at most, and its fewest calls.
const PROBE_BUDGET: Duration = Duration::from_secs(20);
const MIN_PROBES: usize = 10;

/// The calls kubelet's PLEG and stats loops make every second, each `count`
/// times and for at least `seconds` in turn (one at a time, as those loops
/// do; a slow RPC stops after PROBE_BUDGET), against whatever runs
/// on the daemon; the single-object calls go to the pods and containers
/// labelled berth-bench=TAG in turn. Prints per RPC the median, p99 and
/// mean latency (ms) and the objects the last answer held. `only`: the
/// RPCs to probe (all five if empty), to profile one of them.
async fn cmd_probe(
    channel: Channel,
    limit: Duration,
    tag: &str,
    count: usize,
    seconds: Duration,
    only: &[String],
) -> Result<bool, String> {
    const PROBED: [&str; 5] = [
        "ListPodSandbox",
        "ListContainers",
        "ListPodSandboxStats",
        "ContainerStats",
        "PodSandboxStatus",
    ];
    if let Some(unknown) = only.iter().find(|o| !PROBED.contains(&o.as_str())) {
        return Err(format!(
            "probe --rpcs: {unknown} is not one of {}",
            PROBED.join(", ")
        ));
    }
    let mut rt = RuntimeServiceClient::new(channel);
    let pods: Vec<String> = rpc(
        "ListPodSandbox",
        limit,
        rt.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: labels(tag),
                ..Default::default()
            }),
        }),
    )
    .await?
    .items
    .into_iter()
    .map(|p| p.id)
    .collect();
    let containers: Vec<String> = rpc(
        "ListContainers",
        limit,
        rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: labels(tag),
                ..Default::default()
            }),
        }),
    )
    .await?
    .containers
    .into_iter()
    .map(|c| c.id)
    .collect();
    if pods.is_empty() || containers.is_empty() {
        return Err(format!("probe: no pod or container labelled {LABEL}={tag}"));
    }
    let mut out = serde_json::Map::new();
    for name in PROBED {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let mut samples = Vec::with_capacity(count);
        let mut objects = 0usize;
        let began = Instant::now();
        for i in 0.. {
            let elapsed = began.elapsed();
            if i >= count && elapsed >= seconds {
                break;
            }
            // A slow call is sampled fewer times (at least MIN_PROBES).
            if i >= MIN_PROBES && elapsed > PROBE_BUDGET {
                break;
            }
            let t = Instant::now();
            objects = match name {
                "ListPodSandbox" => rpc(
                    name,
                    limit,
                    rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()),
                )
                .await?
                .items
                .len(),
                "ListContainers" => rpc(
                    name,
                    limit,
                    rt.list_containers(cri::ListContainersRequest::default()),
                )
                .await?
                .containers
                .len(),
                "ListPodSandboxStats" => rpc(
                    name,
                    limit,
                    rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default()),
                )
                .await?
                .stats
                .len(),
                "ContainerStats" => {
                    let id = containers[i % containers.len()].clone();
                    rpc(
                        name,
                        limit,
                        rt.container_stats(cri::ContainerStatsRequest { container_id: id }),
                    )
                    .await?;
                    1
                }
                _ => {
                    let id = pods[i % pods.len()].clone();
                    rpc(
                        name,
                        limit,
                        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                            pod_sandbox_id: id,
                            verbose: false,
                        }),
                    )
                    .await?;
                    1
                }
            };
            samples.push(ms(t.elapsed()));
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        out.insert(
            name.into(),
            json!({"p50": at(0.5), "p99": at(0.99), "mean": mean, "n": samples.len(), "objects": objects}),
        );
    }
    println!("{}", Value::Object(out));
    Ok(true)
}

async fn cmd_version(channel: Channel, limit: Duration) -> Result<bool, String> {
    let mut rt = RuntimeServiceClient::new(channel);
    let v = rpc(
        "Version",
        limit,
        rt.version(cri::VersionRequest {
            version: "v1".into(),
        }),
    )
    .await?;
    let s = rpc(
        "Status",
        limit,
        rt.status(cri::StatusRequest { verbose: false }),
    )
    .await?;
    let conditions: Vec<Value> = s
        .status
        .map(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| json!({"type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message}))
        .collect();
    println!(
        "{}",
        json!({
            "runtime_name": v.runtime_name,
            "runtime_version": v.runtime_version,
            "runtime_api_version": v.runtime_api_version,
            "conditions": conditions,
        })
    );
    Ok(true)
}

async fn cmd_pull(channel: Channel, limit: Duration, images: &[String]) -> Result<bool, String> {
    let mut img = ImageServiceClient::new(channel);
    let mut out = Vec::new();
    for image in images {
        let t = Instant::now();
        let r = rpc(
            "PullImage",
            limit,
            img.pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| format!("{image}: {e}"))?;
        out.push(json!({"image": image, "image_ref": r.image_ref, "ms": ms(t.elapsed())}));
    }
    println!("{}", json!({ "pulled": out }));
    Ok(true)
}

/// Removes every container and pod labelled berth-bench=TAG.
async fn cmd_cleanup(channel: Channel, limit: Duration, tag: &str) -> Result<bool, String> {
    let mut rt = RuntimeServiceClient::new(channel);
    let mut errors = Vec::new();
    let containers = rpc(
        "ListContainers",
        limit,
        rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: labels(tag),
                ..Default::default()
            }),
        }),
    )
    .await?
    .containers;
    for c in &containers {
        if let Err(e) = rpc(
            "StopContainer",
            limit,
            rt.stop_container(cri::StopContainerRequest {
                container_id: c.id.clone(),
                timeout: 0,
            }),
        )
        .await
        {
            errors.push(format!("container {}: {e}", c.id));
        }
        if let Err(e) = rpc(
            "RemoveContainer",
            limit,
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: c.id.clone(),
            }),
        )
        .await
        {
            errors.push(format!("container {}: {e}", c.id));
        }
    }
    let pods = rpc(
        "ListPodSandbox",
        limit,
        rt.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: labels(tag),
                ..Default::default()
            }),
        }),
    )
    .await?
    .items;
    for p in &pods {
        if let Err(e) = rpc(
            "StopPodSandbox",
            limit,
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            }),
        )
        .await
        {
            errors.push(format!("pod {}: {e}", p.id));
        }
        if let Err(e) = rpc(
            "RemovePodSandbox",
            limit,
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            }),
        )
        .await
        {
            errors.push(format!("pod {}: {e}", p.id));
        }
    }
    println!(
        "{}",
        json!({"containers": containers.len(), "pods": pods.len(), "errors": errors})
    );
    Ok(errors.is_empty())
}

/// A first RPC on the connection, untimed: HTTP/2 is up and the daemon
/// answers before the clock starts.
async fn warm_up(channel: &Channel, limit: Duration) -> Result<(), String> {
    let mut rt = RuntimeServiceClient::new(channel.clone());
    rpc(
        "Version",
        limit,
        rt.version(cri::VersionRequest {
            version: "v1".into(),
        }),
    )
    .await
    .map(|_| ())
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("berth-cri-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let limit = o.rpc_timeout;
    let command = o.command.clone();
    // On a worker, not in block_on: the main thread is not a worker, so
    // every wake-up of a future polled there by the I/O driver would cross
    // threads (a futex wake per echo), a cost kubectl's goroutines do not
    // pay and that would be added to every daemon's latencies alike.
    let work = async move {
        let channel = connect(&o.socket).await?;
        match command.as_str() {
            "version" => cmd_version(channel, limit).await,
            "pull" => {
                let images = o.args.clone();
                cmd_pull(channel, limit, &images).await
            }
            "cleanup" => {
                let tag = o.tag.clone();
                cmd_cleanup(channel, limit, &tag).await
            }
            "probe" => cmd_probe(channel, limit, &o.tag, o.count, o.seconds, &o.rpcs).await,
            "concurrent" => concurrent::cmd_concurrent(o, channel).await,
            "up" => stream::cmd_up(&o, channel).await,
            "stream" => {
                warm_up(&channel, limit).await?;
                stream::cmd_stream(&o, channel).await
            }
            _ => {
                warm_up(&channel, limit).await?;
                cmd_run(o, channel).await
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        tokio::spawn(work)
            .await
            .unwrap_or_else(|e| Err(format!("the client's task failed: {e}")))
    });
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("berth-cri-bench: {e}");
            std::process::exit(1);
        }
    }
}
