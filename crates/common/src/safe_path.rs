//! Path resolution inside an untrusted root filesystem.
//!
//! Every lookup goes through openat2(2) with RESOLVE_IN_ROOT, so `..` and
//! symlinks (absolute or relative) are resolved as if the rootfs were `/`:
//! no path can lead out of it. Directories and files are created one
//! component at a time, relative to a directory fd resolved the same way.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

const MAX_SYMLINK_DEPTH: u32 = 40;

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// `path` as a relative path (the root itself becomes ".").
fn relative(path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

/// Opens `path` inside `root` with `flags` (O_CLOEXEC is added).
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    loop {
        match rustix::fs::openat2(
            root,
            relative(path).as_path(),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        ) {
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// The path to use with mount(2) and friends to act on exactly what `fd` refers to.
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// Creates every missing directory of `path` inside `root` and returns an
/// O_PATH fd of the final directory. Dangling symlinks met on the way are
/// followed (inside the root) and their targets created, as runc does.
pub fn mkdir_all_in_root(root: BorrowedFd<'_>, path: &Path, mode: u32) -> io::Result<OwnedFd> {
    mkdir_all_depth(root, &relative(path), mode, 0)
}

fn mkdir_all_depth(
    root: BorrowedFd<'_>,
    path: &Path,
    mode: u32,
    depth: u32,
) -> io::Result<OwnedFd> {
    if depth > MAX_SYMLINK_DEPTH {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY;
    match open_in_root(root, path, dir_flags) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Usually only the last component or two are missing: look for the
    // deepest directory that exists from the end, not from the root.
    let components: Vec<Component<'_>> = path.components().collect();
    let mut present = components.len();
    let mut current = loop {
        present -= 1;
        let prefix: PathBuf = components[..present].iter().collect();
        let prefix = if present == 0 {
            Path::new(".")
        } else {
            prefix.as_path()
        };
        match open_in_root(root, prefix, dir_flags) {
            Ok(fd) => break fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound && present > 0 => {}
            Err(e) => return Err(e),
        }
    };
    let mut walked: PathBuf = components[..present].iter().collect();
    for component in &components[present..] {
        let component = *component;
        let Component::Normal(name) = component else {
            if component == Component::ParentDir {
                walked.push("..");
                current = open_in_root(root, &walked, dir_flags)?;
            }
            continue;
        };
        walked.push(name);
        match rustix::fs::mkdirat(&current, name, Mode::from_raw_mode(mode)) {
            Ok(()) => {
                // Just made: open it where it is, following nothing.
                current = open_beneath(&current, name, dir_flags)?;
                continue;
            }
            Err(rustix::io::Errno::EXIST) => {
                // Made meanwhile by someone else, or a dangling symlink.
                if let Ok(fd) = open_in_root(root, &walked, dir_flags) {
                    current = fd;
                    continue;
                }
                let target = rustix::fs::readlinkat(&current, name, Vec::new())
                    .map_err(|_| io::Error::from_raw_os_error(libc::ENOTDIR))?;
                let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
                let resolved = if target.is_absolute() {
                    relative(&target)
                } else {
                    walked.parent().unwrap_or(Path::new("")).join(&target)
                };
                mkdir_all_depth(root, &resolved, mode, depth + 1)?;
            }
            Err(e) => return Err(e.into()),
        }
        current = open_in_root(root, &walked, dir_flags)?;
    }
    Ok(current)
}

/// Opens the single component `name` in `dir`, following no symlink.
fn open_beneath(dir: &OwnedFd, name: &std::ffi::OsStr, flags: OFlags) -> io::Result<OwnedFd> {
    loop {
        match rustix::fs::openat2(
            dir,
            name,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Opens `path` inside `root` as O_PATH, creating an empty regular file
/// (and its parent directories) when nothing is there.
pub fn create_file_in_root(root: BorrowedFd<'_>, path: &Path) -> io::Result<OwnedFd> {
    match open_in_root(root, path, OFlags::PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let rel = relative(path);
    let (parent, name) = split_parent(&rel)?;
    let parent_fd = mkdir_all_in_root(root, parent, 0o755)?;
    match rustix::fs::openat2(
        &parent_fd,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(_) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open_in_root(root, path, OFlags::PATH)
}

/// The parent directory and final name of a relative path.
pub fn split_parent(path: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    Ok((path.parent().unwrap_or(Path::new("")), name))
}

/// The directory fd and name under which `path` lives inside `root`,
/// creating parent directories as needed.
pub fn parent_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
) -> io::Result<(OwnedFd, std::ffi::OsString)> {
    let rel = relative(path);
    let (parent, name) = split_parent(&rel)?;
    let parent_fd = mkdir_all_in_root(root, parent, 0o755)?;
    Ok((parent_fd, name.to_owned()))
}

/// Finds a relative symlink on `path` (inside `root`) whose target climbs
/// above the root with `..`: a hostile image trying to make a mount land
/// outside it. openat2 would clamp such a path to the root; we refuse it
/// instead, so the mistake is visible. Absolute symlinks are interpreted
/// inside the root as the container would, and are fine.
pub fn find_escaping_symlink(root: BorrowedFd<'_>, path: &Path) -> io::Result<Option<PathBuf>> {
    if has_no_symlink(root, path) {
        return Ok(None);
    }
    let mut pending: Vec<std::ffi::OsString> = relative(path)
        .components()
        .rev()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(component) = pending.pop() {
        if component == "." {
            continue;
        }
        if component == ".." {
            // `..` at the root from the path itself is clamped, harmless;
            // only `..` coming from a symlink target counts as an escape.
            resolved.pop();
            continue;
        }
        let dir: PathBuf = resolved.iter().collect();
        let dir_fd = match open_in_root(root, &dir, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::readlinkat(&dir_fd, component.as_os_str(), Vec::new()) {
            Ok(target) => {
                links += 1;
                if links > MAX_SYMLINK_DEPTH {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
                let link_path: PathBuf =
                    resolved.iter().chain(std::iter::once(&component)).collect();
                if target.is_absolute() {
                    resolved.clear();
                } else {
                    let mut depth = resolved.len() as i64;
                    for c in target.components() {
                        match c {
                            Component::ParentDir => depth -= 1,
                            Component::Normal(_) => depth += 1,
                            _ => {}
                        }
                        if depth < 0 {
                            return Ok(Some(Path::new("/").join(link_path)));
                        }
                    }
                }
                for c in target.components().rev() {
                    if let Component::Normal(_) | Component::ParentDir = c {
                        pending.push(c.as_os_str().to_owned());
                    }
                }
            }
            Err(rustix::io::Errno::INVAL)
            | Err(rustix::io::Errno::NOENT)
            | Err(rustix::io::Errno::NOTDIR) => resolved.push(component),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Whether `path` resolves beneath `root` without meeting a symlink, or
/// only its last component is missing below a directory that does (the
/// usual mount destination): one or two lookups instead of a walk.
fn has_no_symlink(root: BorrowedFd<'_>, path: &Path) -> bool {
    let beneath = |p: &Path| {
        rustix::fs::openat2(
            root,
            p,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    };
    let rel = relative(path);
    match beneath(&rel) {
        Ok(_) => true,
        Err(rustix::io::Errno::NOENT) => {
            let (Some(parent), Some(_)) = (rel.parent(), rel.file_name()) else {
                return false;
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            beneath(parent).is_ok_and(|fd| {
                rustix::fs::fstat(&fd)
                    .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
            })
        }
        Err(_) => false,
    }
}

/// fstat of an O_PATH fd.
pub fn stat_fd(fd: impl AsFd) -> io::Result<rustix::fs::Stat> {
    rustix::fs::fstat(fd).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-safe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn root_fd(dir: &Path) -> OwnedFd {
        rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn symlinks_stay_inside_root() {
        let base = tmp("escape");
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("abs")).unwrap();
        symlink("../../outside", root.join("rel")).unwrap();
        let fd = root_fd(&root);
        mkdir_all_in_root(fd.as_fd(), Path::new("/abs/made"), 0o755).unwrap();
        mkdir_all_in_root(fd.as_fd(), Path::new("/rel/made2"), 0o755).unwrap();
        create_file_in_root(fd.as_fd(), Path::new("/abs/file")).unwrap();
        mkdir_all_in_root(fd.as_fd(), Path::new("../../../up"), 0o755).unwrap();
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing may be created outside"
        );
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("made")
            .is_dir());
        assert!(root.join("up").is_dir());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn escaping_relative_symlinks_are_found() {
        let base = tmp("find-escape");
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        symlink("../../../../etc", base.join("a/b/up")).unwrap();
        symlink("../b", base.join("a/b/ok")).unwrap();
        symlink("/etc", base.join("abs")).unwrap();
        let fd = root_fd(&base);
        assert_eq!(
            find_escaping_symlink(fd.as_fd(), Path::new("/a/b/up/x")).unwrap(),
            Some(PathBuf::from("/a/b/up"))
        );
        assert_eq!(
            find_escaping_symlink(fd.as_fd(), Path::new("/a/b/ok/x")).unwrap(),
            None
        );
        assert_eq!(
            find_escaping_symlink(fd.as_fd(), Path::new("/abs/x")).unwrap(),
            None
        );
        assert_eq!(
            find_escaping_symlink(fd.as_fd(), Path::new("/../../a")).unwrap(),
            None
        );
        // The escaping link as the last component, existing or dangling,
        // is found too (the quick lookup refuses any symlink).
        symlink("../../../../nowhere", base.join("a/b/dangling")).unwrap();
        for last in ["up", "dangling"] {
            assert_eq!(
                find_escaping_symlink(fd.as_fd(), &Path::new("/a/b").join(last)).unwrap(),
                Some(Path::new("/a/b").join(last))
            );
        }
        // No symlink on the way: a missing last component or a missing
        // directory is nothing to refuse.
        for clean in ["/a/b", "/a/b/missing", "/a/missing/x", "/missing"] {
            assert_eq!(
                find_escaping_symlink(fd.as_fd(), Path::new(clean)).unwrap(),
                None
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn dangling_symlink_targets_are_created_inside() {
        let base = tmp("dangling");
        symlink("/run", base.join("varrun")).unwrap();
        let fd = root_fd(&base);
        mkdir_all_in_root(fd.as_fd(), Path::new("/varrun/secrets"), 0o755).unwrap();
        assert!(base.join("run/secrets").is_dir());
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// The missing tail of a path is made below its deepest existing
    /// directory, with `..` and a dangling symlink on the way, and the fd
    /// returned is the directory made.
    #[test]
    fn missing_tails_are_made_below_the_deepest_existing_directory() {
        let base = tmp("tails");
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        symlink("../../c", base.join("a/b/dangling")).unwrap();
        let fd = root_fd(&base);
        let made = mkdir_all_in_root(fd.as_fd(), Path::new("/a/b/x/y/z"), 0o755).unwrap();
        assert!(base.join("a/b/x/y/z").is_dir());
        let made_ino = stat_fd(&made).unwrap().st_ino;
        assert_eq!(
            made_ino,
            stat_fd(root_fd(&base.join("a/b/x/y/z"))).unwrap().st_ino
        );
        mkdir_all_in_root(fd.as_fd(), Path::new("/a/b/x/../w"), 0o755).unwrap();
        assert!(base.join("a/b/w").is_dir());
        // The symlink resolves inside the root (to /c, not above it).
        mkdir_all_in_root(fd.as_fd(), Path::new("/a/b/dangling/d"), 0o755).unwrap();
        assert!(base.join("c/d").is_dir());
        // A file in the way is an error, not replaced.
        std::fs::write(base.join("a/file"), "").unwrap();
        assert!(mkdir_all_in_root(fd.as_fd(), Path::new("/a/file/e"), 0o755).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
