//! The child side of container creation and exec: runs in the forked
//! process, inside the new namespaces, and ends in exec of the user program.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use berth_cgroups::Part;
use oci_spec::runtime::{Hook, Process};
use rustix::fs::OFlags;

use crate::channel::{Channel, Msg};
use crate::error::Context;
use crate::namespaces::NsPlan;
use crate::process::{self, Program};
use crate::rootfs::{self, RootfsSetup};
use crate::spec::Bundle;
use crate::state::{hook_state, Status, EXEC_FIFO};
use crate::{hooks, sys, Error, Result};

/// How the user process is released once set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartGate {
    /// Wait until `berth start` opens the exec FIFO.
    Fifo,
    /// Wait for Start on the channel (run, exec).
    Channel,
}

/// Where a terminal's master side goes.
pub enum ConsoleTarget<'a> {
    None,
    /// The caller's --console-socket.
    Socket(&'a UnixStream),
    /// Back to berth, which relays it to its own stdio.
    Parent,
}

/// A compiled seccomp filter and where its notifications go.
pub struct SeccompSetup<'a> {
    pub filter: &'a crate::seccomp::Filter,
    /// Connected to linux.seccomp.listenerPath when the filter notifies.
    pub listener: Option<&'a UnixStream>,
    /// listenerMetadata, passed on to the listener.
    pub metadata: String,
}

impl SeccompSetup<'_> {
    /// Loads the filter; hands a notify fd to the listener with the
    /// container process state, as the runtime-spec describes.
    fn load(&self, state: &[u8]) -> Result<()> {
        let Some(fd) = self.filter.load()? else {
            return Ok(());
        };
        let listener = self.listener.ok_or_else(|| {
            Error::InvalidConfig("seccomp: SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath".into())
        })?;
        let state: serde_json::Value = serde_json::from_slice(state).unwrap_or_default();
        let payload = serde_json::json!({
            "ociVersion": crate::state::OCI_VERSION,
            "fds": ["seccompFd"],
            "pid": state["pid"],
            "metadata": self.metadata,
            "state": state,
        });
        let bytes = serde_json::to_vec(&payload).unwrap_or_default();
        sys::send_fd(listener.as_fd(), &bytes, fd.as_raw_fd())
            .ctx(|| "sending the seccomp notify fd to the listener".into())
    }
}

/// What both kinds of child get from the parent's handshake
/// (`crate::handshake`).
pub struct ChildSide<'a> {
    pub channel: Channel,
    pub plan: &'a NsPlan,
    pub cgroups: &'a berth_cgroups::Manager,
    /// Born in the cgroup v2 directory already (CLONE_INTO_CGROUP).
    pub in_unified: bool,
    /// The v1 cgroups are made by berth while the child sets up: the child
    /// joins them when berth says they are ready, before it needs them
    /// ([`ChildSide::join_deferred_cgroups`]).
    pub cgroups_deferred: bool,
    /// Whether the deferred cgroups were joined.
    pub deferred_joined: Cell<bool>,
    pub console: ConsoleTarget<'a>,
    /// Replaces the inherited stdio when set.
    pub stdio: Option<&'a [OwnedFd; 3]>,
    pub preserve_fds: u32,
    pub seccomp: Option<SeccompSetup<'a>>,
}

pub struct InitContext<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    /// The config's annotations, for the hooks' state.
    pub annotations: &'a BTreeMap<String, String>,
    pub state_dir: Option<&'a OwnedFd>,
    pub gate: StartGate,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// Id-mapped trees prepared by berth, by mount index.
    pub idmapped: &'a [(usize, OwnedFd)],
}

pub struct ExecContext<'a> {
    pub process: &'a Process,
    /// The container's config (personality and other container-wide attributes).
    pub container: &'a oci_spec::runtime::Spec,
    /// The container's state, for a seccomp listener.
    pub state: Vec<u8>,
}

