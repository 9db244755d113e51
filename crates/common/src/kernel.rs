//! What this kernel can do, probed without side effects.

/// `struct mount_attr` of mount_setattr(2) (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Whether mount_setattr(2) exists (Linux 5.12): the recursive mount
/// options (`rro`, `rnosuid`, …) and idmapped mounts need it.
pub fn has_mount_setattr() -> bool {
    let attr = MountAttr::default();
    // SAFETY: every argument is a plain integer or points to `attr`, which
    // lives across the call; fd -1 makes the call fail before touching any
    // mount, so only ENOSYS versus EBADF is learnt.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    !(ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_without_failing() {
        // Linux 5.12+ everywhere berth is tested.
        assert!(super::has_mount_setattr());
    }
}
