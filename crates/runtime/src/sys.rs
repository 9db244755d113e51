//! Thin wrappers over the system calls that rustix does not cover (or covers
//! with per-thread semantics we do not want). Every `unsafe` block of the
//! crate lives here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// A system call's result: errno when it returned a negative value.
fn check<T: Copy + Default + PartialOrd>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Forks with `flags` (namespace flags allowed) and SIGCHLD as the exit signal.
/// Returns `Some(pid)` in the parent and `None` in the child.
///
/// The caller must be single-threaded: the child continues on a copy of the
/// caller's memory without running glibc's fork handlers.
pub fn clone_fork(flags: libc::c_int) -> io::Result<Option<i32>> {
    let clone_flags = (flags as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: raw clone with a null stack behaves like fork: the child gets a
    // copy-on-write copy of the address space and resumes here with return 0.
    // No pointers are passed; the tid/tls arguments are unused for these flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            clone_flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    let pid = check(ret)? as i32;
    Ok(if pid == 0 { None } else { Some(pid) })
}

/// clone3(2) with `flags`, SIGCHLD as exit signal and, with `cgroup`, the
/// child born directly in that cgroup v2 directory (CLONE_INTO_CGROUP).
/// Fork semantics as for [`clone_fork`]. ENOSYS/E2BIG on kernels before 5.7.
pub fn clone3_fork(flags: libc::c_int, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Option<i32>> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let mut args = CloneArgs {
        flags: flags as u32 as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: args is a valid clone_args of the size passed; with no stack
    // the child continues on a copy of our stack, like fork.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let pid = check(ret)? as i32;
    Ok(if pid == 0 { None } else { Some(pid) })
}

/// Plain fork (see [`clone_fork`] for the single-thread requirement).
pub fn fork() -> io::Result<Option<i32>> {
    clone_fork(0)
}

pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns only reads the fd number and flag.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes a plain flag word.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// mount(2) with optional source, fstype and data.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is either null or a valid NUL-terminated string
    // that outlives the call.
    check(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
    .map(drop)
}

pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: target is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both are valid NUL-terminated strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe the bytes of `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub fn setdomainname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe the bytes of `name`.
    check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `struct mount_attr` of mount_setattr(2) (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// mount_setattr(2) on the mount `fd` refers to (AT_EMPTY_PATH), and on every
/// mount below it with `recursive` (AT_RECURSIVE).
pub fn mount_setattr(fd: BorrowedFd<'_>, attr: &MountAttr, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: the path is an empty NUL-terminated string, `attr` points to a
    // live struct whose size is passed along.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// getcwd(2) as the kernel reports it: a directory unreachable from the
/// current root comes back starting with "(unreachable)", not "/".
pub fn getcwd_raw() -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for its whole length.
    let n = check(unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) })?;
    buf.truncate((n as usize).saturating_sub(1));
    Ok(buf)
}

fn to_ptr_array(items: &[CString]) -> Vec<*const libc::c_char> {
    items
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// execve(2); returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let argv_ptrs = to_ptr_array(argv);
    let envp_ptrs = to_ptr_array(envp);
    // SAFETY: path is NUL-terminated; both arrays are NULL-terminated arrays of
    // pointers into CStrings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Executes the program behind `fd` (execveat with AT_EMPTY_PATH); returns only on failure.
pub fn fexecve(fd: RawFd, argv: &[CString], envp: &[CString]) -> io::Error {
    let argv_ptrs = to_ptr_array(argv);
    let envp_ptrs = to_ptr_array(envp);
    // SAFETY: as for execve; the empty path string is static.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take only integer arguments.
    check(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

pub fn set_keep_caps(keep: bool) -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong)
}

pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

pub fn set_child_subreaper() -> io::Result<()> {
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1)
}

pub fn set_dumpable(dumpable: bool) -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, dumpable as libc::c_ulong)
}

/// setresuid(2) for the whole process (glibc broadcasts to all threads).
pub fn setresuid(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

pub fn setresgid(gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

pub fn setgroups(gids: &[u32]) -> io::Result<()> {
    // SAFETY: pointer and length describe the slice.
    check(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) }).map(drop)
}

/// Blocks every signal for the calling process and returns the previous mask.
pub fn block_all_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigfillset/sigprocmask initialise and
    // read only the sets passed.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        check(libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old))?;
        Ok(old)
    }
}

/// Unblocks every signal and restores default dispositions, so that a
/// process we exec starts with a clean signal state.
pub fn reset_signals() -> io::Result<()> {
    // SAFETY: as above; signal() with SIG_DFL installs no Rust handler.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &none,
            std::ptr::null_mut(),
        ))?;
    }
    Ok(())
}

/// A signalfd receiving every signal (the caller blocks them first).
pub fn signalfd_all() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: sigset_t is plain data; signalfd returns a new fd we take ownership of.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let fd = check(libc::signalfd(-1, &all, libc::SFD_CLOEXEC))?;
        Ok(std::os::fd::FromRawFd::from_raw_fd(fd))
    }
}

/// Reads one signal number from a signalfd.
pub fn read_signalfd(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: signalfd_siginfo is plain data and the buffer is exactly its size.
    unsafe {
        let mut info: libc::signalfd_siginfo = std::mem::zeroed();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let n = libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info.ssi_signo as i32)
    }
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Ends the process immediately, without running destructors or atexit
/// handlers (used in forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// mknod relative to a directory fd.
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: u64) -> io::Result<()> {
    // SAFETY: name is a valid NUL-terminated string; other args are integers.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev as libc::dev_t) })
        .map(drop)
}

pub fn makedev(major: u64, minor: u64) -> u64 {
    libc::makedev(major as u32, minor as u32) as u64
}

/// Calls `f` with a message header whose one buffer is `iov` and whose
/// control data has room for one fd (SCM_RIGHTS).
fn with_fd_msghdr<R>(mut iov: libc::iovec, f: impl FnOnce(&mut libc::msghdr) -> R) -> R {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data, for which all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    f(&mut msg)
}

/// Sends `fd` over the unix socket `sock` with `payload` as the message body
/// (the format runc uses for console sockets: the payload names the fd).
pub fn send_fd(sock: BorrowedFd<'_>, payload: &[u8], fd: RawFd) -> io::Result<()> {
    let iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    with_fd_msghdr(iov, |msg| {
        // SAFETY: the control buffer is sized with CMSG_SPACE for one fd, so
        // the first header and its data lie inside it; every pointer of msg
        // refers to live local buffers.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
            if libc::sendmsg(sock.as_raw_fd(), msg, libc::MSG_NOSIGNAL) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// Receives a message and at most one fd from `sock`.
pub fn recv_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<std::os::fd::OwnedFd>)> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    with_fd_msghdr(iov, |msg| {
        // SAFETY: every pointer of msg refers to live buffers (buf and the
        // control buffer); the kernel fills at most what they can hold, and a
        // received fd is owned by us from here on.
        unsafe {
            let n = libc::recvmsg(sock.as_raw_fd(), msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut fd = None;
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            if !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                fd = Some(std::os::fd::FromRawFd::from_raw_fd(raw));
            }
            Ok((n as usize, fd))
        }
    })
}

/// An ioctl that takes no argument and returns an integer.
pub fn ioctl_noarg(fd: RawFd, request: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the requests used with this wrapper take no argument pointer.
    check(unsafe { libc::ioctl(fd, request) })
}

/// Sets the effective, permitted and inheritable capability sets at once
/// (capset v3); each mask has bit N for capability N.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        Data {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and data match the kernel's v3 layout (two data words).
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) })
        .map(drop)
}

/// Drops capability `cap` from the bounding set.
pub fn drop_bounding_cap(cap: u32) -> io::Result<()> {
    prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)
}

/// Clears the ambient set, then raises each capability in `caps`. The kernel
/// only raises what is both permitted and inheritable: others are skipped
/// and returned, as runc skips them with a warning.
pub fn set_ambient_caps(caps: &[u32]) -> io::Result<Vec<u32>> {
    let mut skipped = Vec::new();
    // SAFETY: PR_CAP_AMBIENT takes integer arguments only.
    unsafe {
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ))?;
        for cap in caps {
            let raised = check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                *cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ));
            match raised {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => skipped.push(*cap),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(skipped)
}

/// Joins a new session keyring named `name` (what runc does unless --no-new-keyring).
pub fn join_session_keyring(name: &CStr) -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_int = 1;
    // SAFETY: name is a valid NUL-terminated string.
    check(unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) })
        .map(drop)
}

pub fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::dup2(old, new) }).map(drop)
}

pub fn personality(persona: libc::c_ulong) -> io::Result<()> {
    // SAFETY: personality takes a plain integer.
    check(unsafe { libc::personality(persona) }).map(drop)
}

/// The kernel's struct sched_attr (with utilization clamps: 56 bytes).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

pub fn sched_setattr(attr: &SchedAttr) -> io::Result<()> {
    let mut attr = *attr;
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: attr is a valid sched_attr of the size it declares.
    check(unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) })
        .map(drop)
}

pub fn ioprio_set(value: i32) -> io::Result<()> {
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, value) }).map(drop)
}

/// set_mempolicy(2) with a node bitmask (64 nodes per word).
pub fn set_mempolicy(mode: i32, nodes: &[u64]) -> io::Result<()> {
    let maxnode = (nodes.len() * 64 + 1) as libc::c_ulong;
    let ptr = if nodes.is_empty() {
        std::ptr::null()
    } else {
        nodes.as_ptr()
    };
    // SAFETY: ptr is null or points to nodes.len() words, matching maxnode.
    check(unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            mode,
            ptr,
            if nodes.is_empty() { 0 } else { maxnode },
        )
    })
    .map(drop)
}
