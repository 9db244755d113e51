//! A private containerd 1.6 for integration tests: its own root, state,
//! socket and `opt` dir in one directory under /tmp, and a Drop that tears
//! down whatever the test left (shims, runtime state, cgroups, mounts, the
//! /run/containerd paths it created).
//!
//! * [`Daemon`]: the process, its directory and that host cleanup, given
//!   the config to append to the generated header.
//! * [`Containerd`]: the CRI plugin disabled, one namespace, driven with
//!   `ctr` (berth's drop-in tests: containerd-shim-runc-v2 driving the
//!   `berth` binary; the shim's tests: containerd-shim-berth-v2 as the
//!   runtime). [`Setup`] says what differs.
//! * [`cri::CriContainerd`]: the CRI plugin enabled, its runtime handlers,
//!   the busybox images, and a synchronous CRI client.

pub mod cri;

use std::collections::HashSet;
use std::ffi::OsString;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crate::cgroups::{cgroup_pids, freezer_state};
use crate::cgroups::{remove_cgroup_tree, wait_cgroup_gone};
use crate::cmd::{run_in, tail, Outcome, QUICK, SLOW};
use crate::mounts::unmount_under;
use crate::names::{lock, unique};
use crate::procs::{kill_processes_mentioning, terminate};
use crate::rootfs::{build_busybox_oci_archive, IMAGE_REF};
use crate::scratch::{CreatedPath, TempDir};
use crate::tools::require_tools;

/// Where containerd 1.6 and its shims put shim sockets, whatever the config says.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// The private containerds of one test binary share /run/containerd (shim
/// sockets, runtime state): one at a time. Held by [`Daemon`].
static SERIAL: Mutex<()> = Mutex::new(());

/// What a [`Daemon`] is made of.
pub struct DaemonSetup<'a> {
    /// Prefix of the temporary directory.
    pub prefix: &'a str,
    /// Tools that must be installed, as for [`require_tools`]; containerd,
    /// ctr, umoci and tar are always required.
    pub tools: &'a [(&'a str, &'a [&'a str], &'a str)],
    /// Paths under /run/containerd the runtime may create (e.g. its state
    /// parent): removed again if they did not exist before.
    pub runtime_paths: &'a [&'a str],
    /// Keep the CRI plugin (else `disabled_plugins` names it).
    pub cri: bool,
    /// Directories put in front of containerd's PATH (containerd 1.6 looks
    /// up `containerd-shim-<name>-v2` binaries there).
    pub path_prepend: &'a [PathBuf],
    /// Subdirectories of the directory to make before containerd starts.
    pub subdirs: &'a [&'a str],
    /// Who cleans up, in cleanup messages.
    pub label: &'static str,
}

/// A private containerd process: its directory (root, state, sockets,
/// `opt`, config, log) and the host cleanup that Drop does after its owner
/// cleaned up through it: stop it, kill the shims that name its socket,
/// unmount what is mounted in the directory, remove the dead shim sockets
/// and the /run/containerd paths it made, then the directory.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub config_path: PathBuf,
    /// containerd's PATH, when it differs from ours.
    path_env: Option<OsString>,
    /// Shim sockets (/run/containerd/s) present before this test.
    shim_sockets_before: HashSet<OsString>,
    /// Paths under /run/containerd that may not have existed before.
    created: Vec<CreatedPath>,
    label: &'static str,
    /// Dropped after `drop()`: unmounts and removes the directory.
    pub dir: TempDir,
    /// Released last.
    _serial: MutexGuard<'static, ()>,
}

