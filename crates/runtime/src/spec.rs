//! Loading and validating a bundle's config.json.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::{Error, Result};

pub(crate) use berth_common::annotations::ROOTFS_HOST_NOSUID;

/// A parsed and validated bundle configuration.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// Absolute root filesystem directory.
    pub rootfs: PathBuf,
    pub spec: Spec,
    /// The config.json bytes as read, kept so the state directory can hold an
    /// exact copy without re-serialising.
    pub raw: Vec<u8>,
}

impl Bundle {
    /// Reads `<dir>/config.json`, parses and validates it for `create`/`run`.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::path::absolute(dir).map_err(|source| Error::ReadConfig {
            path: dir.to_owned(),
            source,
        })?;
        let config_path = dir.join("config.json");
        let raw = std::fs::read(&config_path).map_err(|source| Error::ReadConfig {
            path: config_path.clone(),
            source,
        })?;
        let spec = parse_spec(&raw).map_err(|message| Error::ParseConfig {
            path: config_path.clone(),
            message,
        })?;
        let rootfs = validate(&spec, &dir)?;
        Ok(Bundle {
            dir,
            rootfs,
            spec,
            raw,
        })
    }
}

/// Everything berth does with untrusted config.json bytes before it touches
/// the system: parse, validate, and interpret mount options, signals of
/// hooks and namespace plans. The fuzz target's entry point; never panics.
pub fn check_config_bytes(raw: &[u8]) {
    let Ok(spec) = parse_spec(raw) else { return };
    let _ = validate(&spec, Path::new("/nonexistent-bundle"));
    for m in spec.mounts().iter().flatten() {
        let _ = crate::mount_opts::parse(m.options().as_deref().unwrap_or_default());
    }
    let _ = crate::namespaces::time_offsets_text(&spec);
    let _ = serde_json::to_vec(&spec);
}

/// Parses config.json bytes; the error text names the line and column.
pub fn parse_spec(raw: &[u8]) -> std::result::Result<Spec, String> {
    serde_json::from_slice::<Spec>(raw).map_err(|e| e.to_string())
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidConfig(msg.into())
}

/// Checks what the runtime relies on and returns the absolute rootfs path.
/// Pure apart from checking that the root filesystem exists.
pub fn validate(spec: &Spec, bundle_dir: &Path) -> Result<PathBuf> {
    validate_version(spec.version())?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root is missing: a Linux container needs root.path"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle_dir.join(root.path())
    };
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process is missing"))?;
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Err(invalid("process.args must name the program to run"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(format!(
            "process.cwd {:?} must be an absolute path",
            process.cwd()
        )));
    }
    for var in process.env().as_deref().unwrap_or_default() {
        if !var.contains('=') || var.starts_with('=') || var.contains('\0') {
            return Err(invalid(format!(
                "process.env entry {var:?} is not NAME=value"
            )));
        }
    }
    for arg in args {
        if arg.contains('\0') {
            return Err(invalid(format!(
                "process.args entry {arg:?} contains a NUL byte"
            )));
        }
    }
    validate_linux(spec)?;
    validate_mounts(spec)?;
    validate_hooks(spec)?;
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(invalid(format!("root.path {rootfs:?} is not a directory"))),
        Err(e) => {
            return Err(Error::Sys {
                context: format!("root.path {rootfs:?}"),
                source: e,
            })
        }
    }
    Ok(rootfs)
}

/// Any 1.x version is accepted (1.0.0-rc forms included), as runc does.
pub fn validate_version(version: &str) -> Result<()> {
    if version.is_empty() {
        return Err(invalid("ociVersion is missing"));
    }
    let major = version.split(['.', '-', '+']).next().unwrap_or("");
    if major != "1" || !version.contains('.') {
        return Err(invalid(format!(
            "ociVersion {version:?} is not supported: berth implements runtime-spec 1.x"
        )));
    }
    Ok(())
}

