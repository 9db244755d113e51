//! A private containerd 1.6 with its CRI plugin, whose runtime handlers
//! are containerd's own runc v2 shim (`io.containerd.runc.v2`), each with
//! its own state root in the directory and, if given, its own `BinaryName`
//! (e.g. the `berth` binary cargo built). Two busybox images are imported
//! into `k8s.io`: `<repo>:latest` (a shell) and `<repo>:pause`, the pods'
//! sandbox process. A small synchronous CRI [`Client`] drives it.
//!
//! Everything it makes lives in one directory under /tmp (containerd's
//! root and state, its socket, the runtimes' roots, pod logs) or in one
//! cgroup parent, for every pod's `cgroup_parent`. Drop stops and removes
//! the pods left through the CRI, stops containerd, kills its shims (their
//! command lines name its socket), force-deletes what any runtime still
//! has, kills and removes the cgroups, unmounts what is mounted in the
//! directory and removes the shim sockets and /run/containerd paths it made.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{Daemon, DaemonSetup};
use crate::cmd::{run_in, tail, Outcome, QUICK, SLOW};
use crate::names::unique;
use crate::rootfs::busybox_oci_archive;

/// A request taking longer than this is reported as hung.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// One runtime handler: containerd-shim-runc-v2 running `binary`.
pub struct Runtime {
    /// The handler's name (a pod's `runtime_handler`).
    pub name: &'static str,
    /// The OCI runtime binary (`BinaryName`); None: runc, from PATH.
    pub binary: Option<PathBuf>,
    /// The runtime's state root, relative to the directory.
    pub root: String,
}

/// What differs between users of [`CriContainerd`].
pub struct CriSetup {
    /// Prefix of the temporary directory.
    pub prefix: &'static str,
    /// Prefix of the pods' cgroup parent (`/<prefix>-<pid>-<n>`).
    pub cgroup_prefix: &'static str,
    /// The images' repository: `<repo>:latest` and `<repo>:pause`.
    pub image_repo: &'static str,
    pub runtimes: Vec<Runtime>,
    /// The CRI's default handler, if not containerd's (`runc`).
    pub default_runtime: Option<&'static str>,
    /// Subdirectories to make besides `cni` and `logs`.
    pub subdirs: &'static [&'static str],
    /// Who cleans up, in cleanup messages.
    pub label: &'static str,
}

/// A private containerd with its CRI plugin and the test images. Derefs to
/// its [`Daemon`] (`dir`, `socket`, `log`, ...).
pub struct CriContainerd {
    /// The cgroup parent of every pod the tests make (e.g. "/berth-cri-test-1-2").
    pub cgroup_parent: String,
    /// Pod log directory.
    pub logs: PathBuf,
    runtimes: Vec<Runtime>,
    client: Option<Client>,
    daemon: Daemon,
}

