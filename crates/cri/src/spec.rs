//! The OCI spec of a container, from its CRI config, its pod and its image,
//! as containerd's CRI plugin builds it (what a kubelet expects).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::store::PodRecord;
use crate::user::UserDb;

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// The process arguments, as kubelet expects runtimes to merge them:
/// command replaces the entrypoint (and then the image's cmd is dropped),
/// args replace cmd.
pub fn process_args(
    config: &cri::ContainerConfig,
    image: &berth_image::ImageConfig,
) -> Result<Vec<String>> {
    let mut args = Vec::new();
    if !config.command.is_empty() {
        args.extend(config.command.iter().cloned());
        args.extend(config.args.iter().cloned());
    } else {
        args.extend(image.entrypoint.iter().cloned());
        if !config.args.is_empty() {
            args.extend(config.args.iter().cloned());
        } else {
            args.extend(image.cmd.iter().cloned());
        }
    }
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "no command: neither the container config nor the image gives one".into(),
        ));
    }
    Ok(args)
}

/// The environment: image first, then HOSTNAME, then the request (later
/// keys replace earlier ones, order of first appearance kept).
pub fn environment(image_env: &[String], hostname: &str, envs: &[cri::KeyValue]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut put = |k: &str, v: &str| {
        if !values.contains_key(k) {
            order.push(k.to_owned());
        }
        values.insert(k.to_owned(), v.to_owned());
    };
    let mut has_path = false;
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        has_path |= k == "PATH";
        put(k, v);
    }
    if !has_path {
        put("PATH", DEFAULT_PATH.trim_start_matches("PATH="));
    }
    if !hostname.is_empty() {
        put("HOSTNAME", hostname);
    }
    for kv in envs {
        put(&kv.key, &kv.value);
    }
    order
        .into_iter()
        .map(|k| {
            let v = &values[&k];
            format!("{k}={v}")
        })
        .collect()
}

fn clean_container_path(p: &str, what: &str) -> Result<String> {
    if !p.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "{what} {p:?} is not an absolute path"
        )));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(Error::InvalidArgument(format!(
                    "{what} {p:?} contains \"..\""
                )));
            }
            _ => {}
        }
    }
    Ok(out.display().to_string())
}

/// A device node for the container: path inside, type, major, minor, mode.
type DeviceNode = (String, char, u64, u64, u32);

/// A device node on the host, or all the nodes under a host directory.
fn host_devices(d: &cri::Device) -> Result<Vec<DeviceNode>> {
    let host = Path::new(&d.host_path);
    let md = std::fs::metadata(host)
        .map_err(|e| Error::InvalidArgument(format!("device {}: {e}", d.host_path)))?;
    let container_path = if d.container_path.is_empty() {
        d.host_path.clone()
    } else {
        clean_container_path(&d.container_path, "device container_path")?
    };
    let node = |path: &Path, md: &std::fs::Metadata| -> Option<(char, u64, u64, u32)> {
        let ft = md.file_type();
        let kind = if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else {
            return None;
        };
        let _ = path;
        let rdev = md.rdev();
        Some((
            kind,
            libc::major(rdev) as u64,
            libc::minor(rdev) as u64,
            md.mode() & 0o7777,
        ))
    };
    if md.is_dir() {
        let mut out = Vec::new();
        let mut stack = vec![host.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)
                .map_err(|e| Error::internal(dir.display(), e))?
                .flatten()
            {
                let p = e.path();
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(p);
                } else if let Some((k, maj, min, mode)) = node(&p, &m) {
                    let rel = p.strip_prefix(host).unwrap_or(&p);
                    out.push((
                        Path::new(&container_path).join(rel).display().to_string(),
                        k,
                        maj,
                        min,
                        mode,
                    ));
                }
            }
        }
        return Ok(out);
    }
    match node(host, &md) {
        Some((k, maj, min, mode)) => Ok(vec![(container_path, k, maj, min, mode)]),
        None => Err(Error::InvalidArgument(format!(
            "device {}: not a character or block device",
            d.host_path
        ))),
    }
}

