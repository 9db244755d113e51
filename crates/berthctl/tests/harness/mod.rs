//! A private containerd 1.6 with its CRI plugin enabled, for driving the
//! real `berthctl` binary against a real CRI server.
//!
//! Everything it makes lives in one directory under /tmp (root, state,
//! socket, runc's state, CNI config dir, pod logs, config files) or in
//! one cgroup parent (`/berthctl-test-<pid>-<n>`, set as every pod's
//! `cgroup_parent`). Drop removes pods and containers through berthctl,
//! stops containerd, kills its shims and anything left in the cgroup
//! parent, removes the cgroups, unmounts what is mounted in the directory,
//! removes the shim sockets it made and the /run/containerd paths that did
//! not exist before. The generic pieces (temporary directories, running
//! commands, mounts, cgroups, the busybox check) are berth's drop-in test
//! support, included by path.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::support::*;

/// The berthctl binary cargo built for these tests.
pub const BERTHCTL: &str = env!("CARGO_BIN_EXE_berthctl");

/// The images the tests import (one layout, two tags).
pub const BUSYBOX: &str = "localhost/berthctl-test/busybox:latest";
pub const PAUSE: &str = "localhost/berthctl-test/busybox:pause";

/// containerd 1.6 puts shim sockets here whatever its config says.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// One private containerd at a time: they share /run/containerd/s, and the
/// machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Cri {
    daemon: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The cgroup parent of every pod the tests make (e.g. "/berthctl-test-1-2").
    pub cgroup_parent: String,
    /// Pod log directory.
    pub logs: PathBuf,
    shim_sockets_before: HashSet<OsString>,
    created: Vec<CreatedPath>,
    _serial: MutexGuard<'static, ()>,
}

impl Cri {
    /// Starts containerd with the CRI plugin and imports the test images.
    pub fn start() -> Cri {
        let serial = lock(&SERIAL);
        require_root();
        require_tools(&[
            ("containerd", &[], "containerd"),
            ("ctr", &[], "containerd"),
            ("containerd-shim-runc-v2", &[], "containerd"),
            ("runc", &["/usr/sbin/runc"], "runc"),
            ("umoci", &[], "umoci"),
            ("tar", &[], "tar"),
        ]);
        let created = [
            SHIM_SOCKET_DIR,
            "/run/containerd/fifo",
            "/run/containerd/runc",
            "/run/containerd",
        ]
        .into_iter()
        .map(CreatedPath::watch)
        .collect();
        let shim_sockets_before = std::fs::read_dir(SHIM_SOCKET_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let dir = TempDir::new("berthctl");
        let d = dir.path.display().to_string();
        for sub in ["cni", "logs", "configs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{d}/runc"
"#
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut cri = Cri {
            daemon: None,
            socket: dir.join("c.sock"),
            log: dir.join("containerd.log"),
            cgroup_parent: format!("/{}", unique("berthctl-test")),
            logs: dir.join("logs"),
            shim_sockets_before,
            created,
            dir,
            _serial: serial,
        };
        cri.spawn_daemon();
        cri.import_images();
        cri
    }

    fn spawn_daemon(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "containerd exited ({status}) while starting; its log:\n{}",
                    tail(&self.log, 40)
                );
            }
            if self.socket.exists() && self.berthctl(&["version"]).success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI plugin did not answer within 30 s; its log:\n{}",
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs containerd, as a crash would: its shims and containers
    /// live on, for Drop to find.
    pub fn kill_daemon(&mut self) {
        let mut daemon = self.daemon.take().expect("containerd is running");
        daemon.kill().expect("SIGKILL to containerd");
        daemon.wait().expect("reaping containerd");
    }

    pub fn ctr(&self, args: &[&str]) -> Outcome {
        run_in(
            &self.dir.path,
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["-n", "k8s.io"])
                .args(args),
            SLOW,
        )
    }

