//! A private world for driving containerd-shim-berth-v2 through its ttrpc
//! API as a client would: its own socket and state directories, an events
//! server standing in for containerd's, busybox bundles, and a Drop that
//! removes every shim, container, cgroup and file the test made.

// Each test binary uses a different subset of these helpers and re-exports.
#![allow(dead_code, unused_imports)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_shim::client::ShimClient;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Events};
use serde_json::{json, Value};
use ttrpc::r#async::{Server, TtrpcContext};

pub use berth_testkit::cgroups::{cgroup_dirs, remove_cgroup_tree};
pub use berth_testkit::mounts::unmount_under;
pub use berth_testkit::names::unique;
pub use berth_testkit::procs::alive;
use berth_testkit::procs::kill_processes_mentioning;
/// The live processes' pids.
pub use berth_testkit::procs::pids_mentioning as processes_mentioning;
pub use berth_testkit::rootfs::{busybox_bundle, make_busybox_rootfs};
pub use berth_testkit::tools::require_root;

pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-berth-v2");
pub const SECOND: i64 = 1_000_000_000;

/// A recorded event: topic and decoded payload type.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub topic: String,
    pub event: Any,
    pub namespace: String,
}

#[derive(Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<Recorded>>>);

impl EventLog {
    pub fn topics(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.topic.clone())
            .collect()
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until an event with `topic` for which `pred` holds arrives.
    pub async fn wait_for(
        &self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Any) -> bool,
    ) -> Recorded {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.topic == topic && pred(&r.event))
            {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {topic} event within {timeout:?}; got {:?}",
                self.topics()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Recorder(EventLog);

#[async_trait]
impl Events for Recorder {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope.unwrap_or_default();
        self.0 .0.lock().unwrap().push(Recorded {
            topic: env.topic.clone(),
            event: env.event.unwrap_or_default(),
            namespace: env.namespace.clone(),
        });
        Ok(Empty::new())
    }
}

/// One test's world.
pub struct World {
    pub dir: PathBuf,
    pub namespace: String,
    /// What the shim believes is containerd's address (it only hashes it).
    pub address: String,
    pub socket_dir: PathBuf,
    pub state_root: PathBuf,
    pub events_socket: PathBuf,
    pub events: EventLog,
    /// Parent of every container cgroup of this world.
    pub cgroup_parent: String,
    server: Option<Server>,
}

