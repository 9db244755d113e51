//! create / start / state / kill / delete / run / list, as containerd and
//! podman drive them.

use std::path::Path;
use std::time::Duration;

use berth_testkit::procs::wait_for_exec;
use serde_json::Value;

use crate::common::{alive, cgroup_dirs_of, Env};

#[test]
fn create_start_kill_delete() {
    let env = Env::new("lifecycle");
    let bundle = env.bundle("b", &["sleep", "60"], |_| {});
    let id = env.id("c");
    let pid_file = env.dir.join("pid");
    env.ok(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);

    let state = env.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["bundle"], bundle.to_str().unwrap());
    assert_eq!(state["rootfs"], bundle.join("rootfs").to_str().unwrap());
    assert!(state["ociVersion"].as_str().unwrap().starts_with("1."));
    assert!(state["created"].as_str().unwrap().ends_with('Z'));
    let pid = state["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    assert!(alive(pid), "init must wait after create");
    // The init waits in the container, not running the user program yet.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("sleep"));
    for dir in cgroup_dirs_of(&id) {
        assert!(dir.is_dir(), "cgroup {dir:?} must exist");
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "init must be in {dir:?}"
        );
    }

    env.ok(&["start", &id]);
    assert_eq!(env.state(&id)["status"], "running");
    // As with runc, `start` returns once the init has been released through
    // the exec fifo; its execve of the user program may come a moment later.
    let cmdline = wait_for_exec(pid as i32, "sleep", Duration::from_secs(5));
    assert!(
        cmdline.starts_with("sleep"),
        "init never ran the program: {cmdline:?}"
    );
    let err = env.fails(&["start", &id]);
    assert!(err.contains("running"), "{err}");

    let err = env.fails(&["delete", &id]);
    assert!(err.contains("stopped"), "{err}");
    env.ok(&["kill", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    assert_eq!(env.state(&id)["pid"], 0);
    let err = env.fails(&["kill", &id, "TERM"]);
    assert!(err.contains("container not running"), "{err}");

    env.ok(&["delete", &id]);
    assert!(!env.state_dir_exists(&id));
    for dir in cgroup_dirs_of(&id) {
        assert!(!dir.exists(), "cgroup {dir:?} must be removed");
    }
    let err = env.fails(&["state", &id]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn run_foreground_gives_output_and_exit_code() {
    let env = Env::new("runfg");
    let bundle = env.bundle(
        "b",
        &["sh", "-c", "echo out; echo err >&2; exit 42"],
        |_| {},
    );
    let id = env.id("c");
    let (code, out, err) = env.run(&bundle, &id);
    assert_eq!(code, 42);
    assert_eq!(out, "out\n");
    assert!(err.contains("err"), "{err}");
    assert!(
        !env.state_dir_exists(&id),
        "run deletes the container after it exits"
    );
    for dir in cgroup_dirs_of(&id) {
        assert!(!dir.exists(), "cgroup {dir:?} must be removed");
    }
}

#[test]
fn run_foreground_reports_signal_deaths_and_forwards_signals() {
    let env = Env::new("runsig");
    let bundle = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            "trap 'exit 9' TERM; while true; do sleep 0.05; done",
        ],
        |_| {},
    );
    let id = env.id("c");
    let mut child = env
        .cmd(&["run", "--bundle", bundle.to_str().unwrap(), &id])
        .spawn()
        .unwrap();
    env.wait_status(&id, "running");
    std::thread::sleep(std::time::Duration::from_millis(200));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(9),
        "SIGTERM must reach the container's trap"
    );

    // An init killed by a signal: run exits with 128 + the signal, as runc does.
    let bundle = env.bundle("b2", &["sleep", "60"], |_| {});
    let id2 = env.id("c2");
    let mut child = env
        .cmd(&["run", "--bundle", bundle.to_str().unwrap(), &id2])
        .spawn()
        .unwrap();
    env.wait_status(&id2, "running");
    env.ok(&["kill", &id2, "KILL"]);
    assert_eq!(child.wait().unwrap().code(), Some(128 + 9));
    assert!(!env.state_dir_exists(&id2));
}

