//! berth as the runtime of containerd 1.6's CRI plugin: containerd's own
//! runc v2 shim (`io.containerd.runc.v2`) with `BinaryName` = berth, the way
//! a node swaps runc for berth. A pod's whole life through the CRI, as the
//! kubelet drives it: RunPodSandbox (host network; the sandbox process is a
//! busybox sleep from an image built here), a container that runs, one
//! that exits at once, one OOM-killed by its memory limit (OOMKilled, 137),
//! ExecSync, a streaming Exec over SPDY/3.1 as kubectl's, one stopped by
//! SIGTERM, StopPodSandbox, RemovePodSandbox. Each
//! request must answer within a few seconds, and afterwards nothing of the
//! pod may be left: no shim, no sandbox or container process, no mount, no
//! cgroup, no runtime state. The same life runs with runc as `BinaryName`
//! in the same containerd, and both timings are printed.
//!
//! Needs root, containerd, runc and umoci.
//! Run: `cargo test -p berth --test containerd_cri -- --nocapture`

mod harness;
mod spdy;

use std::time::{Duration, Instant};

use berth_testkit::prelude::*;
use harness::*;
use k8s_cri::v1 as cri;

/// "A few seconds at most" for any one request.
const LIMIT: Duration = Duration::from_secs(5);

/// Polls `check` until it returns None (done) or `timeout` passes; returns
/// the last complaint.
fn wait_for(timeout: Duration, mut check: impl FnMut() -> Option<String>) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let complaint = check();
        if complaint.is_none() || Instant::now() >= deadline {
            return complaint;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One pod's life with runtime handler `handler`; returns each request's
/// duration.
fn lifecycle(cri: &Cri, handler: &str, round: usize) -> Vec<(&'static str, Duration)> {
    let client = cri.client();
    let mut times: Vec<(&'static str, Duration)> = Vec::new();
    let fail = |what: &str, e: &str| -> ! {
        panic!(
            "{handler} (round {round}): {what}: {e}\n{}",
            cri.diagnostics()
        )
    };
    macro_rules! timed {
        ($name:expr, $call:expr) => {{
            let t0 = Instant::now();
            let r = $call;
            let took = t0.elapsed();
            times.push(($name, took));
            match r {
                Ok(v) => {
                    if took > LIMIT {
                        fail($name, &format!("took {took:?}, more than {LIMIT:?}"));
                    }
                    v
                }
                Err(e) => fail($name, &e),
            }
        }};
    }

    let pod_config = cri.pod_config(&format!("{handler}-{round}"));
    let pod = timed!("RunPodSandbox", client.run_pod(&pod_config, handler));
    let pause_pid = client
        .pod_pid(&pod)
        .unwrap_or_else(|e| fail("sandbox pid", &e));

    let runs_config = cri.container_config("runs", &["sleep", "3600"]);
    let runs = timed!(
        "CreateContainer",
        client.create_container(&pod, &runs_config, &pod_config)
    );
    timed!("StartContainer", client.start_container(&runs));
    let runs_pid = client
        .container_pid(&runs)
        .unwrap_or_else(|e| fail("container pid", &e));

    let exits_config = cri.container_config("exits", &["true"]);
    let exits = timed!(
        "CreateContainer (exits)",
        client.create_container(&pod, &exits_config, &pod_config)
    );
    timed!("StartContainer (exits)", client.start_container(&exits));
    if let Some(e) = wait_for(LIMIT, || match client.container_state(&exits) {
        Ok((cri::ContainerState::ContainerExited, 0)) => None,
        other => Some(format!("{other:?}")),
    }) {
        fail(
            "the container that exits at once",
            &format!("not exited 0: {e}"),
        );
    }

    let (code, stdout, stderr) = timed!(
        "ExecSync",
        client.exec_sync(&runs, &["sh", "-c", "echo hello; echo oops >&2"])
    );
    if (code, stdout.as_str(), stderr.as_str()) != (0, "hello\n", "oops\n") {
        fail(
            "ExecSync",
            &format!("exit {code}, stdout {stdout:?}, stderr {stderr:?}"),
        );
    }
    let (code, _, _) = timed!(
        "ExecSync (exit 3)",
        client.exec_sync(&runs, &["sh", "-c", "exit 3"])
    );
    if code != 3 {
        fail("ExecSync", &format!("exit {code}, want 3"));
    }

    // kubectl exec: the Exec RPC, then its URL over SPDY/3.1.
    let url = timed!(
        "Exec",
        client.exec_url(&runs, &["sh", "-c", "cat; echo oops >&2; exit 4"], true)
    );
    match spdy::exec(&url, b"through spdy\n") {
        Ok(e)
            if e.stdout == "through spdy\n"
                && e.stderr == "oops\n"
                && e.status["reason"] == "NonZeroExitCode"
                && e.status["details"]["causes"][0]["message"] == "4" => {}
        Ok(e) => fail(
            "Exec over SPDY",
            &format!(
                "stdout {:?}, stderr {:?}, status {}",
                e.stdout, e.stderr, e.status
            ),
        ),
        Err(e) => fail("Exec over SPDY", &e),
    }

    // One that outgrows its memory limit: the kernel kills it, containerd
    // reports OOMKilled with exit code 137.
    let mut oom_config = cri.container_config("oom", &["tail", "/dev/zero"]);
    if let Some(linux) = oom_config.linux.as_mut() {
        linux.resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            memory_swap_limit_in_bytes: 32 << 20,
            ..Default::default()
        });
    }
    let oom = timed!(
        "CreateContainer (oom)",
        client.create_container(&pod, &oom_config, &pod_config)
    );
    timed!("StartContainer (oom)", client.start_container(&oom));
    if let Some(e) = wait_for(LIMIT, || match client.container_exit(&oom) {
        Ok((cri::ContainerState::ContainerExited, 137, reason)) if reason == "OOMKilled" => None,
        other => Some(format!("{other:?}")),
    }) {
        fail(
            "the container over its memory limit",
            &format!("not OOMKilled: {e}"),
        );
    }

    // A container stopped on its own first, as the kubelet does: SIGTERM,
    // which its shell traps and exits on.
    let term_config = cri.container_config(
        "term",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; touch /tmp/trapped; sleep 3600 & wait",
        ],
    );
    let term = timed!(
        "CreateContainer (term)",
        client.create_container(&pod, &term_config, &pod_config)
    );
    timed!("StartContainer (term)", client.start_container(&term));
    // The shell ignores SIGTERM (it is PID 1) until its trap is set.
    if let Some(e) = wait_for(LIMIT, || {
        match client.exec_sync(&term, &["test", "-e", "/tmp/trapped"]) {
            Ok((0, _, _)) => None,
            other => Some(format!("{other:?}")),
        }
    }) {
        fail(
            "the container that traps SIGTERM",
            &format!("no trap set: {e}"),
        );
    }
    timed!("StopContainer (term)", client.stop_container(&term, 10));
    match client.container_state(&term) {
        Ok((cri::ContainerState::ContainerExited, 0)) => {}
        other => fail("StopContainer", &format!("state {other:?}, want exited 0")),
    }
    // Stopping an exited container again is a no-op.
    timed!("StopContainer (exited)", client.stop_container(&exits, 10));

    timed!("StopPodSandbox", client.stop_pod(&pod));
    match client.pod_state(&pod) {
        Ok(cri::PodSandboxState::SandboxNotready) => {}
        other => fail("after StopPodSandbox", &format!("pod state {other:?}")),
    }
    for id in [&runs, &exits, &term] {
        match client.container_state(id) {
            Ok((cri::ContainerState::ContainerExited, _)) => {}
            other => fail(
                "after StopPodSandbox",
                &format!("container {id}: {other:?}"),
            ),
        }
    }
    // The kubelet stops a pod again when it is unsure: a no-op.
    timed!("StopPodSandbox (again)", client.stop_pod(&pod));
    timed!("RemovePodSandbox", client.remove_pod(&pod));

    // Nothing of the pod is left.
    let leftovers = wait_for(LIMIT, || {
        let mut left = Vec::new();
        let shims = cri.shims();
        if !shims.is_empty() {
            left.push(format!("shims {shims:?}"));
        }
        for (what, pid) in [("sandbox", pause_pid), ("container", runs_pid)] {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                left.push(format!("{what} process {pid}"));
            }
        }
        let pids = pids_under(&cri.cgroup_parent);
        if !pids.is_empty() {
            left.push(format!("processes {pids:?} in {}", cri.cgroup_parent));
        }
        let cgroups = cgroups_below(&cri.cgroup_parent);
        if !cgroups.is_empty() {
            left.push(format!("cgroups {cgroups:?}"));
        }
        let mounts = mounts_under(&cri.dir.path);
        if !mounts.is_empty() {
            left.push(format!("mounts {mounts:?}"));
        }
        let state = cri.runtime_ids(handler);
        if !state.is_empty() {
            left.push(format!("{handler} state {state:?}"));
        }
        (!left.is_empty()).then(|| left.join("; "))
    });
    if let Some(left) = leftovers {
        fail("after RemovePodSandbox", &format!("left behind: {left}"));
    }
    match client.list_pods() {
        Ok(pods) if pods.is_empty() => {}
        other => fail("after RemovePodSandbox", &format!("pods listed: {other:?}")),
    }
    times
}