fn validate_linux(spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Err(invalid("linux is missing: berth runs Linux containers"));
    };
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let mut seen = HashSet::new();
    for ns in namespaces {
        if !seen.insert(ns.typ()) {
            return Err(invalid(format!(
                "linux.namespaces lists the {} namespace twice",
                ns.typ()
            )));
        }
        if let Some(path) = ns.path() {
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "linux.namespaces: path {path:?} of the {} namespace must be absolute",
                    ns.typ()
                )));
            }
        }
    }
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    let new_ns = |t: LinuxNamespaceType| {
        namespaces
            .iter()
            .any(|n| n.typ() == t && n.path().is_none())
    };
    if !has(LinuxNamespaceType::Mount) {
        // As runc: the process is chrooted into the rootfs as it is. Unlike
        // runc, nothing is mounted in the host's mount namespace (runc
        // leaves such mounts behind on the host).
        let refuse = |what: &str| {
            Err(invalid(format!(
                "{what} needs a mount namespace: without one berth mounts nothing into the host's"
            )))
        };
        if spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
            return refuse("mounts");
        }
        if linux.masked_paths().as_ref().is_some_and(|m| !m.is_empty())
            || linux
                .readonly_paths()
                .as_ref()
                .is_some_and(|m| !m.is_empty())
        {
            return refuse("linux.maskedPaths/readonlyPaths");
        }
        if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return refuse("linux.devices");
        }
        if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
            return refuse("root.readonly");
        }
        if linux
            .rootfs_propagation()
            .as_ref()
            .is_some_and(|p| !p.is_empty())
        {
            return refuse("linux.rootfsPropagation");
        }
    }
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if new_ns(LinuxNamespaceType::User) {
        if linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty())
            || linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty())
        {
            return Err(invalid(
                "a new user namespace needs both linux.uidMappings and linux.gidMappings",
            ));
        }
    } else if has_maps && !has(LinuxNamespaceType::User) {
        // With a joined user namespace the mappings describe it (runc 1.2):
        // the init checks them against the namespace once it has joined,
        // and id-mapped mounts use them.
        return Err(invalid(
            "linux.uidMappings/gidMappings are set but the container has no user namespace",
        ));
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
        if !new_ns(LinuxNamespaceType::Time) {
            return Err(invalid("linux.timeOffsets needs a new time namespace"));
        }
        for key in linux.time_offsets().as_ref().unwrap().keys() {
            if key != "monotonic" && key != "boottime" {
                return Err(invalid(format!(
                    "linux.timeOffsets: unknown clock {key:?} (monotonic or boottime)"
                )));
            }
        }
    }
    // As runc: a joined UTS namespace counts (a pod's containers set the
    // pod's hostname in the namespace they share); the host's does not.
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(invalid(
            "hostname is set but the container has no UTS namespace of its own or joined",
        ));
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(invalid(
            "domainname is set but the container has no UTS namespace of its own or joined",
        ));
    }
    if let Some(prop) = linux.rootfs_propagation() {
        if !prop.is_empty() && crate::mount_opts::propagation_flag(prop).is_none() {
            return Err(invalid(format!(
                "linux.rootfsPropagation {prop:?} is not a propagation mode"
            )));
        }
    }
    if let Some(sysctls) = linux.sysctl() {
        for key in sysctls.keys() {
            validate_sysctl(key, &|t| has(t) && namespaces.iter().any(|n| n.typ() == t))?;
        }
    }
    // Relative masked and read-only paths are taken from the container's
    // root, as runc does.
    for path in linux
        .masked_paths()
        .iter()
        .flatten()
        .chain(linux.readonly_paths().iter().flatten())
    {
        if path.is_empty() {
            return Err(invalid("a masked or read-only path is empty"));
        }
    }
    for dev in linux.devices().iter().flatten() {
        if !dev.path().is_absolute() || !dev.path().starts_with("/dev") {
            return Err(invalid(format!(
                "linux.devices: path {:?} must be an absolute path under /dev",
                dev.path()
            )));
        }
    }
    Ok(())
}

/// Sysctls are only allowed where the container has the namespace that
/// scopes them, as runc checks: otherwise they would change the host.
fn validate_sysctl(key: &str, has_ns: &dyn Fn(LinuxNamespaceType) -> bool) -> Result<()> {
    if key.contains("..") || key.contains('\0') || key.starts_with(['.', '/']) {
        return Err(invalid(format!("sysctl {key:?} is not a valid name")));
    }
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let needed = if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        LinuxNamespaceType::Ipc
    } else if key.starts_with("net.") {
        LinuxNamespaceType::Network
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        LinuxNamespaceType::Uts
    } else {
        return Err(invalid(format!(
            "sysctl {key:?} is not namespaced: it would change the host"
        )));
    };
    if !has_ns(needed) {
        return Err(invalid(format!(
            "sysctl {key:?} needs the container's own {needed} namespace"
        )));
    }
    Ok(())
}

