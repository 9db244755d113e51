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

/// A mount that exercises one option from `berth features`.
fn mount_for_option(env: &Env, option: &str) -> Value {
    let host = env.dir.join("feature-src");
    std::fs::create_dir_all(&host).unwrap();
    let bind = |opts: Vec<&str>| json!({"destination": "/probe", "type": "bind", "source": host, "options": opts});
    match option {
        "bind" | "rbind" => bind(vec![option]),
        "idmap" | "ridmap" => json!({
            "destination": "/probe", "type": "bind", "source": host, "options": ["rbind", option],
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]
        }),
        o if o.starts_with('r') && !matches!(o, "relatime" | "remount" | "rw" | "ro") => {
            bind(vec!["rbind", option])
        }
        _ => {
            json!({"destination": "/probe", "type": "tmpfs", "source": "tmpfs", "options": [option]})
        }
    }
}

#[test]
fn every_feature_berth_reports_is_accepted() {
    let env = Env::new("features");
    let features: Value = serde_json::from_str(&env.ok(&["features"])).unwrap();
    let mut failures = Vec::new();
    let mut check = |what: String, edit: &dyn Fn(&mut Value)| {
        let name = format!("f{}", failures.len() + what.len());
        let bundle = env.bundle(&name, &["true"], |c| edit(c));
        let (code, out, err) = env.run(&bundle, &env.id(&name));
        if code != 0 {
            failures.push(format!("{what}: {out} {err}"));
        }
        let _ = std::fs::remove_dir_all(&bundle);
    };
    for option in features["mountOptions"].as_array().unwrap() {
        let option = option.as_str().unwrap();
        let mount = mount_for_option(&env, option);
        check(format!("mount option {option}"), &|c| {
            c["mounts"].as_array_mut().unwrap().push(mount.clone());
        });
    }
    for ns in features["linux"]["namespaces"].as_array().unwrap() {
        let ns = ns.as_str().unwrap().to_owned();
        check(format!("namespace {ns}"), &|c| {
            let list = c["linux"]["namespaces"].as_array_mut().unwrap();
            if !list.iter().any(|n| n["type"] == ns.as_str()) {
                list.push(json!({"type": ns}));
            }
            if ns == "user" {
                c["linux"]["uidMappings"] =
                    json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
                c["linux"]["gidMappings"] =
                    json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            }
        });
    }
    // Every capability berth knows, within what this host lets root hold
    // (root here lacks CAP_SYS_RESOURCE).
    let bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let caps: Vec<Value> = features["linux"]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|name| caps_index(name.as_str().unwrap()).is_some_and(|i| bounding & (1 << i) != 0))
        .cloned()
        .collect();
    assert!(caps.len() > 30, "{caps:?}");
    check("every capability".into(), &|c| {
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set] = json!(caps);
        }
    });
    for hook in features["hooks"].as_array().unwrap() {
        let hook = hook.as_str().unwrap().to_owned();
        check(format!("hook {hook}"), &|c| {
            c["hooks"] = json!({ hook.as_str(): [{"path": "/bin/true"}] });
        });
    }
    let seccomp = &features["linux"]["seccomp"];
    for action in seccomp["actions"].as_array().unwrap() {
        let action = action.as_str().unwrap().to_owned();
        if action == "SCMP_ACT_NOTIFY" {
            continue; // needs a listener: seccomp_listener_gets_the_notify_fd_before_create_returns
        }
        check(format!("seccomp action {action}"), &|c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["acct"], "action": action}]});
        });
    }
    for op in seccomp["operators"].as_array().unwrap() {
        let op = op.as_str().unwrap().to_owned();
        check(format!("seccomp operator {op}"), &|c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["acct"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 0, "value": 1, "valueTwo": 1, "op": op}]}]});
        });
    }
    for arch in seccomp["archs"].as_array().unwrap() {
        let arch = arch.as_str().unwrap().to_owned();
        check(format!("seccomp arch {arch}"), &|c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", arch],
                "syscalls": [{"names": ["acct"], "action": "SCMP_ACT_ERRNO"}]});
        });
    }
    for flag in seccomp["supportedFlags"].as_array().unwrap() {
        let flag = flag.as_str().unwrap().to_owned();
        check(format!("seccomp flag {flag}"), &|c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": [flag],
                "syscalls": [{"names": ["acct"], "action": "SCMP_ACT_ERRNO"}]});
        });
    }
    assert!(
        failures.is_empty(),
        "advertised but refused:\n{}",
        failures.join("\n")
    );
    // What is not advertised is refused, not ignored.
    assert!(!features["mountOptions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o == "tmpcopyup"));
}

/// The number of a capability (linux/capability.h order).
fn caps_index(name: &str) -> Option<u8> {
    const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

#[test]
fn exec_flags_runc_has() {
    let env = Env::new("execflags");
    let bundle = env.bundle("b", &["sleep", "60"], |_| {});
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    // --cgroup: an existing sub-cgroup of the container's, per controller.
    let pids_dir = crate::common::cgroup_dirs_of(&id)
        .into_iter()
        .find(|p| p.starts_with("/sys/fs/cgroup/pids"))
        .unwrap();
    let sub = pids_dir.join("probe");
    std::fs::create_dir(&sub).unwrap();
    let out = env.ok(&[
        "exec",
        "--cgroup",
        "pids:probe",
        &id,
        "cat",
        "/proc/self/cgroup",
    ]);
    let pids_line = out.lines().find(|l| l.contains(":pids:")).unwrap();
    assert!(pids_line.ends_with("/probe"), "{out}");
    let memory_line = out.lines().find(|l| l.contains(":memory:")).unwrap();
    assert!(!memory_line.ends_with("/probe"), "{out}");
    let err = env.fails(&["exec", "--cgroup", "missing", &id, "true"]);
    assert!(err.contains("does not exist"), "{err}");
    let err = env.fails(&["exec", "--cgroup", "../escape", &id, "true"]);
    assert!(err.contains("relative path below"), "{err}");
    // --cap, --no-new-privs, --additional-gids reach the process.
    let out = env.ok(&[
        "exec",
        "--cap",
        "CAP_SYS_ADMIN",
        "--no-new-privs",
        "--additional-gids",
        "4242",
        &id,
        "sh",
        "-c",
        "grep -E 'CapEff|NoNewPrivs|Groups' /proc/self/status",
    ]);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("4242"), "{out}");
    let cap_eff = out
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(cap_eff & (1 << 21), 0, "CAP_SYS_ADMIN added: {out}");
    // --process-label and --apparmor are refused on a host without those
    // LSMs, never ignored.
    for flag in ["--apparmor", "--process-label"] {
        let err = env.fails(&["exec", flag, "some-profile", &id, "true"]);
        assert!(
            err.to_lowercase().contains("not enabled")
                || err.contains("not available")
                || err.contains("SELinux")
                || err.contains("AppArmor"),
            "{flag}: {err}"
        );
    }
    // --preserve-fds passes the caller's descriptors.
    let script = format!(
        "exec 3</etc/hostname; {} --root {} exec --preserve-fds 1 {id} ls /proc/self/fd",
        crate::common::BERTH,
        env.root.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let fds = String::from_utf8_lossy(&out.stdout);
    assert!(fds.split_whitespace().any(|f| f == "3"), "{fds}");
    // --ignore-paused: exec into a paused container.
    env.ok(&["pause", &id]);
    let err = env.fails(&["exec", &id, "true"]);
    assert!(err.contains("paused"), "{err}");
    env.ok(&["exec", "-d", "--ignore-paused", &id, "true"]);
    env.ok(&["resume", &id]);
    env.ok(&["delete", "--force", &id]);
    let _ = std::fs::remove_dir(&sub);
}

#[test]
fn a_failure_after_start_reaches_the_log_in_runcs_format() {
    let env = Env::new("latefail");
    let bundle = env.bundle("b", &["true"], |c| {
        c["hooks"] = json!({"startContainer": [{"path": "/bin/false"}]});
    });
    let id = env.id("c");
    let log = env.dir.join("berth.log");
    for format in ["text", "json"] {
        let _ = std::fs::remove_file(&log);
        let args = |cmd: &str| {
            let mut v = vec!["--log", log.to_str().unwrap(), "--log-format", format, cmd];
            if cmd == "create" {
                v.extend(["--bundle", bundle.to_str().unwrap()]);
            }
            v.push(&id);
            v.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        let create = args("create");
        env.ok(&create.iter().map(String::as_str).collect::<Vec<_>>());
        let start = args("start");
        let _ = env.berth(&start.iter().map(String::as_str).collect::<Vec<_>>());
        env.wait_status(&id, "stopped");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.contains("startContainer"))
            .unwrap_or_else(|| panic!("{format}: no error in the log: {text}"));
        match format {
            "text" => assert!(line.contains("level=error"), "{line}"),
            _ => {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["level"], "error", "{line}");
            }
        }
        env.ok(&["delete", &id]);
    }
}

/// An rshared bind mount of a shared host directory (a CRI
/// "bidirectional" mount) stays in the host's peer group: a mount made
/// inside the container appears on the host. After pivot_root the old
/// root, not the new one, is made a slave before it is detached.
#[test]
fn rshared_bind_mounts_propagate_to_the_host() {
    let env = Env::new("rshared");
    let source = env.dir.join("shared-source");
    std::fs::create_dir_all(&source).unwrap();
    let s = source.to_str().unwrap().to_owned();
    let host = |args: &[&str]| {
        assert!(std::process::Command::new("mount")
            .args(args)
            .status()
            .unwrap()
            .success())
    };
    host(&["--bind", &s, &s]);
    host(&["--make-shared", &s]);
    let out = env.run_ok(
        &env.id("c"),
        &[
            "sh",
            "-c",
            "mkdir -p /bidi/inner && mount -t tmpfs tmpfs /bidi/inner && echo from-inside > /bidi/inner/f && grep ' /bidi ' /proc/self/mountinfo",
        ],
        |c| {
            c["mounts"].as_array_mut().unwrap().push(
                json!({"destination": "/bidi", "type": "bind", "source": s, "options": ["rbind", "rshared"]}),
            );
            c["linux"]["rootfsPropagation"] = json!("rshared");
            c["process"]["capabilities"]["bounding"]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_SYS_ADMIN"));
            c["process"]["capabilities"]["effective"]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_SYS_ADMIN"));
            c["process"]["capabilities"]["permitted"]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_SYS_ADMIN"));
        },
    );
    assert!(!out.contains("master:"), "/bidi became a slave: {out}");
    let inner = source.join("inner");
    let seen = std::fs::read_to_string(inner.join("f"));
    let _ = rustix::mount::unmount(&inner, rustix::mount::UnmountFlags::DETACH);
    let _ = rustix::mount::unmount(&source, rustix::mount::UnmountFlags::DETACH);
    assert_eq!(seen.unwrap().trim(), "from-inside");
}
