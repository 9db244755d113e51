//! Id-mapped bind mounts (`uidMappings`/`gidMappings` on a mount, or the
//! `idmap`/`ridmap` options): the source tree is cloned with open_tree(2),
//! given a user namespace's mapping with mount_setattr(MOUNT_ATTR_IDMAP) and
//! attached with move_mount(2). Files keep their owners on disk; the mount
//! shows them through the mapping (no chown of volumes or image layers).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::error::Context;
use crate::mount_opts::attr;
use crate::{sys, Error, Result};

/// The mappings a mount asks for, if it is id-mapped: its own, else (with
/// `idmap`/`ridmap` alone) the container's user namespace mappings.
pub struct IdMapRequest {
    pub uid: Vec<LinuxIdMapping>,
    pub gid: Vec<LinuxIdMapping>,
    /// `ridmap`, or an `rbind`: the mapping covers every submount.
    pub recursive: bool,
}

impl IdMapRequest {
    pub fn of(
        m: &Mount,
        container_uid: Option<&Vec<LinuxIdMapping>>,
        container_gid: Option<&Vec<LinuxIdMapping>>,
    ) -> Result<Option<IdMapRequest>> {
        let options = m.options().as_deref().unwrap_or_default();
        let idmap_option = options.iter().any(|o| o == "idmap" || o == "ridmap");
        let own = m.uid_mappings().is_some() || m.gid_mappings().is_some();
        if !own && !idmap_option {
            return Ok(None);
        }
        let dest = m.destination().display();
        let (uid, gid) = if own {
            (
                m.uid_mappings().clone().unwrap_or_default(),
                m.gid_mappings().clone().unwrap_or_default(),
            )
        } else {
            (
                container_uid.cloned().unwrap_or_default(),
                container_gid.cloned().unwrap_or_default(),
            )
        };
        if uid.is_empty() || gid.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "mount {dest}: an id-mapped mount needs both uidMappings and gidMappings (its own or the container's)"
            )));
        }
        let recursive = options.iter().any(|o| o == "ridmap" || o == "rbind");
        Ok(Some(IdMapRequest {
            uid,
            gid,
            recursive,
        }))
    }
}