#[test]
fn run_detached_and_list() {
    let env = Env::new("rundetach");
    let bundle = env.bundle("b", &["sleep", "60"], |c| {
        c["annotations"] = serde_json::json!({"org.example.k": "v"});
    });
    let a = env.id("a");
    let b = env.id("b");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &a]);
    // Flags after the id, and --flag=value, as runc accepts them.
    env.ok(&[
        "run",
        &b,
        "--detach",
        &format!("--bundle={}", bundle.to_str().unwrap()),
    ]);
    assert_eq!(env.state(&a)["status"], "running");
    assert_eq!(env.state(&a)["annotations"]["org.example.k"], "v");

    let list: Value = serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str(), b.as_str()]);
    let table = env.ok(&["list"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(table.contains(&a) && table.contains("running"), "{table}");
    assert_eq!(env.ok(&["list", "-q"]), format!("{a}\n{b}\n"));

    env.ok(&["kill", "--all", &a, "9"]);
    env.wait_status(&a, "stopped");
    env.ok(&["delete", &a]);
    env.ok(&["delete", "--force", &b]);
    assert!(!env.state_dir_exists(&b));
    assert_eq!(env.ok(&["list", "--format=json"]).trim(), "[]");
}

#[test]
fn delete_of_created_container_kills_its_init() {
    let env = Env::new("delcreated");
    let bundle = env.bundle("b", &["true"], |_| {});
    let id = env.id("c");
    env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    env.ok(&["delete", &id]);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!alive(pid), "init {pid} must be gone");
    assert!(!env.state_dir_exists(&id));
    // delete --force of an unknown id succeeds (runc does the same).
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn kill_of_created_container_and_signal_names() {
    let env = Env::new("killnames");
    let bundle = env.bundle("b", &["sleep", "60"], |_| {});
    for (n, sig) in ["SIGKILL", "kill", "9"].iter().enumerate() {
        let id = env.id(&format!("c{n}"));
        env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
        env.ok(&["kill", &id, sig]);
        env.wait_status(&id, "stopped");
        env.ok(&["delete", &id]);
    }
    let id = env.id("x");
    env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    let err = env.fails(&["kill", &id, "SIGNOPE"]);
    assert!(err.contains("unknown signal"), "{err}");
    assert_eq!(env.state(&id)["status"], "created");
}

#[test]
fn start_after_init_died_is_an_error() {
    let env = Env::new("deadinit");
    let bundle = env.bundle("b", &["true"], |_| {});
    let id = env.id("c");
    env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    env.wait_status(&id, "stopped");
    let err = env.fails(&["start", &id]);
    assert!(err.contains("stopped"), "{err}");
    env.ok(&["delete", &id]);
    let _ = Path::new("/");
}

/// cgroup v2-only hosts are the norm elsewhere: run berth in a private mount
/// namespace whose /sys/fs/cgroup is this machine's cgroup2 hierarchy alone.
#[test]
fn cgroup_v2_only_layout() {
    let env = Env::new("cgv2");
    let bundle = env.bundle("b", &["sleep", "60"], |c| {
        c["linux"]["cgroupsPath"] =
            serde_json::json!(format!("/berth-test-v2/{}", std::process::id()));
    });
    let id = env.id("c");
    let script = format!(
        "umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && \
         B='{berth} --root {root}' && $B run -d --bundle {bundle} {id} && \
         echo procs=$(cat /sys/fs/cgroup/berth-test-v2/{pid}/cgroup.procs) && \
         $B state {id} | grep '\"pid\"' && \
         $B exec {id} sh -c 'grep ^0:: /proc/self/cgroup; ls /sys/fs/cgroup/cgroup.procs' && \
         $B delete --force {id}; rc=$?; \
         test -d /sys/fs/cgroup/berth-test-v2/{pid} && echo LEFT; rmdir /sys/fs/cgroup/berth-test-v2 2>/dev/null; exit $rc",
        berth = crate::common::BERTH,
        root = env.root.display(),
        bundle = bundle.display(),
        pid = std::process::id(),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let procs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap();
    let init = stdout
        .lines()
        .find(|l| l.contains("\"pid\""))
        .unwrap()
        .trim()
        .trim_start_matches("\"pid\": ")
        .trim_end_matches(',');
    assert_eq!(procs, init, "the init is in its v2 cgroup: {stdout}");
    assert!(stdout.lines().any(|l| l == "0::/"), "{stdout}");
    assert!(
        stdout.contains("/sys/fs/cgroup/cgroup.procs"),
        "cgroup2 mounted inside: {stdout}"
    );
    assert!(
        !stdout.contains("LEFT"),
        "the v2 cgroup must be removed: {stdout}"
    );
    let _ = Path::new("/");
}

#[test]
fn force_delete_of_a_stopped_container_kills_what_was_moved_into_its_cgroup() {
    // A stopped container with its own PID namespace has nothing left, so
    // its cgroup is removed without walking it; a process moved into the
    // cgroup from outside the namespace (not killed with it) still makes
    // `delete --force` kill it and remove the cgroup, as before.
    let env = Env::new("delstray");
    let bundle = env.bundle("b", &["true"], |_| {});
    let id = env.id("c");
    env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    env.ok(&["start", &id]);
    env.wait_status(&id, "stopped");
    let mut stray = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let stray_pid = stray.id();
    let dirs = cgroup_dirs_of(&id);
    let pids_dir = dirs
        .iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/pids"))
        .unwrap();
    std::fs::write(pids_dir.join("cgroup.procs"), stray_pid.to_string()).unwrap();
    env.ok(&["delete", "--force", &id]);
    let status = stray.wait().unwrap();
    assert!(!status.success(), "the stray process is killed: {status:?}");
    assert!(!env.state_dir_exists(&id));
    for dir in dirs {
        assert!(!dir.exists(), "cgroup {dir:?} must be removed");
    }
}
