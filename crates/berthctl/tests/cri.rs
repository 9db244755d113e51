//! berthctl against a real CRI v1 server: Debian's containerd 1.6 with its
//! CRI plugin, private to each test (see `harness`). Pods use the host
//! network (no CNI config here) and a cgroup parent of their own; images
//! are built locally from /bin/busybox. Needs root.
//!
//! Run: `cargo test -p berthctl --test cri`

mod harness;

use std::time::{Duration, Instant};

use berth_testkit::prelude::*;
use harness::*;
use serde_json::Value;

fn json(out: &Outcome) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.describe()))
}

/// The stderr of a failed berthctl, checked to be crictl's fatal line.
fn fatal(out: &Outcome) -> &str {
    assert_eq!(out.code, Some(1), "expected a failure: {}", out.describe());
    let line = out.stderr.trim_end().lines().last().unwrap_or_default();
    assert!(line.starts_with("FATA["), "{}", out.describe());
    line
}

#[test]
fn version_info_and_images() {
    let cri = Cri::start();

    let out = cri.ok(&["version"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "Version:  0.1.0", "{}", out.describe());
    assert_eq!(lines[1], "RuntimeName:  containerd");
    assert!(lines[2].starts_with("RuntimeVersion:  1.6"), "{}", lines[2]);
    assert_eq!(lines[3], "RuntimeApiVersion:  v1");

    let out = cri.ok(&["--debug", "version"]);
    assert!(
        out.stderr
            .contains("DEBU[0000] VersionRequest: VersionRequest { version: \"v1\" }")
            && out.stderr.contains("DEBU[0000] VersionResponse: "),
        "{}",
        out.describe()
    );

    let info = json(&cri.ok(&["info"]));
    let conditions = info["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "RuntimeReady" && c["status"] == true),
        "{info}"
    );
    // containerd's verbose info is JSON: embedded as objects.
    assert!(info["config"].is_object(), "{info}");
    let quiet = json(&cri.ok(&["info", "-q"]));
    assert!(quiet.get("config").is_none());

    // images: crictl's table, -q, --digests, json, a name filter.
    let out = cri.ok(&["images"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    );
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{}", out.stdout);
    assert_eq!(rows[0][..2], ["localhost/berthctl-test/busybox", "latest"]);
    assert_eq!(rows[1][..2], ["localhost/berthctl-test/busybox", "pause"]);
    assert!(rows.iter().all(|r| r[2].len() == 13), "{}", out.stdout);
    let out = cri.ok(&["images", "--digests"]);
    assert!(out.stdout.lines().next().unwrap().contains("DIGEST"));
    let ids: Vec<String> = cri
        .ok(&["images", "-q"])
        .stdout
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids
        .iter()
        .all(|i| i.starts_with("sha256:") && i.len() == 71));
    let list = json(&cri.ok(&["images", "-o", "json"]));
    let images = list["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert!(images[0]["repoTags"][0]
        .as_str()
        .unwrap()
        .starts_with("localhost/berthctl-test/busybox:"));
    assert!(images[0]["size"].as_str().unwrap().parse::<u64>().unwrap() > 100_000);

    let yaml = cri.ok(&["images", "-o", "yaml"]).stdout;
    assert!(yaml.starts_with("images:\n"), "{yaml}");
    assert!(
        yaml.contains(&format!("  repoTags:\n  - {BUSYBOX}\n")),
        "{yaml}"
    );
    let yaml = cri.ok(&["info", "-o", "yaml"]).stdout;
    assert!(yaml.contains("\nstatus:\n  conditions:\n"), "{yaml}");

    // inspecti: {"status": Image, "info": ...}.
    let status = json(&cri.ok(&["inspecti", BUSYBOX]));
    assert_eq!(status["status"]["repoTags"][0], BUSYBOX);
    assert!(ids.contains(&status["status"]["id"].as_str().unwrap().to_owned()));
    let out = cri.berthctl(&["inspecti", "localhost/berthctl-test/none:latest"]);
    assert!(
        fatal(&out).contains("no such image \"localhost/berthctl-test/none:latest\" present"),
        "{}",
        out.describe()
    );
    let out = cri.ok(&["inspecti", "-o", "table", "-q", BUSYBOX]);
    assert!(
        out.stdout.contains(&format!("Tag: {BUSYBOX}")),
        "{}",
        out.stdout
    );

    let fs = json(&cri.ok(&["imagefsinfo"]));
    assert!(fs["status"]["imageFilesystems"][0]["fsId"]["mountpoint"]
        .as_str()
        .unwrap()
        .starts_with(&cri.dir.path.display().to_string()));

    // rmi of the imported image; the sandbox image stays.
    let out = cri.ok(&["rmi", BUSYBOX]);
    assert_eq!(out.stdout.trim(), format!("Deleted: {BUSYBOX}"));
    let left = cri.ok(&["images", "-q"]).stdout;
    assert_eq!(left.lines().count(), 1, "{left}");
    assert!(
        !cri.ok(&["images"])
            .stdout
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("latest")),
        "the latest tag is gone"
    );
    let out = cri.berthctl(&["rmi", BUSYBOX]);
    assert!(
        fatal(&out).contains(&format!("no such image {BUSYBOX}")),
        "{}",
        out.describe()
    );
    cri.assert_clean();
}