fn map_lines(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// A user namespace holding `uid`/`gid` maps, pinned by an fd: a helper
/// process unshares it and waits while its maps are written from here.
fn user_namespace(uid: &[LinuxIdMapping], gid: &[LinuxIdMapping]) -> Result<OwnedFd> {
    let (hold_r, hold_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .ctx(|| "creating a pipe for the id-map helper".into())?;
    let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .ctx(|| "creating a pipe for the id-map helper".into())?;
    let Some(pid) = sys::fork().ctx(|| "forking the id-map helper".into())? else {
        drop(hold_w);
        drop(ready_r);
        let code = match sys::unshare(libc::CLONE_NEWUSER) {
            Ok(()) => {
                let _ = rustix::io::write(&ready_w, &[1]);
                let mut b = [0u8; 1];
                let _ = rustix::io::read(&hold_r, &mut b);
                0
            }
            Err(_) => 1,
        };
        sys::exit_now(code);
    };
    drop(hold_r);
    drop(ready_w);
    let result = (|| {
        let mut b = [0u8; 1];
        match rustix::io::read(&ready_r, &mut b) {
            Ok(1) => {}
            _ => {
                return Err(Error::Init(
                    "the id-map helper could not create a user namespace".into(),
                ))
            }
        }
        std::fs::write(format!("/proc/{pid}/uid_map"), map_lines(uid))
            .ctx(|| "writing the id-mapped mount's uid_map".into())?;
        std::fs::write(format!("/proc/{pid}/gid_map"), map_lines(gid))
            .ctx(|| "writing the id-mapped mount's gid_map".into())?;
        let ns = rustix::fs::open(
            format!("/proc/{pid}/ns/user"),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ctx(|| "opening the id-map user namespace".into())?;
        Ok(ns)
    })();
    drop(hold_w);
    let _ = rustix::process::waitpid(
        rustix::process::Pid::from_raw(pid),
        rustix::process::WaitOptions::empty(),
    );
    result
}

/// The id-mapped trees of a config's mounts, by mount index: cloned and
/// mapped here, in the caller's (host) user namespace where mapping is
/// allowed, then attached by the init inside the container's namespaces.
///
/// In a user namespace, the init binds as the namespace's root, which may
/// not search the directories leading to a source (a CRI daemon's private
/// bundle): private bind mounts are cloned here too, unmapped, as runc
/// opens mount sources before it joins the namespace. Binds with shared
/// or slave propagation keep their path (a detached clone is private).
pub fn prepare_trees(spec: &Spec, bundle: &Path) -> Result<Vec<(usize, OwnedFd)>> {
    let linux = spec.linux().as_ref();
    let in_userns = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
        });
    let mut trees = Vec::new();
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let dest = m.destination();
        let options = m.options().as_deref().unwrap_or_default();
        let is_bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let Some(request) = IdMapRequest::of(
            m,
            linux.and_then(|l| l.uid_mappings().as_ref()),
            linux.and_then(|l| l.gid_mappings().as_ref()),
        )?
        else {
            let private = !options.iter().any(|o| {
                matches!(
                    o.as_str(),
                    "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable"
                )
            });
            if in_userns && is_bind && private {
                if let Some(source) = m.source() {
                    let source = if source.is_absolute() {
                        source.clone()
                    } else {
                        bundle.join(source)
                    };
                    let recursive = options.iter().any(|o| o == "rbind");
                    trees.push((index, cloned_tree(&source, dest, recursive)?));
                }
            }
            continue;
        };
        if !is_bind {
            return Err(Error::InvalidConfig(format!(
                "mount {}: only bind mounts can be id-mapped",
                dest.display()
            )));
        }
        let source = m.source().as_ref().ok_or_else(|| {
            Error::InvalidConfig(format!("bind mount {} has no source", dest.display()))
        })?;
        let source = if source.is_absolute() {
            source.clone()
        } else {
            bundle.join(source)
        };
        trees.push((index, mapped_tree(&source, dest, &request)?));
    }
    Ok(trees)
}

/// A detached clone of `source` (with its submounts if `recursive`).
fn cloned_tree(source: &Path, dest: &Path, recursive: bool) -> Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    rustix::mount::open_tree(rustix::fs::CWD, source, flags).ctx(|| {
        format!(
            "bind mount {}: open_tree of {}",
            dest.display(),
            source.display()
        )
    })
}

/// A detached clone of `source` shown through the request's mapping.
fn mapped_tree(source: &Path, dest: &Path, request: &IdMapRequest) -> Result<OwnedFd> {
    let userns = user_namespace(&request.uid, &request.gid)?;
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if request.recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags).ctx(|| {
        format!(
            "id-mapped mount {}: open_tree of {}",
            dest.display(),
            source.display()
        )
    })?;
    let attr = sys::MountAttr {
        attr_set: attr::IDMAP,
        userns_fd: std::os::fd::AsRawFd::as_raw_fd(&userns) as u64,
        ..Default::default()
    };
    sys::mount_setattr(tree.as_fd(), &attr, request.recursive).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            Error::InvalidConfig(format!(
                "mount {}: the filesystem of {} cannot be id-mapped by this kernel",
                dest.display(),
                source.display()
            ))
        } else {
            Error::Sys {
                context: format!("id-mapping the mount of {}", source.display()),
                source: e,
            }
        }
    })?;
    Ok(tree)
}

/// Attaches a prepared tree on the mount point `target`.
pub fn attach(tree: BorrowedFd<'_>, target: BorrowedFd<'_>, dest: &Path) -> Result<()> {
    rustix::mount::move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .ctx(|| format!("attaching the id-mapped mount on {}", dest.display()))
}

/// Whether this kernel can id-map bind mounts (Linux 5.12: mount_setattr).
pub fn supported() -> bool {
    berth_common::kernel::has_mount_setattr()
}
