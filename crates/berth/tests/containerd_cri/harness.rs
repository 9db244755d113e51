//! A private containerd 1.6 with its CRI plugin, whose runtime handlers
//! are containerd's own runc v2 shim (`io.containerd.runc.v2`) with
//! `BinaryName` set: `berth` (the binary cargo built) and `runc` (Debian's),
//! each with its own state root. A small synchronous CRI client drives it.
//!
//! Everything it makes lives in one directory under /tmp (containerd's
//! root and state, its socket, both runtimes' roots, pod logs) or in one
//! cgroup parent, every pod's `cgroup_parent`. Drop stops and removes the
//! pods left through the CRI, stops containerd, kills its shims (their
//! command lines name its socket), force-deletes what either runtime still
//! has, kills and removes the cgroups, unmounts what is mounted in the
//! directory and removes the shim sockets and /run/containerd paths it made.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::support::*;

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The two tags of the test image: a shell, and the pods' sandbox process.
pub const BUSYBOX: &str = "localhost/berth-cri-test/busybox:latest";
pub const PAUSE: &str = "localhost/berth-cri-test/busybox:pause";

/// containerd 1.6 puts shim sockets here whatever its config says.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// A request taking longer than this is reported as hung.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// One private containerd at a time (they share /run/containerd/s).
static SERIAL: Mutex<()> = Mutex::new(());

/// The runtime handlers: (name, binary).
pub fn handlers() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("berth", PathBuf::from(BERTH)),
        (
            "runc",
            find_tool("runc", &["/usr/sbin/runc"]).expect("runc (Debian package runc)"),
        ),
    ]
}

pub struct Cri {
    daemon: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub cgroup_parent: String,
    pub logs: PathBuf,
    client: Option<Client>,
    shim_sockets_before: HashSet<OsString>,
    created: Vec<CreatedPath>,
    _serial: MutexGuard<'static, ()>,
}

