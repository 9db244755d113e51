//! Bad input: each gets a clear error, a non-zero exit, and leaves no state
//! directory, cgroup, mount or process behind.

use serde_json::json;

use crate::common::{cgroup_dirs_of, Env};

fn assert_nothing_left(env: &Env, id: &str) {
    assert!(!env.state_dir_exists(id), "state of {id} left behind");
    for dir in cgroup_dirs_of(id) {
        assert!(!dir.exists(), "{dir:?} left behind");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(env.dir.to_str().unwrap()),
        "mounts left under {:?}",
        env.dir
    );
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.contains(id) && !l.contains("ps -eo")),
        "process of {id} left"
    );
}

#[test]
fn missing_and_malformed_config() {
    let env = Env::new("badconfig");
    let id = env.id("c");
    let empty = env.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = env.fails(&["create", "--bundle", empty.to_str().unwrap(), &id]);
    assert!(err.contains("config.json"), "{err}");
    assert_nothing_left(&env, &id);

    let bundle = env.bundle("b", &["true"], |_| {});
    std::fs::write(
        bundle.join("config.json"),
        "{\"ociVersion\": \"1.0.2\", \"process\": ",
    )
    .unwrap();
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("config.json") && err.contains("line"), "{err}");
    assert_nothing_left(&env, &id);

    for (edit, expect) in [
        (json!({"ociVersion": "2.0.0"}), "ociVersion"),
        (
            json!({"root": {"path": "nonexistent-rootfs"}}),
            "nonexistent-rootfs",
        ),
        (
            json!({"process": {"cwd": "relative", "args": ["true"], "user": {"uid": 0, "gid": 0}}}),
            "cwd",
        ),
        (
            json!({"process": {"cwd": "/", "args": [], "user": {"uid": 0, "gid": 0}}}),
            "process.args",
        ),
    ] {
        let bundle = env.bundle("e", &["true"], |c| {
            for (k, v) in edit.as_object().unwrap() {
                c[k] = v.clone();
            }
        });
        let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert_nothing_left(&env, &id);
    }
    // A hostname needs a UTS namespace (new or joined), never the host's.
    let bundle = env.bundle("h", &["true"], |c| {
        c["hostname"] = json!("not-the-host");
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "uts");
    });
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("hostname") && err.contains("UTS"), "{err}");
    assert_nothing_left(&env, &id);
    // Older 1.x configs are accepted.
    for version in ["1.0.0", "1.0.2-dev", "1.1.0", "1.2.1", "1.3.0"] {
        env.run_ok(&format!("v{}", version.replace('.', "")), &["true"], |c| {
            c["ociVersion"] = json!(version)
        });
    }
}

#[test]
fn duplicate_and_invalid_ids() {
    let env = Env::new("badid");
    let bundle = env.bundle("b", &["sleep", "60"], |_| {});
    let id = env.id("c");
    env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    let pid = env.state(&id)["pid"].clone();
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        env.state(&id)["pid"],
        pid,
        "the first container is untouched"
    );
    assert_eq!(env.state(&id)["status"], "created");
    env.ok(&["delete", &id]);

    for bad in ["a/b", "..", "has space", "x;y", ""] {
        let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), bad]);
        assert!(
            err.contains("invalid container id") || err.contains("required"),
            "{bad:?}: {err}"
        );
    }
    assert!(std::fs::read_dir(&env.root).map(|d| d.count()).unwrap_or(0) == 0);
}

#[test]
fn unknown_ids() {
    let env = Env::new("unknownid");
    for args in [
        vec!["state", "nope"],
        vec!["start", "nope"],
        vec!["kill", "nope", "KILL"],
        vec!["delete", "nope"],
        vec!["exec", "nope", "true"],
    ] {
        let err = env.fails(&args);
        assert!(
            err.contains("level=error") && err.contains("container does not exist"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn missing_binary_fails_at_create() {
    let env = Env::new("nobinary");
    let bundle = env.bundle("b", &["/no/such/program"], |_| {});
    let id = env.id("c");
    let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(
        err.contains("/no/such/program") && err.contains("no such file"),
        "{err}"
    );
    assert_nothing_left(&env, &id);
    let bundle = env.bundle("b2", &["no-such-program"], |_| {});
    let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    assert_nothing_left(&env, &id);
}

#[test]
fn bad_mounts() {
    let env = Env::new("badmount");
    let id = env.id("c");
    for (mount, expect) in [
        (
            json!({"destination": "/x", "type": "bind", "source": "/no/such/source", "options": ["bind"]}),
            "/no/such/source",
        ),
        (
            json!({"destination": "/proc/sys", "type": "tmpfs", "source": "tmpfs"}),
            "/proc",
        ),
        (
            json!({"destination": "/y", "type": "nosuchfs", "source": "none"}),
            "nosuchfs",
        ),
    ] {
        let bundle = env.bundle("b", &["true"], |c| {
            c["mounts"].as_array_mut().unwrap().push(mount.clone())
        });
        let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert_nothing_left(&env, &id);
    }
}
