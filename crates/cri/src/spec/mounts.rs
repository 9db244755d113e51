//! The container's mounts and its rootfs propagation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::Mount;

use super::clean_container_path;
use crate::error::{Error, Result};
use crate::store::PodRecord;

/// A mount of `typ` from `source` on `destination`.
pub(super) fn mount(
    destination: impl Into<PathBuf>,
    typ: &str,
    source: impl Into<PathBuf>,
    options: Vec<String>,
) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into())
        .set_typ(Some(typ.to_owned()))
        .set_source(Some(source.into()))
        .set_options(Some(options))
        .set_uid_mappings(None)
        .set_gid_mappings(None);
    m
}

pub(super) fn options(o: &[&str]) -> Vec<String> {
    o.iter().map(|s| s.to_string()).collect()
}

/// What every container gets: /proc, /dev, /dev/pts, /dev/mqueue, /sys and
/// /sys/fs/cgroup (the last two writable only when privileged).
fn default_mounts(privileged: bool) -> Vec<Mount> {
    let rw = if privileged { "rw" } else { "ro" };
    vec![
        mount(
            "/proc",
            "proc",
            "proc",
            options(&["nosuid", "noexec", "nodev"]),
        ),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            options(&["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            options(&[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ]),
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            options(&["nosuid", "noexec", "nodev"]),
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            options(&["nosuid", "noexec", "nodev", rw]),
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            options(&["nosuid", "noexec", "nodev", "relatime", rw]),
        ),
    ]
}

/// The pod's files: its /dev/shm (the host's when the pod shares the
/// host's IPC namespace), and hostname, hosts and resolv.conf where the
/// pod has them (read-only with a read-only rootfs).
/// Makes a bind mount id-mapped with the container's own mappings.
fn id_map(m: &mut Mount) {
    let mut options = m.options().clone().unwrap_or_default();
    options.push("idmap".into());
    m.set_options(Some(options));
}

fn pod_mounts(pod: &PodRecord, readonly_rootfs: bool) -> Vec<Mount> {
    let file_mode = if readonly_rootfs { "ro" } else { "rw" };
    let shm = match &pod.namespaces.ipc {
        Some(_) => pod.dir.join("shm"),
        None => PathBuf::from("/dev/shm"),
    };
    let mut mounts = vec![mount(
        "/dev/shm",
        "bind",
        shm,
        options(&["rbind", "rprivate", "rw"]),
    )];
    for (dest, file) in [
        ("/etc/hostname", "hostname"),
        ("/etc/hosts", "hosts"),
        ("/etc/resolv.conf", "resolv.conf"),
    ] {
        let source = pod.dir.join(file);
        if source.exists() {
            mounts.push(mount(
                dest,
                "bind",
                source,
                options(&["rbind", "rprivate", file_mode]),
            ));
        }
    }
    if pod.namespaces.user.is_some() {
        // The pod's own /dev/shm and files; the host's /dev/shm is never
        // shared with a user-namespaced pod (it has its own IPC namespace).
        mounts.iter_mut().for_each(id_map);
    }
    mounts
}

fn propagation(dest: &str, p: i32) -> Result<&'static str> {
    match cri::MountPropagation::try_from(p) {
        Ok(cri::MountPropagation::PropagationPrivate) => Ok("rprivate"),
        Ok(cri::MountPropagation::PropagationHostToContainer) => Ok("rslave"),
        Ok(cri::MountPropagation::PropagationBidirectional) => Ok("rshared"),
        Err(_) => Err(Error::InvalidArgument(format!(
            "mount {dest}: propagation {p} is not a CRI MountPropagation"
        ))),
    }
}

