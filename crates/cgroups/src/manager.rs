//! A container's cgroup across every mounted hierarchy (cgroupfs driver).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::hierarchy::{self, Hierarchy};
use crate::{CgroupPath, Error, Result};

/// Which of a cgroup's hierarchies an operation covers. On a host with v1
/// hierarchies a container's cgroup can be made in two parts: the unified
/// hierarchy's before its init is cloned (into it), the v1 ones while the
/// init sets up its mounts (a v1 memory cgroup's mkdir alone takes about
/// 0.1 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    All,
    /// The unified hierarchy only.
    Unified,
    /// Every v1 hierarchy.
    V1,
}

impl Part {
    fn covers(self, key: &str) -> bool {
        match self {
            Part::All => true,
            Part::Unified => key.is_empty(),
            Part::V1 => !key.is_empty(),
        }
    }
}

/// The cgroup directories of one container, one per hierarchy, keyed as
/// runc keys them (controller list for v1, `""` for the unified hierarchy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    paths: Vec<(String, PathBuf)>,
    /// Where the unified hierarchy is mounted, when known (for delegating
    /// controllers on creation).
    unified_root: Option<PathBuf>,
}

impl Manager {
    /// Maps `path` onto every hierarchy mounted on this host.
    pub fn new(path: &CgroupPath) -> Result<Self> {
        let hierarchies = hierarchy::discover()?;
        let own = match path {
            CgroupPath::Relative(_) => hierarchy::process_cgroups("self")?,
            CgroupPath::Absolute(_) => Vec::new(),
        };
        Ok(Self::for_hierarchies(&hierarchies, &own, path))
    }

    /// Maps `path` onto `hierarchies`; `own` is the caller's cgroup in each
    /// hierarchy (as in /proc/self/cgroup), used for relative paths.
    pub fn for_hierarchies(
        hierarchies: &[Hierarchy],
        own: &[(String, String)],
        path: &CgroupPath,
    ) -> Self {
        let paths = hierarchies
            .iter()
            .map(|h| {
                let key = h.key();
                let dir = match path {
                    CgroupPath::Absolute(p) => h.mountpoint.join(p.trim_start_matches('/')),
                    CgroupPath::Relative(p) => {
                        let base = own
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map(|(_, cg)| h.host_path(cg))
                            .unwrap_or_else(|| h.mountpoint.clone());
                        base.join(p)
                    }
                };
                (key, dir)
            })
            .collect();
        let unified_root = hierarchies
            .iter()
            .find(|h| h.kind == crate::HierarchyKind::V2)
            .map(|h| h.mountpoint.clone());
        Manager {
            paths,
            unified_root,
        }
    }

