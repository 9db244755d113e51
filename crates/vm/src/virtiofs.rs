//! The directory a VM's guest sees: `<vm dir>/shared`, over virtio-fs
//! (served by QEMU's virtiofsd) or, as a fallback where virtiofsd is
//! missing, over 9p (served by QEMU itself), under the tag [`SHARE_TAG`]. What a pod
//! needs in the guest (container root file systems, volumes) is bind
//! mounted into it on the host as the pod goes; the directory is a shared
//! mount, so binds made after virtiofsd started (in its own mount
//! namespace, a slave of the host's) reach the guest too.
//!
//! A share is bound first in a private staging directory, made read-only
//! (and nosuid, nodev) there, and only then moved into the shared
//! directory: the copy propagation makes for virtiofsd takes the flags the
//! mount has when it arrives. A read-only remount after the arrival would
//! stay on the host's copy, and the guest could write through virtiofsd's.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rustix::mount::{
    mount_bind, mount_change, mount_move, mount_remount, unmount, MountFlags,
    MountPropagationFlags, UnmountFlags,
};

use crate::error::VmError;
use crate::process::{tail, Process};

/// The virtio-fs tag of the shared directory.
pub const SHARE_TAG: &str = "berth";
/// Where berth-agent mounts it in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/berth/shared";

/// How the shared directory reaches the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// virtio-fs through this virtiofsd: the fast one, page cache and all.
    VirtioFs { virtiofsd: PathBuf },
    /// 9p served by QEMU: slower, nothing else to run.
    NineP,
}