    /// Builds the busybox layout (tags `latest`: `sh`, `pause`: a long
    /// sleep, the pods' sandbox process) and imports it into k8s.io.
    fn import_images(&self) {
        let archive = build_images(&self.dir.join("image"));
        let out = self.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(out.success(), "ctr images import: {}", out.describe());
        let _ = std::fs::remove_dir_all(self.dir.join("image"));
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

    /// Container ids the runtime still has state for (runc's root).
    fn runc_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("runc/k8s.io"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
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
            let ids = self.runc_ids();
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
        let alive = matches!(self.daemon.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        if alive {
            // As a user would: through the CRI.
            for args in [["rm", "-a", "-f"], ["rmp", "-a", "-f"]] {
                let out = self.berthctl(&args);
                if !out.success() {
                    eprintln!("berthctl cleanup: {}", out.describe());
                }
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Shims outlive containerd; their command lines name our socket.
        let shims = kill_processes_mentioning(&self.socket.display().to_string());
        if !shims.is_empty() {
            eprintln!("berthctl cleanup: killed leftover shim(s) {shims:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Containers the shims left: their processes are in our cgroup
        // parent (killed with it); their runc state is in our directory.
        for id in self.runc_ids() {
            eprintln!("berthctl cleanup: runc state left for {id}");
            let _ = run_in(
                &self.dir.path,
                Command::new("runc")
                    .arg("--root")
                    .arg(self.dir.join("runc/k8s.io"))
                    .args(["delete", "--force", &id]),
                QUICK,
            );
        }
        let left = remove_cgroup_tree(&self.cgroup_parent);
        if !left.is_empty() {
            eprintln!("berthctl cleanup: cgroups that could not be removed: {left:?}");
        }
        unmount_under(&self.dir.path);
        for e in std::fs::read_dir(SHIM_SOCKET_DIR)
            .into_iter()
            .flatten()
            .flatten()
        {
            if !self.shim_sockets_before.contains(&e.file_name())
                && std::os::unix::net::UnixStream::connect(e.path()).is_err()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for p in &self.created {
            p.remove_if_created();
        }
        // self.dir (TempDir) unmounts and removes the directory when dropped.
    }
}

/// An OCI layout holding a static busybox under two tags, packed as an
/// oci-archive named for `ctr images import`.
fn build_images(dir: &Path) -> PathBuf {
    let busybox = require_static_busybox();
    std::fs::create_dir_all(dir).unwrap();
    let rootfs = dir.join("rootfs");
    for d in [
        "bin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    let list = run_ok(
        dir,
        Command::new(&busybox).arg("--list"),
        Duration::from_secs(10),
    );
    for applet in list.stdout.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();

    let layout = dir.join("layout");
    let latest = format!("{}:latest", layout.display());
    let t = Duration::from_secs(120);
    let umoci = |args: &[&str]| {
        run_ok(dir, Command::new("umoci").args(args), t);
    };
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &latest]);
    umoci(&["insert", "--image", &latest, rootfs.to_str().unwrap(), "/"]);
    umoci(&[
        "config",
        "--image",
        &latest,
        "--config.cmd",
        "sh",
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.workingdir",
        "/",
    ]);
    // The sandbox ("pause") process: sleeps until the pod is stopped.
    umoci(&[
        "config",
        "--image",
        &latest,
        "--tag",
        "pause",
        "--config.cmd",
        "sleep",
        "--config.cmd",
        "2147483647",
    ]);
    umoci(&["gc", "--layout", layout.to_str().unwrap()]);

    // Full references, as `skopeo copy ... oci-archive:FILE:REF` writes them.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap()
            .to_owned();
        m["annotations"]["org.opencontainers.image.ref.name"] =
            serde_json::json!(format!("localhost/berthctl-test/busybox:{tag}"));
    }
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let archive = dir.join("images.tar");
    run_ok(
        dir,
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
        t,
    );
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&layout);
    archive
}

/// Every pid in cgroup `rel` or below it, in any hierarchy.
pub fn pids_under(rel: &str) -> Vec<i32> {
    fn walk(dir: &Path, out: &mut Vec<i32>) {
        for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse() {
                if !out.contains(&pid) {
                    out.push(pid);
                }
            }
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    for d in cgroup_dirs(rel) {
        walk(&d, &mut out);
    }
    out
}