/// An image volume (CRI Mount.image): a bind of the image, mounted
/// read-only by berthd at `source` (its sub path already resolved), never
/// writable, executable or setuid, whatever the request says ("All OCI
/// mounts are per feature definition readonly", api.proto).
fn image_volume_mount(m: &cri::Mount, source: &Path) -> Result<Mount> {
    let dest = clean_container_path(&m.container_path, "mount container_path")?;
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(Error::Unimplemented(
            "id-mapped mounts are not supported yet".into(),
        ));
    }
    if m.propagation == cri::MountPropagation::PropagationBidirectional as i32 {
        return Err(Error::InvalidArgument(format!(
            "image volume {dest}: bidirectional propagation would let the container mount over the image"
        )));
    }
    let mut opts = vec![
        "rbind".to_owned(),
        propagation(&dest, m.propagation)?.to_owned(),
    ];
    opts.extend(["ro", "nosuid", "nodev", "noexec"].map(str::to_owned));
    if m.recursive_read_only {
        opts.push("rro".into());
    }
    Ok(mount(dest, "bind", source, opts))
}

/// A mount the request asks for: a bind of an absolute host path (made a
/// directory when missing, as containerd and dockershim do).
fn request_mount(m: &cri::Mount) -> Result<Mount> {
    if m.image.is_some() {
        return Err(Error::Internal(format!(
            "image volume {}: not mounted by berthd",
            m.container_path
        )));
    }
    // oci-spec's Mount has uidMappings/gidMappings, but berth-runtime does
    // not apply them yet: refused, not passed on.
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(Error::Unimplemented(
            "id-mapped mounts are not supported yet".into(),
        ));
    }
    let dest = clean_container_path(&m.container_path, "mount container_path")?;
    if m.host_path.is_empty() || !m.host_path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "mount {dest}: host_path {:?} is not an absolute path",
            m.host_path
        )));
    }
    if std::fs::symlink_metadata(&m.host_path).is_err() {
        std::fs::create_dir_all(&m.host_path)
            .map_err(|e| Error::InvalidArgument(format!("mount source {}: {e}", m.host_path)))?;
    }
    let mut opts = vec![
        "rbind".to_owned(),
        propagation(&dest, m.propagation)?.to_owned(),
    ];
    opts.push(if m.readonly { "ro" } else { "rw" }.to_owned());
    if m.recursive_read_only {
        // As the CRI api.proto asks: rro needs readonly and private propagation.
        if !m.readonly {
            return Err(Error::InvalidArgument(format!(
                "mount {dest}: recursive_read_only needs readonly"
            )));
        }
        if m.propagation != cri::MountPropagation::PropagationPrivate as i32 {
            return Err(Error::InvalidArgument(format!(
                "mount {dest}: recursive_read_only needs private propagation"
            )));
        }
        opts.push("rro".into());
    }
    Ok(mount(dest, "bind", &m.host_path, opts))
}

/// `mounts`: the defaults, the pod's files, then the request's (which
/// replace any earlier one at the same destination), parents before
/// children.
pub(super) fn container_mounts(
    pod: &PodRecord,
    config: &cri::ContainerConfig,
    privileged: bool,
    readonly_rootfs: bool,
    image_volumes: &HashMap<usize, PathBuf>,
) -> Result<Vec<Mount>> {
    let mut mounts = default_mounts(privileged);
    mounts.extend(pod_mounts(pod, readonly_rootfs));
    for (i, m) in config.mounts.iter().enumerate() {
        let m = match image_volumes.get(&i) {
            // Built on id-mapped layers already in a pod user namespace.
            Some(source) => image_volume_mount(m, source)?,
            None => {
                let mut m = request_mount(m)?;
                // In a pod user namespace the host's files are seen through
                // its mapping (host root's as the container's root), not as
                // nobody.
                if pod.namespaces.user.is_some() {
                    id_map(&mut m);
                }
                m
            }
        };
        mounts.retain(|x| x.destination().as_os_str() != m.destination().as_os_str());
        mounts.push(m);
    }
    // A stable sort: same-depth mounts keep their order.
    mounts.sort_by_key(|m| m.destination().components().count());
    Ok(mounts)
}

/// `linux.rootfsPropagation`: the widest any mount asks for, so that its
/// propagation can work.
/// The mounts' propagation values are checked by [`request_mount`] first.
pub(super) fn rootfs_propagation(mounts: &[cri::Mount]) -> &'static str {
    match mounts.iter().map(|m| m.propagation).max().unwrap_or(0) {
        2 => "rshared",
        1 => "rslave",
        _ => "rprivate",
    }
}