#[test]
fn pod_lifecycle_and_config_parsing() {
    let cri = Cri::start();

    // A config with unknown fields: warned about, ignored (as crictl does).
    let cfg = cri.write_config(
        "pod-typo.json",
        &format!(
            r#"{{"metadata": {{"name": "typo", "namespace": "ns"}}, "bogus_field": 1,
               "linux": {{"cgroup_parent": "{}", "security_context": {{"namespace_options": {{"network": 2, "netwrk": 1}}}}}}}}"#,
            cri.cgroup_parent
        ),
    );
    let out = cri.ok(&["runp", &cfg]);
    assert!(
        out.stderr.contains("unknown field \"bogus_field\" ignored")
            && out.stderr.contains("namespace_options.netwrk"),
        "{}",
        out.describe()
    );
    let typo = out.stdout.trim().to_owned();
    let status = json(&cri.ok(&["inspectp", &typo]));
    // No uid in the file: berthctl made one, as crictl does.
    assert_eq!(
        status["status"]["metadata"]["uid"].as_str().unwrap().len(),
        36,
        "{status}"
    );
    assert_eq!(
        status["status"]["linux"]["namespaces"]["options"]["network"],
        "NODE"
    );
    // Bad configs fail before any call.
    let bad = cri.write_config(
        "pod-bad.json",
        r#"{"metadata": {"name": "b", "namespace": "n"}, "linux": {"security_context": {"namespace_options": {"network": "HOST"}}}}"#,
    );
    let out = cri.berthctl(&["runp", &bad]);
    assert!(
        fatal(&out)
            .contains("linux.security_context.namespace_options.network: unknown value \"HOST\""),
        "{}",
        out.describe()
    );
    let out = cri.berthctl(&["runp", &cri.write_config("pod-nometa.json", "{}")]);
    assert!(
        fatal(&out).contains("metadata is not set"),
        "{}",
        out.describe()
    );

    // The pod of the usual config: snake_case, enum numbers, labels.
    let id = cri.runp("web");
    let out = cri.ok(&["pods"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "POD",
            "ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME"
        ]
    );
    // Newest first.
    assert!(lines[1].starts_with(&id[..13]), "{}", out.stdout);
    assert!(lines[1].contains("Ready"));
    assert!(lines[1].contains(" web "));
    assert!(lines[1].contains(" berthctl-test "));
    assert!(lines[1].contains("(default)"));
    assert_eq!(lines.len(), 3);

    let q = |args: &[&str]| -> Vec<String> {
        cri.ok(args)
            .stdout
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(&["pods", "-q", "--name", "^we"]), vec![id.clone()]);
    assert_eq!(
        q(&["pods", "-q", "--namespace", "^ns$"]),
        vec![typo.clone()]
    );
    assert_eq!(q(&["pods", "-q", "--label", "app=web"]), vec![id.clone()]);
    assert_eq!(q(&["pods", "-q", "--last", "1"]), vec![id.clone()]);
    assert_eq!(q(&["pods", "-q", "--id", &id[..12]]), vec![id.clone()]);
    assert!(q(&["pods", "-q", "--label", "app=nope"]).is_empty());
    assert_eq!(q(&["pods", "-q"]).len(), 2);
    let list = json(&cri.ok(&["pods", "-o", "json", "--name", "web"]));
    let item = &list["items"][0];
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["state"], "SANDBOX_READY");
    assert_eq!(item["metadata"]["attempt"], 1);
    assert_eq!(item["labels"]["suite"], "berthctl");
    let out = cri.ok(&["pods", "-v", "--name", "web"]);
    assert!(
        out.stdout.contains(&format!("ID: {id}\n")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\tapp -> web\n"));

    // inspectp: crictl's {"info": ..., "status": ...}, times as RFC 3339.
    let status = json(&cri.ok(&["inspectp", &id]));
    let s = &status["status"];
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["state"], "SANDBOX_READY");
    assert_eq!(s["metadata"]["name"], "web");
    assert_eq!(s["metadata"]["uid"], "uid-web");
    assert_eq!(s["annotations"]["berth.test/annotation"], "yes");
    assert!(s["createdAt"].as_str().unwrap().contains('T'), "{s}");
    assert_eq!(status["info"]["config"]["metadata"]["name"], "web");
    assert!(status["info"]["pid"].as_u64().unwrap() > 1);
    // A unique prefix is enough for containerd.
    let by_prefix = json(&cri.ok(&["inspectp", &id[..10]]));
    assert_eq!(by_prefix["status"]["id"], id.as_str());
    let table = cri.ok(&["inspectp", "-o", "table", &id]).stdout;
    assert!(table.contains("Status: SANDBOX_READY"), "{table}");
    assert!(table.contains("Name: web"));
    let two = json(&cri.ok(&["inspectp", "-q", &id, &typo]));
    assert_eq!(two.as_array().unwrap().len(), 2);

    let out = cri.ok(&["pods", "--state", "ready", "-q"]);
    assert_eq!(out.stdout.lines().count(), 2);

    // rmp refuses a ready pod unless forced.
    let out = cri.berthctl(&["rmp", &id]);
    assert!(
        fatal(&out).contains(&format!(
            "pod sandbox \"{id}\" is running, please stop it first"
        )),
        "{}",
        out.describe()
    );
    let out = cri.ok(&["stopp", &id]);
    assert_eq!(out.stdout.trim(), format!("Stopped sandbox {id}"));
    assert_eq!(q(&["pods", "-q", "--state", "notready"]), vec![id.clone()]);
    assert!(cri.ok(&["pods"]).stdout.contains("NotReady"));
    let out = cri.ok(&["rmp", &id]);
    assert_eq!(out.stdout.trim(), format!("Removed sandbox {id}"));
    let out = cri.ok(&["rmp", "-f", &typo]);
    assert!(out.stdout.contains(&format!("Stopped sandbox {typo}")));
    assert!(out.stdout.contains(&format!("Removed sandbox {typo}")));
    assert!(q(&["pods", "-q"]).is_empty());
    let out = cri.ok(&["rmp", "-a"]);
    assert!(
        out.stderr.contains("No pods to remove"),
        "{}",
        out.describe()
    );
    cri.assert_clean();
}

