//! Containers in the guest: each one a bundle under /run/berth/bundles
//! whose root is an overlay (the read-only `rootfs` the host shared below,
//! guest memory above), run by the berth runtime (`berth create`, `start`,
//! `exec -d`, `kill`, `delete`) as the shim runs it on the host. The
//! processes it starts become the agent's children when `berth` exits;
//! their output is buffered here until the host reads it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{watch, Notify};

use crate::fdio::FdStream;
use crate::reaper::{Exit, Reaper};
use crate::service::AgentError;

/// Output held for a reader that does not keep up; the process then
/// blocks on its pipe.
const BUFFERED_MAX: usize = 1 << 20;
const STATE_ROOT: &str = "/run/berth/state";
const BUNDLES: &str = "/run/berth/bundles";
/// The guest's cgroup2 hierarchy; containers are in berth/<id> below it.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

type Stdin = Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>;

/// One output stream of a process, buffered for the host's reads.
#[derive(Default)]
pub struct Output {
    state: Mutex<(Vec<u8>, bool)>,
    changed: Notify,
}

impl Output {
    /// Marks a stream that carries nothing (stderr beside a terminal).
    fn finish(&self) {
        lock(&self.state).1 = true;
        self.changed.notify_waiters();
    }

    fn start(self: &Arc<Self>, mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        let out = Arc::clone(self);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                // Backpressure: wait for the host to take what is held.
                loop {
                    let wait = out.changed.notified();
                    if lock(&out.state).0.len() < BUFFERED_MAX {
                        break;
                    }
                    wait.await;
                }
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let mut state = lock(&out.state);
                if n == 0 {
                    state.1 = true;
                } else {
                    state.0.extend_from_slice(&buf[..n]);
                }
                drop(state);
                out.changed.notify_waiters();
                if n == 0 {
                    return;
                }
            }
        });
    }

    /// What was written since the last read, waiting for some; empty with
    /// `true` once the stream ended.
    pub async fn read(&self) -> (Vec<u8>, bool) {
        loop {
            let wait = self.changed.notified();
            {
                let mut state = lock(&self.state);
                if !state.0.is_empty() {
                    let data = std::mem::take(&mut state.0);
                    drop(state);
                    self.changed.notify_waiters();
                    return (data, false);
                }
                if state.1 {
                    return (Vec::new(), true);
                }
            }
            wait.await;
        }
    }
}

pub struct Process {
    pub pid: u32,
    exit: watch::Receiver<Option<Exit>>,
    /// Whether the container's cgroup saw an OOM kill, read when the
    /// process ended (before `delete` takes the cgroup away); only for a
    /// container's init.
    oom_killed: Arc<std::sync::atomic::AtomicBool>,
    stdin: tokio::sync::Mutex<Option<Stdin>>,
    /// The terminal's master, for resizes.
    terminal: Option<OwnedFd>,
    pub stdout: Arc<Output>,
    pub stderr: Arc<Output>,
}

impl Process {
    pub async fn wait(&self) -> Exit {
        let mut exit = self.exit.clone();
        let seen = exit.wait_for(Option::is_some).await.ok().and_then(|e| *e);
        seen.unwrap_or(Exit {
            code: 255,
            signal: 0,
        })
    }

    pub fn oom_killed(&self) -> bool {
        self.oom_killed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), AgentError> {
        let mut stdin = self.stdin.lock().await;
        let pipe = stdin.as_mut().ok_or_else(|| {
            AgentError::FailedPrecondition("stdin is closed or was not asked for".into())
        })?;
        pipe.write_all(data)
            .await
            .map_err(|e| AgentError::Failed(format!("writing stdin: {e}")))
    }

    /// Sets the terminal's size.
    pub fn resize(&self, width: u16, height: u16) -> Result<(), AgentError> {
        let master = self
            .terminal
            .as_ref()
            .ok_or_else(|| AgentError::FailedPrecondition("the process has no terminal".into()))?;
        let size = rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(master, size).map_err(|e| failed("resizing the terminal", e))
    }

    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }
}

struct Container {
    bundle: PathBuf,
    processes: HashMap<String, Arc<Process>>,
}

pub struct Containers {
    reaper: Reaper,
    berth: PathBuf,
    containers: Mutex<HashMap<String, Container>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn invalid(msg: String) -> AgentError {
    AgentError::InvalidArgument(msg)
}

fn failed(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Failed(format!("{what}: {e}"))
}

/// A container or exec id: one safe path component.
fn check_id(what: &str, id: &str) -> Result<(), AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {id:?} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"
        )))
    }
}

