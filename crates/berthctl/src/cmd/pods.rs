//! runp, stopp, rmp, pods, inspectp, statsp.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use k8s_cri::v1 as cri;

use super::{
    aggregate, error, go_map, info, limit, load_pod_config, matches_regex, parse_labels,
    print_list, print_map, print_status_data, StatusData,
};
use crate::cli::{
    IdsArgs, InspectArgs, PodsArgs, PortForwardArgs, RmpArgs, RunpArgs, StatspArgs, StatusFormat,
};
use crate::client::Clients;
use crate::output::{ago, go_time_string, human_size, rfc3339_nano, truncate_id, Table};
use crate::proto::{to_json, Json, JsonStyle};

/// RunPodSandbox; returns the pod id.
pub async fn run_pod(
    c: &mut Clients,
    config: cri::PodSandboxConfig,
    runtime: Option<String>,
) -> Result<String> {
    let mut rt = c.runtime().await?;
    let req = cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: runtime.unwrap_or_default(),
    };
    // Pod creation may set up networking: twice the usual deadline, as
    // crictl's client allows.
    let r = c
        .call("RunPodSandbox", Some(c.timeout * 2), req, |r| {
            rt.run_pod_sandbox(r)
        })
        .await?;
    Ok(r.pod_sandbox_id)
}

pub async fn runp(c: &mut Clients, a: RunpArgs) -> Result<()> {
    let config = load_pod_config(&a.config).context("load podSandboxConfig")?;
    let id = run_pod(c, config, a.runtime)
        .await
        .context("run pod sandbox")?;
    println!("{id}");
    Ok(())
}

async fn stop_pod(c: &mut Clients, id: &str) -> Result<()> {
    let mut rt = c.runtime().await?;
    let req = cri::StopPodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    };
    c.call("StopPodSandbox", c.deadline(), req, |r| {
        rt.stop_pod_sandbox(r)
    })
    .await?;
    println!("Stopped sandbox {id}");
    Ok(())
}

pub async fn stopp(c: &mut Clients, a: IdsArgs) -> Result<()> {
    for id in &a.ids {
        stop_pod(c, id)
            .await
            .with_context(|| format!("stopping the pod sandbox {id:?}"))?;
    }
    Ok(())
}

async fn list_pods(c: &mut Clients, filter: cri::PodSandboxFilter) -> Result<Vec<cri::PodSandbox>> {
    let mut rt = c.runtime().await?;
    let req = cri::ListPodSandboxRequest {
        filter: Some(filter),
    };
    let r = c
        .call("ListPodSandbox", c.deadline(), req, |r| {
            rt.list_pod_sandbox(r)
        })
        .await
        .context("call list sandboxes RPC")?;
    Ok(r.items)
}

async fn pod_status(
    c: &mut Clients,
    id: &str,
    verbose: bool,
) -> Result<cri::PodSandboxStatusResponse> {
    let mut rt = c.runtime().await?;
    let req = cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.to_owned(),
        verbose,
    };
    Ok(c.call("PodSandboxStatus", c.deadline(), req, |r| {
        rt.pod_sandbox_status(r)
    })
    .await?)
}

pub async fn rmp(c: &mut Clients, a: RmpArgs) -> Result<()> {
    let mut ids = a.ids.clone();
    if a.all {
        ids = list_pods(c, Default::default())
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect();
        if ids.is_empty() {
            info("No pods to remove");
            return Ok(());
        }
    }
    if ids.is_empty() {
        bail!("ID cannot be empty: give one or more pod IDs, or --all");
    }
    let mut errors = Vec::new();
    for id in &ids {
        if let Err(e) = remove_one(c, id, a.force).await {
            errors.push(e);
        }
    }
    aggregate(errors)
}

async fn remove_one(c: &mut Clients, id: &str, force: bool) -> Result<()> {
    let status = pod_status(c, id, false)
        .await
        .with_context(|| format!("getting sandbox status of pod {id:?}"))?;
    let ready = status
        .status
        .as_ref()
        .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
    if ready {
        if force {
            stop_pod(c, id)
                .await
                .with_context(|| format!("stopping the pod sandbox {id:?} failed"))?;
        } else {
            bail!("pod sandbox {id:?} is running, please stop it first");
        }
    }
    let mut rt = c.runtime().await?;
    let req = cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    };
    c.call("RemovePodSandbox", c.deadline(), req, |r| {
        rt.remove_pod_sandbox(r)
    })
    .await
    .with_context(|| format!("removing the pod sandbox {id:?}"))?;
    println!("Removed sandbox {id}");
    Ok(())
}

fn pod_state(state: i32) -> &'static str {
    match cri::PodSandboxState::try_from(state) {
        Ok(cri::PodSandboxState::SandboxReady) => "Ready",
        Ok(cri::PodSandboxState::SandboxNotready) => "NotReady",
        Err(_) => "Unknown",
    }
}

fn runtime_handler(handler: &str) -> &str {
    if handler.is_empty() {
        "(default)"
    } else {
        handler
    }
}

