//! Kubernetes emptyDirs of medium Memory in a VM pod: kubelet mounts a
//! tmpfs for each under the pod's `volumes/kubernetes.io~empty-dir/`; in a
//! VM the volume is a tmpfs in guest memory instead, made once per pod
//! and bound into each container that mounts it (all of it, or the
//! directory a kubelet `subPath` names), as Kata does. Shared
//! through virtio-fs it would live in host memory, outside the VM's size
//! and the containers' memory limits. The host's tmpfs stays empty.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_vm::{AgentClient, MountRequest, VmError};
use sha2::{Digest, Sha256};

/// statfs f_type of tmpfs.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Where the guest keeps its pod's memory volumes.
const GUEST_ROOT: &str = "/run/berth/memory-volumes";

/// kubelet's directory of a pod's emptyDir volumes.
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

pub struct MemoryVolume {
    /// The tmpfs's path in the guest.
    guest_path: String,
    /// Its size, mode and owner: those of kubelet's tmpfs.
    options: Vec<String>,
    /// The mount's source inside the volume ("" for all of it), with the
    /// host directory's mode and owner.
    inside: PathBuf,
    inside_owner: (u32, u32, u32),
}

/// The memory volume a bind mount's source is, if it is one: a tmpfs
/// mount point below a pod's emptyDir plugin directory, or a directory of
/// one (kubelet's `subPath`: a bind of that directory under the pod's
/// `volume-subpaths/`, found in mountinfo by its device and mount root).
/// With it, the source's path inside the volume ("" for all of it).
pub fn of_source(source: &Path) -> Option<MemoryVolume> {
    let fs = rustix::fs::statfs(source).ok()?;
    if fs.f_type as u64 != TMPFS_MAGIC {
        return None;
    }
    let meta = std::fs::metadata(source).ok()?;
    let parent = std::fs::metadata(source.parent()?).ok()?;
    let own_mount = meta.dev() != parent.dev();
    if own_mount
        && source
            .components()
            .any(|c| c.as_os_str() == EMPTY_DIR_PLUGIN)
    {
        return Some(volume(source, &fs, &meta, PathBuf::new(), &meta));
    }
    if !meta.is_dir() {
        return None;
    }
    // A directory of some tmpfs: of a memory emptyDir's, if one of the
    // mounts of that file system is the volume.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (volume_dir, inside) = subpath_of(&mounts, source, meta.dev())?;
    let volume_meta = std::fs::metadata(&volume_dir).ok()?;
    let volume_fs = rustix::fs::statfs(&volume_dir).ok()?;
    Some(volume(&volume_dir, &volume_fs, &volume_meta, inside, &meta))
}

fn volume(
    dir: &Path,
    fs: &rustix::fs::StatFs,
    meta: &std::fs::Metadata,
    inside: PathBuf,
    inside_meta: &std::fs::Metadata,
) -> MemoryVolume {
    let size = fs.f_blocks * fs.f_bsize as u64;
    let digest = Sha256::digest(dir.as_os_str().as_bytes());
    MemoryVolume {
        guest_path: format!("{GUEST_ROOT}/{}", hex::encode(&digest[..8])),
        options: vec![
            format!("size={size}"),
            format!("mode={:o}", meta.mode() & 0o7777),
            format!("uid={}", meta.uid()),
            format!("gid={}", meta.gid()),
        ],
        inside,
        inside_owner: (
            inside_meta.mode() & 0o7777,
            inside_meta.uid(),
            inside_meta.gid(),
        ),
    }
}

/// One line of mountinfo: device, root within the file system, mount
/// point and file system type.
struct MountLine {
    dev: u64,
    root: PathBuf,
    point: PathBuf,
    fstype: String,
}

fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            Some(MountLine {
                dev: rustix::fs::makedev(major.parse().ok()?, minor.parse().ok()?),
                root: PathBuf::from(unescape(fields.get(3)?)),
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: after.split(' ').next()?.to_owned(),
            })
        })
        .collect()
}

