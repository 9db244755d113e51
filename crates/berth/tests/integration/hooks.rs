//! Lifecycle hooks: every kind, in order, with the state on stdin, and
//! timeouts and failures that stop creation cleanly.

use serde_json::{json, Value};

use crate::common::Env;

/// A hook that appends "<kind> <state JSON>" to `log` (a path valid where
/// the hook runs).
fn recorder(kind: &str, log: &str) -> Value {
    json!({"path": "/bin/sh", "args": ["sh", "-c", format!("printf '{kind} ' >> {log}; cat >> {log}; echo >> {log}")]})
}

#[test]
fn every_hook_runs_in_order_with_the_state() {
    let env = Env::new("hooks");
    let log = env.dir.join("hooks.log");
    let log_s = log.to_str().unwrap().to_owned();
    let bundle = env.bundle("b", &["true"], |c| {
        c["hooks"] = json!({
            "prestart": [recorder("prestart", &log_s)],
            "createRuntime": [recorder("createRuntime", &log_s)],
            "createContainer": [recorder("createContainer", &log_s)],
            // startContainer runs inside the container, after pivot_root.
            "startContainer": [recorder("startContainer", "/start.log")],
            "poststart": [recorder("poststart", &log_s)],
            "poststop": [recorder("poststop", &log_s)],
        });
        c["annotations"] = json!({"k": "v"});
        c["root"]["readonly"] = json!(false);
    });
    let id = env.id("c");
    env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    env.ok(&["start", &id]);
    env.wait_status(&id, "stopped");
    env.ok(&["delete", &id]);

    let text = std::fs::read_to_string(&log).unwrap();
    let entries: Vec<(&str, Value)> = text
        .lines()
        .map(|l| {
            let (kind, json) = l.split_once(' ').unwrap();
            (kind, serde_json::from_str(json).unwrap())
        })
        .collect();
    let kinds: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        vec![
            "prestart",
            "createRuntime",
            "createContainer",
            "poststart",
            "poststop"
        ]
    );
    for (kind, state) in &entries {
        assert_eq!(state["id"], id.as_str(), "{kind}");
        assert_eq!(state["bundle"], bundle.to_str().unwrap(), "{kind}");
        assert_eq!(state["annotations"]["k"], "v", "{kind}");
        assert!(state["ociVersion"].as_str().unwrap().starts_with("1."));
    }
    assert_eq!(entries[0].1["status"], "creating");
    assert_eq!(entries[0].1["pid"], pid);
    assert_eq!(entries[2].1["pid"], pid);
    assert_eq!(entries[3].1["status"], "running");
    assert_eq!(entries[4].1["status"], "stopped");
    let inside = std::fs::read_to_string(bundle.join("rootfs/start.log")).unwrap();
    let (kind, state) = inside.trim().split_once(' ').unwrap();
    assert_eq!(kind, "startContainer");
    let state: Value = serde_json::from_str(state).unwrap();
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid);
}

#[test]
fn failing_and_slow_hooks_stop_creation_cleanly() {
    let env = Env::new("hookfail");
    let bundle = env.bundle("fail", &["true"], |c| {
        c["hooks"] =
            json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]});
    });
    let id = env.id("fail");
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("createRuntime") && err.contains("3"), "{err}");
    assert!(!env.state_dir_exists(&id));

    let bundle = env.bundle("slow", &["true"], |c| {
        c["hooks"] = json!({"createContainer": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]});
    });
    let id = env.id("slow");
    let started = std::time::Instant::now();
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(err.contains("timed out"), "{err}");
    assert!(!env.state_dir_exists(&id));
    for dir in crate::common::cgroup_dirs_of(&id) {
        assert!(!dir.exists(), "{dir:?} left behind");
    }
}
