//! create, start, run, stop, rm, ps, inspect, logs, exec, stats, update,
//! checkpoint.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;

use super::images::{auth_config, image_present, pull_image};
use super::pods::run_pod;
use super::{
    aggregate, go_map, info, limit, load_container_config, load_pod_config, matches_regex,
    parse_labels, print_list, print_map, print_status_data, remove_logs, StatusData,
};
use crate::cli::{
    AttachArgs, CheckpointArgs, CreateArgs, ExecArgs, IdsArgs, InspectArgs, LogsArgs, PsArgs,
    PullFlags, RmArgs, RunArgs, StatsArgs, StatusFormat, StopArgs, UpdateArgs,
};
use crate::client::Clients;
use crate::logs;
use crate::output::{ago, human_size, is_digest, rfc3339_nano, truncate_id, Table};
use crate::progress::ProgressMode;
use crate::proto::{to_json, Json, JsonStyle};

/// Go's zero time.Time formatted as RFC 3339.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

async fn create_container(
    c: &mut Clients,
    pod_id: &str,
    container_config: &str,
    sandbox: cri::PodSandboxConfig,
    pull: &PullFlags,
) -> Result<String> {
    let mut config = load_container_config(container_config)?;
    let spec = config.image.get_or_insert_with(Default::default);
    if spec.user_specified_image.is_empty() {
        spec.user_specified_image = spec.image.clone();
    }
    let image = spec.image.clone();
    let annotations = spec.annotations.clone();
    if !pull.no_pull && (pull.with_pull || !image_present(c, &image).await?) {
        let auth = auth_config(pull.creds.as_deref(), pull.auth.as_deref())?;
        info(format!("Pulling container image: {image}"));
        pull_image(
            c,
            &image,
            auth,
            Some(sandbox.clone()),
            annotations,
            ProgressMode::Auto,
        )
        .await?;
    }
    let mut rt = c.runtime().await?;
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.to_owned(),
        config: Some(config),
        sandbox_config: Some(sandbox),
    };
    let r = c
        .call("CreateContainer", c.deadline(), req, |r| {
            rt.create_container(r)
        })
        .await?;
    Ok(r.container_id)
}

pub async fn create(c: &mut Clients, a: CreateArgs) -> Result<()> {
    let sandbox = load_pod_config(&a.pod_config).context("creating container")?;
    let id = create_container(c, &a.pod_id, &a.container_config, sandbox, &a.pull)
        .await
        .context("creating container")?;
    println!("{id}");
    Ok(())
}

async fn start_container(c: &mut Clients, id: &str) -> Result<()> {
    let mut rt = c.runtime().await?;
    let req = cri::StartContainerRequest {
        container_id: id.to_owned(),
    };
    c.call("StartContainer", c.deadline(), req, |r| {
        rt.start_container(r)
    })
    .await?;
    println!("{id}");
    Ok(())
}

pub async fn start(c: &mut Clients, a: IdsArgs) -> Result<()> {
    for id in &a.ids {
        start_container(c, id)
            .await
            .with_context(|| format!("starting the container {id:?}"))?;
    }
    Ok(())
}

pub async fn run(c: &mut Clients, a: RunArgs) -> Result<()> {
    let pod_config =
        load_pod_config(&a.pod_config).context("running container: load podSandboxConfig")?;
    let pod_id = run_pod(c, pod_config.clone(), a.runtime.clone())
        .await
        .context("running container: run pod sandbox")?;
    let id = create_container(c, &pod_id, &a.container_config, pod_config, &a.pull)
        .await
        .context("running container: creating container failed")?;
    start_container(c, &id)
        .await
        .with_context(|| format!("running container: starting the container {id:?}"))?;
    Ok(())
}

async fn stop_container(c: &mut Clients, id: &str, timeout: i64) -> Result<()> {
    let mut rt = c.runtime().await?;
    let req = cri::StopContainerRequest {
        container_id: id.to_owned(),
        timeout,
    };
    // The runtime may wait `timeout` seconds before it kills.
    let deadline = c.timeout + Duration::from_secs(timeout.max(0) as u64);
    c.call("StopContainer", Some(deadline), req, |r| {
        rt.stop_container(r)
    })
    .await?;
    println!("{id}");
    Ok(())
}

