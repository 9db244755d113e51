//! Id-mapped mounts made from the host side: a daemon shows a directory
//! through a user-namespaced pod's mappings (mount_setattr
//! MOUNT_ATTR_IDMAP), so the pod's root owns what the host's root owns on
//! disk, with no chown of image layers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// MOUNT_ATTR_IDMAP of mount_setattr(2).
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached clone of the mount at `source` (not its submounts), shown
/// through `userns`'s mappings. The filesystem must allow id-mapping
/// (ext4, xfs, btrfs, tmpfs; not overlayfs itself, whose layers can be
/// id-mapped instead): EINVAL otherwise.
pub fn idmapped_clone(source: &Path, userns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the path is an empty NUL-terminated string and `attr` a live
    // struct whose size is passed along; the fds are open for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches a detached tree on the directory `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}
