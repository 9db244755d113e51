//! The container's root filesystem: mounts, /dev, masked and read-only
//! paths, and the switch into it (pivot_root or chroot).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use rustix::fs::{FileType, Mode, OFlags};

use crate::error::Context;
use crate::mount_opts::{self, MountOptions};
use crate::safe_path::{
    create_file_in_root, fd_path, find_escaping_symlink, mkdir_all_in_root, open_in_root,
    parent_in_root, stat_fd,
};
use crate::{sys, Error, Result};

mod cgroupfs;
mod devices;

/// Everything rootfs setup needs to know.
pub struct RootfsSetup<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub cgroups: &'a berth_cgroups::Manager,
    /// The container has its own cgroup namespace (cgroupfs can be mounted).
    pub cgroupns: bool,
    /// The container has its own user namespace (device nodes cannot be made).
    pub userns: bool,
    /// Id-mapped trees prepared by berth, by mount index.
    pub idmapped: &'a [(usize, OwnedFd)],
    /// Called before the first step that needs the container's cgroups to
    /// exist and hold the init: a cgroup mount, a bind mount from /sys, the
    /// device nodes. May be called again (it must then do nothing).
    pub before_cgroups: &'a dyn Fn() -> Result<()>,
    /// The host path of the rootfs fd that `prepare` works in, read once.
    pub root_path: std::cell::OnceCell<PathBuf>,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn mount_err(what: &str, dest: &Path, e: std::io::Error) -> Error {
    Error::Sys {
        context: format!("{what} {}", dest.display()),
        source: e,
    }
}

/// Whether mounting `m` needs the container's cgroups: a cgroup
/// filesystem, or a bind from /sys (which may be from a cgroup directory).
fn needs_cgroups(m: &Mount) -> bool {
    matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2"))
        || m.source().as_deref().is_some_and(|s| s.starts_with("/sys"))
}