/// Reports `err` to berth (or, if it is gone, to stderr) and exits.
fn fail(channel: &Channel, err: &Error) -> ! {
    if channel.send(&Msg::Error(err.to_string())).is_err() {
        // berth has returned (a failure after `start`): the error goes where
        // runc's init writes it, the --log file in its format, else a logrus
        // line on stderr.
        if log::max_level() >= log::Level::Error {
            log::error!("{err}");
        } else {
            let _ = std::io::stderr().write_all(
                berth_common::logrus::logrus_line(log::Level::Error, &err.to_string(), false)
                    .as_bytes(),
            );
        }
    }
    sys::exit_now(if matches!(err, Error::Init(m) if m.starts_with("exec")) {
        127
    } else {
        1
    })
}

pub fn container_init(side: &ChildSide<'_>, ctx: &InitContext<'_>) -> ! {
    match run_container_init(side, ctx) {
        Ok(never) => match never {},
        Err(e) => fail(&side.channel, &e),
    }
}

pub fn exec_init(side: &ChildSide<'_>, ctx: &ExecContext<'_>) -> ! {
    match run_exec_init(side, ctx) {
        Ok(never) => match never {},
        Err(e) => fail(&side.channel, &e),
    }
}

fn expect(channel: &Channel, msg: Msg) -> Result<()> {
    channel
        .expect(msg)
        .map_err(|e| Error::Init(format!("waiting for berth: {e}")))
}

fn send(channel: &Channel, msg: Msg) -> Result<()> {
    channel.send(&msg).ctx(|| "talking to berth".into())
}

impl ChildSide<'_> {
    /// First thing in the child: the caller's chosen fds on 0, 1 and 2, and
    /// no other inherited fd past exec but the preserved ones.
    fn adopt_fds(&self) -> Result<()> {
        if let Some(fds) = self.stdio {
            for (target, fd) in fds.iter().enumerate() {
                sys::dup2(fd.as_raw_fd(), target as i32).ctx(|| "setting up stdio".into())?;
            }
        }
        process::mark_inherited_fds_cloexec(self.preserve_fds)
    }

    /// Waits for berth's Go (uid maps written), then joins the cgroups that
    /// exist (all but deferred ones) and enters the namespaces.
    fn enter(&self) -> Result<()> {
        expect(&self.channel, Msg::Go)?;
        let part = match (self.cgroups_deferred, self.in_unified) {
            (false, false) => Some(Part::All),
            (false, true) => Some(Part::V1),
            (true, false) => Some(Part::Unified),
            (true, true) => None,
        };
        if let Some(part) = part {
            self.cgroups.join_self(part)?;
        }
        self.plan.enter()
    }

    /// Joins the v1 cgroups berth made while this child set up, once it
    /// says they are ready; does nothing when they were not deferred or are
    /// joined already. Called before the first step that needs them (a
    /// cgroup mount, device nodes) and at the latest before the hooks.
    pub fn join_deferred_cgroups(&self) -> Result<()> {
        if !self.cgroups_deferred || self.deferred_joined.replace(true) {
            return Ok(());
        }
        expect(&self.channel, Msg::CgroupsReady)?;
        self.cgroups.join_self(Part::V1)?;
        Ok(())
    }

    /// Whether the process has a namespace of this type other than berth's
    /// (created or joined).
    fn has_ns(&self, flag: libc::c_int) -> bool {
        self.plan.has(flag)
    }

    /// The end of setup, the same for both kinds of child: terminal, cwd,
    /// program, a notifying seccomp filter (with `notify_state`), Ready;
    /// then, once `gate` lets it through, `finish` (with `state`).
    fn release(
        &self,
        process: &Process,
        mount_console: bool,
        notify_state: &[u8],
        gate: impl FnOnce() -> Result<()>,
        state: &[u8],
    ) -> Result<Infallible> {
        if process.terminal() == Some(true) {
            setup_terminal(process, &self.console, &self.channel, mount_console)?;
        }
        let cwd_deferred = enter_cwd(process)?;
        let program = process::prepare_program(process)?;
        let seccomp_loaded =
            load_notifying_filter(self.seccomp.as_ref(), self.preserve_fds, notify_state)?;
        send(&self.channel, Msg::Ready)?;
        gate()?;
        finish(
            process,
            cwd_deferred,
            &program,
            self.preserve_fds,
            self.seccomp.as_ref().filter(|_| !seccomp_loaded),
            state,
        )
    }
}