impl Containers {
    pub fn new(reaper: Reaper, berth: PathBuf) -> Containers {
        Containers {
            reaper,
            berth,
            containers: Mutex::new(HashMap::new()),
        }
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, AgentError> {
        let containers = lock(&self.containers);
        let c = containers
            .get(id)
            .ok_or_else(|| AgentError::NotFound(format!("container {id:?}")))?;
        c.processes
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("process {exec_id:?} of container {id:?}")))
    }

    pub async fn create(
        &self,
        id: &str,
        spec: &[u8],
        rootfs: &str,
        stdin: bool,
        rootfs_writable: bool,
    ) -> Result<u32, AgentError> {
        check_id("container id", id)?;
        let mut spec: Value = serde_json::from_slice(spec)
            .map_err(|e| invalid(format!("the container's spec: {e}")))?;
        if !spec.is_object() {
            return Err(invalid("the container's spec is not a JSON object".into()));
        }
        let lower = Path::new(rootfs);
        if !lower.is_absolute() || !lower.is_dir() {
            return Err(invalid(format!(
                "rootfs {rootfs:?} is not a directory of the guest"
            )));
        }
        let bundle = Path::new(BUNDLES).join(id);
        {
            let mut containers = lock(&self.containers);
            if containers.contains_key(id) {
                return Err(AgentError::AlreadyExists(format!("container {id:?}")));
            }
            // Claimed before the slow part: a second create of the same id
            // is refused rather than racing this one.
            containers.insert(
                id.to_owned(),
                Container {
                    bundle: bundle.clone(),
                    processes: HashMap::new(),
                },
            );
        }
        match self
            .create_bundle(id, &bundle, &mut spec, lower, stdin, rootfs_writable)
            .await
        {
            Ok(process) => {
                let pid = process.pid;
                if let Some(c) = lock(&self.containers).get_mut(id) {
                    c.processes.insert(String::new(), process);
                }
                Ok(pid)
            }
            Err(e) => {
                self.forget(id, &bundle).await;
                Err(e)
            }
        }
    }

    async fn create_bundle(
        &self,
        id: &str,
        bundle: &Path,
        spec: &mut Value,
        lower: &Path,
        stdin: bool,
        rootfs_writable: bool,
    ) -> Result<Arc<Process>, AgentError> {
        let upper = bundle.join("upper");
        let work = bundle.join("work");
        let root = bundle.join("rootfs");
        for dir in [&upper, &work, &root] {
            std::fs::create_dir_all(dir)
                .map_err(|e| failed(&format!("creating {}", dir.display()), e))?;
        }
        if rootfs_writable {
            rustix::mount::mount_bind(lower, &root)
                .map_err(|e| failed("binding the container's root", e))?;
        } else {
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            let data = std::ffi::CString::new(options)
                .map_err(|_| invalid("a path holds a NUL byte".into()))?;
            rustix::mount::mount(
                "overlay",
                &root,
                "overlay",
                rustix::mount::MountFlags::empty(),
                Some(data.as_c_str()),
            )
            .map_err(|e| failed("mounting the container's overlay", e))?;
        }
        adapt_spec(id, spec, &root);
        let config =
            serde_json::to_vec_pretty(spec).map_err(|e| failed("writing config.json", e))?;
        std::fs::write(bundle.join("config.json"), config)
            .map_err(|e| failed("writing config.json", e))?;
        let pid_file = bundle.join("init.pid");
        let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
        let args = [
            "create".to_owned(),
            "--bundle".to_owned(),
            bundle.display().to_string(),
            "--pid-file".to_owned(),
            pid_file.display().to_string(),
        ];
        let events = Path::new(CGROUP_ROOT)
            .join("berth")
            .join(id)
            .join("memory.events");
        self.start_process(bundle, &args, id, &pid_file, stdin, terminal, Some(&events))
            .await
    }

    /// Runs `berth ARGS ID` with the new process's stdio (pipes, or a
    /// terminal whose master berth sends to a console socket), waits for
    /// it, and watches the process it left (named in `pid_file`).
    #[allow(clippy::too_many_arguments)]
    async fn start_process(
        &self,
        bundle: &Path,
        args: &[String],
        id: &str,
        pid_file: &Path,
        stdin: bool,
        terminal: bool,
        oom_events: Option<&Path>,
    ) -> Result<Arc<Process>, AgentError> {
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| failed("pipe", e))
        };
        let log = bundle.join("berth.log");
        let mut command = self.berth_command(&log);
        command.args(args);
        let mut console = None;
        let mut pipes = None;
        if terminal {
            // Short whatever the ids (a socket path has at most 107 bytes).
            static CONSOLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = CONSOLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = Path::new("/run/berth/consoles");
            std::fs::create_dir_all(dir).map_err(|e| failed("the console directory", e))?;
            let path = dir.join(n.to_string());
            let _ = std::fs::remove_file(&path);
            let listener = berth_common::socket::bind_unix_private(&path)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::UnixListener::from_std)
                .map_err(|e| failed("the console socket", e))?;
            command.arg("--console-socket").arg(&path);
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            console = Some((listener, path));
        } else {
            let (stdin_read, stdin_write) = if stdin {
                let (r, w) = pipe()?;
                (Stdio::from(r), Some(w))
            } else {
                (Stdio::null(), None)
            };
            let (out_read, out_write) = pipe()?;
            let (err_read, err_write) = pipe()?;
            command
                .stdin(stdin_read)
                .stdout(Stdio::from(out_write))
                .stderr(Stdio::from(err_write));
            pipes = Some((stdin_write, out_read, err_read));
        }
        command.arg(id);
        let (child, exited) = self
            .reaper
            .spawn(&mut command)
            .map_err(|e| failed(&format!("starting {}", self.berth.display()), e))?;
        // The parent's copies of the child's ends are closed with `command`.
        drop(command);
        drop(child);
        let (status, master) = match &console {
            Some((listener, _)) => {
                // berth sends the master before it exits: take it while
                // waiting, or the exit first if berth failed before.
                let receive = async {
                    let (conn, _) = listener.accept().await?;
                    let conn = conn.into_std()?;
                    conn.set_nonblocking(false)?;
                    let mut buf = [0u8; 256];
                    berth_common::socket::recv_fd(&conn, &mut buf).map(|(_, fd)| fd)
                };
                let receive = tokio::time::timeout(std::time::Duration::from_secs(30), receive);
                tokio::pin!(receive);
                tokio::pin!(exited);
                tokio::select! {
                    master = &mut receive => {
                        (exited.await, master.ok().and_then(Result::ok).flatten())
                    }
                    status = &mut exited => {
                        // A berth that succeeded sent the master before it
                        // exited; one that failed never will: no waiting.
                        let master = match &status {
                            Ok(s) if s.code == 0 => receive.await.ok().and_then(Result::ok).flatten(),
                            _ => None,
                        };
                        (status, master)
                    }
                }
            }
            None => (exited.await, None),
        };
        if let Some((_, path)) = &console {
            let _ = std::fs::remove_file(path);
        }
        let status = status.map_err(|_| AgentError::Failed("the reaper stopped".into()))?;
        if status.code != 0 {
            return Err(AgentError::Failed(format!(
                "berth {}: {}",
                args[0],
                last_error(&log).unwrap_or_else(|| format!("exit code {}", status.code))
            )));
        }
        let stdout = Arc::new(Output::default());
        let stderr = Arc::new(Output::default());
        let (stdin, terminal) = match (pipes, master) {
            (Some((stdin_write, out_read, err_read)), _) => {
                let receiver =
                    |fd: OwnedFd| pipe::Receiver::from_owned_fd(fd).map_err(|e| failed("pipe", e));
                stdout.start(receiver(out_read)?);
                stderr.start(receiver(err_read)?);
                let stdin: Option<Stdin> = match stdin_write {
                    Some(w) => Some(Box::new(
                        pipe::Sender::from_owned_fd(w).map_err(|e| failed("pipe", e))?,
                    )),
                    None => None,
                };
                (stdin, None)
            }
            (None, Some(master)) => {
                // A terminal merges stdout and stderr; stderr ends at once.
                let writer = master.try_clone().map_err(|e| failed("the terminal", e))?;
                let resize = master.try_clone().map_err(|e| failed("the terminal", e))?;
                stdout.start(FdStream::new(master).map_err(|e| failed("the terminal", e))?);
                stderr.finish();
                let stdin: Option<Stdin> = if stdin {
                    Some(Box::new(
                        FdStream::new(writer).map_err(|e| failed("the terminal", e))?,
                    ))
                } else {
                    None
                };
                (stdin, Some(resize))
            }
            (None, None) => {
                return Err(AgentError::Failed(
                    "berth sent no terminal to the console socket".into(),
                ))
            }
        };
        let pid: u32 = std::fs::read_to_string(pid_file)
            .map_err(|e| failed(&format!("reading {}", pid_file.display()), e))?
            .trim()
            .parse()
            .map_err(|e| failed(&format!("the PID in {}", pid_file.display()), e))?;
        let (tx, rx) = watch::channel(None);
        let exit = self.reaper.watch(pid as i32);
        let oom_killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let oom = Arc::clone(&oom_killed);
        let events = oom_events.map(Path::to_owned);
        tokio::spawn(async move {
            let status = exit.await.unwrap_or(Exit {
                code: 255,
                signal: 0,
            });
            if let Some(events) = events {
                oom.store(oom_kills(&events) > 0, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = tx.send(Some(status));
        });
        Ok(Arc::new(Process {
            pid,
            exit: rx,
            oom_killed,
            terminal,
            stdin: tokio::sync::Mutex::new(stdin),
            stdout,
            stderr,
        }))
    }

    /// `berth` with the agent's state root, its errors as JSON in `log`.
    fn berth_command(&self, log: &Path) -> Command {
        let mut command = Command::new(&self.berth);
        command
            .arg("--root")
            .arg(STATE_ROOT)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json");
        command
    }

    /// Runs `berth ARGS` for a container; its standard output.
    async fn berth(&self, bundle: &Path, args: &[&str]) -> Result<Vec<u8>, AgentError> {
        let log = bundle.join("berth.log");
        let (out_read, out_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| failed("pipe", e))?;
        let mut command = self.berth_command(&log);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::null());
        let (_child, exited) = self
            .reaper
            .spawn(&mut command)
            .map_err(|e| failed(&format!("starting {}", self.berth.display()), e))?;
        drop(command);
        let mut out = pipe::Receiver::from_owned_fd(out_read).map_err(|e| failed("pipe", e))?;
        let mut stdout = Vec::new();
        let (status, _) = tokio::join!(exited, out.read_to_end(&mut stdout));
        let status = status.map_err(|_| AgentError::Failed("the reaper stopped".into()))?;
        if status.code != 0 {
            return Err(AgentError::Failed(format!(
                "berth {}: {}",
                args[0],
                last_error(&log).unwrap_or_else(|| format!("exit code {}", status.code))
            )));
        }
        Ok(stdout)
    }

    fn bundle(&self, id: &str) -> Result<PathBuf, AgentError> {
        lock(&self.containers)
            .get(id)
            .map(|c| c.bundle.clone())
            .ok_or_else(|| AgentError::NotFound(format!("container {id:?}")))
    }

    pub async fn start(&self, id: &str) -> Result<(), AgentError> {
        let bundle = self.bundle(id)?;
        self.berth(&bundle, &["start", id]).await.map(drop)
    }

    pub async fn pause(&self, id: &str) -> Result<(), AgentError> {
        let bundle = self.bundle(id)?;
        self.berth(&bundle, &["pause", id]).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<(), AgentError> {
        let bundle = self.bundle(id)?;
        self.berth(&bundle, &["resume", id]).await.map(drop)
    }

    pub async fn update(&self, id: &str, resources: &[u8]) -> Result<(), AgentError> {
        let bundle = self.bundle(id)?;
        let doc: Value = serde_json::from_slice(resources)
            .map_err(|e| invalid(format!("the resources: {e}")))?;
        if !doc.is_object() {
            return Err(invalid("the resources are not a JSON object".into()));
        }
        let file = bundle.join("update-resources.json");
        std::fs::write(&file, resources).map_err(|e| failed("writing the resources", e))?;
        let file = file.display().to_string();
        self.berth(&bundle, &["update", "--resources", &file, id])
            .await
            .map(drop)
    }

    /// The `data` of `berth events --stats` (runc's stats event).
    pub async fn stats(&self, id: &str) -> Result<Vec<u8>, AgentError> {
        let bundle = self.bundle(id)?;
        let out = self.berth(&bundle, &["events", "--stats", id]).await?;
        let event: Value =
            serde_json::from_slice(&out).map_err(|e| failed("reading berth's stats event", e))?;
        serde_json::to_vec(&event["data"]).map_err(|e| failed("encoding the stats", e))
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &[u8],
        stdin: bool,
    ) -> Result<u32, AgentError> {
        check_id("exec id", exec_id)?;
        let bundle = self.bundle(id)?;
        let terminal = serde_json::from_slice::<Value>(process)
            .map_err(|e| invalid(format!("the exec's process: {e}")))?["terminal"]
            .as_bool()
            .unwrap_or(false);
        {
            let mut containers = lock(&self.containers);
            let c = containers
                .get_mut(id)
                .ok_or_else(|| AgentError::NotFound(format!("container {id:?}")))?;
            if c.processes.contains_key(exec_id) {
                return Err(AgentError::AlreadyExists(format!(
                    "exec {exec_id:?} of container {id:?}"
                )));
            }
        }
        let spec = bundle.join(format!("exec-{exec_id}.json"));
        std::fs::write(&spec, process).map_err(|e| failed("writing the exec's process", e))?;
        let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
        let args = [
            "exec".to_owned(),
            "--process".to_owned(),
            spec.display().to_string(),
            "--detach".to_owned(),
            "--pid-file".to_owned(),
            pid_file.display().to_string(),
        ];
        let process = self
            .start_process(&bundle, &args, id, &pid_file, stdin, terminal, None)
            .await?;
        let pid = process.pid;
        let mut containers = lock(&self.containers);
        match containers.get_mut(id) {
            Some(c) => {
                c.processes.insert(exec_id.to_owned(), process);
                Ok(pid)
            }
            None => Err(AgentError::NotFound(format!(
                "container {id:?} (removed meanwhile)"
            ))),
        }
    }

    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), AgentError> {
        let process = self.process(id, exec_id)?;
        if process.exited() {
            return Err(AgentError::NotFound(format!(
                "process {exec_id:?} of container {id:?} has exited"
            )));
        }
        let signal = rustix::process::Signal::from_named_raw(signal as i32)
            .ok_or_else(|| invalid(format!("signal {signal} does not exist")))?;
        let pid = rustix::process::Pid::from_raw(process.pid as i32)
            .ok_or_else(|| invalid("PID 0".into()))?;
        rustix::process::kill_process(pid, signal).map_err(|e| failed("signalling", e))
    }

    pub async fn remove(&self, id: &str) -> Result<(), AgentError> {
        let bundle = self.bundle(id)?;
        // `delete --force` kills what runs in the container's cgroup.
        self.berth(&bundle, &["delete", "--force", id]).await?;
        self.forget(id, &bundle).await;
        Ok(())
    }

    async fn forget(&self, id: &str, bundle: &Path) {
        let root = bundle.join("rootfs");
        let _ = rustix::mount::unmount(&root, rustix::mount::UnmountFlags::DETACH);
        // Never a recursive removal through `rootfs`: were it still mounted
        // (a bound root is the host's snapshot, shared read-write), that
        // would delete the container's files on the host. rmdir refuses a
        // mount point.
        if let Ok(entries) = std::fs::read_dir(bundle) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path == root {
                    continue;
                }
                let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        let _ = std::fs::remove_dir(&root);
        let _ = std::fs::remove_dir(bundle);
        lock(&self.containers).remove(id);
    }
}

