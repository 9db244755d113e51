//! containerd 1.6 (Debian's `containerd` and `ctr`) using berth's shim,
//! `containerd-shim-berth-v2`, as the runtime `io.containerd.berth.v2`:
//! containers run inside the shim through berth-runtime (no runc). Real
//! kernel, real daemon, an OCI image built by the test itself from
//! /bin/busybox. Needs root.
//!
//! Each test owns a private containerd (the testkit's harness,
//! `crates/testkit/src/containerd/mod.rs`) whose PATH starts with the
//! directory of the shim cargo built, so that containerd finds it there.
//! Its guard tears down whatever the test left: tasks, shims, the shim's
//! runtime state (/run/containerd/berth/<namespace>), cgroups, mounts.
//!
//! Run: `cargo test -p berth-shim --test containerd -- --test-threads=1`

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::containerd::*;
use berth_testkit::prelude::*;

/// The shim cargo built for this test run.
const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-berth-v2");
/// The runtime name containerd maps to `containerd-shim-berth-v2`.
const RUNTIME: &str = "io.containerd.berth.v2";
/// Where the shim keeps the in-process runtime's state: `<this>/<ns>/<id>`.
const STATE_PARENT: &str = "/run/containerd/berth";
/// The annotation that puts containers in one pod (one shim).
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A private containerd that finds berth's shim first on its PATH, with a
/// CRI runtime entry for it (the CRI plugin itself is disabled here: the
/// entry must not stop containerd from starting).
fn start_containerd() -> Containerd {
    let shim_dir = Path::new(SHIM)
        .parent()
        .expect("the shim binary has a directory")
        .to_path_buf();
    Containerd::start(Setup {
        prefix: "berth-shim",
        tools: Vec::new(),
        extra_config: format!(
            r#"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.berth]
  runtime_type = "{RUNTIME}"
"#
        ),
        path_prepend: vec![shim_dir],
        runtime_state_parent: PathBuf::from(STATE_PARENT),
        // The shim's state is plain files; Drop kills the container's
        // processes (by cgroup) and removes the directory.
        delete_leftover: None,
    })
}

/// The shim daemons serving this containerd: processes running
/// containerd-shim-berth-v2 whose command line names its socket.
fn shim_processes(ctd: &Containerd) -> Vec<(i32, String)> {
    processes_mentioning(&ctd.socket.display().to_string())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-berth-v2"))
        .collect()
}

/// The socket of the shim serving group `group` (the container id, or the
/// pod's sandbox id) of this containerd.
fn shim_socket(ctd: &Containerd, group: &str) -> PathBuf {
    berth_shim::start::socket_path(&ctd.socket.display().to_string(), &ctd.namespace, group)
}

/// Whether process `pid` exists and is not a zombie (a shim orphaned by
/// containerd's death is reaped by whoever adopts it, not at once).
fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x"))
}

/// After the removal of every container of the test: containerd forgot
/// them; their state, cgroups and shim sockets are gone; no shim runs.
fn assert_all_gone(ctd: &Containerd, ids: &[&str], groups: &[&str]) {
    for id in ids {
        ctd.assert_container_gone(id);
        assert!(
            !ctd.bundle(id).exists(),
            "containerd left the bundle {} behind",
            ctd.bundle(id).display()
        );
    }
    // containerd asks the shim to shut down after the last delete; it
    // exits once the reply is out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut shims = shim_processes(ctd);
    while !shims.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        shims = shim_processes(ctd);
    }
    assert!(
        shims.is_empty(),
        "shim process(es) still running 10 s after the last container was deleted: {shims:?}\n{}",
        ctd.diagnostics()
    );
    for group in groups {
        let socket = shim_socket(ctd, group);
        assert!(
            !socket.exists(),
            "the shim left its socket {} behind",
            socket.display()
        );
    }
    let root = ctd.runtime_root();
    let left: Vec<_> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "state left in {}: {left:?}",
        root.display()
    );
}

