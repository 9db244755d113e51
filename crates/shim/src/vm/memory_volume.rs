//! Kubernetes emptyDirs of medium Memory in a VM pod: kubelet mounts a
//! tmpfs for each under the pod's `volumes/kubernetes.io~empty-dir/`; in a
//! VM the volume is a tmpfs in guest memory instead, made once per pod
//! and bound into each container that mounts it, as Kata does. Shared
//! through virtio-fs it would live in host memory, outside the VM's size
//! and the containers' memory limits. The host's tmpfs stays empty.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
    pub guest_path: String,
    /// Its size, mode and owner: those of kubelet's tmpfs.
    options: Vec<String>,
}

/// The memory volume a bind mount's source is, if it is one: a tmpfs
/// mount point below a pod's emptyDir plugin directory.
pub fn of_source(source: &Path) -> Option<MemoryVolume> {
    if !source
        .components()
        .any(|c| c.as_os_str() == EMPTY_DIR_PLUGIN)
    {
        return None;
    }
    let fs = rustix::fs::statfs(source).ok()?;
    if fs.f_type as u64 != TMPFS_MAGIC {
        return None;
    }
    let meta = std::fs::metadata(source).ok()?;
    let parent = std::fs::metadata(source.parent()?).ok()?;
    if meta.dev() == parent.dev() {
        // A directory of some other tmpfs (/run, /tmp), not its own mount:
        // a disk-backed emptyDir kept on tmpfs, shared as any bind source.
        return None;
    }
    let size = fs.f_blocks * fs.f_bsize as u64;
    let digest = Sha256::digest(source.as_os_str().as_bytes());
    Some(MemoryVolume {
        guest_path: format!("{GUEST_ROOT}/{}", hex::encode(&digest[..8])),
        options: vec![
            format!("size={size}"),
            format!("mode={:o}", meta.mode() & 0o7777),
            format!("uid={}", meta.uid()),
            format!("gid={}", meta.gid()),
        ],
    })
}

impl MemoryVolume {
    /// Mounts the tmpfs in the guest unless an earlier container of the
    /// pod did.
    pub async fn ensure(
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
