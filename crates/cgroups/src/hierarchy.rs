//! Discovery of the cgroup hierarchies mounted on the host.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What kind of cgroup filesystem a hierarchy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HierarchyKind {
    /// A cgroup v1 hierarchy with the controllers (and `name=` options) it carries.
    V1 { controllers: Vec<String> },
    /// The cgroup v2 unified hierarchy.
    V2,
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub kind: HierarchyKind,
    /// Where the hierarchy is mounted.
    pub mountpoint: PathBuf,
    /// The cgroup that the mount's root directory shows (`/` unless the mount
    /// was made inside a cgroup namespace or is a bind mount of a sub-cgroup).
    pub root: String,
}

/// The overall shape of the host's cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only cgroup v1 hierarchies.
    Legacy,
    /// cgroup v1 controllers plus a cgroup2 mount (usually `/sys/fs/cgroup/unified`).
    Hybrid,
    /// Only cgroup v2, mounted at `/sys/fs/cgroup`.
    Unified,
}

impl Hierarchy {
    /// The key runc uses for this hierarchy in its cgroup path maps:
    /// the controller list for v1 (`cpu,cpuacct`, `name=systemd`), `""` for v2.
    pub fn key(&self) -> String {
        match &self.kind {
            HierarchyKind::V1 { controllers } => controllers.join(","),
            HierarchyKind::V2 => String::new(),
        }
    }

    pub fn has_controller(&self, name: &str) -> bool {
        match &self.kind {
            HierarchyKind::V1 { controllers } => controllers.iter().any(|c| c == name),
            HierarchyKind::V2 => false,
        }
    }

    /// Host path of `cgroup` (a path as /proc/<pid>/cgroup shows it) in this hierarchy.
    pub fn host_path(&self, cgroup: &str) -> PathBuf {
        let inner = cgroup
            .strip_prefix(self.root.as_str())
            .filter(|_| self.root != "/")
            .unwrap_or(cgroup);
        let inner = inner.trim_start_matches('/');
        if inner.is_empty() {
            self.mountpoint.clone()
        } else {
            self.mountpoint.join(inner)
        }
    }
}

/// All cgroup hierarchies visible in `/proc/self/mountinfo`, one entry per
/// hierarchy. Read once per process: cgroup filesystems are mounted at
/// boot, while mountinfo grows with every container's mounts (a shim asked
/// for stats every second on a node with 500 pods would otherwise read and
/// parse thousands of lines each time).
pub fn discover() -> Result<Vec<Hierarchy>> {
    static FOUND: std::sync::OnceLock<Vec<Hierarchy>> = std::sync::OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let found = discover_now()?;
    Ok(FOUND.get_or_init(|| found).clone())
}

fn discover_now() -> Result<Vec<Hierarchy>> {
    let path = Path::new("/proc/self/mountinfo");
    let text =
        berth_common::kernel_file::read_to_string(path).map_err(|source| Error::Mountinfo {
            path: path.to_owned(),
            source,
        })?;
    let hierarchies = parse_mountinfo(&text);
    if hierarchies.is_empty() {
        return Err(Error::NoHierarchy);
    }
    Ok(hierarchies)
}

/// Parses mountinfo text into cgroup hierarchies, keeping the first mount of each.
pub fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut post_fields = post.split(' ');
        let fstype = post_fields.next().unwrap_or("");
        let _source = post_fields.next();
        let super_opts = post_fields.next().unwrap_or("");
        let pre_fields: Vec<&str> = pre.split(' ').collect();
        if pre_fields.len() < 5 {
            continue;
        }
        let root = unescape_mountinfo(pre_fields[3]);
        let mountpoint = PathBuf::from(unescape_mountinfo(pre_fields[4]));
        let kind = match fstype {
            "cgroup2" => HierarchyKind::V2,
            "cgroup" => {
                let mut controllers: Vec<String> = super_opts
                    .split(',')
                    .filter(|opt| !is_generic_mount_option(opt))
                    .map(str::to_owned)
                    .collect();
                controllers.sort();
                HierarchyKind::V1 { controllers }
            }
            _ => continue,
        };
        if found.iter().any(|h| h.kind == kind) {
            continue;
        }
        found.push(Hierarchy {
            kind,
            mountpoint,
            root,
        });
    }
    found
}

fn is_generic_mount_option(opt: &str) -> bool {
    matches!(
        opt,
        "rw" | "ro" | "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode" | "nsdelegate"
    ) || opt.starts_with("release_agent=")
        || opt.starts_with("memory_")
        || opt.starts_with("favordynmods")
}

/// mountinfo escapes space, tab, newline and backslash as octal sequences.
fn unescape_mountinfo(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Classifies a set of hierarchies.
pub fn layout(hierarchies: &[Hierarchy]) -> Layout {
    let has_v1 = hierarchies
        .iter()
        .any(|h| matches!(h.kind, HierarchyKind::V1 { .. }));
    let has_v2 = hierarchies.iter().any(|h| h.kind == HierarchyKind::V2);
    match (has_v1, has_v2) {
        (true, true) => Layout::Hybrid,
        (false, true) => Layout::Unified,
        _ => Layout::Legacy,
    }
}

/// The cgroup of process `pid` ("self" allowed) in each hierarchy, keyed as
/// `/proc/<pid>/cgroup` keys them: controller list for v1, `""` for v2.
pub fn process_cgroups(pid: &str) -> Result<Vec<(String, String)>> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = berth_common::kernel_file::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    Ok(parse_proc_cgroup(&text))
}

pub fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let mut list: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
            list.sort_unstable();
            Some((list.join(","), path.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
99 31 0:32 /sub /mnt/again rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_mountinfo_is_parsed_once_per_hierarchy() {
        let h = parse_mountinfo(HYBRID);
        assert_eq!(h.len(), 5);
        assert_eq!(layout(&h), Layout::Hybrid);
        assert_eq!(h[3].key(), "name=systemd");
        assert_eq!(h[4].kind, HierarchyKind::V2);
        assert_eq!(h[4].mountpoint, PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn unified_only() {
        let h = parse_mountinfo(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert_eq!(layout(&h), Layout::Unified);
    }

    #[test]
    fn host_path_strips_mount_root() {
        let h = Hierarchy {
            kind: HierarchyKind::V2,
            mountpoint: "/sys/fs/cgroup".into(),
            root: "/kubepods".into(),
        };
        assert_eq!(
            h.host_path("/kubepods/pod1/c1"),
            PathBuf::from("/sys/fs/cgroup/pod1/c1")
        );
        let h = Hierarchy {
            root: "/".into(),
            ..h
        };
        assert_eq!(h.host_path("/"), PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn proc_cgroup_keys_are_sorted_controllers() {
        let v = parse_proc_cgroup("4:memory:/a\n2:cpuacct,cpu:/b\n0::/c\n");
        assert_eq!(
            v,
            vec![
                ("memory".into(), "/a".into()),
                ("cpu,cpuacct".into(), "/b".into()),
                ("".into(), "/c".into())
            ]
        );
    }

    #[test]
    fn escaped_mountpoints() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
