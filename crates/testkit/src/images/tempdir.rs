//! A self-removing temporary directory (the workspace avoids the tempfile
//! crate; this is all the tests need from it).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Context;
use crate::mounts::detach_mounts_under;

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
