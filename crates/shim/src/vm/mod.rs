//! The `vm` runtime class (`containerd-shim-berth-vm-v2`): a pod's
//! containers run in one microVM that the shim boots for the pod
//! (berth-vm) and owns for the pod's lifetime; the guest's agent creates
//! them with berth. The task service is the shim's usual one; this module
//! is the backend it calls for such containers.
//!
//! - The VM is booted by the pod's first Create: the sandbox's (CRI), whose
//!   task is then the VM itself (QEMU's pid; killing it stops the VM), or
//!   a lone container's (`ctr run`), which runs in it.
//! - A container's root (the snapshot the client mounted on the host) is
//!   shared read-write into the guest with virtio-fs, so its writes land
//!   where the client expects them; bind mounts (CRI volumes, the pod's
//!   hosts and resolv.conf) are shared too, read-only where asked.
//! - Stdio: the guest's streams are relayed into the fds the task service
//!   prepared, so FIFOs, CRI logs and attach work as for other containers.
//! - Exits come from the agent (WaitProcess); a VM that dies ends every
//!   container in it (exit 255) and the sandbox task.
//!
//! The task service is synchronous and single-threaded; the VM's clients
//! are async, so they run on a runtime of their own ([`block_on`]).

mod stdio;

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_runtime::ProcessIo;
use berth_vm::network::PodNetwork;
use berth_vm::{
    AgentClient, CreateContainerRequest, ExecProcessRequest, RunCommandRequest, Vm, VmConfig,
    VmError,
};
use oci_spec::runtime::{LinuxResources, Process};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::backend::ExitWaiter;
use crate::error::{Context, Result, ShimError};
use stdio::relay_stdio;

mod memory_volume;

/// How long one agent call may take (berth in the guest runs under TCG here).
const CALL: Duration = Duration::from_secs(60);
/// How long a command the shim runs in the guest (sysctl, mkdir) may take.
const GUEST_COMMAND: Duration = Duration::from_secs(10);
/// A long poll (output, exits) asks again after this long.
const POLL: Duration = Duration::from_secs(3600);
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The exit status of a container whose VM ended under it.
pub const VM_GONE_STATUS: u32 = 255;
/// The agent's berth state root in the guest.
const GUEST_STATE_ROOT: &str = "/run/berth/state";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// What a pod's VM is made of: berth's runtime options (`vm`, from
/// berthd's `[runtimes.<name>]`), else these defaults.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmOptions {
    /// Holds `vmlinux` and `initramfs.cpio` (scripts/build-guest).
    pub guest_dir: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    pub qemu: PathBuf,
    pub vcpus: u32,
    /// Guest RAM beyond the pod's memory limit.
    pub memory_mib: u64,
    pub boot_timeout_secs: u64,
    /// Under TCG, QEMU's translation cache, MiB (0: QEMU's default).
    pub tcg_cache_mib: u32,
}

impl Default for VmOptions {
    fn default() -> VmOptions {
        VmOptions {
            guest_dir: std::env::var_os("BERTH_VM_GUEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/berth/vm")),
            kernel: None,
            initramfs: None,
            qemu: PathBuf::from("qemu-system-x86_64"),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_secs: 60,
            // bench/vm-pod-start here: 16 MiB holds a pod's host memory
            // beyond guest RAM to ~36 MiB (QEMU's default: ~82 MiB) for
            // ~0.6 s more to a ready pod.
            tcg_cache_mib: 16,
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("berth-vm")
            .enable_all()
            .build()
            .expect("starting the VM runtime")
    })
}

/// Runs `fut` on the VM runtime and blocks this thread until it is done.
fn block_on<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("a task of the VM runtime vanished")
}

/// The VM directory of a pod: short (QEMU's sockets live there) and
/// unique per namespace and pod.
pub fn vm_dir(namespace: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{namespace}\0{group}").as_bytes());
    PathBuf::from("/run/berth/vm").join(hex::encode(&digest[..8]))
}

/// Ends what is left of a pod's VM whose shim died.
pub fn cleanup_pod(namespace: &str, group: &str) {
    cleanup_leftover(&vm_dir(namespace, group));
}

fn cleanup_leftover(dir: &Path) {
    if dir.exists() {
        Vm::cleanup(dir);
    }
}

/// A spec's path: absolute, or relative to the bundle.
fn in_bundle(bundle: &Path, path: &str) -> PathBuf {
    if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        bundle.join(path)
    }
}

