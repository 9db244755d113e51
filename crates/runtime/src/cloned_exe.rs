//! Protection against overwriting the runtime binary from inside a container
//! (CVE-2019-5736): before any process enters a container, berth re-executes
//! itself from a copy no one can write to, so /proc/<pid>/exe of every
//! berth process a container could reach points at that copy.
//!
//! The copy is, as in runc 1.2, preferably the binary seen through a
//! private, detached, read-only overlayfs whose lower layer is the
//! binary's directory: nothing is copied (the page cache is shared, which
//! matters with a shim per pod), and the file cannot be written through it
//! nor the mount made writable, since no one can reach the mount. Where
//! overlayfs cannot be made (no privilege, no fsopen), it is a sealed
//! memfd copy of the binary.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

use crate::error::Context;
use crate::{sys, Result};

const REQUIRED_SEALS: SealFlags = SealFlags::SEAL
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE);

/// statfs f_type of overlayfs.
const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// The empty directory overlayfs needs as a second lower layer (a single
/// lower layer and no upper one is refused).
const EMPTY_LOWER: &str = "/run/berth/exeseal-empty";

/// Whether the running executable cannot be written: a sealed memfd, or a
/// file on a read-only overlayfs (the detached mount `ensure_sealed` makes).
pub fn is_sealed() -> bool {
    let Ok(exe) = File::open("/proc/self/exe") else {
        return false;
    };
    if rustix::fs::fcntl_get_seals(&exe).is_ok_and(|s| s.contains(REQUIRED_SEALS)) {
        return true;
    }
    rustix::fs::fstatfs(&exe).is_ok_and(|st| {
        st.f_type as u64 == OVERLAYFS_SUPER_MAGIC
            && rustix::fs::fstatvfs(&exe)
                .is_ok_and(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
    })
}

/// Whether `run` must start this container's init from the sealed copy.
/// The copy protects the binary from processes in the container, which
/// could open /proc/<pid>/exe of a berth process while it sits in the
/// container's PID namespace. `run`'s init is alone in a PID namespace
/// its clone makes, until it executes the program: no container process
/// can exist before then, unless a createContainer or startContainer hook
/// runs in the container meanwhile (its program may come from the image),
/// or the namespace is joined or absent (other processes share it), or a
/// two-stage start puts an intermediate berth process in a joined user
/// namespace. `exec` waits for the init to have executed its program (see
/// `State::unsealed_exe`). `create` always uses the copy: its init waits
/// for `start`, and may be exec'd into meanwhile.
pub fn run_needs_sealed_copy(
    spec: &oci_spec::runtime::Spec,
    plan: &crate::namespaces::NsPlan,
) -> bool {
    let in_container_hooks = spec.hooks().as_ref().is_some_and(|h| {
        h.create_container().as_ref().is_some_and(|v| !v.is_empty())
            || h.start_container().as_ref().is_some_and(|v| !v.is_empty())
    });
    !plan.new_pid || plan.pid_join.is_some() || plan.two_stage || in_container_hooks
}

/// The device and inode of the running binary, if it is not a sealed copy.
pub fn unsealed_identity() -> Option<(u64, u64)> {
    if is_sealed() {
        return None;
    }
    let st = rustix::fs::stat("/proc/self/exe").ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Re-executes the current program from a copy that cannot be written,
/// unless it already runs from one. Returns only if it already does.
pub fn ensure_sealed() -> Result<()> {
    if is_sealed() {
        return Ok(());
    }
    // BERTH_EXE_SEAL=memfd forces the copy (tests of the fallback).
    let force_memfd = std::env::var_os("BERTH_EXE_SEAL").is_some_and(|v| v == "memfd");
    let view = if force_memfd {
        Err(std::io::Error::other("BERTH_EXE_SEAL=memfd"))
    } else {
        overlay_view()
    };
    let exe = match view {
        Ok(fd) => fd,
        Err(e) => {
            log::debug!("overlayfs view of the binary unavailable ({e}); copying it to a memfd");
            memfd_copy()?
        }
    };
    let argv: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_vec()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).unwrap_or_default()
        })
        .collect();
    let err = sys::fexecve(exe.as_raw_fd(), &argv, &envp);
    Err(crate::Error::Sys {
        context: "re-executing berth from its sealed copy".into(),
        source: err,
    })
}

