//! berthd's configuration: `/etc/berth/berth.toml` plus the drop-in files
//! of `/etc/berth/berth.d/*.toml`, merged in name order (later files win,
//! tables merge key by key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The shim berthd uses unless a handler names another one.
pub const BERTH_SHIM: &str = "containerd-shim-berth-v2";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data: images, snapshots, metadata.
    pub root: PathBuf,
    /// Runtime state: sockets, bundles, pod namespaces.
    pub state: PathBuf,
    /// The CRI socket (root only).
    pub socket: PathBuf,
    /// `cgroupfs` (systemd needs systemd running, which this build refuses).
    pub cgroup_driver: String,
    /// The handler for an empty `runtime_handler`.
    pub default_runtime: String,
    /// Runtime handlers by name, added to (or replacing) the built-in ones.
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// Registries reached over plain http besides localhost.
    pub insecure_registries: Vec<String>,
    pub max_concurrent_downloads: usize,
    /// Negative `oom_score_adj` values are raised to berthd's own when the
    /// host forbids lowering them (no CAP_SYS_RESOURCE), as containerd's
    /// `restrict_oom_score_adj` does. `auto` decides by trying.
    pub restrict_oom_score_adj: RestrictOom,
    /// Size of a pod's /dev/shm, bytes.
    pub shm_size: u64,
    /// Where shims find the shim binaries, in front of PATH.
    pub shim_dirs: Vec<PathBuf>,
    pub registry: RegistryConfig,
    /// Bounds on what a pulled image may unpack to (decompression bombs).
    pub unpack: UnpackConfig,
}

/// `[unpack]` in berth.toml: absent values take the image store's defaults
/// (per layer and per image max(8 × compressed size, 50 GiB); 5% of the
/// filesystem, at most 1 GiB, left free).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UnpackConfig {
    pub max_layer_bytes: Option<u64>,
    pub max_image_bytes: Option<u64>,
    pub reserve_bytes: Option<u64>,
}

/// Registry hosts and credentials, as containerd's CRI plugin configures
/// them (`config_path` is a certs.d directory of hosts.toml files).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub config_path: Option<PathBuf>,
    /// Inline mirrors: `[registry.mirrors."docker.io"] endpoint = [...]`.
    pub mirrors: BTreeMap<String, Mirror>,
    /// A docker config.json consulted when a pull brings no credentials.
    pub docker_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub endpoint: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: None,
            mirrors: BTreeMap::new(),
            docker_config: Some(PathBuf::from("/root/.docker/config.json")),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RestrictOom {
    #[default]
    Auto,
    True,
    False,
}

/// How containers of one handler run: a shim v2 binary, and for berth's
/// shim the OCI runtime it drives (none: berth in the shim's process).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    /// `io.containerd.<name>.<version>` as containerd spells runtimes; the
    /// shim binary is `containerd-shim-<name>-<version>`.
    pub runtime_type: Option<String>,
    /// The shim binary, by name (PATH) or path; overrides runtime_type.
    pub shim: Option<String>,
    /// The OCI runtime binary berth's shim drives (runc, crun, runsc).
    pub binary_name: Option<String>,
    /// That runtime's state root.
    pub root: Option<String>,
    pub systemd_cgroup: bool,
    /// Global flags for that binary (berth's shim only), e.g. runsc's
    /// `--network=none`.
    pub runtime_args: Vec<String>,
    /// Start a sandbox (pause) container for every pod. Sandboxed runtimes
    /// need one (gVisor, VM shims such as Kata); berth, runc and crun only
    /// when the pod shares a PID namespace. Default: decided by the handler.
    pub sandbox_container: Option<bool>,
}

