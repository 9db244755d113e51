//! Descriptor hygiene: nothing a process inherited leaks into what it
//! starts (CVE-2024-21626 class).

use std::io;

/// Marks every descriptor from `3 + preserve_fds` up close-on-exec: with
/// close_range(2), or one by one over /proc/self/fd where the kernel or a
/// seccomp profile refuses it (as runc does).
pub fn mark_inherited_fds_cloexec(preserve_fds: u32) -> io::Result<()> {
    let first = 3 + preserve_fds;
    // SAFETY: close_range takes plain integers and touches no memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(
        err.raw_os_error(),
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    ) {
        return Err(io::Error::new(
            err.kind(),
            format!("marking descriptors close-on-exec: {err}"),
        ));
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| io::Error::new(e.kind(), format!("listing /proc/self/fd: {e}")))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        set_cloexec(fd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("marking descriptor {fd} close-on-exec: {e}"),
            )
        })?;
    }
    Ok(())
}

/// Sets FD_CLOEXEC on `fd`; a descriptor closed meanwhile (the listing's
/// own) is not an error.
fn set_cloexec(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on an integer descriptor; F_GETFD takes no pointer.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EBADF) {
            Ok(())
        } else {
            Err(e)
        };
    }
    // SAFETY: as above; F_SETFD takes an integer.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn marks_an_inherited_descriptor() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: clearing FD_CLOEXEC on a descriptor this test owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        super::mark_inherited_fds_cloexec(0).unwrap();
        // SAFETY: F_GETFD on a descriptor this test owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
