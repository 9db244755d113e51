//! Device nodes in the container's /dev: the default ones, those of
//! `linux.devices`, and (in a user namespace, where nodes cannot be made)
//! binds of the host's.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::{cstr, mount_err, RootfsSetup};
use crate::error::Context;
use crate::safe_path::{create_file_in_root, fd_path, mkdir_all_in_root, parent_in_root};
use crate::{sys, Error, Result};

/// Default device nodes every container gets (runtime-spec "Default Devices").
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

impl RootfsSetup<'_> {
    pub(super) fn create_default_devices(&self, root: BorrowedFd<'_>) -> Result<()> {
        let dev =
            mkdir_all_in_root(root, Path::new("/dev"), 0o755).ctx(|| "creating /dev".into())?;
        for (path, major, minor) in DEFAULT_DEVICES {
            self.make_device_node(
                root,
                Path::new(path),
                LinuxDeviceType::C,
                major,
                minor,
                0o666,
                0,
                0,
            )?;
        }
        let mut links: Vec<(&str, &str)> = vec![
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
        ];
        if Path::new("/proc/kcore").exists() {
            links.push(("/proc/kcore", "core"));
        }
        for (target, name) in links {
            match rustix::fs::symlinkat(target, &dev, name) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e).ctx(|| format!("creating /dev/{name}")),
            }
        }
        match rustix::fs::unlinkat(&dev, "ptmx", rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e).ctx(|| "removing /dev/ptmx".into()),
        }
        rustix::fs::symlinkat("pts/ptmx", &dev, "ptmx").ctx(|| "creating /dev/ptmx".into())?;
        Ok(())
    }

    pub(super) fn create_device(&self, root: BorrowedFd<'_>, dev: &LinuxDevice) -> Result<()> {
        let mode = dev.file_mode().unwrap_or(0o666) & 0o7777;
        self.make_device_node(
            root,
            dev.path(),
            dev.typ(),
            dev.major() as u64,
            dev.minor() as u64,
            mode,
            dev.uid().unwrap_or(0),
            dev.gid().unwrap_or(0),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn make_device_node(
        &self,
        root: BorrowedFd<'_>,
        path: &Path,
        typ: LinuxDeviceType,
        major: u64,
        minor: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let (dir, name) = parent_in_root(root, path)
            .ctx(|| format!("creating parent of device {}", path.display()))?;
        let kind = match typ {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::InvalidConfig(format!(
                    "device {}: type \"a\" is only valid in device cgroup rules",
                    path.display()
                )))
            }
        };
        // Whatever the image left at this path is replaced (a directory is an error).
        match rustix::fs::unlinkat(&dir, name.as_os_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e).ctx(|| format!("replacing {}", path.display())),
        }
        let cname = CString::new(name.as_bytes()).unwrap_or_default();
        if self.userns && kind != libc::S_IFIFO {
            // Device nodes cannot be created in a user namespace: bind the host's.
            let file =
                create_file_in_root(root, path).ctx(|| format!("creating {}", path.display()))?;
            let host = device_host_path(kind, major, minor, path)?;
            sys::mount(
                Some(&cstr(&host)),
                &fd_path(file.as_fd()),
                None,
                libc::MS_BIND,
                None,
            )
            .map_err(|e| {
                mount_err(
                    &format!("bind mounting device {} on", host.display()),
                    path,
                    e,
                )
            })?;
            return Ok(());
        }
        sys::mknodat(dir.as_fd(), &cname, kind | mode, sys::makedev(major, minor))
            .ctx(|| format!("creating device node {}", path.display()))?;
        rustix::fs::chownat(
            &dir,
            name.as_os_str(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .ctx(|| format!("chown of device {}", path.display()))?;
        Ok(())
    }
}

/// Where the host has a device, for bind-mounting it in a user namespace:
/// /dev/{char,block}/M:m, the same path on the host, or any node with that
/// number under /dev (two levels deep).
fn device_host_path(kind: u32, major: u64, minor: u64, container_path: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wanted = sys::makedev(major, minor);
    // Not following symlinks: /dev/stdin and friends point anywhere.
    let matches = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            let is_kind = if kind == libc::S_IFBLK {
                m.file_type().is_block_device()
            } else {
                m.file_type().is_char_device()
            };
            is_kind && m.rdev() == wanted
        })
    };
    let sys_kind = if kind == libc::S_IFBLK {
        "block"
    } else {
        "char"
    };
    let mut candidates = vec![
        PathBuf::from(format!("/dev/{sys_kind}/{major}:{minor}")),
        container_path.to_path_buf(),
    ];
    if let Ok(entries) = std::fs::read_dir("/dev") {
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if let Ok(sub) = std::fs::read_dir(&path) {
                    candidates.extend(sub.flatten().map(|s| s.path()));
                }
            } else {
                candidates.push(path);
            }
        }
    }
    candidates.into_iter().find(|p| matches(p)).ok_or_else(|| {
        Error::InvalidConfig(format!(
            "device {}: a user namespace cannot create device nodes and the host has no {} device {major}:{minor} to bind",
            container_path.display(),
            sys_kind
        ))
    })
}
