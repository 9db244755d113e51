//! The lifecycle operations: create, start, run, exec, state, list, kill,
//! delete. This is the parent side; the child side lives in `init`.
//! `launch` sets a new container up (create and run), `exec` starts another
//! process in one, `stop` holds kill and delete.

mod exec;
mod launch;
mod stop;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Process;
use rustix::fs::{Mode, OFlags};

use crate::error::{Context, Op};
use crate::handshake::Child;
use crate::state::{hook_state, OciState, State, StateDir, Status};
use crate::{hooks, id, io_relay, util, Error, Result};

/// Global settings of one runtime invocation.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Directory holding container states (`--root`).
    pub root: PathBuf,
    /// `--systemd-cgroup`.
    pub systemd_cgroup: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
}

#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub process: Process,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
    /// Exec into a paused container too (`--ignore-paused`).
    pub ignore_paused: bool,
    /// Existing sub-cgroups of the container's to run in (`--cgroup
    /// [CONTROLLER[,CONTROLLER]:]PATH`): controllers (None: all) and path.
    pub sub_cgroups: Vec<(Option<Vec<String>>, PathBuf)>,
}

/// Where a new process's stdio and terminal go when the caller is a
/// long-lived monitor (the shim) rather than a CLI whose own stdio the
/// process inherits.
#[derive(Debug, Default)]
pub struct ProcessIo {
    /// Becomes the process's stdin, stdout and stderr.
    pub stdio: Option<[OwnedFd; 3]>,
    /// A connected socket that receives the terminal's master (instead of
    /// connecting to a --console-socket path).
    pub console: Option<UnixStream>,
}

/// What `exec` started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecResult {
    pub pid: i32,
    /// The exit code, for a foreground exec.
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    Create,
    RunDetached,
    RunForeground,
}

/// What a launched container init gives back to `run`.
struct Launched {
    state: State,
    init: Child,
    signals: Option<OwnedFd>,
}

impl Runtime {
    fn state_dir(&self, id: &str) -> StateDir {
        StateDir::new(&self.root, id)
    }

    pub(crate) fn load(&self, id: &str) -> Result<(State, StateDir)> {
        id::validate_id(id)?;
        let dir = self.state_dir(id);
        let state = dir.load(id)?;
        Ok((state, dir))
    }

    /// `create`: sets the container up and leaves its init waiting for `start`.
    pub fn create(&self, opts: &CreateOptions) -> Result<()> {
        self.launch(opts, Launch::Create, ProcessIo::default())
            .map(drop)
    }

    /// `create` with explicit stdio and terminal socket; returns the init pid.
    pub fn create_with_io(&self, opts: &CreateOptions, io: ProcessIo) -> Result<i32> {
        self.launch(opts, Launch::Create, io)
            .map(|l| l.state.init_pid)
    }

    /// `run`: create and start; in the foreground, wait for the container,
    /// relay signals (and the terminal), delete it and return its exit code.
    pub fn run(&self, opts: &CreateOptions, detach: bool) -> Result<i32> {
        let mode = if detach {
            Launch::RunDetached
        } else {
            Launch::RunForeground
        };
        let launched = self.launch(opts, mode, ProcessIo::default())?;
        let started = self.release(&launched);
        if let Err(e) = started {
            let _ = self.delete(&opts.id, true);
            return Err(e);
        }
        if detach {
            return Ok(0);
        }
        let code = io_relay::wait_foreground(
            launched.state.init_pid,
            launched.signals.as_ref().map(|s| s.as_fd()),
            launched.init.pty.as_ref().map(|p| p.as_fd()),
            true,
        );
        let deleted = self.delete(&opts.id, true);
        let code = code?;
        deleted?;
        Ok(code)
    }

    /// Tells the init to exec the user program and runs poststart hooks.
    fn release(&self, launched: &Launched) -> Result<()> {
        launched.init.start()?;
        let state = hook_state(
            &launched.state.id,
            Status::Running,
            launched.state.init_pid,
            &launched.state.bundle,
            &launched.state.annotations,
        );
        hooks::run_hooks_warn("poststart", &launched.state.poststart, &state);
        Ok(())
    }

    /// `start`: releases a created container's init to exec the user program.
    pub fn start(&self, id: &str) -> Result<()> {
        let (state, dir) = self.load(id)?;
        let status = state.status(&dir);
        if status != Status::Created {
            return Err(Error::wrong_state(id, status, Op::Start));
        }
        // The pidfd first: once the FIFO is open the init runs the user
        // program, which may exit at once; that is still a successful start.
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(state.init_pid)
                .ok_or_else(|| Error::Init("bad init pid".into()))?,
            rustix::process::PidfdFlags::empty(),
        )
        .ctx(|| format!("opening the init process of {id:?}"))?;
        if !state.init_alive() {
            return Err(Error::wrong_state(id, Status::Stopped, Op::Start));
        }
        let fifo = rustix::fs::open(
            dir.fifo_path(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| "opening the exec FIFO".into())?;
        loop {
            let mut fds = [
                rustix::event::PollFd::new(&fifo, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e).ctx(|| "waiting for the container init".into()),
                Ok(_) => {}
            }
            if fds[0].revents().contains(rustix::event::PollFlags::IN) {
                let mut byte = [0u8; 1];
                match rustix::io::read(&fifo, &mut byte) {
                    Ok(1) => break,
                    Ok(_) | Err(rustix::io::Errno::AGAIN) => {}
                    Err(e) => return Err(e).ctx(|| "reading the exec FIFO".into()),
                }
            }
            if fds[1].revents().contains(rustix::event::PollFlags::IN) {
                return Err(Error::Init(format!(
                    "container {id:?}: its init process exited before it could start"
                )));
            }
            if fds[0].revents().contains(rustix::event::PollFlags::HUP) {
                // A writer came and went without a byte: the init died.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = std::fs::remove_file(dir.fifo_path());
        let hook_input = hook_state(
            id,
            Status::Running,
            state.init_pid,
            &state.bundle,
            &state.annotations,
        );
        hooks::run_hooks_warn("poststart", &state.poststart, &hook_input);
        Ok(())
    }

    /// `state`: the OCI state of one container.
    pub fn state(&self, id: &str) -> Result<OciState> {
        let (state, dir) = self.load(id)?;
        Ok(state.oci_state(state.status(&dir)))
    }

    /// `list`: the OCI state of every container under the root.
    pub fn list(&self) -> Result<Vec<OciState>> {
        let mut out = Vec::new();
        for id in crate::state::list_ids(&self.root)? {
            match self.load(&id) {
                Ok((state, dir)) => out.push(state.oci_state(state.status(&dir))),
                Err(e) => log::warn!("skipping {id}: {e}"),
            }
        }
        Ok(out)
    }

    /// The config.json a container was created with.
    pub fn container_config(&self, id: &str) -> Result<oci_spec::runtime::Spec> {
        let (_, dir) = self.load(id)?;
        let path = dir.config_path();
        let raw = std::fs::read(&path).map_err(|source| Error::ReadConfig {
            path: path.clone(),
            source,
        })?;
        crate::spec::parse_spec(&raw).map_err(|message| Error::ParseConfig { path, message })
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let path = std::path::absolute(path).ctx(|| format!("pid file {}", path.display()))?;
    util::write_atomic(&path, pid.to_string().as_bytes(), 0o644)
        .ctx(|| format!("writing pid file {}", path.display()))
}
