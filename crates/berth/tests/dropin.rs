//! berth as a drop-in replacement for runc, driven by real clients:
//! containerd 1.6 (`ctr run --runc-binary`, through containerd-shim-runc-v2)
//! and podman (`--runtime`, through conmon). Real kernel, real daemons,
//! an OCI image built by the test itself from /bin/busybox. Needs root.
//!
//! Each test owns a private world (temporary directory, containerd socket
//! and namespace, podman storage, cgroup parent) and a guard that tears it
//! down whatever happens: containers, daemons, shims, mounts, cgroups, and
//! the few global paths the clients create if the test created them.
//!
//! Run: `cargo test -p berth --test dropin -- --nocapture`

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_testkit::containerd::*;
use berth_testkit::prelude::*;

/// The berth binary cargo built for this test run.
const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The podman tests share /dev/shm/libpod_lock and /run/containers.
static PODMAN: Mutex<()> = Mutex::new(());

/// berth's state directory when no --root is given (podman gives none).
const BERTH_DEFAULT_ROOT: &str = "/run/berth";

// ===========================================================================
// containerd

/// A private containerd whose containers run through
/// containerd-shim-runc-v2 and `--runc-binary BERTH` (runc's state root,
/// /run/containerd/runc/<namespace>, is berth's `--root`).
fn start_containerd() -> Containerd {
    Containerd::start(Setup {
        prefix: "berth-dropin",
        tools: vec![("containerd-shim-runc-v2", &[], "containerd")],
        extra_config: String::new(),
        path_prepend: Vec::new(),
        runtime_state_parent: PathBuf::from("/run/containerd/runc"),
        delete_leftover: Some(berth_delete_force),
    })
}

/// `berth --root ROOT delete --force ID`: a container the shim left behind.
fn berth_delete_force(root: &Path, id: &str, scratch: &Path) {
    let mut cmd = Command::new(BERTH);
    cmd.arg("--root").arg(root).args(["delete", "--force", id]);
    run_in(scratch, &mut cmd, QUICK);
}

/// `ctr run --rm` in the foreground: the container's output reaches ctr and
/// its exit status becomes ctr's.
#[test]
fn containerd_run_rm_output_and_exit_code() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();

    let id = unique("run");
    let fifo = ctd.fifo_dir();
    let out = ctd.run(
        &[
            "run",
            "--rm",
            "--fifo-dir",
            &fifo,
            "--runc-binary",
            BERTH,
            IMAGE_REF,
            &id,
            "sh",
            "-c",
            "echo hello-from-berth; exit 7",
        ],
        SLOW,
    );
    assert!(
        out.stdout.contains("hello-from-berth") && out.code == Some(7),
        "expected output hello-from-berth and exit code 7 from {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    ctd.assert_container_gone(&id);
}

