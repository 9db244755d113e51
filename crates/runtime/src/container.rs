//! The lifecycle operations: create, start, run, exec, state, list, kill,
//! delete. This is the parent side; the child side lives in `init`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use berth_cgroups::Part;
use oci_spec::runtime::Process;
use rustix::fs::{Mode, OFlags};

use crate::error::Context;
use crate::error::Op;
use crate::handshake::{
    connect_console, foreground_signals, Child, Cleanup, Forked, Handshake, Kind, Seccomp,
};
use crate::init::{self, ExecContext, InitContext, StartGate};
use crate::namespaces::NsPlan;
use crate::spec::Bundle;
use crate::state::{hook_state, OciState, State, StateDir, Status};
use crate::{hooks, id, io_relay, sys, util, Error, Result};

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

/// The container's cgroups with `subs` applied: each hierarchy a sub-cgroup
/// names (or all, for one without controllers) is replaced by that existing
/// sub-directory, as runc's `exec --cgroup`.
fn sub_cgroups(
    cgroups: berth_cgroups::Manager,
    subs: &[(Option<Vec<String>>, PathBuf)],
) -> Result<berth_cgroups::Manager> {
    if subs.is_empty() {
        return Ok(cgroups);
    }
    let mut paths = cgroups.paths().to_vec();
    for (controllers, sub) in subs {
        if sub.is_absolute()
            || sub
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::InvalidConfig(format!(
                "--cgroup {}: must be a relative path below the container's cgroup",
                sub.display()
            )));
        }
        let mut matched = false;
        for (key, path) in paths.iter_mut() {
            let applies = match controllers {
                None => true,
                Some(list) => list.iter().any(|c| {
                    key.split(',')
                        .any(|k| k == c || k.strip_prefix("name=") == Some(c))
                        || (key.is_empty() && c == "unified")
                }),
            };
            if !applies {
                continue;
            }
            matched = true;
            let target = path.join(sub);
            if !target.is_dir() {
                return Err(Error::InvalidConfig(format!(
                    "--cgroup {}: sub-cgroup {} does not exist",
                    sub.display(),
                    target.display()
                )));
            }
            *path = target;
        }
        if !matched {
            return Err(Error::InvalidConfig(format!(
                "--cgroup {}: the container has no cgroup for controllers {:?}",
                sub.display(),
                controllers.as_deref().unwrap_or_default()
            )));
        }
    }
    Ok(berth_cgroups::Manager::from_paths(paths))
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

    fn launch(&self, opts: &CreateOptions, mode: Launch, io: ProcessIo) -> Result<Launched> {
        let ProcessIo { stdio, console } = io;
        id::validate_id(&opts.id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        let spec = &bundle.spec;
        let process = spec.process().as_ref().expect("validated");
        crate::attrs::validate(spec)?;
        let mut seccomp = Seccomp::compile(spec)?;
        let terminal = process.terminal() == Some(true);
        let has_console = opts.console_socket.is_some() || console.is_some();
        if terminal && !has_console && mode != Launch::RunForeground {
            return Err(Error::InvalidConfig(
                "process.terminal is true: a detached container needs --console-socket to hand the terminal to".into(),
            ));
        }
        if !terminal && has_console {
            return Err(Error::InvalidConfig(
                "--console-socket was given but process.terminal is false".into(),
            ));
        }

        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .ctx(|| format!("creating runtime root {}", self.root.display()))?;
        let dir = self.state_dir(&opts.id);
        // A user namespace's root opens the exec FIFO in here (as runc, the
        // directory is searchable; the FIFO itself is the mapped root's).
        let mapped_root = mapped_root(spec);
        let dir_mode = if mapped_root.is_some() { 0o711 } else { 0o700 };
        match std::fs::DirBuilder::new().mode(dir_mode).create(&dir.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::ContainerExists(opts.id.clone()))
            }
            Err(e) => {
                return Err(e).ctx(|| format!("creating state directory {}", dir.path.display()))
            }
        }
        let mut cleanup = Cleanup {
            state_dir: Some(dir.path.clone()),
            cgroups: None,
            children: Vec::new(),
        };

        let linux = spec.linux().as_ref().expect("validated");
        let cg_path = berth_cgroups::resolve_cgroups_path(
            linux.cgroups_path().as_ref().and_then(|p| p.to_str()),
            &opts.id,
            self.systemd_cgroup,
        )?;
        let cgroups = berth_cgroups::Manager::new(&cg_path)?;
        let plan = NsPlan::for_container(spec)?;
        // On a host with v1 hierarchies, their cgroups are made while the
        // init sets up its mounts, and it joins them before the first step
        // that needs them. Not when it must join them earlier: before it
        // becomes a user namespace's root (which may not write the host's
        // cgroup files), or before its cgroup namespace is made (whose root
        // is the cgroup it is in then).
        let defer_v1 =
            cgroups.has_v1() && !plan.has(libc::CLONE_NEWUSER) && !plan.has(libc::CLONE_NEWCGROUP);
        let first_part = if defer_v1 { Part::Unified } else { Part::All };
        cgroups.create_part(first_part)?;
        cleanup.cgroups = Some(cgroups.clone());
        // Limits are in place before any process of the container runs.
        let resources = linux.resources().as_ref();
        if let Some(resources) = resources {
            cgroups.check_resources(resources)?;
            cgroups.apply_part(resources, first_part)?;
        }
        let make_v1_cgroups = || -> Result<()> {
            cgroups.create_part(Part::V1)?;
            if let Some(resources) = resources {
                cgroups.apply_part(resources, Part::V1)?;
            }
            Ok(())
        };

        let console_socket = connect_console(opts.console_socket.as_deref(), console)?;
        let state_dir_fd = if mode == Launch::Create {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dir.fifo_path(),
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o622),
                0,
            )
            .ctx(|| "creating the exec FIFO".into())?;
            if let Some((uid, gid)) = mapped_root {
                rustix::fs::chown(
                    dir.fifo_path(),
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .ctx(|| "giving the exec FIFO to the container's root".into())?;
            }
            Some(
                rustix::fs::open(
                    &dir.path,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ctx(|| format!("opening {}", dir.path.display()))?,
            )
        } else {
            None
        };

        seccomp.connect_listener()?;
        // Id-mapped trees are made here, in berth's user namespace (mapping a
        // mount needs privilege over its filesystem); the init attaches them.
        let idmapped = crate::idmap::prepare_trees(spec, &bundle.dir)?;
        let signals = (mode == Launch::RunForeground)
            .then(|| foreground_signals(true))
            .transpose()?;
        let annotations: BTreeMap<String, String> = spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let run_hooks = |init_pid| {
            let state = hook_state(
                &opts.id,
                Status::Creating,
                init_pid,
                &bundle.dir,
                &annotations,
            );
            let hooks = spec.hooks().as_ref().expect("hooks were announced");
            #[allow(deprecated)]
            init::run_parent_hooks("prestart", hooks.prestart().as_ref(), &state)?;
            init::run_parent_hooks("createRuntime", hooks.create_runtime().as_ref(), &state)
        };
        let new_state = |init_pid, init_start_time| {
            let hooks = spec.hooks().as_ref();
            State {
                id: opts.id.clone(),
                init_pid,
                init_start_time,
                bundle: bundle.dir.clone(),
                rootfs: bundle.rootfs.clone(),
                created: berth_common::time::rfc3339_nano_padded(SystemTime::now()),
                owner: owner_name(),
                annotations: annotations.clone(),
                cgroup_paths: cgroups.paths().to_vec(),
                own_pid_ns: plan.new_pid,
                poststart: hooks
                    .and_then(|h| h.poststart().clone())
                    .unwrap_or_default(),
                poststop: hooks.and_then(|h| h.poststop().clone()).unwrap_or_default(),
            }
        };
        // While the init sets up: its config copy, and its state file under
        // a name no reader looks for, put in place once the init is ready
        // (with a two-stage init, whose pid comes later, it is written then).
        let staged = RefCell::new(None);
        let meanwhile = |pid: i32| -> Result<()> {
            // The config holds the container's environment: root-only.
            util::write_atomic(&dir.config_path(), &bundle.raw, 0o600)
                .ctx(|| format!("writing {}", dir.config_path().display()))?;
            if plan.two_stage {
                return Ok(());
            }
            // A child gone already is reported by the handshake.
            if let Some((_, start_time)) = util::proc_stat(pid) {
                let state = new_state(pid, start_time);
                let file = dir.stage(&state)?;
                *staged.borrow_mut() = Some((state, file));
            }
            Ok(())
        };
        let handshake = Handshake {
            kind: Kind::Init,
            spec,
            plan: &plan,
            cgroups: &cgroups,
            terminal,
            console: console_socket.as_ref(),
            stdio: stdio.as_ref(),
            preserve_fds: opts.preserve_fds,
            seccomp: &seccomp,
            run_hooks: Some(&run_hooks),
            deferred_cgroups: defer_v1.then_some(&make_v1_cgroups as &dyn Fn() -> Result<()>),
            meanwhile: Some(&meanwhile),
        };
        let init = match handshake.run(&mut cleanup)? {
            Forked::Parent(init) => init,
            Forked::Child(side) => init::container_init(
                &side,
                &InitContext {
                    id: &opts.id,
                    bundle: &bundle,
                    annotations: &annotations,
                    state_dir: state_dir_fd.as_ref(),
                    gate: if mode == Launch::Create {
                        StartGate::Fifo
                    } else {
                        StartGate::Channel
                    },
                    no_pivot: opts.no_pivot,
                    no_new_keyring: opts.no_new_keyring,
                    idmapped: &idmapped,
                },
            ),
        };

        let state = match staged.into_inner() {
            Some((state, file)) if state.init_pid == init.pid => {
                dir.commit(file)?;
                state
            }
            _ => {
                let start_time = util::proc_stat(init.pid)
                    .map(|(_, t)| t)
                    .ok_or_else(|| Error::Init("the container init exited during setup".into()))?;
                let state = new_state(init.pid, start_time);
                dir.save(&state)?;
                state
            }
        };
        if let Some(pid_file) = &opts.pid_file {
            write_pid_file(pid_file, init.pid)?;
        }
        cleanup.disarm();
        Ok(Launched {
            state,
            init,
            signals,
        })
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

    /// `kill`: sends `signal` to the init, or with `all` to every process
    /// in the container's cgroup. As with runc, the init of a stopped
    /// container cannot be signalled ("container not running", which
    /// containerd reads as "process already finished"), but `all` still
    /// reaches whatever is left in its cgroup, and does nothing once the
    /// cgroup is gone.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let (state, dir) = self.load(id)?;
        let status = state.status(&dir);
        if all {
            if status == Status::Stopped && !state.cgroups().exists() {
                return Ok(());
            }
            return signal_all(&state, signal);
        }
        if status == Status::Stopped {
            return Err(Error::wrong_state(id, status, Op::Kill));
        }
        signal_init(&state, signal)?;
        if status == Status::Paused && signal == libc::SIGKILL {
            // A frozen process acts on SIGKILL only once thawed (runc thaws too).
            thaw(&state);
        }
        Ok(())
    }

    /// `delete`: removes a stopped or created (or, with `force`, any)
    /// container: kills what is left of it, runs poststop hooks, removes
    /// its cgroup and state. As runc's, it fails only for a container that
    /// does not exist or is running or paused without `force`; a cgroup
    /// that cannot be removed is logged as an error, the state goes anyway.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let (state, dir) = match self.load(id) {
            Ok(x) => x,
            // A container that was never fully created, or whose state file is
            // unreadable: with --force, clear what is there.
            Err(Error::ContainerNotFound(_) | Error::ParseConfig { .. }) if force => {
                // runc succeeds here; leave nothing behind of a half-made container.
                let dir = self.state_dir(id);
                let _ = std::fs::remove_dir_all(&dir.path);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let status = state.status(&dir);
        match status {
            Status::Stopped => {}
            Status::Created | Status::Creating => {
                let _ = signal_init(&state, libc::SIGKILL);
                wait_gone(&state);
            }
            Status::Running | Status::Paused if force => {
                let _ = signal_init(&state, libc::SIGKILL);
                if let Err(e) = signal_all(&state, libc::SIGKILL) {
                    log::warn!("killing the processes of {id}: {e}");
                }
                wait_gone(&state);
            }
            Status::Running | Status::Paused => {
                return Err(Error::wrong_state(id, status, Op::Delete))
            }
        }
        // What is left in the cgroup is killed, as runc's destroy does, when
        // the container has no PID namespace of its own (its processes
        // outlive its init) or with --force: a cgroup holding processes
        // cannot be removed. (A container's own PID namespace dies with its
        // init; what else sits in its cgroup is not the container's.)
        let cgroups = state.cgroups();
        let kill_leftovers = || {
            if let Err(e) = signal_all(&state, libc::SIGKILL) {
                log::warn!("killing the processes left in {id}'s cgroup: {e}");
            }
            wait_cgroup_empty(&cgroups);
        };
        // A stopped container with its own PID namespace has nothing left
        // (the kernel killed the namespace with its init): its cgroup is
        // removed at once, without walking it for processes (`run` ends
        // this way every time); only if that fails are leftovers killed.
        let quiet = status == Status::Stopped && state.own_pid_ns;
        if !quiet && (force || !state.own_pid_ns) && cgroups.exists() {
            kill_leftovers();
        }
        let mut removed = cgroups.remove();
        if removed.is_err() && quiet && force {
            kill_leftovers();
            removed = cgroups.remove();
        }
        let hook_input = hook_state(id, Status::Stopped, 0, &state.bundle, &state.annotations);
        hooks::run_hooks_warn("poststop", &state.poststop, &hook_input);
        dir.remove()
            .ctx(|| format!("removing {}", dir.path.display()))?;
        if let Err(e) = removed {
            log::error!("removing the cgroup of {id}: {e}");
        }
        Ok(())
    }

    /// `exec`: runs another process in a running container. In the
    /// foreground, returns its exit code.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        self.exec_with_io(id, opts, ProcessIo::default())
            .map(|r| r.exit_code.unwrap_or(0))
    }

    /// `exec` with explicit stdio and terminal socket.
    pub fn exec_with_io(&self, id: &str, opts: &ExecOptions, io: ProcessIo) -> Result<ExecResult> {
        let ProcessIo { stdio, console } = io;
        let (state, dir) = self.load(id)?;
        let status = state.status(&dir);
        match status {
            Status::Running | Status::Created => {}
            Status::Paused if opts.ignore_paused => {}
            _ => return Err(Error::wrong_state(id, status, Op::Exec)),
        }
        let process = &opts.process;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Error::InvalidConfig("exec needs a command to run".into()));
        }
        let terminal = process.terminal() == Some(true);
        if terminal && opts.console_socket.is_none() && console.is_none() && opts.detach {
            return Err(Error::InvalidConfig(
                "a detached exec with a terminal needs --console-socket".into(),
            ));
        }
        let console_socket = connect_console(opts.console_socket.as_deref(), console)?;
        crate::attrs::validate_process(process)?;
        // Exec'd processes get the container's seccomp profile, as with runc.
        let container_spec = self.container_config(id)?;
        let mut seccomp = Seccomp::compile(&container_spec)?;
        seccomp.connect_listener()?;
        let plan = NsPlan::for_exec(state.init_pid)?;
        if !state.init_alive() {
            return Err(Error::wrong_state(id, Status::Stopped, Op::Exec));
        }
        let signals = (!opts.detach)
            .then(|| foreground_signals(false))
            .transpose()?;
        let cgroups = sub_cgroups(state.cgroups(), &opts.sub_cgroups)?;
        // Into a frozen cgroup the process would freeze mid-setup: it joins
        // only once it runs its program (`--ignore-paused`), and runs when
        // the container is resumed.
        let paused = status == Status::Paused;
        let setup_cgroups = if paused {
            berth_cgroups::Manager::from_paths(Vec::new())
        } else {
            cgroups.clone()
        };
        let mut cleanup = Cleanup::default();
        let handshake = Handshake {
            kind: Kind::Exec,
            spec: &container_spec,
            plan: &plan,
            cgroups: &setup_cgroups,
            terminal,
            console: console_socket.as_ref(),
            stdio: stdio.as_ref(),
            preserve_fds: opts.preserve_fds,
            seccomp: &seccomp,
            run_hooks: None,
            deferred_cgroups: None,
            meanwhile: None,
        };
        let child = match handshake.run(&mut cleanup)? {
            Forked::Parent(child) => child,
            Forked::Child(side) => init::exec_init(
                &side,
                &ExecContext {
                    process,
                    container: &container_spec,
                    state: hook_state(
                        id,
                        Status::Running,
                        state.init_pid,
                        &state.bundle,
                        &state.annotations,
                    ),
                },
            ),
        };
        child.start()?;
        let pid = child.pid;
        if paused {
            cgroups.add_process(pid)?;
        }
        if let Some(pid_file) = &opts.pid_file {
            write_pid_file(pid_file, pid)?;
        }
        cleanup.disarm();
        if opts.detach {
            return Ok(ExecResult {
                pid,
                exit_code: None,
            });
        }
        let code = io_relay::wait_foreground(
            pid,
            signals.as_ref().map(|s| s.as_fd()),
            child.pty.as_ref().map(|p| p.as_fd()),
            false,
        )?;
        Ok(ExecResult {
            pid,
            exit_code: Some(code),
        })
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