    /// The cgroups process `pid` is in, in every hierarchy.
    pub fn of_process(pid: i32) -> Result<Self> {
        let hierarchies = hierarchy::discover()?;
        let own = hierarchy::process_cgroups(&pid.to_string())?;
        let paths = hierarchies
            .iter()
            .filter_map(|h| {
                let key = h.key();
                own.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, cg)| (key.clone(), h.host_path(cg)))
            })
            .collect();
        Ok(Manager {
            paths,
            unified_root: None,
        })
    }

    /// A manager for directories recorded earlier (for example in a state file).
    pub fn from_paths(paths: Vec<(String, PathBuf)>) -> Self {
        Manager {
            paths,
            unified_root: None,
        }
    }

    pub fn paths(&self) -> &[(String, PathBuf)] {
        &self.paths
    }

    /// The directory of the unified hierarchy, if the host has one.
    pub fn unified_path(&self) -> Option<&Path> {
        self.paths
            .iter()
            .find(|(k, _)| k.is_empty())
            .map(|(_, p)| p.as_path())
    }

    /// Whether the host has v1 hierarchies.
    pub fn has_v1(&self) -> bool {
        self.paths.iter().any(|(k, _)| !k.is_empty())
    }

    /// The directories `part` covers.
    pub(crate) fn part(&self, part: Part) -> impl Iterator<Item = &(String, PathBuf)> {
        self.paths.iter().filter(move |(k, _)| part.covers(k))
    }

    /// The directory of the v1 hierarchy carrying `controller`.
    pub fn v1_path(&self, controller: &str) -> Option<&Path> {
        self.paths
            .iter()
            .find(|(k, _)| k.split(',').any(|c| c == controller))
            .map(|(_, p)| p.as_path())
    }

    /// Creates the cgroup in every hierarchy (parents included), delegating
    /// the unified hierarchy's controllers down to it.
    pub fn create(&self) -> Result<()> {
        self.create_part(Part::All)
    }

    /// [`Manager::create`] for the hierarchies `part` covers.
    pub fn create_part(&self, part: Part) -> Result<()> {
        for (key, dir) in self.part(part) {
            let is_cpuset = key.split(',').any(|c| c == "cpuset");
            create_dir_chain(dir, is_cpuset).map_err(|source| Error::Create {
                path: dir.clone(),
                source,
            })?;
        }
        if let Some(root) = self.unified_root.as_ref().filter(|_| part.covers("")) {
            self.enable_v2_controllers(root);
        }
        Ok(())
    }

    /// Moves process `pid` into the cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        let text = pid.to_string();
        for (_, dir) in &self.paths {
            let file = dir.join("cgroup.procs");
            write_file(&file, text.as_bytes()).map_err(|source| Error::AddProcess {
                pid,
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Moves the calling thread into the cgroup, from inside the process
    /// being placed. Writing "0" (the caller itself) to a v1 `tasks` file is
    /// the one placement that skips the kernel's global threadgroup lock,
    /// whose first writer waits a whole RCU grace period (milliseconds):
    /// the caller must be single-threaded, so the thread is the process.
    /// Only the hierarchies `part` covers are joined (a child cloned with
    /// CLONE_INTO_CGROUP is already in the unified one).
    pub fn join_self(&self, part: Part) -> Result<()> {
        for (key, dir) in self.part(part) {
            let file = if key.is_empty() {
                dir.join("cgroup.procs")
            } else {
                dir.join("tasks")
            };
            write_file(&file, b"0").map_err(|source| Error::AddProcess {
                pid: 0,
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The processes in the cgroup (from the first hierarchy that has it).
    pub fn procs(&self) -> Result<Vec<i32>> {
        let mut last_err = None;
        for dir in self.preferred_dirs() {
            let file = dir.join("cgroup.procs");
            match fs::read_to_string(&file) {
                Ok(text) => {
                    return Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => last_err = Some(Error::Read { path: file, source }),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(Vec::new()),
        }
    }

    /// Whether the cgroup still exists in any hierarchy.
    pub fn exists(&self) -> bool {
        self.paths.iter().any(|(_, p)| p.is_dir())
    }

    /// Removes the cgroup (and any sub-cgroups the container made) everywhere.
    /// Busy cgroups are retried briefly, since exiting tasks leave them asynchronously.
    pub fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for (_, dir) in &self.paths {
            if let Err(source) = remove_tree(dir) {
                first_err.get_or_insert(Error::Remove {
                    path: dir.clone(),
                    source,
                });
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Directories in the order process listing prefers: the unified one when
    /// it is the only hierarchy, else a v1 hierarchy that tracks every task.
    fn preferred_dirs(&self) -> impl Iterator<Item = &Path> {
        let v1_first = self.paths.len() > 1;
        let mut dirs: Vec<&Path> = self.paths.iter().map(|(_, p)| p.as_path()).collect();
        if v1_first {
            let rank = |p: &&Path| -> u8 {
                let key = self
                    .paths
                    .iter()
                    .find(|(_, d)| d.as_path() == *p)
                    .map(|(k, _)| k.as_str())
                    .unwrap_or("");
                if key.split(',').any(|c| c == "pids" || c == "freezer") {
                    0
                } else if key.is_empty() {
                    2
                } else {
                    1
                }
            };
            dirs.sort_by_key(rank);
        }
        dirs.into_iter()
    }
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(data)
}

/// mkdir -p, then for a v1 cpuset cgroup its sets: one with empty sets
/// refuses every task.
fn create_dir_chain(dir: &Path, is_cpuset: bool) -> io::Result<()> {
    make_dirs(dir)?;
    if is_cpuset {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            fill_cpuset_file(dir, file)?;
        }
    }
    Ok(())
}

fn make_dirs(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            make_dirs(dir.parent().ok_or(e)?)?;
            match fs::create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

/// Copies the parent's set into `dir`'s empty `file`, filling the parent
/// first when it is empty too: a parent that already existed may have been
/// made a moment ago by another container's create that has not filled it
/// yet (containers of one pod are created concurrently), and copying its
/// empty set would leave this cgroup refusing tasks (ENOSPC).
fn fill_cpuset_file(dir: &Path, file: &str) -> io::Result<String> {
    let current = berth_common::kernel_file::read_to_string(dir.join(file))?;
    if !current.trim().is_empty() {
        return Ok(current);
    }
    let Some(parent) = dir.parent() else {
        return Ok(current);
    };
    let from_parent = fill_cpuset_file(parent, file)?;
    write_file(&dir.join(file), from_parent.trim().as_bytes())?;
    Ok(from_parent)
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    // Usually the cgroup is empty and has no children: one rmdir, no walk.
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {}
        Err(e) => return Err(e),
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    let mut delay = Duration::from_millis(1);
    for attempt in 0.. {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 8 => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy::parse_mountinfo;

    #[test]
    fn maps_relative_and_absolute_paths() {
        let h = parse_mountinfo(
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        );
        let own = vec![
            ("cpu".to_owned(), "/user".to_owned()),
            (String::new(), "/".to_owned()),
        ];
        let m = Manager::for_hierarchies(&h, &own, &CgroupPath::Relative("c1".into()));
        assert_eq!(
            m.v1_path("cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu/user/c1")
        );
        assert_eq!(
            m.unified_path().unwrap(),
            Path::new("/sys/fs/cgroup/unified/c1")
        );
        let m = Manager::for_hierarchies(&h, &own, &CgroupPath::Absolute("/k/c2".into()));
        assert_eq!(
            m.v1_path("cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu/k/c2")
        );
    }

    #[test]
    fn create_and_remove_in_a_plain_tree() {
        let tmp = std::env::temp_dir().join(format!("berth-cg-test-{}", std::process::id()));
        let dir = tmp.join("a/b");
        let m = Manager::from_paths(vec![("memory".into(), dir.clone())]);
        m.create().unwrap();
        assert!(dir.is_dir());
        fs::create_dir(dir.join("nested")).unwrap();
        m.remove().unwrap();
        assert!(!dir.exists());
        assert!(!m.exists());
        fs::remove_dir_all(&tmp).unwrap();
    }

    /// Containers of one pod are created at once, each making the pod's
    /// cgroup if it is missing: every one of them must end up with usable
    /// sets, not only the one that made the parent (real v1 cpuset).
    #[test]
    fn concurrent_creates_under_a_new_cpuset_parent_all_get_sets() {
        let root = Path::new("/sys/fs/cgroup/cpuset");
        if !root.join("cpuset.cpus").exists() {
            eprintln!("skipped: no v1 cpuset hierarchy here");
            return;
        }
        let want = berth_common::kernel_file::read_to_string(root.join("cpuset.cpus")).unwrap();
        for round in 0..20 {
            let parent = root.join(format!("berth-cg-race-{}-{round}", std::process::id()));
            let children: Vec<PathBuf> = (0..8).map(|i| parent.join(format!("c{i}"))).collect();
            let barrier = std::sync::Barrier::new(children.len());
            let results: Vec<(PathBuf, io::Result<()>)> = std::thread::scope(|s| {
                let handles: Vec<_> = children
                    .iter()
                    .map(|c| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            (c.clone(), create_dir_chain(c, true))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut bad = Vec::new();
            for (c, r) in &results {
                let cpus = berth_common::kernel_file::read_to_string(c.join("cpuset.cpus"))
                    .unwrap_or_default();
                if r.is_err() || cpus.trim() != want.trim() {
                    bad.push(format!("{}: {r:?}, cpus {cpus:?}", c.display()));
                }
            }
            for c in &children {
                let _ = fs::remove_dir(c);
            }
            fs::remove_dir(&parent).unwrap();
            assert!(bad.is_empty(), "round {round}: {bad:?}");
        }
    }
}
