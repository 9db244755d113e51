//! Helpers for tests that drive real clients (berth's `tests/dropin.rs`,
//! the shim's `tests/containerd.rs`): preconditions, running client tools
//! with a timeout, building a busybox OCI image with umoci, the host-level
//! cleanup (processes, mounts, cgroups) the guards need, and a private
//! containerd (`containerd`).
//!
//! Everything here works on the real host as root: no mocks. Nothing here
//! names a binary of one crate, so other crates' tests include this module
//! by path.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub mod containerd;

/// The reference the test image is imported under, by both clients.
pub const IMAGE_REF: &str = "localhost/berth-dropin/busybox:latest";

/// Timeouts of client commands: quick queries, and runs or imports.
pub const QUICK: Duration = Duration::from_secs(30);
pub const SLOW: Duration = Duration::from_secs(180);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Locks `m`, ignoring poisoning (a failed test must not fail the others).
pub fn lock(m: &'static Mutex<()>) -> MutexGuard<'static, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Preconditions: fail loudly, never skip.

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the drop-in tests drive containerd and podman on the real host and must run as root \
         (euid is {euid}); run `sudo -E cargo test -p berth --test dropin`"
    );
}

/// The full path of `tool` in PATH (or in `extra` locations), if any.
pub fn find_tool(tool: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Panics with one message naming every missing tool.
pub fn require_tools(tools: &[(&str, &[&str], &str)]) {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, extra, _)| find_tool(tool, extra).is_none())
        .map(|(tool, _, package)| format!("`{tool}` (Debian package {package})"))
        .collect();
    assert!(
        missing.is_empty(),
        "required tool(s) missing, install them to run the drop-in tests: {}",
        missing.join(", ")
    );
}

