//! A private containerd 1.6 for integration tests: its own root, state,
//! socket, `opt` dir and namespace, the busybox test image, `ctr` helpers,
//! and a Drop that tears down whatever the test left (tasks, shims,
//! runtime state, cgroups, mounts, the /run/containerd paths it created).
//!
//! Shared by berth's drop-in tests (containerd-shim-runc-v2 driving the
//! `berth` binary) and the shim's tests (containerd-shim-berth-v2 as the
//! runtime): [`Setup`] says what differs.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::*;

/// Where containerd 1.6 and its shims put shim sockets, whatever the config says.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// The private containerds of one test binary share /run/containerd (shim
/// sockets, runtime state): one at a time. Held by [`Containerd`].
static SERIAL: Mutex<()> = Mutex::new(());

/// What differs between users of the harness.
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

/// A private containerd (own root, state, socket, `opt` dir) and one
/// namespace in it. Drop removes everything it made.
pub struct Containerd {
    daemon: Option<Child>,
    pub socket: PathBuf,
    pub namespace: String,
    pub log: PathBuf,
    config_path: PathBuf,
    /// containerd's PATH.
    path_env: OsString,
    runtime_state_parent: PathBuf,
    delete_leftover: Option<fn(&Path, &str, &Path)>,
    /// Shim sockets (/run/containerd/s) present before this test.
    shim_sockets_before: HashSet<OsString>,
    /// Paths under /run/containerd that may not have existed before.
    created: Vec<CreatedPath>,
    /// Dropped after `drop()`: unmounts and removes the directory.
    pub dir: TempDir,
    /// Released last.
    _serial: MutexGuard<'static, ()>,
}

impl Containerd {
    pub fn start(setup: Setup) -> Containerd {
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
        let state_parent = setup.runtime_state_parent.display().to_string();
        let created = [
            SHIM_SOCKET_DIR,
            "/run/containerd/fifo",
            state_parent.as_str(),
            "/run/containerd",
        ]
        .into_iter()
        .map(CreatedPath::watch)
        .collect();
        let shim_sockets_before = std::fs::read_dir(SHIM_SOCKET_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let path_env = std::env::join_paths(setup.path_prepend.iter().cloned().chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .expect("a PATH for containerd");
        let dir = TempDir::new(&format!("{}-ctd", setup.prefix));
        let ctd = Containerd {
            daemon: None,
            socket: dir.join("c.sock"),
            namespace: unique(setup.prefix),
            log: dir.join("containerd.log"),
            config_path: dir.join("config.toml"),
            path_env,
            runtime_state_parent: setup.runtime_state_parent,
            delete_leftover: setup.delete_leftover,
            shim_sockets_before,
            created,
            dir,
            _serial: serial,
        };
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{extra}"#,
            d = ctd.dir.path.display(),
            extra = setup.extra_config,
        );
        std::fs::write(&ctd.config_path, config).unwrap();
        let mut ctd = ctd;
        ctd.spawn_daemon();
        ctd
    }

    /// Starts containerd with the config and waits until it answers.
    fn spawn_daemon(&mut self) {
        assert!(self.daemon.is_none(), "containerd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&self.config_path)
            .env("PATH", &self.path_env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.daemon = Some(daemon);

        // Ready when the socket answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "containerd exited ({status}) while starting; its log:\n{}",
                    tail(&self.log, 40)
                );
            }
            if self.socket.exists() && self.run(&["version"], QUICK).success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {} within 30 s; its log:\n{}",
                self.socket.display(),
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's pid, if it is running.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILLs containerd (as a crash would) and reaps it. Its shims live on.
    pub fn kill_daemon(&mut self) {
        let mut daemon = self.daemon.take().expect("containerd is not running");
        daemon.kill().expect("SIGKILL to containerd");
        daemon.wait().expect("reaping containerd");
    }

    /// Starts containerd again, with the same config, after `kill_daemon`.
    pub fn restart_daemon(&mut self) {
        self.spawn_daemon();
    }

    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace)
            .args(args);
        cmd
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

    /// Builds the busybox image and imports (and unpacks) it.
    pub fn import_image(&self) {
        let archive = build_busybox_oci_archive(&self.dir.path);
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
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let alive = matches!(self.daemon.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        if alive {
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
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Shims outlive containerd; theirs mention our socket ("-address").
        let shims = kill_processes_mentioning(&self.socket.display().to_string());
        if !shims.is_empty() {
            eprintln!("containerd cleanup: killed leftover shim(s) {shims:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
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
        let left = remove_cgroup_tree(&format!("/{}", self.namespace));
        if !left.is_empty() {
            eprintln!("containerd cleanup: cgroups that could not be removed: {left:?}");
        }
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

/// The freezer state of cgroup `rel` as seen on the host: freezer.state of
/// the v1 freezer hierarchy, else `frozen` of a v2 cgroup.events mapped to
/// FROZEN/THAWED. None if no hierarchy has the cgroup.
pub fn freezer_state(rel: &str) -> Option<String> {
    let dirs = cgroup_dirs(rel);
    if let Some(state) = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("freezer.state")).ok())
    {
        return Some(state.trim().to_owned());
    }
    dirs.iter().find_map(|d| {
        let events = std::fs::read_to_string(d.join("cgroup.events")).ok()?;
        let frozen = events.lines().find_map(|l| l.strip_prefix("frozen "))?;
        Some(
            if frozen.trim() == "1" {
                "FROZEN"
            } else {
                "THAWED"
            }
            .to_owned(),
        )
    })
}

/// Every pid in cgroup `rel` (its cgroup.procs in all hierarchies).
pub fn cgroup_pids(rel: &str) -> HashSet<i32> {
    cgroup_dirs(rel)
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
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