/// `ctr events` running in the background, its output in a file.
struct Events {
    child: Child,
    out: PathBuf,
}

impl Events {
    fn start(ctd: &Containerd) -> Events {
        let out = ctd.dir.join(unique("events"));
        let child = ctd
            .ctr(&["events"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ctr events");
        // ctr subscribes asynchronously; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        Events { child, out }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits up to `timeout` for a line with `topic` and every one of
    /// `needles`; returns it.
    fn wait_for(&self, topic: &str, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .text()
                .lines()
                .find(|l| l.contains(topic) && needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned);
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bind mount of a fresh host directory at /out in the container, and the
/// file `ticks` in it.
fn ticks_mount(ctd: &Containerd) -> (String, PathBuf) {
    let out_dir = ctd.dir.join(unique("out"));
    std::fs::create_dir_all(&out_dir).unwrap();
    (
        format!(
            "type=bind,src={},dst=/out,options=rbind:rw",
            out_dir.display()
        ),
        out_dir.join("ticks"),
    )
}

/// A shell loop that appends a line to /out/ticks every 0.1 s: the file
/// grows exactly while the container runs.
const TICK_LOOP: &str = "while :; do echo tick >> /out/ticks; sleep 0.1; done";

// ===========================================================================

/// `ctr run --rm` in the foreground through the berth shim: the container's
/// output reaches ctr, its exit status becomes ctr's, and afterwards the
/// container, its cgroup, its state and the shim are gone.
#[test]
fn run_rm_output_exit_code_and_cleanup() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();

    let id = unique("run");
    let fifo = ctd.fifo_dir();
    let started = Instant::now();
    let out = ctd.run(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--fifo-dir",
            &fifo,
            IMAGE_REF,
            &id,
            "sh",
            "-c",
            "echo hello-from-berth-shim; exit 7",
        ],
        SLOW,
    );
    assert!(
        out.stdout.trim() == "hello-from-berth-shim" && out.code == Some(7),
        "expected exactly `hello-from-berth-shim` and exit code 7 from {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    eprintln!(
        "ctr run --rm through the berth shim: {:?}",
        started.elapsed()
    );
    assert_all_gone(&ctd, &[&id], &[&id]);
}

/// A detached task: exec, ps, pause (the container really stops), resume,
/// metrics from its cgroup, SIGKILL (exit status 137), delete.
#[test]
fn detached_exec_ps_pause_resume_metrics_kill_delete() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();
    let events = Events::start(&ctd);

    let id = unique("detached");
    let cgroup = ctd.cgroup_of(&id);
    let fifo = ctd.fifo_dir();
    let (mount, ticks) = ticks_mount(&ctd);
    ctd.run_ok(
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--fifo-dir",
            &fifo,
            "--mount",
            &mount,
            IMAGE_REF,
            &id,
            "sh",
            "-c",
            TICK_LOOP,
        ],
        SLOW,
    );
    assert_eq!(
        ctd.task_status(&id).as_deref(),
        Some("RUNNING"),
        "task {id} should be running after ctr run -d\n{}",
        ctd.diagnostics()
    );
    let init_pid = ctd
        .task_pid(&id)
        .unwrap_or_else(|| panic!("no PID for {id} in ctr tasks ls\n{}", ctd.diagnostics()));
    assert!(
        cgroup_pids(&cgroup).contains(&init_pid),
        "init pid {init_pid} is not in the container's cgroup {cgroup} ({:?})",
        cgroup_pids(&cgroup)
    );
    let n = wait_lines_above(&ticks, 2, Duration::from_secs(10));
    assert!(
        n > 2,
        "the container wrote {n} line(s) to {} in 10 s while RUNNING\n{}",
        ticks.display(),
        ctd.diagnostics()
    );

    // One shim, at the address containerd recorded in the bundle, with the
    // runtime state where the shim keeps it.
    let shims = shim_processes(&ctd);
    assert_eq!(shims.len(), 1, "shim processes: {shims:?}");
    assert!(
        shims[0].1.starts_with(&format!("{SHIM} ")),
        "containerd should run the shim cargo built, {SHIM}, found first on its PATH: {shims:?}"
    );
    let address = std::fs::read_to_string(ctd.bundle(&id).join("address")).unwrap_or_default();
    assert_eq!(
        address.trim(),
        format!("unix://{}", shim_socket(&ctd, &id).display()),
        "the bundle's address file"
    );
    let state = ctd.runtime_root().join(&id);
    assert!(
        state.is_dir(),
        "no runtime state at {} while the task runs",
        state.display()
    );

    // Exec.
    let out = ctd.run(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "--fifo-dir",
            &fifo,
            &id,
            "sh",
            "-c",
            "echo in-exec; exit 3",
        ],
        SLOW,
    );
    assert!(
        out.stdout.trim() == "in-exec" && out.code == Some(3),
        "expected exactly `in-exec` and exit code 3 from {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    assert_eq!(
        ctd.task_status(&id).as_deref(),
        Some("RUNNING"),
        "the task should survive the exec\n{}",
        ctd.diagnostics()
    );

