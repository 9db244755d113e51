//! The container's confinement: capabilities, seccomp, AppArmor, SELinux,
//! masked and read-only paths.

use std::path::Path;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp};

use crate::error::{Error, Result};

/// containerd's default capabilities for CRI containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

pub const DEFAULT_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

pub const DEFAULT_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Every capability berthd itself may pass on (privileged containers and
/// "ALL"): the kernel's, within berthd's bounding set, as containerd's
/// WithAllCurrentCapabilities. Root here may lack some (CAP_SYS_RESOURCE).
pub fn all_caps() -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let bounding = caps::read(None, caps::CapSet::Bounding).ok();
    caps::all()
        .into_iter()
        .filter(|c| c.index() as u32 <= last)
        .filter(|c| bounding.as_ref().is_none_or(|b| b.contains(c)))
        .map(|c| c.to_string())
        .collect()
}

fn normalize_cap(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The capability set from the defaults and the request's add/drop lists.
pub fn capabilities(req: Option<&cri::Capability>, privileged: bool) -> Result<Vec<String>> {
    let known = all_caps();
    if privileged {
        return Ok(known);
    }
    let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let Some(req) = req else {
        return Ok(set);
    };
    let check = |c: &str| -> Result<String> {
        let n = normalize_cap(c);
        if known.contains(&n) {
            Ok(n)
        } else {
            Err(Error::InvalidArgument(format!("unknown capability {c:?}")))
        }
    };
    // As containerd: "ALL" in add first, then drops ("ALL" clears).
    if req
        .add_capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case("ALL"))
    {
        set = known.clone();
    }
    for c in &req.add_capabilities {
        if !c.eq_ignore_ascii_case("ALL") {
            let n = check(c)?;
            if !set.contains(&n) {
                set.push(n);
            }
        }
    }
    if req
        .drop_capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case("ALL"))
    {
        set.clear();
    }
    for c in &req.drop_capabilities {
        if !c.eq_ignore_ascii_case("ALL") {
            let n = check(c)?;
            set.retain(|x| *x != n);
        }
    }
    Ok(set)
}

/// The ambient capabilities the request adds, each of which must be in the
/// container's set.
pub(super) fn ambient_capabilities(
    req: Option<&cri::Capability>,
    caps: &[String],
) -> Result<Vec<String>> {
    let mut ambient = Vec::new();
    for a in req
        .map(|c| c.add_ambient_capabilities.as_slice())
        .unwrap_or_default()
    {
        let n = normalize_cap(a);
        if !caps.contains(&n) {
            return Err(Error::InvalidArgument(format!(
                "ambient capability {a} is not in the container's capability set"
            )));
        }
        ambient.push(n);
    }
    Ok(ambient)
}

/// oci-spec's name for a capability ("CAP_SYS_ADMIN"). Every name
/// `all_caps` gives has one (a test checks it); a newer kernel's that
/// oci-spec does not know yet is an error rather than a silent drop.
fn oci_capability(name: &str) -> Result<Capability> {
    name.strip_prefix("CAP_")
        .unwrap_or(name)
        .parse::<Capability>()
        .map_err(|_| {
            Error::Internal(format!(
                "capability {name} is not known to the OCI spec library"
            ))
        })
}

fn capability_set(names: &[String]) -> Result<Capabilities> {
    names.iter().map(|n| oci_capability(n)).collect()
}

/// `process.capabilities`: `set` as the bounding, effective and permitted
/// sets; inheritable and ambient are left out where None. The sets are
/// sets: their order in config.json is not meaningful (nor stable).
pub(super) fn linux_capabilities(
    set: &[String],
    inheritable: Option<&[String]>,
    ambient: Option<&[String]>,
) -> Result<LinuxCapabilities> {
    let set = capability_set(set)?;
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(inheritable.map(capability_set).transpose()?)
        .set_ambient(ambient.map(capability_set).transpose()?);
    Ok(caps)
}

