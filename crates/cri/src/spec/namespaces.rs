//! The container's namespaces: its own mount (and cgroup) namespace, the
//! pod's network, IPC and UTS namespaces, and a PID namespace of its own,
//! the pod's, a target container's or the host's.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::error::{Error, Result};
use crate::sandbox::UserMapping;
use crate::store::PodRecord;

fn namespace_mode(v: i32) -> cri::NamespaceMode {
    cri::NamespaceMode::try_from(v).unwrap_or(cri::NamespaceMode::Pod)
}

pub fn pod_namespace_options(pod: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    pod.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

pub fn pod_privileged(pod: &cri::PodSandboxConfig) -> bool {
    pod.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged)
}

/// A namespace of `typ`: a new one, or the one at `path`.
pub(super) fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ).set_path(path);
    ns
}

/// The user namespace a pod asks for (`userns_options`): the host's
/// (none, or mode NODE without mappings), or one of its own (mode POD)
/// with the kubelet's single uid and gid range starting at container id
/// 0. What the kubelet never sends is refused, as containerd does.
pub fn pod_user_mapping(ns: &cri::NamespaceOption) -> Result<Option<UserMapping>> {
    let Some(u) = &ns.userns_options else {
        return Ok(None);
    };
    let mode = cri::NamespaceMode::try_from(u.mode).map_err(|_| {
        Error::InvalidArgument(format!("user namespace mode {} is unknown", u.mode))
    })?;
    match mode {
        cri::NamespaceMode::Node => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(Error::InvalidArgument(
                    "user namespace mode NODE takes no uid or gid mappings".into(),
                ));
            }
            return Ok(None);
        }
        cri::NamespaceMode::Container | cri::NamespaceMode::Target => {
            return Err(Error::InvalidArgument(format!(
                "user namespace mode {} is not supported: POD or NODE",
                mode.as_str_name()
            )))
        }
        cri::NamespaceMode::Pod => {}
    }
    let [uid] = u.uids.as_slice() else {
        return Err(Error::InvalidArgument(format!(
            "a pod's user namespace needs exactly one uid mapping, not {}",
            u.uids.len()
        )));
    };
    let [gid] = u.gids.as_slice() else {
        return Err(Error::InvalidArgument(format!(
            "a pod's user namespace needs exactly one gid mapping, not {}",
            u.gids.len()
        )));
    };
    for (what, m) in [("uid", uid), ("gid", gid)] {
        if m.container_id != 0 {
            return Err(Error::InvalidArgument(format!(
                "the {what} mapping must map container id 0, not {}",
                m.container_id
            )));
        }
        if m.length == 0 || m.host_id.checked_add(m.length - 1).is_none() {
            return Err(Error::InvalidArgument(format!(
                "the {what} mapping {}+{} is not a range of ids",
                m.host_id, m.length
            )));
        }
        // Container root would be host root: no isolation at all.
        if m.host_id == 0 {
            return Err(Error::InvalidArgument(format!(
                "the {what} mapping maps container id 0 to host id 0"
            )));
        }
    }
    if uid.length != gid.length {
        return Err(Error::InvalidArgument(format!(
            "the uid and gid mappings differ in length ({} and {})",
            uid.length, gid.length
        )));
    }
    Ok(Some(UserMapping {
        host_uid: uid.host_id,
        host_gid: gid.host_id,
        length: uid.length,
    }))
}

/// Whether the host has a unified cgroup v2 hierarchy at /sys/fs/cgroup
/// (containers then get a cgroup namespace of their own).
pub(super) fn cgroup2_unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// `linux.namespaces`: a new mount namespace; the PID namespace `ns.pid`
/// asks for (the host's: none listed); the pod's network, IPC and UTS
/// namespaces where it has its own; a new cgroup namespace on a cgroup v2
/// host unless privileged.
pub(super) fn container_namespaces(
    pod: &PodRecord,
    ns: &cri::NamespaceOption,
    target_pid: Option<u32>,
    privileged: bool,
    cgroup2: bool,
) -> Result<Vec<LinuxNamespace>> {
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    match namespace_mode(ns.pid) {
        cri::NamespaceMode::Node => {}
        cri::NamespaceMode::Container => namespaces.push(namespace(LinuxNamespaceType::Pid, None)),
        cri::NamespaceMode::Pod => namespaces.push(namespace(
            LinuxNamespaceType::Pid,
            pod.namespaces.pid.clone(),
        )),
        cri::NamespaceMode::Target => {
            let pid = target_pid.ok_or_else(|| {
                Error::NotFound(format!(
                    "target container {:?} is not running",
                    ns.target_id
                ))
            })?;
            namespaces.push(namespace(
                LinuxNamespaceType::Pid,
                Some(format!("/proc/{pid}/ns/pid").into()),
            ));
        }
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, &pod.namespaces.net),
        (LinuxNamespaceType::Ipc, &pod.namespaces.ipc),
        (LinuxNamespaceType::Uts, &pod.namespaces.uts),
    ] {
        if let Some(p) = path {
            namespaces.push(namespace(typ, Some(p.clone())));
        }
    }
    if let Some(user) = &pod.namespaces.user {
        namespaces.push(namespace(LinuxNamespaceType::User, Some(user.clone())));
    }
    if cgroup2 && !privileged {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(namespaces)
}

/// `linux.uidMappings`/`gidMappings` of a container in its pod's user
/// namespace: the ones the namespace has (the runtime checks they match),
/// which its id-mapped mounts use.
pub(super) fn container_id_mappings(
    m: &UserMapping,
) -> (
    Vec<oci_spec::runtime::LinuxIdMapping>,
    Vec<oci_spec::runtime::LinuxIdMapping>,
) {
    let one = |host: u32| {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(m.length)
            .build()
            .into_iter()
            .collect()
    };
    (one(m.host_uid), one(m.host_gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn userns(
        mode: cri::NamespaceMode,
        uids: &[(u32, u32, u32)],
        gids: &[(u32, u32, u32)],
    ) -> cri::NamespaceOption {
        let map = |v: &[(u32, u32, u32)]| {
            v.iter()
                .map(|&(container_id, host_id, length)| cri::IdMapping {
                    host_id,
                    container_id,
                    length,
                })
                .collect()
        };
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: mode as i32,
                uids: map(uids),
                gids: map(gids),
            }),
            ..Default::default()
        }
    }

    /// What the kubelet sends is taken; what it never sends is refused.
    #[test]
    fn pod_user_namespace_options() {
        use cri::NamespaceMode::*;
        let one = [(0, 65536, 65536)];
        assert_eq!(
            pod_user_mapping(&cri::NamespaceOption::default()).unwrap(),
            None
        );
        assert_eq!(pod_user_mapping(&userns(Node, &[], &[])).unwrap(), None);
        assert_eq!(
            pod_user_mapping(&userns(Pod, &one, &[(0, 131072, 65536)])).unwrap(),
            Some(UserMapping {
                host_uid: 65536,
                host_gid: 131072,
                length: 65536
            })
        );
        for bad in [
            userns(Node, &one, &one),
            userns(Container, &one, &one),
            userns(Target, &one, &one),
            userns(Pod, &[], &one),
            userns(Pod, &[(0, 65536, 100), (100, 70000, 100)], &one),
            userns(Pod, &[(1, 65536, 65536)], &one),
            userns(Pod, &[(0, 0, 65536)], &[(0, 0, 65536)]),
            userns(Pod, &[(0, u32::MAX, 2)], &one),
            userns(Pod, &one, &[(0, 65536, 100)]),
        ] {
            assert!(
                matches!(pod_user_mapping(&bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