/// The network namespace path the spec joins, if any.
fn netns_path(spec: &Value) -> Option<PathBuf> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The pod's network to carry into the guest: its namespace's eth0 (CNI's
/// interface); none when the namespace has only loopback.
fn pod_network(spec: &Value) -> Result<Option<PodNetwork>> {
    let Some(netns) = netns_path(spec) else {
        return Ok(None);
    };
    let has_eth0 = berth_vm::network::in_netns(&netns, || {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(|e| VmError::Network(format!("reading the namespace's interfaces: {e}")))?;
        Ok(dev.lines().any(|l| l.trim_start().starts_with("eth0:")))
    })?;
    Ok(has_eth0.then(|| PodNetwork {
        netns,
        interface: "eth0".into(),
    }))
}

/// The pod's memory limit (the sandbox's resources), in MiB.
fn pod_memory_mib(spec: &Value) -> u64 {
    spec["linux"]["resources"]["memory"]["limit"]
        .as_i64()
        .filter(|l| *l > 0)
        .map_or(0, |l| (l as u64).div_ceil(1 << 20))
}

/// The pod's CPU limit (quota / period), in whole CPUs, rounded up.
fn pod_cpus(spec: &Value) -> u32 {
    let cpu = &spec["linux"]["resources"]["cpu"];
    match (cpu["quota"].as_i64(), cpu["period"].as_u64()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q as u64).div_ceil(p) as u32,
        _ => 0,
    }
}

fn read_spec(bundle: &Path) -> Result<Value> {
    let raw = std::fs::read(bundle.join("config.json"))
        .context(|| format!("reading {}/config.json", bundle.display()))?;
    serde_json::from_slice(&raw)
        .map_err(|e| ShimError::InvalidArgument(format!("{}/config.json: {e}", bundle.display())))
}

/// A pod's VM, shared by the backends of its containers.
pub struct VmPod {
    dir: PathBuf,
    vm: tokio::sync::Mutex<Option<Vm>>,
    agent: AgentClient,
    exited: tokio::sync::watch::Receiver<bool>,
    pid: i32,
    /// The container whose task is the VM's: the sandbox, or the lone
    /// container of a pod without one.
    owner: String,
    /// The owner is a sandbox, not run in the guest.
    owner_is_sandbox: bool,
    /// The VM was stopped on purpose (the sandbox was killed).
    stopping: AtomicBool,
}

impl VmPod {
    /// Boots the pod's VM for its first container (`id`).
    pub fn boot(
        namespace: &str,
        group: &str,
        id: &str,
        bundle: &Path,
        options: &VmOptions,
    ) -> Result<Arc<VmPod>> {
        let spec = read_spec(bundle)?;
        let dir = vm_dir(namespace, group);
        // What a shim that died left behind.
        cleanup_leftover(&dir);
        if let Some(parent) = dir.parent() {
            // The VMs' sockets reach their agents (root in the guest).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .context(|| format!("creating {}", parent.display()))?;
        }
        let kernel = options
            .kernel
            .clone()
            .unwrap_or_else(|| options.guest_dir.join("vmlinux"));
        let initramfs = options
            .initramfs
            .clone()
            .unwrap_or_else(|| options.guest_dir.join("initramfs.cpio"));
        let mut config = VmConfig::new(id, dir.clone(), kernel, initramfs);
        config.qemu = options.qemu.clone();
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        config.vcpus = (options.vcpus.max(pod_cpus(&spec))).clamp(1, host_cpus);
        config.memory_mib = options.memory_mib + pod_memory_mib(&spec);
        config.boot_timeout = Duration::from_secs(options.boot_timeout_secs.max(1));
        config.network = pod_network(&spec)?;
        config.netns = netns_path(&spec);
        config.tcg_cache_mib = (options.tcg_cache_mib > 0).then_some(options.tcg_cache_mib);
        let hostname = spec["hostname"].as_str().unwrap_or_default().to_owned();
        let sysctls = guest_sysctls(&spec)?;
        let vm = block_on(async move {
            let vm = Vm::boot(config).await?;
            vm.agent().setup_guest(&hostname, CALL).await?;
            vm.mount_shared(CALL).await?;
            for (key, value) in sysctls {
                set_guest_sysctl(vm.agent(), &key, &value).await?;
            }
            Ok::<Vm, VmError>(vm)
        })?;
        log::info!(
            "pod {group}: VM {} booted in {:?}",
            vm.pid(),
            vm.boot_time()
        );
        Ok(Arc::new(VmPod {
            dir,
            agent: vm.agent().clone(),
            exited: vm.exited(),
            pid: vm.pid(),
            vm: tokio::sync::Mutex::new(Some(vm)),
            owner: id.to_owned(),
            owner_is_sandbox: is_sandbox(&spec),
            stopping: AtomicBool::new(false),
        }))
    }

