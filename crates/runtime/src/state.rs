//! A container's persistent state under the runtime root, and its status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Context;
use crate::util;
use crate::{Error, Result};

pub const STATE_FILE: &str = "state.json";
/// Where the state is written while the init sets up.
const STAGED_STATE_FILE: &str = "state.json.staged";
pub const CONFIG_FILE: &str = "config.json";
pub const EXEC_FIFO: &str = "exec.fifo";

/// The OCI runtime-spec version berth implements and reports.
pub const OCI_VERSION: &str = "1.3.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What berth records about a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub init_pid: i32,
    /// Start time of the init process (clock ticks), to tell it from a later
    /// process that reuses its pid.
    pub init_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Cgroup directories by hierarchy key (controller list for v1, "" for v2).
    #[serde(default)]
    pub cgroup_paths: Vec<(String, PathBuf)>,
    /// Whether the container has its own PID namespace (so killing init kills all).
    #[serde(default)]
    pub own_pid_ns: bool,
    /// Hooks run after create, kept here so that start and delete need not
    /// parse config.json again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<oci_spec::runtime::Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<oci_spec::runtime::Hook>,
    /// Device and inode of the berth binary the init was started from when
    /// `run` did not use the sealed copy: until the init has executed its
    /// program, nothing may join it (see `cloned_exe::run_needs_sealed_copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsealed_exe: Option<(u64, u64)>,
}

/// A state file written by [`StateDir::stage`], not yet in place.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
}

/// The directory of one container under the runtime root.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path, id: &str) -> StateDir {
        StateDir {
            path: root.join(id),
        }
    }

    pub fn load(&self, id: &str) -> Result<State> {
        let file = self.path.join(STATE_FILE);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ContainerNotFound(id.to_owned()))
            }
            Err(e) => return Err(e).ctx(|| format!("reading {}", file.display())),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::ParseConfig {
            path: file,
            message: e.to_string(),
        })
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let data = serde_json::to_vec(state).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let file = self.path.join(STATE_FILE);
        util::write_atomic(&file, &data, 0o600).ctx(|| format!("writing {}", file.display()))
    }

    /// Writes `state` under a name no reader looks for, to be put in place
    /// by [`StateDir::commit`]: most of the cost of saving, paid while the
    /// init sets up.
    pub fn stage(&self, state: &State) -> Result<Staged> {
        let data = serde_json::to_vec(state).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let path = self.path.join(STAGED_STATE_FILE);
        util::write_file(&path, &data, 0o600).ctx(|| format!("writing {}", path.display()))?;
        Ok(Staged { path })
    }

    /// Puts a staged state file in place.
    pub fn commit(&self, staged: Staged) -> Result<()> {
        let file = self.path.join(STATE_FILE);
        std::fs::rename(&staged.path, &file).ctx(|| format!("writing {}", file.display()))
    }

    /// Removes the directory: the files berth keeps there by name, then the
    /// directory itself, walked only if something else was left in it
    /// (getdents and a walk cost more than four unlinks).
    pub fn remove(&self) -> std::io::Result<()> {
        for name in [STATE_FILE, CONFIG_FILE, EXEC_FIFO, STAGED_STATE_FILE] {
            match std::fs::remove_file(self.path.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                std::fs::remove_dir_all(&self.path)
            }
            other => other,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    pub fn fifo_path(&self) -> PathBuf {
        self.path.join(EXEC_FIFO)
    }
}

impl State {
    /// Whether the recorded init process is still the one we started.
    pub fn init_alive(&self) -> bool {
        matches!(util::proc_stat(self.init_pid), Some((s, start)) if start == self.init_start_time && s != 'Z' && s != 'X')
    }

    pub fn status(&self, dir: &StateDir) -> Status {
        if self.init_pid <= 0 || !self.init_alive() {
            return Status::Stopped;
        }
        // runc's order: a created container that was paused is "paused"
        // (and "created" again once resumed).
        if self.frozen() {
            return Status::Paused;
        }
        if dir.fifo_path().exists() {
            return Status::Created;
        }
        Status::Running
    }

    fn frozen(&self) -> bool {
        for (key, path) in &self.cgroup_paths {
            if key.split(',').any(|c| c == "freezer") {
                if let Ok(s) = std::fs::read_to_string(path.join("freezer.state")) {
                    return s.trim() == "FROZEN";
                }
            }
        }
        for (key, path) in &self.cgroup_paths {
            if key.is_empty() && self.cgroup_paths.len() == 1 {
                if let Ok(s) = std::fs::read_to_string(path.join("cgroup.freeze")) {
                    return s.trim() == "1";
                }
            }
        }
        false
    }

    /// The OCI state document (`berth state`, and hooks' stdin).
    pub fn oci_state(&self, status: Status) -> OciState {
        let pid = if status == Status::Stopped {
            0
        } else {
            self.init_pid
        };
        OciState {
            oci_version: OCI_VERSION.to_owned(),
            id: self.id.clone(),
            pid,
            status: status.as_str().to_owned(),
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: self.owner.clone(),
            annotations: self.annotations.clone(),
        }
    }

    pub fn cgroups(&self) -> berth_cgroups::Manager {
        berth_cgroups::Manager::from_paths(self.cgroup_paths.clone())
    }
}

/// The state JSON runc prints (`runc state`, `runc list --format json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OciState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The state passed to hooks on stdin: the spec's required fields.
pub fn hook_state(
    id: &str,
    status: Status,
    pid: i32,
    bundle: &Path,
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct HookState<'a> {
        #[serde(rename = "ociVersion")]
        oci_version: &'a str,
        id: &'a str,
        status: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
        bundle: &'a Path,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        annotations: &'a BTreeMap<String, String>,
    }
    let doc = HookState {
        oci_version: OCI_VERSION,
        id,
        status: status.as_str(),
        pid: (pid > 0).then_some(pid),
        bundle,
        annotations,
    };
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The ids of every container under `root`, sorted.
pub fn list_ids(root: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("reading {}", root.display())),
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(STATE_FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_takes_the_known_files_and_whatever_else_is_left() {
        let root = std::env::temp_dir().join(format!("berth-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for extra in [None, Some("leftover.tmp123")] {
            let dir = StateDir::new(&root, "c");
            std::fs::create_dir_all(&dir.path).unwrap();
            std::fs::write(dir.path.join(STATE_FILE), "{}").unwrap();
            std::fs::write(dir.config_path(), "{}").unwrap();
            if let Some(name) = extra {
                std::fs::write(dir.path.join(name), "x").unwrap();
            }
            dir.remove().unwrap();
            assert!(!dir.path.exists(), "{extra:?}");
        }
        let missing = StateDir::new(&root, "gone");
        assert_eq!(
            missing.remove().unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
