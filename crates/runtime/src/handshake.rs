//! The parent side of setting up a new process, the same for a container's
//! init (`create`, `run`) and for a process exec'd into a running container:
//! clone it into its namespaces and cgroup, answer its messages on the setup
//! channel until it is ready, and undo what was made if anything fails. The
//! child side is in `init`.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, Spec};
use rustix::fs::{Mode, OFlags};

use crate::channel::{Channel, Msg};
use crate::error::Context;
use crate::init::{ChildSide, ConsoleTarget, SeccompSetup};
use crate::namespaces::{self, ChildNsGuard, NsPlan};
use crate::seccomp::Filter;
use crate::{sys, Error, Result};

/// Which process the handshake sets up: what differs is only what errors
/// call it and which messages it may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A container's init: may fork once more (two-stage, `Pid`) and ask
    /// for the prestart and createRuntime hooks (`RunHooks`).
    Init,
    /// A process exec'd into a running container.
    Exec,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Init => "the container init",
            Kind::Exec => "the exec process",
        }
    }

    fn cloning(self) -> &'static str {
        match self {
            Kind::Init => "creating the container init (clone)",
            Kind::Exec => "forking the exec process",
        }
    }

    fn starting(self) -> &'static str {
        match self {
            Kind::Init => "starting the container",
            Kind::Exec => "starting the exec process",
        }
    }

    fn unexpected(self, msg: &Msg) -> String {
        match self {
            Kind::Init => format!("unexpected message from init: {msg:?}"),
            Kind::Exec => format!("unexpected message: {msg:?}"),
        }
    }
}

/// Undoes a half-made container or process if setting it up fails.
#[derive(Default)]
pub struct Cleanup {
    pub state_dir: Option<PathBuf>,
    pub cgroups: Option<berth_cgroups::Manager>,
    pub children: Vec<i32>,
}

impl Cleanup {
    pub fn disarm(&mut self) {
        self.state_dir = None;
        self.cgroups = None;
        self.children.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in self.children.drain(..) {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = rustix::process::waitpid(
                rustix::process::Pid::from_raw(pid),
                rustix::process::WaitOptions::empty(),
            );
        }
        if let Some(cg) = self.cgroups.take() {
            if let Ok(pids) = cg.procs() {
                for pid in pids {
                    let _ = sys::kill(pid, libc::SIGKILL);
                }
            }
            if let Err(e) = cg.remove() {
                log::warn!("cleaning up: {e}");
            }
        }
        if let Some(dir) = self.state_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The container's seccomp profile, compiled, and the listener its notify
/// rules report to once connected.
pub struct Seccomp<'a> {
    profile: Option<&'a LinuxSeccomp>,
    filter: Option<Filter>,
    listener: Option<UnixStream>,
}

impl<'a> Seccomp<'a> {
    pub fn compile(spec: &'a Spec) -> Result<Seccomp<'a>> {
        let profile = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        Ok(Seccomp {
            profile,
            filter: profile.map(crate::seccomp::compile).transpose()?,
            listener: None,
        })
    }

    /// Connects to linux.seccomp.listenerPath when the filter has notify rules.
    pub fn connect_listener(&mut self) -> Result<()> {
        let (Some(profile), Some(filter)) = (self.profile, &self.filter) else {
            return Ok(());
        };
        if !filter.notify {
            return Ok(());
        }
        let path = profile.listener_path().as_ref().ok_or_else(|| {
            Error::InvalidConfig("seccomp: SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath".into())
        })?;
        let listener = UnixStream::connect(path)
            .ctx(|| format!("connecting to the seccomp listener {}", path.display()))?;
        self.listener = Some(listener);
        Ok(())
    }

    fn setup(&self) -> Option<SeccompSetup<'_>> {
        self.filter.as_ref().map(|filter| SeccompSetup {
            filter,
            listener: self.listener.as_ref(),
            metadata: self
                .profile
                .and_then(|s| s.listener_metadata().clone())
                .unwrap_or_default(),
        })
    }
}

/// The socket a terminal's master goes to: the one given, else a
/// connection to the --console-socket path.
pub fn connect_console(
    path: Option<&Path>,
    given: Option<UnixStream>,
) -> Result<Option<UnixStream>> {
    match (path, given) {
        (_, Some(sock)) => Ok(Some(sock)),
        (Some(path), None) => UnixStream::connect(path)
            .map(Some)
            .ctx(|| format!("connecting to console socket {}", path.display())),
        (None, None) => Ok(None),
    }
}

/// For a process in the foreground: every signal blocked and read from a
/// signalfd, to be relayed; a container's init is also reaped by us when
/// its intermediate parent exits (`subreaper`).
pub fn foreground_signals(subreaper: bool) -> Result<OwnedFd> {
    if subreaper {
        sys::set_child_subreaper().ctx(|| "becoming a child subreaper".into())?;
    }
    sys::block_all_signals().ctx(|| "blocking signals".into())?;
    sys::signalfd_all().ctx(|| "creating a signalfd".into())
}

/// Everything the handshake needs; all borrowed from the caller, who keeps
/// it for as long as it did before (stdio and the console socket until it
/// returns).
pub struct Handshake<'a> {
    pub kind: Kind,
    /// The container's config: its uid and gid maps and time offsets.
    pub spec: &'a Spec,
    pub plan: &'a NsPlan,
    /// The cgroups the process is born in or joins during setup.
    pub cgroups: &'a berth_cgroups::Manager,
    pub terminal: bool,
    pub console: Option<&'a UnixStream>,
    pub stdio: Option<&'a [OwnedFd; 3]>,
    pub preserve_fds: u32,
    pub seccomp: &'a Seccomp<'a>,
    /// Runs the prestart and createRuntime hooks when the child asks,
    /// given the init's pid.
    pub run_hooks: Option<&'a dyn Fn(i32) -> Result<()>>,
    /// Makes the cgroups the child is not born in (the v1 ones), run while
    /// the child sets up; the child waits for them before it needs them.
    pub deferred_cgroups: Option<&'a dyn Fn() -> Result<()>>,
    /// More work for the parent while the child sets up, given its pid.
    pub meanwhile: Option<&'a dyn Fn(i32) -> Result<()>>,
}