/// /proc files a bind mount may cover (lxcfs and friends), as runc allows.
const PROC_BIND_ALLOWED: [&str; 10] = [
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

impl RootfsSetup<'_> {
    /// Prepares the new root in the container's mount namespace, up to (not
    /// including) the switch into it. Returns an O_PATH fd of the root.
    /// Binds the rootfs on itself in the container's mount namespace and
    /// opens it: the first step of [`RootfsSetup::prepare`], taken while
    /// the init still has its host credentials (in a user namespace the
    /// mapped root may not search the directories leading to the bundle).
    pub fn bind_root(&self) -> Result<OwnedFd> {
        let linux = self.spec.linux().as_ref();
        let propagation = linux
            .and_then(|l| l.rootfs_propagation().as_deref())
            .filter(|p| !p.is_empty())
            .and_then(mount_opts::propagation_flag);
        let root_flag = propagation
            .map(|f| f | libc::MS_REC)
            .unwrap_or(libc::MS_SLAVE | libc::MS_REC);
        sys::mount(None, c"/", None, root_flag, None).ctx(|| "setting propagation of /".into())?;
        // A shared parent would let the bind below propagate to the host,
        // and an unbindable one refuses it: make it private as runc does.
        if root_flag & (libc::MS_SHARED | libc::MS_UNBINDABLE) != 0 {
            self.make_parent_mount_private()?;
        }
        let rootfs = cstr(self.rootfs);
        rbind(&rootfs, &rootfs)
            .ctx(|| format!("bind mounting rootfs {}", self.rootfs.display()))?;
        let root =
            open_dir(self.rootfs).ctx(|| format!("opening rootfs {}", self.rootfs.display()))?;
        if self.rootfs_nosuid_only_on_host() {
            // The caller mounted the rootfs nosuid so that host users cannot
            // run its setuid binaries; inside, the image keeps its meaning.
            let attr = sys::MountAttr {
                attr_clr: mount_opts::attr::NOSUID,
                ..Default::default()
            };
            sys::mount_setattr(root.as_fd(), &attr, false)
                .ctx(|| format!("clearing nosuid on rootfs {}", self.rootfs.display()))?;
        }
        Ok(root)
    }

    /// Mounts, devices and the working directory inside the rootfs that
    /// [`RootfsSetup::bind_root`] opened.
    pub fn prepare(&self, root: OwnedFd) -> Result<OwnedFd> {
        let linux = self.spec.linux().as_ref();
        let mounts = self.spec.mounts().as_deref().unwrap_or_default();
        for (index, m) in mounts.iter().enumerate() {
            if needs_cgroups(m) {
                (self.before_cgroups)()?;
            }
            self.mount_entry(root.as_fd(), index, m)?;
        }
        (self.before_cgroups)()?;
        let bind_dev = mounts.iter().any(|m| {
            normalize_dest(m.destination()) == Path::new("/dev")
                && (m.typ().as_deref() == Some("bind")
                    || mount_opts::parse(m.options().as_deref().unwrap_or_default()).is_bind())
        });
        if !bind_dev {
            self.create_default_devices(root.as_fd())?;
        }
        for dev in linux
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default()
        {
            self.create_device(root.as_fd(), dev)?;
        }
        if let Some(process) = self.spec.process() {
            mkdir_all_in_root(root.as_fd(), process.cwd(), 0o755)
                .ctx(|| format!("creating working directory {}", process.cwd().display()))?;
        }
        Ok(root)
    }

    /// The host path of `root` (the rootfs fd `prepare` works in): read
    /// once, since mounts below it do not move it.
    fn root_path(&self, root: BorrowedFd<'_>) -> Result<&Path> {
        if self.root_path.get().is_none() {
            let path = fd_link(root).ctx(|| "resolving the rootfs".into())?;
            let _ = self.root_path.set(path);
        }
        Ok(self.root_path.get().expect("set above"))
    }

    /// Whether the bundle's rootfs is nosuid on the host only (annotation
    /// [`crate::spec::ROOTFS_HOST_NOSUID`]). In a user namespace the flag is
    /// locked and stays.
    fn rootfs_nosuid_only_on_host(&self) -> bool {
        !self.userns
            && self
                .spec
                .annotations()
                .as_ref()
                .and_then(|a| a.get(crate::spec::ROOTFS_HOST_NOSUID))
                .is_some_and(|v| v == "true")
    }

    /// pivot_root needs the rootfs's parent mount to be non-shared.
    fn make_parent_mount_private(&self) -> Result<()> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .ctx(|| "reading /proc/self/mountinfo".into())?;
        let mut best: Option<&str> = None;
        for line in text.lines() {
            let Some(mp) = line.split(' ').nth(4) else {
                continue;
            };
            if self.rootfs.starts_with(mp) && best.is_none_or(|b| mp.len() > b.len()) {
                best = Some(mp);
            }
        }
        if let Some(mp) = best {
            let target = CString::new(mp).unwrap_or_default();
            sys::mount(None, &target, None, libc::MS_PRIVATE, None)
                .ctx(|| format!("making {mp} private for pivot_root"))?;
        }
        Ok(())
    }

    fn mount_entry(&self, root: BorrowedFd<'_>, index: usize, m: &Mount) -> Result<()> {
        let dest = normalize_dest(m.destination());
        let opts = mount_opts::parse(m.options().as_deref().unwrap_or_default());
        let typ = m.typ().as_deref().unwrap_or("");
        let is_bind = opts.is_bind() || typ == "bind";
        check_proc_destination(&dest, typ, is_bind)?;
        if let Some(link) = find_escaping_symlink(root, &dest)
            .map_err(|e| mount_err("resolving mount destination", &dest, e))?
        {
            return Err(Error::InvalidConfig(format!(
                "mount destination {}: symlink {} in the root filesystem points outside it",
                dest.display(),
                link.display()
            )));
        }
        if matches!(typ, "proc" | "sysfs") {
            refuse_non_directory_destination(root, &dest, typ)?;
        }
        match typ {
            "cgroup" | "cgroup2" => self.mount_cgroup(root, &dest, &opts)?,
            _ if is_bind => {
                let tree = self
                    .idmapped
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, fd)| fd.as_fd());
                self.mount_bind(root, m, &dest, &opts, typ, tree)?
            }
            _ => self.mount_filesystem(root, m, &dest, &opts, typ)?,
        }
        apply_recursive_attrs(root, &dest, &opts)?;
        self.apply_propagation(root, &dest, &opts)
    }

    fn mount_filesystem(
        &self,
        root: BorrowedFd<'_>,
        m: &Mount,
        dest: &Path,
        opts: &MountOptions,
        typ: &str,
    ) -> Result<()> {
        let target = mount_point(root, dest)?;
        check_resolved_destination(self.root_path(root)?, target.as_fd(), dest, typ, false)?;
        let source = m
            .source()
            .as_ref()
            .map(|s| cstr(s))
            .unwrap_or_else(|| CString::new(typ).unwrap_or_default());
        let fstype = CString::new(typ).unwrap_or_default();
        let data = CString::new(opts.data.as_str()).unwrap_or_default();
        let flags = opts.flags & !libc::MS_REMOUNT;
        let result = sys::mount(
            Some(&source),
            &fd_path(target.as_fd()),
            Some(&fstype),
            flags,
            (!opts.data.is_empty()).then_some(data.as_c_str()),
        );
        match result {
            Ok(()) => {}
            // sysfs cannot be mounted in a user namespace that does not own
            // the network namespace: fall back to the host's, as runc does.
            Err(e) if typ == "sysfs" && e.raw_os_error() == Some(libc::EPERM) => {
                rbind(c"/sys", &fd_path(target.as_fd()))
                    .map_err(|e| mount_err("bind mounting /sys on", dest, e))?;
                let flags = (flags | libc::MS_BIND | libc::MS_REC) & !libc::MS_REMOUNT;
                remount(root, dest, flags, true)?;
            }
            Err(e) => return Err(mount_err(&format!("mounting {typ} on"), dest, e)),
        }
        if opts.tmpcopyup {
            log::warn!(
                "mount {}: tmpcopyup is not supported, the tmpfs starts empty",
                dest.display()
            );
        }
        Ok(())
    }

    fn mount_bind(
        &self,
        root: BorrowedFd<'_>,
        m: &Mount,
        dest: &Path,
        opts: &MountOptions,
        typ: &str,
        idmapped_tree: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let source = m.source().as_ref().ok_or_else(|| {
            Error::InvalidConfig(format!("bind mount {} has no source", dest.display()))
        })?;
        let source = if source.is_absolute() {
            source.clone()
        } else {
            self.bundle.join(source)
        };
        // A prepared tree was opened with the host's credentials; its
        // source path may not be searchable by a user namespace's root.
        let is_dir = match idmapped_tree {
            Some(tree) => rustix::fs::fstat(tree)
                .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
                .ctx(|| format!("bind mount source {}", source.display()))?,
            None => std::fs::metadata(&source)
                .ctx(|| format!("bind mount source {}", source.display()))?
                .is_dir(),
        };
        let target = if is_dir {
            mkdir_all_in_root(root, dest, 0o755)
        } else {
            create_file_in_root(root, dest)
        }
        .map_err(|e| mount_err("creating mount point", dest, e))?;
        check_resolved_destination(self.root_path(root)?, target.as_fd(), dest, typ, true)?;
        let bind_flags = libc::MS_BIND | (opts.flags & libc::MS_REC);
        match idmapped_tree {
            Some(tree) => crate::idmap::attach(tree, target.as_fd(), dest)?,
            None => sys::mount(
                Some(&cstr(&source)),
                &fd_path(target.as_fd()),
                None,
                bind_flags,
                None,
            )
            .map_err(|e| mount_err(&format!("bind mounting {} on", source.display()), dest, e))?,
        }
        let extra = opts.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if extra != 0 {
            remount(root, dest, extra | libc::MS_BIND, self.userns)?;
        }
        Ok(())
    }

    fn apply_propagation(
        &self,
        root: BorrowedFd<'_>,
        dest: &Path,
        opts: &MountOptions,
    ) -> Result<()> {
        if opts.propagation.is_empty() {
            return Ok(());
        }
        let top = reopen(root, dest)?;
        for flag in &opts.propagation {
            sys::mount(None, &fd_path(top.as_fd()), None, *flag, None)
                .map_err(|e| mount_err("changing propagation of", dest, e))?;
        }
        Ok(())
    }

    /// Masks `linux.maskedPaths` and makes `linux.readonlyPaths` read-only.
    pub fn protect_paths(&self, root: BorrowedFd<'_>) -> Result<()> {
        let Some(linux) = self.spec.linux() else {
            return Ok(());
        };
        for path in linux.readonly_paths().iter().flatten() {
            let path = Path::new(path);
            let fd = match open_in_root(root, path, OFlags::PATH) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(mount_err("opening read-only path", path, e)),
            };
            let here = fd_path(fd.as_fd());
            rbind(&here, &here).map_err(|e| mount_err("bind mounting read-only path", path, e))?;
            let flags = libc::MS_BIND | libc::MS_RDONLY | libc::MS_REC;
            remount(root, path, flags, true)?;
        }
        // Mask with the container's own /dev/null where it has one: the host's
        // sits on a mount that rootfsPropagation "runbindable" made unbindable.
        let container_null = open_in_root(root, Path::new("/dev/null"), OFlags::PATH)
            .ok()
            .filter(|fd| {
                stat_fd(fd.as_fd()).is_ok_and(|st| {
                    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                        && st.st_rdev == sys::makedev(1, 3)
                })
            });
        let null_source = container_null
            .as_ref()
            .map(|fd| fd_path(fd.as_fd()))
            .unwrap_or_else(|| c"/dev/null".to_owned());
        for path in linux.masked_paths().iter().flatten() {
            let path = Path::new(path);
            let fd = match open_in_root(root, path, OFlags::PATH) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(mount_err("opening masked path", path, e)),
            };
            let is_dir = stat_fd(fd.as_fd())
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
                .unwrap_or(false);
            let result = if is_dir {
                sys::mount(
                    Some(c"tmpfs"),
                    &fd_path(fd.as_fd()),
                    Some(c"tmpfs"),
                    libc::MS_RDONLY,
                    None,
                )
            } else {
                sys::mount(
                    Some(&null_source),
                    &fd_path(fd.as_fd()),
                    None,
                    libc::MS_BIND,
                    None,
                )
            };
            result.map_err(|e| mount_err("masking", path, e))?;
        }
        Ok(())
    }
}