impl Cri {
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
        let dir = TempDir::new("berth-cri");
        let d = dir.path.display().to_string();
        for sub in ["cni", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let mut runtimes = String::new();
        for (name, bin) in handlers() {
            runtimes.push_str(&format!(
                r#"  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
      BinaryName = "{bin}"
      Root = "{d}/{name}-root"
"#,
                bin = bin.display()
            ));
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
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "berth"
{runtimes}"#
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut cri = Cri {
            daemon: None,
            socket: dir.join("c.sock"),
            log: dir.join("containerd.log"),
            cgroup_parent: format!("/{}", unique("berth-cri-test")),
            logs: dir.join("logs"),
            client: None,
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
            if self.socket.exists() {
                if let Ok(client) = Client::connect(&self.socket) {
                    if client.version().is_ok() {
                        self.client = Some(client);
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI plugin did not answer within 30 s; its log:\n{}",
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("containerd is running")
    }

    fn ctr(&self, args: &[&str]) -> Outcome {
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

    fn import_images(&self) {
        let archive = build_images(&self.dir.join("image"));
        let out = self.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(out.success(), "ctr images import: {}", out.describe());
        let _ = std::fs::remove_dir_all(self.dir.join("image"));
    }

    /// A runtime's state root for the CRI's namespace.
    pub fn runtime_root(&self, handler: &str) -> PathBuf {
        self.dir.join(format!("{handler}-root/k8s.io"))
    }

    pub fn runtime_ids(&self, handler: &str) -> Vec<String> {
        std::fs::read_dir(self.runtime_root(handler))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The shims serving this containerd.
    pub fn shims(&self) -> Vec<(i32, String)> {
        processes_mentioning(&self.socket.display().to_string())
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("containerd-shim"))
            .collect()
    }

    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let uid = format!("uid-{name}");
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "berth-cri-test".into(),
                uid: uid.clone(),
                attempt: 0,
            }),
            log_directory: self
                .logs
                .join(format!("berth-cri-test_{name}_{uid}"))
                .display()
                .to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The tail of containerd's log, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!("--- containerd log (tail) ---\n{}", tail(&self.log, 40))
    }
}

fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        let alive = matches!(self.daemon.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        if let (true, Some(client)) = (alive, &self.client) {
            // As the kubelet would: through the CRI.
            if let Ok(pods) = client.list_pods() {
                for pod in pods {
                    if let Err(e) = client.stop_pod(&pod) {
                        eprintln!("containerd_cri cleanup: StopPodSandbox {pod}: {e}");
                    }
                    if let Err(e) = client.remove_pod(&pod) {
                        eprintln!("containerd_cri cleanup: RemovePodSandbox {pod}: {e}");
                    }
                }
            }
        }
        self.client = None;
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
        let shims = kill_processes_mentioning(&self.socket.display().to_string());
        if !shims.is_empty() {
            eprintln!("containerd_cri cleanup: killed leftover shim(s) {shims:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        for (name, bin) in handlers() {
            for id in self.runtime_ids(name) {
                eprintln!("containerd_cri cleanup: {name} state left for {id}");
                let _ = run_in(
                    &self.dir.path,
                    Command::new(&bin)
                        .arg("--root")
                        .arg(self.runtime_root(name))
                        .args(["delete", "--force", &id]),
                    QUICK,
                );
            }
        }
        let left = remove_cgroup_tree(&self.cgroup_parent);
        if !left.is_empty() {
            eprintln!("containerd_cri cleanup: cgroups that could not be removed: {left:?}");
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
    }
}

/// A synchronous CRI runtime-service client on a current-thread runtime.
pub struct Client {
    rt: tokio::runtime::Runtime,
    rs: RuntimeServiceClient<Channel>,
}

/// A failed request: its gRPC code and message, or that it hung.
pub type RpcError = String;

impl Client {
    pub fn connect(socket: &Path) -> Result<Client, RpcError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    })),
            )
            .map_err(|e| format!("connecting: {e}"))?;
        Ok(Client {
            rt,
            rs: RuntimeServiceClient::new(channel),
        })
    }

    /// Runs one request with RPC_TIMEOUT.
    fn call<T, F>(&self, what: &str, f: F) -> Result<T, RpcError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self
            .rt
            .block_on(async { tokio::time::timeout(RPC_TIMEOUT, f).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(format!("{what}: {:?}: {}", s.code(), s.message())),
            Err(_) => Err(format!("{what}: no answer within {RPC_TIMEOUT:?} (hung)")),
        }
    }

    pub fn version(&self) -> Result<String, RpcError> {
        let mut rs = self.rs.clone();
        self.call("Version", async move {
            rs.version(cri::VersionRequest::default()).await
        })
        .map(|v| v.runtime_version)
    }

    pub fn run_pod(
        &self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.call(
            "RunPodSandbox",
            async move { rs.run_pod_sandbox(req).await },
        )
        .map(|r| r.pod_sandbox_id)
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: &cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> Result<String, RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        self.call(
            "CreateContainer",
            async move { rs.create_container(req).await },
        )
        .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.call(
            "StartContainer",
            async move { rs.start_container(req).await },
        )
        .map(drop)
    }

    /// The container's state, exit code and reason (OOMKilled, Completed, Error).
    pub fn container_exit(&self, id: &str) -> Result<(cri::ContainerState, i32, String), RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call(
            "ContainerStatus",
            async move { rs.container_status(req).await },
        )
        .map(|r| {
            let s = r.status.unwrap_or_default();
            (
                cri::ContainerState::try_from(s.state)
                    .unwrap_or(cri::ContainerState::ContainerUnknown),
                s.exit_code,
                s.reason,
            )
        })
    }

    pub fn container_state(&self, id: &str) -> Result<(cri::ContainerState, i32), RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call(
            "ContainerStatus",
            async move { rs.container_status(req).await },
        )
        .map(|r| {
            let s = r.status.unwrap_or_default();
            (
                cri::ContainerState::try_from(s.state)
                    .unwrap_or(cri::ContainerState::ContainerUnknown),
                s.exit_code,
            )
        })
    }

    /// The sandbox's pid (from the verbose status's info).
    pub fn pod_pid(&self, id: &str) -> Result<i32, RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let r = self.call("PodSandboxStatus", async move {
            rs.pod_sandbox_status(req).await
        })?;
        let info = r.info.get("info").cloned().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&info).map_err(|e| e.to_string())?;
        v["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| format!("no pid in {info}"))
    }

    /// The container's init pid (from the verbose status's info).
    pub fn container_pid(&self, id: &str) -> Result<i32, RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let r = self.call(
            "ContainerStatus",
            async move { rs.container_status(req).await },
        )?;
        let info = r.info.get("info").cloned().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&info).map_err(|e| e.to_string())?;
        v["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| format!("no pid in {info}"))
    }

    /// The pod's state: SANDBOX_READY or SANDBOX_NOTREADY.
    pub fn pod_state(&self, id: &str) -> Result<cri::PodSandboxState, RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        let r = self.call("PodSandboxStatus", async move {
            rs.pod_sandbox_status(req).await
        })?;
        Ok(
            cri::PodSandboxState::try_from(r.status.unwrap_or_default().state)
                .unwrap_or(cri::PodSandboxState::SandboxNotready),
        )
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<(i32, String, String), RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        self.call("ExecSync", async move { rs.exec_sync(req).await })
            .map(|r| {
                (
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout).into_owned(),
                    String::from_utf8_lossy(&r.stderr).into_owned(),
                )
            })
    }

    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.call("StopContainer", async move { rs.stop_container(req).await })
            .map(drop)
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(
            "StopPodSandbox",
            async move { rs.stop_pod_sandbox(req).await },
        )
        .map(drop)
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", async move {
            rs.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    pub fn list_pods(&self) -> Result<Vec<String>, RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::ListPodSandboxRequest::default();
        self.call(
            "ListPodSandbox",
            async move { rs.list_pod_sandbox(req).await },
        )
        .map(|r| r.items.into_iter().map(|p| p.id).collect())
    }
}

/// An OCI layout holding a static busybox under two tags, `latest` (a
/// shell) and `pause` (the sandbox process: a sleep that lasts until the
/// pod is stopped), packed as an oci-archive for `ctr images import`.
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

    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap()
            .to_owned();
        m["annotations"]["org.opencontainers.image.ref.name"] =
            serde_json::json!(format!("localhost/berth-cri-test/busybox:{tag}"));
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

/// The cgroup directories below `rel` (the containers' own), in any hierarchy.
pub fn cgroups_below(rel: &str) -> Vec<PathBuf> {
    cgroup_dirs(rel)
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .collect()
}