    // ps.
    let ps = ctd.run_ok(&["tasks", "ps", &id], QUICK);
    let rows = parse_ctr_ps(&ps.stdout);
    assert!(
        rows.iter().any(|(pid, _)| *pid == init_pid),
        "ctr tasks ps does not list the init pid {init_pid}: {}\n{}",
        ps.describe(),
        ctd.diagnostics()
    );
    let in_cgroup = cgroup_pids(&cgroup);
    assert!(
        rows.iter()
            .all(|(pid, _)| in_cgroup.contains(pid) || !pid_alive(*pid)),
        "ctr tasks ps lists pids outside the container's cgroup {in_cgroup:?}: {}",
        ps.describe()
    );

    // Pause.
    ctd.run_ok(&["tasks", "pause", &id], QUICK);
    assert_eq!(
        ctd.task_status(&id).as_deref(),
        Some("PAUSED"),
        "ctr tasks ls after ctr tasks pause\n{}",
        ctd.diagnostics()
    );
    assert_eq!(
        freezer_state(&cgroup).as_deref(),
        Some("FROZEN"),
        "the freezer of cgroup {cgroup} after ctr tasks pause (dirs {:?})",
        cgroup_dirs(&cgroup)
    );
    let before = line_count(&ticks);
    std::thread::sleep(Duration::from_millis(1500));
    let after = line_count(&ticks);
    assert_eq!(
        before,
        after,
        "the container kept writing to {} while PAUSED",
        ticks.display()
    );

    // Resume.
    ctd.run_ok(&["tasks", "resume", &id], QUICK);
    assert_eq!(
        ctd.task_status(&id).as_deref(),
        Some("RUNNING"),
        "ctr tasks ls after ctr tasks resume\n{}",
        ctd.diagnostics()
    );
    assert_eq!(
        freezer_state(&cgroup).as_deref(),
        Some("THAWED"),
        "the freezer of cgroup {cgroup} after ctr tasks resume"
    );
    let n = wait_lines_above(&ticks, after + 2, Duration::from_secs(10));
    assert!(
        n > after + 2,
        "the container did not resume writing to {} ({after} lines when paused, {n} 10 s after resume)\n{}",
        ticks.display(),
        ctd.diagnostics()
    );

    // Metrics, read by the shim from the cgroup.
    let metrics = ctd.run_ok(&["tasks", "metrics", &id], QUICK);
    let memory = ctr_metric(&metrics.stdout, "memory.usage_in_bytes");
    let pids = ctr_metric(&metrics.stdout, "pids.current");
    assert!(
        memory.is_some_and(|m| m > 0) && pids.is_some_and(|p| p >= 1),
        "expected memory.usage_in_bytes > 0 and pids.current >= 1 from {}\n{}",
        metrics.describe(),
        ctd.diagnostics()
    );

