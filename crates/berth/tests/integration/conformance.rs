//! runc behaviours independent OCI conformance suites check: the seccomp
//! notify fd before `create` returns, the container's personality for
//! `exec`, relative masked and read-only paths, and the environment of
//! startContainer hooks.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::Env;

#[test]
fn seccomp_listener_gets_the_notify_fd_before_create_returns() {
    let env = Env::new("notifycreate");
    let sock = env.dir.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let bundle = env.bundle("b", &["sh", "-c", "mkdir /tmp/x 2>&1; sleep 60"], |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": sock,
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    let id = env.id("c");
    // `create` on a thread: an agent that waits for the fd must get it
    // while create is still running or right when it ends, never after start.
    let create = {
        let args = ["create", "--bundle", bundle.to_str().unwrap(), &id].map(String::from);
        let mut cmd = env.cmd(&args.each_ref().map(|s| s.as_str()));
        // Files, not pipes: the created init keeps berth's stdio open.
        let err_path = env.dir.join("create.err");
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap());
        std::thread::spawn(move || {
            let status = cmd.status().unwrap();
            (
                status,
                std::fs::read_to_string(err_path).unwrap_or_default(),
            )
        })
    };
    let (status, stderr) = create.join().unwrap();
    assert!(status.success(), "create: {stderr}");
    // By now the agent's connection must be waiting with the fd in it.
    let mut fds = [rustix::event::PollFd::new(
        &listener,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: 2,
        tv_nsec: 0,
    };
    let ready = rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
    assert_eq!(
        ready, 1,
        "create returned before the listener got the notify fd"
    );
    let (state, _fd) = crate::common::receive_console(&listener);
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["fds"], json!(["seccompFd"]));
    assert_eq!(state["state"]["id"], id.as_str());
    // Nothing was started: the container is still created.
    assert_eq!(env.state(&id)["status"], "created");
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_gets_the_containers_personality() {
    let env = Env::new("persona");
    let bundle = env.bundle("b", &["sh", "-c", "uname -m; sleep 60"], |c| {
        c["linux"]["personality"] = json!({"domain": "LINUX32"});
    });
    let id = env.id("c");
    let log = env.dir.join("init.out");
    let mut cmd = env.cmd(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    cmd.stdout(std::fs::File::create(&log).unwrap());
    assert!(cmd.status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no output from init");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), "i686");
    assert_eq!(env.ok(&["exec", &id, "uname", "-m"]).trim(), "i686");
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn relative_masked_and_readonly_paths_are_taken_from_the_root() {
    let env = Env::new("relmask");
    let bundle = env.bundle(
        "d",
        &[
            "sh",
            "-c",
            "cat /etc/secret; echo end; touch /etc/ro/x 2>&1",
        ],
        |c| {
            c["linux"]["maskedPaths"] = json!(["etc/secret"]);
            c["linux"]["readonlyPaths"] = json!(["etc/ro"]);
        },
    );
    std::fs::write(bundle.join("rootfs/etc/secret"), "SECRET\n").unwrap();
    std::fs::create_dir_all(bundle.join("rootfs/etc/ro")).unwrap();
    let (code, out, err) = env.run(&bundle, &env.id("d"));
    assert_eq!(code, 1, "touch in a read-only path fails: {out} {err}");
    assert!(!out.contains("SECRET"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
}

#[test]
fn start_container_hooks_without_env_get_the_process_env() {
    let env = Env::new("hookenv");
    let shared = env.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let bundle = env.bundle("b", &["true"], |c| {
        c["process"]["env"] = json!(["PATH=/bin", "FROM_PROCESS=yes"]);
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/shared", "type": "bind", "source": shared, "options": ["rbind"]}),
        );
        c["hooks"] = json!({"startContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", "env > /shared/no-env"]},
            {"path": "/bin/sh", "args": ["sh", "-c", "env > /shared/own-env"], "env": ["OWN=1"]}
        ]});
    });
    let (code, out, err) = env.run(&bundle, &env.id("c"));
    assert_eq!(code, 0, "{out} {err}");
    let inherited = std::fs::read_to_string(shared.join("no-env")).unwrap();
    assert!(inherited.contains("FROM_PROCESS=yes"), "{inherited}");
    let own = std::fs::read_to_string(shared.join("own-env")).unwrap();
    assert!(
        own.contains("OWN=1") && !own.contains("FROM_PROCESS"),
        "{own}"
    );
}

/// The default config without its mount namespace and what needs one.
fn without_mount_namespace(c: &mut Value) {
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "mount");
    c["mounts"] = json!([]);
    c["linux"]["maskedPaths"] = json!([]);
    c["linux"]["readonlyPaths"] = json!([]);
    c["root"]["readonly"] = json!(false);
}

#[test]
fn a_container_without_a_mount_namespace_is_chrooted() {
    let env = Env::new("nomntns");
    let marker = "only-in-this-rootfs";
    let bundle = env.bundle(
        "b",
        &["sh", "-c", "ls /; readlink /proc/1/ns/mnt 2>&1; true"],
        |c| {
            without_mount_namespace(c);
        },
    );
    std::fs::write(bundle.join("rootfs").join(marker), "").unwrap();
    let before = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    let (code, out, err) = env.run(&bundle, &env.id("b"));
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains(marker),
        "the process sees the bundle's rootfs: {out}"
    );
    let after = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    assert_eq!(before, after, "nothing was mounted in the host's namespace");

    // What would need mounting is refused by name, before anything runs.
    for (name, field) in [
        (
            "mounts",
            json!({"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]}),
        ),
        ("masked", json!({"linux": {"maskedPaths": ["/proc/kcore"]}})),
        ("readonly", json!({"root": {"readonly": true}})),
    ] {
        let bundle = env.bundle(name, &["true"], |c| {
            without_mount_namespace(c);
            if let Some(m) = field.get("mounts") {
                c["mounts"] = m.clone();
            }
            if let Some(m) = field["linux"].get("maskedPaths") {
                c["linux"]["maskedPaths"] = m.clone();
            }
            if field.get("root").is_some() {
                c["root"]["readonly"] = json!(true);
            }
        });
        let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id(name)]);
        assert!(err.contains("needs a mount namespace"), "{name}: {err}");
    }
}
