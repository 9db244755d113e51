//! The container's root filesystem as the client prepared it (containerd
//! passes mounts; berthd mounts the rootfs itself and passes none).

use std::path::Path;

use containerd_shim_protos::api;
use rustix::mount::{MountFlags, UnmountFlags};

use crate::error::{Context, Result, ShimError};

/// Mounts what containerd prepared for the rootfs (an overlay, a bind) on
/// `<bundle>/rootfs`; false if there was nothing to mount.
pub(super) fn mount_rootfs(bundle: &Path, mounts: &[api::Mount]) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).context(|| format!("creating {}", target.display()))?;
    for m in mounts {
        let mut flags = MountFlags::empty();
        let mut data = Vec::new();
        for o in &m.options {
            match o.as_str() {
                "ro" => flags |= MountFlags::RDONLY,
                "bind" => flags |= MountFlags::BIND,
                "rbind" => flags |= MountFlags::BIND | MountFlags::REC,
                "rw" => {}
                other => data.push(other.to_owned()),
            }
        }
        let data = std::ffi::CString::new(data.join(","))
            .map_err(|e| ShimError::InvalidArgument(format!("mount options: {e}")))?;
        rustix::mount::mount(
            m.source.as_str(),
            &target,
            m.type_.as_str(),
            flags,
            Some(data.as_c_str()),
        )
        .context(|| format!("mounting {} {} on {}", m.type_, m.source, target.display()))?;
    }
    Ok(true)
}

/// Undoes [`mount_rootfs`] (and whatever else is stacked there).
pub(super) fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    for _ in 0..16 {
        if rustix::mount::unmount(&target, UnmountFlags::DETACH).is_err() {
            break;
        }
    }
}
