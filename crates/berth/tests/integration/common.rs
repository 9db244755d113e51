//! Shared test support: temporary runtime roots, busybox bundles, and
//! running the real berth binary as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Whether a process exists (and is not a zombie).
pub use berth_testkit::procs::alive;
use berth_testkit::rootfs::busybox_bundle;
/// A root filesystem with busybox and its applets, /etc/passwd and /etc/group.
#[allow(unused_imports)] // for runc_errors.rs, which includes this module
pub use berth_testkit::rootfs::make_busybox_rootfs;
use serde_json::Value;

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One test's world: a temporary directory with a runtime root in it.
/// Dropping it force-deletes every container left and removes the directory.
pub struct Env {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub name: String,
}

impl Env {
    pub fn new(name: &str) -> Env {
        let name = format!("{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("berth-it-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("root");
        Env { dir, root, name }
    }

    /// A container id unique to this test.
    pub fn id(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// Builds a bundle named `name` with a busybox rootfs and the default
    /// config (terminal off), changed by `edit`.
    pub fn bundle(&self, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let bundle = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&bundle);
        let config = berth_runtime::features::default_spec(false);
        busybox_bundle(&bundle, config, args, edit)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BERTH);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs berth to completion. Output goes through files, not pipes: a
    /// created container inherits berth's stdio and would hold a pipe open.
    pub fn berth(&self, args: &[&str]) -> Output {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path = self.dir.join(format!("out.{n}"));
        let err_path = self.dir.join(format!("err.{n}"));
        let status = self
            .cmd(args)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .expect("running berth");
        let output = Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(out_path);
        let _ = std::fs::remove_file(err_path);
        output
    }

    /// Runs berth, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}): stdout={} stderr={}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs berth, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            !out.status.success(),
            "berth {args:?} should have failed: stdout={} stderr={}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state is JSON")
    }

    /// `run` in the foreground: (exit code, stdout, stderr).
    pub fn run(&self, bundle: &Path, id: &str) -> (i32, String, String) {
        let out = self.berth(&["run", "--bundle", bundle.to_str().unwrap(), id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `args` in a fresh container and returns its stdout, asserting exit 0.
    pub fn run_ok(&self, id: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> String {
        let bundle = self.bundle(id, args, edit);
        let (code, out, err) = self.run(&bundle, &self.id(id));
        assert_eq!(
            code, 0,
            "container {args:?} failed: stdout={out} stderr={err}"
        );
        out
    }

    /// Waits until the container reports `status` (up to 5 s).
    pub fn wait_status(&self, id: &str, status: &str) {
        for _ in 0..500 {
            let out = self.berth(&["state", id]);
            if out.status.success() {
                let state: Value = serde_json::from_slice(&out.stdout).expect("state is JSON");
                if state["status"] == status {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("container {id} never reached {status}: {}", self.state(id));
    }

    pub fn state_dir_exists(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.cmd(&["delete", "--force", &id]).output();
            }
        }
        // Nothing may stay mounted under the test directory.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            if let Some(mp) = line.split(' ').nth(4) {
                if mp.starts_with(self.dir.to_str().unwrap()) {
                    let _ = Command::new("umount").arg("-l").arg(mp).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The container's cgroup directories on the host, from its state.
pub fn cgroup_dirs_of(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for base in [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/unified",
    ] {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let controller = Path::new(base).file_name().unwrap().to_str().unwrap();
        let key = if controller == "unified" {
            ""
        } else {
            controller
        };
        let path = own
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _ = parts.next();
                let keys = parts.next()?;
                let p = parts.next()?;
                keys.split(',')
                    .any(|k| k == key || (key.is_empty() && keys.is_empty()))
                    .then(|| p.to_owned())
            })
            .next()
            .unwrap_or_else(|| "/".into());
        out.push(Path::new(base).join(path.trim_start_matches('/')).join(id));
    }
    out
}

/// Accepts one connection on a console socket and receives the pty master
/// sent with SCM_RIGHTS (what containerd and conmon do).
pub fn receive_console(
    listener: &std::os::unix::net::UnixListener,
) -> (String, std::os::fd::OwnedFd) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let (stream, _) = listener.accept().unwrap();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 4096];
    let msg = rustix::net::recvmsg(
        &stream,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::empty(),
    )
    .unwrap();
    let name = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            return (name, fds.next().unwrap());
        }
    }
    panic!("no fd received on the console socket");
}

/// Reads from a pty master until `marker` shows up (5 s at most).
pub fn read_until(fd: &std::os::fd::OwnedFd, marker: &str) -> String {
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !text.contains(marker) && std::time::Instant::now() < deadline {
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
            continue;
        }
        match rustix::io::read(fd, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    text
}
