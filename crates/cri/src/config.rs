//! berthd's configuration: `/etc/berth/berth.toml` plus the drop-in files
//! of `/etc/berth/berth.d/*.toml`, merged in name order (later files win,
//! tables merge key by key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod servers;
pub use servers::{GrpcConfig, MetricsConfig, StreamConfig};

/// The shim berthd uses unless a handler names another one.
pub const BERTH_SHIM: &str = "containerd-shim-berth-v2";
/// The shim of the `vm` runtime class: each pod in a microVM.
pub const BERTH_VM_SHIM: &str = "containerd-shim-berth-vm-v2";

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
    /// Pod networking through CNI plugins.
    pub cni: CniConfig,
    /// The CRI server's own settings.
    pub grpc: GrpcConfig,
    /// The streaming server for Exec, Attach and PortForward.
    pub stream: StreamConfig,
    /// berthd's own Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// NRI plugins (off by default).
    pub nri: NriConfig,
}

/// `[nri]` in berth.toml: the Node Resource Interface, with containerd's
/// names and defaults (`[plugins."io.containerd.nri.v1.nri"]`). Off unless
/// `enable`; then plugins connect to `socket_path` (root-only) and may
/// adjust containers being created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NriConfig {
    pub enable: bool,
    pub socket_path: PathBuf,
    /// How long a connected plugin has to register, a Go duration ("5s").
    pub plugin_registration_timeout: String,
    /// How long a plugin has to answer one request before it is
    /// disconnected and the request goes on without it ("2s").
    pub plugin_request_timeout: String,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: false,
            socket_path: PathBuf::from(berth_nri::DEFAULT_SOCKET_PATH),
            plugin_registration_timeout: "5s".into(),
            plugin_request_timeout: "2s".into(),
        }
    }
}

impl NriConfig {
    /// berth-nri's settings, checked (timeouts parsed, above zero).
    pub fn nri_config(&self) -> Result<berth_nri::NriConfig> {
        let timeout = |name: &str, text: &str| {
            parse_go_duration(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "nri.{name} {text:?} is not a positive duration such as \"2s\" or \"500ms\""
                    ))
                })
        };
        Ok(berth_nri::NriConfig {
            enable: self.enable,
            socket_path: self.socket_path.clone(),
            plugin_registration_timeout: timeout(
                "plugin_registration_timeout",
                &self.plugin_registration_timeout,
            )?,
            plugin_request_timeout: timeout(
                "plugin_request_timeout",
                &self.plugin_request_timeout,
            )?,
            ..Default::default()
        })
    }
}

