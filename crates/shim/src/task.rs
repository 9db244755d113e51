//! The task service: containerd's shim v2 API over this shim's containers.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::{Options, ProcessDetails};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::types::task::Status;
use oci_spec::runtime::{LinuxResources, Process};
use tokio::sync::watch;
use ttrpc::r#async::TtrpcContext;

use crate::backend::Backend;
use crate::events::{timestamp, Event, Publisher};
use crate::stdio::{self, IoHandle, StdioSpec};

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

struct Proc {
    pid: i32,
    status: Status,
    stdio: StdioSpec,
    exit: watch::Sender<Option<Exit>>,
    io: IoHandle,
    /// An exec's process spec, until Start runs it.
    spec: Option<Process>,
    /// An exec's time limit (probes), counted from its start.
    timeout: Option<std::time::Duration>,
    /// ENDING_NONE, ENDING_REAPED or ENDING_TIMED_OUT: whichever of the exit and the time
    /// limit came first.
    ending: Arc<AtomicU8>,
}

const ENDING_NONE: u8 = 0;
const ENDING_REAPED: u8 = 1;
const ENDING_TIMED_OUT: u8 = 2;

impl Proc {
    fn new(stdio: StdioSpec) -> Proc {
        Proc {
            pid: 0,
            status: Status::CREATED,
            stdio,
            exit: watch::channel(None).0,
            io: IoHandle::default(),
            spec: None,
            timeout: None,
            ending: Arc::new(AtomicU8::new(ENDING_NONE)),
        }
    }
}

struct Container {
    bundle: PathBuf,
    backend: Arc<Backend>,
    init: Proc,
    execs: HashMap<String, Proc>,
    rootfs_mounted: bool,
    oom_killed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Container>,
    /// pid -> (container id, exec id ("" for the init)).
    pids: HashMap<i32, (String, String)>,
    /// Exits reaped before their pid was recorded (an exec that ended at once).
    early: HashMap<i32, u32>,
}

pub struct Service {
    inner: Mutex<Inner>,
    publisher: Publisher,
    namespace: String,
    /// State root of the in-process runtime.
    state_root: PathBuf,
    shutdown: tokio::sync::Notify,
}

type RpcResult<T> = ttrpc::Result<T>;

fn status(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(what: &str) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("{what}: not found"))
}

fn failed(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::UNKNOWN, msg)
}

fn precondition(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::FAILED_PRECONDITION, msg)
}

/// Mounts what containerd prepared for the rootfs (an overlay, a bind).
fn mount_rootfs(bundle: &Path, mounts: &[api::Mount]) -> Result<bool, String> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    for m in mounts {
        let mut flags = rustix::mount::MountFlags::empty();
        let mut data = Vec::new();
        for o in &m.options {
            match o.as_str() {
                "ro" => flags |= rustix::mount::MountFlags::RDONLY,
                "bind" => flags |= rustix::mount::MountFlags::BIND,
                "rbind" => {
                    flags |= rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::REC
                }
                "rw" => {}
                other => data.push(other.to_owned()),
            }
        }
        let data = std::ffi::CString::new(data.join(",")).map_err(|e| e.to_string())?;
        rustix::mount::mount(
            m.source.as_str(),
            &target,
            m.type_.as_str(),
            flags,
            Some(data.as_c_str()),
        )
        .map_err(|e| {
            format!(
                "mounting {} {} on {}: {e}",
                m.type_,
                m.source,
                target.display()
            )
        })?;
    }
    Ok(true)
}

fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    for _ in 0..16 {
        if rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).is_err() {
            break;
        }
    }
}

/// berth's own runtime options (JSON, under this type URL): containerd's
/// runc options plus global flags for the runtime binary.
pub const BERTH_OPTIONS_TYPE: &str = "berth.shim.v1.RuntimeOptions";

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct BerthOptions {
    binary_name: String,
    root: String,
    systemd_cgroup: bool,
    runtime_args: Vec<String>,
    no_pivot_root: bool,
    no_new_keyring: bool,
}