fn validate_mounts(spec: &Spec) -> Result<()> {
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        if dest.as_os_str().is_empty() {
            return Err(invalid("a mount has an empty destination"));
        }
        let idmapped = m.uid_mappings().is_some()
            || m.gid_mappings().is_some()
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "idmap" || o == "ridmap");
        if idmapped && !crate::idmap::supported() {
            return Err(invalid(format!(
                "mount {dest:?}: id-mapped mounts need mount_setattr(2) (Linux 5.12 or later)"
            )));
        }
    }
    Ok(())
}

fn validate_hooks(spec: &Spec) -> Result<()> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    #[allow(deprecated)]
    let all = [
        hooks.prestart(),
        hooks.create_runtime(),
        hooks.create_container(),
        hooks.start_container(),
        hooks.poststart(),
        hooks.poststop(),
    ];
    for hook in all.into_iter().flatten().flatten() {
        if !hook.path().is_absolute() {
            return Err(invalid(format!(
                "hook path {:?} must be absolute",
                hook.path()
            )));
        }
        if hook.timeout().is_some_and(|t| t <= 0) {
            return Err(invalid(format!(
                "hook {:?}: timeout must be a positive number of seconds",
                hook.path()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in ["1.0.0", "1.0.2-dev", "1.2.1", "1.3.0", "1.0.0-rc5"] {
            validate_version(ok).unwrap();
        }
        for bad in ["", "2.0.0", "0.9", "1", "banana"] {
            assert!(validate_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sysctl_scope() {
        let all = |_t| true;
        let none = |_t| false;
        validate_sysctl("net.ipv4.ip_forward", &all).unwrap();
        validate_sysctl("kernel.shmmax", &all).unwrap();
        assert!(validate_sysctl("net.ipv4.ip_forward", &none).is_err());
        assert!(validate_sysctl("vm.swappiness", &all).is_err());
        assert!(validate_sysctl("net/../../x", &all).is_err());
    }

    /// What the fuzz target runs, over seeds and simple mutations of them, so
    /// that CI (on stable Rust) replays the corpus.
    #[test]
    fn fuzz_corpus_replay_does_not_panic() {
        let seeds = [
            serde_json::to_vec(&crate::features::default_spec(false)).unwrap(),
            serde_json::to_vec(&crate::features::default_spec(true)).unwrap(),
            br#"{"ociVersion":"1.0.0","process":{"args":[""],"cwd":"/","user":{"uid":0,"gid":0},"rlimits":[{"type":"RLIMIT_NOFILE","soft":9,"hard":1}]},"root":{"path":""},"linux":{"namespaces":[{"type":"user"},{"type":"time"}],"timeOffsets":{"x":{}},"sysctl":{"..":""},"devices":[{"path":"rel","type":"a"}]},"mounts":[{"destination":"","options":["idmap"]}],"hooks":{"prestart":[{"path":"x","timeout":-1}]}}"#.to_vec(),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/config");
        let mut corpus: Vec<Vec<u8>> = seeds.to_vec();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            corpus.extend(
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok()),
            );
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in &corpus {
            check_config_bytes(seed);
            for _ in 0..300 {
                let mut m = seed.clone();
                if m.is_empty() {
                    break;
                }
                for _ in 0..(next() % 4 + 1) {
                    let i = (next() as usize) % m.len();
                    match next() % 3 {
                        0 => m[i] = next() as u8,
                        1 => {
                            m.remove(i);
                        }
                        _ => m.insert(i, b"{}[]\",:0-"[(next() % 9) as usize]),
                    }
                    if m.is_empty() {
                        break;
                    }
                }
                check_config_bytes(&m);
            }
        }
    }

    #[test]
    fn parse_errors_name_position() {
        let err = parse_spec(b"{\"ociVersion\": 5}").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