fn device_access(permissions: &str) -> Result<String> {
    let p = if permissions.is_empty() {
        "rwm"
    } else {
        permissions
    };
    if p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        Ok(p.to_owned())
    } else {
        Err(Error::InvalidArgument(format!(
            "device permissions {permissions:?}: expected letters of rwm"
        )))
    }
}

/// Every device node of the host's /dev (privileged containers).
fn all_host_devices() -> Vec<cri::Device> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let name = e.file_name();
            if m.is_dir() {
                // Per-container instances, not host ones.
                if name != "pts" && name != "shm" && name != "mqueue" {
                    stack.push(p);
                }
            } else if (m.file_type().is_char_device() || m.file_type().is_block_device())
                && name != "console"
                && name != "ptmx"
            {
                out.push(cri::Device {
                    container_path: p.display().to_string(),
                    host_path: p.display().to_string(),
                    permissions: "rwm".into(),
                });
            }
        }
    }
    out
}

fn propagation(p: i32) -> &'static str {
    match cri::MountPropagation::try_from(p).unwrap_or(cri::MountPropagation::PropagationPrivate) {
        cri::MountPropagation::PropagationPrivate => "rprivate",
        cri::MountPropagation::PropagationHostToContainer => "rslave",
        cri::MountPropagation::PropagationBidirectional => "rshared",
    }
}

/// Resolves the seccomp profile (None: unconfined). The deprecated path
/// field is honoured for kubelets older than the `seccomp` message.
#[allow(deprecated)]
fn seccomp(
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    caps: &[String],
) -> Result<Option<Value>> {
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
        Want::Default => Ok(Some(
            serde_json::to_value(berth_runtime::seccomp::runtime_default(caps))
                .map_err(|e| Error::internal("the default seccomp profile", e))?,
        )),
        Want::File(path) => {
            if !path.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "seccomp localhost profile {path:?} is not an absolute path"
                )));
            }
            let raw = std::fs::read(&path)
                .map_err(|e| Error::InvalidArgument(format!("seccomp profile {path}: {e}")))?;
            let parsed: oci_spec::runtime::LinuxSeccomp = serde_json::from_slice(&raw)
                .map_err(|e| Error::InvalidArgument(format!("seccomp profile {path}: {e}")))?;
            Ok(Some(
                serde_json::to_value(parsed).map_err(|e| Error::internal("seccomp", e))?,
            ))
        }
    }
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}

/// The AppArmor profile, where AppArmor is enabled (ignored elsewhere, as
/// containerd does).
#[allow(deprecated)]
fn apparmor(sc: &cri::LinuxContainerSecurityContext, privileged: bool) -> Result<Option<String>> {
    if privileged || !apparmor_enabled() {
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

/// What a container spec is made from.
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub pod: &'a PodRecord,
    pub config: &'a cri::ContainerConfig,
    pub image: &'a berth_image::ImageConfig,
    pub image_name: &'a str,
    /// The mounted rootfs.
    pub rootfs: &'a Path,
    /// Raise negative oom_score_adj to this (no CAP_SYS_RESOURCE).
    pub oom_score_adj_floor: Option<i64>,
    /// The init pid of the target container (NamespaceMode TARGET).
    pub target_pid: Option<u32>,
}

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

/// A container's spec, and the user it runs as (for ContainerStatus).
pub struct BuiltSpec {
    pub spec: Value,
    pub user: (u32, u32, Vec<u32>),
}

/// The OCI `linux.resources` (without devices) for CRI container
/// resources: one mapping for CreateContainer and UpdateContainerResources.
pub fn oci_resources(r: &cri::LinuxContainerResources) -> serde_json::Map<String, Value> {
    let mut res = serde_json::Map::new();
    let mut memory = serde_json::Map::new();
    if r.memory_limit_in_bytes > 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    if !memory.is_empty() {
        res.insert("memory".into(), Value::Object(memory));
    }
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        res.insert("cpu".into(), Value::Object(cpu));
    }
    if !r.hugepage_limits.is_empty() {
        res.insert(
            "hugepageLimits".into(),
            json!(r
                .hugepage_limits
                .iter()
                .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                .collect::<Vec<_>>()),
        );
    }
    if !r.unified.is_empty() {
        res.insert("unified".into(), json!(r.unified));
    }
    res
}