pub async fn pods(c: &mut Clients, a: PodsArgs) -> Result<()> {
    let mut filter = cri::PodSandboxFilter {
        id: a.id.clone().unwrap_or_default(),
        label_selector: parse_labels(&a.labels)?,
        ..Default::default()
    };
    if let Some(state) = &a.state {
        let state = match state.to_lowercase().as_str() {
            "ready" => cri::PodSandboxState::SandboxReady,
            "notready" => cri::PodSandboxState::SandboxNotready,
            _ => bail!("--state should be ready or notready"),
        };
        filter.state = Some(cri::PodSandboxStateValue {
            state: state as i32,
        });
    }
    let mut items: Vec<cri::PodSandbox> = list_pods(c, filter)
        .await
        .context("listing pod sandboxes")?
        .into_iter()
        .filter(|p| {
            p.metadata.as_ref().is_some_and(|m| {
                matches_regex(a.name.as_deref(), &m.name)
                    && matches_regex(a.namespace.as_deref(), &m.namespace)
            })
        })
        .collect();
    items.sort_by_key(|x| std::cmp::Reverse(x.created_at));
    items.truncate(limit(items.len(), a.latest, a.last));

    if print_list(
        &cri::ListPodSandboxResponse {
            items: items.clone(),
            ..Default::default()
        },
        a.output,
    ) {
        return Ok(());
    }
    let mut table = Table::default();
    if !a.verbose && !a.quiet {
        table.row([
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME",
        ]);
    }
    for pod in &items {
        let md = pod.metadata.clone().unwrap_or_default();
        if a.quiet {
            println!("{}", pod.id);
            continue;
        }
        if !a.verbose {
            let id = if a.no_trunc {
                pod.id.clone()
            } else {
                truncate_id(&pod.id, "")
            };
            table.row([
                id,
                ago(pod.created_at),
                pod_state(pod.state).to_owned(),
                md.name,
                md.namespace,
                md.attempt.to_string(),
                runtime_handler(&pod.runtime_handler).to_owned(),
            ]);
            continue;
        }
        println!("ID: {}", pod.id);
        if !md.name.is_empty() {
            println!("Name: {}", md.name);
        }
        if !md.uid.is_empty() {
            println!("UID: {}", md.uid);
        }
        if !md.namespace.is_empty() {
            println!("Namespace: {}", md.namespace);
        }
        if md.attempt != 0 {
            println!("Attempt: {}", md.attempt);
        }
        println!("Status: {}", pod_state(pod.state));
        println!("Created: {}", go_time_string(pod.created_at));
        super::print_map("Labels", &pod.labels);
        super::print_map("Annotations", &pod.annotations);
        println!("Runtime: {}", runtime_handler(&pod.runtime_handler));
        println!();
    }
    table.print();
    Ok(())
}

/// The status as crictl prints it: protobuf JSON with `createdAt` as an
/// RFC 3339 time.
fn pod_status_json(status: &cri::PodSandboxStatus) -> Json {
    let mut json = to_json(status, JsonStyle::Full);
    json.set("createdAt", Json::from(rfc3339_nano(status.created_at)));
    json
}

pub async fn inspectp(c: &mut Clients, a: InspectArgs) -> Result<()> {
    let verbose = !a.quiet;
    let mut statuses = Vec::new();
    for id in &a.ids {
        let r = pod_status(c, id, verbose)
            .await
            .context("get the status of pod sandboxes: get pod sandbox status")?;
        let status = r.status.clone().unwrap_or_default();
        if a.output == StatusFormat::Table {
            print_pod_status_table(&r, &status, verbose);
        } else {
            statuses.push(StatusData::new(pod_status_json(&status), r.info));
        }
    }
    print_status_data(&statuses, a.output)
}

fn print_pod_status_table(
    r: &cri::PodSandboxStatusResponse,
    s: &cri::PodSandboxStatus,
    verbose: bool,
) {
    println!("ID: {}", s.id);
    if let Some(md) = &s.metadata {
        if !md.name.is_empty() {
            println!("Name: {}", md.name);
        }
        if !md.uid.is_empty() {
            println!("UID: {}", md.uid);
        }
        if !md.namespace.is_empty() {
            println!("Namespace: {}", md.namespace);
        }
        println!("Attempt: {}", md.attempt);
    }
    println!(
        "Status: {}",
        cri::PodSandboxState::try_from(s.state)
            .map(|st| st.as_str_name().to_owned())
            .unwrap_or_else(|_| s.state.to_string())
    );
    println!("Created: {}", go_time_string(s.created_at));
    if let Some(net) = &s.network {
        println!("IP Addresses: {}", net.ip);
        for ip in &net.additional_ips {
            println!("Additional IP: {}", ip.ip);
        }
    }
    print_map("Labels", &s.labels);
    print_map("Annotations", &s.annotations);
    if verbose {
        println!("Info: {}", go_map(&r.info));
    }
}