#[test]
fn container_lifecycle_logs_exec() {
    let cri = Cri::start();
    let pod = cri.runp("app");
    let cfg = cri.container_config(
        "worker",
        "echo to-stdout; echo to-stderr >&2; printf 'no-newline-then-'; echo joined; \
         head -c 40000 /dev/zero | tr '\\0' x; echo; exec sleep 600",
    );
    let pod_cfg = cri.pod_config("app");
    let out = cri.ok(&["create", &pod, &cfg, &pod_cfg]);
    // The image is there: no pull.
    assert!(!out.stderr.contains("Pulling"), "{}", out.describe());
    let id = out.stdout.trim().to_owned();

    let ps = cri.ok(&["ps", "-a"]).stdout;
    assert!(ps.contains("Created"), "{ps}");
    assert!(
        cri.ok(&["ps", "-q"]).stdout.trim().is_empty(),
        "only running ones by default"
    );
    assert_eq!(cri.ok(&["start", &id]).stdout.trim(), id);
    cri.wait_container_state(&id, "CONTAINER_RUNNING", Duration::from_secs(10));

    let out = cri.ok(&["ps"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "POD",
            "ID",
            "POD",
            "NAMESPACE"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], &id[..13]);
    assert_eq!(row[1], BUSYBOX);
    assert!(lines[1].contains(" Running "), "{}", lines[1]);
    assert!(lines[1].contains(" worker "));
    assert!(lines[1].contains(&pod[..13]));
    assert!(
        lines[1].contains(" owner "),
        "POD comes from the pod-name label"
    );
    assert!(
        lines[1].trim_end().ends_with("unknown"),
        "no namespace label"
    );
    assert_eq!(
        cri.ok(&["ps", "-q", "--pod", &pod, "--name", "work"])
            .stdout
            .trim(),
        id
    );
    assert!(cri
        .ok(&["ps", "-q", "--state", "exited"])
        .stdout
        .trim()
        .is_empty());
    let list = json(&cri.ok(&["ps", "-o", "json"]));
    assert_eq!(list["containers"][0]["state"], "CONTAINER_RUNNING");
    assert_eq!(list["containers"][0]["podSandboxId"], pod.as_str());

    // inspect: status with RFC 3339 times, verbose info.
    let status = json(&cri.ok(&["inspect", &id]));
    let s = &status["status"];
    assert_eq!(s["state"], "CONTAINER_RUNNING");
    assert_eq!(s["metadata"]["name"], "worker");
    let log_path = s["logPath"].as_str().unwrap().to_owned();
    assert_eq!(log_path, cri.logs.join("worker.log").display().to_string());
    assert!(s["startedAt"].as_str().unwrap() > "2000", "{s}");
    assert_eq!(s["finishedAt"], "0001-01-01T00:00:00Z");
    assert!(status["info"]["pid"].as_u64().unwrap() > 1, "{status}");

    // logs: stdout to stdout, stderr to stderr, partial writes joined.
    let wait_logs = Instant::now() + Duration::from_secs(10);
    let long_line = format!("{}\n", "x".repeat(40000));
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("xxx\n")
    {
        assert!(Instant::now() < wait_logs, "no logs in {log_path}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // containerd splits lines longer than 16 KiB into partial records.
    let file = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        file.lines().any(|l| l.contains(" stdout P ")),
        "no partial records in {log_path}"
    );
    let out = cri.ok(&["logs", &id]);
    assert_eq!(
        out.stdout,
        format!("to-stdout\nno-newline-then-joined\n{long_line}"),
        "partial records are joined"
    );
    assert_eq!(out.stderr, "to-stderr\n");
    // The last whole line: the long one (stdout and stderr are copied by
    // separate readers, so the stderr line may also come last).
    let out = cri.ok(&["logs", "--tail", "1", &id]);
    assert_eq!(
        out.stdout.lines().count() + out.stderr.lines().count(),
        1,
        "{}",
        out.describe()
    );
    assert!(
        out.stdout == long_line || out.stderr == "to-stderr\n",
        "{}",
        out.describe()
    );
    let out = cri.ok(&["logs", "-t", &id]);
    let first = out.stdout.lines().next().unwrap();
    let (ts, msg) = first.split_once(' ').unwrap();
    assert_eq!(msg, "to-stdout");
    assert!(ts.len() >= 30 && ts.contains('T'), "{first}");

    // exec --sync: output on the right streams, the exit code propagated.
    let out = cri.berthctl(&[
        "exec",
        "-s",
        &id,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    let out = cri.ok(&["exec", "--sync", "--timeout", "5", &id, "cat", "/etc/group"]);
    assert!(out.stdout.starts_with("root:x:0:"), "{}", out.describe());
    // Without -s the command streams (containerd's streaming server,
    // WebSocket): output on the right streams, the exit code passed on.
    let out = cri.berthctl(&["exec", &id, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    assert_eq!(out.stdout, "out\n", "{}", out.describe());
    assert_eq!(out.stderr, "err\n", "{}", out.describe());
    let out = cri.ok(&["exec", &id, "cat", "/etc/group"]);
    assert!(out.stdout.starts_with("root:x:0:"), "{}", out.describe());

    // port-forward: a listener in the (host network) pod, reached through
    // a local port.
    let remote = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    cri.run_container(
        &pod,
        "app",
        "listener",
        &format!("while true; do echo forwarded-hello | nc -l -p {remote}; done"),
    );
    let mut pf = cri
        .berthctl_cmd(&["port-forward", &pod, &format!("0:{remote}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    // Kept open: berthctl goes on reporting connections there.
    let mut pf_out = std::io::BufReader::new(pf.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut pf_out, &mut first).unwrap();
    let local: u16 = first
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("port-forward said {first:?}"));
    let mut got = String::new();
    for _ in 0..50 {
        got.clear();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", local)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = std::io::Read::read_to_string(&mut s, &mut got);
            if got.contains("forwarded-hello") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = pf.kill();
    let mut pf_err = String::new();
    let _ = std::io::Read::read_to_string(&mut pf.stderr.take().unwrap(), &mut pf_err);
    let _ = pf.wait();
    drop(pf_out);
    assert!(
        got.contains("forwarded-hello"),
        "through port-forward: {got:?}; berthctl said: {pf_err}"
    );

    // stats and update.
    let out = cri.ok(&["stats", "-s", "1"]);
    assert!(out.stdout.starts_with("CONTAINER"), "{}", out.describe());
    let stats = json(&cri.ok(&["stats", "-o", "json", "--id", &id]));
    assert_eq!(stats["stats"][0]["attributes"]["id"], id.as_str());
    let out = cri.ok(&["statsp", "-o", "json"]);
    assert!(out.stdout.contains(&pod), "{}", out.describe());
    assert_eq!(
        cri.ok(&["update", "--memory", "134217728", &id])
            .stdout
            .trim(),
        id
    );
    let memory = cgroup_dirs(&format!("{}/{id}", cri.cgroup_parent))
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("memory.limit_in_bytes")).ok());
    if let Some(limit) = memory {
        assert_eq!(limit.trim(), "134217728");
    }

    // rm refuses a running container; stop, then rm (which removes its log).
    let out = cri.berthctl(&["rm", &id]);
    assert!(
        fatal(&out).contains("is running, please stop it first"),
        "{}",
        out.describe()
    );
    assert_eq!(cri.ok(&["stop", "-t", "1", &id]).stdout.trim(), id);
    let status = json(&cri.ok(&["inspect", &id]));
    assert_eq!(status["status"]["state"], "CONTAINER_EXITED");
    // sleep is not the pid namespace's init (the pod's sandbox is): SIGTERM
    // ends it (143); a runtime may also have had to SIGKILL it (137).
    let code = status["status"]["exitCode"].as_i64().unwrap();
    assert!(code == 143 || code == 137, "{status}");
    assert_ne!(status["status"]["finishedAt"], "0001-01-01T00:00:00Z");
    let out = cri.ok(&["inspect", "-o", "table", &id]);
    assert!(
        out.stdout.contains(&format!("Exit Code: {code}")),
        "{}",
        out.stdout
    );
    assert!(cri.ok(&["ps", "-a"]).stdout.contains("Exited"));
    assert_eq!(cri.ok(&["rm", &id]).stdout.trim(), id);
    assert!(
        !std::path::Path::new(&log_path).exists(),
        "rm removes the log"
    );

    // rm -f stops first.
    let second = cri.run_container(&pod, "app", "second", "exec sleep 600");
    cri.wait_container_state(&second, "CONTAINER_RUNNING", Duration::from_secs(10));
    let out = cri.ok(&["rm", "-f", &second]);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [second.as_str(), &second]
    );

    cri.ok(&["stopp", &pod]);
    cri.ok(&["rmp", &pod]);
    cri.assert_clean();
}

#[test]
fn logs_follow_rotation_and_exit() {
    let cri = Cri::start();
    let pod = cri.runp("follow");
    let id = cri.run_container(
        &pod,
        "follow",
        "ticker",
        "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo tick $i; sleep 0.1; done; echo done >&2",
    );
    // Following from the start: every line, then the end of the container
    // ends berthctl.
    let mut follower = cri
        .berthctl_cmd(&["logs", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Rotate the log while the container writes: rename the file and have
    // the runtime reopen it, as kubelet does.
    std::thread::sleep(Duration::from_millis(1500));
    let log_path = cri.logs.join("ticker.log");
    std::fs::rename(&log_path, log_path.with_extension("log.1")).unwrap();
    let out = cri.berthctl(&["logs", "--reopen", "--tail", "0", &id]);
    assert!(out.success(), "{}", out.describe());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    while matches!(follower.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(follower.try_wait(), Ok(None)) {
        let _ = follower.kill();
        panic!("logs -f did not end after the container exited");
    }
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected: String = (1..=40).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(stdout, expected, "every line, across the rotation");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "done\n");
    assert_eq!(cri.container_state(&id), "CONTAINER_EXITED");
    // The rotated file is left to whoever rotated it.
    let _ = std::fs::remove_file(log_path.with_extension("log.1"));

    // `run`: a pod and a container in one go.
    let cfg = cri.container_config("oneshot", "echo from-run; exec sleep 600");
    let pod_cfg = cri.pod_config("runpod");
    let out = cri.ok(&["run", &cfg, &pod_cfg]);
    let run_id = out.stdout.trim().to_owned();
    assert_eq!(run_id.len(), 64, "{}", out.describe());
    cri.wait_container_state(&run_id, "CONTAINER_RUNNING", Duration::from_secs(10));
    let status = json(&cri.ok(&["inspect", &run_id]));
    assert_eq!(status["status"]["metadata"]["name"], "oneshot");

    // create pulls an image the runtime lacks (and, with no registry here,
    // fails saying so); --no-pull skips the pull.
    let missing = cri.write_config(
        "ctr-missing.json",
        r#"{"metadata": {"name": "m"}, "image": {"image": "127.0.0.1:1/none/missing:1"}}"#,
    );
    let out = cri.berthctl_timeout(&["create", &pod, &missing, &pod_cfg], SLOW);
    assert!(
        out.stderr
            .contains("Pulling container image: 127.0.0.1:1/none/missing:1"),
        "{}",
        out.describe()
    );
    assert!(fatal(&out).contains("pulling image"), "{}", out.describe());
    let out = cri.berthctl(&["create", "--no-pull", &pod, &missing, &pod_cfg]);
    assert!(!out.stderr.contains("Pulling"), "{}", out.describe());
    assert!(
        fatal(&out).contains("rpc error: code = "),
        "{}",
        out.describe()
    );

    cri.ok(&["rm", "-a", "-f"]);
    cri.ok(&["rmp", "-a", "-f"]);
    cri.assert_clean();
}

#[test]
fn errors_for_unknown_ids_and_unsupported_calls() {
    let cri = Cri::start();
    let cases: &[&[&str]] = &[
        &["inspect", "nosuchcontainer"],
        &["inspectp", "nosuchpod"],
        &["start", "nosuchcontainer"],
        &["stop", "nosuchcontainer"],
        &["rm", "nosuchcontainer"],
        &["logs", "nosuchcontainer"],
        &["exec", "-s", "nosuchcontainer", "true"],
    ];
    for args in cases {
        let out = cri.berthctl(args);
        let line = fatal(&out);
        assert!(
            line.contains("rpc error: code = NotFound desc = "),
            "{}",
            out.describe()
        );
        assert!(out.stdout.is_empty(), "{}", out.describe());
    }
    // containerd 1.6 has no events, checkpoints or runtime config: the
    // server's answer is shown.
    for args in [
        &["events"][..],
        &["checkpoint", "--export", "/tmp/x.tar", "nosuchcontainer"],
        &["runtime-config"],
    ] {
        let out = cri.berthctl(args);
        assert!(
            fatal(&out).contains("rpc error: code = Unimplemented desc = "),
            "{}",
            out.describe()
        );
    }
    cri.assert_clean();
}

#[test]
fn unreachable_endpoint() {
    let out = run_in(
        &std::env::temp_dir(),
        std::process::Command::new(BERTHCTL)
            .env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .args(["-r", "unix:///nonexistent/berthctl.sock", "-t", "2s", "ps"]),
        QUICK,
    );
    let line = fatal(&out);
    assert!(
        line.contains("unix:///nonexistent/berthctl.sock")
            && line.contains("dial unix /nonexistent/berthctl.sock: No such file or directory"),
        "{}",
        out.describe()
    );
    let out = run_in(
        &std::env::temp_dir(),
        std::process::Command::new(BERTHCTL).args(["-r", "http://x", "version"]),
        QUICK,
    );
    assert!(
        fatal(&out).contains("protocol not supported"),
        "{}",
        out.describe()
    );
}

/// The harness itself: after containerd dies with a pod and a container
/// running, dropping it still leaves nothing behind.
#[test]
fn cleanup_after_containerd_dies() {
    let mut cri = Cri::start();
    let pod = cri.runp("crash");
    let id = cri.run_container(&pod, "crash", "survivor", "exec sleep 600");
    cri.wait_container_state(&id, "CONTAINER_RUNNING", Duration::from_secs(10));
    let socket = cri.socket.display().to_string();
    let dir = cri.dir.path.clone();
    let cgroup = cri.cgroup_parent.clone();
    assert!(
        !processes_mentioning(&socket).is_empty(),
        "a shim serves the pod"
    );
    assert!(pids_under(&cgroup).len() >= 2, "sandbox and container run");
    cri.kill_daemon();
    drop(cri);
    assert!(processes_mentioning(&socket).is_empty(), "shims left");
    assert!(cgroup_dirs(&cgroup).is_empty(), "cgroups left");
    assert!(mounts_under(&dir).is_empty(), "mounts left");
    assert!(!dir.exists(), "{} left", dir.display());
}