pub struct SharedDir {
    path: PathBuf,
    staging: PathBuf,
    socket: PathBuf,
    /// virtiofsd; none over 9p.
    daemon: Option<Process>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VmError + 'a {
    move |source| VmError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl SharedDir {
    /// Creates `<dir>/shared` and, for virtio-fs, starts virtiofsd on it;
    /// returns when its vhost-user socket is there for QEMU.
    pub async fn start(dir: &Path, transport: &Transport) -> Result<SharedDir, VmError> {
        let path = dir.join("shared");
        let staging = dir.join("staging");
        own_mount(&staging, MountPropagationFlags::PRIVATE)?;
        if let Err(e) = own_mount(&path, MountPropagationFlags::SHARED) {
            let _ = unmount(&staging, UnmountFlags::DETACH);
            return Err(e);
        }
        let socket = dir.join("virtiofs.sock");
        let virtiofsd = match transport {
            Transport::VirtioFs { virtiofsd } => virtiofsd,
            Transport::NineP => {
                return Ok(SharedDir {
                    path,
                    staging,
                    socket,
                    daemon: None,
                })
            }
        };
        let log = dir.join("virtiofsd.log");
        let args = vec![
            format!("--socket-path={}", socket.display()),
            "-o".to_owned(),
            format!("source={}", path.display()),
            "-o".to_owned(),
            "cache=auto".to_owned(),
            // Each bind mount keeps its own device and inode numbers in
            // the guest (overlay needs them consistent).
            "-o".to_owned(),
            "announce_submounts".to_owned(),
            "-o".to_owned(),
            "sandbox=namespace".to_owned(),
        ];
        let daemon = match Process::spawn(virtiofsd, &args, &log) {
            Ok(d) => d,
            Err(e) => {
                let _ = unmount(&path, UnmountFlags::DETACH);
                let _ = unmount(&staging, UnmountFlags::DETACH);
                return Err(e);
            }
        };
        if let Err(e) = daemon.record(&dir.join("virtiofsd.pid")) {
            daemon.kill().await;
            let _ = unmount(&path, UnmountFlags::DETACH);
            let _ = unmount(&staging, UnmountFlags::DETACH);
            return Err(e);
        }
        let mut exited = daemon.exited();
        let shared = SharedDir {
            path,
            staging,
            socket,
            daemon: Some(daemon),
        };
        let ready = async {
            while !shared.socket.exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let outcome = tokio::select! {
            () = ready => Ok(()),
            _ = exited.wait_for(|gone| *gone) => Err(VmError::Config(format!(
                "virtiofsd exited at its start: {}", tail(&log)
            ))),
            () = tokio::time::sleep(Duration::from_secs(10)) => Err(VmError::Config(format!(
                "virtiofsd made no socket within 10 s: {}", tail(&log)
            ))),
        };
        match outcome {
            Ok(()) => Ok(shared),
            Err(e) => {
                shared.stop().await;
                Err(e)
            }
        }
    }

    /// virtiofsd, when the transport is virtio-fs.
    pub fn daemon(&self) -> Option<&Process> {
        self.daemon.as_ref()
    }

    /// QEMU's arguments for the guest's device.
    pub fn qemu_args(&self) -> Vec<String> {
        match &self.daemon {
            Some(_) => vec![
                "-chardev".into(),
                format!("socket,id=virtiofs,path={}", self.socket.display()),
                "-device".into(),
                format!("vhost-user-fs-device,chardev=virtiofs,tag={SHARE_TAG}"),
            ],
            // passthrough: files the guest makes keep the owner it asks
            // for; remap: the bind mounts inside keep distinct inodes.
            None => vec![
                "-fsdev".into(),
                format!(
                    "local,id=shared,path={},security_model=passthrough,multidevs=remap",
                    self.path.display()
                ),
                "-device".into(),
                format!("virtio-9p-device,fsdev=shared,mount_tag={SHARE_TAG}"),
            ],
        }
    }

    /// The agent's Mount request for the directory at [`GUEST_SHARED_DIR`].
    pub fn guest_mount(&self) -> crate::MountRequest {
        let (fstype, options) = match &self.daemon {
            Some(_) => ("virtiofs", Vec::new()),
            None => (
                "9p",
                vec![
                    "trans=virtio".into(),
                    "version=9p2000.L".into(),
                    "msize=262144".into(),
                ],
            ),
        };
        crate::MountRequest {
            fstype: fstype.into(),
            source: SHARE_TAG.into(),
            target: GUEST_SHARED_DIR.into(),
            options,
            read_only: false,
        }
    }

    /// Makes `host` (a directory or a file) visible in the guest as
    /// `GUEST_SHARED_DIR/<name>`; returns that guest path.
    pub fn share(&self, host: &Path, name: &str, read_only: bool) -> Result<String, VmError> {
        let target = self.entry(name)?;
        let staged = self.staging.join(name);
        let is_dir = std::fs::metadata(host)
            .map_err(io("sharing", host))?
            .is_dir();
        create_entry(&staged, is_dir)?;
        let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV;
        if read_only {
            flags |= MountFlags::RDONLY;
        }
        let moved = mount_bind(host, &staged)
            .map_err(|e| io("bind mounting", host)(e.into()))
            .and_then(|()| {
                // Not a peer of the host's mount: what happens to one must
                // not happen to the other.
                mount_change(&staged, MountPropagationFlags::PRIVATE)
                    .and_then(|()| mount_remount(&staged, flags, ""))
                    .map_err(|e| io("setting the flags of", &staged)(e.into()))
            })
            .and_then(|()| create_entry(&target, is_dir))
            .and_then(|()| {
                mount_move(&staged, &target)
                    .map_err(|e| io("moving into the shared directory", &target)(e.into()))
            });
        if let Err(e) = moved {
            let _ = unmount(&staged, UnmountFlags::DETACH);
            let _ = remove(&staged);
            let _ = remove(&target);
            return Err(e);
        }
        let _ = remove(&staged);
        Ok(format!("{GUEST_SHARED_DIR}/{name}"))
    }

    /// Takes a share out again.
    pub fn unshare(&self, name: &str) -> Result<(), VmError> {
        let target = self.entry(name)?;
        match unmount(&target, UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io("unmounting", &target)(e.into())),
        }
        match remove(&target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &target)(e)),
        }
    }

    /// The host path of share `name`, refusing anything but one plain
    /// path component.
    fn entry(&self, name: &str) -> Result<PathBuf, VmError> {
        let mut parts = Path::new(name).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(_)), None) => Ok(self.path.join(name)),
            _ => Err(VmError::Config(format!(
                "share name {name:?} is not a single path component"
            ))),
        }
    }

    /// Stops virtiofsd and unmounts everything shared.
    pub async fn stop(&self) {
        if let Some(daemon) = &self.daemon {
            daemon.kill().await;
        }
        let _ = unmount(&self.path, UnmountFlags::DETACH);
        let _ = unmount(&self.staging, UnmountFlags::DETACH);
    }

    /// As [`Self::stop`], without waiting for virtiofsd's end.
    pub fn abandon(&self) {
        if let Some(daemon) = &self.daemon {
            daemon.signal(rustix::process::Signal::KILL);
        }
        let _ = unmount(&self.path, UnmountFlags::DETACH);
        let _ = unmount(&self.staging, UnmountFlags::DETACH);
    }
}

/// Creates `path` and makes it a mount of its own with `propagation`.
fn own_mount(path: &Path, propagation: MountPropagationFlags) -> Result<(), VmError> {
    std::fs::create_dir(path).map_err(io("creating", path))?;
    mount_bind(path, path).map_err(|e| io("bind mounting", path)(e.into()))?;
    if let Err(e) = mount_change(path, propagation) {
        let _ = unmount(path, UnmountFlags::DETACH);
        return Err(io("setting the propagation of", path)(e.into()));
    }
    Ok(())
}

fn create_entry(path: &Path, dir: bool) -> Result<(), VmError> {
    let made = if dir {
        std::fs::create_dir(path)
    } else {
        std::fs::File::create_new(path).map(drop)
    };
    made.map_err(io("creating", path))
}

fn remove(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Unmounts what [`SharedDir::start`] mounted under `dir`, for an owner
/// that lost its handle.
pub fn unmount_leftovers(dir: &Path) {
    for sub in ["shared", "staging"] {
        let _ = unmount(dir.join(sub), UnmountFlags::DETACH);
    }
}