fn parse_options(options: &MessageField<Any>) -> Result<BerthOptions, String> {
    match options.as_ref() {
        Some(any) if any.type_url.ends_with(BERTH_OPTIONS_TYPE) => {
            serde_json::from_slice(&any.value).map_err(|e| format!("runtime options: {e}"))
        }
        Some(any) if !any.value.is_empty() => {
            let o = Options::parse_from_bytes(&any.value)
                .map_err(|e| format!("runtime options: {e}"))?;
            Ok(BerthOptions {
                binary_name: o.binary_name,
                root: o.root,
                systemd_cgroup: o.systemd_cgroup,
                runtime_args: Vec::new(),
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
            })
        }
        _ => Ok(BerthOptions::default()),
    }
}

/// The backend for a container: berth in-process unless the options name
/// another runtime binary.
fn backend_for(
    options: &MessageField<Any>,
    state_root: &Path,
    namespace: &str,
) -> Result<Backend, String> {
    let opts = parse_options(options)?;
    if opts.binary_name.is_empty() {
        return Ok(Backend::in_process(
            &state_root.join(namespace),
            opts.systemd_cgroup,
        ));
    }
    let binary = which(&opts.binary_name)
        .ok_or_else(|| format!("runtime binary {:?} not found", opts.binary_name))?;
    let root = if opts.root.is_empty() {
        PathBuf::from("/run/containerd")
            .join(binary.file_name().unwrap_or_default())
            .join(namespace)
    } else {
        PathBuf::from(&opts.root).join(namespace)
    };
    Ok(Backend::Cli(crate::backend::Cli {
        binary,
        root,
        systemd_cgroup: opts.systemd_cgroup,
        args: opts.runtime_args,
        init_stdio: std::sync::Mutex::new(None),
    }))
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// An OOM watcher as something tokio can wait on.
struct OomFd(berth_cgroups::OomWatcher);

impl AsRawFd for OomFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd().as_raw_fd()
    }
}