impl Daemon {
    /// Takes the host's containerd lock, checks the tools, makes the
    /// directory and writes the config: a header (root, state, sockets,
    /// `opt` in the directory) and `config(dir)` after it. Does not start
    /// containerd: [`Daemon::spawn`] does.
    pub fn new(setup: DaemonSetup, config: impl FnOnce(&str) -> String) -> Daemon {
        let serial = lock(&SERIAL);
        let mut tools: Vec<(&str, &[&str], &str)> = vec![
            ("containerd", &[], "containerd"),
            ("ctr", &[], "containerd"),
            ("umoci", &[], "umoci"),
            ("tar", &[], "tar"),
        ];
        tools.extend(setup.tools.iter().copied());
        require_tools(&tools);
        // Watch the shared paths before anything can create them; deepest
        // first, the order they are removed in.
        let created = [SHIM_SOCKET_DIR, "/run/containerd/fifo"]
            .iter()
            .chain(setup.runtime_paths)
            .chain(&["/run/containerd"])
            .map(|p| CreatedPath::watch(p))
            .collect();
        let shim_sockets_before = std::fs::read_dir(SHIM_SOCKET_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let path_env = (!setup.path_prepend.is_empty()).then(|| {
            let ours = std::env::var_os("PATH").unwrap_or_default();
            let dirs = setup.path_prepend.iter().cloned();
            std::env::join_paths(dirs.chain(std::env::split_paths(&ours)))
                .expect("a PATH for containerd")
        });
        let dir = TempDir::new(setup.prefix);
        for sub in setup.subdirs {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.path.display().to_string();
        let disabled = if setup.cri {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        let text = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
{disabled}
[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{extra}"#,
            extra = config(&d),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, text).unwrap();
        Daemon {
            child: None,
            socket: dir.join("c.sock"),
            log: dir.join("containerd.log"),
            config_path,
            path_env,
            shim_sockets_before,
            created,
            label: setup.label,
            dir,
            _serial: serial,
        }
    }

    /// Starts containerd with the config (its output appended to the log)
    /// and waits up to 30 s until `ready` holds, polled once the socket
    /// exists; `what` names what did not answer.
    pub fn spawn(&mut self, what: &str, mut ready: impl FnMut(&Daemon) -> bool) {
        assert!(self.child.is_none(), "containerd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&self.config_path);
        if let Some(path) = &self.path_env {
            cmd.env("PATH", path);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "containerd exited ({status}) while starting; its log:\n{}",
                    tail(&self.log, 40)
                );
            }
            if self.socket.exists() && ready(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not answer on {} within 30 s; its log:\n{}",
                self.socket.display(),
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's pid, if it is running.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Whether containerd runs (started and not exited).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILLs containerd (as a crash would) and reaps it. Its shims live on.
    pub fn kill_daemon(&mut self) {
        let mut daemon = self.child.take().expect("containerd is not running");
        daemon.kill().expect("SIGKILL to containerd");
        daemon.wait().expect("reaping containerd");
    }

    /// SIGTERM, then SIGKILL after 10 s; reaps it. Its shims live on.
    pub fn stop(&mut self) {
        if let Some(mut daemon) = self.child.take() {
            terminate(&mut daemon, Duration::from_secs(10));
        }
    }

    /// Stops containerd, then SIGKILLs the shims it left: theirs are the
    /// command lines that name its socket ("-address").
    pub fn stop_and_kill_shims(&mut self) {
        self.stop();
        let shims = kill_processes_mentioning(&self.socket.display().to_string());
        if !shims.is_empty() {
            eprintln!("{} cleanup: killed leftover shim(s) {shims:?}", self.label);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills what is left in cgroup `rel` and removes it, saying what
    /// could not be removed.
    pub fn remove_cgroups(&self, rel: &str) {
        let left = remove_cgroup_tree(rel);
        if !left.is_empty() {
            eprintln!(
                "{} cleanup: cgroups that could not be removed: {left:?}",
                self.label
            );
        }
    }

    /// The shims serving this containerd: (pid, command line).
    pub fn shims(&self) -> Vec<(i32, String)> {
        crate::procs::processes_mentioning(&self.socket.display().to_string())
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("containerd-shim"))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The owner has cleaned up through containerd; in case it did not
        // stop it, or shims are left, do so here.
        self.stop_and_kill_shims();
        unmount_under(&self.dir.path);
        // Sockets of shims that were killed: new since the start and dead.
        for e in std::fs::read_dir(SHIM_SOCKET_DIR)
            .into_iter()
            .flatten()
            .flatten()
        {
            if !self.shim_sockets_before.contains(&e.file_name())
                && std::os::unix::net::UnixStream::connect(e.path()).is_err()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for p in &self.created {
            p.remove_if_created();
        }
    }
}

/// What differs between users of [`Containerd`].
pub struct Setup {
    /// Prefix of the temporary directory and of the namespace.
    pub prefix: &'static str,
    /// Tools that must be installed, as for [`require_tools`]; containerd,
    /// ctr, umoci and tar are always required.
    pub tools: Vec<(&'static str, &'static [&'static str], &'static str)>,
    /// TOML appended to the generated config.
    pub extra_config: String,
    /// Directories put in front of containerd's PATH (containerd 1.6 looks
    /// up `containerd-shim-<name>-v2` binaries there).
    pub path_prepend: Vec<PathBuf>,
    /// The runtime keeps a container's state in `<parent>/<namespace>/<id>`
    /// (e.g. /run/containerd/runc).
    pub runtime_state_parent: PathBuf,
    /// Deletes a container the shims left behind, given the runtime root
    /// (`<parent>/<namespace>`), the container id and a scratch directory.
    /// The root is removed afterwards in any case.
    pub delete_leftover: Option<fn(&Path, &str, &Path)>,
}

/// A private containerd without its CRI plugin, and one namespace in it,
/// driven with `ctr`. Drop removes everything it made. Derefs to its
/// [`Daemon`] (`dir`, `socket`, `log`, ...).
pub struct Containerd {
    pub namespace: String,
    runtime_state_parent: PathBuf,
    delete_leftover: Option<fn(&Path, &str, &Path)>,
    daemon: Daemon,
}

impl Deref for Containerd {
    type Target = Daemon;

    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl Containerd {
    pub fn start(setup: Setup) -> Containerd {
        let state_parent = setup.runtime_state_parent.display().to_string();
        let daemon = Daemon::new(
            DaemonSetup {
                prefix: &format!("{}-ctd", setup.prefix),
                tools: &setup.tools,
                runtime_paths: &[state_parent.as_str()],
                cri: false,
                path_prepend: &setup.path_prepend,
                subdirs: &[],
                label: "containerd",
            },
            |_| setup.extra_config.clone(),
        );
        let mut ctd = Containerd {
            namespace: unique(setup.prefix),
            runtime_state_parent: setup.runtime_state_parent,
            delete_leftover: setup.delete_leftover,
            daemon,
        };
        ctd.restart_daemon();
        ctd
    }

    /// Starts containerd (again, after `kill_daemon`) with the same config
    /// and waits until `ctr version` answers.
    pub fn restart_daemon(&mut self) {
        let namespace = self.namespace.clone();
        self.daemon.spawn("containerd", |d| {
            let mut ctr = ctr_command(&d.socket, &namespace, &["version"]);
            run_in(&d.dir.path, &mut ctr, QUICK).success()
        });
    }

    pub fn ctr(&self, args: &[&str]) -> Command {
        ctr_command(&self.socket, &self.namespace, args)
    }

    /// The `ctr` command line (global flags included) for `args`, as words.
    pub fn ctr_words(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            "ctr".to_owned(),
            "--address".to_owned(),
            self.socket.display().to_string(),
            "-n".to_owned(),
            self.namespace.clone(),
        ];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    pub fn run(&self, args: &[&str], timeout: Duration) -> Outcome {
        run_in(&self.dir.path, &mut self.ctr(args), timeout)
    }

    pub fn fifo_dir(&self) -> String {
        self.dir.join("fifo").display().to_string()
    }

    /// The runtime's state directory for this namespace.
    pub fn runtime_root(&self) -> PathBuf {
        self.runtime_state_parent.join(&self.namespace)
    }

    /// containerd's bundle directory for task `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    /// The cgroup ctr gives a container by default (cgroupfs driver).
    pub fn cgroup_of(&self, id: &str) -> String {
        format!("/{}/{id}", self.namespace)
    }

    /// The daemon log and the runtime and shim logs still on disk, for
    /// failure messages.
    pub fn diagnostics(&self) -> String {
        let mut text = format!("--- containerd log (tail) ---\n{}", tail(&self.log, 40));
        let tasks = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace);
        for e in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            // log.json: berth under the runc shim. log: the shim's stderr
            // when it is a file (containerd 1.6 makes it a FIFO it copies
            // into its own log, above; reading it here would steal lines).
            for name in ["log.json", "log"] {
                let log = e.path().join(name);
                if log.metadata().map(|m| m.is_file()).unwrap_or(false) {
                    text.push_str(&format!("\n--- {} ---\n{}", log.display(), tail(&log, 30)));
                }
            }
        }
        text
    }

    /// Builds the busybox image and imports (and unpacks) it as [`IMAGE_REF`].
    pub fn import_image(&self) {
        let archive = build_busybox_oci_archive(&self.dir.join("image"));
        let out = self.run(&["images", "import", archive.to_str().unwrap()], SLOW);
        assert!(
            out.success(),
            "ctr images import failed: {}\n{}",
            out.describe(),
            self.diagnostics()
        );
        let out = self.run(&["images", "ls", "-q"], QUICK);
        assert!(
            out.stdout.lines().any(|l| l.trim() == IMAGE_REF),
            "{IMAGE_REF} missing after import: {}",
            out.describe()
        );
    }

    /// The STATUS column of `ctr tasks ls` for `id`.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.run(&["tasks", "ls"], QUICK);
        out.stdout.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap().to_string())
        })
    }

    /// The PID column of `ctr tasks ls` for `id` (the init process, host pid).
    pub fn task_pid(&self, id: &str) -> Option<i32> {
        let out = self.run(&["tasks", "ls"], QUICK);
        out.stdout.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first() == Some(&id) {
                f.get(1)?.parse().ok()
            } else {
                None
            }
        })
    }

    /// Polls `ctr tasks ls` until task `id` shows `want`; panics after `timeout`.
    pub fn wait_task_status(&self, id: &str, want: &str, timeout: Duration, after: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.task_status(id);
            if status.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not {want} {} s after {after} (status {status:?})\n{}",
                timeout.as_secs(),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs ctr with `args` and panics (with the daemon's and the runtime's
    /// logs) unless it exits 0.
    pub fn run_ok(&self, args: &[&str], timeout: Duration) -> Outcome {
        let out = self.run(args, timeout);
        assert!(
            out.success(),
            "ctr {} failed: {}\n{}",
            args[..args.len().min(2)].join(" "),
            out.describe(),
            self.diagnostics()
        );
        out
    }

    /// `ctr run --rm -t` of container `id` through `runtime`, ctr itself on
    /// a terminal made by `script`: asserts that the container's stdio is
    /// a terminal (`tty` names one, `test -t` holds) and its exit code
    /// reaches ctr.
    pub fn assert_run_tty(&self, runtime: &str, image: &str, id: &str) {
        let fifo = self.fifo_dir();
        let ctr = self.ctr_words(&[
            "run",
            "--rm",
            "-t",
            "--runtime",
            runtime,
            "--fifo-dir",
            &fifo,
            image,
            id,
            "sh",
            "-c",
            "tty; test -t 0 && test -t 1 && echo stdio-is-a-tty; exit 4",
        ]);
        let line = ctr
            .iter()
            .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let out = run_in(
            &self.dir.path,
            Command::new("script").args(["-qec", &line, "/dev/null"]),
            SLOW,
        );
        // A line may start with `^@`, the echo of a NUL that reaches the
        // container's terminal when `script` passes on its stdin's EOF:
        // before the first line or the second, as the timing goes.
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .map(|l| l.trim().trim_start_matches("^@"))
            .collect();
        assert!(
            lines.iter().any(|l| l.starts_with("/dev/pts/"))
                && lines.contains(&"stdio-is-a-tty")
                && out.code == Some(4),
            "expected a /dev/pts/N line, `stdio-is-a-tty` and exit code 4 from {}\n{}",
            out.describe(),
            self.diagnostics()
        );
    }

    /// After a container's removal: no record in containerd, no runtime
    /// state, no cgroup.
    pub fn assert_container_gone(&self, id: &str) {
        let out = self.run(&["containers", "ls", "-q"], QUICK);
        assert!(out.success(), "{}", out.describe());
        assert!(
            !out.stdout.lines().any(|l| l.trim() == id),
            "container {id} still listed: {}",
            out.describe()
        );
        let state = self.runtime_root().join(id);
        assert!(
            !state.exists(),
            "the runtime left its state directory {} behind",
            state.display()
        );
        let cgroups = wait_cgroup_gone(&self.cgroup_of(id), Duration::from_secs(5));
        assert!(
            cgroups.is_empty(),
            "the container's cgroup was not removed: {cgroups:?}"
        );
    }

    /// SIGKILLs containerd (as a crash would) and reaps it. Its shims live on.
    pub fn kill_daemon(&mut self) {
        self.daemon.kill_daemon();
    }
}

/// `ctr --address SOCKET -n NAMESPACE ARGS...`
fn ctr_command(socket: &Path, namespace: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(socket)
        .arg("-n")
        .arg(namespace)
        .args(args);
    cmd
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.daemon.alive() {
            // Through containerd first, as a user would.
            let ids = self.run(&["containers", "ls", "-q"], QUICK).stdout;
            for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
                // A frozen task cannot die: thaw it first.
                if self.task_status(id).as_deref() == Some("PAUSED") {
                    self.run(&["tasks", "resume", id], QUICK);
                }
                self.run(&["tasks", "kill", "-s", "SIGKILL", id], QUICK);
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(self.task_status(id).as_deref(), Some("RUNNING"))
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                self.run(&["tasks", "delete", "--force", id], QUICK);
                self.run(&["containers", "delete", id], QUICK);
            }
            let images = self.run(&["images", "ls", "-q"], QUICK).stdout;
            for image in images.lines().map(str::trim).filter(|l| !l.is_empty()) {
                self.run(&["images", "rm", image], QUICK);
            }
        }
        self.daemon.stop_and_kill_shims();
        // Runtime state the shims did not delete.
        let root = self.runtime_root();
        if root.exists() {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                eprintln!("containerd cleanup: runtime state left for {id}, deleting it");
                if let Some(delete) = self.delete_leftover {
                    delete(&root, &id, &self.dir.path);
                }
            }
            if let Err(e) = std::fs::remove_dir_all(&root) {
                eprintln!("containerd cleanup: removing {}: {e}", root.display());
            }
        }
        self.daemon.remove_cgroups(&format!("/{}", self.namespace));
        // The daemon (dropped next) unmounts, removes the shim sockets,
        // the paths it created and the directory.
    }
}

// ---------------------------------------------------------------------------
// Reading what containers and ctr report.

/// Lines in a text file (0 if it does not exist yet).
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits up to `timeout` for `path` to reach more than `than` lines;
/// returns the last count seen.
pub fn wait_lines_above(path: &Path, than: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = line_count(path);
        if n > than || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rows of `ctr tasks ps` (`PID  INFO`): pid and the rest of the line.
pub fn parse_ctr_ps(stdout: &str) -> Vec<(i32, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (pid, info) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            Some((pid.parse().ok()?, info.trim().to_owned()))
        })
        .collect()
}

/// The value of `metric` in `ctr tasks metrics` table output
/// (`METRIC  VALUE` rows), when it is a plain number.
pub fn ctr_metric(stdout: &str, metric: &str) -> Option<u64> {
    stdout.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(metric)).then(|| f.next()?.parse().ok())?
    })
}