/// Signals the init through a pidfd, after checking it is still our init.
fn signal_init(state: &State, signal: i32) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(state.init_pid)
        .ok_or_else(|| Error::Init("bad init pid".into()))?;
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e).ctx(|| format!("opening process {}", state.init_pid)),
    };
    if !state.init_alive() || signal == 0 {
        // Signal 0 only asks whether the init exists (runc's `kill ID 0`).
        return Ok(());
    }
    let sig = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| Error::UnknownSignal(signal.to_string()))?;
    match rustix::process::pidfd_send_signal(&pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("signalling the container init ({})", state.init_pid)),
    }
}

/// Waits (up to 10 s) for the init to be gone.
fn wait_gone(state: &State) {
    let Some(pid) = rustix::process::Pid::from_raw(state.init_pid) else {
        return;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.init_alive() && Instant::now() < deadline {
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }
}

/// Signals every process in the container's cgroup (and the cgroups below
/// it). Processes forked meanwhile are caught by further passes, until one
/// finds nobody new; after SIGKILL a frozen cgroup is thawed so that its
/// processes can die.
fn signal_all(state: &State, signal: i32) -> Result<()> {
    let cgroups = state.cgroups();
    let mut signalled = std::collections::HashSet::new();
    for _ in 0..16 {
        let fresh: Vec<i32> = crate::manage::all_pids(&cgroups)?
            .into_iter()
            .filter(|pid| signalled.insert(*pid))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            match sys::kill(pid, signal) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e).ctx(|| format!("signalling process {pid}")),
            }
        }
    }
    if signal == libc::SIGKILL {
        thaw(state);
    }
    Ok(())
}

