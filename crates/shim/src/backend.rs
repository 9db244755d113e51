//! How containers are run: in this process through berth-runtime (the
//! `berth` handler), or through another OCI runtime's command line (runc,
//! crun, runsc) as containerd's runc shim drives it.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_runtime::{CreateOptions, ExecOptions, ProcessIo, Runtime};
use oci_spec::runtime::{LinuxResources, Process};

use crate::error::{Context, Result, ShimError};

/// Blocks until a container ends: (its exit status, the pid of a helper
/// process whose exit the shim's reaper may have recorded).
pub type ExitWaiter = Box<dyn FnOnce() -> (u32, Option<i32>) + Send>;

pub enum Backend {
    InProcess(Runtime),
    Cli(Cli),
    /// In the pod's VM, through its guest agent (the `vm` runtime class).
    Vm(crate::vm::VmContainer),
}

pub struct Cli {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// Global flags for the runtime binary (runsc's `--network=none`, ...).
    pub args: Vec<String>,
    /// The init's stdio, kept from create for start: gVisor gives a
    /// container's process the stdio of `runsc start`, not of create.
    pub init_stdio: std::sync::Mutex<Option<[std::os::fd::OwnedFd; 3]>>,
}

impl Backend {
    /// For runtimes whose container processes are not the shim's
    /// descendants (gVisor): a blocking call returning the exit status, and
    /// the pid of the helper process it ran (the shim's reaper may reap it
    /// first; the caller forgets that exit).
    pub fn exit_waiter(&self, id: &str) -> Option<ExitWaiter> {
        if let Backend::Vm(vm) = self {
            return Some(vm.exit_waiter(id, ""));
        }
        let Backend::Cli(cli) = self else { return None };
        if cli.binary.file_name().is_none_or(|n| n != "runsc") {
            return None;
        }
        let mut cmd = cli.base();
        // runsc's complaints go to the shim's stderr: its log.
        cmd.args(["wait", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let id = id.to_owned();
        Some(Box::new(move || runsc_wait(cmd, &id)))
    }

    pub fn in_process(root: &Path, systemd_cgroup: bool) -> Backend {
        Backend::InProcess(Runtime {
            root: root.to_owned(),
            systemd_cgroup,
        })
    }

    /// Whether an exec's exit is reported by the runtime rather than seen
    /// by the shim's reaper (a process in a VM): a blocking wait for it.
    pub fn exec_exit_waiter(&self, id: &str, exec_id: &str) -> Option<ExitWaiter> {
        match self {
            Backend::Vm(vm) => Some(vm.exit_waiter(id, exec_id)),
            _ => None,
        }
    }

    /// Whether the pids this backend reports are the host's (not a VM's).
    pub fn host_pids(&self) -> bool {
        !matches!(self, Backend::Vm(_))
    }

    /// `stdin`: whether the client gave the process an input.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        io: ProcessIo,
        stdin: bool,
        no_pivot: bool,
        no_new_keyring: bool,
    ) -> Result<i32> {
        match self {
            Backend::Vm(vm) => vm.create(id, bundle, io, stdin),
            Backend::InProcess(rt) => {
                let opts = CreateOptions {
                    id: id.to_owned(),
                    bundle: bundle.to_owned(),
                    no_pivot,
                    no_new_keyring,
                    ..Default::default()
                };
                Ok(rt.create_with_io(&opts, io)?)
            }
            Backend::Cli(cli) => {
                let pid_file = bundle.join("init.pid");
                let mut args: Vec<String> = vec![
                    "create".into(),
                    "--bundle".into(),
                    bundle.display().to_string(),
                    "--pid-file".into(),
                    pid_file.display().to_string(),
                ];
                if no_pivot {
                    args.push("--no-pivot".into());
                }
                if no_new_keyring {
                    args.push("--no-new-keyring".into());
                }
                if let Some([i, o, e]) = &io.stdio {
                    let dup = |f: &std::os::fd::OwnedFd| {
                        f.try_clone()
                            .context(|| format!("duplicating the stdio of {id}"))
                    };
                    *cli.init_stdio.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some([dup(i)?, dup(o)?, dup(e)?]);
                }
                cli.run_with_io(&args, id, bundle, io)?;
                read_pid(&pid_file)
            }
        }
    }

    pub fn start(&self, id: &str, bundle: &Path) -> Result<()> {
        match self {
            Backend::Vm(vm) => vm.start(id),
            Backend::InProcess(rt) => Ok(rt.start(id)?),
            Backend::Cli(cli) => {
                let stdio = cli
                    .init_stdio
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                cli.run_with_io(
                    &["start".to_owned()],
                    id,
                    bundle,
                    ProcessIo {
                        stdio,
                        console: None,
                    },
                )
            }
        }
    }

    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        process: &Process,
        io: ProcessIo,
        stdin: bool,
    ) -> Result<i32> {
        match self {
            Backend::Vm(vm) => vm.exec(id, exec_id, process, io, stdin),
            Backend::InProcess(rt) => {
                let opts = ExecOptions {
                    process: process.clone(),
                    detach: true,
                    ..Default::default()
                };
                Ok(rt.exec_with_io(id, &opts, io).map(|r| r.pid)?)
            }
            Backend::Cli(cli) => {
                let spec_file = bundle.join(format!("exec-{exec_id}.json"));
                let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
                let json = serde_json::to_vec(process).map_err(std::io::Error::from);
                json.and_then(|json| std::fs::write(&spec_file, json))
                    .context(|| format!("writing {}", spec_file.display()))?;
                let args: Vec<String> = vec![
                    "exec".into(),
                    "--process".into(),
                    spec_file.display().to_string(),
                    "--detach".into(),
                    "--pid-file".into(),
                    pid_file.display().to_string(),
                ];
                let result = cli.run_with_io(&args, id, bundle, io);
                let _ = std::fs::remove_file(&spec_file);
                result?;
                let pid = read_pid(&pid_file);
                let _ = std::fs::remove_file(&pid_file);
                pid
            }
        }
    }

    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        match self {
            Backend::Vm(vm) => vm.kill(id, "", signal as u32),
            Backend::InProcess(rt) => Ok(rt.kill(id, signal, all)?),
            Backend::Cli(cli) => {
                let sig = signal.to_string();
                let mut args = vec!["kill"];
                if all {
                    args.push("--all");
                }
                args.extend([id, sig.as_str()]);
                cli.run(&args, None).map(drop)
            }
        }
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        match self {
            Backend::Vm(vm) => vm.delete(id),
            Backend::InProcess(rt) => Ok(rt.delete(id, force)?),
            Backend::Cli(cli) => {
                let mut args = vec!["delete"];
                if force {
                    args.push("--force");
                }
                args.push(id);
                cli.run(&args, None).map(drop)
            }
        }
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        match self {
            Backend::Vm(vm) => vm.set_paused(id, true),
            Backend::InProcess(rt) => Ok(rt.pause(id)?),
            Backend::Cli(cli) => cli.run(&["pause", id], None).map(drop),
        }
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        match self {
            Backend::Vm(vm) => vm.set_paused(id, false),
            Backend::InProcess(rt) => Ok(rt.resume(id)?),
            Backend::Cli(cli) => cli.run(&["resume", id], None).map(drop),
        }
    }

    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        match self {
            Backend::Vm(vm) => vm.update(id, resources),
            Backend::InProcess(rt) => Ok(rt.update(id, resources)?),
            Backend::Cli(cli) => {
                let json = serde_json::to_vec(resources)
                    .map_err(|e| ShimError::InvalidArgument(format!("resources: {e}")))?;
                cli.run(&["update", "--resources", "-", id], Some(&json))
                    .map(drop)
            }
        }
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        match self {
            Backend::Vm(vm) => vm.pids(id),
            Backend::InProcess(rt) => Ok(rt.pids(id)?),
            Backend::Cli(cli) => {
                let out = cli.run(&["ps", "--format", "json", id], None)?;
                serde_json::from_slice::<Option<Vec<i32>>>(&out)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| ShimError::RuntimeBinary(format!("parsing ps output: {e}")))
            }
        }
    }

    pub fn cgroups(&self, id: &str, init_pid: i32) -> Result<berth_cgroups::Manager> {
        match self {
            Backend::InProcess(rt) => Ok(rt.cgroups(id)?),
            Backend::Cli(_) => Ok(berth_cgroups::Manager::of_process(init_pid)?),
            Backend::Vm(_) => Err(ShimError::Unimplemented(format!(
                "{id} runs in a VM: its cgroups are the guest's"
            ))),
        }
    }

    /// Resource usage, runc's `events --stats` data, through the
    /// container's `cache` (its cgroup and open files, set up at the first
    /// call).
    pub fn stats(
        &self,
        id: &str,
        init_pid: i32,
        cache: &mut StatsCache,
    ) -> Result<berth_cgroups::Stats> {
        if let Backend::Vm(vm) = self {
            return vm.stats(id);
        }
        let (cgroups, files) = match &mut cache.0 {
            Some(c) => c,
            None => cache
                .0
                .insert((self.cgroups(id, init_pid)?, Default::default())),
        };
        Ok(cgroups.stats_with(files)?)
    }

    /// Signals an exec (by its pid on the host, or through the VM's agent).
    pub fn kill_exec(&self, id: &str, exec_id: &str, pid: i32, signal: i32) -> Result<()> {
        if let Backend::Vm(vm) = self {
            return vm.kill(id, exec_id, signal as u32);
        }
        let pid = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| ShimError::FailedPrecondition("exec not started".into()))?;
        let signal = rustix::process::Signal::from_named_raw(signal)
            .ok_or_else(|| ShimError::InvalidArgument(format!("signal {signal}")))?;
        rustix::process::kill_process(pid, signal).context(|| format!("signalling exec {exec_id}"))
    }

    /// Sets the size of a VM process's terminal (the guest's); a no-op for
    /// processes whose terminal the shim holds.
    pub fn resize_guest_terminal(&self, id: &str, exec_id: &str, w: u32, h: u32) -> Result<()> {
        match self {
            Backend::Vm(vm) => vm.resize(id, exec_id, w, h),
            _ => Ok(()),
        }
    }
}