impl Service {
    pub fn new(publisher: Publisher, namespace: String, state_root: PathBuf) -> Arc<Service> {
        Arc::new(Service {
            inner: Mutex::new(Inner::default()),
            publisher,
            namespace,
            state_root,
            shutdown: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the client asked the shim to go and nothing is left.
    pub async fn wait_shutdown(&self) {
        self.shutdown.notified().await
    }

    /// Records a reaped process: exit status, events, waiters.
    pub fn on_exit(self: &Arc<Self>, pid: i32, code: u32) {
        let mut inner = self.lock();
        let Some((cid, exec_id)) = inner.pids.remove(&pid) else {
            inner.early.insert(pid, code);
            return;
        };
        drop(inner);
        self.on_exit_of(pid, &cid, &exec_id, code);
    }

    /// Records how a process ended, found by its container and exec id
    /// (runtimes whose processes are not the shim's children report exits
    /// this way).
    pub fn on_exit_of(self: &Arc<Self>, pid: i32, cid: &str, exec_id: &str, code: u32) {
        let (cid, exec_id) = (cid.to_owned(), exec_id.to_owned());
        let mut inner = self.lock();
        let Some(c) = inner.containers.get_mut(&cid) else {
            return;
        };
        let bundle = c.bundle.clone();
        let oom = c.oom_killed.load(Ordering::Relaxed);
        let proc = if exec_id.is_empty() {
            &mut c.init
        } else if let Some(p) = c.execs.get_mut(&exec_id) {
            p
        } else {
            return;
        };
        if proc.exit.borrow().is_some() || proc.status == Status::STOPPED {
            // Already recorded (gVisor containers of one pod share a pid).
            return;
        }
        let _ = proc.ending.compare_exchange(
            ENDING_NONE,
            ENDING_REAPED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let drained = std::mem::take(&mut proc.io.drained);
        let exit_tx = proc.exit.clone();
        proc.status = Status::STOPPED;
        drop(inner);
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            // Logs first: a client that sees the exit must find the output complete.
            let drain = async {
                for d in drained {
                    let _ = d.await;
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
            let at = SystemTime::now();
            if exec_id.is_empty() {
                let record = serde_json::json!({"exit_status": code, "exited_at": crate::crilog::rfc3339_nano(at), "oom_killed": oom});
                let _ = std::fs::write(bundle.join("berth-exit.json"), record.to_string());
            }
            exit_tx.send_replace(Some(Exit { status: code, at }));
            let mut e = ev::TaskExit::new();
            e.container_id = cid.clone();
            e.id = if exec_id.is_empty() {
                cid.clone()
            } else {
                exec_id.clone()
            };
            e.pid = pid as u32;
            e.exit_status = code;
            e.exited_at = MessageField::some(timestamp(at));
            publisher.publish(Event::Exit(e));
        });
    }

    fn register_pid(self: &Arc<Self>, pid: i32, cid: &str, exec_id: &str) {
        let early = {
            let mut inner = self.lock();
            inner.pids.insert(pid, (cid.to_owned(), exec_id.to_owned()));
            inner.early.remove(&pid)
        };
        if let Some(code) = early {
            self.on_exit(pid, code);
        }
    }

    fn backend(&self, id: &str) -> RpcResult<Arc<Backend>> {
        self.lock()
            .containers
            .get(id)
            .map(|c| Arc::clone(&c.backend))
            .ok_or_else(|| not_found(&format!("container {id}")))
    }

    fn watch_oom(self: &Arc<Self>, id: &str, backend: &Backend, pid: i32, flag: Arc<AtomicBool>) {
        let Ok(cgroups) = backend.cgroups(id, pid) else {
            return;
        };
        let Ok(watcher) = berth_cgroups::OomWatcher::new(&cgroups) else {
            return;
        };
        let Ok(fd) = crate::sys::async_fd(OomFd(watcher)) else {
            return;
        };
        let publisher = self.publisher.clone();
        let id = id.to_owned();
        let svc = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut fd = fd;
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                let n = guard.get_inner_mut().0.consume();
                guard.clear_ready();
                if n > 0 {
                    flag.store(true, Ordering::Relaxed);
                    let mut e = ev::TaskOOM::new();
                    e.container_id = id.clone();
                    publisher.publish(Event::Oom(e));
                }
                let gone = svc
                    .upgrade()
                    .is_none_or(|s| !s.lock().containers.contains_key(&id));
                if gone {
                    return;
                }
            }
        });
    }

    fn process_status(
        &self,
        id: &str,
        exec_id: &str,
    ) -> RpcResult<(i32, Status, StdioSpec, Option<Exit>, PathBuf)> {
        let inner = self.lock();
        let c = inner
            .containers
            .get(id)
            .ok_or_else(|| not_found(&format!("container {id}")))?;
        let p = if exec_id.is_empty() {
            &c.init
        } else {
            c.execs
                .get(exec_id)
                .ok_or_else(|| not_found(&format!("exec {exec_id} of {id}")))?
        };
        let exit = *p.exit.borrow();
        Ok((p.pid, p.status, p.stdio.clone(), exit, c.bundle.clone()))
    }

    /// Reopens a container's CRI log files (log rotation).
    pub fn reopen_logs(&self, id: &str) -> RpcResult<()> {
        let inner = self.lock();
        let c = inner
            .containers
            .get(id)
            .ok_or_else(|| not_found(&format!("container {id}")))?;
        for log in &c.init.io.logs {
            log.reopen()
                .map_err(|e| failed(format!("reopening the log of {id}: {e}")))?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().containers.is_empty()
    }

    /// Gives an exec a time limit: from its start, or from now if it runs.
    pub fn set_exec_timeout(
        &self,
        id: &str,
        exec_id: &str,
        limit: std::time::Duration,
    ) -> RpcResult<()> {
        let mut inner = self.lock();
        let p = inner
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found(&format!("container {id}")))?
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| not_found(&format!("exec {exec_id} of {id}")))?;
        if p.exit.borrow().is_some() {
            return Err(precondition(format!("exec {exec_id} of {id} has exited")));
        }
        p.timeout = Some(limit);
        if p.status == Status::RUNNING {
            arm_deadline(id, exec_id, p.pid, limit, p);
        }
        Ok(())
    }