/// Builds config.json for a container.
pub fn container_spec(input: &SpecInput) -> Result<BuiltSpec> {
    let config = input.config;
    let pod = input.pod;
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let resources = linux.resources.clone().unwrap_or_default();
    let privileged = sc.privileged;
    if privileged && !pod_privileged(&pod.config) {
        return Err(Error::InvalidArgument(
            "a privileged container needs a privileged pod sandbox".into(),
        ));
    }
    let pod_ns = pod_namespace_options(&pod.config);
    let ns = sc.namespace_options.clone().unwrap_or_default();
    if let Some(u) = &ns.userns_options {
        if u.mode != cri::NamespaceMode::Node as i32 {
            return Err(Error::Unimplemented(
                "user namespaces for pods are not supported yet".into(),
            ));
        }
    }

    let args = process_args(config, input.image)?;
    let hostname = pod.config.hostname.clone();
    let env = environment(&input.image.env, &hostname, &config.envs);
    let cwd = if !config.working_dir.is_empty() {
        clean_container_path(&config.working_dir, "working_dir")?
    } else {
        input
            .image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(Error::InvalidArgument(
            "run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }
    let users = UserDb::open(input.rootfs)?;
    let merge_groups = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Merge as i32;
    let user = users.resolve(
        sc.run_as_user.as_ref().map(|v| v.value),
        sc.run_as_group.as_ref().map(|v| v.value),
        &sc.run_as_username,
        input.image.user.as_deref().unwrap_or(""),
        &sc.supplemental_groups,
        merge_groups,
    )?;
    let caps = capabilities(sc.capabilities.as_ref(), privileged)?;
    let mut ambient = Vec::new();
    if let Some(c) = &sc.capabilities {
        for a in &c.add_ambient_capabilities {
            let n = normalize_cap(a);
            if !caps.contains(&n) {
                return Err(Error::InvalidArgument(format!(
                    "ambient capability {a} is not in the container's capability set"
                )));
            }
            ambient.push(n);
        }
    }
    let mut oom = resources.oom_score_adj;
    if !(-1000..=1000).contains(&oom) {
        return Err(Error::InvalidArgument(format!(
            "oom_score_adj {oom} is out of range -1000..1000"
        )));
    }
    if let Some(floor) = input.oom_score_adj_floor {
        oom = oom.max(floor);
    }

    let mut process = json!({
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": [], "ambient": ambient,
        },
        "noNewPrivileges": sc.no_new_privs,
        "oomScoreAdj": oom,
    });
    if let Some(profile) = apparmor(&sc, privileged)? {
        process["apparmorProfile"] = json!(profile);
    }

    // Mounts: the defaults, the pod's files, then the request's (which
    // replace any default at the same destination).
    let mut mounts: Vec<Value> = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged {"rw"} else {"ro"}]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged {"rw"} else {"ro"}]}),
    ];
    let file_mode = if sc.readonly_rootfs { "ro" } else { "rw" };
    let shm = match &pod.namespaces.ipc {
        Some(_) => pod.dir.join("shm"),
        None => PathBuf::from("/dev/shm"),
    };
    mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rprivate", "rw"]}));
    for (dest, file) in [
        ("/etc/hostname", "hostname"),
        ("/etc/hosts", "hosts"),
        ("/etc/resolv.conf", "resolv.conf"),
    ] {
        let source = pod.dir.join(file);
        if source.exists() {
            mounts.push(json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rprivate", file_mode]}));
        }
    }
    for m in &config.mounts {
        if m.image.is_some() {
            return Err(Error::Unimplemented(
                "image volume mounts are not supported yet".into(),
            ));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(Error::Unimplemented(
                "id-mapped mounts are not supported yet".into(),
            ));
        }
        let dest = clean_container_path(&m.container_path, "mount container_path")?;
        if m.host_path.is_empty() || !m.host_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "mount {dest}: host_path {:?} is not an absolute path",
                m.host_path
            )));
        }
        // As containerd (and kubelet's old dockershim): a missing source
        // becomes a directory.
        if std::fs::symlink_metadata(&m.host_path).is_err() {
            std::fs::create_dir_all(&m.host_path).map_err(|e| {
                Error::InvalidArgument(format!("mount source {}: {e}", m.host_path))
            })?;
        }
        let mut options = vec!["rbind".to_owned(), propagation(m.propagation).to_owned()];
        options.push(if m.readonly { "ro" } else { "rw" }.to_owned());
        if m.recursive_read_only {
            // As the CRI api.proto asks: rro needs readonly and private propagation.
            if !m.readonly {
                return Err(Error::InvalidArgument(format!(
                    "mount {dest}: recursive_read_only needs readonly"
                )));
            }
            if m.propagation != cri::MountPropagation::PropagationPrivate as i32 {
                return Err(Error::InvalidArgument(format!(
                    "mount {dest}: recursive_read_only needs private propagation"
                )));
            }
            options.push("rro".into());
        }
        mounts.retain(|x| x["destination"] != dest.as_str());
        mounts.push(
            json!({"destination": dest, "type": "bind", "source": m.host_path, "options": options}),
        );
    }
    // Parents before children.
    mounts.sort_by_key(|m| {
        Path::new(m["destination"].as_str().unwrap_or("/"))
            .components()
            .count()
    });
    let propagation_needed = config
        .mounts
        .iter()
        .map(|m| m.propagation)
        .max()
        .unwrap_or(0);
    let rootfs_propagation = match propagation_needed {
        2 => "rshared",
        1 => "rslave",
        _ => "rprivate",
    };

    // Namespaces.
    let mut namespaces = vec![json!({"type": "mount"})];
    match namespace_mode(ns.pid) {
        cri::NamespaceMode::Node => {}
        cri::NamespaceMode::Container => namespaces.push(json!({"type": "pid"})),
        cri::NamespaceMode::Pod => match &pod.namespaces.pid {
            Some(p) => namespaces.push(json!({"type": "pid", "path": p})),
            None => namespaces.push(json!({"type": "pid"})),
        },
        cri::NamespaceMode::Target => {
            let pid = input.target_pid.ok_or_else(|| {
                Error::NotFound(format!(
                    "target container {:?} is not running",
                    ns.target_id
                ))
            })?;
            namespaces.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
        }
    }
    if let Some(p) = &pod.namespaces.net {
        namespaces.push(json!({"type": "network", "path": p}));
    }
    if let Some(p) = &pod.namespaces.ipc {
        namespaces.push(json!({"type": "ipc", "path": p}));
    }
    if let Some(p) = &pod.namespaces.uts {
        namespaces.push(json!({"type": "uts", "path": p}));
    }
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() && !privileged {
        namespaces.push(json!({"type": "cgroup"}));
    }
    let _ = pod_ns;

    // Devices.
    let mut devices = Vec::new();
    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    let requested: Vec<cri::Device> = if privileged {
        let mut all = all_host_devices();
        all.extend(config.devices.iter().cloned());
        device_rules = vec![json!({"allow": true, "access": "rwm"})];
        all
    } else {
        config.devices.clone()
    };
    for d in &requested {
        let access = device_access(&d.permissions)?;
        for (path, kind, major, minor, mode) in host_devices(d)? {
            devices.push(json!({"path": path, "type": kind.to_string(), "major": major, "minor": minor, "fileMode": mode, "uid": 0, "gid": 0}));
            if !privileged {
                device_rules.push(json!({"allow": true, "type": kind.to_string(), "major": major, "minor": minor, "access": access}));
            }
        }
    }

    // Resources.
    let mut res = oci_resources(&resources);
    res.insert("devices".into(), json!(device_rules));
    let res = Value::Object(res);

    let cgroup_parent = if pod.cgroup_parent.is_empty() {
        "/berth".to_owned()
    } else {
        pod.cgroup_parent.clone()
    };
    let meta = config.metadata.clone().unwrap_or_default();
    let pod_meta = pod.config.metadata.clone().unwrap_or_default();
    // berth's own annotations steer the runtime: only berthd sets them.
    let mut annotations: serde_json::Map<String, Value> = config
        .annotations
        .iter()
        .filter(|(k, _)| !k.starts_with("io.github.berth."))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", pod.id.as_str()),
        ("io.kubernetes.cri.sandbox-name", pod_meta.name.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            pod_meta.namespace.as_str(),
        ),
        ("io.kubernetes.cri.sandbox-uid", pod_meta.uid.as_str()),
        ("io.kubernetes.cri.container-name", meta.name.as_str()),
        ("io.kubernetes.cri.image-name", input.image_name),
    ] {
        annotations.insert(k.into(), json!(v));
    }

    let mut linux = json!({
        "resources": res,
        "cgroupsPath": format!("{}/{}", cgroup_parent.trim_end_matches('/'), input.id),
        "namespaces": namespaces,
        "devices": devices,
        "rootfsPropagation": rootfs_propagation,
    });
    if !privileged {
        let masked: Vec<String> = if sc.masked_paths.is_empty() {
            DEFAULT_MASKED.iter().map(|s| s.to_string()).collect()
        } else {
            sc.masked_paths.clone()
        };
        let readonly: Vec<String> = if sc.readonly_paths.is_empty() {
            DEFAULT_READONLY.iter().map(|s| s.to_string()).collect()
        } else {
            sc.readonly_paths.clone()
        };
        linux["maskedPaths"] = json!(masked);
        linux["readonlyPaths"] = json!(readonly);
    }
    if let Some(s) = seccomp(&sc, privileged, &caps)? {
        linux["seccomp"] = s;
    }
    if let Some(se) = &sc.selinux_options {
        if !se.r#type.is_empty() || !se.level.is_empty() {
            let enabled = Path::new("/sys/fs/selinux/enforce").exists();
            if enabled {
                process["selinuxLabel"] = json!(format!(
                    "{}:{}:{}:{}",
                    se.user, se.role, se.r#type, se.level
                ));
            }
        }
    }

    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": input.rootfs, "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    });
    Ok(BuiltSpec {
        spec,
        user: (user.uid, user.gid, user.additional_gids),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entry: &[&str], cmd: &[&str]) -> berth_image::ImageConfig {
        berth_image::ImageConfig {
            entrypoint: entry.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        }
    }

    fn cfg(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn kubelet_argument_merging() {
        let img = image(&["/entry"], &["default"]);
        assert_eq!(
            process_args(&cfg(&[], &[]), &img).unwrap(),
            ["/entry", "default"]
        );
        assert_eq!(
            process_args(&cfg(&[], &["x"]), &img).unwrap(),
            ["/entry", "x"]
        );
        assert_eq!(process_args(&cfg(&["/cmd"], &[]), &img).unwrap(), ["/cmd"]);
        assert_eq!(
            process_args(&cfg(&["/cmd"], &["y"]), &img).unwrap(),
            ["/cmd", "y"]
        );
        assert!(process_args(&cfg(&[], &[]), &image(&[], &[])).is_err());
    }

    #[test]
    fn env_order_and_override() {
        let env = environment(
            &["PATH=/bin".into(), "A=image".into()],
            "web",
            &[
                cri::KeyValue {
                    key: "A".into(),
                    value: "pod".into(),
                },
                cri::KeyValue {
                    key: "B".into(),
                    value: "x=y".into(),
                },
            ],
        );
        assert_eq!(env, ["PATH=/bin", "A=pod", "HOSTNAME=web", "B=x=y"]);
        let env = environment(&[], "", &[]);
        assert_eq!(env, [DEFAULT_PATH]);
    }

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

    #[test]
    fn container_paths() {
        assert_eq!(clean_container_path("/a//b/./c/", "x").unwrap(), "/a/b/c");
        assert!(clean_container_path("/a/../etc", "x").is_err());
        assert!(clean_container_path("rel", "x").is_err());
    }
}
