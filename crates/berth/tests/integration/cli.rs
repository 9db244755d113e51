//! runc's command-line conventions: global flags, logs containerd reads,
//! spec, features, version.

use serde_json::Value;

use crate::common::{Env, BERTH};

#[test]
fn json_log_carries_the_error_for_containerd() {
    let env = Env::new("jsonlog");
    let log = env.dir.join("log.json");
    let out = std::process::Command::new(BERTH)
        .args([
            "--root",
            env.root.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "ghost",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // As runc: the bare message on stderr, the logrus line in the file.
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "container does not exist"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(last["msg"], "container does not exist");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));

    // Text format, global flags in --flag=value form.
    let log = env.dir.join("log.txt");
    let out = std::process::Command::new(BERTH)
        .args([
            &format!("--root={}", env.root.display()),
            &format!("--log={}", log.display()),
            "delete",
            "ghost",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("level=error") && text.contains("container does not exist"),
        "{text}"
    );
}

#[test]
fn spec_features_version() {
    let env = Env::new("spec");
    let dir = env.dir.join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    env.ok(&["spec", "--bundle", dir.to_str().unwrap()]);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
    assert_eq!(spec["process"]["args"][0], "sh");
    let err = env.fails(&["spec", "-b", dir.to_str().unwrap()]);
    assert!(err.contains("exists"), "{err}");
    let rootless = env.dir.join("rootless");
    std::fs::create_dir_all(&rootless).unwrap();
    env.ok(&["spec", "--rootless", "--bundle", rootless.to_str().unwrap()]);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(rootless.join("config.json")).unwrap()).unwrap();
    assert!(spec["linux"]["uidMappings"].is_array());

    let features: Value = serde_json::from_str(&env.ok(&["features"])).unwrap();
    assert_eq!(features["ociVersionMin"], "1.0.0");
    assert!(features["ociVersionMax"]
        .as_str()
        .unwrap()
        .starts_with("1."));
    let hooks: Vec<&str> = features["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(
        hooks,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ]
    );
    assert!(features["mountOptions"]
        .as_array()
        .unwrap()
        .contains(&Value::from("rbind")));
    assert!(features["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&Value::from("user")));

    let out = std::process::Command::new(BERTH)
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("berth version ") && text.contains("spec: 1."),
        "{text}"
    );
    let out = std::process::Command::new(BERTH)
        .args(["bogus"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "runc's code for an unknown command"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("No help topic for 'bogus'"));
    let out = std::process::Command::new(BERTH)
        .args(["state", "--nope", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-nope"));
}

#[test]
fn systemd_cgroup_driver_without_systemd_is_a_clear_error() {
    if std::path::Path::new("/run/systemd/system").exists() {
        return;
    }
    let env = Env::new("systemd");
    let bundle = env.bundle("b", &["true"], |c| {
        c["linux"]["cgroupsPath"] = serde_json::json!("system.slice:berth:x")
    });
    let id = env.id("c");
    let out = std::process::Command::new(BERTH)
        .args([
            "--root",
            env.root.to_str().unwrap(),
            "--systemd-cgroup",
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            &id,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("systemd is not running"), "{err}");
    assert!(!env.state_dir_exists(&id));
}