    /// What the task API's State cannot say: OOM and time-limit kills.
    pub fn report(&self, id: &str, exec_id: &str) -> RpcResult<ProcessReport> {
        let inner = self.lock();
        let c = inner
            .containers
            .get(id)
            .ok_or_else(|| not_found(&format!("container {id}")))?;
        let p = if exec_id.is_empty() {
            &c.init
        } else {
            c.execs
                .get(exec_id)
                .ok_or_else(|| not_found(&format!("exec {exec_id} of {id}")))?
        };
        let exit = *p.exit.borrow();
        Ok(ProcessReport {
            pid: p.pid,
            status: format!(
                "{:?}",
                if exit.is_some() {
                    Status::STOPPED
                } else {
                    p.status
                }
            )
            .to_lowercase(),
            exit_status: exit.map(|e| e.status),
            exited_at: exit.map(|e| crate::crilog::rfc3339_nano(e.at)),
            oom_killed: c.oom_killed.load(Ordering::Relaxed),
            timed_out: p.ending.load(Ordering::Relaxed) == ENDING_TIMED_OUT,
        })
    }
}

/// A process's state as berth's extension service reports it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ProcessReport {
    pub pid: i32,
    /// created, running, paused or stopped.
    pub status: String,
    pub exit_status: Option<u32>,
    pub exited_at: Option<String>,
    /// The container's cgroup saw an OOM kill.
    pub oom_killed: bool,
    /// The exec's time limit expired and the shim killed it.
    pub timed_out: bool,
}

