//! A test's scratch directory under /tmp, and the global paths a client
//! may create outside it.
//!
//! (For a private `$TMPDIR` directory that reports errors instead of
//! panicking, see [`crate::images::TempDir`].)

use std::path::{Path, PathBuf};

use crate::mounts::unmount_under;
use crate::names::unique;

/// A directory `/tmp/<prefix>-<pid>-<n>` (a short path: containerd's
/// sockets live in it). Drop unmounts everything below it and removes it.
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
                eprintln!("test cleanup: removing {}: {e}", self.path.display());
            }
        }
    }
}

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