/// The `mountOptions` an OCI runtime binary reports in `features` (runc
/// 1.1+, crun, berth), asked once per binary; empty if it cannot say.
fn oci_runtime_mount_options(binary: &str) -> std::collections::BTreeSet<String> {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, BTreeSet<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(known) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(binary) {
        return known.clone();
    }
    let options: BTreeSet<String> = std::process::Command::new(binary)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| {
            v["mountOptions"].as_array().map(|a| {
                a.iter()
                    .filter_map(|o| o.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(binary.to_owned(), options.clone());
    options
}

impl RuntimeHandler {
    fn oci(binary: &str) -> RuntimeHandler {
        RuntimeHandler {
            binary_name: Some(binary.to_owned()),
            ..Default::default()
        }
    }

    pub fn is_berth_shim(&self) -> bool {
        self.shim_binary().is_ok_and(|b| b.ends_with(BERTH_SHIM))
    }

    /// Whether containers of this handler really get recursively read-only
    /// mounts (CRI `recursive_read_only`): berth's runtime where the kernel
    /// has mount_setattr(2), an OCI runtime whose `features` lists `rro`,
    /// never a foreign shim (it cannot be asked).
    pub fn supports_recursive_read_only(&self) -> bool {
        if !self.is_berth_shim() {
            return false;
        }
        match &self.binary_name {
            None => berth_runtime::features::recursive_mount_attrs_supported(),
            Some(binary) => oci_runtime_mount_options(binary).contains("rro"),
        }
    }

    pub fn wants_sandbox_container(&self) -> bool {
        if let Some(v) = self.sandbox_container {
            return v;
        }
        let foreign_shim = self
            .shim_binary()
            .map(|b| !b.ends_with(BERTH_SHIM))
            .unwrap_or(false);
        let gvisor = self
            .binary_name
            .as_deref()
            .is_some_and(|b| b.rsplit('/').next() == Some("runsc"));
        foreign_shim || gvisor
    }

    /// The shim binary name or path.
    pub fn shim_binary(&self) -> Result<String> {
        if let Some(s) = &self.shim {
            return Ok(s.clone());
        }
        match &self.runtime_type {
            None => Ok(BERTH_SHIM.to_owned()),
            Some(t) => {
                let parts: Vec<&str> = t.split('.').collect();
                match parts.as_slice() {
                    ["io", "containerd", name, version]
                        if !name.is_empty() && !version.is_empty() =>
                    {
                        Ok(format!("containerd-shim-{name}-{version}"))
                    }
                    _ => Err(Error::InvalidArgument(format!(
                        "runtime_type {t:?}: expected io.containerd.<name>.<version>"
                    ))),
                }
            }
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            socket: PathBuf::from("/run/berth/berth.sock"),
            cgroup_driver: "cgroupfs".into(),
            default_runtime: "berth".into(),
            runtimes: BTreeMap::new(),
            insecure_registries: Vec::new(),
            max_concurrent_downloads: 3,
            restrict_oom_score_adj: RestrictOom::Auto,
            shm_size: 64 * 1024 * 1024,
            shim_dirs: Vec::new(),
            registry: RegistryConfig::default(),
            unpack: UnpackConfig::default(),
        }
    }
}

pub const DEFAULT_CONFIG: &str = "/etc/berth/berth.toml";

/// Deep-merges `over` into `base` (tables key by key, anything else replaced).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse_file(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

impl Config {
    /// Loads `path` (absent is fine when it is the default path) and the
    /// drop-ins of `<dir of path>/berth.d`.
    pub fn load(path: &Path, required: bool) -> Result<Config> {
        let mut table = toml::Table::new();
        if path.exists() || required {
            table = parse_file(path)?;
        }
        let dropins = path
            .parent()
            .map(|d| d.join("berth.d"))
            .unwrap_or_else(|| PathBuf::from("berth.d"));
        if let Ok(rd) = std::fs::read_dir(&dropins) {
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                merge(&mut table, parse_file(&f)?);
            }
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.cgroup_driver != "cgroupfs" && self.cgroup_driver != "systemd" {
            return Err(Error::Config(format!(
                "cgroup_driver {:?}: expected cgroupfs or systemd",
                self.cgroup_driver
            )));
        }
        for (name, h) in &self.runtimes {
            h.shim_binary()
                .map_err(|e| Error::Config(format!("runtimes.{name}: {e}")))?;
        }
        if self.handler(&self.default_runtime).is_none() {
            return Err(Error::Config(format!(
                "default_runtime {:?} is not a runtime handler",
                self.default_runtime
            )));
        }
        Ok(())
    }

    /// A handler by name: configured ones first, then the built-in berth,
    /// runc, crun and runsc.
    pub fn handler(&self, name: &str) -> Option<RuntimeHandler> {
        let name = if name.is_empty() {
            self.default_runtime.as_str()
        } else {
            name
        };
        if let Some(h) = self.runtimes.get(name) {
            return Some(h.clone());
        }
        match name {
            "berth" => Some(RuntimeHandler::default()),
            "runc" | "crun" | "runsc" => Some(RuntimeHandler::oci(name)),
            _ => None,
        }
    }

    /// Every handler name, for Status and RuntimeConfig.
    pub fn handler_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ["berth", "runc", "crun", "runsc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for k in self.runtimes.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        names
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.state.join("pods")
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.state.join("containers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_builtin_handlers() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.handler("").unwrap().shim_binary().unwrap(), BERTH_SHIM);
        assert_eq!(
            c.handler("crun").unwrap().binary_name.as_deref(),
            Some("crun")
        );
        assert!(c.handler("nope").is_none());
    }

    #[test]
    fn file_and_dropins_merge() {
        let dir = std::env::temp_dir().join(format!("berth-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("berth.d")).unwrap();
        std::fs::write(
            dir.join("berth.toml"),
            "root = \"/tmp/r\"\n[runtimes.kata]\nruntime_type = \"io.containerd.kata.v2\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("berth.d/10-x.toml"),
            "default_runtime = \"kata\"\n[runtimes.kata]\nsystemd_cgroup = false\n",
        )
        .unwrap();
        let c = Config::load(&dir.join("berth.toml"), true).unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/r"));
        assert_eq!(c.default_runtime, "kata");
        assert_eq!(
            c.handler("").unwrap().shim_binary().unwrap(),
            "containerd-shim-kata-v2"
        );
        std::fs::write(dir.join("berth.d/20-bad.toml"), "no_such_key = 1\n").unwrap();
        let err = Config::load(&dir.join("berth.toml"), true).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
        std::fs::write(
            dir.join("berth.d/20-bad.toml"),
            "[runtimes.x]\nruntime_type = \"bad\"\n",
        )
        .unwrap();
        let err = Config::load(&dir.join("berth.toml"), true).unwrap_err();
        assert!(err.to_string().contains("runtimes.x"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