/// A duration as Go's `time.ParseDuration` writes it, which containerd's
/// configuration uses: decimal numbers, each with a unit (ns, us, µs, ms,
/// s, m, h), e.g. "1m30s", "1.5s"; a bare "0" is zero. None if malformed.
fn parse_go_duration(text: &str) -> Option<std::time::Duration> {
    match text {
        "" => return None,
        "0" => return Some(std::time::Duration::ZERO),
        _ => {}
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// `[cni]` in berth.toml, with containerd's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Where network configuration lists are found (the first by name).
    pub conf_dir: PathBuf,
    /// Where plugin binaries are looked for, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// How long one plugin may take before it is killed.
    pub plugin_timeout_seconds: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            plugin_timeout_seconds: 60,
        }
    }
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
    /// The `vm` class's shim only (`runtime_type =
    /// "io.containerd.berth-vm.v2"`): the hypervisor ("qemu", the only
    /// one), the guest's kernel and initramfs (default: `guest_dir`'s, from
    /// scripts/build-guest, default /var/lib/berth/vm), and each VM's vCPUs
    /// and memory beyond the pod's limits.
    pub hypervisor: Option<String>,
    pub guest_dir: Option<String>,
    pub kernel: Option<String>,
    pub initramfs: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// The longest a guest may take to boot, in seconds.
    pub boot_timeout: Option<u64>,
    /// Under TCG (no hardware virtualisation), QEMU's translation cache per
    /// VM, MiB: less host memory, more retranslation (0: QEMU's default).
    pub tcg_cache_mib: Option<u32>,
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

    /// Whether pods of this handler run in microVMs (berth's vm shim):
    /// their containers' pids are the guest's, not the host's.
    pub fn is_vm(&self) -> bool {
        self.shim_binary().is_ok_and(|b| b.ends_with(BERTH_VM_SHIM))
    }

    /// The `vm` settings the VM shim reads from the runtime options.
    pub fn vm_options(&self) -> serde_json::Value {
        let mut vm = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            vm.insert(k.to_owned(), v);
        };
        if let Some(d) = &self.guest_dir {
            put("guest_dir", d.clone().into());
        }
        if let Some(k) = &self.kernel {
            put("kernel", k.clone().into());
        }
        if let Some(i) = &self.initramfs {
            put("initramfs", i.clone().into());
        }
        if let Some(n) = self.vcpus {
            put("vcpus", n.into());
        }
        if let Some(m) = self.memory_mib {
            put("memory_mib", m.into());
        }
        if let Some(t) = self.boot_timeout {
            put("boot_timeout_secs", t.into());
        }
        if let Some(m) = self.tcg_cache_mib {
            put("tcg_cache_mib", m.into());
        }
        serde_json::Value::Object(vm)
    }

    fn validate_vm(&self) -> Result<()> {
        let vm_fields = self.hypervisor.is_some()
            || self.guest_dir.is_some()
            || self.kernel.is_some()
            || self.initramfs.is_some()
            || self.vcpus.is_some()
            || self.memory_mib.is_some()
            || self.boot_timeout.is_some()
            || self.tcg_cache_mib.is_some();
        if vm_fields && !self.is_vm() {
            return Err(Error::Config(format!(
                "hypervisor, guest_dir, kernel, initramfs, vcpus, memory_mib, boot_timeout and tcg_cache_mib \
                 are settings of the vm runtime class (runtime_type = \"io.containerd.berth-vm.v2\"), \
                 not of {}",
                self.shim_binary().unwrap_or_default()
            )));
        }
        if let Some(h) = self.hypervisor.as_deref().filter(|h| *h != "qemu") {
            return Err(Error::Config(format!(
                "hypervisor {h:?}: only \"qemu\" is supported"
            )));
        }
        if self.vcpus == Some(0) || self.memory_mib.is_some_and(|m| m < 64) {
            return Err(Error::Config(
                "a VM needs at least 1 vCPU and 64 MiB of memory".into(),
            ));
        }
        if self.is_vm() && (self.binary_name.is_some() || !self.runtime_args.is_empty()) {
            return Err(Error::Config(
                "the vm runtime class runs berth inside each VM: binary_name and runtime_args do not apply".into(),
            ));
        }
        Ok(())
    }

    /// Whether pods of this handler can have a user namespace of their own
    /// (hostUsers: false): berth's own runtime, which joins the pod's user
    /// namespace with the mappings and id-maps volumes. Whether this kernel
    /// can id-map a rootfs is probed by the service on top.
    pub fn supports_user_namespaces(&self) -> bool {
        self.is_berth_shim() && self.binary_name.is_none()
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
            None => berth_common::kernel::has_mount_setattr(),
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
            cni: CniConfig::default(),
            grpc: GrpcConfig::default(),
            stream: StreamConfig::default(),
            metrics: MetricsConfig::default(),
            nri: NriConfig::default(),
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
                .and_then(|_| h.validate_vm())
                .map_err(|e| Error::Config(format!("runtimes.{name}: {e}")))?;
        }
        self.grpc.busy_poll()?;
        self.stream.server_config()?;
        self.metrics.socket_addr()?;
        self.nri.nri_config()?;
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
    use std::time::Duration;

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
    fn nri_is_off_by_default_and_its_timeouts_are_go_durations() {
        let mut c = Config::default();
        let nri = c.nri.nri_config().unwrap();
        assert!(!nri.enable);
        assert_eq!(nri.socket_path, PathBuf::from("/var/run/nri/nri.sock"));
        assert_eq!(nri.plugin_registration_timeout, Duration::from_secs(5));
        assert_eq!(nri.plugin_request_timeout, Duration::from_secs(2));
        c.nri.plugin_request_timeout = "1m1.5s".into();
        assert_eq!(
            c.nri.nri_config().unwrap().plugin_request_timeout,
            Duration::from_millis(61_500)
        );
        for bad in ["", "2", "0", "0s", "2 s", "-1s", "1d", "s"] {
            c.nri.plugin_request_timeout = bad.into();
            let err = c.validate().unwrap_err();
            assert!(
                err.to_string().contains("nri.plugin_request_timeout"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
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