/// /bin/busybox must exist and be statically linked: it is the whole image.
pub fn require_static_busybox() -> PathBuf {
    let path = PathBuf::from("/bin/busybox");
    let mut data = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| {
            panic!(
                "{} is required (Debian package busybox-static): {e}",
                path.display()
            )
        });
    assert!(
        data.len() > 64 && &data[..4] == b"\x7fELF" && data[4] == 2 && data[5] == 1,
        "{} is not a little-endian 64-bit ELF executable ({} bytes, starting {:02x?}; mounts over it: {:?})",
        path.display(),
        data.len(),
        &data[..data.len().min(16)],
        mounts()
            .into_iter()
            .filter(|(m, _)| ["/bin", "/usr", "/usr/bin", "/bin/busybox", "/usr/bin/busybox"]
                .iter()
                .any(|p| m == Path::new(p)))
            .collect::<Vec<_>>()
    );
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let has_interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= data.len() && u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) == 3
        // PT_INTERP
    });
    assert!(
        !has_interp,
        "{} is dynamically linked; the test image needs a static one (Debian package busybox-static)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------
// Running commands.

/// What a finished (or timed-out) command did.
pub struct Outcome {
    pub cmdline: String,
    /// The exit code; None if killed by a signal or timed out.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn describe(&self) -> String {
        let status = if self.timed_out {
            "TIMED OUT (killed)".to_owned()
        } else {
            match self.code {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_owned(),
            }
        };
        format!(
            "`{}`: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let s = a.to_string_lossy();
            if s.contains(' ') || s.is_empty() {
                format!("'{s}'")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` (stdin /dev/null) with a deadline. stdout and stderr go to
/// files in `scratch` rather than pipes, so a daemon the command leaves
/// behind (shim, conmon) can never make us wait for EOF.
pub fn run_in(scratch: &Path, cmd: &mut Command, timeout: Duration) -> Outcome {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    std::fs::create_dir_all(scratch).expect("creating the scratch dir");
    let out_path = scratch.join(format!("cmd-{n}.out"));
    let err_path = scratch.join(format!("cmd-{n}.err"));
    let line = cmdline(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("waiting for a killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let outcome = Outcome {
        cmdline: line,
        code: if timed_out { None } else { status.code() },
        timed_out,
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    outcome
}

/// Runs `cmd` and panics unless it exits 0.
pub fn run_ok(scratch: &Path, cmd: &mut Command, timeout: Duration) -> Outcome {
    let out = run_in(scratch, cmd, timeout);
    assert!(out.success(), "command failed: {}", out.describe());
    out
}

/// The last `n` lines of a text file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// Temporary directories that clean up after themselves.

/// A directory under /tmp (short path: containerd's sockets live in it).
/// Drop unmounts everything below it and removes it.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = PathBuf::from("/tmp").join(unique(prefix));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        unmount_under(&self.path);
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("dropin cleanup: removing {}: {e}", self.path.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Mounts.

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, filesystem type) of every mount this process sees.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((
                PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                fields.get(sep + 1)?.to_string(),
            ))
        })
        .collect()
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Lazily unmounts everything at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    for _ in 0..10 {
        let mut found = mounts_under(dir);
        if found.is_empty() {
            return;
        }
        found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for mp in found {
            let c = CString::new(mp.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!(
                    "dropin cleanup: umount {}: {}",
                    mp.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        eprintln!(
            "dropin cleanup: mounts left under {}: {left:?}",
            dir.display()
        );
    }
}

// ---------------------------------------------------------------------------
// Processes.

/// (pid, command line with spaces for NULs) of every process except this
/// one whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(needle) {
            found.push((pid, line.trim_end().to_owned()));
        }
    }
    found
}

/// SIGKILLs (by pid) every process whose command line mentions `needle`,
/// except this one. The needle is always a path unique to one test, so this
/// only ever reaches processes the test started (shims, conmon).
pub fn kill_processes_mentioning(needle: &str) -> Vec<i32> {
    let mut killed = Vec::new();
    for (pid, _) in processes_mentioning(needle) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        killed.push(pid);
    }
    killed
}

// ---------------------------------------------------------------------------
// Cgroups.

/// Mount points of every cgroup (v1) and cgroup2 hierarchy.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|(_, fs)| fs == "cgroup" || fs == "cgroup2")
        .map(|(p, _)| p)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The directories of cgroup `rel` (e.g. "/ns/id") that exist in any hierarchy.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    cgroup_mounts()
        .into_iter()
        .map(|m| m.join(rel))
        .filter(|d| d.is_dir())
        .collect()
}

fn subdirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            subdirs_deepest_first(&e.path(), out);
        }
    }
    out.push(dir.to_path_buf());
}

/// Kills every process in cgroup `rel` (all hierarchies, recursively: these
/// are the test's own containers) and removes the cgroup directories.
/// Returns the directories it could not remove.
pub fn remove_cgroup_tree(rel: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for top in cgroup_dirs(rel) {
        subdirs_deepest_first(&top, &mut dirs);
    }
    if dirs.is_empty() {
        return dirs;
    }
    for d in &dirs {
        // A frozen (v1 freezer) process cannot die: thaw first.
        let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        let _ = std::fs::write(d.join("cgroup.freeze"), "0");
        for pid in std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<PathBuf> = dirs
            .iter()
            .filter(|d| d.exists() && std::fs::remove_dir(d).is_err() && d.exists())
            .cloned()
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits up to `timeout` for cgroup `rel` to disappear from every hierarchy;
/// returns the directories still there.
pub fn wait_cgroup_gone(rel: &str, timeout: Duration) -> Vec<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = cgroup_dirs(rel);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Global paths the clients create outside our temp dirs.

/// A path that a client may create outside the test's directories. If it did
/// not exist when the test started, cleanup removes it again (files are
/// removed; directories only when empty, so nobody else's data is touched).
pub struct CreatedPath {
    pub path: PathBuf,
    existed: bool,
}

impl CreatedPath {
    pub fn watch(path: &str) -> CreatedPath {
        CreatedPath {
            path: PathBuf::from(path),
            existed: Path::new(path).exists(),
        }
    }

    pub fn remove_if_created(&self) {
        if self.existed {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&self.path) else {
            return;
        };
        let _ = if meta.is_dir() {
            std::fs::remove_dir(&self.path)
        } else {
            std::fs::remove_file(&self.path)
        };
    }
}

// ---------------------------------------------------------------------------
// The image.

/// Builds an OCI image holding only a static busybox (applet symlinks in
/// /bin, /etc/passwd and /etc/group) with umoci, and packs the layout into
/// an oci-archive tar file under `dir`. Its index names it `IMAGE_REF`.
pub fn build_busybox_oci_archive(dir: &Path) -> PathBuf {
    let busybox = require_static_busybox();
    let rootfs = dir.join("image-rootfs");
    for d in [
        "bin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).expect("copying busybox");
    std::fs::set_permissions(
        rootfs.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let list = run_ok(
        dir,
        Command::new(&busybox).arg("--list"),
        Duration::from_secs(10),
    );
    let mut applets = 0;
    for applet in list.stdout.lines().map(str::trim) {
        // "busybox" itself would replace the binary with a self-symlink.
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", rootfs.join("bin").join(applet)).expect("creating an applet symlink");
        applets += 1;
    }
    assert!(
        rootfs.join("bin/sh").exists(),
        "busybox --list has no `sh` applet ({applets} applets)"
    );
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();

    let layout = dir.join("image-layout");
    let image = format!("{}:latest", layout.display());
    let t = Duration::from_secs(120);
    run_ok(
        dir,
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
        t,
    );
    run_ok(
        dir,
        Command::new("umoci").args(["new", "--image", &image]),
        t,
    );
    run_ok(
        dir,
        Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(&rootfs)
            .arg("/"),
        t,
    );
    run_ok(
        dir,
        Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.cmd",
            "sh",
            "--config.env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--config.workingdir",
            "/",
        ]),
        t,
    );
    run_ok(
        dir,
        Command::new("umoci").args(["gc", "--layout"]).arg(&layout),
        t,
    );

    // umoci tags are bare ("latest"); name the image fully, as
    // `skopeo copy ... oci-archive:FILE:REF` would, so that containerd and
    // podman both import it under IMAGE_REF.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("index.json has manifests");
    assert_eq!(
        manifests.len(),
        1,
        "expected one manifest in {}",
        index_path.display()
    );
    manifests[0]["annotations"]["org.opencontainers.image.ref.name"] = serde_json::json!(IMAGE_REF);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    // An oci-archive is a plain tar of the layout.
    let archive = dir.join("busybox-oci.tar");
    run_ok(
        dir,
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
        t,
    );
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&layout);
    archive
}
