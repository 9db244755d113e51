//! Resolution of an OCI `linux.cgroupsPath` value.

use std::path::Path;

use crate::{Error, Result};

/// A validated container cgroup path, before it is mapped onto hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPath {
    /// Taken from the root of every hierarchy.
    Absolute(String),
    /// Taken from the calling process's own cgroup in every hierarchy.
    Relative(String),
}

/// Validates `cgroups_path` and gives the container's cgroup.
///
/// An absent or empty path means `<id>` under the caller's own cgroup, as
/// runc does. With the systemd driver the path must be `slice:prefix:name`
/// and systemd must be running.
pub fn resolve_cgroups_path(
    cgroups_path: Option<&str>,
    id: &str,
    systemd: bool,
) -> Result<CgroupPath> {
    if systemd {
        if let Some(p) = cgroups_path.filter(|p| !p.is_empty()) {
            if p.split(':').count() != 3 {
                return Err(Error::InvalidPath {
                    path: p.to_owned(),
                    reason: "the systemd cgroup driver expects \"slice:prefix:name\"".into(),
                });
            }
        }
        if !Path::new("/run/systemd/system").is_dir() {
            return Err(Error::SystemdNotRunning);
        }
        // A systemd driver needs D-Bus to create transient units; until berth has
        // one, refuse rather than writing into systemd's hierarchy behind its back.
        return Err(Error::InvalidPath {
            path: cgroups_path.unwrap_or_default().to_owned(),
            reason:
                "the systemd cgroup driver is not supported by this build of berth; use cgroupfs"
                    .into(),
        });
    }
    let raw = match cgroups_path {
        None | Some("") => return Ok(CgroupPath::Relative(id.to_owned())),
        Some(p) => p,
    };
    if raw.contains('\0') {
        return Err(invalid(raw, "contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for component in raw.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(invalid(raw, "\"..\" would escape the cgroup root")),
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    if raw.starts_with('/') {
        Ok(CgroupPath::Absolute(format!("/{joined}")))
    } else if joined.is_empty() {
        Err(invalid(raw, "names no cgroup"))
    } else {
        Ok(CgroupPath::Relative(joined))
    }
}

fn invalid(path: &str, reason: &str) -> Error {
    Error::InvalidPath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_path_is_id_under_own_cgroup() {
        assert_eq!(
            resolve_cgroups_path(None, "c1", false).unwrap(),
            CgroupPath::Relative("c1".into())
        );
        assert_eq!(
            resolve_cgroups_path(Some(""), "c1", false).unwrap(),
            CgroupPath::Relative("c1".into())
        );
    }

    #[test]
    fn absolute_and_relative_are_cleaned() {
        assert_eq!(
            resolve_cgroups_path(Some("/a//b/./c/"), "x", false).unwrap(),
            CgroupPath::Absolute("/a/b/c".into())
        );
        assert_eq!(
            resolve_cgroups_path(Some("a/b"), "x", false).unwrap(),
            CgroupPath::Relative("a/b".into())
        );
    }

    #[test]
    fn dot_dot_is_refused() {
        let err = resolve_cgroups_path(Some("/a/../../etc"), "x", false).unwrap_err();
        assert!(err.to_string().contains("escape"), "{err}");
        assert!(resolve_cgroups_path(Some("../x"), "x", false).is_err());
    }

    #[test]
    fn systemd_without_systemd_is_a_clear_error() {
        if Path::new("/run/systemd/system").is_dir() {
            return;
        }
        let err = resolve_cgroups_path(Some("system.slice:berth:c1"), "c1", true).unwrap_err();
        assert!(err.to_string().contains("systemd is not running"), "{err}");
        let err = resolve_cgroups_path(Some("/not/systemd"), "c1", true).unwrap_err();
        assert!(err.to_string().contains("slice:prefix:name"), "{err}");
    }
}