pub async fn stop(c: &mut Clients, a: StopArgs) -> Result<()> {
    if a.all && !a.ids.is_empty() {
        bail!("cannot specify CONTAINER-ID(s) when using --all");
    }
    let ids = if a.all {
        let filter = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        let ids: Vec<String> = list_containers(c, filter)
            .await
            .context("listing containers")?
            .into_iter()
            .map(|x| x.id)
            .collect();
        if ids.is_empty() {
            println!("No running containers found.");
            return Ok(());
        }
        ids
    } else {
        if a.ids.is_empty() {
            bail!("you must specify at least one CONTAINER-ID or use --all");
        }
        a.ids.clone()
    };
    for id in &ids {
        stop_container(c, id, a.timeout)
            .await
            .with_context(|| format!("stopping the container {id:?}"))?;
    }
    Ok(())
}

async fn container_status(
    c: &mut Clients,
    id: &str,
    verbose: bool,
) -> Result<cri::ContainerStatusResponse> {
    let mut rt = c.runtime().await?;
    let req = cri::ContainerStatusRequest {
        container_id: id.to_owned(),
        verbose,
    };
    Ok(c.call("ContainerStatus", c.deadline(), req, |r| {
        rt.container_status(r)
    })
    .await?)
}

async fn list_containers(
    c: &mut Clients,
    filter: cri::ContainerFilter,
) -> Result<Vec<cri::Container>> {
    let mut rt = c.runtime().await?;
    let req = cri::ListContainersRequest {
        filter: Some(filter),
    };
    let r = c
        .call("ListContainers", c.deadline(), req, |r| {
            rt.list_containers(r)
        })
        .await
        .context("call list containers RPC")?;
    Ok(r.containers)
}

pub async fn rm(c: &mut Clients, a: RmArgs) -> Result<()> {
    // Fail early (and clearly) when the runtime cannot be reached.
    c.runtime().await?;
    let mut ids = a.ids.clone();
    if a.all {
        ids = list_containers(c, Default::default())
            .await?
            .into_iter()
            .map(|x| x.id)
            .collect();
        if ids.is_empty() {
            info("No containers to remove");
            return Ok(());
        }
    }
    if ids.is_empty() {
        bail!("ID cannot be empty: give one or more container IDs, or --all");
    }
    let mut errors = Vec::new();
    for id in &ids {
        if let Err(e) = remove_one(c, id, a.force, a.keep_logs).await {
            errors.push(e);
        }
    }
    aggregate(errors)
}

async fn remove_one(c: &mut Clients, id: &str, force: bool, keep_logs: bool) -> Result<()> {
    let status = container_status(c, id, false)
        .await
        .with_context(|| format!("getting container status {id:?}"))?
        .status
        .unwrap_or_default();
    if status.state == cri::ContainerState::ContainerRunning as i32 {
        if force {
            stop_container(c, id, 0)
                .await
                .with_context(|| format!("stopping the container {id:?}"))?;
        } else {
            bail!("container {id:?} is running, please stop it first");
        }
    }
    let mut rt = c.runtime().await?;
    let req = cri::RemoveContainerRequest {
        container_id: id.to_owned(),
    };
    c.call("RemoveContainer", c.deadline(), req, |r| {
        rt.remove_container(r)
    })
    .await
    .with_context(|| format!("removing container {id:?}"))?;
    println!("{id}");
    if !keep_logs && !status.log_path.is_empty() {
        remove_logs(&status.log_path, id);
    }
    Ok(())
}

fn container_state(state: i32) -> &'static str {
    match cri::ContainerState::try_from(state) {
        Ok(cri::ContainerState::ContainerCreated) => "Created",
        Ok(cri::ContainerState::ContainerRunning) => "Running",
        Ok(cri::ContainerState::ContainerExited) => "Exited",
        Ok(cri::ContainerState::ContainerUnknown) | Err(_) => "Unknown",
    }
}

fn label_or_unknown<'a>(
    labels: &'a std::collections::HashMap<String, String>,
    key: &str,
) -> &'a str {
    labels.get(key).map_or("unknown", String::as_str)
}

const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

