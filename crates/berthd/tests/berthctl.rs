//! berthctl against berthd: a pod's whole life from the command line with
//! crictl-style JSON configs; and a client that hangs up in the middle of
//! creations leaves nothing behind. Needs root.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

fn berthctl_binary() -> PathBuf {
    let p = std::path::Path::new(BERTHD).with_file_name("berthctl");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

fn ctl(d: &Berthd, args: &[&str]) -> (i32, String, String) {
    ctl_with_input(d, args, b"")
}

/// berthctl with `input` on its stdin (then closed).
fn ctl_with_input(d: &Berthd, args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(berthctl_binary())
        .arg("-r")
        .arg(format!("unix://{}", d.socket.display()))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running berthctl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().expect("running berthctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// "finished IMAGE: D/T bytes, LD/L layers" -> (D, T, LD, L).
fn final_progress(line: &str) -> Option<(u64, u64, usize, usize)> {
    let rest = line.strip_prefix("finished ")?;
    let (_, counts) = rest.rsplit_once(": ")?;
    let (bytes, layers) = counts.split_once(" bytes, ")?;
    let (done, total) = bytes.split_once('/')?;
    let (ld, l) = layers.strip_suffix(" layers")?.split_once('/')?;
    Some((
        done.parse().ok()?,
        total.parse().ok()?,
        ld.parse().ok()?,
        l.parse().ok()?,
    ))
}

fn ok(d: &Berthd, args: &[&str]) -> String {
    let (code, out, err) = ctl(d, args);
    assert_eq!(code, 0, "berthctl {args:?}: {err}\n{}", d.log_tail());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_through_berthctl() {
    let d = Berthd::start("ctl");
    let image = images().busybox.clone();
    // berthd streams the pull's progress beside PullImage.
    let (code, out, err) = ctl(&d, &["pull", "--progress", "plain", &image]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Image is up to date for sha256:"), "{out}");
    let last = err.lines().last().unwrap_or_default();
    let parsed = final_progress(last);
    let (done, total, layers_done, layers) =
        parsed.unwrap_or_else(|| panic!("no final progress line in {err:?}"));
    assert!(total > 0 && done == total, "{err}");
    assert!(layers >= 1 && layers_done == layers, "{err}");
    // Nothing on a pipe unless asked for.
    let (code, _, err) = ctl(&d, &["pull", &image]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    assert!(ok(&d, &["images", "-q"]).lines().count() >= 1);
    let pod_json = d.dir.join("pod.json");
    let ctr_json = d.dir.join("ctr.json");
    // crictl's format: snake_case names, a subset of fields, enums as numbers.
    std::fs::write(
        &pod_json,
        serde_json::json!({
            "metadata": {"name": "cli", "namespace": "test", "uid": unique("uid")},
            "hostname": "cli-pod",
            "log_directory": d.dir.join("logs").display().to_string(),
            "linux": {"cgroup_parent": d.cgroup_parent,
                      "security_context": {"namespace_options": {"network": 0, "pid": 1}}}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        &ctr_json,
        serde_json::json!({
            "metadata": {"name": "app"},
            "image": {"image": image},
            "command": ["sh", "-c", "echo started; hostname; sleep 1000"],
            "log_path": "app.log",
            "labels": {"tier": "cli"}
        })
        .to_string(),
    )
    .unwrap();
    let pod = ok(&d, &["runp", pod_json.to_str().unwrap()])
        .trim()
        .to_owned();
    assert_eq!(pod.len(), 64, "{pod}");
    let ctr = ok(
        &d,
        &[
            "create",
            &pod,
            ctr_json.to_str().unwrap(),
            pod_json.to_str().unwrap(),
        ],
    )
    .trim()
    .to_owned();
    ok(&d, &["start", &ctr]);
    let ps = ok(&d, &["ps", "--label", "tier=cli"]);
    assert!(ps.contains(&ctr[..13]) && ps.contains("Running"), "{ps}");
    let pods = ok(&d, &["pods", "--name", "cli"]);
    assert!(
        pods.contains(&pod[..13]) && pods.contains("Ready"),
        "{pods}"
    );
    let mut logs = String::new();
    for _ in 0..100 {
        logs = ok(&d, &["logs", &ctr]);
        if logs.contains("cli-pod") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(logs, "started\ncli-pod\n");
    let (code, out, _) = ctl(
        &d,
        &["exec", "-s", &ctr, "sh", "-c", "echo in-exec; exit 6"],
    );
    assert_eq!((code, out.as_str()), (6, "in-exec\n"));
    // Without -s: through the streaming server, stdin included.
    let (code, out, err) = ctl_with_input(
        &d,
        &[
            "exec",
            "-i",
            &ctr,
            "sh",
            "-c",
            "read l; echo streamed:$l; exit 7",
        ],
        b"through-stdin\n",
    );
    assert_eq!(
        (code, out.as_str()),
        (7, "streamed:through-stdin\n"),
        "{err}"
    );
    // attach -i to a container created with stdin (stdin_once): its input
    // and its output through the session, its stdin closed with ours.
    let reader_json = d.dir.join("reader.json");
    std::fs::write(
        &reader_json,
        serde_json::json!({
            "metadata": {"name": "reader"},
            "image": {"image": image},
            "command": ["sh", "-c", "read l; echo attached:$l; cat; echo eof"],
            "stdin": true,
            "stdin_once": true,
            "log_path": "reader.log"
        })
        .to_string(),
    )
    .unwrap();
    let reader = ok(
        &d,
        &[
            "create",
            &pod,
            reader_json.to_str().unwrap(),
            pod_json.to_str().unwrap(),
        ],
    )
    .trim()
    .to_owned();
    ok(&d, &["start", &reader]);
    let (code, out, err) = ctl_with_input(&d, &["attach", "-i", &reader], b"line-one\nline-two\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "attached:line-one\nline-two\neof\n", "{err}");
    let inspect: serde_json::Value = serde_json::from_str(&ok(&d, &["inspect", &reader])).unwrap();
    assert_eq!(inspect["status"]["state"], "CONTAINER_EXITED", "{inspect}");
    ok(&d, &["rm", &reader]);
    let inspect: serde_json::Value = serde_json::from_str(&ok(&d, &["inspect", &ctr])).unwrap();
    assert_eq!(inspect["status"]["state"], "CONTAINER_RUNNING", "{inspect}");
    let stats = ok(&d, &["stats", "--id", &ctr]);
    assert!(stats.contains(&ctr[..13]), "{stats}");
    ok(&d, &["stop", "-t", "1", &ctr]);
    let inspect: serde_json::Value = serde_json::from_str(&ok(&d, &["inspect", &ctr])).unwrap();
    assert_eq!(inspect["status"]["state"], "CONTAINER_EXITED", "{inspect}");
    ok(&d, &["rm", &ctr]);
    ok(&d, &["stopp", &pod]);
    ok(&d, &["rmp", &pod]);
    let (code, _, err) = ctl(&d, &["inspect", &ctr]);
    assert!(code != 0 && err.contains("NotFound"), "{err}");
    ok(&d, &["rmi", &image]);
    assert_eq!(d.leftovers(), Vec::<String>::new());
}

/// The client vanishes while many creations are in flight: berthd finishes
/// each and removes what nobody will ever hear of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_creation_leaves_nothing() {
    let d = Berthd::start("hangup");
    d.pull_busybox().await;
    let busybox = images().busybox.clone();
    // Pods first (kept), then containers created by a client that goes away.
    let mut pods = Vec::new();
    for i in 0..6 {
        let cfg = d.pod_config(&format!("h{i}"), true);
        let id = d.run_pod(&cfg, "").await;
        pods.push((id, cfg));
    }
    {
        let mut client = d.runtime().await;
        let mut calls = Vec::new();
        for (i, (pod, cfg)) in pods.iter().enumerate() {
            let mut client = client.clone();
            let req = cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(d.container_config(&format!("c{i}"), &busybox, &["sleep", "1000"])),
                sandbox_config: Some(cfg.clone()),
            };
            calls.push(tokio::spawn(
                async move { client.create_container(req).await },
            ));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        for c in calls {
            c.abort();
        }
        let _ = client.version(cri::VersionRequest::default()).await;
    }
    // Whatever was created was rolled back once berthd noticed.
    let mut settled = false;
    for _ in 0..200 {
        let bundles = std::fs::read_dir(d.state.join("containers"))
            .map(|r| r.count())
            .unwrap_or(0);
        if bundles == 0 && d.containers(None).await.is_empty() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        settled,
        "containers or bundles left after the client hung up\n{}",
        d.log_tail()
    );
    for (pod, _) in &pods {
        d.stop_pod(pod).await;
        d.remove_pod(pod).await;
    }
    // Shims leave a moment after their pod (they answer Shutdown first).
    let mut left = d.leftovers();
    for _ in 0..40 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = d.leftovers();
    }
    assert!(left.is_empty(), "{left:?}\n{}", d.log_tail());
}

/// A quiet `berthctl exec` (no input, no output for a while) under
/// berthd's `[stream] idle_timeout`: berthctl pings every 5 s as kubectl
/// does, so a session quiet for longer than the timeout goes on and ends
/// with its exit code; with a timeout shorter than the pings the server
/// cuts it, and berthctl says so and fails instead of reporting success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_exec_session_and_the_idle_timeout() {
    for (idle_timeout, survives) in [("7s", true), ("1s", false)] {
        let d = Berthd::start_with(
            "ctl-idle",
            &format!("[stream]\nidle_timeout = \"{idle_timeout}\"\n"),
        );
        d.pull_busybox().await;
        let pod_cfg = d.pod_config("ctl-idle", false);
        let pod = d.run_pod(&pod_cfg, "").await;
        let c = d.sleeper(&pod, &pod_cfg, "quiet").await;
        let quiet = if survives { "16" } else { "4" };
        let script = format!("sleep {quiet}; echo spoke-after-{quiet}s; exit 4");
        let started = std::time::Instant::now();
        let (code, out, err) = ctl(&d, &["exec", &c, "sh", "-c", &script]);
        if survives {
            assert_eq!(
                (code, out.as_str()),
                (4, "spoke-after-16s\n"),
                "berthctl said: {err}"
            );
        } else {
            assert_ne!(code, 0, "{out}{err}");
            assert!(
                err.contains("ended before the command's exit status"),
                "{err}"
            );
            let cut_after = started.elapsed();
            assert!(cut_after < Duration::from_secs(4), "{cut_after:?}");
        }
        d.stop_pod(&pod).await;
        d.remove_pod(&pod).await;
        d.remove_all_and_check().await;
    }
}
