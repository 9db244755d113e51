//! Image volumes (CRI Mount.image, Kubernetes ImageVolume): an image the
//! kubelet pulled, mounted read-only for one container. Each gets a rootfs
//! of its own in the image store (so the image's layers stay while it is
//! mounted, even if the image is removed), mounted read-only, noexec,
//! nosuid and nodev under the container's bundle, and bound into the
//! container at the mount's path, or at its `image_sub_path` inside it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1 as cri;
use rustix::fs::OFlags;

use crate::error::{Error, Result};
use crate::store::{ContainerRecord, ImageVolume};

use super::{blocking, Cri};

impl Cri {
    /// Mounts the container's image volumes; the host directory to bind
    /// for each, by index in `config.mounts`. What was mounted is in
    /// `record.image_volumes` as it goes, so a failure is cleaned up by
    /// `cleanup_container_files`.
    /// `userns`: a user-namespaced pod's user namespace file, whose
    /// mappings the volumes' layers are shown through.
    pub(super) async fn mount_image_volumes(
        &self,
        record: &mut ContainerRecord,
        userns: Option<&Path>,
    ) -> Result<HashMap<usize, PathBuf>> {
        let wanted: Vec<(usize, cri::Mount)> = record
            .config
            .mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| m.image.is_some())
            .map(|(i, m)| (i, m.clone()))
            .collect();
        let mut sources = HashMap::new();
        for (index, m) in wanted {
            let images = Arc::clone(&self.images);
            let userns = userns.map(Path::to_path_buf);
            let key = format!("{}-image-volume-{index}", record.id);
            let target = record.bundle.join("image-volumes").join(index.to_string());
            let name = m
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default();
            let dest = m.container_path.clone();
            if name.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "image volume {dest}: the image is empty"
                )));
            }
            // Image volumes are read-only by definition (KEP-4639); a mount
            // that asks for write access would not get it, so it is refused.
            if !m.readonly {
                return Err(Error::InvalidArgument(format!(
                    "image volume {dest}: image volumes are read-only, and the mount asks for read-write (readonly is false)"
                )));
            }
            if !m.host_path.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "mount {dest}: host_path and image are mutually exclusive"
                )));
            }
            let lookup = name.clone();
            let image = blocking({
                let images = Arc::clone(&images);
                move || Ok(images.status(&lookup)?)
            })
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "image volume {dest}: image {name:?} not found: pull it first"
                ))
            })?;
            record.image_volumes.push(ImageVolume {
                mount: index,
                rootfs_key: key.clone(),
                image_ref: image
                    .repo_digests
                    .first()
                    .cloned()
                    .unwrap_or_else(|| image.id.clone()),
            });
            let sub_path = m.image_sub_path.clone();
            let source = blocking(move || {
                std::fs::create_dir_all(&target)
                    .map_err(|e| Error::internal(target.display(), e))?;
                let rootfs = images.prepare_rootfs(&image.id, &key)?;
                match &userns {
                    Some(userns) => {
                        let ns = crate::sandbox::open_user_namespace(userns)?;
                        let scratch = target.with_extension("idmapped-layers");
                        berth_image::mount_overlay_volume_idmapped(
                            &rootfs,
                            &target,
                            std::os::fd::AsFd::as_fd(&ns),
                            &scratch,
                        )?
                    }
                    None => berth_image::mount_overlay_volume(&rootfs, &target)?,
                }
                resolve_sub_path(&target, &sub_path, &dest, &name)
            })
            .await?;
            sources.insert(index, source);
        }
        Ok(sources)
    }
}

/// `sub_path` inside the mounted image, resolved within it (a symlink in
/// the image cannot lead out of it); the image's root when empty.
fn resolve_sub_path(root: &Path, sub_path: &str, dest: &str, image: &str) -> Result<PathBuf> {
    if sub_path.is_empty() {
        return Ok(root.to_owned());
    }
    let relative = Path::new(sub_path.trim_start_matches('/'));
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::internal(root.display(), e))?;
    let fd = berth_common::safe_path::open_in_root(
        std::os::fd::AsFd::as_fd(&dir),
        relative,
        OFlags::PATH | OFlags::CLOEXEC,
    )
    .map_err(|e| {
        Error::InvalidArgument(format!(
            "image volume {dest}: sub path {sub_path:?} in image {image:?}: {e}"
        ))
    })?;
    let resolved = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(|e| Error::internal("resolving an image volume's sub path", e))?;
    // What the kernel resolved, not the string, decides.
    if !resolved.starts_with(root) {
        return Err(Error::InvalidArgument(format!(
            "image volume {dest}: sub path {sub_path:?} leads out of image {image:?}"
        )));
    }
    Ok(resolved)
}

/// The mounts ContainerStatus reports: image volumes name the image by
/// digest, as resolved when the container was created.
pub(super) fn reported_mounts(c: &ContainerRecord) -> Vec<cri::Mount> {
    let mut mounts = c.config.mounts.clone();
    for v in &c.image_volumes {
        if let Some(image) = mounts.get_mut(v.mount).and_then(|m| m.image.as_mut()) {
            image.image = v.image_ref.clone();
        }
    }
    mounts
}

/// Frees the image volumes' rootfs (the bundle's removal unmounted them).
pub(super) fn release_image_volumes(
    images: &berth_image::ImageStore,
    c: &ContainerRecord,
) -> Result<()> {
    for v in &c.image_volumes {
        images.remove_rootfs(&v.rootfs_key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Symlinks in an image resolve inside it: an absolute one or one full
    /// of `..` cannot make the bind source a host directory.
    #[test]
    fn sub_paths_stay_inside_the_image() {
        let root = std::env::temp_dir().join(format!("berth-subpath-{}", std::process::id()));
        std::fs::create_dir_all(root.join("data/inner")).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("data/up")).unwrap();
        let resolve = |p: &str| resolve_sub_path(&root, p, "/v", "img");
        assert_eq!(resolve("").unwrap(), root);
        assert_eq!(resolve("/data/inner").unwrap(), root.join("data/inner"));
        // Both lead to the image's own root, not the host's.
        assert_eq!(resolve("abs").unwrap(), root);
        assert_eq!(resolve("data/up").unwrap(), root);
        // /etc exists on the host, not in this "image".
        assert!(matches!(resolve("abs/etc"), Err(Error::InvalidArgument(_))));
        assert!(matches!(resolve("../etc"), Err(Error::InvalidArgument(_))));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