/// An O_PATH fd of the directory `path`.
fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Creates the directory `dest` to mount on.
fn mount_point(root: BorrowedFd<'_>, dest: &Path) -> Result<OwnedFd> {
    mkdir_all_in_root(root, dest, 0o755).map_err(|e| mount_err("creating mount point", dest, e))
}

/// Where the kernel says `fd` is (its /proc/self/fd link).
fn fd_link(fd: BorrowedFd<'_>) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Re-resolves `path` so that a mount just made on it is what we act on.
fn reopen(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    open_in_root(root, path, OFlags::PATH).map_err(|e| mount_err("reopening", path, e))
}

/// Binds `source` on `target` with the mounts below it.
fn rbind(source: &CStr, target: &CStr) -> std::io::Result<()> {
    sys::mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
}

/// Remounts the bind mount just made at `dest` (re-resolved) with `flags`,
/// keeping the flags the kernel locks in a user namespace (nosuid, nodev,
/// noexec, atime) when `keep_locked`.
fn remount(
    root: BorrowedFd<'_>,
    dest: &Path,
    flags: libc::c_ulong,
    keep_locked: bool,
) -> Result<()> {
    let target = reopen(root, dest)?;
    let mut flags = flags | libc::MS_REMOUNT;
    if keep_locked {
        if let Ok(st) = rustix::fs::fstatvfs(&target) {
            let f = st.f_flag;
            for (st_flag, ms_flag) in [
                (rustix::fs::StatVfsMountFlags::NOSUID, libc::MS_NOSUID),
                (rustix::fs::StatVfsMountFlags::NODEV, libc::MS_NODEV),
                (rustix::fs::StatVfsMountFlags::NOEXEC, libc::MS_NOEXEC),
                (rustix::fs::StatVfsMountFlags::NOATIME, libc::MS_NOATIME),
                (
                    rustix::fs::StatVfsMountFlags::NODIRATIME,
                    libc::MS_NODIRATIME,
                ),
                (rustix::fs::StatVfsMountFlags::RELATIME, libc::MS_RELATIME),
            ] {
                if f.contains(st_flag) {
                    flags |= ms_flag;
                }
            }
        }
    }
    sys::mount(None, &fd_path(target.as_fd()), None, flags, None)
        .map_err(|e| mount_err("remounting", dest, e))
}

/// Mount destinations are absolute inside the container; runc treats a
/// relative one as relative to "/".
fn normalize_dest(dest: &Path) -> PathBuf {
    if dest.is_absolute() {
        dest.to_path_buf()
    } else {
        Path::new("/").join(dest)
    }
}

/// Refuses mounts that would hide or replace procfs entries the kernel uses
/// to confine the container (the checks runc added for CVE-2019-19921 & co).
fn check_proc_destination(dest: &Path, typ: &str, is_bind: bool) -> Result<()> {
    let lexical: PathBuf = dest.components().collect();
    if lexical == Path::new("/proc") {
        if typ != "proc" {
            return Err(Error::InvalidConfig(format!(
                "mount on /proc must be of type proc, not {typ:?}"
            )));
        }
        return Ok(());
    }
    if lexical.starts_with("/proc") {
        let allowed = is_bind && PROC_BIND_ALLOWED.iter().any(|p| lexical == Path::new(p));
        if !allowed {
            return Err(Error::InvalidConfig(format!(
                "mount destination {} is inside /proc and not one of the files that may be covered",
                dest.display()
            )));
        }
    }
    Ok(())
}

/// The proc check again on the path a mount point really resolved to: a
/// destination written as `/tmp/../proc/self/attr/exec`, or through a
/// symlink to /proc in the image, must not slip past the check of the string
/// (runc CVE-2019-16884, CVE-2023-27561).
fn check_resolved_destination(
    root_path: &Path,
    target: BorrowedFd<'_>,
    dest: &Path,
    typ: &str,
    is_bind: bool,
) -> Result<()> {
    let resolved = resolved_in_root(root_path, target)
        .map_err(|e| mount_err("resolving mount destination", dest, e))?;
    check_proc_destination(&resolved, typ, is_bind).map_err(|e| match e {
        Error::InvalidConfig(msg) if resolved != dest => Error::InvalidConfig(format!(
            "mount destination {} resolves to {}: {msg}",
            dest.display(),
            resolved.display()
        )),
        other => other,
    })
}

/// Where `target` is, as a path inside the root `root` is the top of.
/// `root_path` is where the root is ([`RootfsSetup::root_path`]).
fn resolved_in_root(root_path: &Path, target: BorrowedFd<'_>) -> std::io::Result<PathBuf> {
    let target_path = fd_link(target)?;
    let inside = target_path.strip_prefix(root_path).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is outside the root filesystem", target_path.display()),
        )
    })?;
    Ok(Path::new("/").join(inside))
}