impl Deref for CriContainerd {
    type Target = Daemon;

    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for CriContainerd {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl CriSetup {
    /// Starts containerd with the CRI plugin and imports the test images.
    pub fn start(self) -> CriContainerd {
        CriContainerd::start(self)
    }
}

impl CriContainerd {
    fn start(setup: CriSetup) -> CriContainerd {
        crate::tools::require_root();
        let runtime_paths = ["/run/containerd/runc"];
        let mut subdirs = vec!["cni", "logs"];
        subdirs.extend(setup.subdirs);
        let daemon = Daemon::new(
            DaemonSetup {
                prefix: setup.prefix,
                tools: &[
                    ("containerd-shim-runc-v2", &[], "containerd"),
                    ("runc", &["/usr/sbin/runc"], "runc"),
                ],
                runtime_paths: &runtime_paths,
                cri: true,
                path_prepend: &[],
                subdirs: &subdirs,
                label: setup.label,
            },
            |d| cri_config(d, &setup),
        );
        let mut cri = CriContainerd {
            cgroup_parent: format!("/{}", unique(setup.cgroup_prefix)),
            logs: daemon.dir.join("logs"),
            runtimes: setup.runtimes,
            client: None,
            daemon,
        };
        let client = &mut cri.client;
        cri.daemon.spawn("containerd's CRI plugin", |d| {
            match Client::connect(&d.socket) {
                Ok(c) if c.version().is_ok() => {
                    *client = Some(c);
                    true
                }
                _ => false,
            }
        });
        cri.import_images(setup.image_repo);
        cri
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("containerd is running")
    }

    /// SIGKILLs containerd, as a crash would: its shims and containers
    /// live on, for Drop to find.
    pub fn kill_daemon(&mut self) {
        self.client = None;
        self.daemon.kill_daemon();
    }

    /// `ctr -n k8s.io ARGS...` against this containerd.
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

    /// Builds the busybox images (`latest`: `sh`, `pause`: a long sleep)
    /// and imports them into k8s.io.
    fn import_images(&self, repo: &str) {
        let archive = busybox_oci_archive(&self.dir.join("image"), repo, true);
        let out = self.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(out.success(), "ctr images import: {}", out.describe());
        let _ = std::fs::remove_dir_all(self.dir.join("image"));
    }

    /// A runtime's state root for the CRI's namespace.
    pub fn runtime_root(&self, handler: &str) -> PathBuf {
        let runtime = self
            .runtimes
            .iter()
            .find(|r| r.name == handler)
            .unwrap_or_else(|| panic!("no runtime handler {handler}"));
        self.dir.join(&runtime.root).join("k8s.io")
    }

    /// The containers a runtime still has state for.
    pub fn runtime_ids(&self, handler: &str) -> Vec<String> {
        std::fs::read_dir(self.runtime_root(handler))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The tail of containerd's log, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!("--- containerd log (tail) ---\n{}", tail(&self.log, 40))
    }
}

/// The CRI plugin's section of the config.
fn cri_config(d: &str, setup: &CriSetup) -> String {
    let pause = format!("{}:pause", setup.image_repo);
    let mut text = format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#
    );
    if let Some(default) = setup.default_runtime {
        text.push_str(&format!(
            r#"  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "{default}"
"#
        ));
    }
    for r in &setup.runtimes {
        let name = r.name;
        text.push_str(&format!(
            r#"  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
"#
        ));
        if let Some(bin) = &r.binary {
            text.push_str(&format!("      BinaryName = \"{}\"\n", bin.display()));
        }
        text.push_str(&format!("      Root = \"{d}/{}\"\n", r.root));
    }
    text
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        let label = self.daemon.label;
        if let (true, Some(client)) = (self.daemon.alive(), &self.client) {
            // As the kubelet would: through the CRI.
            if let Ok(pods) = client.list_pods() {
                for pod in pods {
                    if let Err(e) = client.stop_pod(&pod) {
                        eprintln!("{label} cleanup: StopPodSandbox {pod}: {e}");
                    }
                    if let Err(e) = client.remove_pod(&pod) {
                        eprintln!("{label} cleanup: RemovePodSandbox {pod}: {e}");
                    }
                }
            }
        }
        self.client = None;
        self.daemon.stop_and_kill_shims();
        // Containers the shims left: their processes are in our cgroup
        // parent (killed with it); their state is in our directory.
        for r in &self.runtimes {
            for id in self.runtime_ids(r.name) {
                eprintln!("{label} cleanup: {} state left for {id}", r.name);
                let bin = r.binary.as_deref().unwrap_or(Path::new("runc"));
                let _ = run_in(
                    &self.dir.path,
                    Command::new(bin)
                        .arg("--root")
                        .arg(self.runtime_root(r.name))
                        .args(["delete", "--force", &id]),
                    QUICK,
                );
            }
        }
        self.daemon.remove_cgroups(&self.cgroup_parent);
        // The daemon (dropped next) unmounts, removes the shim sockets,
        // the paths it created and the directory.
    }
}

/// A synchronous CRI runtime-service client on a current-thread runtime.
pub struct Client {
    rt: tokio::runtime::Runtime,
    rs: RuntimeServiceClient<Channel>,
}

/// A failed request: its gRPC code and message, or that it hung.
pub type RpcError = String;

/// A gRPC channel to the server on unix socket `socket` (a CRI server:
/// containerd, berthd).
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .expect("a valid placeholder URI")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// The `pid` in a verbose status's `info` JSON.
fn info_pid(info: &std::collections::HashMap<String, String>) -> Result<i32, RpcError> {
    let info = info.get("info").cloned().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&info).map_err(|e| e.to_string())?;
    v["pid"]
        .as_i64()
        .map(|p| p as i32)
        .ok_or_else(|| format!("no pid in {info}"))
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Client, RpcError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = rt
            .block_on(unix_channel(socket))
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
    /// ContainerStatus, verbose or not.
    fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose,
        };
        self.call(
            "ContainerStatus",
            async move { rs.container_status(req).await },
        )
    }

    pub fn container_exit(&self, id: &str) -> Result<(cri::ContainerState, i32, String), RpcError> {
        let s = self.container_status(id, false)?.status.unwrap_or_default();
        Ok((
            cri::ContainerState::try_from(s.state).unwrap_or(cri::ContainerState::ContainerUnknown),
            s.exit_code,
            s.reason,
        ))
    }

    pub fn container_state(&self, id: &str) -> Result<(cri::ContainerState, i32), RpcError> {
        self.container_exit(id)
            .map(|(state, code, _reason)| (state, code))
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
        info_pid(&r.info)
    }

    /// The container's init pid (from the verbose status's info).
    pub fn container_pid(&self, id: &str) -> Result<i32, RpcError> {
        info_pid(&self.container_status(id, true)?.info)
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

    /// Exec, streaming, without a tty: the URL to upgrade at.
    pub fn exec_url(&self, id: &str, cmd: &[&str], stdin: bool) -> Result<String, RpcError> {
        let mut rs = self.rs.clone();
        let req = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: true,
        };
        self.call("Exec", async move { rs.exec(req).await })
            .map(|r| r.url)
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