pub async fn ps(c: &mut Clients, a: PsArgs) -> Result<()> {
    let mut filter = cri::ContainerFilter {
        id: a.id.clone().unwrap_or_default(),
        pod_sandbox_id: a.pod.clone().unwrap_or_default(),
        label_selector: parse_labels(&a.labels)?,
        ..Default::default()
    };
    if !a.all && a.state.is_none() {
        filter.state = Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        });
    }
    if let Some(state) = &a.state {
        let state = match state.to_lowercase().as_str() {
            "created" => cri::ContainerState::ContainerCreated,
            "running" => cri::ContainerState::ContainerRunning,
            "exited" => cri::ContainerState::ContainerExited,
            "unknown" => cri::ContainerState::ContainerUnknown,
            _ => bail!("--state should be one of created, running, exited or unknown"),
        };
        filter.state = Some(cri::ContainerStateValue {
            state: state as i32,
        });
    }
    if a.latest || a.last > 0 {
        // The newest ones, whatever their state.
        filter.state = None;
    }
    let mut list: Vec<cri::Container> = list_containers(c, filter)
        .await
        .context("listing containers")?
        .into_iter()
        .filter(|x| {
            x.metadata.as_ref().is_some_and(|m| {
                matches_regex(a.name.as_deref(), &m.name)
                    && matches_regex(
                        a.namespace.as_deref(),
                        label_or_unknown(&x.labels, POD_NAMESPACE_LABEL),
                    )
            })
        })
        .collect();
    list.sort_by_key(|x| std::cmp::Reverse(x.created_at));
    list.truncate(limit(list.len(), a.latest, a.last));

    if print_list(
        &cri::ListContainersResponse {
            containers: list.clone(),
            ..Default::default()
        },
        a.output,
    ) {
        return Ok(());
    }
    let mut table = Table::default();
    if !a.verbose && !a.quiet {
        table.row([
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "POD ID",
            "POD",
            "NAMESPACE",
        ]);
    }
    for x in &list {
        if a.quiet {
            println!("{}", x.id);
            continue;
        }
        let md = x.metadata.clone().unwrap_or_default();
        let namespace = label_or_unknown(&x.labels, POD_NAMESPACE_LABEL);
        let mut image = x
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if !a.verbose {
            let (mut id, mut pod) = (x.id.clone(), x.pod_sandbox_id.clone());
            if !a.no_trunc {
                id = truncate_id(&id, "");
                pod = truncate_id(&pod, "");
                if is_digest(&image) {
                    let algo = image.split(':').next().unwrap_or_default().to_owned();
                    image = truncate_id(&image, &format!("{algo}:"));
                }
            }
            table.row([
                id,
                image,
                ago(x.created_at),
                container_state(x.state).to_owned(),
                md.name,
                md.attempt.to_string(),
                pod,
                label_or_unknown(&x.labels, POD_NAME_LABEL).to_owned(),
                namespace.to_owned(),
            ]);
            continue;
        }
        println!("ID: {}", x.id);
        println!("PodID: {}", x.pod_sandbox_id);
        println!("Namespace: {namespace}");
        if !md.name.is_empty() {
            println!("Name: {}", md.name);
        }
        println!("Attempt: {}", md.attempt);
        println!("State: {}", container_state(x.state));
        if x.image.is_some() {
            println!("Image: {image}");
        }
        println!("Created: {}", ago(x.created_at));
        print_map("Labels", &x.labels);
        print_map("Annotations", &x.annotations);
        println!();
    }
    table.print();
    Ok(())
}

/// The status as crictl prints it: protobuf JSON with the times as RFC 3339.
fn container_status_json(s: &cri::ContainerStatus) -> Json {
    let mut json = to_json(s, JsonStyle::Full);
    json.set("createdAt", Json::from(rfc3339_nano(s.created_at)));
    let started = if s.state != cri::ContainerState::ContainerCreated as i32 {
        rfc3339_nano(s.started_at)
    } else {
        ZERO_TIME.to_owned()
    };
    let exited = s.state == cri::ContainerState::ContainerExited as i32
        || (s.state == cri::ContainerState::ContainerUnknown as i32 && s.finished_at > 0);
    let finished = if exited {
        rfc3339_nano(s.finished_at)
    } else {
        ZERO_TIME.to_owned()
    };
    json.set("startedAt", Json::from(started));
    json.set("finishedAt", Json::from(finished));
    json
}

pub async fn inspect(c: &mut Clients, a: InspectArgs) -> Result<()> {
    let verbose = !a.quiet;
    let mut statuses = Vec::new();
    for id in &a.ids {
        let r = container_status(c, id, verbose)
            .await
            .context("get the status of containers: get container status")?;
        let s = r.status.clone().unwrap_or_default();
        if a.output == StatusFormat::Table {
            print_container_status_table(&r, &s, verbose);
        } else {
            statuses.push(StatusData::new(container_status_json(&s), r.info));
        }
    }
    print_status_data(&statuses, a.output)
}