fn run_container_init(side: &ChildSide<'_>, ctx: &InitContext<'_>) -> Result<Infallible> {
    side.adopt_fds()?;
    let spec = &ctx.bundle.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidConfig("process is missing".into()))?;
    rustix::process::umask(rustix::fs::Mode::empty());
    side.enter()?;
    if side.plan.two_stage {
        // The new PID namespace (and the others) belong to the joined user
        // namespace; the init must be a child to live in the PID namespace.
        // The init waits until berth knows its pid: its own messages
        // (Ready, RunHooks) must not overtake the intermediate's Pid on the
        // channel they share.
        let (told, tell) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .ctx(|| "creating the init's start pipe".into())?;
        if let Some(pid) = sys::fork().ctx(|| "forking the container init".into())? {
            send(&side.channel, Msg::Pid(pid))?;
            let _ = rustix::io::write(&tell, &[1]);
            sys::exit_now(0);
        }
        drop(tell);
        let mut byte = [0u8; 1];
        loop {
            match rustix::io::read(&told, &mut byte) {
                Err(rustix::io::Errno::INTR) => continue,
                Ok(1) => break,
                // The intermediate died without telling berth: berth cleans up.
                Ok(_) => sys::exit_now(1),
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .ctx(|| "waiting for the init's pid to reach berth".into())
                }
            }
        }
        drop(told);
    }
    let userns = side.has_ns(libc::CLONE_NEWUSER);
    if side
        .plan
        .joins
        .iter()
        .any(|(f, _)| *f == libc::CLONE_NEWUSER)
    {
        crate::namespaces::check_joined_id_maps(spec)?;
    }
    let setup = RootfsSetup {
        spec,
        bundle: &ctx.bundle.dir,
        rootfs: &ctx.bundle.rootfs,
        cgroups: side.cgroups,
        cgroupns: side.has_ns(libc::CLONE_NEWCGROUP),
        userns,
        idmapped: ctx.idmapped,
        before_cgroups: &|| side.join_deferred_cgroups(),
        root_path: Default::default(),
    };
    let mount_ns = side.has_ns(libc::CLONE_NEWNS);
    // Before the init becomes the user namespace's root: that root is a
    // host uid that may not search berth's root-only directories on the
    // way to the rootfs, while the init's host credentials still can.
    let bound_root = if mount_ns {
        Some(setup.bind_root()?)
    } else {
        None
    };
    // While the init is still the host's root: /proc/self of the mapped
    // root below belongs to the host's root (the init is a fork of berth,
    // not an exec in the namespace), so it could not write it.
    process::apply_oom_score_adj(process)?;
    if userns {
        // Become the user namespace's root (when it is mapped) so files we
        // create belong to the container's root, not to nobody.
        let _ = sys::setresgid(0);
        let _ = sys::setresuid(0);
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        sys::sethostname(h).ctx(|| format!("setting hostname {h:?}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        sys::setdomainname(d).ctx(|| format!("setting domainname {d:?}"))?;
    }
    if !ctx.no_new_keyring {
        let name = CString::new(format!("_ses.{}", ctx.id)).unwrap_or_default();
        match sys::join_session_keyring(&name) {
            Ok(()) => {}
            // Kernels or seccomp profiles without keyrings: runc carries on too.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EDQUOT)
                ) => {}
            Err(e) => return Err(e).ctx(|| "joining a new session keyring".into()),
        }
    }
    if let Some(linux) = spec.linux() {
        for (key, value) in linux.sysctl().iter().flatten() {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value.as_bytes())
                .ctx(|| format!("setting sysctl {key}={value}"))?;
        }
    }
    process::apply_rlimits(process)?;
    crate::attrs::apply_container(spec)?;
    crate::attrs::apply_process(process)?;
    // Until the user program runs, no process of the container may look
    // into this one's /proc files (its fds reach outside the container).
    sys::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE)".into())?;

    let root = match bound_root {
        Some(root) => Some(setup.prepare(root)?),
        None => None,
    };
    side.join_deferred_cgroups()?;

    let host_pid = own_host_pid();
    let hook_lists = spec.hooks().as_ref();
    #[allow(deprecated)]
    let runtime_hooks = hook_lists.is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    if runtime_hooks {
        send(&side.channel, Msg::RunHooks)?;
        expect(&side.channel, Msg::HooksDone)?;
    }
    let state = |status| hook_state(ctx.id, status, host_pid, &ctx.bundle.dir, ctx.annotations);
    if let Some(list) = hook_lists.and_then(|h| h.create_container().as_deref()) {
        hooks::run_hooks("createContainer", list, &state(Status::Creating))?;
    }

    match root {
        Some(root) => {
            setup.protect_paths(root.as_fd())?;
            rootfs::enter_root(root.as_fd(), &ctx.bundle.rootfs, ctx.no_pivot)?;
            drop(root);
            rootfs::finalize_root(spec)?;
        }
        // The host's mount namespace: only a chroot, as runc does.
        None => rootfs::chroot_into(&ctx.bundle.rootfs)?,
    }

    let gate = || {
        match ctx.gate {
            StartGate::Fifo => wait_for_start_fifo(ctx.state_dir)?,
            StartGate::Channel => expect(&side.channel, Msg::Start)?,
        }
        if let Some(list) = hook_lists.and_then(|h| h.start_container().as_deref()) {
            // Hooks without an env of their own get the container process's,
            // as runc runs them from its init.
            hooks::run_hooks_with_default_env(
                "startContainer",
                list,
                &state(Status::Created),
                process.env().as_deref().unwrap_or_default(),
            )?;
        }
        Ok(())
    };
    let notify_state = state(Status::Creating);
    side.release(
        process,
        mount_ns,
        &notify_state,
        gate,
        &state(Status::Running),
    )
}

