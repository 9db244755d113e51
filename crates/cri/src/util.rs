//! Small helpers shared by the services.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A new 64-hex-digit id, as containerd makes them.
pub fn new_id() -> String {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("getrandom failed: {e}"),
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unmounts everything stacked on `path`. Idempotent.
pub fn unmount_all(path: &Path) {
    for _ in 0..32 {
        if rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).is_err() {
            break;
        }
    }
}

/// Removes a directory tree that may hold mount points: unmounts first.
pub fn remove_dir_all_unmounting(path: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<std::path::PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(std::path::PathBuf::from)
        .filter(|p| p.starts_with(path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        unmount_all(&p);
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("removing {}", path.display()), e)),
    }
}

/// Whether the labels match a selector (every selector pair present).
pub fn labels_match(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Can this process lower oom_score_adj below its own? Root here may lack
/// CAP_SYS_RESOURCE; then containers cannot either.
pub fn can_lower_oom_score_adj() -> bool {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false)
        || own <= -1000
}

pub fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0)
}

/// The log file of a container: CRI's `log_path` is relative to the pod's
/// `log_directory`; absolute paths and `..` are refused before anything is
/// created (a log path must never name a host file).
pub fn check_log_path(log_dir: &str, log_path: &str) -> Result<String> {
    let rel = Path::new(log_path);
    if rel.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "log_path {log_path:?} must be relative to the pod's log_directory"
        )));
    }
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Error::InvalidArgument(format!(
            "log_path {log_path:?} must name a file below the pod's log_directory (no \"..\")"
        )));
    }
    if !Path::new(log_dir).is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "log_directory {log_dir:?} must be absolute"
        )));
    }
    Ok(Path::new(log_dir).join(rel).display().to_string())
}

/// Creates the directories of `rel` below `log_dir`, resolving every
/// component beneath it without following symlinks, so a symlink planted in
/// the log directory cannot redirect the log elsewhere on the host.
pub fn create_log_parent(log_dir: &Path, rel: &Path) -> Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    std::fs::create_dir_all(log_dir).map_err(|e| Error::internal(log_dir.display(), e))?;
    let mut dir = rustix::fs::open(
        log_dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::internal(log_dir.display(), std::io::Error::from(e)))?;
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        let name = part.as_os_str();
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(Error::internal(
                    log_dir.join(rel).display(),
                    std::io::Error::from(e),
                ))
            }
        }
        dir = rustix::fs::openat2(
            &dir,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "log_path {}: {} is not a directory below the log directory: {}",
                rel.display(),
                Path::new(name).display(),
                std::io::Error::from(e)
            ))
        })?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) and makes it root-only: berthd's state,
/// bundles and records hold secrets (a container's environment) and image
/// contents (setuid binaries) no other user may reach.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::internal(dir.display(), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::internal(dir.display(), e))
}

/// Writes a file readable by root only, created with that mode.
pub fn write_private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// Makes the mount at `path` nosuid (a bind remount: only this mount's
/// flags change, not the filesystem's).
pub fn remount_nosuid(path: &Path) -> Result<()> {
    use rustix::mount::MountFlags;
    let flags = rustix::fs::statvfs(path)
        .map(|st| st.f_flag)
        .map_err(|e| Error::internal(path.display(), std::io::Error::from(e)))?;
    let mut keep = MountFlags::NOSUID;
    for (have, flag) in [
        (rustix::fs::StatVfsMountFlags::RDONLY, MountFlags::RDONLY),
        (rustix::fs::StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (rustix::fs::StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
    ] {
        if flags.contains(have) {
            keep |= flag;
        }
    }
    rustix::mount::mount_remount(path, keep | MountFlags::BIND, "").map_err(|e| {
        Error::internal(
            format!("remounting {} nosuid", path.display()),
            std::io::Error::from(e),
        )
    })
}

/// Makes a FIFO (0600) at `path`.
pub fn mkfifo(path: &Path) -> Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| Error::internal(format!("mkfifo {}", path.display()), e))
}