/// procfs and sysfs go on an ordinary directory only, never through a
/// symlink at the destination (even one pointing back inside), as runc.
fn refuse_non_directory_destination(root: BorrowedFd<'_>, dest: &Path, typ: &str) -> Result<()> {
    let (dir, name) = parent_in_root(root, dest)
        .map_err(|e| mount_err("resolving mount destination", dest, e))?;
    match rustix::fs::statat(
        &dir,
        name.as_os_str(),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(mount_err("checking mount destination", dest, e.into())),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(()),
        Ok(_) => Err(Error::InvalidConfig(format!(
            "mount destination {}: filesystem {typ:?} must be mounted on ordinary directory",
            dest.display()
        ))),
    }
}

/// Applies `rro`, `rnosuid` and the other recursive options to the mount
/// just made at `dest` and every mount below it.
fn apply_recursive_attrs(root: BorrowedFd<'_>, dest: &Path, opts: &MountOptions) -> Result<()> {
    if opts.recursive.is_empty() {
        return Ok(());
    }
    let top = reopen(root, dest)?;
    let attr = sys::MountAttr {
        attr_set: opts.recursive.set,
        attr_clr: opts.recursive.clear,
        ..Default::default()
    };
    sys::mount_setattr(top.as_fd(), &attr, true).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOSYS) {
            Error::InvalidConfig(format!(
                "mount {}: recursive mount options need mount_setattr(2) (Linux 5.12 or later)",
                dest.display()
            ))
        } else {
            mount_err("setting recursive mount attributes on", dest, e)
        }
    })
}