/// mountinfo's octal escapes (`\\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |v, b| v.wrapping_mul(8) + (b - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// For `source` on the tmpfs `dev`: the memory emptyDir volume of that
/// tmpfs (its mount of the file system's root below the emptyDir plugin
/// directory) and where `source` is inside it.
fn subpath_of(mountinfo: &str, source: &Path, dev: u64) -> Option<(PathBuf, PathBuf)> {
    let mounts = parse_mountinfo(mountinfo);
    let volume = mounts.iter().find(|m| {
        m.dev == dev
            && m.fstype == "tmpfs"
            && m.root == Path::new("/")
            && m.point
                .components()
                .any(|c| c.as_os_str() == EMPTY_DIR_PLUGIN)
    })?;
    // kubelet's bind of the directory (the last mount there wins), or the
    // directory reached through the volume itself.
    let inside = match mounts
        .iter()
        .rev()
        .find(|m| m.point == source && m.dev == dev)
    {
        Some(bind) => bind.root.strip_prefix("/").ok()?.to_path_buf(),
        None => source.strip_prefix(&volume.point).ok()?.to_path_buf(),
    };
    if !inside
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    Some((volume.point.clone(), inside))
}

impl MemoryVolume {
    /// The guest path to bind for the mount.
    pub fn guest_source(&self) -> String {
        Path::new(&self.guest_path)
            .join(&self.inside)
            .display()
            .to_string()
    }

    /// Mounts the tmpfs in the guest unless an earlier container of the
    /// pod did, and makes the directory a subPath names in it (kubelet
    /// made it on the host's tmpfs), with the host directory's mode and
    /// owner.
    pub async fn ensure(
        &self,
        agent: &AgentClient,
        timeout: std::time::Duration,
    ) -> Result<(), VmError> {
        self.mount(agent, timeout).await?;
        if self.inside.as_os_str().is_empty() {
            return Ok(());
        }
        let (mode, uid, gid) = self.inside_owner;
        // The values as arguments, never in the script.
        let args = vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            r#"mkdir -p -m "$1" "$3" && chown "$2" "$3""#.into(),
            "sh".into(),
            format!("{mode:o}"),
            format!("{uid}:{gid}"),
            self.guest_source(),
        ];
        super::run_in_guest(agent, args, super::GUEST_COMMAND)
            .await?
            .map(drop)
            .map_err(|e| {
                VmError::Config(format!(
                    "making {} in the pod's memory volume: {e}",
                    self.inside.display()
                ))
            })
    }

    async fn mount(
        &self,
        agent: &AgentClient,
        timeout: std::time::Duration,
    ) -> Result<(), VmError> {
        let req = MountRequest {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            target: self.guest_path.clone(),
            options: self.options.clone(),
            read_only: false,
        };
        match agent.mount(&req, timeout).await {
            Err(VmError::AgentStatus {
                code: ttrpc::Code::ALREADY_EXISTS,
                ..
            }) => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
80 22 0:55 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache rw - tmpfs tmpfs rw,size=16384k
81 22 0:55 /logs/app /var/lib/kubelet/pods/u1/volume-subpaths/cache/web/0 rw - tmpfs tmpfs rw,size=16384k
82 22 0:56 / /run/other\\040dir rw - tmpfs tmpfs rw
";

    #[test]
    fn a_subpath_bind_is_found_in_its_volume() {
        let dev = rustix::fs::makedev(0, 55);
        let (volume, inside) = subpath_of(
            MOUNTINFO,
            Path::new("/var/lib/kubelet/pods/u1/volume-subpaths/cache/web/0"),
            dev,
        )
        .unwrap();
        assert_eq!(
            volume,
            Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache")
        );
        assert_eq!(inside, Path::new("logs/app"));
        // A directory reached through the volume itself.
        let (_, inside) = subpath_of(
            MOUNTINFO,
            Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache/tmp"),
            dev,
        )
        .unwrap();
        assert_eq!(inside, Path::new("tmp"));
        // Another tmpfs: no emptyDir of it.
        assert!(subpath_of(
            MOUNTINFO,
            Path::new("/run/other dir/x"),
            rustix::fs::makedev(0, 56)
        )
        .is_none());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/run/other\\040dir"), "/run/other dir");
        assert_eq!(unescape("/a\\134b"), "/a\\b");
        assert_eq!(unescape("/plain\\x"), "/plain\\x");
        assert_eq!(unescape("/é\\"), "/é\\");
    }
}
