//! Namespaces: new ones, user namespace mappings, time offsets, and joining
//! existing namespaces by path (what pods need).

use serde_json::json;

use crate::common::Env;

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn new_namespaces_are_private() {
    let env = Env::new("nsnew");
    let out = env.run_ok(
        "c",
        &[
            "sh",
            "-c",
            "echo pid=$$; hostname; ls /sys/class/net; for n in ipc net uts mnt cgroup pid; do readlink /proc/self/ns/$n; done; cat /proc/self/cgroup",
        ],
        |c| c["hostname"] = json!("box1"),
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pid=1"));
    assert_eq!(lines.next(), Some("box1"));
    assert_eq!(
        lines.next(),
        Some("lo"),
        "a new network namespace has only lo: {out}"
    );
    for kind in ["ipc", "net", "uts", "mnt", "cgroup", "pid"] {
        let inside = lines.next().unwrap();
        assert!(inside.starts_with(kind), "{inside}");
        assert_ne!(inside, host_ns(kind), "{kind} namespace must be new");
    }
    // With a cgroup namespace the container sees itself at its cgroup root.
    for line in lines {
        assert!(
            line.ends_with(":/"),
            "cgroup line {line:?} should be the namespace root"
        );
    }
}

#[test]
fn user_namespace_maps_ids() {
    let env = Env::new("nsuser");
    let out = env.run_ok(
        "c",
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u; readlink /proc/self/ns/user; cat /dev/custom-null && echo devnode-ok",
        ],
        |c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.push(json!({"type": "user"}));
            // Device nodes cannot be made in a user namespace: the host's is bound.
            c["linux"]["devices"] = json!([{"path": "/dev/custom-null", "type": "c", "major": 1, "minor": 3}]);
            c["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            c["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        },
    );
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], vec!["0", "100000", "65536"]);
    assert_eq!(lines[1], vec!["0", "100000", "65536"]);
    assert_eq!(lines[2], vec!["0"]);
    assert_ne!(lines[3][0], host_ns("user"));
    assert_eq!(lines[4], vec!["devnode-ok"]);
}

#[test]
fn time_namespace_offsets() {
    let env = Env::new("nstime");
    let out = env.run_ok("c", &["cat", "/proc/uptime"], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] =
            json!({"boottime": {"secs": 864000, "nanosecs": 0}, "monotonic": {"secs": 86400}});
    });
    let uptime: f64 = out.split_whitespace().next().unwrap().parse().unwrap();
    let host: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uptime > host + 863000.0,
        "boottime offset not applied: container {uptime} host {host}"
    );
}

#[test]
fn joining_namespaces_by_path() {
    let env = Env::new("nsjoin");
    let pod = env.bundle("pod", &["sleep", "60"], |c| {
        c["hostname"] = json!("podhost")
    });
    let pod_id = env.id("pod");
    env.ok(&["run", "-d", "--bundle", pod.to_str().unwrap(), &pod_id]);
    let pid = env.state(&pod_id)["pid"].as_i64().unwrap();
    let ns_of = |kind: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };

    let out = env.run_ok(
        "member",
        &["sh", "-c", "for n in net uts ipc pid; do readlink /proc/self/ns/$n; done; hostname; ps -o comm | grep -c sleep"],
        |c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| !matches!(n["type"].as_str(), Some("network" | "uts" | "ipc" | "pid")));
            for (kind, file) in [("network", "net"), ("uts", "uts"), ("ipc", "ipc"), ("pid", "pid")] {
                ns.push(json!({"type": kind, "path": format!("/proc/{pid}/ns/{file}")}));
            }
            c.as_object_mut().unwrap().remove("hostname");
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], ns_of("net"));
    assert_eq!(lines[1], ns_of("uts"));
    assert_eq!(lines[2], ns_of("ipc"));
    assert_eq!(lines[3], ns_of("pid"));
    assert_eq!(lines[4], "podhost");
    assert_eq!(
        lines[5], "1",
        "the pod's sleep is visible in the shared pid namespace"
    );

    // As runc: a hostname with a joined UTS namespace is set in that namespace.
    let out = env.run_ok("renamer", &["hostname"], |c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "uts");
        ns.push(json!({"type": "uts", "path": format!("/proc/{pid}/ns/uts")}));
        c["hostname"] = json!("renamed");
    });
    assert_eq!(out.trim(), "renamed");
    let pod_hostname = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&pod_hostname.stdout).trim(),
        "renamed",
        "set in the shared namespace"
    );
    env.ok(&["delete", "--force", &pod_id]);
}