/// Switches the process root into the prepared rootfs.
pub fn enter_root(root: BorrowedFd<'_>, rootfs: &Path, no_pivot: bool) -> Result<()> {
    rustix::process::fchdir(root).ctx(|| format!("chdir to rootfs {}", rootfs.display()))?;
    if no_pivot {
        sys::mount(Some(&cstr(rootfs)), c"/", None, libc::MS_MOVE, None)
            .ctx(|| "moving rootfs to / (--no-pivot)".into())?;
        rustix::process::chroot(".").ctx(|| "chroot into rootfs".into())?;
    } else {
        // Opened before the switch: after pivot_root(".", ".") the old root
        // is stacked on the new one, and only a directory of the old root
        // names it for certain (as runc does). Making "." a slave while "."
        // is the new root would make every mount of the container a slave,
        // and rshared (bidirectional) mounts would stop propagating out.
        let old_root = rustix::fs::open(
            "/",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| "opening the old root".into())?;
        sys::pivot_root(c".", c".").ctx(|| format!("pivot_root into {}", rootfs.display()))?;
        rustix::process::fchdir(&old_root).ctx(|| "chdir to the old root".into())?;
        drop(old_root);
        // Detach the old root without letting the unmount propagate back
        // to the host.
        sys::mount(None, c".", None, libc::MS_SLAVE | libc::MS_REC, None)
            .ctx(|| "making the old root a slave".into())?;
        sys::umount2(c".", libc::MNT_DETACH).ctx(|| "unmounting the old root".into())?;
    }
    rustix::process::chdir("/").ctx(|| "chdir /".into())?;
    Ok(())
}

