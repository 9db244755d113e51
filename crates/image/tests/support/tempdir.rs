//! A self-removing temporary directory (the workspace avoids the tempfile
//! crate; this is all the tests need from it).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Context;

/// A directory under `$TMPDIR` that is removed, with everything in it, on drop.
///
/// Names carry the pid, a per-process counter and the clock so that parallel
/// tests and parallel test binaries never collide.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    /// Creates `$TMPDIR/berth-image-<label>-<pid>-<n>-<nanos>` (mode 0700).
    pub fn new(label: &str) -> io::Result<TempDir> {
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "berth-image-{label}-{}-{n}-{nanos}",
                std::process::id()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                        .context(|| format!("chmod {}", path.display()))?;
                    return Ok(TempDir { path, keep: false });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context(|| format!("creating {}", path.display())),
            }
        }
        Err(super::err(format!(
            "could not find a free temporary directory name under {}",
            base.display()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`, for brevity in tests.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Leaves the directory in place when dropped (prints where it is), for
    /// looking at what a failing test produced.
    pub fn keep(&mut self) {
        self.keep = true;
        eprintln!("keeping temporary directory {}", self.path.display());
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Removing files through a mount a test forgot (an overlay snapshot,
        // a bind mount of a host directory) would delete what is mounted, not
        // our copy: detach such mounts first and leave the directory alone if
        // any remains.
        let leftover = detach_mounts_under(&self.path);
        if !leftover.is_empty() {
            eprintln!(
                "warning: not removing {}: still mounted: {leftover:?}",
                self.path.display()
            );
            return;
        }
        // Best effort: a panic in drop would hide the test's own failure.
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                eprintln!("warning: could not remove {}: {e}", self.path.display());
            }
            _ => {}
        }
    }
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    // mountinfo has canonical paths; $TMPDIR may go through a symlink.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
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

/// Lazily unmounts everything at or below `dir`; returns what is still
/// mounted afterwards (e.g. when not root).
fn detach_mounts_under(dir: &Path) -> Vec<PathBuf> {
    use std::ffi::CString;
    use std::ffi::{c_char, c_int};
    use std::os::unix::ffi::OsStrExt;
    unsafe extern "C" {
        fn umount2(target: *const c_char, flags: c_int) -> c_int;
    }
    const MNT_DETACH: c_int = 2;
    for mount in mounts_under(dir) {
        if let Ok(c) = CString::new(mount.as_os_str().as_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
            unsafe { umount2(c.as_ptr(), MNT_DETACH) };
        }
    }
    mounts_under(dir)
}