/// Kills an exec with SIGKILL when its limit expires before it exits.
fn arm_deadline(id: &str, exec_id: &str, pid: i32, limit: std::time::Duration, p: &Proc) {
    let mut exited = p.exit.subscribe();
    let ending = Arc::clone(&p.ending);
    let what = format!("exec {exec_id} of {id}");
    tokio::spawn(async move {
        let wait_exit = async {
            while exited.borrow_and_update().is_none() {
                if exited.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(limit, wait_exit).await.is_ok() {
            return;
        }
        // Not if the process was reaped meanwhile: its pid may be reused.
        if ending
            .compare_exchange(
                ENDING_NONE,
                ENDING_TIMED_OUT,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return;
        }
        log::info!("{what} exceeded its time limit of {limit:?}: killing pid {pid}");
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    });
}

fn empty() -> Empty {
    Empty::new()
}

/// The ttrpc face of a [`Service`] (its methods need the `Arc`).
pub struct TaskHandler(pub Arc<Service>);

impl std::ops::Deref for TaskHandler {
    type Target = Arc<Service>;
    fn deref(&self) -> &Arc<Service> {
        &self.0
    }
}

#[async_trait]
impl Task for TaskHandler {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> RpcResult<api::StateResponse> {
        let (pid, st, stdio, exit, bundle) = self.process_status(&req.id, &req.exec_id)?;
        let mut r = api::StateResponse::new();
        r.id = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        r.bundle = bundle.display().to_string();
        r.pid = pid as u32;
        r.status = st.into();
        r.stdin = stdio.stdin;
        r.stdout = stdio.stdout;
        r.stderr = stdio.stderr;
        r.terminal = stdio.terminal;
        r.exec_id = req.exec_id.clone();
        if let Some(e) = exit {
            r.status = Status::STOPPED.into();
            r.exit_status = e.status;
            r.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(r)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> RpcResult<api::CreateTaskResponse> {
        let this = Arc::clone(&self.0);
        if self.lock().containers.contains_key(&req.id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(
                ttrpc::Code::UNIMPLEMENTED,
                "restoring from a checkpoint is not supported",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.join("config.json").is_file() {
            return Err(status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("bundle {}: no config.json", bundle.display()),
            ));
        }
        let backend = Arc::new(
            backend_for(&req.options, &self.state_root, &self.namespace)
                .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?,
        );
        let spec = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (io, pending) = stdio::prepare(&spec)
            .map_err(|e| failed(format!("setting up stdio of {}: {e}", req.id)))?;
        let mounted = mount_rootfs(&bundle, &req.rootfs).map_err(failed)?;
        let (no_pivot, no_new_keyring) = parse_options(&req.options)
            .map(|o| (o.no_pivot_root, o.no_new_keyring))
            .unwrap_or_default();
        let pid = match backend.create(&req.id, &bundle, io, no_pivot, no_new_keyring) {
            Ok(pid) => pid,
            Err(e) => {
                if mounted {
                    unmount_rootfs(&bundle);
                }
                return Err(failed(format!("creating container {}: {e}", req.id)));
            }
        };
        let mut init = Proc::new(spec);
        init.pid = pid;
        init.io = pending.start();
        let oom = Arc::new(AtomicBool::new(false));
        self.lock().containers.insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                backend: Arc::clone(&backend),
                init,
                execs: HashMap::new(),
                rootfs_mounted: mounted,
                oom_killed: Arc::clone(&oom),
            },
        );
        this.register_pid(pid, &req.id, "");
        this.watch_oom(&req.id, &backend, pid, oom);
        let mut e = ev::TaskCreate::new();
        e.container_id = req.id.clone();
        e.bundle = req.bundle.clone();
        e.pid = pid as u32;
        let mut io = containerd_shim_protos::events::task::TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        e.io = MessageField::some(io);
        self.publisher.publish(Event::Create(e));
        let mut r = api::CreateTaskResponse::new();
        r.pid = pid as u32;
        Ok(r)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> RpcResult<api::StartResponse> {
        let this = Arc::clone(&self.0);
        let backend = self.backend(&req.id)?;
        if req.exec_id.is_empty() {
            let (pid, st, _, _, bundle) = self.process_status(&req.id, "")?;
            if st != Status::CREATED {
                return Err(precondition(format!("container {} is not created", req.id)));
            }
            backend
                .start(&req.id, &bundle)
                .map_err(|e| failed(format!("starting {}: {e}", req.id)))?;
            if let Some(wait) = backend.exit_waiter(&req.id) {
                let svc = Arc::clone(&self.0);
                let handle = tokio::runtime::Handle::current();
                let id = req.id.clone();
                // The sandbox's process is not the container's: ask the
                // runtime when the container ends.
                std::thread::spawn(move || {
                    let (code, helper) = wait();
                    handle.spawn(async move {
                        {
                            let mut inner = svc.lock();
                            // The pid is the sandbox's, shared by the pod's
                            // containers: forget it only if it is still ours.
                            if inner.pids.get(&pid).is_some_and(|(c, _)| *c == id) {
                                inner.pids.remove(&pid);
                            }
                            if let Some(helper) = helper {
                                inner.early.remove(&helper);
                            }
                        }
                        svc.on_exit_of(pid, &id, "", code);
                    });
                });
            }
            if let Some(c) = self.lock().containers.get_mut(&req.id) {
                if c.init.status == Status::CREATED {
                    c.init.status = Status::RUNNING;
                }
            }
            let mut e = ev::TaskStart::new();
            e.container_id = req.id.clone();
            e.pid = pid as u32;
            self.publisher.publish(Event::Start(e));
            let mut r = api::StartResponse::new();
            r.pid = pid as u32;
            return Ok(r);
        }
        let (spec, stdio_spec, bundle) = {
            let inner = self.lock();
            let c = inner
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let p = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&format!("exec {}", req.exec_id)))?;
            let spec = p
                .spec
                .clone()
                .ok_or_else(|| precondition(format!("exec {} was already started", req.exec_id)))?;
            (spec, p.stdio.clone(), c.bundle.clone())
        };
        let (io, pending) = stdio::prepare(&stdio_spec)
            .map_err(|e| failed(format!("setting up stdio of exec {}: {e}", req.exec_id)))?;
        let pid = backend
            .exec(&req.id, &req.exec_id, &bundle, &spec, io)
            .map_err(|e| failed(format!("exec {} in {}: {e}", req.exec_id, req.id)))?;
        let handle = pending.start();
        if let Some(p) = self
            .lock()
            .containers
            .get_mut(&req.id)
            .and_then(|c| c.execs.get_mut(&req.exec_id))
        {
            p.pid = pid;
            p.spec = None;
            p.status = Status::RUNNING;
            p.io = handle;
            if let Some(limit) = p.timeout {
                arm_deadline(&req.id, &req.exec_id, pid, limit, p);
            }
        }
        this.register_pid(pid, &req.id, &req.exec_id);
        let mut e = ev::TaskExecStarted::new();
        e.container_id = req.id.clone();
        e.exec_id = req.exec_id.clone();
        e.pid = pid as u32;
        self.publisher.publish(Event::ExecStarted(e));
        let mut r = api::StartResponse::new();
        r.pid = pid as u32;
        Ok(r)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> RpcResult<api::DeleteResponse> {
        let (pid, st, _, exit, bundle) = self.process_status(&req.id, &req.exec_id)?;
        if !req.exec_id.is_empty() {
            if st == Status::RUNNING && exit.is_none() {
                return Err(precondition(format!(
                    "exec {} is still running",
                    req.exec_id
                )));
            }
            if let Some(c) = self.lock().containers.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
            let mut r = api::DeleteResponse::new();
            r.pid = pid as u32;
            if let Some(e) = exit {
                r.exit_status = e.status;
                r.exited_at = MessageField::some(timestamp(e.at));
            }
            return Ok(r);
        }
        if (st == Status::RUNNING || st == Status::PAUSED) && exit.is_none() {
            return Err(precondition(format!(
                "container {} is still running: stop it first",
                req.id
            )));
        }
        let backend = self.backend(&req.id)?;
        if let Err(e) = backend.delete(&req.id, true) {
            log::warn!("deleting {}: {e}", req.id);
        }
        let removed = self.lock().containers.remove(&req.id);
        if removed.as_ref().is_some_and(|c| c.rootfs_mounted) {
            unmount_rootfs(&bundle);
        }
        let exit = exit.unwrap_or(Exit {
            status: 137,
            at: SystemTime::now(),
        });
        let mut e = ev::TaskDelete::new();
        e.container_id = req.id.clone();
        e.pid = pid as u32;
        e.exit_status = exit.status;
        e.exited_at = MessageField::some(timestamp(exit.at));
        self.publisher.publish(Event::Delete(e));
        let mut r = api::DeleteResponse::new();
        r.pid = pid as u32;
        r.exit_status = exit.status;
        r.exited_at = MessageField::some(timestamp(exit.at));
        Ok(r)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> RpcResult<api::PidsResponse> {
        let backend = self.backend(&req.id)?;
        let pids = backend.pids(&req.id).map_err(failed)?;
        let execs: HashMap<i32, String> = {
            let inner = self.lock();
            inner
                .containers
                .get(&req.id)
                .map(|c| c.execs.iter().map(|(k, p)| (p.pid, k.clone())).collect())
                .unwrap_or_default()
        };
        let mut r = api::PidsResponse::new();
        for pid in pids {
            let mut info = containerd_shim_protos::types::task::ProcessInfo::new();
            info.pid = pid as u32;
            if let Some(exec_id) = execs.get(&pid) {
                let mut d = ProcessDetails::new();
                d.exec_id = exec_id.clone();
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".into();
                any.value = d.write_to_bytes().unwrap_or_default();
                info.info = MessageField::some(any);
            }
            r.processes.push(info);
        }
        Ok(r)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> RpcResult<Empty> {
        self.backend(&req.id)?.pause(&req.id).map_err(failed)?;
        if let Some(c) = self.lock().containers.get_mut(&req.id) {
            c.init.status = Status::PAUSED;
        }
        let mut e = ev::TaskPaused::new();
        e.container_id = req.id.clone();
        self.publisher.publish(Event::Paused(e));
        Ok(empty())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> RpcResult<Empty> {
        self.backend(&req.id)?.resume(&req.id).map_err(failed)?;
        if let Some(c) = self.lock().containers.get_mut(&req.id) {
            c.init.status = Status::RUNNING;
        }
        let mut e = ev::TaskResumed::new();
        e.container_id = req.id.clone();
        self.publisher.publish(Event::Resumed(e));
        Ok(empty())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> RpcResult<Empty> {
        let (pid, _, _, exit, _) = self.process_status(&req.id, &req.exec_id)?;
        if exit.is_some() {
            return Err(status(
                ttrpc::Code::NOT_FOUND,
                format!(
                    "process {} of {} already exited",
                    if req.exec_id.is_empty() {
                        "init"
                    } else {
                        &req.exec_id
                    },
                    req.id
                ),
            ));
        }
        if req.exec_id.is_empty() {
            self.backend(&req.id)?
                .kill(&req.id, req.signal as i32, req.all)
                .map_err(failed)?;
        } else {
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid)
                    .ok_or_else(|| precondition("exec not started"))?,
                rustix::process::Signal::from_named_raw(req.signal as i32).ok_or_else(|| {
                    status(
                        ttrpc::Code::INVALID_ARGUMENT,
                        format!("signal {}", req.signal),
                    )
                })?,
            )
            .map_err(|e| failed(format!("signalling exec {}: {e}", req.exec_id)))?;
        }
        Ok(empty())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> RpcResult<Empty> {
        let spec_any = req
            .spec
            .as_ref()
            .ok_or_else(|| status(ttrpc::Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        let spec: Process = serde_json::from_slice(&spec_any.value).map_err(|e| {
            status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("exec {}: process spec: {e}", req.exec_id),
            )
        })?;
        {
            let mut inner = self.lock();
            let c = inner
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
            if c.init.exit.borrow().is_some() || c.init.status == Status::STOPPED {
                return Err(precondition(format!(
                    "container {} is stopped: cannot exec",
                    req.id
                )));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    ttrpc::Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            let mut p = Proc::new(StdioSpec {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.spec = Some(spec);
            c.execs.insert(req.exec_id.clone(), p);
        }
        let mut e = ev::TaskExecAdded::new();
        e.container_id = req.id.clone();
        e.exec_id = req.exec_id.clone();
        self.publisher.publish(Event::ExecAdded(e));
        Ok(empty())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> RpcResult<Empty> {
        let inner = self.lock();
        let c = inner
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        let p = if req.exec_id.is_empty() {
            &c.init
        } else {
            c.execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?
        };
        p.io.resize(req.width, req.height)
            .map_err(|e| precondition(e.to_string()))?;
        Ok(empty())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> RpcResult<Empty> {
        let mut inner = self.lock();
        let c = inner
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        let p = if req.exec_id.is_empty() {
            &mut c.init
        } else {
            c.execs
                .get_mut(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?
        };
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(empty())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> RpcResult<Empty> {
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| status(ttrpc::Code::INVALID_ARGUMENT, "update without resources"))?;
        let resources: LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        self.backend(&req.id)?
            .update(&req.id, &resources)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?;
        Ok(empty())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> RpcResult<api::WaitResponse> {
        let mut rx = {
            let inner = self.lock();
            let c = inner
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let p = if req.exec_id.is_empty() {
                &c.init
            } else {
                c.execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(&req.exec_id))?
            };
            p.exit.subscribe()
        };
        let exit = loop {
            if let Some(e) = *rx.borrow() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(failed("the process record was removed"));
            }
        };
        let mut r = api::WaitResponse::new();
        r.exit_status = exit.status;
        r.exited_at = MessageField::some(timestamp(exit.at));
        Ok(r)
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> RpcResult<api::StatsResponse> {
        let (pid, ..) = self.process_status(&req.id, "")?;
        let backend = self.backend(&req.id)?;
        let cgroups = backend.cgroups(&req.id, pid).map_err(failed)?;
        let stats = cgroups.stats().map_err(|e| failed(e.to_string()))?;
        let mut r = api::StatsResponse::new();
        r.stats = MessageField::some(crate::metrics::to_any(&stats));
        Ok(r)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> RpcResult<api::ConnectResponse> {
        let pid = self
            .lock()
            .containers
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = pid as u32;
        r.version = env!("CARGO_PKG_VERSION").into();
        Ok(r)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> RpcResult<Empty> {
        if self.is_empty() {
            self.shutdown.notify_one();
        }
        Ok(empty())
    }
}