    // SIGKILL: STOPPED, exit status 137.
    ctd.run_ok(&["tasks", "kill", "-s", "SIGKILL", &id], QUICK);
    ctd.wait_task_status(&id, "STOPPED", Duration::from_secs(20), "SIGKILL");
    let exit = events.wait_for(
        "/tasks/exit",
        &[&format!("\"container_id\":\"{id}\""), "\"exit_status\":137"],
        Duration::from_secs(10),
    );
    assert!(
        exit.is_some(),
        "no /tasks/exit event with exit_status 137 for {id}; ctr events printed:\n{}\n{}",
        events.text(),
        ctd.diagnostics()
    );
    assert!(!pid_alive(init_pid), "init pid {init_pid} survived SIGKILL");

    ctd.run_ok(&["tasks", "delete", &id], QUICK);
    ctd.run_ok(&["containers", "delete", &id], QUICK);
    assert_all_gone(&ctd, &[&id], &[&id]);
}

/// `ctr run --rm -t`: the container's stdio is a terminal (ctr itself runs
/// on one made by `script`).
#[test]
fn run_tty() {
    require_root();
    require_tools(&[("script", &[], "util-linux")]);
    let ctd = start_containerd();
    ctd.import_image();

    let id = unique("tty");
    ctd.assert_run_tty(RUNTIME, IMAGE_REF, &id);
    assert_all_gone(&ctd, &[&id], &[&id]);
}

/// Two containers of one pod (same sandbox-id annotation) share one shim;
/// it outlives the first container's deletion and exits after the last.
#[test]
fn pod_containers_share_one_shim() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();

    let pod = unique("pod");
    let annotation = format!("{SANDBOX_ID}={pod}");
    let fifo = ctd.fifo_dir();
    let ids = [unique("first"), unique("second")];
    for id in &ids {
        ctd.run_ok(
            &[
                "run",
                "-d",
                "--runtime",
                RUNTIME,
                "--fifo-dir",
                &fifo,
                "--annotation",
                &annotation,
                IMAGE_REF,
                id,
                "sleep",
                "1000",
            ],
            SLOW,
        );
        assert_eq!(
            ctd.task_status(id).as_deref(),
            Some("RUNNING"),
            "task {id} after ctr run -d\n{}",
            ctd.diagnostics()
        );
    }
    let shims = shim_processes(&ctd);
    assert_eq!(
        shims.len(),
        1,
        "two containers of pod {pod} should share one shim: {shims:?}\n{}",
        ctd.diagnostics()
    );
    let shim_pid = shims[0].0;
    let want = format!("unix://{}", shim_socket(&ctd, &pod).display());
    for id in &ids {
        let address = std::fs::read_to_string(ctd.bundle(id).join("address")).unwrap_or_default();
        assert_eq!(address.trim(), want, "the address file of {id}'s bundle");
    }

    // The shim serves the second container: exec into it.
    let out = ctd.run(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "--fifo-dir",
            &fifo,
            &ids[1],
            "sh",
            "-c",
            "echo second-exec; exit 2",
        ],
        SLOW,
    );
    assert!(
        out.stdout.trim() == "second-exec" && out.code == Some(2),
        "expected `second-exec` and exit code 2 from {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );

    // Remove the first container: the shim stays for the second.
    ctd.run_ok(&["tasks", "kill", "-s", "SIGKILL", &ids[0]], QUICK);
    ctd.wait_task_status(&ids[0], "STOPPED", Duration::from_secs(20), "SIGKILL");
    ctd.run_ok(&["tasks", "delete", &ids[0]], QUICK);
    ctd.run_ok(&["containers", "delete", &ids[0]], QUICK);
    ctd.assert_container_gone(&ids[0]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pid_alive(shim_pid),
        "the pod's shim {shim_pid} exited with the first container while the second runs\n{}",
        ctd.diagnostics()
    );
    assert_eq!(
        ctd.task_status(&ids[1]).as_deref(),
        Some("RUNNING"),
        "the second container after the first one's deletion\n{}",
        ctd.diagnostics()
    );
    ctd.run_ok(&["tasks", "ps", &ids[1]], QUICK);

    // Remove the second: the shim goes.
    ctd.run_ok(&["tasks", "kill", "-s", "SIGKILL", &ids[1]], QUICK);
    ctd.wait_task_status(&ids[1], "STOPPED", Duration::from_secs(20), "SIGKILL");
    ctd.run_ok(&["tasks", "delete", &ids[1]], QUICK);
    ctd.run_ok(&["containers", "delete", &ids[1]], QUICK);
    assert_all_gone(&ctd, &[&ids[0], &ids[1]], &[&pod]);
}