impl World {
    pub async fn new(name: &str) -> World {
        require_root();
        let name = unique(name);
        let dir = PathBuf::from("/tmp").join(format!("bst-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let events_socket = dir.join("events.sock");
        let events = EventLog::default();
        let service = create_events(Arc::new(Recorder(events.clone())));
        let mut server = Server::new()
            .bind(&format!("unix://{}", events_socket.display()))
            .unwrap()
            .register_service(service);
        server.start().await.unwrap();
        World {
            address: dir.join("containerd.sock").display().to_string(),
            socket_dir: dir.join("s"),
            state_root: dir.join("state"),
            events_socket,
            events,
            namespace: format!("ns-{name}"),
            cgroup_parent: format!("/berth-shim-test-{name}"),
            server: Some(server),
            dir,
        }
    }

    /// A bundle with a busybox rootfs running `args`, its config changed by `edit`.
    pub fn bundle(&self, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let config = berth_runtime::features::default_spec(false);
        let cgroups_path = format!("{}/{name}", self.cgroup_parent);
        busybox_bundle(&self.dir.join(name), config, args, |config| {
            config["linux"]["cgroupsPath"] = json!(cgroups_path);
            edit(config);
        })
    }

    fn shim_command(&self, id: &str, bundle: &Path, action: &str) -> Command {
        let mut cmd = Command::new(SHIM);
        cmd.args(["-namespace", &self.namespace, "-address", &self.address])
            .args(["-publish-binary", "/bin/false", "-id", id, "-bundle"])
            .arg(bundle)
            .arg(action)
            .env("BERTH_SHIM_SOCKET_DIR", &self.socket_dir)
            .env("BERTH_SHIM_STATE_ROOT", &self.state_root)
            .env("TTRPC_ADDRESS", &self.events_socket)
            .current_dir(bundle)
            .stdin(Stdio::null());
        cmd
    }

    /// `containerd-shim-berth-v2 start`: the address of the shim for `id`.
    pub fn start_shim(&self, id: &str, bundle: &Path) -> String {
        let out = self
            .shim_command(id, bundle, "start")
            .output()
            .expect("running the shim's start");
        assert!(
            out.status.success(),
            "shim start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let address = String::from_utf8(out.stdout).unwrap();
        assert!(address.starts_with("unix://"), "{address}");
        // `start` returns once the daemon's exec has passed the point of no
        // return, but the kernel sets the new command line a little later,
        // and the daemon then execs itself again from a sealed copy of the
        // binary (with the same window): wait until it runs from that copy
        // with its command line, so that counting shims by command line is
        // exact.
        let daemon = std::fs::read_to_string(bundle.join("shim.pid")).unwrap_or_default();
        let binary = std::fs::metadata(SHIM).map(|m| (m.dev(), m.ino())).ok();
        // (No shim.pid: `start` found the pod's running shim.)
        let settled = || {
            let sealed = daemon.trim().is_empty() || {
                let exe = std::fs::metadata(format!("/proc/{}/exe", daemon.trim()))
                    .map(|m| (m.dev(), m.ino()))
                    .ok();
                exe.is_some() && exe != binary
            };
            sealed && !self.shim_pids().is_empty()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !settled() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        address
    }

    /// `containerd-shim-berth-v2 delete`: the DeleteResponse it prints.
    pub fn delete_shim(&self, id: &str, bundle: &Path) -> api::DeleteResponse {
        let out = self
            .shim_command(id, bundle, "delete")
            .output()
            .expect("running the shim's delete");
        assert!(
            out.status.success(),
            "shim delete failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        api::DeleteResponse::parse_from_bytes(&out.stdout).unwrap()
    }

    pub async fn connect(&self, address: &str) -> ShimClient {
        ShimClient::connect(address).await.unwrap()
    }

    /// Starts (or finds) the shim for a bundle and connects to it.
    pub async fn shim_for(&self, id: &str, bundle: &Path) -> ShimClient {
        let address = self.start_shim(id, bundle);
        self.connect(&address).await
    }

    /// The berth state directory of a container run by the shim.
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.state_root.join(&self.namespace).join(id)
    }

    /// The v1 memory cgroup directory of a container of this world.
    pub fn memory_cgroup(&self, name: &str) -> PathBuf {
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(self.cgroup_parent.trim_start_matches('/'))
            .join(name)
    }

    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs(&self.cgroup_parent)
    }

    /// Shim daemons of this world still alive.
    pub fn shim_pids(&self) -> Vec<i32> {
        processes_mentioning(&self.address)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // Best effort: the runtime may already be shutting down.
            drop(server);
        }
        // The shims this test started name its address.
        kill_processes_mentioning(&self.address);
        remove_cgroup_tree(&self.cgroup_parent);
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Task options naming an OCI runtime binary for the shim to drive.
pub fn runtime_options(binary: &str, root: &Path) -> MessageField<Any> {
    let mut o = containerd_shim_protos::shim::oci::Options::new();
    o.binary_name = binary.to_owned();
    o.root = root.display().to_string();
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = o.write_to_bytes().unwrap();
    MessageField::some(any)
}

pub fn create_request(
    id: &str,
    bundle: &Path,
    stdout: &str,
    stderr: &str,
) -> api::CreateTaskRequest {
    let mut r = api::CreateTaskRequest::new();
    r.id = id.to_owned();
    r.bundle = bundle.display().to_string();
    r.stdout = stdout.to_owned();
    r.stderr = stderr.to_owned();
    r
}

pub fn process_spec(args: &[&str], terminal: bool) -> MessageField<Any> {
    let mut p = berth_runtime::features::default_spec(false)["process"].clone();
    p["args"] = json!(args);
    p["terminal"] = json!(terminal);
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = serde_json::to_vec(&p).unwrap();
    MessageField::some(any)
}

pub fn req_id<R: Default>(f: impl FnOnce(&mut R)) -> R {
    let mut r = R::default();
    f(&mut r);
    r
}

/// A ttrpc error's status code and message.
pub fn rpc_error<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected an RPC error status, got {other:?}"),
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes a FIFO and opens it for reading without blocking; the test reads
/// what the shim writes to it.
pub fn fifo_reader(path: &Path) -> std::fs::File {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo {}", path.display());
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// Reads a non-blocking FIFO until `marker` shows up (or `timeout`).
pub fn read_fifo_until(f: &mut std::fs::File, marker: &str, timeout: Duration) -> String {
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.contains(marker) || Instant::now() >= deadline {
            return text;
        }
    }
}