/// Resolves the seccomp profile (None: unconfined). The deprecated path
/// field is honoured for kubelets older than the `seccomp` message.
#[allow(deprecated)]
pub(super) fn seccomp(
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    caps: &[String],
) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    enum Want {
        Unconfined,
        Default,
        File(String),
    }
    let want = match &sc.seccomp {
        Some(p) => match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Want::Default,
            Ok(cri::security_profile::ProfileType::Unconfined) => Want::Unconfined,
            Ok(cri::security_profile::ProfileType::Localhost) => Want::File(p.localhost_ref.clone()),
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "seccomp profile type {} is unknown",
                    p.profile_type
                )))
            }
        },
        None => match sc.seccomp_profile_path.as_str() {
            "" | "unconfined" => Want::Unconfined,
            "runtime/default" | "docker/default" => Want::Default,
            other => match other.strip_prefix("localhost/") {
                Some(path) => Want::File(path.to_owned()),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "seccomp profile {other:?}: expected runtime/default, unconfined or localhost/<path>"
                    )))
                }
            },
        },
    };
    match want {
        Want::Unconfined => Ok(None),
        Want::Default => Ok(Some(berth_common::seccomp_profile::runtime_default(caps))),
        Want::File(path) => {
            if !path.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "seccomp localhost profile {path:?} is not an absolute path"
                )));
            }
            let raw = std::fs::read(&path)
                .map_err(|e| Error::InvalidArgument(format!("seccomp profile {path}: {e}")))?;
            // The profile is read as the OCI `linux.seccomp` it is (a
            // notify listener included); what oci-spec does not know is
            // not passed on.
            let parsed: LinuxSeccomp = serde_json::from_slice(&raw)
                .map_err(|e| Error::InvalidArgument(format!("seccomp profile {path}: {e}")))?;
            Ok(Some(parsed))
        }
    }
}

pub(super) fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}

/// The AppArmor profile, where AppArmor is `enabled` (ignored elsewhere, as
/// containerd does).
#[allow(deprecated)]
pub(super) fn apparmor(
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    enabled: bool,
) -> Result<Option<String>> {
    if privileged || !enabled {
        return Ok(None);
    }
    let (kind, name) = match &sc.apparmor {
        Some(p) => (p.profile_type, p.localhost_ref.clone()),
        None => match sc.apparmor_profile.as_str() {
            "" | "runtime/default" => (0, String::new()),
            "unconfined" => (1, String::new()),
            other => match other.strip_prefix("localhost/") {
                Some(n) => (2, n.to_owned()),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "apparmor profile {other:?}"
                    )))
                }
            },
        },
    };
    Ok(match kind {
        2 if !name.is_empty() => Some(name),
        2 => {
            return Err(Error::InvalidArgument(
                "apparmor localhost profile without a name".into(),
            ))
        }
        // berth ships no AppArmor profile of its own: runtime/default runs
        // without one rather than failing.
        _ => None,
    })
}

pub(super) fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// The SELinux process label ("user:role:type:level"), where SELinux is
/// `enabled` and the request gives a type or a level.
pub(super) fn selinux_label(
    sc: &cri::LinuxContainerSecurityContext,
    enabled: bool,
) -> Option<String> {
    let se = sc.selinux_options.as_ref()?;
    if (se.r#type.is_empty() && se.level.is_empty()) || !enabled {
        return None;
    }
    Some(format!(
        "{}:{}:{}:{}",
        se.user, se.role, se.r#type, se.level
    ))
}