/// A detached task, a second process exec'd into it, SIGKILL, and deletion
/// of task and container.
#[test]
fn containerd_detached_exec_kill_delete() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();

    let id = unique("detached");
    let fifo = ctd.fifo_dir();
    let out = ctd.run(
        &[
            "run",
            "-d",
            "--fifo-dir",
            &fifo,
            "--runc-binary",
            BERTH,
            IMAGE_REF,
            &id,
            "sleep",
            "1000",
        ],
        SLOW,
    );
    assert!(
        out.success(),
        "ctr run -d failed: {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    assert_eq!(
        ctd.task_status(&id).as_deref(),
        Some("RUNNING"),
        "task {id} should be running after ctr run -d\n{}",
        ctd.diagnostics()
    );

    let out = ctd.run(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "x1",
            "--fifo-dir",
            &fifo,
            &id,
            "sh",
            "-c",
            "echo exec-ok; exit 3",
        ],
        SLOW,
    );
    assert!(
        out.stdout.trim() == "exec-ok" && out.code == Some(3),
        "expected exactly `exec-ok` and exit code 3 from {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    assert_eq!(
        ctd.task_status(&id).as_deref(),
        Some("RUNNING"),
        "the task should survive the exec"
    );

    let out = ctd.run(&["tasks", "kill", "-s", "SIGKILL", &id], QUICK);
    assert!(
        out.success(),
        "ctr tasks kill failed: {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = ctd.task_status(&id);
        if status.as_deref() == Some("STOPPED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not STOPPED 20 s after SIGKILL (status {status:?})\n{}",
            ctd.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = ctd.run(&["tasks", "delete", &id], QUICK);
    assert!(
        out.success(),
        "ctr tasks delete failed: {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    let out = ctd.run(&["containers", "delete", &id], QUICK);
    assert!(
        out.success(),
        "ctr containers delete failed: {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    ctd.assert_container_gone(&id);
}

/// pause/resume (the task really stops running while PAUSED), ps (init and
/// exec'd pids, exactly the cgroup's processes), metrics from the cgroup,
/// exec, kill and delete, all through containerd-shim-runc-v2 driving berth.
#[test]
fn containerd_pause_resume_ps_metrics() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();

    // The container appends a line to a bind-mounted host file every
    // 0.1 s: the file grows exactly while the task runs.
    let out_dir = ctd.dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let ticks = out_dir.join("ticks");
    let mount = format!(
        "type=bind,src={},dst=/out,options=rbind:rw",
        out_dir.display()
    );
    let id = unique("pause");
    let cgroup = ctd.cgroup_of(&id);
    let fifo = ctd.fifo_dir();
    ctd.run_ok(
        &[
            "run",
            "-d",
            "--fifo-dir",
            &fifo,
            "--mount",
            &mount,
            "--runc-binary",
            BERTH,
            IMAGE_REF,
            &id,
            "sh",
            "-c",
            "while :; do echo tick >> /out/ticks; sleep 0.1; done",
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
    let n = wait_lines_above(&ticks, 2, Duration::from_secs(10));
    assert!(
        n > 2,
        "the container wrote {n} line(s) to {} in 10 s while RUNNING\n{}",
        ticks.display(),
        ctd.diagnostics()
    );

    // A second, long-lived process: ps must list it with its exec id.
    ctd.run_ok(
        &[
            "tasks",
            "exec",
            "--detach",
            "--exec-id",
            "sleeper",
            "--fifo-dir",
            &fifo,
            &id,
            "sleep",
            "1000",
        ],
        SLOW,
    );
    let ps = ctd.run_ok(&["tasks", "ps", &id], QUICK);
    let rows = parse_ctr_ps(&ps.stdout);
    assert!(
        rows.iter().any(|(pid, _)| *pid == init_pid),
        "ctr tasks ps does not list the init pid {init_pid}: {}\n{}",
        ps.describe(),
        ctd.diagnostics()
    );
    let sleeper_pid = rows
        .iter()
        .find(|(_, info)| info.contains("sleeper"))
        .map(|(pid, _)| *pid)
        .unwrap_or_else(|| {
            panic!(
                "ctr tasks ps lists no process of exec `sleeper` (the shim matches \
                 `berth ps --format json` against the exec's --pid-file): {}\n{}",
                ps.describe(),
                ctd.diagnostics()
            )
        });
    assert_ne!(sleeper_pid, init_pid);

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

    // While frozen the process set is stable: ps must be exactly the cgroup.
    let ps = ctd.run_ok(&["tasks", "ps", &id], QUICK);
    let listed: HashSet<i32> = parse_ctr_ps(&ps.stdout)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let in_cgroup = cgroup_pids(&cgroup);
    assert!(
        listed.contains(&init_pid) && listed.contains(&sleeper_pid),
        "ctr tasks ps while PAUSED misses init {init_pid} or exec {sleeper_pid}: {}",
        ps.describe()
    );
    assert_eq!(
        listed,
        in_cgroup,
        "ctr tasks ps while PAUSED vs cgroup.procs of {cgroup}: {}",
        ps.describe()
    );
    let metrics = ctd.run_ok(&["tasks", "metrics", &id], QUICK);
    assert_eq!(
        ctr_metric(&metrics.stdout, "pids.current"),
        Some(listed.len() as u64),
        "pids.current of ctr tasks metrics while PAUSED should count the {} process(es) ps lists: {}",
        listed.len(),
        metrics.describe()
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
        memory.is_some_and(|m| m > 0) && pids.is_some_and(|p| p >= 2),
        "expected memory.usage_in_bytes > 0 and pids.current >= 2 (sh and the exec'd sleep) \
         from {}\n{}",
        metrics.describe(),
        ctd.diagnostics()
    );

    let out = ctd.run(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "x1",
            "--fifo-dir",
            &fifo,
            &id,
            "sh",
            "-c",
            "echo exec-ok; exit 3",
        ],
        SLOW,
    );
    assert!(
        out.stdout.trim() == "exec-ok" && out.code == Some(3),
        "expected exactly `exec-ok` and exit code 3 from {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );

    ctd.run_ok(&["tasks", "kill", "-s", "SIGKILL", &id], QUICK);
    ctd.wait_task_status(&id, "STOPPED", Duration::from_secs(20), "SIGKILL");
    // The exec'd sleep dies with the container's pid namespace.
    let gone = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{sleeper_pid}")).exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !Path::new(&format!("/proc/{sleeper_pid}")).exists(),
        "exec'd process {sleeper_pid} survived the container's SIGKILL"
    );
    ctd.run_ok(&["tasks", "delete", &id], QUICK);
    ctd.run_ok(&["containers", "delete", &id], QUICK);
    ctd.assert_container_gone(&id);
}

// ===========================================================================
// podman

/// Private podman storage and state (every path podman allows us to move)
/// and a private cgroup parent. Drop removes containers, images, conmon,
/// cgroups, mounts, and the global paths podman created.
struct Podman {
    cgroup_parent: String,
    storage_driver: String,
    created: Vec<CreatedPath>,
    dir: TempDir,
}

/// The options every container gets:
/// - `--network none`: no CNI/netavark setup;
/// - a cgroup parent of our own, so the test knows what to clean;
/// - rlimits within the current hard limits. As root, podman asks for
///   nofile=nproc=1048576, and raising a hard limit needs CAP_SYS_RESOURCE,
///   which root may lack (it does on the development host: runc fails there
///   too, "error setting rlimits for ready process: ... operation not
///   permitted"). Lowering is always allowed.
fn podman_container_flags(parent: &str) -> Vec<String> {
    [
        "--network",
        "none",
        "--cgroup-parent",
        parent,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]
    .map(String::from)
    .to_vec()
}

impl Podman {
    fn new() -> Podman {
        require_tools(&[
            ("podman", &[], "podman"),
            (
                "conmon",
                &[
                    "/usr/libexec/podman/conmon",
                    "/usr/local/libexec/podman/conmon",
                    "/usr/lib/podman/conmon",
                ],
                "conmon",
            ),
            ("umoci", &[], "umoci"),
            ("tar", &[], "tar"),
        ]);
        // Paths podman (4.x, as root) creates whatever its flags say.
        // Deepest first: the order they are removed in.
        let created = [
            "/dev/shm/libpod_lock",
            "/run/containers/networks",
            "/run/containers",
            "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
            "/var/lib/containers/cache",
            "/var/lib/containers",
        ]
        .into_iter()
        .map(CreatedPath::watch)
        .collect();
        let dir = TempDir::new("berth-dropin-pod");
        for d in ["storage", "run", "tmp", "net"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        Podman {
            cgroup_parent: format!("/{}", unique("berth-dropin-podman")),
            storage_driver: std::env::var("BERTH_DROPIN_STORAGE_DRIVER")
                .unwrap_or_else(|_| "overlay".into()),
            created,
            dir,
        }
    }

    fn podman(&self, args: &[&str]) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new("podman");
        cmd.env("TMPDIR", d.join("tmp"))
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--network-config-dir")
            .arg(d.join("net"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"])
            .args(["--storage-driver", &self.storage_driver])
            .args(["--runtime", BERTH])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Outcome {
        run_in(&self.dir.path, &mut self.podman(args), timeout)
    }

    fn container_flags(&self) -> Vec<String> {
        podman_container_flags(&self.cgroup_parent)
    }

    /// After a container's removal: podman forgot it, berth's state (default
    /// root, as podman passes no --root) and the container cgroup are gone.
    fn assert_container_gone(&self, id: &str) {
        let out = self.run(&["ps", "-aq", "--no-trunc"], QUICK);
        assert!(out.success(), "{}", out.describe());
        assert!(
            !out.stdout.contains(id),
            "container {id} still listed: {}",
            out.describe()
        );
        let state = Path::new(BERTH_DEFAULT_ROOT).join(id);
        assert!(
            !state.exists(),
            "berth left its state directory {} behind",
            state.display()
        );
        let cgroup = format!("{}/libpod-{id}", self.cgroup_parent);
        let cgroups = wait_cgroup_gone(&cgroup, Duration::from_secs(5));
        assert!(
            cgroups.is_empty(),
            "the container's cgroup was not removed: {cgroups:?}"
        );
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let ids: Vec<String> = self
            .run(&["ps", "-aq", "--no-trunc"], QUICK)
            .stdout
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        if !ids.is_empty() {
            let out = self.run(&["rm", "--all", "--force", "--time", "0"], SLOW);
            if !out.success() {
                eprintln!("dropin cleanup: {}", out.describe());
            }
        }
        self.run(&["rmi", "--all", "--force"], SLOW);
        // conmon (double-forked by podman) mentions our directories.
        let conmons = kill_processes_mentioning(&self.dir.path.display().to_string());
        if !conmons.is_empty() {
            eprintln!("dropin cleanup: killed leftover process(es) {conmons:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // berth state (default root: podman passes no --root) of our
        // containers, found by bundle path even if podman lost track of them.
        let mine = self.dir.path.display().to_string();
        for e in std::fs::read_dir(BERTH_DEFAULT_ROOT)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            let state = std::fs::read_to_string(e.path().join("state.json")).unwrap_or_default();
            if ids.contains(&id) || state.contains(&mine) {
                eprintln!("dropin cleanup: berth state left for {id}, deleting it");
                let mut cmd = Command::new(BERTH);
                cmd.args(["delete", "--force", &id]);
                run_in(&self.dir.path, &mut cmd, QUICK);
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let left = remove_cgroup_tree(&self.cgroup_parent);
        if !left.is_empty() {
            eprintln!("dropin cleanup: cgroups that could not be removed: {left:?}");
        }
        unmount_under(&self.dir.path);
        for p in &self.created {
            p.remove_if_created();
        }
    }
}

/// `podman run --rm` straight from an oci-archive: output and exit status
/// come back through conmon.
#[test]
fn podman_run_rm_output_and_exit_code() {
    require_root();
    let _serial = lock(&PODMAN);
    let pm = Podman::new();
    let archive = build_busybox_oci_archive(&pm.dir.path);
    let cidfile = pm.dir.join("cid");
    let image = format!("oci-archive:{}", archive.display());

    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--cidfile".into(),
        cidfile.display().to_string(),
    ];
    args.extend(pm.container_flags());
    args.extend([
        image,
        "sh".into(),
        "-c".into(),
        "echo hi-podman; exit 5".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pm.run(&args, SLOW);
    assert!(
        out.stdout.contains("hi-podman") && out.code == Some(5),
        "expected output hi-podman and exit code 5 from {}",
        out.describe()
    );
    let id = std::fs::read_to_string(&cidfile).expect("podman wrote no --cidfile");
    pm.assert_container_gone(id.trim());
}

/// podman run -d, podman exec (conmon runs `berth exec --process ...
/// --detach`), podman kill, podman wait, podman rm.
#[test]
fn podman_detached_exec_kill_rm() {
    require_root();
    let _serial = lock(&PODMAN);
    let pm = Podman::new();
    let archive = build_busybox_oci_archive(&pm.dir.path);
    let out = pm.run(
        &["pull", &format!("oci-archive:{}", archive.display())],
        SLOW,
    );
    assert!(
        out.success(),
        "podman pull oci-archive failed: {}",
        out.describe()
    );

    let name = unique("berth-dropin-exec");
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
    args.extend(pm.container_flags());
    args.extend([IMAGE_REF.into(), "sleep".into(), "1000".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pm.run(&args, SLOW);
    assert!(out.success(), "podman run -d failed: {}", out.describe());
    let id = out.stdout.trim().to_owned();

    let out = pm.run(&["inspect", "--format", "{{.State.Status}}", &name], QUICK);
    assert_eq!(out.stdout.trim(), "running", "{}", out.describe());

    let exec = pm.run(&["exec", &name, "sh", "-c", "echo exec-ok; exit 3"], SLOW);
    assert!(
        exec.stdout.trim() == "exec-ok" && exec.code == Some(3),
        "expected exactly `exec-ok` and exit code 3 from {}",
        exec.describe()
    );
    let out = pm.run(&["inspect", "--format", "{{.State.Status}}", &name], QUICK);
    assert_eq!(
        out.stdout.trim(),
        "running",
        "the container should survive the exec: {}",
        out.describe()
    );

    let out = pm.run(&["kill", &name], QUICK);
    assert!(out.success(), "podman kill failed: {}", out.describe());
    let out = pm.run(&["wait", &name], QUICK);
    assert!(
        out.success() && out.stdout.trim() == "137",
        "expected podman wait to report 137 (SIGKILL): {}",
        out.describe()
    );
    let out = pm.run(&["rm", &name], QUICK);
    assert!(out.success(), "podman rm failed: {}", out.describe());
    pm.assert_container_gone(&id);

    // runc prints nothing into an exec'd process's streams: conmon hands
    // the runtime the process's own stdio, so anything the runtime writes to
    // its stderr reaches the user as the container's output.
    assert!(
        !exec.stderr.contains("berth"),
        "berth wrote its own messages into the exec'd process's stderr (runc writes nothing there):\n{}",
        exec.stderr
    );
}
