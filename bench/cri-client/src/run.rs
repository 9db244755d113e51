//! `run`: N pods started at once and torn down at once, each RPC timed
//! (see the crate's documentation).

use super::*;

#[derive(Default)]
struct PodRun {
    name: String,
    sandbox_id: Option<String>,
    container_id: Option<String>,
    started: bool,
    /// The pod's IP (PodSandboxStatus), once checked.
    ip: String,
    times: serde_json::Map<String, Value>,
    errors: Vec<String>,
}

/// RunPodSandbox -> CreateContainer -> StartContainer for one pod.
async fn start_pod(
    mut rt: Runtime,
    o: Arc<Opts>,
    ids: Arc<IdsFile>,
    index: usize,
    t0: Instant,
) -> PodRun {
    let config = pod_config(&o, &index.to_string(), o.pod_network);
    let mut run = PodRun {
        name: config.metadata.as_ref().unwrap().name.clone(),
        ..Default::default()
    };
    let limit = o.rpc_timeout;
    // kubelet makes the pod's and the container's log dirs itself
    let log_dir = Path::new(&config.log_directory).join(CONTAINER_NAME);
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        run.errors
            .push(format!("creating {}: {e}", log_dir.display()));
        return run;
    }
    let cconfig = container_config(&o, CONTAINER_NAME, &["sleep", "3600"], o.pod_network);
    let begin = Instant::now();
    run.times
        .insert("spawn_delay_ms".into(), json!(ms(begin - t0)));

    let t = Instant::now();
    let r = rpc(
        "RunPodSandbox",
        limit,
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: o.runtime_handler.clone(),
        }),
    )
    .await;
    run.times
        .insert("run_pod_sandbox_ms".into(), json!(ms(t.elapsed())));
    let sandbox_id = match r {
        Ok(r) => r.pod_sandbox_id,
        Err(e) => {
            run.errors.push(e);
            return run;
        }
    };
    ids.record("pod", &sandbox_id);
    run.sandbox_id = Some(sandbox_id.clone());

    let t = Instant::now();
    let r = rpc(
        "CreateContainer",
        limit,
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(cconfig),
            sandbox_config: Some(config),
        }),
    )
    .await;
    run.times
        .insert("create_container_ms".into(), json!(ms(t.elapsed())));
    let container_id = match r {
        Ok(r) => r.container_id,
        Err(e) => {
            run.errors.push(e);
            return run;
        }
    };
    ids.record("container", &container_id);
    run.container_id = Some(container_id.clone());

    let t = Instant::now();
    let r = rpc(
        "StartContainer",
        limit,
        rt.start_container(cri::StartContainerRequest {
            container_id: container_id.clone(),
        }),
    )
    .await;
    run.times
        .insert("start_container_ms".into(), json!(ms(t.elapsed())));
    match r {
        Ok(_) => {
            run.started = true;
            run.times
                .insert("start_ms".into(), json!(ms(begin.elapsed())));
            run.times
                .insert("done_after_t0_ms".into(), json!(ms(t0.elapsed())));
        }
        Err(e) => run.errors.push(e),
    }
    run
}

/// Untimed: the pod is ready (with an IP if `want_ip`) and its container
/// running; the pod's IP ("" for none).
async fn check_pod(
    mut rt: Runtime,
    limit: Duration,
    run: &PodRun,
    want_ip: bool,
) -> Result<String, String> {
    let (Some(sid), Some(cid)) = (&run.sandbox_id, &run.container_id) else {
        return Ok(String::new());
    };
    let s = rpc(
        "PodSandboxStatus",
        limit,
        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sid.clone(),
            verbose: false,
        }),
    )
    .await?;
    let state = s.status.as_ref().map(|s| s.state).unwrap_or(-1);
    if state != cri::PodSandboxState::SandboxReady as i32 {
        return Err(format!(
            "PodSandboxStatus of {sid}: state {state}, not SANDBOX_READY"
        ));
    }
    let ip = pod_ip(&s);
    if want_ip && ip.is_empty() {
        return Err(format!(
            "PodSandboxStatus of {sid}: no IP (network {:?})",
            s.status.and_then(|s| s.network)
        ));
    }
    check_container(&mut rt, limit, cid).await?;
    Ok(ip)
}

/// The pod's IP in a PodSandboxStatus ("" for none).
pub(crate) fn pod_ip(s: &cri::PodSandboxStatusResponse) -> String {
    s.status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default()
}

/// Untimed: the container is CONTAINER_RUNNING.
pub(crate) async fn check_container(
    rt: &mut Runtime,
    limit: Duration,
    cid: &str,
) -> Result<(), String> {
    let c = rpc(
        "ContainerStatus",
        limit,
        rt.container_status(cri::ContainerStatusRequest {
            container_id: cid.to_owned(),
            verbose: false,
        }),
    )
    .await?;
    let st = c.status.unwrap_or_default();
    if st.state != cri::ContainerState::ContainerRunning as i32 {
        return Err(format!(
            "ContainerStatus of {cid}: state {} (exit code {}, reason {:?}, message {:?}), \
             not CONTAINER_RUNNING",
            st.state, st.exit_code, st.reason, st.message
        ));
    }
    Ok(())
}