/// `linux.maskedPaths` and `linux.readonlyPaths`: the request's, else the
/// defaults; none for privileged containers.
pub(super) fn masked_and_readonly_paths(
    sc: &cri::LinuxContainerSecurityContext,
) -> (Option<Vec<String>>, Option<Vec<String>>) {
    if sc.privileged {
        return (None, None);
    }
    let or_default = |given: &[String], default: &[&str]| -> Vec<String> {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.to_vec()
        }
    };
    (
        Some(or_default(&sc.masked_paths, DEFAULT_MASKED)),
        Some(or_default(&sc.readonly_paths, DEFAULT_READONLY)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        let c = capabilities(None, false).unwrap();
        assert_eq!(c.len(), DEFAULT_CAPS.len());
        let req = cri::Capability {
            add_capabilities: vec!["sys_admin".into()],
            drop_capabilities: vec!["CAP_NET_RAW".into(), "KILL".into()],
            add_ambient_capabilities: vec![],
        };
        let c = capabilities(Some(&req), false).unwrap();
        assert!(c.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_NET_RAW".to_string()) && !c.contains(&"CAP_KILL".to_string()));
        let req = cri::Capability {
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            drop_capabilities: vec!["ALL".into()],
            add_ambient_capabilities: vec![],
        };
        assert!(capabilities(Some(&req), false).unwrap().is_empty());
        let req = cri::Capability {
            add_capabilities: vec!["CAP_BOGUS".into()],
            ..Default::default()
        };
        assert!(capabilities(Some(&req), false).is_err());
        assert!(capabilities(None, true)
            .unwrap()
            .contains(&"CAP_SYS_ADMIN".to_string()));
    }

    /// Every capability berthd may grant has a name in oci-spec, written
    /// back as the same string.
    #[test]
    fn every_capability_has_an_oci_name() {
        let mut names: Vec<String> = caps::all().into_iter().map(|c| c.to_string()).collect();
        names.extend(all_caps());
        for name in names {
            let cap = oci_capability(&name).unwrap();
            assert_eq!(serde_json::to_value(cap).unwrap(), name.as_str());
        }
        let set = linux_capabilities(&["CAP_KILL".into()], None, Some(&[])).unwrap();
        let v = serde_json::to_value(set).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                "ambient": [],
            })
        );
        let req = cri::Capability {
            add_ambient_capabilities: vec!["kill".into()],
            ..Default::default()
        };
        assert_eq!(
            ambient_capabilities(Some(&req), &["CAP_KILL".into()]).unwrap(),
            ["CAP_KILL"]
        );
        assert!(ambient_capabilities(Some(&req), &[]).is_err());
    }

    #[test]
    #[allow(deprecated)]
    fn apparmor_profiles_where_enabled() {
        let profile = |t: i32, name: &str| cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: t,
                localhost_ref: name.into(),
            }),
            ..Default::default()
        };
        let localhost = cri::security_profile::ProfileType::Localhost as i32;
        let sc = profile(localhost, "k8s-nginx");
        assert_eq!(
            apparmor(&sc, false, true).unwrap().as_deref(),
            Some("k8s-nginx")
        );
        // Disabled on the host, or privileged: none, as containerd.
        assert_eq!(apparmor(&sc, false, false).unwrap(), None);
        assert_eq!(apparmor(&sc, true, true).unwrap(), None);
        assert!(apparmor(&profile(localhost, ""), false, true).is_err());
        let runtime_default = cri::security_profile::ProfileType::RuntimeDefault as i32;
        assert_eq!(
            apparmor(&profile(runtime_default, ""), false, true).unwrap(),
            None
        );
        // The deprecated string field.
        let old = |s: &str| cri::LinuxContainerSecurityContext {
            apparmor_profile: s.into(),
            ..Default::default()
        };
        assert_eq!(
            apparmor(&old("localhost/p1"), false, true)
                .unwrap()
                .as_deref(),
            Some("p1")
        );
        assert_eq!(apparmor(&old("unconfined"), false, true).unwrap(), None);
        assert!(apparmor(&old("bogus"), false, true).is_err());
        assert_eq!(apparmor(&old("bogus"), false, false).unwrap(), None);
    }

    #[test]
    fn selinux_label_where_enabled() {
        let mut sc = cri::LinuxContainerSecurityContext {
            selinux_options: Some(cri::SeLinuxOption {
                user: "system_u".into(),
                role: "system_r".into(),
                r#type: "container_t".into(),
                level: "s0:c1,c2".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            selinux_label(&sc, true).as_deref(),
            Some("system_u:system_r:container_t:s0:c1,c2")
        );
        assert_eq!(selinux_label(&sc, false), None);
        let se = sc.selinux_options.as_mut().unwrap();
        se.r#type.clear();
        se.level.clear();
        assert_eq!(selinux_label(&sc, true), None);
    }

    #[test]
    fn masked_paths_unless_privileged() {
        let mut sc = cri::LinuxContainerSecurityContext::default();
        let (m, r) = masked_and_readonly_paths(&sc);
        assert_eq!(m.unwrap(), DEFAULT_MASKED);
        assert_eq!(r.unwrap(), DEFAULT_READONLY);
        sc.masked_paths = vec!["/proc/x".into()];
        assert_eq!(masked_and_readonly_paths(&sc).0.unwrap(), ["/proc/x"]);
        sc.privileged = true;
        assert_eq!(masked_and_readonly_paths(&sc), (None, None));
    }
}