#[test]
fn pod_lifecycle_with_berth_as_binary_name() {
    let cri = Cri::start();
    let mut rounds = Vec::new();
    // Two rounds each, alternating: the first pays for cold caches.
    for round in 0..2 {
        for (handler, _) in handlers() {
            rounds.push((handler, round, lifecycle(&cri, handler, round)));
        }
    }
    let mut report = String::from("containerd 1.6 CRI, runc v2 shim, BinaryName = berth | runc:\n");
    let names: Vec<&str> = rounds[0].2.iter().map(|(n, _)| *n).collect();
    report.push_str(&format!("{:<26}", "request"));
    for (handler, round, _) in &rounds {
        report.push_str(&format!("{:>12}", format!("{handler}#{round}")));
    }
    report.push('\n');
    for (i, name) in names.iter().enumerate() {
        report.push_str(&format!("{name:<26}"));
        for (_, _, times) in &rounds {
            report.push_str(&format!("{:>10.1}ms", times[i].1.as_secs_f64() * 1e3));
        }
        report.push('\n');
    }
    report.push_str(&format!("{:<26}", "whole life"));
    for (_, _, times) in &rounds {
        let total: Duration = times.iter().map(|(_, d)| *d).sum();
        report.push_str(&format!("{:>10.1}ms", total.as_secs_f64() * 1e3));
    }
    eprintln!("{report}");
    let log = std::fs::read_to_string(&cri.log).unwrap_or_default();
    let noise: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=warning") || l.contains("level=error"))
        .collect();
    eprintln!("containerd's warnings and errors:\n{}", noise.join("\n"));
}