/// The binary through a detached read-only overlayfs of its directory.
fn overlay_view() -> std::io::Result<OwnedFd> {
    let path = std::fs::read_link("/proc/self/exe")?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("the binary's path has no directory"));
    };
    std::fs::create_dir_all(EMPTY_LOWER)?;
    let ctx = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    // The binary's directory on top, so nothing in the empty layer can
    // mask it; ':' and '\' in paths are escaped as overlayfs reads them.
    let lower = format!(
        "{}:{}",
        escape_lower(dir),
        escape_lower(Path::new(EMPTY_LOWER))
    );
    rustix::mount::fsconfig_set_string(&ctx, "lowerdir", lower.as_str())?;
    // Opportunistic: xino only adds kernel log noise here.
    let _ = rustix::mount::fsconfig_set_string(&ctx, "xino", "off");
    rustix::mount::fsconfig_create(&ctx)?;
    let mnt = rustix::mount::fsmount(
        &ctx,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )?;
    let fd = rustix::fs::openat(
        mnt.as_fd(),
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(fd)
}

fn escape_lower(p: &Path) -> String {
    p.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
}

/// A sealed memfd copy of the binary.
fn memfd_copy() -> Result<OwnedFd> {
    let exe = File::open("/proc/self/exe").ctx(|| "opening /proc/self/exe".into())?;
    let memfd = rustix::fs::memfd_create("berth", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .ctx(|| "creating the sealed copy of berth (memfd_create)".into())?;
    let len = exe.metadata().ctx(|| "stat /proc/self/exe".into())?.len();
    let mut copied = 0u64;
    while copied < len {
        let n = rustix::fs::sendfile(&memfd, &exe, None, (len - copied) as usize)
            .ctx(|| "copying berth into its sealed copy".into())?;
        if n == 0 {
            break;
        }
        copied += n as u64;
    }
    rustix::fs::fcntl_add_seals(&memfd, REQUIRED_SEALS)
        .ctx(|| "sealing the copy of berth".into())?;
    Ok(memfd)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{
        HookBuilder, HooksBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Spec,
    };

    use super::*;
    use crate::namespaces::NsPlan;

    fn needs_copy(spec: &Spec) -> bool {
        run_needs_sealed_copy(spec, &NsPlan::for_container(spec).unwrap())
    }

    fn with_namespaces(spec: &mut Spec, edit: impl FnOnce(&mut Vec<LinuxNamespace>)) {
        let mut linux = spec.linux().clone().unwrap();
        let mut namespaces = linux.namespaces().clone().unwrap();
        edit(&mut namespaces);
        linux.set_namespaces(Some(namespaces));
        spec.set_linux(Some(linux));
    }

    /// Only an init alone in a PID namespace of its own, with no hook run in
    /// the container before its program, may start without the copy.
    #[test]
    fn run_uses_the_copy_unless_the_init_is_alone() {
        let base = Spec::default();
        assert!(!needs_copy(&base), "a new PID namespace, no hooks");

        let mut shared = base.clone();
        with_namespaces(&mut shared, |ns| {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Pid);
            ns.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path("/proc/self/ns/pid")
                    .build()
                    .unwrap(),
            );
        });
        assert!(needs_copy(&shared), "a joined PID namespace");

        let mut host_pid = base.clone();
        with_namespaces(&mut host_pid, |ns| {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Pid)
        });
        assert!(needs_copy(&host_pid), "the host's PID namespace");

        let hook = HookBuilder::default().path("/bin/true").build().unwrap();
        for (name, hooks) in [
            (
                "startContainer",
                HooksBuilder::default().start_container(vec![hook.clone()]),
            ),
            (
                "createContainer",
                HooksBuilder::default().create_container(vec![hook.clone()]),
            ),
        ] {
            let mut spec = base.clone();
            spec.set_hooks(Some(hooks.build().unwrap()));
            assert!(needs_copy(&spec), "a {name} hook");
        }
        let mut poststart = base.clone();
        poststart.set_hooks(Some(
            HooksBuilder::default()
                .poststart(vec![hook])
                .build()
                .unwrap(),
        ));
        assert!(
            !needs_copy(&poststart),
            "poststart runs once the program has started"
        );
    }
}
