//! cgroupfs inside the container: the hierarchies themselves with a cgroup
//! namespace, else binds of the container's own cgroups in a tmpfs.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::{cstr, mount_err, mount_point, rbind, remount, reopen, RootfsSetup};
use crate::error::Context;
use crate::mount_opts::{self, MountOptions};
use crate::safe_path::fd_path;
use crate::{sys, Result};

impl RootfsSetup<'_> {
    /// cgroupfs inside the container: the real hierarchy when the container
    /// has a cgroup namespace, else a bind mount of its own cgroup.
    pub(super) fn mount_cgroup(
        &self,
        root: BorrowedFd<'_>,
        dest: &Path,
        opts: &MountOptions,
    ) -> Result<()> {
        let flags =
            opts.flags & !(libc::MS_RDONLY | libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        let paths = self.cgroups.paths();
        let unified_only = paths.len() == 1 && paths[0].0.is_empty();
        let target = mount_point(root, dest)?;
        if unified_only {
            return self.mount_one_cgroup(root, dest, "", &paths[0].1, opts.flags & !libc::MS_BIND);
        }
        sys::mount(
            Some(c"tmpfs"),
            &fd_path(target.as_fd()),
            Some(c"tmpfs"),
            flags,
            Some(c"mode=755"),
        )
        .map_err(|e| mount_err("mounting tmpfs for cgroups on", dest, e))?;
        if !self.cgroupns && !self.userns {
            return self.bind_cgroups_in_tmpfs(root, dest, opts.flags);
        }
        for (key, host_path) in paths {
            let name = dir_name(key);
            let sub = dest.join(name);
            self.mount_one_cgroup(root, &sub, key, host_path, opts.flags & !libc::MS_BIND)?;
            if key.contains(',') {
                link_comounted(&reopen(root, dest)?, name, key, dest)?;
            }
        }
        if opts.flags & libc::MS_RDONLY != 0 {
            let top = reopen(root, dest)?;
            sys::mount(
                None,
                &fd_path(top.as_fd()),
                None,
                libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                Some(c"mode=755"),
            )
            .map_err(|e| mount_err("remounting read-only", dest, e))?;
        }
        Ok(())
    }

    /// Binds the container's cgroup of every hierarchy in the tmpfs just
    /// mounted on `dest`, then sets `flags` (read-only, nosuid...) on the
    /// tmpfs and every bind at once. The tmpfs is new and berth's: its
    /// directories are made and opened beneath it without a walk from the
    /// root (nothing in it can be a symlink).
    fn bind_cgroups_in_tmpfs(
        &self,
        root: BorrowedFd<'_>,
        dest: &Path,
        flags: libc::c_ulong,
    ) -> Result<()> {
        let tmpfs = reopen(root, dest)?;
        for (key, host_path) in self.cgroups.paths() {
            let name = dir_name(key);
            let sub = dest.join(name);
            match rustix::fs::mkdirat(&tmpfs, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(mount_err("creating mount point", &sub, e.into())),
            }
            let target = rustix::fs::openat(
                &tmpfs,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| mount_err("opening mount point", &sub, e.into()))?;
            rbind(&cstr(host_path), &fd_path(target.as_fd())).map_err(|e| {
                mount_err(
                    &format!("bind mounting {} on", host_path.display()),
                    &sub,
                    e,
                )
            })?;
            if key.contains(',') {
                link_comounted(&tmpfs, name, key, dest)?;
            }
        }
        let attr = mount_attr_of(flags);
        if attr.attr_set != 0 || attr.attr_clr != 0 {
            // The fd opened before the binds is the tmpfs's root: the
            // recursive change reaches them below it.
            sys::mount_setattr(tmpfs.as_fd(), &attr, true)
                .map_err(|e| mount_err("setting mount flags on", dest, e))?;
        }
        Ok(())
    }

    fn mount_one_cgroup(
        &self,
        root: BorrowedFd<'_>,
        dest: &Path,
        key: &str,
        host_path: &Path,
        flags: libc::c_ulong,
    ) -> Result<()> {
        let target = mount_point(root, dest)?;
        if self.cgroupns {
            let (fstype, data) = if key.is_empty() {
                (c"cgroup2", None)
            } else {
                (c"cgroup", Some(CString::new(key).unwrap_or_default()))
            };
            match sys::mount(
                Some(fstype),
                &fd_path(target.as_fd()),
                Some(fstype),
                flags & !libc::MS_REC,
                data.as_deref(),
            ) {
                Ok(()) => return Ok(()),
                // cgroup v1 cannot be mounted from a user namespace: bind instead.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && self.userns => {}
                Err(e) => return Err(mount_err("mounting cgroup on", dest, e)),
            }
        }
        rbind(&cstr(host_path), &fd_path(target.as_fd())).map_err(|e| {
            mount_err(
                &format!("bind mounting {} on", host_path.display()),
                dest,
                e,
            )
        })?;
        let extra = flags & !(libc::MS_REC | libc::MS_REMOUNT);
        if extra != 0 {
            remount(root, dest, extra | libc::MS_BIND, self.userns)?;
        }
        Ok(())
    }
}

/// The directory a hierarchy gets under /sys/fs/cgroup: `unified` for v2,
/// else its controllers (or `name=`'s name).
fn dir_name(key: &str) -> &str {
    if key.is_empty() {
        "unified"
    } else {
        key.strip_prefix("name=").unwrap_or(key)
    }
}

/// Links each controller of a co-mounted hierarchy (`cpu,cpuacct`) to the
/// hierarchy's directory `name` in `dir`, as runc does.
fn link_comounted(dir: &OwnedFd, name: &str, key: &str, dest: &Path) -> Result<()> {
    for controller in key.split(',') {
        match rustix::fs::symlinkat(name, dir, controller) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e).ctx(|| format!("linking {controller} in {}", dest.display())),
        }
    }
    Ok(())
}

/// The mount_setattr(2) change that gives a mount the per-mount flags of
/// mount(2) `flags`: read-only, nosuid, nodev, noexec and the access-time
/// mode (left as it is unless `flags` names one).
fn mount_attr_of(flags: libc::c_ulong) -> sys::MountAttr {
    use mount_opts::attr;
    let mut set = 0;
    for (ms, mount_attr) in [
        (libc::MS_RDONLY, attr::RDONLY),
        (libc::MS_NOSUID, attr::NOSUID),
        (libc::MS_NODEV, attr::NODEV),
        (libc::MS_NOEXEC, attr::NOEXEC),
        (libc::MS_NODIRATIME, attr::NODIRATIME),
    ] {
        if flags & ms != 0 {
            set |= mount_attr;
        }
    }
    let atime = if flags & libc::MS_NOATIME != 0 {
        Some(attr::NOATIME)
    } else if flags & libc::MS_STRICTATIME != 0 {
        Some(attr::STRICTATIME)
    } else if flags & libc::MS_RELATIME != 0 {
        Some(attr::RELATIME)
    } else {
        None
    };
    let mut clear = 0;
    if let Some(mode) = atime {
        set |= mode;
        clear |= attr::ATIME_MASK;
    }
    sys::MountAttr {
        attr_set: set,
        attr_clr: clear,
        ..Default::default()
    }
}
