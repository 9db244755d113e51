//! Runtime handlers: pods and containers through runc, crun and runsc
//! (driven by berth's shim), checked with the runtime's own `state`; an
//! unknown handler is refused. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

/// The state root berth's shim gives an OCI runtime binary (no `root` in
/// the handler's config): /run/containerd/<binary>/<namespace>.
fn runtime_root(binary: &str) -> String {
    format!("/run/containerd/{binary}/k8s.io")
}

/// `<binary> --root <root> state <id>` as JSON, None if it fails.
fn oci_state(binary: &str, id: &str) -> Option<serde_json::Value> {
    let (ok, out, _) = host(&[binary, "--root", &runtime_root(binary), "state", id]);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.is_file())
}

/// A pod (with a shared PID namespace when `pause`) and containers through
/// `handler`: state seen by the runtime binary, logs, exec, stop, removal.
async fn exercise(d: &Berthd, handler: &str, binary: &str, pause: bool) {
    d.pull_busybox().await;
    let mut pod_cfg = d.pod_config(&format!("via-{handler}"), false);
    if pause {
        pod_ns(&mut pod_cfg).pid = cri::NamespaceMode::Pod as i32;
    }
    let pod = d.run_pod(&pod_cfg, handler).await;
    let st = d.pod_status(&pod, false).await.status.unwrap();
    assert_eq!(st.runtime_handler, handler);
    if pause {
        let s = oci_state(binary, &pod)
            .unwrap_or_else(|| panic!("{binary} does not know the pause {pod}"));
        assert_eq!(s["status"], "running", "{s}");
    }
    let mut cfg = d.container_config(
        "c",
        &images().busybox,
        &["sh", "-c", "echo via-runtime; exec sleep 1000"],
    );
    sc(&mut cfg).run_as_user = Some(cri::Int64Value { value: 1000 });
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let s = oci_state(binary, &c).unwrap_or_else(|| {
        panic!(
            "{binary} --root {} state {c} failed: the container does not run through {binary}\n{}",
            runtime_root(binary),
            d.log_tail()
        )
    });
    assert_eq!(s["status"], "running", "{s}");
    assert!(
        s["bundle"]
            .as_str()
            .unwrap_or_default()
            .starts_with(d.dir.to_str().unwrap()),
        "{s}"
    );
    let log = PathBuf::from(&pod_cfg.log_directory).join("c/0.log");
    eventually("the log line", Duration::from_secs(10), || {
        cri_log_records(&log).iter().any(|r| r.2 == "via-runtime")
    })
    .await;
    assert_eq!(
        d.sh(&c, "id -u; hostname").await,
        format!("1000\nvia-{handler}")
    );
    let r = d.exec(&c, &["sh", "-c", "echo e >&2; exit 9"]).await;
    assert_eq!((r.stderr.as_slice(), r.exit_code), (&b"e\n"[..], 9));
    if pause {
        let ps = d.sh(&c, "ps -o args").await;
        assert!(ps.contains("/pause"), "{ps}");
    }
    let stats = d.container_stats(&c).await;
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    d.stop_container(&c, 1).await;
    let s = d.status(&c).await;
    // PID 1 of its own namespace, sleep ignores SIGTERM and is killed after
    // the grace period; under a pause it is an ordinary process and dies of
    // the SIGTERM.
    // gVisor's kernel delivers the SIGTERM to the container's init too.
    let want = if pause || handler == "runsc" {
        143
    } else {
        137
    };
    assert_eq!(
        (state_name(s.state), s.exit_code),
        ("exited", want),
        "{s:?}"
    );
    let quick = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("quick", &images().busybox, &["sh", "-c", "exit 5"]),
        )
        .await;
    let s = d
        .wait_container(&quick, Duration::from_secs(20), exited)
        .await;
    assert_eq!(s.exit_code, 5);
    d.remove_all_and_check().await;
    assert!(oci_state(binary, &c).is_none(), "{binary} still has {c}");
    assert!(
        oci_state(binary, &pod).is_none(),
        "{binary} still has {pod}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_handler() {
    let d = Berthd::start("runc");
    exercise(&d, "runc", "runc", false).await;
}

/// PID namespace mode POD through runc: the pause runs through runc too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_handler_with_a_pause() {
    let d = Berthd::start("runcpause");
    exercise(&d, "runc", "runc", true).await;
}

/// crun 1.8 refuses this machine's hybrid layout (cgroup2 at
/// /sys/fs/cgroup/unified holding no controller berth uses); berthd runs
/// here in a private mount namespace without that mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_handler() {
    if which("crun").is_none() {
        eprintln!("SKIPPED: crun is not installed");
        return;
    }
    let wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified || exit 1; fi; exec \"$0\" \"$@\"",
    ];
    let d = Berthd::start_wrapped("crun", "", &wrapper);
    exercise(&d, "crun", "crun", false).await;
}

/// gVisor, where it can run: first runsc alone on a minimal bundle, so
/// that a kernel or platform gVisor cannot use skips with the reason
/// instead of blaming berthd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_handler() {
    if which("runsc").is_none() {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    if let Err(why) = runsc_works_alone() {
        eprintln!("SKIPPED: runsc itself cannot run a container here: {why}");
        return;
    }
    // runsc 20221219 decides whether it runs in the host's network
    // namespace by the presence of /proc/sys/net/core/rmem_default, which
    // kernels since 6.x show in every namespace: its sandbox network then
    // refuses to start. gVisor's own loopback-only network avoids that.
    let d = Berthd::start_with(
        "runsc",
        "[runtimes.runsc]\nbinary_name = \"runsc\"\nruntime_args = [\"--network=none\"]\n",
    );
    exercise(&d, "runsc", "runsc", false).await;
}

/// Runs `echo ok` with runsc on a bundle holding only busybox.
fn runsc_works_alone() -> Result<(), String> {
    let dir = PathBuf::from(format!("/tmp/runsc-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = dir.join("bundle/rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    berth_testkit::rootfs::copy_executable(Path::new("/bin/busybox"), &rootfs.join("bin/busybox"))
        .map_err(|e| e.to_string())?;
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/busybox", "echo", "ok"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"]},
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"},
                                 {"type": "ipc"}, {"type": "uts"}]},
    });
    std::fs::write(dir.join("bundle/config.json"), config.to_string()).unwrap();
    let out = std::process::Command::new("timeout")
        .args(["60", "runsc", "--root"])
        .arg(dir.join("root"))
        .args(["--network", "none", "run", "--bundle"])
        .arg(dir.join("bundle"))
        .arg(format!("probe-{}", std::process::id()))
        .output()
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.trim() == "ok" {
        Ok(())
    } else {
        Err(format!(
            "runsc run: {} stdout {:?} stderr {:?}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_handler_is_invalid_argument() {
    let d = Berthd::start("nohandler");
    let cfg = d.pod_config("nohandler", false);
    let err = d.try_run_pod(&cfg, "kata-fc").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("kata-fc"), "{err:?}");
    // A handler configured in berth.toml is known by name.
    drop(d);
    let d = Berthd::start_with("namedhandler", "[runtimes.fast]\nbinary_name = \"runc\"\n");
    d.pull_busybox().await;
    let cfg = d.pod_config("named", false);
    let pod = d.run_pod(&cfg, "fast").await;
    let c = d.sleeper(&pod, &cfg, "c").await;
    assert!(
        oci_state("runc", &c).is_some(),
        "the fast handler drives runc"
    );
    let names: Vec<String> = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert!(names.contains(&"fast".to_string()), "{names:?}");
    d.remove_all_and_check().await;
}