    pub fn is_running(&self) -> bool {
        !*self.exited.borrow()
    }

    /// Stops the VM (if it still runs) and frees what it held.
    pub fn stop(self: &Arc<Self>) {
        self.stopping.store(true, Ordering::Relaxed);
        let pod = Arc::clone(self);
        block_on(async move {
            if let Some(vm) = pod.vm.lock().await.take() {
                vm.stop(STOP_GRACE).await;
            }
            Vm::cleanup(&pod.dir);
        });
    }

    async fn with_vm<T>(
        &self,
        f: impl AsyncFnOnce(&Vm) -> std::result::Result<T, VmError>,
    ) -> Result<T> {
        let guard = self.vm.lock().await;
        let vm = guard
            .as_ref()
            .ok_or_else(|| ShimError::FailedPrecondition("the pod's VM has stopped".into()))?;
        Ok(f(vm).await?)
    }
}

/// The sandbox's sysctls (the pod's), checked: a name of dotted words, a
/// value on one line.
fn guest_sysctls(spec: &Value) -> Result<Vec<(String, String)>> {
    let Some(map) = spec["linux"]["sysctl"].as_object() else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| {
            let value = v.as_str().unwrap_or_default();
            let name_ok = !k.is_empty()
                && k.split(['.', '/']).all(|w| {
                    !w.is_empty()
                        && w != ".."
                        && w.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
                });
            if !name_ok || value.contains('\n') {
                return Err(ShimError::InvalidArgument(format!(
                    "sysctl {k:?}={value:?}: not a sysctl"
                )));
            }
            Ok((k.clone(), value.to_owned()))
        })
        .collect()
}

