//! Containers inside a VM through berth-agent (berth runtime in the guest,
//! overlay over a virtio-fs share): the guest from scripts/build-guest
//! (BERTH_GUEST_DIR, default /var/lib/berth/vm).

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_vm::{
    AgentClient, CreateContainerRequest, ExecProcessRequest, RunCommandRequest, Vm, VmConfig,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn guest_dir() -> PathBuf {
    std::env::var_os("BERTH_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/vm"))
}

/// A busybox root file system.
fn busybox_rootfs(at: &Path) {
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(at.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", at.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "nc", "sleep", "hostname", "seq", "grep", "ls", "tail", "stty", "tty",
    ] {
        std::os::unix::fs::symlink("busybox", at.join("bin").join(applet)).unwrap();
    }
}

fn spec(args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&spec_value(args)).unwrap()
}

fn spec_value(args: &[&str]) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "vm-pod",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
        ],
        "linux": {
            // A host network namespace path, as a shim would pass it: the
            // agent must drop it (the VM is the pod's network).
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network", "path": "/var/run/netns/not-in-the-guest"}],
            "cgroupsPath": "/host/cgroup/path"
        }
    })
}

async fn read_all(agent: &AgentClient, id: &str, exec_id: &str) -> String {
    let mut out = Vec::new();
    loop {
        let chunk = agent.read_stdout(id, exec_id, WAIT).await.unwrap();
        if chunk.eof {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend_from_slice(&chunk.data);
    }
}

async fn create(agent: &AgentClient, id: &str, rootfs: &str, args: &[&str], stdin: bool) -> u32 {
    let req = CreateContainerRequest {
        id: id.into(),
        spec: spec(args),
        rootfs: rootfs.into(),
        stdin,
        rootfs_writable: false,
    };
    let started = std::time::Instant::now();
    let pid = agent
        .create_container(&req, WAIT)
        .await
        .unwrap_or_else(|e| panic!("creating {id}: {e}"));
    agent
        .start_container(id, WAIT)
        .await
        .unwrap_or_else(|e| panic!("starting {id}: {e}"));
    eprintln!("container {id}: create + start in {:?}", started.elapsed());
    pid
}

#[tokio::test]
async fn containers_in_a_vm_share_its_network_and_report_output_and_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let g = guest_dir();
    let config = VmConfig::new(
        "containers",
        tmp.path().join("vm"),
        g.join("vmlinux"),
        g.join("initramfs.cpio"),
    );
    let mut vm = Vm::boot(config).await.expect("booting");
    // A new owner's channel (a restarted shim) finds the agent serving.
    vm.reconnect_agent(WAIT)
        .await
        .expect("reconnecting to the agent");
    let agent = vm.agent();
    let shared = vm.shared().unwrap();
    let guest_rootfs = shared.share(&rootfs, "busybox", true).unwrap();
    vm.mount_shared(WAIT).await.unwrap();

    // Two containers of the pod reach each other on localhost.
    create(
        agent,
        "server",
        &guest_rootfs,
        &["nc", "-ll", "-p", "8080", "-e", "cat"],
        false,
    )
    .await;
    let client = "for i in $(seq 100); do out=$(echo ping | nc -w 1 127.0.0.1 8080) && [ -n \"$out\" ] && echo \"got $out\" && exit 3; sleep 0.1; done; exit 1";
    create(agent, "client", &guest_rootfs, &["sh", "-c", client], false).await;
    assert_eq!(read_all(agent, "client", "").await, "got ping\n");
    let exit = agent.wait_process("client", "", WAIT).await.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (3, 0));

    // Exec into the running server: its own UTS namespace's hostname.
    let process = serde_json::to_vec(&json!({
        "args": ["hostname"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
    }))
    .unwrap();
    let exec = ExecProcessRequest {
        container_id: "server".into(),
        exec_id: "exec-1".into(),
        process,
        stdin: false,
    };
    agent.exec_process(&exec, WAIT).await.unwrap();
    assert_eq!(read_all(agent, "server", "exec-1").await, "vm-pod\n");
    assert_eq!(
        agent
            .wait_process("server", "exec-1", WAIT)
            .await
            .unwrap()
            .exit_code,
        0
    );

    // Statistics, new limits, pause and resume of the running server.
    let stats: serde_json::Value =
        serde_json::from_slice(&agent.stats_container("server", WAIT).await.unwrap()).unwrap();
    assert!(
        stats["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(stats["pids"]["current"].as_u64().unwrap() >= 1, "{stats}");
    let limit = 48u64 << 20;
    let resources = serde_json::to_vec(&json!({"memory": {"limit": limit}})).unwrap();
    agent
        .update_container("server", &resources, WAIT)
        .await
        .unwrap();
    let stats: serde_json::Value =
        serde_json::from_slice(&agent.stats_container("server", WAIT).await.unwrap()).unwrap();
    assert_eq!(
        stats["memory"]["usage"]["limit"].as_u64(),
        Some(limit),
        "{stats}"
    );
    let freeze = |bb: String| RunCommandRequest {
        args: vec![
            bb,
            "cat".into(),
            "/sys/fs/cgroup/berth/server/cgroup.freeze".into(),
        ],
        ..Default::default()
    };
    let bb = format!("{guest_rootfs}/bin/busybox");
    agent.pause_container("server", WAIT).await.unwrap();
    let out = agent.run_command(&freeze(bb.clone()), WAIT).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n", "{out:?}");
    agent.resume_container("server", WAIT).await.unwrap();
    let out = agent.run_command(&freeze(bb.clone()), WAIT).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "{out:?}");
    let err = agent
        .update_container("server", b"[1]", WAIT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a JSON object"), "{err}");

    // An exec with a terminal: resized, fed, its output merged.
    let process = serde_json::to_vec(&json!({
        "args": ["sh", "-c", "read line; echo \"$line\"; stty size; tty"], "terminal": true,
        "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
    }))
    .unwrap();
    let exec = ExecProcessRequest {
        container_id: "server".into(),
        exec_id: "tty-1".into(),
        process,
        stdin: true,
    };
    agent.exec_process(&exec, WAIT).await.unwrap();
    agent
        .resize_pty("server", "tty-1", 123, 45, WAIT)
        .await
        .unwrap();
    agent
        .write_stdin("server", "tty-1", b"typed\n", WAIT)
        .await
        .unwrap();
    let out = read_all(agent, "server", "tty-1").await;
    assert!(out.contains("45 123\r\n"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    let err = agent.read_stderr("server", "tty-1", WAIT).await.unwrap();
    assert!(err.eof && err.data.is_empty());
    // A terminal makes the process a session leader of its own: it is
    // still reaped (waitpid(0) would not see it).
    let exit = agent.wait_process("server", "tty-1", WAIT).await.unwrap();
    assert_eq!(exit.exit_code, 0);
    let err = agent
        .resize_pty("server", "exec-1", 80, 24, WAIT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no terminal"), "{err}");

    // A container that joins the pod's UTS namespace (by path, as a CRI
    // daemon asks) has the guest's hostname, which SetupGuest set.
    agent.setup_guest("the-pod", WAIT).await.unwrap();
    let mut joined = spec_value(&["hostname"]);
    joined["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"},
        {"type": "uts", "path": "/proc/1234/ns/uts"}, {"type": "ipc", "path": "/proc/1234/ns/ipc"}]);
    joined.as_object_mut().unwrap().remove("hostname");
    let req = CreateContainerRequest {
        id: "uts".into(),
        spec: serde_json::to_vec(&joined).unwrap(),
        rootfs: guest_rootfs.clone(),
        stdin: false,
        rootfs_writable: false,
    };
    agent.create_container(&req, WAIT).await.unwrap();
    agent.start_container("uts", WAIT).await.unwrap();
    assert_eq!(read_all(agent, "uts", "").await, "the-pod\n");

    // stdin through to the container and back.
    create(agent, "echo", &guest_rootfs, &["cat"], true).await;
    agent
        .write_stdin("echo", "", b"through stdin\n", WAIT)
        .await
        .unwrap();
    agent.close_stdin("echo", "", WAIT).await.unwrap();
    assert_eq!(read_all(agent, "echo", "").await, "through stdin\n");
    assert_eq!(
        agent
            .wait_process("echo", "", WAIT)
            .await
            .unwrap()
            .exit_code,
        0
    );

    // A signal ends the server.
    agent.signal_process("server", "", 9, WAIT).await.unwrap();
    let exit = agent.wait_process("server", "", WAIT).await.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, 9));

    // A memory limit holds in the guest's cgroup, and its OOM kill is
    // reported.
    let mut limited = spec_value(&["tail", "/dev/zero"]);
    limited["linux"]["resources"] = json!({"memory": {"limit": 32 * 1024 * 1024}});
    let req = CreateContainerRequest {
        id: "hog".into(),
        spec: serde_json::to_vec(&limited).unwrap(),
        rootfs: guest_rootfs.clone(),
        stdin: false,
        rootfs_writable: false,
    };
    agent.create_container(&req, WAIT).await.unwrap();
    agent.start_container("hog", WAIT).await.unwrap();
    let exit = agent.wait_process("hog", "", WAIT).await.unwrap();
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (137, 9, true)
    );
    let exit = agent.wait_process("client", "", WAIT).await.unwrap();
    assert!(!exit.oom_killed);

    // A root shared read-write and used as it is: the container's writes
    // land on the host, as a snapshot's would.
    let writable = tmp.path().join("rootfs-rw");
    busybox_rootfs(&writable);
    let guest_writable = vm
        .shared()
        .unwrap()
        .share(&writable, "busybox-rw", false)
        .unwrap();
    let req = CreateContainerRequest {
        id: "writer".into(),
        spec: spec(&["sh", "-c", "echo persisted > /written-by-container"]),
        rootfs: guest_writable,
        stdin: false,
        rootfs_writable: true,
    };
    agent.create_container(&req, WAIT).await.unwrap();
    agent.start_container("writer", WAIT).await.unwrap();
    assert_eq!(
        agent
            .wait_process("writer", "", WAIT)
            .await
            .unwrap()
            .exit_code,
        0
    );
    assert_eq!(
        std::fs::read_to_string(writable.join("written-by-container")).unwrap(),
        "persisted\n"
    );
    // The overlaid roots keep their writes in the guest.
    assert!(!rootfs.join("written-by-container").exists());

    // Bad requests are refused by name.
    let bad = |id: &str, rootfs: &str| CreateContainerRequest {
        id: id.into(),
        spec: spec(&["true"]),
        rootfs: rootfs.into(),
        stdin: false,
        rootfs_writable: false,
    };
    let err = agent
        .create_container(&bad("../escape", &guest_rootfs), WAIT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not [A-Za-z0-9]"), "{err}");
    let err = agent
        .create_container(&bad("echo", &guest_rootfs), WAIT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = agent
        .create_container(&bad("norootfs", "/no/such/dir"), WAIT)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not a directory of the guest"),
        "{err}"
    );
    let err = agent.start_container("unknown", WAIT).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");

    for id in ["server", "client", "echo", "hog", "uts", "writer"] {
        agent
            .remove_container(id, WAIT)
            .await
            .unwrap_or_else(|e| panic!("removing {id}: {e}"));
    }
    // Nothing of the containers is left in the guest.
    let out = agent
        .run_command(
            &RunCommandRequest {
                args: vec![
                    bb.clone(),
                    "sh".into(),
                    "-c".into(),
                    format!("{bb} grep -c overlay /proc/mounts; {bb} ls /run/berth/bundles"),
                ],
                ..Default::default()
            },
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "{out:?}");
    let dir = tmp.path().join("vm");
    vm.stop(Duration::from_secs(10)).await;
    assert!(!dir.exists());
    // The shared root file system is the host's, untouched.
    assert!(rootfs.join("bin/busybox").exists());
}