fn run_exec_init(side: &ChildSide<'_>, ctx: &ExecContext<'_>) -> Result<Infallible> {
    side.adopt_fds()?;
    let process = ctx.process;
    let affinity = process.exec_cpu_affinity().as_ref();
    if let Some(initial) = affinity.and_then(|a| a.initial().as_deref()) {
        crate::attrs::set_affinity(initial)?;
    }
    side.enter()?;
    process::apply_oom_score_adj(process)?;
    process::apply_rlimits(process)?;
    crate::attrs::apply_personality(ctx.container)?;
    crate::attrs::apply_process(process)?;
    sys::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE)".into())?;
    let gate = || {
        expect(&side.channel, Msg::Start)?;
        if let Some(last) = affinity.and_then(|a| a.cpu_affinity_final().as_deref()) {
            crate::attrs::set_affinity(last)?;
        }
        Ok(())
    };
    side.release(process, false, &ctx.state, gate, &ctx.state)
}

/// A filter that notifies is loaded before the caller hears Ready, so its
/// listener (a seccomp agent) has the notify fd and the container's state
/// before `create` or `exec` returns, as with runc. Other filters load in
/// `finish`, as late as their kind allows. Returns whether it loaded one.
fn load_notifying_filter(
    seccomp: Option<&SeccompSetup<'_>>,
    preserve_fds: u32,
    state: &[u8],
) -> Result<bool> {
    let Some(s) = seccomp.filter(|s| s.listener.is_some()) else {
        return Ok(false);
    };
    process::mark_inherited_fds_cloexec(preserve_fds)?;
    s.load(state)?;
    Ok(true)
}

/// chdir into process.cwd as root; if root may not (root-squashing
/// filesystems), try again as the user after dropping privileges.
fn enter_cwd(process: &Process) -> Result<bool> {
    match rustix::process::chdir(process.cwd()) {
        Ok(()) => verify_cwd(process).map(|()| false),
        Err(rustix::io::Errno::ACCESS) => Ok(true),
        Err(e) => Err(e).ctx(|| format!("chdir to cwd {}", process.cwd().display())),
    }
}

/// The working directory must be inside the container's root: a cwd such
/// as /proc/self/fd/N reaches a directory a leaked descriptor points to
/// (runc CVE-2024-21626). The kernel reports such a directory as
/// "(unreachable)/...", never starting with "/".
fn verify_cwd(process: &Process) -> Result<()> {
    let cwd = sys::getcwd_raw().ctx(|| "getcwd".into())?;
    if cwd.first() != Some(&b'/') {
        return Err(Error::InvalidConfig(format!(
            "cwd {}: it is outside the container's root filesystem",
            process.cwd().display()
        )));
    }
    Ok(())
}