fn print_container_status_table(
    r: &cri::ContainerStatusResponse,
    s: &cri::ContainerStatus,
    verbose: bool,
) {
    println!("ID: {}", s.id);
    if let Some(md) = &s.metadata {
        if !md.name.is_empty() {
            println!("Name: {}", md.name);
        }
        if md.attempt != 0 {
            println!("Attempt: {}", md.attempt);
        }
    }
    println!(
        "State: {}",
        cri::ContainerState::try_from(s.state)
            .map(|st| st.as_str_name().to_owned())
            .unwrap_or_else(|_| s.state.to_string())
    );
    println!("Created: {}", ago(s.created_at));
    if s.state != cri::ContainerState::ContainerCreated as i32 {
        println!("Started: {}", ago(s.started_at));
    }
    if s.state == cri::ContainerState::ContainerExited as i32 {
        if s.finished_at > 0 {
            println!("Finished: {}", ago(s.finished_at));
        }
        println!("Exit Code: {}", s.exit_code);
    }
    print_map("Labels", &s.labels);
    print_map("Annotations", &s.annotations);
    if verbose {
        println!("Info: {}", go_map(&r.info));
    }
}

pub async fn logs(c: &mut Clients, a: LogsArgs) -> Result<()> {
    if a.reopen {
        let mut rt = c.runtime().await?;
        let req = cri::ReopenContainerLogRequest {
            container_id: a.id.clone(),
        };
        c.call("ReopenContainerLog", c.deadline(), req, |r| {
            rt.reopen_container_log(r)
        })
        .await
        .context("reopen container logs")?;
        info("Container logs reopened");
    }
    let status = container_status(c, &a.id, false)
        .await?
        .status
        .unwrap_or_default();
    if status.log_path.is_empty() {
        bail!("the container has not set log path");
    }
    let opts = logs::Options {
        follow: a.follow,
        tail: usize::try_from(a.tail).ok(),
        timestamps: a.timestamps,
    };
    let path = Path::new(&status.log_path);
    let mut sink = logs::StdSink;
    if !a.follow {
        return logs::print_file(path, &opts, &mut sink);
    }
    let id = status.id.clone();
    let running = cri::ContainerState::ContainerRunning as i32;
    // The log is followed while the container runs; a status error (it
    // was removed) ends it too.
    let rt = c.runtime().await?;
    let timeout = c.timeout;
    let check = move || {
        let id = id.clone();
        let mut rt = rt.clone();
        async move {
            let mut req = tonic::Request::new(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            });
            req.set_timeout(timeout);
            Ok(
                match tokio::time::timeout(timeout, rt.container_status(req)).await {
                    Ok(Ok(r)) => r.into_inner().status.is_some_and(|s| s.state == running),
                    _ => false,
                },
            )
        }
    };
    logs::follow(path, &opts, &mut sink, check).await
}

pub async fn exec(c: &mut Clients, a: ExecArgs) -> Result<i32> {
    if !a.sync {
        let mut rt = c.runtime().await?;
        let req = cri::ExecRequest {
            container_id: a.id.clone(),
            cmd: a.cmd.clone(),
            tty: a.tty,
            stdin: a.interactive,
            stdout: true,
            stderr: !a.tty,
        };
        let url = c
            .call("Exec", None, req, |r| rt.exec(r))
            .await
            .with_context(|| format!("execing command in container {}", a.id))?
            .url;
        return crate::stream::remotecommand(&url, a.interactive, a.tty).await;
    }
    let mut rt = c.runtime().await?;
    let req = cri::ExecSyncRequest {
        container_id: a.id.clone(),
        cmd: a.cmd.clone(),
        timeout: a.timeout,
    };
    // No deadline unless the command has one (then the runtime's, plus the
    // usual allowance for the call itself).
    let deadline = (a.timeout > 0).then(|| c.timeout + Duration::from_secs(a.timeout as u64));
    let r = c
        .call("ExecSync", deadline, req, |r| rt.exec_sync(r))
        .await
        .with_context(|| format!("execing command in container {} synchronously", a.id))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&r.stdout)?;
    out.flush()?;
    let mut err = std::io::stderr().lock();
    err.write_all(&r.stderr)?;
    err.flush()?;
    Ok(r.exit_code)
}

pub async fn attach(c: &mut Clients, a: AttachArgs) -> Result<i32> {
    let mut rt = c.runtime().await?;
    let req = cri::AttachRequest {
        container_id: a.id.clone(),
        tty: a.tty,
        stdin: a.interactive,
        stdout: true,
        stderr: !a.tty,
    };
    let url = c
        .call("Attach", None, req, |r| rt.attach(r))
        .await
        .with_context(|| format!("attaching to container {}", a.id))?
        .url;
    crate::stream::remotecommand(&url, a.interactive, a.tty).await
}

