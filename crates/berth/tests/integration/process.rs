//! The process object: user, groups, umask, cwd, env, rlimits, capabilities,
//! no_new_privs, oom_score_adj, hostname, domainname, sysctl, terminal.

use serde_json::json;

use crate::common::Env;

#[test]
fn user_groups_umask_cwd_env_home() {
    let env = Env::new("procuser");
    let out = env.run_ok(
        "c",
        &[
            "sh",
            "-c",
            "id -u; id -g; id -G; umask; pwd; echo $FOO; echo $HOME",
        ],
        |c| {
            c["process"]["user"] =
                json!({"uid": 1000, "gid": 1000, "additionalGids": [2000], "umask": 23});
            c["process"]["cwd"] = json!("/work/dir");
            c["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!("FOO=bar baz"));
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "1000",
            "1000",
            "1000 2000",
            "0027",
            "/work/dir",
            "bar baz",
            "/home/user"
        ]
    );
}

#[test]
fn rlimits_capabilities_no_new_privs_oom_score() {
    let env = Env::new("proclimits");
    let out = env.run_ok(
        "c",
        &["sh", "-c", "ulimit -n; ulimit -Hn; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; cat /proc/self/oom_score_adj"],
        |c| {
            c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000}]);
            let caps = json!(["CAP_NET_RAW", "CAP_CHOWN"]);
            c["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": ["CAP_CHOWN"], "ambient": ["CAP_CHOWN"]});
            c["process"]["noNewPrivileges"] = json!(true);
            c["process"]["oomScoreAdj"] = json!(600);
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "512");
    assert_eq!(lines[1], "1000");
    // CAP_CHOWN is bit 0, CAP_NET_RAW bit 13.
    let field = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(field("CapEff"), "0000000000002001");
    assert_eq!(field("CapPrm"), "0000000000002001");
    assert_eq!(field("CapBnd"), "0000000000002001");
    assert_eq!(field("CapInh"), "0000000000000001");
    assert_eq!(field("CapAmb"), "0000000000000001");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(lines.last().unwrap().trim(), "600");
}

#[test]
fn privileges_this_host_lacks_are_clear_errors() {
    // Root here lacks CAP_SYS_RESOURCE: negative oom_score_adj and raising a
    // hard rlimit fail; elsewhere they may succeed. Either way: no leftovers.
    let env = Env::new("procperm");
    let bundle = env.bundle("oom", &["cat", "/proc/self/oom_score_adj"], |c| {
        c["process"]["oomScoreAdj"] = json!(-900)
    });
    let id = env.id("oom");
    let out = env.berth(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    if out.status.success() {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-900");
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("oom_score_adj") && err.contains("CAP_SYS_RESOURCE"),
            "{err}"
        );
    }
    assert!(!env.state_dir_exists(&id));
    let bundle = env.bundle("rl", &["sh", "-c", "ulimit -Hn"], |c| {
        c["process"]["rlimits"] =
            json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1073741816u64}]);
    });
    let id = env.id("rl");
    let out = env.berth(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("RLIMIT_NOFILE") && err.contains("CAP_SYS_RESOURCE"),
            "{err}"
        );
    }
    assert!(!env.state_dir_exists(&id));
}

#[test]
fn hostname_domainname_sysctl() {
    let env = Env::new("procuts");
    let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let out = env.run_ok(
        "c",
        &["sh", "-c", "hostname; cat /proc/sys/kernel/domainname; cat /proc/sys/net/ipv4/ip_forward; cat /proc/sys/kernel/shmmni"],
        |c| {
            c["hostname"] = json!("web-1");
            c["domainname"] = json!("example.org");
            let flip = if host_forward.trim() == "1" { "0" } else { "1" };
            c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": flip, "kernel.shmmni": "1234"});
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "web-1");
    assert_eq!(lines[1], "example.org");
    assert_ne!(lines[2], host_forward.trim());
    assert_eq!(lines[3], "1234");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forward,
        "host untouched"
    );

    let bundle = env.bundle("bad", &["true"], |c| {
        c["linux"]["sysctl"] = json!({"vm.swappiness": "10"});
    });
    let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id("bad")]);
    assert!(err.contains("vm.swappiness"), "{err}");
}

#[test]
fn terminal_through_the_console_socket() {
    let env = Env::new("tty");
    let sock_path = env.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let bundle = env.bundle(
        "b",
        &["sh", "-c", "tty; stty size; echo term-ok; sleep 0.2"],
        |c| {
            c["process"]["terminal"] = json!(true);
            c["process"]["consoleSize"] = json!({"height": 40, "width": 123});
        },
    );
    let id = env.id("c");
    let receiver = std::thread::spawn(move || crate::common::receive_console(&listener));
    env.ok(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--console-socket",
        sock_path.to_str().unwrap(),
        &id,
    ]);
    let (name, master) = receiver.join().unwrap();
    assert!(name.starts_with("/dev/pts/"), "{name}");
    env.ok(&["start", &id]);
    let text = crate::common::read_until(&master, "term-ok");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("40 123"), "{text}");
    env.wait_status(&id, "stopped");
    env.ok(&["delete", &id]);

    // A terminal without a console socket cannot be detached.
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("console-socket"), "{err}");
    assert!(!env.state_dir_exists(&id));
}
