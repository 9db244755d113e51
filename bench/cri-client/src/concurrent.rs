//! `concurrent`: --count CreateContainer calls at once into --pods pods, then
//! as many StartContainer calls at once, then as many ExecSync calls at once
//! (kubelet's pod workers in a burst: a node coming up, a deployment
//! scaled), each timed from its send to its answer, on the one HTTP/2
//! connection. Prints JSON: per phase the wall time, p50/p90/p99/max and
//! every error. The containers and pods stay (the caller's cleanup removes
//! them by tag).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use k8s_cri::v1 as cri;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::opts::Opts;
use crate::{container_config, ms, pod_config, rpc, IdsFile, Runtime};

fn summary(wall: Duration, mut samples: Vec<f64>, errors: Vec<String>) -> Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| {
        if samples.is_empty() {
            return f64::NAN;
        }
        samples[((q / 100.0) * (samples.len() - 1) as f64).round() as usize]
    };
    json!({
        "wall_ms": ms(wall), "ok": samples.len(), "p50": pct(50.0), "p90": pct(90.0),
        "p99": pct(99.0), "max": pct(100.0), "errors": errors,
    })
}

/// Runs `call(i)` for every i at once; (wall time, latencies of the OKs,
/// errors, the OK values by i).
async fn burst<T, F, Fut>(n: usize, call: F) -> (Duration, Vec<f64>, Vec<String>, Vec<Option<T>>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let began = Instant::now();
    let results = join_all((0..n).map(|i| {
        let f = call(i);
        async move {
            let t = Instant::now();
            let r = f.await;
            (ms(t.elapsed()), r)
        }
    }))
    .await;
    let wall = began.elapsed();
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    let mut values = Vec::new();
    for (t, r) in results {
        match r {
            Ok(v) => {
                lat.push(t);
                values.push(Some(v));
            }
            Err(e) => {
                errors.push(e);
                values.push(None);
            }
        }
    }
    (wall, lat, errors, values)
}

pub(crate) async fn cmd_concurrent(o: Opts, channel: Channel) -> Result<bool, String> {
    let o = Arc::new(o);
    let limit = o.rpc_timeout;
    let ids = IdsFile::open(o.ids_file.as_deref())?;
    let rt = Runtime::new(channel);
    let n = o.count;
    let pods_n = o.pods.max(1);
    // The pods first, one at a time, untimed.
    let mut pods = Vec::new();
    for p in 0..pods_n {
        let config = pod_config(&o, &format!("cc{p}"), false);
        let id = rpc(
            "RunPodSandbox",
            limit,
            rt.clone().run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
        )
        .await?
        .pod_sandbox_id;
        ids.record("pod", &id);
        pods.push((id, config));
    }
    let pods = Arc::new(pods);

    let (wall, lat, errors, created) = burst(n, |i| {
        let (pod, pconf) = pods[i % pods_n].clone();
        let config = container_config(&o, &format!("c{i}"), &["sleep", "3600"], false);
        let mut rt = rt.clone();
        async move {
            rpc(
                "CreateContainer",
                limit,
                rt.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: Some(pconf),
                }),
            )
            .await
            .map(|r| r.container_id)
        }
    })
    .await;
    let ids_ok: Vec<String> = created.into_iter().flatten().collect();
    for id in &ids_ok {
        ids.record("container", id);
    }
    let create = summary(wall, lat, errors);

    let (wall, lat, errors, _) = burst(ids_ok.len(), |i| {
        let id = ids_ok[i].clone();
        let mut rt = rt.clone();
        async move {
            rpc(
                "StartContainer",
                limit,
                rt.start_container(cri::StartContainerRequest { container_id: id }),
            )
            .await
            .map(|_| ())
        }
    })
    .await;
    let start = summary(wall, lat, errors);

    let (wall, lat, errors, _) = burst(ids_ok.len(), |i| {
        let id = ids_ok[i].clone();
        let mut rt = rt.clone();
        async move {
            let r = rpc(
                "ExecSync",
                limit,
                rt.exec_sync(cri::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["sh".into(), "-c".into(), "echo ok".into()],
                    timeout: 60,
                }),
            )
            .await?;
            if r.exit_code != 0 || r.stdout != b"ok\n" {
                return Err(format!(
                    "ExecSync in {id}: exit {} stdout {:?}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout)
                ));
            }
            Ok(())
        }
    })
    .await;
    let exec = summary(wall, lat, errors);
    let clean = [&create, &start, &exec]
        .iter()
        .all(|s| s["errors"].as_array().is_some_and(|e| e.is_empty()));
    println!(
        "{}",
        json!({"count": n, "pods": pods_n, "CreateContainer": create,
               "StartContainer": start, "ExecSync": exec})
    );
    Ok(clean)
}
