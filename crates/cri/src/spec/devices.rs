//! The container's device nodes and its device cgroup rules.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::clean_container_path;
use crate::error::{Error, Result};

/// A device node for the container.
struct DeviceNode {
    /// The path inside the container.
    path: String,
    typ: LinuxDeviceType,
    major: i64,
    minor: i64,
    mode: u32,
}

/// The type, numbers and permission bits of a device node (None: not one).
fn node(md: &std::fs::Metadata) -> Option<(LinuxDeviceType, i64, i64, u32)> {
    let ft = md.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = md.rdev();
    Some((
        typ,
        libc::major(rdev) as i64,
        libc::minor(rdev) as i64,
        md.mode() & 0o7777,
    ))
}

/// A device node on the host, or all the nodes under a host directory.
fn host_devices(d: &cri::Device) -> Result<Vec<DeviceNode>> {
    let host = Path::new(&d.host_path);
    let md = std::fs::metadata(host)
        .map_err(|e| Error::InvalidArgument(format!("device {}: {e}", d.host_path)))?;
    let container_path = if d.container_path.is_empty() {
        d.host_path.clone()
    } else {
        clean_container_path(&d.container_path, "device container_path")?
    };
    if md.is_dir() {
        let mut out = Vec::new();
        let mut stack = vec![host.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)
                .map_err(|e| Error::internal(dir.display(), e))?
                .flatten()
            {
                let p = e.path();
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(p);
                } else if let Some((typ, major, minor, mode)) = node(&m) {
                    let rel = p.strip_prefix(host).unwrap_or(&p);
                    out.push(DeviceNode {
                        path: Path::new(&container_path).join(rel).display().to_string(),
                        typ,
                        major,
                        minor,
                        mode,
                    });
                }
            }
        }
        return Ok(out);
    }
    match node(&md) {
        Some((typ, major, minor, mode)) => Ok(vec![DeviceNode {
            path: container_path,
            typ,
            major,
            minor,
            mode,
        }]),
        None => Err(Error::InvalidArgument(format!(
            "device {}: not a character or block device",
            d.host_path
        ))),
    }
}

fn device_access(permissions: &str) -> Result<String> {
    let p = if permissions.is_empty() {
        "rwm"
    } else {
        permissions
    };
    if p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        Ok(p.to_owned())
    } else {
        Err(Error::InvalidArgument(format!(
            "device permissions {permissions:?}: expected letters of rwm"
        )))
    }
}

/// Every device node of the host's /dev (privileged containers).
fn all_host_devices() -> Vec<cri::Device> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let name = e.file_name();
            if m.is_dir() {
                // Per-container instances, not host ones.
                if name != "pts" && name != "shm" && name != "mqueue" {
                    stack.push(p);
                }
            } else if (m.file_type().is_char_device() || m.file_type().is_block_device())
                && name != "console"
                && name != "ptmx"
            {
                out.push(cri::Device {
                    container_path: p.display().to_string(),
                    host_path: p.display().to_string(),
                    permissions: "rwm".into(),
                });
            }
        }
    }
    out
}

/// A device cgroup rule: `allow` `access` to the devices of `typ`,
/// `major` and `minor` (all of them where None).
pub(super) fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow)
        .set_typ(typ)
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_owned()));
    rule
}

/// `linux.devices` and the `linux.resources.devices` rules: the requested
/// devices (owned by root) and access to them only; a privileged container
/// gets every host device as well, and access to all devices.
pub(super) fn container_devices(
    config: &cri::ContainerConfig,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let mut devices = Vec::new();
    // Deny all, then allow each device; or allow all.
    let (mut rules, requested) = if privileged {
        let mut all = all_host_devices();
        all.extend(config.devices.iter().cloned());
        (vec![device_rule(true, None, None, None, "rwm")], all)
    } else {
        (
            vec![device_rule(false, None, None, None, "rwm")],
            config.devices.clone(),
        )
    };
    for d in &requested {
        let access = device_access(&d.permissions)?;
        for n in host_devices(d)? {
            let mut dev = LinuxDevice::default();
            dev.set_path(PathBuf::from(&n.path))
                .set_typ(n.typ)
                .set_major(n.major)
                .set_minor(n.minor)
                .set_file_mode(Some(n.mode))
                .set_uid(Some(0))
                .set_gid(Some(0));
            devices.push(dev);
            if !privileged {
                rules.push(device_rule(
                    true,
                    Some(n.typ),
                    Some(n.major),
                    Some(n.minor),
                    &access,
                ));
            }
        }
    }
    Ok((devices, rules))
}