pub async fn stats(c: &mut Clients, a: StatsArgs) -> Result<()> {
    let filter = cri::ContainerStatsFilter {
        id: a.id.clone().or(a.container.clone()).unwrap_or_default(),
        pod_sandbox_id: a.pod.clone().unwrap_or_default(),
        label_selector: parse_labels(&a.labels)?,
    };
    let old = list_stats(c, &filter).await?;
    if print_list(
        &cri::ListContainerStatsResponse { stats: old.clone() },
        a.output,
    ) {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let stats = list_stats(c, &filter).await?;
    let mut table = Table::default();
    table.row([
        "CONTAINER",
        "NAME",
        "CPU %",
        "MEM",
        "DISK",
        "INODES",
        "SWAP",
    ]);
    let value = |v: Option<&cri::UInt64Value>| v.map_or(0, |v| v.value);
    for s in &stats {
        let attrs = s.attributes.clone().unwrap_or_default();
        let cpu = value(
            s.cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds.as_ref()),
        );
        let mem = value(s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()));
        let disk = value(
            s.writable_layer
                .as_ref()
                .and_then(|w| w.used_bytes.as_ref()),
        );
        let inodes = value(
            s.writable_layer
                .as_ref()
                .and_then(|w| w.inodes_used.as_ref()),
        );
        let swap = value(s.swap.as_ref().and_then(|w| w.swap_usage_bytes.as_ref()));
        if !a.all && cpu == 0 && mem == 0 {
            continue;
        }
        let Some(prev) = old
            .iter()
            .find(|o| o.attributes.as_ref().map(|x| &x.id) == Some(&attrs.id))
        else {
            continue;
        };
        let mut perc = 0.0;
        if cpu != 0 {
            let ts = s.cpu.as_ref().map_or(0, |c| c.timestamp);
            let prev_ts = prev.cpu.as_ref().map_or(0, |c| c.timestamp);
            if ts == prev_ts {
                bail!("get container stats: cpu stat is not updated during sample");
            }
            let prev_cpu = value(
                prev.cpu
                    .as_ref()
                    .and_then(|c| c.usage_core_nano_seconds.as_ref()),
            );
            perc = cpu.saturating_sub(prev_cpu) as f64 / (ts - prev_ts) as f64 * 100.0;
        }
        table.row([
            truncate_id(&attrs.id, ""),
            attrs.metadata.unwrap_or_default().name,
            format!("{perc:.2}"),
            human_size(mem as f64),
            human_size(disk as f64),
            inodes.to_string(),
            human_size(swap as f64),
        ]);
    }
    table.print();
    Ok(())
}

async fn list_stats(
    c: &mut Clients,
    filter: &cri::ContainerStatsFilter,
) -> Result<Vec<cri::ContainerStats>> {
    let mut rt = c.runtime().await?;
    let req = cri::ListContainerStatsRequest {
        filter: Some(filter.clone()),
    };
    let mut stats = c
        .call("ListContainerStats", c.deadline(), req, |r| {
            rt.list_container_stats(r)
        })
        .await
        .context("get container stats")?
        .stats;
    stats.sort_by(|x, y| {
        let id = |s: &cri::ContainerStats| s.attributes.as_ref().map(|a| a.id.clone());
        id(x).cmp(&id(y))
    });
    Ok(stats)
}

pub async fn update(c: &mut Clients, a: UpdateArgs) -> Result<()> {
    let resources = cri::LinuxContainerResources {
        cpu_period: a.cpu_period,
        cpu_quota: a.cpu_quota,
        cpu_shares: a.cpu_share,
        memory_limit_in_bytes: a.memory,
        cpuset_cpus: a.cpuset_cpus.clone(),
        cpuset_mems: a.cpuset_mems.clone(),
        ..Default::default()
    };
    for id in &a.ids {
        let mut rt = c.runtime().await?;
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(resources.clone()),
            ..Default::default()
        };
        c.call("UpdateContainerResources", c.deadline(), req, |r| {
            rt.update_container_resources(r)
        })
        .await
        .with_context(|| format!("updating container resources for {id:?}"))?;
        println!("{id}");
    }
    Ok(())
}

pub async fn checkpoint(c: &mut Clients, a: CheckpointArgs) -> Result<()> {
    for id in &a.ids {
        let mut rt = c.runtime().await?;
        let req = cri::CheckpointContainerRequest {
            container_id: id.clone(),
            location: a.export.clone(),
            timeout: 0,
        };
        c.call("CheckpointContainer", c.deadline(), req, |r| {
            rt.checkpoint_container(r)
        })
        .await
        .with_context(|| format!("checkpointing the container {id:?} failed"))?;
        println!("{id}");
    }
    Ok(())
}
