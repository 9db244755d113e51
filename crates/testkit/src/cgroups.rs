//! Cgroups (v1 hierarchies and cgroup2) as the host sees them: a cgroup's
//! directories in every hierarchy, its processes, and removing a whole
//! tree the test made.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::mounts::mounts;

/// Mount points of every cgroup (v1) and cgroup2 hierarchy.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|(_, fs)| fs == "cgroup" || fs == "cgroup2")
        .map(|(p, _)| p)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The directories of cgroup `rel` (e.g. "/ns/id") that exist in any hierarchy.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    cgroup_mounts()
        .into_iter()
        .map(|m| m.join(rel))
        .filter(|d| d.is_dir())
        .collect()
}

/// `dir` and every directory below it, deepest first.
fn subdirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            subdirs_deepest_first(&e.path(), out);
        }
    }
    out.push(dir.to_path_buf());
}

/// The pids in one cgroup directory's cgroup.procs.
fn procs_of(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .collect()
}

/// Kills every process in cgroup `rel` (all hierarchies, recursively: these
/// are the test's own containers) and removes the cgroup directories.
/// Returns the directories it could not remove within 10 s.
pub fn remove_cgroup_tree(rel: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for top in cgroup_dirs(rel) {
        subdirs_deepest_first(&top, &mut dirs);
    }
    if dirs.is_empty() {
        return dirs;
    }
    for d in &dirs {
        // A frozen process cannot die: thaw first (v1 freezer, v2 freeze).
        let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        let _ = std::fs::write(d.join("cgroup.freeze"), "0");
        for pid in procs_of(d) {
            // SAFETY: plain kill(2) of a process in the test's cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<PathBuf> = dirs
            .iter()
            .filter(|d| d.exists() && std::fs::remove_dir(d).is_err() && d.exists())
            .cloned()
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `timeout` for cgroup `rel` to disappear from every hierarchy;
/// returns the directories still there.
pub fn wait_cgroup_gone(rel: &str, timeout: Duration) -> Vec<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = cgroup_dirs(rel);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every pid in cgroup `rel` (its cgroup.procs in all hierarchies).
pub fn cgroup_pids(rel: &str) -> HashSet<i32> {
    cgroup_dirs(rel).iter().flat_map(|d| procs_of(d)).collect()
}

/// Every pid in cgroup `rel` or below it, in any hierarchy (each once, in
/// the order found).
pub fn pids_under(rel: &str) -> Vec<i32> {
    let mut dirs = Vec::new();
    for top in cgroup_dirs(rel) {
        subdirs_deepest_first(&top, &mut dirs);
    }
    let mut out = Vec::new();
    for pid in dirs.iter().flat_map(|d| procs_of(d)) {
        if !out.contains(&pid) {
            out.push(pid);
        }
    }
    out
}

/// The cgroup directories right below `rel` (e.g. the containers' own
/// under a pods' parent), in any hierarchy.
pub fn cgroups_below(rel: &str) -> Vec<PathBuf> {
    cgroup_dirs(rel)
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The freezer state of cgroup `rel` as seen on the host: freezer.state of
/// the v1 freezer hierarchy, else `frozen` of a v2 cgroup.events mapped to
/// FROZEN/THAWED. None if no hierarchy has the cgroup.
pub fn freezer_state(rel: &str) -> Option<String> {
    let dirs = cgroup_dirs(rel);
    if let Some(state) = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("freezer.state")).ok())
    {
        return Some(state.trim().to_owned());
    }
    dirs.iter().find_map(|d| {
        let events = std::fs::read_to_string(d.join("cgroup.events")).ok()?;
        let frozen = events.lines().find_map(|l| l.strip_prefix("frozen "))?;
        Some(
            if frozen.trim() == "1" {
                "FROZEN"
            } else {
                "THAWED"
            }
            .to_owned(),
        )
    })
}