/// containerd is SIGKILLed while a berth task runs and started again: the
/// shim and the container lived on, containerd reconnects to the shim, and
/// exec, kill and delete work through it.
#[test]
fn containerd_restart_reconnects_to_running_shim() {
    require_root();
    let mut ctd = start_containerd();
    ctd.import_image();

    let id = unique("survivor");
    let fifo = ctd.fifo_dir();
    let (mount, ticks) = ticks_mount(&ctd);
    ctd.run_ok(
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--fifo-dir",
            &fifo,
            "--mount",
            &mount,
            IMAGE_REF,
            &id,
            "sh",
            "-c",
            TICK_LOOP,
        ],
        SLOW,
    );
    let init_pid = ctd
        .task_pid(&id)
        .unwrap_or_else(|| panic!("no PID for {id} in ctr tasks ls\n{}", ctd.diagnostics()));
    let shims = shim_processes(&ctd);
    assert_eq!(shims.len(), 1, "shim processes: {shims:?}");
    let shim_pid = shims[0].0;

    ctd.kill_daemon();
    // Without containerd the container keeps running under its shim.
    let before = line_count(&ticks);
    let n = wait_lines_above(&ticks, before + 3, Duration::from_secs(10));
    assert!(
        n > before + 3,
        "the container stopped writing to {} once containerd was killed\n{}",
        ticks.display(),
        ctd.diagnostics()
    );
    assert!(
        pid_alive(shim_pid),
        "the shim {shim_pid} died with containerd\n{}",
        ctd.diagnostics()
    );

    ctd.restart_daemon();
    assert_eq!(
        ctd.task_status(&id).as_deref(),
        Some("RUNNING"),
        "task {id} after containerd's restart\n{}",
        ctd.diagnostics()
    );
    assert_eq!(
        ctd.task_pid(&id),
        Some(init_pid),
        "the init pid after containerd's restart"
    );
    let out = ctd.run(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "after-restart",
            "--fifo-dir",
            &fifo,
            &id,
            "sh",
            "-c",
            "echo reconnected; exit 5",
        ],
        SLOW,
    );
    if !(out.stdout.trim() == "reconnected" && out.code == Some(5)) {
        // ctr's deferred delete of the exec waits for the output it copies
        // only if the exec's status and its deletion succeed (containerd's
        // client, process.Delete): whether a second delete still finds the
        // exec tells if the first one failed (seen once in CI, not since).
        let again = ctd.run(
            &["tasks", "delete", "--exec-id", "after-restart", &id],
            QUICK,
        );
        panic!(
            "expected `reconnected` and exit code 5 from {}\nthe exec deleted again: {}\n{}",
            out.describe(),
            again.describe(),
            ctd.diagnostics()
        );
    }

    ctd.run_ok(&["tasks", "kill", "-s", "SIGKILL", &id], QUICK);
    ctd.wait_task_status(&id, "STOPPED", Duration::from_secs(20), "SIGKILL");
    assert!(!pid_alive(init_pid), "init pid {init_pid} survived SIGKILL");
    ctd.run_ok(&["tasks", "delete", &id], QUICK);
    ctd.run_ok(&["containers", "delete", &id], QUICK);
    assert_all_gone(&ctd, &[&id], &[&id]);
    assert!(
        !pid_alive(shim_pid),
        "the shim {shim_pid} outlived its container"
    );
}