/// Without a mount namespace of its own the container only gets a chroot.
pub fn chroot_into(rootfs: &Path) -> Result<()> {
    rustix::process::chroot(rootfs).ctx(|| format!("chroot into {}", rootfs.display()))?;
    rustix::process::chdir("/").ctx(|| "chdir /".into())
}

/// After the switch: root propagation and read-only root. Propagation is set
/// on the new "/" only now, so a shared root cannot leak into the host.
pub fn finalize_root(spec: &Spec) -> Result<()> {
    let propagation = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .filter(|p| !p.is_empty())
        .and_then(mount_opts::propagation_flag);
    if let Some(flag) = propagation {
        sys::mount(None, c"/", None, flag, None).ctx(|| "setting rootfsPropagation on /".into())?;
    }
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    if readonly {
        let root = open_dir(Path::new("/")).ctx(|| "opening /".into())?;
        remount_path_readonly(root.as_fd())?;
    }
    Ok(())
}

fn remount_path_readonly(root: BorrowedFd<'_>) -> Result<()> {
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    if let Ok(st) = rustix::fs::fstatvfs(root) {
        for (st_flag, ms_flag) in [
            (rustix::fs::StatVfsMountFlags::NOSUID, libc::MS_NOSUID),
            (rustix::fs::StatVfsMountFlags::NODEV, libc::MS_NODEV),
            (rustix::fs::StatVfsMountFlags::NOEXEC, libc::MS_NOEXEC),
        ] {
            if st.f_flag.contains(st_flag) {
                flags |= ms_flag;
            }
        }
    }
    sys::mount(None, c"/", None, flags, None).ctx(|| "remounting / read-only".into())
}

/// Binds the terminal's slave side onto /dev/console.
pub fn mount_console(slave_path: &Path) -> Result<()> {
    let root = open_dir(Path::new("/")).ctx(|| "opening /".into())?;
    let console = create_file_in_root(root.as_fd(), Path::new("/dev/console"))
        .ctx(|| "creating /dev/console".into())?;
    sys::mount(
        Some(&cstr(slave_path)),
        &fd_path(console.as_fd()),
        None,
        libc::MS_BIND,
        None,
    )
    .ctx(|| format!("bind mounting {} on /dev/console", slave_path.display()))
}