/// StopContainer -> RemoveContainer -> StopPodSandbox -> RemovePodSandbox,
/// each step tried even when an earlier one failed.
pub(crate) async fn teardown_pod(
    mut rt: Runtime,
    limit: Duration,
    sandbox_id: Option<String>,
    container_id: Option<String>,
) -> (serde_json::Map<String, Value>, Vec<String>) {
    let mut times = serde_json::Map::new();
    let mut errors = Vec::new();
    let begin = Instant::now();
    if let Some(cid) = container_id {
        let t = Instant::now();
        let r = rpc(
            "StopContainer",
            limit,
            rt.stop_container(cri::StopContainerRequest {
                container_id: cid.clone(),
                timeout: 0,
            }),
        )
        .await;
        times.insert("stop_container_ms".into(), json!(ms(t.elapsed())));
        if let Err(e) = r {
            errors.push(e);
        }
        let t = Instant::now();
        let r = rpc(
            "RemoveContainer",
            limit,
            rt.remove_container(cri::RemoveContainerRequest { container_id: cid }),
        )
        .await;
        times.insert("remove_container_ms".into(), json!(ms(t.elapsed())));
        if let Err(e) = r {
            errors.push(e);
        }
    }
    if let Some(sid) = sandbox_id {
        let t = Instant::now();
        let r = rpc(
            "StopPodSandbox",
            limit,
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sid.clone(),
            }),
        )
        .await;
        times.insert("stop_pod_sandbox_ms".into(), json!(ms(t.elapsed())));
        if let Err(e) = r {
            errors.push(e);
        }
        let t = Instant::now();
        let r = rpc(
            "RemovePodSandbox",
            limit,
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sid,
            }),
        )
        .await;
        times.insert("remove_pod_sandbox_ms".into(), json!(ms(t.elapsed())));
        if let Err(e) = r {
            errors.push(e);
        }
    }
    times.insert("teardown_ms".into(), json!(ms(begin.elapsed())));
    (times, errors)
}

pub(crate) async fn cmd_run(o: Opts, channel: Channel) -> Result<bool, String> {
    let o = Arc::new(o);
    let ids = Arc::new(IdsFile::open(o.ids_file.as_deref())?);
    let rt = RuntimeServiceClient::new(channel);
    let limit = o.rpc_timeout;

    // start: all pods at once
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..o.pods)
        .map(|i| {
            tokio::spawn(start_pod(
                rt.clone(),
                Arc::clone(&o),
                Arc::clone(&ids),
                i,
                t0,
            ))
        })
        .collect();
    let mut runs = Vec::with_capacity(o.pods);
    for (i, t) in tasks.into_iter().enumerate() {
        runs.push(t.await.unwrap_or_else(|e| PodRun {
            name: format!("{}-{i}", o.tag),
            errors: vec![format!("task panicked: {e}")],
            ..Default::default()
        }));
    }
    let start_wall = t0.elapsed();
    let all_started = runs.iter().all(|r| r.started);

    // untimed checks
    if all_started {
        let checks: Vec<_> = runs
            .iter()
            .map(|r| {
                let rt = rt.clone();
                let r = PodRun {
                    sandbox_id: r.sandbox_id.clone(),
                    container_id: r.container_id.clone(),
                    ..Default::default()
                };
                let want_ip = o.pod_network;
                tokio::spawn(async move { check_pod(rt, limit, &r, want_ip).await })
            })
            .collect();
        for (run, c) in runs.iter_mut().zip(checks) {
            match c.await {
                Ok(Ok(ip)) => run.ip = ip,
                Ok(Err(e)) => run.errors.push(e),
                Err(e) => run.errors.push(format!("check task panicked: {e}")),
            }
        }
    }

    if o.hold {
        let pods: Vec<Value> = runs
            .iter()
            .map(|r| json!({"name": r.name, "sandbox_id": r.sandbox_id, "container_id": r.container_id}))
            .collect();
        let ok = runs.iter().all(|r| r.started && r.errors.is_empty());
        println!("{}", json!({"started": ok, "pods": pods}));
        std::io::stdout().flush().ok();
        let mut line = String::new();
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let _ = stdin.read_line(&mut line).await;
    }

    // teardown: all pods at once
    let t1 = Instant::now();
    let tasks: Vec<_> = runs
        .iter()
        .map(|r| {
            tokio::spawn(teardown_pod(
                rt.clone(),
                limit,
                r.sandbox_id.clone(),
                r.container_id.clone(),
            ))
        })
        .collect();
    for (run, t) in runs.iter_mut().zip(tasks) {
        match t.await {
            Ok((times, errors)) => {
                run.times.extend(times);
                run.errors.extend(errors);
            }
            Err(e) => run.errors.push(format!("teardown task panicked: {e}")),
        }
    }
    let teardown_wall = t1.elapsed();

    let ok = runs.iter().all(|r| r.started && r.errors.is_empty());
    let errors: Vec<String> = runs
        .iter()
        .flat_map(|r| r.errors.iter().map(move |e| format!("pod {}: {e}", r.name)))
        .collect();
    let per_pod: Vec<Value> = runs
        .into_iter()
        .map(|r| {
            let mut m = r.times;
            m.insert("name".into(), json!(r.name));
            m.insert("sandbox_id".into(), json!(r.sandbox_id));
            m.insert("container_id".into(), json!(r.container_id));
            m.insert("started".into(), json!(r.started));
            m.insert("ip".into(), json!(r.ip));
            Value::Object(m)
        })
        .collect();
    println!(
        "{}",
        json!({
            "pods": o.pods,
            "start_wall_ms": ms(start_wall),
            "teardown_wall_ms": ms(teardown_wall),
            "per_pod": per_pod,
            "errors": errors,
        })
    );
    Ok(ok)
}
