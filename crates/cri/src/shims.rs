//! Starting pods' shims and keeping connections to them. berthd talks to
//! every runtime through the shim v2 API: its own shim (berth in-process,
//! or runc/crun/runsc through it) or any other shim v2 binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_shim_client::ShimClient;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, MessageField};
use tokio::io::AsyncWriteExt;

use crate::config::RuntimeHandler;
use crate::error::{Error, Result};

/// The containerd namespace berthd's containers live in (shims key their
/// sockets and state by it).
pub const NAMESPACE: &str = "k8s.io";
pub const SECOND: i64 = 1_000_000_000;

pub struct Shims {
    /// What shims take for containerd's address (berthd's socket).
    address: String,
    /// Directories searched for shim binaries before PATH.
    dirs: Vec<PathBuf>,
    socket_dir: PathBuf,
    state_root: PathBuf,
    clients: Mutex<HashMap<String, ShimClient>>,
}

impl Shims {
    pub fn new(address: &Path, state: &Path, dirs: Vec<PathBuf>) -> Shims {
        let mut dirs = dirs;
        // berthd's own directory: the shim is installed beside it.
        if let Some(d) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            dirs.push(d);
        }
        Shims {
            address: address.display().to_string(),
            dirs,
            socket_dir: state.join("s"),
            state_root: state.join("shim"),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Finds a shim binary by name (or takes a path as is).
    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        if name.contains('/') {
            return if Path::new(name).is_file() {
                Ok(PathBuf::from(name))
            } else {
                Err(Error::FailedPrecondition(format!(
                    "shim binary {name} not found"
                )))
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        self.dirs
            .iter()
            .cloned()
            .chain(std::env::split_paths(&path))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("shim binary {name} not found in PATH"))
            })
    }

    fn command(
        &self,
        binary: &Path,
        id: &str,
        bundle: &Path,
        action: &str,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(["-namespace", NAMESPACE, "-address", &self.address])
            .args(["-publish-binary", "/bin/false", "-id", id])
            .arg(action)
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", format!("{}.ttrpc", self.address))
            .env("BERTH_SHIM_SOCKET_DIR", &self.socket_dir)
            .env("BERTH_SHIM_STATE_ROOT", &self.state_root)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `start`: the address of the shim that serves container `id` (the
    /// shim groups a pod's containers by their sandbox id annotation).
    pub async fn start(&self, handler: &RuntimeHandler, id: &str, bundle: &Path) -> Result<String> {
        let binary = self.binary(&handler.shim_binary()?)?;
        // The shim daemon's stderr (containerd makes this a FIFO it reads).
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(bundle.join("log"));
        let mut child = self
            .command(&binary, id, bundle, "start")
            .spawn()
            .map_err(|e| Error::Shim(format!("running {} start: {e}", binary.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // As containerd 1.6: the runtime options Any, marshalled.
            let opts = runtime_options(handler)
                .write_to_bytes()
                .unwrap_or_default();
            let _ = stdin.write_all(&opts).await;
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .map_err(|_| Error::Shim(format!("{} start did not finish in 30 s", binary.display())))?
            .map_err(|e| Error::Shim(format!("{} start: {e}", binary.display())))?;
        if !out.status.success() {
            let said = [&out.stderr, &out.stdout]
                .iter()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .find(|t| !t.is_empty())
                .unwrap_or_else(|| "it printed nothing".into());
            return Err(Error::Shim(format!(
                "{} start failed ({}): {said}",
                binary.display(),
                out.status
            )));
        }
        let address = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if address.is_empty() {
            return Err(Error::Shim(format!(
                "{} start printed no address",
                binary.display()
            )));
        }
        Ok(address)
    }

    /// `delete`: cleans up after a shim that is gone.
    pub async fn delete(
        &self,
        handler: &RuntimeHandler,
        id: &str,
        bundle: &Path,
    ) -> Result<Option<u32>> {
        let binary = self.binary(&handler.shim_binary()?)?;
        let mut cmd = self.command(&binary, id, bundle, "delete");
        cmd.stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| {
                Error::Shim(format!(
                    "{} delete did not finish in 30 s",
                    binary.display()
                ))
            })?
            .map_err(|e| Error::Shim(format!("{} delete: {e}", binary.display())))?;
        if !out.status.success() {
            return Err(Error::Shim(format!(
                "{} delete failed: {}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(api::DeleteResponse::parse_from_bytes(&out.stdout)
            .ok()
            .map(|r| r.exit_status))
    }

    /// A connection to the shim at `address`, reused while it works.
    pub async fn client(&self, address: &str) -> Result<ShimClient> {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
        {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(Duration::from_secs(10), ShimClient::connect(address))
            .await
            .map_err(|_| Error::Shim(format!("connecting to {address}: timed out")))?
            .map_err(|e| Error::Shim(format!("connecting to {address}: {e}")))?;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_owned(), c.clone());
        Ok(c)
    }

    /// Forgets a connection (after the shim went away or errored).
    pub fn forget(&self, address: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(address);
    }

    /// A call's outcome: a broken connection is dropped so that the next
    /// call reconnects; the shim's status code is kept.
    fn settle<T>(&self, address: &str, what: &str, r: ttrpc::Result<T>) -> Result<T> {
        r.map_err(|e| {
            if !matches!(e, ttrpc::Error::RpcStatus(_)) {
                self.forget(address);
            }
            Error::from_ttrpc(what, e)
        })
    }

    /// Asks a shim to exit (it does once it holds no container).
    pub async fn shutdown(&self, address: &str) {
        if let Err(e) = self
            .shutdown_task(address, &api::ShutdownRequest::new(), 5 * SECOND)
            .await
        {
            tracing::debug!(address, "shim shutdown: {e}");
        }
        self.forget(address);
        remove_stale_socket(address);
    }
}

/// A shim that exits cleanly removes its socket; one that was killed leaves
/// it behind (bench/soak's shim-kill fault): removed here once nothing
/// answers on it, as containerd does after a dead shim.
fn remove_stale_socket(address: &str) {
    let path = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    if path.exists() && socket_refuses(address) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(address, "removing a dead shim's socket: {e}");
        }
    }
}

/// Whether nothing listens on a shim's socket any more (a killed shim; a
/// stopped one still accepts connections).
pub fn socket_refuses(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    std::os::unix::net::UnixStream::connect(path).is_err()
}

/// The options read on Create: berth's own (JSON, with runtime flags) for
/// berth's shim, containerd's runc options for other shims.
pub fn runtime_options(handler: &RuntimeHandler) -> Any {
    let mut any = Any::new();
    if handler.is_vm() {
        any.type_url = berth_shim_client::BERTH_OPTIONS_TYPE.into();
        any.value = serde_json::to_vec(&serde_json::json!({ "vm": handler.vm_options() }))
            .unwrap_or_default();
        return any;
    }
    if handler.is_berth_shim() {
        any.type_url = berth_shim_client::BERTH_OPTIONS_TYPE.into();
        any.value = serde_json::to_vec(&serde_json::json!({
            "binary_name": handler.binary_name.clone().unwrap_or_default(),
            "root": handler.root.clone().unwrap_or_default(),
            "systemd_cgroup": handler.systemd_cgroup,
            "runtime_args": handler.runtime_args,
        }))
        .unwrap_or_default();
        return any;
    }
    let mut o = containerd_shim_protos::shim::oci::Options::new();
    if let Some(b) = &handler.binary_name {
        o.binary_name = b.clone();
    }
    if let Some(r) = &handler.root {
        o.root = r.clone();
    }
    o.systemd_cgroup = handler.systemd_cgroup;
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = o.write_to_bytes().unwrap_or_default();
    any
}

pub fn options_field(handler: &RuntimeHandler) -> MessageField<Any> {
    if !handler.is_vm()
        && handler.binary_name.is_none()
        && handler.root.is_none()
        && !handler.systemd_cgroup
        && handler.runtime_args.is_empty()
    {
        MessageField::none()
    } else {
        MessageField::some(runtime_options(handler))
    }
}

pub fn forget_all(shims: &Arc<Shims>) {
    shims
        .clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

/// The task calls berthd makes, typed, by shim address.
macro_rules! shim_calls {
    ($($name:ident => $client:ident: $req:ty => $resp:ty;)*) => {
        impl Shims {
            $(
                pub async fn $name(&self, address: &str, req: &$req, timeout_ns: i64) -> Result<$resp> {
                    let client = self.client(address).await?;
                    let r = client.$client(req, timeout_ns).await;
                    self.settle(address, stringify!($client), r)
                }
            )*
        }
    };
}

shim_calls! {
    create_task => create: api::CreateTaskRequest => api::CreateTaskResponse;
    start_task => start: api::StartRequest => api::StartResponse;
    kill => kill: api::KillRequest => Empty;
    wait => wait: api::WaitRequest => api::WaitResponse;
    delete_task => delete: api::DeleteRequest => api::DeleteResponse;
    state => state: api::StateRequest => api::StateResponse;
    exec => exec: api::ExecProcessRequest => Empty;
    update => update: api::UpdateTaskRequest => Empty;
    stats => stats: api::StatsRequest => api::StatsResponse;
    pids => pids: api::PidsRequest => api::PidsResponse;
    resize_pty => resize_pty: api::ResizePtyRequest => Empty;
    close_io => close_io: api::CloseIORequest => Empty;
    shutdown_task => shutdown: api::ShutdownRequest => Empty;
}