#[test]
fn bad_namespace_paths_are_refused() {
    let env = Env::new("nsbad");
    let bundle = env.bundle("b", &["true"], |c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(json!({"type": "network", "path": "/proc/self/ns/uts"}));
    });
    let id = env.id("c");
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("not a net namespace"), "{err}");
    assert!(!env.state_dir_exists(&id));
    let bundle = env.bundle("b2", &["true"], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "ipc", "path": "/nonexistent/ns"}));
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| !(n["type"] == "ipc" && n.get("path").is_none()));
    });
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("/nonexistent/ns"), "{err}");
    assert!(!env.state_dir_exists(&id));
}

#[test]
fn joining_a_user_namespace_while_creating_others() {
    // Kubernetes pods with user namespaces: containers join the pod's user
    // and network namespaces and create their own pid and mount namespaces,
    // which must then belong to the pod's user namespace.
    let env = Env::new("nsuserjoin");
    let userns = |c: &mut serde_json::Value| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    };
    let pod = env.bundle("pod", &["sleep", "60"], userns);
    let pod_id = env.id("pod");
    env.ok(&["run", "-d", "--bundle", pod.to_str().unwrap(), &pod_id]);
    let pid = env.state(&pod_id)["pid"].as_i64().unwrap();
    let out = env.run_ok(
        "member",
        &["sh", "-c", "echo $$; cat /proc/self/uid_map; readlink /proc/self/ns/user; readlink /proc/self/ns/net; id -u; touch /tmp/x && echo can-write"],
        |c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| n["type"] != "network");
            ns.push(json!({"type": "user", "path": format!("/proc/{pid}/ns/user")}));
            ns.push(json!({"type": "network", "path": format!("/proc/{pid}/ns/net")}));
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
            // sysfs of a network namespace owned by another user namespace cannot be mounted.
            c["mounts"].as_array_mut().unwrap().retain(|m| m["destination"] != "/sys/fs/cgroup");
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "a new pid namespace: {out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        vec!["0", "200000", "65536"]
    );
    assert_eq!(
        lines[2],
        std::fs::read_link(format!("/proc/{pid}/ns/user"))
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(
        lines[3],
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(lines[4], "0");
    assert_eq!(lines[5], "can-write");

    // A member that names the joined namespace's mappings (as a CRI daemon
    // does for id-mapped mounts), created and started in two steps: its
    // mapped root opens the exec FIFO in berth's state directory.
    let join = |c: &mut serde_json::Value, uid_host: u32| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(json!({"type": "user", "path": format!("/proc/{pid}/ns/user")}));
        ns.push(json!({"type": "network", "path": format!("/proc/{pid}/ns/net")}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": uid_host, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["destination"] != "/sys/fs/cgroup");
    };
    let mapped = env.bundle("mapped", &["sleep", "60"], |c| join(c, 200000));
    let mapped_id = env.id("mapped");
    env.ok(&["create", "--bundle", mapped.to_str().unwrap(), &mapped_id]);
    env.ok(&["start", &mapped_id]);
    assert_eq!(env.state(&mapped_id)["status"], "running");
    env.ok(&["delete", "--force", &mapped_id]);

    // Mappings that are not the joined namespace's are refused by name.
    let wrong = env.bundle("wrong", &["true"], |c| join(c, 300000));
    let err = env.fails(&["run", "--bundle", wrong.to_str().unwrap(), &env.id("wrong")]);
    assert!(
        err.contains("not the mappings of the joined user namespace"),
        "{err}"
    );
    env.ok(&["delete", "--force", &pod_id]);
}