/// Waits (up to 5 s) for the processes of a cgroup to be gone.
fn wait_cgroup_empty(cgroups: &berth_cgroups::Manager) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut delay = Duration::from_micros(200);
    while crate::manage::all_pids(cgroups).is_ok_and(|p| !p.is_empty()) && Instant::now() < deadline
    {
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

fn thaw(state: &State) {
    for (key, path) in &state.cgroup_paths {
        if key.split(',').any(|c| c == "freezer") {
            let _ = std::fs::write(path.join("freezer.state"), "THAWED");
        } else if key.is_empty() {
            let _ = std::fs::write(path.join("cgroup.freeze"), "0");
        }
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let path = std::path::absolute(path).ctx(|| format!("pid file {}", path.display()))?;
    util::write_atomic(&path, pid.to_string().as_bytes(), 0o644)
        .ctx(|| format!("writing pid file {}", path.display()))
}

fn owner_name() -> String {
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        return "root".into();
    }
    uid.to_string()
}

/// The host uid and gid of a user-namespaced container's root (container
/// id 0 in linux.uidMappings/gidMappings), if it has mappings.
fn mapped_root(spec: &oci_spec::runtime::Spec) -> Option<(u32, u32)> {
    let linux = spec.linux().as_ref()?;
    let host_of_root = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .find_map(|m| (m.container_id() == 0 && m.size() > 0).then_some(m.host_id()))
    };
    Some((
        host_of_root(linux.uid_mappings())?,
        host_of_root(linux.gid_mappings())?,
    ))
}