/// The parent's handle on a child that is set up and waits to be started.
pub struct Child {
    kind: Kind,
    channel: Channel,
    /// The process that will exec the program (after a two-stage clone, the
    /// grandchild).
    pub pid: i32,
    /// The terminal's master, when the child sent it to us.
    pub pty: Option<OwnedFd>,
}

/// What [`Handshake::run`] returns on each side of the clone.
pub enum Forked<'a> {
    /// In berth: the child, set up and waiting to be started.
    Parent(Child),
    /// In the child: what it needs to set itself up; it must exec or exit.
    Child(ChildSide<'a>),
}

impl<'a> Handshake<'a> {
    /// Clones the child and, in berth, takes it through setup until it
    /// reports Ready. The child's pid is in `cleanup` from its birth.
    pub fn run(self, cleanup: &mut Cleanup) -> Result<Forked<'a>> {
        let kind = self.kind;
        let offsets = self
            .plan
            .new_time
            .then(|| namespaces::time_offsets_text(self.spec))
            .flatten();
        let (channel, child_end) = Channel::pair().ctx(|| "creating the setup channel".into())?;

        let ns_guard = ChildNsGuard::enter(self.plan, offsets.as_deref())?;
        let (pid, in_unified) = clone_into_cgroups(self.plan.clone_flags, self.cgroups)
            .ctx(|| kind.cloning().into())?;
        let Some(first_pid) = pid else {
            // The guard restores the parent's namespaces; the child must keep its own.
            std::mem::forget(ns_guard);
            drop(channel);
            return Ok(Forked::Child(ChildSide {
                channel: child_end,
                plan: self.plan,
                cgroups: self.cgroups,
                in_unified,
                cgroups_deferred: self.deferred_cgroups.is_some(),
                deferred_joined: std::cell::Cell::new(false),
                console: match (self.console, self.terminal) {
                    (Some(sock), _) => ConsoleTarget::Socket(sock),
                    (None, true) => ConsoleTarget::Parent,
                    (None, false) => ConsoleTarget::None,
                },
                stdio: self.stdio,
                preserve_fds: self.preserve_fds,
                seccomp: self.seccomp.setup(),
            }));
        };
        drop(ns_guard);
        drop(child_end);
        cleanup.children.push(first_pid);
        let mut pid = first_pid;