/// The host's spec, made the guest's: the overlay as root, no namespace
/// paths (they name the host's), the guest's cgroup.
fn adapt_spec(id: &str, spec: &mut Value, root: &Path) {
    spec["root"] = serde_json::json!({"path": root.display().to_string(), "readonly": spec["root"]["readonly"].as_bool().unwrap_or(false)});
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            // The VM is the pod: its containers share the guest's network
            // namespace (the pod's), as a pod's containers share one on a
            // host; a namespace the host side asked to join by path (the
            // pod's IPC and UTS) is the guest's own, so joined by leaving
            // the entry out. A PID namespace stays the container's own:
            // the guest's is the agent's.
            namespaces.retain(|ns| {
                let joins = ns
                    .get("path")
                    .is_some_and(|p| p.as_str().is_some_and(|p| !p.is_empty()));
                match ns["type"].as_str() {
                    Some("network") => false,
                    Some("ipc" | "uts") => !joins,
                    _ => true,
                }
            });
            for ns in namespaces.iter_mut() {
                if let Some(ns) = ns.as_object_mut() {
                    ns.remove("path");
                }
            }
        }
        linux.insert("cgroupsPath".into(), Value::String(format!("/berth/{id}")));
    }
}

/// The `oom_kill` count of a cgroup2 memory.events file (0 if unreadable).
fn oom_kills(events: &Path) -> u64 {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// The message of the last error line of berth's JSON log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or(line).to_owned())
    })
}
