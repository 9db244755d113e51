//! The testkit's private containerd 1.6 with its CRI plugin enabled
//! ([`CriContainerd`]; its handler `runc`, with its state root in the
//! test's directory), for driving the real `berthctl` binary against a
//! real CRI server.
//!
//! Everything it makes lives in one directory under /tmp (root, state,
//! socket, runc's state, CNI config dir, pod logs, config files) or in
//! one cgroup parent (`/berthctl-test-<pid>-<n>`, set as every pod's
//! `cgroup_parent`). Drop removes pods and containers through berthctl,
//! then the testkit's cleanup runs: it stops containerd, kills its shims
//! and anything left in the cgroup parent, removes the cgroups, unmounts
//! what is mounted in the directory, removes the shim sockets it made and
//! the /run/containerd paths that did not exist before.

use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::cgroups::pids_under;
use berth_testkit::cmd::{run_in, tail, Outcome, QUICK};
use berth_testkit::containerd::cri::{CriContainerd, CriSetup, Runtime};

/// The berthctl binary cargo built for these tests.
pub const BERTHCTL: &str = env!("CARGO_BIN_EXE_berthctl");

/// The image the tests run (`:pause` of its repository is the pods'
/// sandbox process).
pub const BUSYBOX: &str = "localhost/berthctl-test/busybox:latest";

/// The containerd of one test; derefs to the testkit's [`CriContainerd`].
pub struct Cri(CriContainerd);

impl Deref for Cri {
    type Target = CriContainerd;

    fn deref(&self) -> &CriContainerd {
        &self.0
    }
}

impl DerefMut for Cri {
    fn deref_mut(&mut self) -> &mut CriContainerd {
        &mut self.0
    }
}

impl Cri {
    /// Starts containerd with the CRI plugin and imports the test images.
    pub fn start() -> Cri {
        Cri(CriSetup {
            prefix: "berthctl",
            cgroup_prefix: "berthctl-test",
            image_repo: BUSYBOX.strip_suffix(":latest").unwrap(),
            runtimes: vec![Runtime {
                name: "runc",
                binary: None,
                root: "runc".into(),
            }],
            default_runtime: None,
            subdirs: &["configs"],
            label: "berthctl",
        }
        .start())
    }

    /// Runs berthctl against this containerd.
    pub fn berthctl(&self, args: &[&str]) -> Outcome {
        self.berthctl_timeout(args, QUICK)
    }

    pub fn berthctl_timeout(&self, args: &[&str], timeout: Duration) -> Outcome {
        run_in(&self.dir.path, &mut self.berthctl_cmd(args), timeout)
    }

    pub fn berthctl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BERTHCTL);
        cmd.env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .arg("-r")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    /// Runs berthctl and panics (with containerd's log) unless it exits 0.
    pub fn ok(&self, args: &[&str]) -> Outcome {
        let out = self.berthctl(args);
        assert!(
            out.success(),
            "{}\n--- containerd log (tail) ---\n{}",
            out.describe(),
            tail(&self.log, 30)
        );
        out
    }

    /// Writes a config file in the test's directory; returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> String {
        let path = self.dir.join("configs").join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// A host-network pod config in crictl's style: snake_case, enum
    /// numbers, only some fields.
    pub fn pod_config(&self, name: &str) -> String {
        let text = format!(
            r#"{{
  "metadata": {{"name": "{name}", "namespace": "berthctl-test", "uid": "uid-{name}", "attempt": 1}},
  "log_directory": "{logs}",
  "labels": {{"app": "{name}", "suite": "berthctl"}},
  "annotations": {{"berth.test/annotation": "yes"}},
  "linux": {{
    "cgroup_parent": "{cg}",
    "security_context": {{"namespace_options": {{"network": 2}}}}
  }}
}}"#,
            logs = self.logs.display(),
            cg = self.cgroup_parent,
        );
        self.write_config(&format!("pod-{name}.json"), &text)
    }

    /// A container config (YAML, as crictl also takes) running `script`.
    pub fn container_config(&self, name: &str, script: &str) -> String {
        let text = format!(
            "metadata:\n  name: {name}\nimage:\n  image: {BUSYBOX}\ncommand:\n  - sh\n  - -c\n  - {script:?}\nlog_path: {name}.log\nlabels:\n  io.kubernetes.pod.name: owner\nlinux: {{}}\n"
        );
        self.write_config(&format!("ctr-{name}.yaml"), &text)
    }

    /// Starts a pod; returns its id.
    pub fn runp(&self, name: &str) -> String {
        let config = self.pod_config(name);
        let out = self.ok(&["runp", &config]);
        let id = out.stdout.trim().to_owned();
        assert_eq!(id.len(), 64, "runp printed no pod id: {}", out.describe());
        id
    }

    /// Creates and starts a container running `script` in pod `pod`.
    pub fn run_container(&self, pod: &str, pod_name: &str, name: &str, script: &str) -> String {
        let cfg = self.container_config(name, script);
        let pod_cfg = self.pod_config(pod_name);
        let out = self.ok(&["create", pod, &cfg, &pod_cfg]);
        let id = out.stdout.trim().to_owned();
        assert_eq!(id.len(), 64, "create printed no id: {}", out.describe());
        let out = self.ok(&["start", &id]);
        assert_eq!(out.stdout.trim(), id);
        id
    }

    /// The container's state as `inspect` shows it (CONTAINER_RUNNING, ...).
    pub fn container_state(&self, id: &str) -> String {
        let out = self.ok(&["inspect", "-q", id]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["status"]["state"].as_str().unwrap_or_default().to_owned()
    }

    /// Polls until container `id` is in `state`.
    pub fn wait_container_state(&self, id: &str, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.container_state(id);
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} is {now}, not {state}, after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// After a test: nothing left running in containerd, no container
    /// state in runc's root, the cgroup parent empty of processes.
    pub fn assert_clean(&self) {
        let pods = self.ok(&["pods", "-q"]).stdout;
        assert!(pods.trim().is_empty(), "pods left: {pods}");
        let ctrs = self.ok(&["ps", "-a", "-q"]).stdout;
        assert!(ctrs.trim().is_empty(), "containers left: {ctrs}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ids = self.runtime_ids("runc");
            let procs = pids_under(&self.cgroup_parent);
            if ids.is_empty() && procs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "runc state left {ids:?}, processes left in {}: {procs:?}",
                self.cgroup_parent
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        if self.0.alive() {
            // As a user would: through the CRI.
            for args in [["rm", "-a", "-f"], ["rmp", "-a", "-f"]] {
                let out = self.berthctl(&args);
                if !out.success() {
                    eprintln!("berthctl cleanup: {}", out.describe());
                }
            }
        }
        // The testkit's CriContainerd (dropped next) does the rest.
    }
}