        if self.plan.new_user {
            let linux = self.spec.linux().as_ref().expect("validated");
            let maps = |m: &Option<Vec<_>>| m.clone().unwrap_or_default();
            namespaces::write_id_map(first_pid, "uid_map", &maps(linux.uid_mappings()))?;
            namespaces::write_id_map(first_pid, "gid_map", &maps(linux.gid_mappings()))?;
        }
        channel
            .send(&Msg::Go)
            .ctx(|| format!("starting {}", kind.name()))?;
        if let Some(make_cgroups) = self.deferred_cgroups {
            make_cgroups()?;
            // A child that failed meanwhile has left its error on the
            // channel: the loop below reads it.
            let _ = channel.send(&Msg::CgroupsReady);
        }
        if let Some(work) = self.meanwhile {
            work(first_pid)?;
        }

        let mut pty = None;
        loop {
            let received = channel
                .recv()
                .ctx(|| format!("reading from {}", kind.name()))?;
            match (received, self.run_hooks) {
                (Some((Msg::Pid(second), _)), _) if kind == Kind::Init => {
                    // Two-stage setup: the intermediate child exits, its child is the init.
                    let _ = rustix::process::waitpid(
                        rustix::process::Pid::from_raw(first_pid),
                        rustix::process::WaitOptions::empty(),
                    );
                    cleanup.children.retain(|p| *p != first_pid);
                    cleanup.children.push(second);
                    pid = second;
                }
                (Some((Msg::RunHooks, _)), Some(run_hooks)) => {
                    run_hooks(pid)?;
                    channel
                        .send(&Msg::HooksDone)
                        .ctx(|| format!("resuming {}", kind.name()))?;
                }
                (Some((Msg::Console, fd)), _) => pty = fd,
                (Some((Msg::Ready, _)), _) => break,
                (Some((Msg::Error(text), _)), _) => return Err(Error::Init(text)),
                (Some((other, _)), _) => return Err(Error::Init(kind.unexpected(&other))),
                (None, _) => return Err(Error::Init(describe_death(first_pid, pid))),
            }
        }
        Ok(Forked::Parent(Child {
            kind,
            channel,
            pid,
            pty,
        }))
    }
}

impl Child {
    /// Tells the child to exec the program and waits until it has (the
    /// channel closes) or reports why it could not.
    pub fn start(&self) -> Result<()> {
        self.channel
            .send(&Msg::Start)
            .ctx(|| self.kind.starting().into())?;
        match self
            .channel
            .recv()
            .ctx(|| "waiting for the container process to start".into())?
        {
            None => Ok(()),
            Some((Msg::Error(text), _)) => Err(Error::Init(text)),
            Some((other, _)) => Err(Error::Init(format!("unexpected message: {other:?}"))),
        }
    }
}

/// Clones a child that is born in the container's cgroup v2 directory when
/// the host has one (CLONE_INTO_CGROUP: no migration, no global lock); the
/// child joins the v1 hierarchies itself. Returns whether the unified
/// hierarchy is taken care of.
fn clone_into_cgroups(
    flags: libc::c_int,
    cgroups: &berth_cgroups::Manager,
) -> std::io::Result<(Option<i32>, bool)> {
    if let Some(dir) = cgroups.unified_path() {
        if let Ok(fd) = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            match sys::clone3_fork(flags, Some(fd.as_fd())) {
                Ok(child) => return Ok((child, true)),
                // Kernels before 5.7: fall back to clone and a write.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::E2BIG)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    sys::clone_fork(flags).map(|child| (child, false))
}

/// Why a child closed the channel without a word.
fn describe_death(first_pid: i32, init_pid: i32) -> String {
    for pid in [init_pid, first_pid] {
        if let Ok(Some((_, status))) = rustix::process::waitpid(
            rustix::process::Pid::from_raw(pid),
            rustix::process::WaitOptions::NOHANG,
        ) {
            if let Some(sig) = status.terminating_signal() {
                return format!("the container init was killed by signal {sig} during setup");
            }
            if let Some(code) = status.exit_status() {
                return format!("the container init exited with status {code} during setup");
            }
        }
    }
    "the container init exited during setup".into()
}