/// Runs `args` in the guest, outside any container, for at most
/// `timeout`: its output, or (the inner error) what it said on stderr when
/// it failed.
async fn run_in_guest(
    agent: &AgentClient,
    args: Vec<String>,
    timeout: Duration,
) -> std::result::Result<std::result::Result<Vec<u8>, String>, VmError> {
    let req = RunCommandRequest {
        args,
        timeout_ms: timeout.as_millis() as u64,
        ..Default::default()
    };
    let out = agent.run_command(&req, CALL).await?;
    if out.exit_code != 0 {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(Ok(out.stdout))
}

async fn set_guest_sysctl(
    agent: &AgentClient,
    key: &str,
    value: &str,
) -> std::result::Result<(), VmError> {
    let args = vec![
        "/bin/busybox".into(),
        "sysctl".into(),
        "-w".into(),
        format!("{key}={value}"),
    ];
    run_in_guest(agent, args, GUEST_COMMAND)
        .await?
        .map(drop)
        .map_err(|e| VmError::Config(format!("sysctl {key}={value} in the guest: {e}")))
}

/// A sandbox container (CRI's pause): its task is the VM.
pub fn is_sandbox(spec: &Value) -> bool {
    spec["annotations"][CONTAINER_TYPE] == "sandbox"
}

/// One container of a VM pod.
pub struct VmContainer {
    pub pod: Arc<VmPod>,
    /// False for the sandbox: the VM is its process.
    in_guest: bool,
    /// Names of what was shared into the guest for it.
    shares: Mutex<Vec<String>>,
    /// The kernel's OOM killer ended a process of it (set by its waiter).
    pub oom: Arc<AtomicBool>,
}

impl VmContainer {
    pub fn new(pod: Arc<VmPod>, id: &str) -> VmContainer {
        let in_guest = !(pod.owner == id && pod.owner_is_sandbox);
        VmContainer {
            pod,
            in_guest,
            shares: Mutex::new(Vec::new()),
            oom: Arc::new(AtomicBool::new(false)),
        }
    }

    fn share(&self, host: &Path, name: String, read_only: bool) -> Result<String> {
        let pod = Arc::clone(&self.pod);
        let host = host.to_owned();
        let shared_name = name.clone();
        let guest = block_on(async move {
            pod.with_vm(async |vm| match vm.shared() {
                Some(s) => s.share(&host, &shared_name, read_only),
                None => Err(VmError::Config("the VM has no shared directory".into())),
            })
            .await
        })?;
        self.shares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name);
        Ok(guest)
    }

    fn unshare_all(&self) {
        let names = std::mem::take(&mut *self.shares.lock().unwrap_or_else(|e| e.into_inner()));
        if names.is_empty() {
            return;
        }
        let pod = Arc::clone(&self.pod);
        block_on(async move {
            let _ = pod
                .with_vm(async |vm| {
                    if let Some(s) = vm.shared() {
                        for n in &names {
                            if let Err(e) = s.unshare(n) {
                                log::warn!("unsharing {n}: {e}");
                            }
                        }
                    }
                    Ok(())
                })
                .await;
        });
    }

    /// Shares the container's root and bind mounts into the guest and
    /// points the spec at them; the guest path of the root.
    fn share_for(&self, id: &str, bundle: &Path, spec: &mut Value) -> Result<String> {
        let root = in_bundle(bundle, spec["root"]["path"].as_str().unwrap_or("rootfs"));
        let guest_root = self.share(&root, id.to_owned(), false)?;
        let Some(mounts) = spec["mounts"].as_array_mut() else {
            return Ok(guest_root);
        };
        let mut kept = Vec::with_capacity(mounts.len());
        for (i, mut m) in std::mem::take(mounts).into_iter().enumerate() {
            let options: Vec<&str> = m["options"]
                .as_array()
                .map(|o| o.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let bind = m["type"] == "bind" || options.iter().any(|o| *o == "bind" || *o == "rbind");
            if !bind {
                kept.push(m);
                continue;
            }
            let destination = m["destination"].as_str().unwrap_or_default().to_owned();
            if destination == "/dev/shm" {
                // The pod's shared memory lives in guest memory.
                kept.push(serde_json::json!({
                    "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                }));
                continue;
            }
            let read_only = options.contains(&"ro");
            let source = in_bundle(bundle, m["source"].as_str().unwrap_or_default());
            if source.components().any(|c| c == Component::ParentDir) {
                return Err(ShimError::InvalidArgument(format!(
                    "mount {destination}: source {} has '..' in it",
                    source.display()
                )));
            }
            if let Some(volume) = memory_volume::of_source(&source) {
                let agent = self.pod.agent.clone();
                let guest_path = volume.guest_source();
                Result::<()>::Ok(block_on(async move { volume.ensure(&agent, CALL).await })?)
                    .context(|| format!("mount {destination}: its memory volume in the guest"))?;
                m["source"] = Value::String(guest_path);
                kept.push(m);
                continue;
            }
            let guest = self
                .share(&source, format!("{id}-m{i}"), read_only)
                .context(|| format!("sharing the source of mount {destination}"))?;
            m["source"] = Value::String(guest);
            kept.push(m);
        }
        *mounts = kept;
        Ok(guest_root)
    }

    pub fn create(&self, id: &str, bundle: &Path, io: ProcessIo, stdin: bool) -> Result<i32> {
        if !self.in_guest {
            return Ok(self.pod.pid);
        }
        let mut spec = read_spec(bundle)?;
        let created = self.share_for(id, bundle, &mut spec).and_then(|rootfs| {
            let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
            let req = CreateContainerRequest {
                id: id.to_owned(),
                spec: serde_json::to_vec(&spec).map_err(|e| ShimError::Other(e.to_string()))?,
                rootfs,
                stdin,
                rootfs_writable: true,
            };
            let agent = self.pod.agent.clone();
            let guest_pid = block_on(async move { agent.create_container(&req, CALL).await })?;
            relay_stdio(&self.pod.agent, id, "", io, terminal, stdin)?;
            log::info!("{id}: pid {guest_pid} in the VM");
            // As Kata does: the pid clients see is the VM's, a host process
            // (its namespaces are the pod's); a guest pid would name some
            // unrelated host process.
            Ok(self.pod.pid)
        });
        if created.is_err() {
            self.unshare_all();
        }
        created
    }

    pub fn start(&self, id: &str) -> Result<()> {
        if !self.in_guest {
            return Ok(());
        }
        let agent = self.pod.agent.clone();
        let id = id.to_owned();
        Ok(block_on(
            async move { agent.start_container(&id, CALL).await },
        )?)
    }

    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &Process,
        io: ProcessIo,
        stdin: bool,
    ) -> Result<i32> {
        if !self.in_guest {
            return Err(ShimError::FailedPrecondition(format!(
                "{id} is the pod's VM: nothing runs in it to exec into"
            )));
        }
        let req = ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process: serde_json::to_vec(process).map_err(|e| ShimError::Other(e.to_string()))?,
            stdin,
        };
        let terminal = process.terminal().unwrap_or(false);
        let agent = self.pod.agent.clone();
        let guest_pid = block_on(async move { agent.exec_process(&req, CALL).await })?;
        relay_stdio(&self.pod.agent, id, exec_id, io, terminal, stdin)?;
        log::info!("{id} exec {exec_id}: pid {guest_pid} in the VM");
        Ok(self.pod.pid)
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        if !self.in_guest {
            // The sandbox's process is the VM: any signal that would end
            // a pause process ends it.
            if matches!(signal, 2 | 9 | 15) {
                self.pod.stop();
            }
            return Ok(());
        }
        let agent = self.pod.agent.clone();
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        Ok(block_on(async move {
            agent.signal_process(&id, &exec_id, signal, CALL).await
        })?)
    }

    /// Blocks until the process ends: (exit status, no helper pid).
    pub fn exit_waiter(&self, id: &str, exec_id: &str) -> ExitWaiter {
        let pod = Arc::clone(&self.pod);
        let agent = self.pod.agent.clone();
        let oom = Arc::clone(&self.oom);
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        let in_guest = self.in_guest;
        Box::new(move || {
            let status = block_on(async move {
                let mut exited = pod.exited.clone();
                if !in_guest {
                    let _ = exited.wait_for(|e| *e).await.is_ok();
                    return if pod.stopping.load(Ordering::Relaxed) {
                        137
                    } else {
                        log::warn!("pod VM {} ended on its own", pod.pid);
                        VM_GONE_STATUS
                    };
                }
                loop {
                    tokio::select! {
                        r = agent.wait_process(&id, &exec_id, POLL) => match r {
                            Ok(e) => {
                                if e.oom_killed {
                                    oom.store(true, Ordering::Relaxed);
                                }
                                return e.exit_code as u32;
                            }
                            Err(VmError::AgentTimeout { .. }) => continue,
                            Err(e) => {
                                log::warn!("waiting for {id} {exec_id}: {e}");
                                return VM_GONE_STATUS;
                            }
                        },
                        _ = async { exited.wait_for(|e| *e).await.is_ok() } => {
                            log::warn!("{id} {exec_id}: the pod's VM ended");
                            return VM_GONE_STATUS;
                        }
                    }
                }
            });
            (status, None)
        })
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        if self.in_guest && self.pod.is_running() {
            let agent = self.pod.agent.clone();
            let cid = id.to_owned();
            if let Err(e) = block_on(async move { agent.remove_container(&cid, CALL).await }) {
                log::warn!("removing {id} from the VM: {e}");
            }
        }
        self.unshare_all();
        Ok(())
    }

    pub fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let pod = Arc::clone(&self.pod);
        let id = id.to_owned();
        let in_guest = self.in_guest;
        block_on(async move {
            pod.with_vm(async |vm| match (in_guest, pause) {
                (true, true) => vm.agent().pause_container(&id, CALL).await,
                (true, false) => vm.agent().resume_container(&id, CALL).await,
                (false, true) => vm.pause().await,
                (false, false) => vm.resume(CALL).await,
            })
            .await
        })
    }

    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        if !self.in_guest {
            // The VM's size is fixed at boot (microvm has no hotplug).
            return Err(ShimError::Unimplemented(
                "a VM pod's sandbox resources cannot change after boot".into(),
            ));
        }
        let raw = serde_json::to_vec(resources).map_err(|e| ShimError::Other(e.to_string()))?;
        let agent = self.pod.agent.clone();
        let id = id.to_owned();
        Ok(block_on(async move {
            agent.update_container(&id, &raw, CALL).await
        })?)
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        if !self.in_guest {
            return Ok(vec![self.pod.pid]);
        }
        let agent = self.pod.agent.clone();
        let args = [
            "/bin/berth",
            "--root",
            GUEST_STATE_ROOT,
            "ps",
            "--format",
            "json",
            id,
        ]
        .map(str::to_owned)
        .to_vec();
        let stdout =
            block_on(async move { run_in_guest(&agent, args, CALL).await })?.map_err(|e| {
                ShimError::Other(format!("listing the processes of {id} in the VM: {e}"))
            })?;
        serde_json::from_slice(&stdout)
            .map_err(|e| ShimError::Other(format!("reading the guest's process list: {e}")))
    }

    pub fn stats(&self, id: &str) -> Result<berth_cgroups::Stats> {
        if !self.in_guest {
            return Err(ShimError::Unimplemented(
                "statistics of a VM pod's sandbox: ask for its containers'".into(),
            ));
        }
        let agent = self.pod.agent.clone();
        let cid = id.to_owned();
        let raw = block_on(async move { agent.stats_container(&cid, CALL).await })?;
        serde_json::from_slice(&raw)
            .map_err(|e| ShimError::Other(format!("reading the guest's statistics of {id}: {e}")))
    }

    pub fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let agent = self.pod.agent.clone();
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        Ok(block_on(async move {
            agent.resize_pty(&id, &exec_id, width, height, CALL).await
        })?)
    }
}