/// A container's cgroup and the files its usage is read from, kept
/// between Stats calls (the cgroup does not move while the container
/// lives): finding the cgroup loads the runtime's state, and each file
/// read afresh would cost a path walk, an open and a close.
#[derive(Default)]
pub struct StatsCache(Option<(berth_cgroups::Manager, berth_cgroups::StatsFiles)>);

fn read_pid(path: &Path) -> Result<i32> {
    std::fs::read_to_string(path)
        .context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .map_err(|_| ShimError::RuntimeBinary(format!("{} holds no pid", path.display())))
}

impl Cli {
    fn base(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(&self.args);
        cmd
    }

    /// Runs a command that needs no stdio; returns its stdout.
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>> {
        let mut cmd = self.base();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context(|| format!("running {}", self.binary.display()))?;
        if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
            let _ = w.write_all(data);
        }
        let out = child
            .wait_with_output()
            .context(|| format!("running {}", self.binary.display()))?;
        if !out.status.success() {
            return Err(ShimError::RuntimeBinary(format!(
                "{} {}: {}",
                self.binary.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }

    /// Runs create or exec with the process's stdio, relaying a terminal
    /// from a console socket path to the shim's socket pair.
    fn run_with_io(&self, args: &[String], id: &str, bundle: &Path, io: ProcessIo) -> Result<()> {
        let log = bundle.join("log.json");
        let mut cmd = self.base();
        cmd.arg("--log").arg(&log).arg("--log-format").arg("json");
        cmd.args(args);
        let mut listener = None;
        let sock_path = bundle.join(format!("console-{}.sock", std::process::id()));
        if io.console.is_some() {
            let _ = std::fs::remove_file(&sock_path);
            listener = Some(UnixListener::bind(&sock_path).context(|| "console socket".into())?);
            cmd.arg("--console-socket").arg(&sock_path);
        }
        cmd.arg(id);
        match io.stdio {
            Some([i, o, e]) => {
                cmd.stdin(Stdio::from(i))
                    .stdout(Stdio::from(o))
                    .stderr(Stdio::from(e));
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
        }
        let status = cmd
            .status()
            .context(|| format!("running {}", self.binary.display()));
        let relay = match (listener, io.console) {
            (Some(l), Some(to)) => relay_console(&l, &to),
            _ => Ok(()),
        };
        let _ = std::fs::remove_file(&sock_path);
        let status = status?;
        if !status.success() {
            return Err(ShimError::RuntimeBinary(last_error(&log).unwrap_or_else(
                || {
                    format!(
                        "{} {} failed: {status}",
                        self.binary.display(),
                        args.join(" ")
                    )
                },
            )));
        }
        relay
    }
}

/// Runs `runsc wait ID`: {"id": "...", "exitStatus": N} on stdout, N being
/// the code or 128 + the signal. The answer is read from the pipe before the
/// helper is waited for, because the shim's reaper (waitpid(-1) on the main
/// thread) can take the helper's own status first (ECHILD here).
fn runsc_wait(mut cmd: Command, id: &str) -> (u32, Option<i32>) {
    use std::io::Read;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log::warn!("runsc wait {id}: {e}");
            return (255, None);
        }
    };
    let pid = child.id() as i32;
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    let status = child.wait();
    let code = serde_json::from_slice::<serde_json::Value>(&stdout)
        .ok()
        .and_then(|v| v["exitStatus"].as_u64());
    match code {
        Some(code) => (code as u32, Some(pid)),
        None => {
            log::warn!(
                "runsc wait {id}: {status:?}; stdout {:?}",
                String::from_utf8_lossy(&stdout)
            );
            (255, Some(pid))
        }
    }
}

/// Passes the terminal master the runtime sent to the shim's own socket.
fn relay_console(listener: &UnixListener, to: &UnixStream) -> Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    listener
        .set_nonblocking(true)
        .context(|| "console socket".into())?;
    let (conn, _) = listener
        .accept()
        .context(|| "no terminal from the runtime".into())?;
    conn.set_nonblocking(false)
        .context(|| "console socket".into())?;
    let mut buf = [0u8; 256];
    let (len, master) = berth_common::socket::recv_fd(&conn, &mut buf)
        .context(|| "receiving the terminal from the runtime".into())?;
    let master =
        master.ok_or_else(|| ShimError::RuntimeBinary("the runtime sent no terminal".into()))?;
    let fds = [std::os::fd::AsFd::as_fd(&master)];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        to,
        &[std::io::IoSlice::new(&buf[..len])],
        &mut control,
        SendFlags::empty(),
    )
    .context(|| "passing on the terminal".into())?;
    Ok(())
}

/// The last error a runtime wrote to its JSON log (containerd does the same).
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or("").to_owned())
    })
}