/// The end of every path into a container: seccomp (early when it must be
/// loaded while still privileged, i.e. without no_new_privs, else as late as
/// possible), credentials, LSM labels, descriptors, exec.
fn finish(
    process: &Process,
    cwd_deferred: bool,
    program: &Program,
    preserve_fds: u32,
    seccomp: Option<&SeccompSetup<'_>>,
    state: &[u8],
) -> Result<Infallible> {
    let no_new_privs = process.no_new_privileges() == Some(true);
    // Descriptors and signals first: a restrictive seccomp profile loaded
    // next may refuse close_range (profiles older than 2021 do).
    process::prepare_exec(preserve_fds)?;
    if let Some(s) = seccomp.filter(|_| !no_new_privs) {
        s.load(state)?;
    }
    process::drop_privileges(process)?;
    if cwd_deferred {
        rustix::process::chdir(process.cwd())
            .ctx(|| format!("chdir to cwd {}", process.cwd().display()))?;
        verify_cwd(process)?;
    }
    crate::attrs::set_exec_labels(process)?;
    if let Some(s) = seccomp.filter(|_| no_new_privs) {
        s.load(state)?;
    }
    Err(process::execve(program))
}

/// The pid of this process as berth sees it (our own pid namespace view
/// would say 1): the host /proc is still mounted before the root switch.
fn own_host_pid() -> i32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn wait_for_start_fifo(state_dir: Option<&OwnedFd>) -> Result<()> {
    let dir =
        state_dir.ok_or_else(|| Error::Init("no state directory for the exec FIFO".into()))?;
    let fifo = loop {
        match rustix::fs::openat(
            dir,
            EXEC_FIFO,
            OFlags::WRONLY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => break fd,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).ctx(|| "opening the exec FIFO".into()),
        }
    };
    rustix::io::write(&fifo, b"0").ctx(|| "writing the exec FIFO".into())?;
    Ok(())
}

/// Creates the container's terminal: the master goes to the console socket
/// (or to berth), the slave becomes stdio and the controlling terminal.
fn setup_terminal(
    process: &Process,
    target: &ConsoleTarget<'_>,
    channel: &Channel,
    mount_console: bool,
) -> Result<()> {
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .ctx(|| "opening /dev/ptmx in the container".into())?;
    rustix::pty::unlockpt(&master).ctx(|| "unlockpt".into())?;
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)
        .ctx(|| "opening the terminal's slave side".into())?;
    let name = rustix::pty::ptsname(&master, Vec::new()).ctx(|| "ptsname".into())?;
    if let Some(size) = process.console_size() {
        let ws = rustix::termios::Winsize {
            ws_row: size.height() as u16,
            ws_col: size.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&master, ws).ctx(|| "setting the console size".into())?;
    }
    if mount_console {
        let path = Path::new(std::ffi::OsStr::from_bytes(name.as_bytes()));
        rootfs::mount_console(path)?;
    }
    match target {
        ConsoleTarget::Socket(sock) => {
            sys::send_fd(sock.as_fd(), name.as_bytes(), master.as_raw_fd())
                .ctx(|| "sending the terminal to the console socket".into())?
        }
        ConsoleTarget::Parent => channel
            .send_fd(&Msg::Console, &master)
            .ctx(|| "sending the terminal to berth".into())?,
        ConsoleTarget::None => {
            return Err(Error::Init(
                "a terminal was requested without a console socket".into(),
            ))
        }
    }
    drop(master);
    rustix::process::setsid().ctx(|| "setsid".into())?;
    rustix::process::ioctl_tiocsctty(&slave)
        .ctx(|| "making the terminal the controlling one".into())?;
    for fd in 0..3 {
        sys::dup2(slave.as_raw_fd(), fd).ctx(|| "attaching stdio to the terminal".into())?;
    }
    Ok(())
}

/// Runs the hooks of one kind from the parent, for the parent's use.
pub fn run_parent_hooks(kind: &'static str, list: Option<&Vec<Hook>>, state: &[u8]) -> Result<()> {
    match list {
        Some(list) => hooks::run_hooks(kind, list, state),
        None => Ok(()),
    }
}