pub async fn statsp(c: &mut Clients, a: StatspArgs) -> Result<()> {
    let id = a.id.clone().or(a.pod.clone()).unwrap_or_default();
    let filter = cri::PodSandboxStatsFilter {
        id,
        label_selector: parse_labels(&a.labels).context("parse pod labels")?,
    };
    let old = list_pod_stats(c, &filter).await?;
    if print_list(
        &cri::ListPodSandboxStatsResponse { stats: old.clone() },
        a.output,
    ) {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let stats = list_pod_stats(c, &filter).await?;
    let mut table = Table::default();
    table.row(["POD", "POD ID", "CPU %", "MEM"]);
    for s in &stats {
        let attrs = s.attributes.clone().unwrap_or_default();
        let id = truncate_id(&attrs.id, "");
        let Some(linux) = &s.linux else {
            continue;
        };
        let cpu = linux
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value);
        let ts = linux.cpu.as_ref().map_or(0, |c| c.timestamp);
        let mem = linux
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        if cpu == 0 && mem == 0 {
            continue;
        }
        let Some(prev) = old
            .iter()
            .find(|o| o.attributes.as_ref().map(|x| &x.id) == Some(&attrs.id))
        else {
            continue;
        };
        let prev_linux = prev.linux.clone().unwrap_or_default();
        let prev_cpu = prev_linux
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value);
        let prev_ts = prev_linux.cpu.as_ref().map_or(0, |c| c.timestamp);
        let mut perc = 0.0;
        if cpu != 0 {
            let duration = ts - prev_ts;
            if duration == 0 {
                bail!("get pod stats: cpu stat is not updated during sample");
            }
            perc = cpu.saturating_sub(prev_cpu) as f64 / duration as f64 * 100.0;
        }
        table.row([
            attrs.metadata.unwrap_or_default().name,
            id,
            format!("{perc:.2}"),
            human_size(mem as f64),
        ]);
    }
    table.print();
    Ok(())
}

async fn list_pod_stats(
    c: &mut Clients,
    filter: &cri::PodSandboxStatsFilter,
) -> Result<Vec<cri::PodSandboxStats>> {
    let mut rt = c.runtime().await?;
    let req = cri::ListPodSandboxStatsRequest {
        filter: Some(filter.clone()),
    };
    let mut stats = c
        .call("ListPodSandboxStats", c.deadline(), req, |r| {
            rt.list_pod_sandbox_stats(r)
        })
        .await
        .context("get pod stats: list pod sandbox stats")?
        .stats;
    stats.sort_by(|x, y| {
        let id = |s: &cri::PodSandboxStats| s.attributes.as_ref().map(|a| a.id.clone());
        id(x).cmp(&id(y))
    });
    Ok(stats)
}

/// `[LOCAL:]REMOTE` as crictl reads it (LOCAL 0: any free port).
fn port_pair(spec: &str) -> Result<(u16, u16)> {
    let parse = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| anyhow!("invalid port {p:?} in {spec:?}"))
    };
    let (local, remote) = match spec.split_once(':') {
        Some((l, r)) => (parse(l)?, parse(r)?),
        None => (parse(spec)?, parse(spec)?),
    };
    if remote == 0 {
        bail!("invalid remote port 0 in {spec:?}");
    }
    Ok((local, remote))
}

/// Listens on 127.0.0.1 for each pair and forwards every connection to
/// the pod's port through the streaming server, until interrupted.
pub async fn port_forward(c: &mut Clients, a: PortForwardArgs) -> Result<()> {
    let pairs = a
        .ports
        .iter()
        .map(|p| port_pair(p))
        .collect::<Result<Vec<_>>>()?;
    let mut tasks = Vec::new();
    for (local, remote) in pairs {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{local}"))?;
        let bound = listener.local_addr()?.port();
        println!("Forwarding from 127.0.0.1:{bound} -> {remote}");
        let mut c = Clients::new(
            c.runtime_endpoint.clone(),
            Some(c.image_endpoint.clone()),
            c.timeout,
            c.debug,
        );
        let pod = a.pod.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                // As kubectl; a closed stdout must not end the forwarding.
                let _ = writeln!(std::io::stdout(), "Handling connection for {bound}");
                // One URL per connection: each is single use.
                let url = match port_forward_url(&mut c, &pod, remote).await {
                    Ok(u) => u,
                    Err(e) => {
                        error(format!("{e:#}"));
                        continue;
                    }
                };
                tokio::spawn(async move {
                    if let Err(e) = crate::stream::forward_connection(&url, remote, conn).await {
                        error(format!("forwarding to port {remote}: {e:#}"));
                    }
                });
            }
        }));
    }
    tokio::signal::ctrl_c().await?;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn port_forward_url(c: &mut Clients, pod: &str, port: u16) -> Result<String> {
    let mut rt = c.runtime().await?;
    let req = cri::PortForwardRequest {
        pod_sandbox_id: pod.to_owned(),
        port: vec![port.into()],
    };
    Ok(c.call("PortForward", None, req, |r| rt.port_forward(r))
        .await
        .with_context(|| format!("port-forward to pod {pod}"))?
        .url)
}
