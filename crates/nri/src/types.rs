//! Plain Rust types of what berthd tells NRI plugins and what they answer.
//!
//! They mirror NRI's messages field by field (same names, `Option` where
//! NRI wraps a scalar to say "unset") without protobuf's wrappers, so the
//! daemon never touches the generated code. Conversions to and from the
//! wire types live here too.

use std::collections::HashMap;

use protobuf::MessageField;

use crate::proto::nri as pb;

/// A pod as plugins see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSandbox {
    pub id: String,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub runtime_handler: String,
    pub linux: Option<LinuxPodSandbox>,
    /// The pod's pause (or first) process, 0 if none.
    pub pid: u32,
    pub ips: Vec<String>,
}

/// Linux specifics of a pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinuxPodSandbox {
    pub pod_overhead: Option<LinuxResources>,
    pub pod_resources: Option<LinuxResources>,
    pub cgroup_parent: String,
    pub cgroups_path: String,
    pub namespaces: Vec<LinuxNamespace>,
    pub resources: Option<LinuxResources>,
}

/// A container as plugins see it (at CreateContainer: as the runtime is
/// about to create it, before any adjustment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Container {
    pub id: String,
    pub pod_sandbox_id: String,
    pub name: String,
    pub state: ContainerState,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub args: Vec<String>,
    /// `KEY=value` entries, as in the OCI spec.
    pub env: Vec<String>,
    pub mounts: Vec<Mount>,
    pub hooks: Hooks,
    pub linux: LinuxContainer,
    /// The container's init process, 0 if none.
    pub pid: u32,
    pub rlimits: Vec<Rlimit>,
}

/// A container's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContainerState {
    #[default]
    Unknown,
    Created,
    Paused,
    Running,
    Stopped,
}

/// Linux specifics of a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinuxContainer {
    pub namespaces: Vec<LinuxNamespace>,
    pub devices: Vec<LinuxDevice>,
    pub resources: Option<LinuxResources>,
    pub oom_score_adj: Option<i64>,
    pub cgroups_path: String,
}

/// A namespace (`type` as in the OCI spec: pid, network, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxNamespace {
    pub r#type: String,
    pub path: String,
}

/// A mount, as in the OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub destination: String,
    pub r#type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// OCI hooks, by stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub create_container: Vec<Hook>,
    pub start_container: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl Hooks {
    /// Whether no stage has a hook.
    pub fn is_empty(&self) -> bool {
        self.prestart.is_empty()
            && self.create_runtime.is_empty()
            && self.create_container.is_empty()
            && self.start_container.is_empty()
            && self.poststart.is_empty()
            && self.poststop.is_empty()
    }
}

/// One OCI hook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hook {
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Seconds.
    pub timeout: Option<i64>,
}

/// A device node to create in the container, as in the OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxDevice {
    pub path: String,
    /// "c", "b", "u" or "p".
    pub r#type: String,
    pub major: i64,
    pub minor: i64,
    pub file_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A device cgroup rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxDeviceCgroup {
    pub allow: bool,
    pub r#type: String,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

/// Linux resources; `None` (or empty) fields are unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinuxResources {
    pub memory: LinuxMemory,
    pub cpu: LinuxCpu,
    pub hugepage_limits: Vec<HugepageLimit>,
    pub blockio_class: Option<String>,
    pub rdt_class: Option<String>,
    pub unified: HashMap<String, String>,
    pub devices: Vec<LinuxDeviceCgroup>,
    pub pids_limit: Option<i64>,
}

/// Memory resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxMemory {
    pub limit: Option<i64>,
    pub reservation: Option<i64>,
    pub swap: Option<i64>,
    pub kernel: Option<i64>,
    pub kernel_tcp: Option<i64>,
    pub swappiness: Option<u64>,
    pub disable_oom_killer: Option<bool>,
    pub use_hierarchy: Option<bool>,
}

/// CPU resources; empty `cpus`/`mems` are unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxCpu {
    pub shares: Option<u64>,
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub realtime_runtime: Option<i64>,
    pub realtime_period: Option<u64>,
    pub cpus: String,
    pub mems: String,
}

/// A hugepage limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

/// A POSIX rlimit (`type` as in the OCI spec, e.g. "RLIMIT_NOFILE").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rlimit {
    pub r#type: String,
    pub hard: u64,
    pub soft: u64,
}

/// The combined changes every plugin asked for a container being created,
/// conflict-free (no two plugins set the same thing). Apply it to the
/// container's OCI spec before creating the container; [`Self::apply_env`]
/// and the other `apply_*` helpers do it for plain collections.
///
/// Removals come first: a plugin may remove what the container had (an
/// annotation key, a mount destination, an env variable, a device path)
/// and may then set it anew, so apply `remove_*` then the additions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerAdjustment {
    /// Annotations to set (replacing any value of the same key).
    pub annotations: HashMap<String, String>,
    /// Annotation keys to remove.
    pub remove_annotations: Vec<String>,
    /// Mounts to add; each replaces any mount with the same destination.
    pub mounts: Vec<Mount>,
    /// Destinations whose mounts are removed.
    pub remove_mounts: Vec<String>,
    /// Env variables to set, in order, as (name, value).
    pub env: Vec<(String, String)>,
    /// Env variable names to remove.
    pub remove_env: Vec<String>,
    /// Hooks to append, by stage.
    pub hooks: Hooks,
    /// Devices to add; each replaces any device with the same path.
    pub devices: Vec<LinuxDevice>,
    /// Device paths to remove.
    pub remove_devices: Vec<String>,
    /// Resources to set: only the set fields change the container's.
    pub resources: LinuxResources,
    /// A new cgroups path, if a plugin set one.
    pub cgroups_path: Option<String>,
    /// Rlimits to set, each replacing any of the same type.
    pub rlimits: Vec<Rlimit>,
}

impl ContainerAdjustment {
    /// Whether no plugin asked for anything.
    pub fn is_empty(&self) -> bool {
        *self == ContainerAdjustment::default()
    }

    /// Applies the env removals and settings to `KEY=value` entries.
    pub fn apply_env(&self, env: &mut Vec<String>) {
        let key = |e: &str| e.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| !self.remove_env.contains(&key(e)));
        for (k, v) in &self.env {
            let entry = format!("{k}={v}");
            match env.iter_mut().find(|e| key(e) == *k) {
                Some(e) => *e = entry,
                None => env.push(entry),
            }
        }
    }

    /// Applies the annotation removals and settings.
    pub fn apply_annotations(&self, annotations: &mut HashMap<String, String>) {
        for k in &self.remove_annotations {
            annotations.remove(k);
        }
        for (k, v) in &self.annotations {
            annotations.insert(k.clone(), v.clone());
        }
    }

    /// Applies the mount removals and additions.
    pub fn apply_mounts(&self, mounts: &mut Vec<Mount>) {
        mounts.retain(|m| {
            !self.remove_mounts.contains(&m.destination)
                && !self.mounts.iter().any(|a| a.destination == m.destination)
        });
        mounts.extend(self.mounts.iter().cloned());
    }

    /// Applies the device removals and additions.
    pub fn apply_devices(&self, devices: &mut Vec<LinuxDevice>) {
        devices.retain(|d| {
            !self.remove_devices.contains(&d.path) && !self.devices.iter().any(|a| a.path == d.path)
        });
        devices.extend(self.devices.iter().cloned());
    }

    /// Applies the rlimits, replacing those of the same type.
    pub fn apply_rlimits(&self, rlimits: &mut Vec<Rlimit>) {
        rlimits.retain(|r| !self.rlimits.iter().any(|a| a.r#type == r.r#type));
        rlimits.extend(self.rlimits.iter().cloned());
    }
}

/// New resources for a container that is already created.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerUpdate {
    pub container_id: String,
    /// Only the set fields change.
    pub resources: LinuxResources,
    /// A failure to apply this update is not an error.
    pub ignore_failure: bool,
}

// ---- conversions to the wire ----

fn opt<T: Default, V>(v: Option<V>, set: impl FnOnce(&mut T, V)) -> MessageField<T> {
    match v {
        Some(v) => {
            let mut m = T::default();
            set(&mut m, v);
            MessageField::some(m)
        }
        None => MessageField::none(),
    }
}

macro_rules! wrap {
    ($ty:ident, $v:expr) => {
        opt($v, |m: &mut pb::$ty, v| m.value = v)
    };
}

macro_rules! unwrap_opt {
    ($f:expr) => {
        $f.as_ref().map(|w| w.value.clone())
    };
}

impl From<&PodSandbox> for pb::PodSandbox {
    fn from(p: &PodSandbox) -> Self {
        pb::PodSandbox {
            id: p.id.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            annotations: p.annotations.clone(),
            runtime_handler: p.runtime_handler.clone(),
            linux: p.linux.as_ref().map(pb::LinuxPodSandbox::from).into(),
            pid: p.pid,
            ips: p.ips.clone(),
            ..Default::default()
        }
    }
}

impl From<&LinuxPodSandbox> for pb::LinuxPodSandbox {
    fn from(l: &LinuxPodSandbox) -> Self {
        pb::LinuxPodSandbox {
            pod_overhead: l.pod_overhead.as_ref().map(pb::LinuxResources::from).into(),
            pod_resources: l
                .pod_resources
                .as_ref()
                .map(pb::LinuxResources::from)
                .into(),
            cgroup_parent: l.cgroup_parent.clone(),
            cgroups_path: l.cgroups_path.clone(),
            namespaces: l.namespaces.iter().map(pb::LinuxNamespace::from).collect(),
            resources: l.resources.as_ref().map(pb::LinuxResources::from).into(),
            ..Default::default()
        }
    }
}

impl From<&Container> for pb::Container {
    fn from(c: &Container) -> Self {
        let state = match c.state {
            ContainerState::Unknown => pb::ContainerState::CONTAINER_UNKNOWN,
            ContainerState::Created => pb::ContainerState::CONTAINER_CREATED,
            ContainerState::Paused => pb::ContainerState::CONTAINER_PAUSED,
            ContainerState::Running => pb::ContainerState::CONTAINER_RUNNING,
            ContainerState::Stopped => pb::ContainerState::CONTAINER_STOPPED,
        };
        pb::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.pod_sandbox_id.clone(),
            name: c.name.clone(),
            state: state.into(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
            mounts: c.mounts.iter().map(pb::Mount::from).collect(),
            hooks: MessageField::some(pb::Hooks::from(&c.hooks)),
            linux: MessageField::some(pb::LinuxContainer::from(&c.linux)),
            pid: c.pid,
            rlimits: c.rlimits.iter().map(pb::POSIXRlimit::from).collect(),
            ..Default::default()
        }
    }
}

impl From<&LinuxContainer> for pb::LinuxContainer {
    fn from(l: &LinuxContainer) -> Self {
        pb::LinuxContainer {
            namespaces: l.namespaces.iter().map(pb::LinuxNamespace::from).collect(),
            devices: l.devices.iter().map(pb::LinuxDevice::from).collect(),
            resources: l.resources.as_ref().map(pb::LinuxResources::from).into(),
            oom_score_adj: wrap!(OptionalInt, l.oom_score_adj),
            cgroups_path: l.cgroups_path.clone(),
            ..Default::default()
        }
    }
}

impl From<&LinuxNamespace> for pb::LinuxNamespace {
    fn from(n: &LinuxNamespace) -> Self {
        pb::LinuxNamespace {
            type_: n.r#type.clone(),
            path: n.path.clone(),
            ..Default::default()
        }
    }
}

impl From<&Mount> for pb::Mount {
    fn from(m: &Mount) -> Self {
        pb::Mount {
            destination: m.destination.clone(),
            type_: m.r#type.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
            ..Default::default()
        }
    }
}

impl From<&Hooks> for pb::Hooks {
    fn from(h: &Hooks) -> Self {
        let conv = |v: &Vec<Hook>| v.iter().map(pb::Hook::from).collect();
        pb::Hooks {
            prestart: conv(&h.prestart),
            create_runtime: conv(&h.create_runtime),
            create_container: conv(&h.create_container),
            start_container: conv(&h.start_container),
            poststart: conv(&h.poststart),
            poststop: conv(&h.poststop),
            ..Default::default()
        }
    }
}

impl From<&Hook> for pb::Hook {
    fn from(h: &Hook) -> Self {
        pb::Hook {
            path: h.path.clone(),
            args: h.args.clone(),
            env: h.env.clone(),
            timeout: wrap!(OptionalInt, h.timeout),
            ..Default::default()
        }
    }
}

impl From<&LinuxDevice> for pb::LinuxDevice {
    fn from(d: &LinuxDevice) -> Self {
        pb::LinuxDevice {
            path: d.path.clone(),
            type_: d.r#type.clone(),
            major: d.major,
            minor: d.minor,
            file_mode: wrap!(OptionalFileMode, d.file_mode),
            uid: wrap!(OptionalUInt32, d.uid),
            gid: wrap!(OptionalUInt32, d.gid),
            ..Default::default()
        }
    }
}

impl From<&Rlimit> for pb::POSIXRlimit {
    fn from(r: &Rlimit) -> Self {
        pb::POSIXRlimit {
            type_: r.r#type.clone(),
            hard: r.hard,
            soft: r.soft,
            ..Default::default()
        }
    }
}

impl From<&LinuxResources> for pb::LinuxResources {
    fn from(r: &LinuxResources) -> Self {
        let m = &r.memory;
        let c = &r.cpu;
        pb::LinuxResources {
            memory: MessageField::some(pb::LinuxMemory {
                limit: wrap!(OptionalInt64, m.limit),
                reservation: wrap!(OptionalInt64, m.reservation),
                swap: wrap!(OptionalInt64, m.swap),
                kernel: wrap!(OptionalInt64, m.kernel),
                kernel_tcp: wrap!(OptionalInt64, m.kernel_tcp),
                swappiness: wrap!(OptionalUInt64, m.swappiness),
                disable_oom_killer: wrap!(OptionalBool, m.disable_oom_killer),
                use_hierarchy: wrap!(OptionalBool, m.use_hierarchy),
                ..Default::default()
            }),
            cpu: MessageField::some(pb::LinuxCPU {
                shares: wrap!(OptionalUInt64, c.shares),
                quota: wrap!(OptionalInt64, c.quota),
                period: wrap!(OptionalUInt64, c.period),
                realtime_runtime: wrap!(OptionalInt64, c.realtime_runtime),
                realtime_period: wrap!(OptionalUInt64, c.realtime_period),
                cpus: c.cpus.clone(),
                mems: c.mems.clone(),
                ..Default::default()
            }),
            hugepage_limits: r
                .hugepage_limits
                .iter()
                .map(|h| pb::HugepageLimit {
                    page_size: h.page_size.clone(),
                    limit: h.limit,
                    ..Default::default()
                })
                .collect(),
            blockio_class: wrap!(OptionalString, r.blockio_class.clone()),
            rdt_class: wrap!(OptionalString, r.rdt_class.clone()),
            unified: r.unified.clone(),
            devices: r
                .devices
                .iter()
                .map(|d| pb::LinuxDeviceCgroup {
                    allow: d.allow,
                    type_: d.r#type.clone(),
                    major: wrap!(OptionalInt64, d.major),
                    minor: wrap!(OptionalInt64, d.minor),
                    access: d.access.clone(),
                    ..Default::default()
                })
                .collect(),
            pids: opt(r.pids_limit, |p: &mut pb::LinuxPids, v| p.limit = v),
            ..Default::default()
        }
    }
}

impl From<&ContainerUpdate> for pb::ContainerUpdate {
    fn from(u: &ContainerUpdate) -> Self {
        pb::ContainerUpdate {
            container_id: u.container_id.clone(),
            linux: MessageField::some(pb::LinuxContainerUpdate {
                resources: MessageField::some(pb::LinuxResources::from(&u.resources)),
                ..Default::default()
            }),
            ignore_failure: u.ignore_failure,
            ..Default::default()
        }
    }
}

// ---- conversions from the wire ----

impl From<&pb::Mount> for Mount {
    fn from(m: &pb::Mount) -> Self {
        Mount {
            destination: m.destination.clone(),
            r#type: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        }
    }
}

impl From<&pb::Hook> for Hook {
    fn from(h: &pb::Hook) -> Self {
        Hook {
            path: h.path.clone(),
            args: h.args.clone(),
            env: h.env.clone(),
            timeout: unwrap_opt!(h.timeout),
        }
    }
}

impl From<&pb::LinuxDevice> for LinuxDevice {
    fn from(d: &pb::LinuxDevice) -> Self {
        LinuxDevice {
            path: d.path.clone(),
            r#type: d.type_.clone(),
            major: d.major,
            minor: d.minor,
            file_mode: unwrap_opt!(d.file_mode),
            uid: unwrap_opt!(d.uid),
            gid: unwrap_opt!(d.gid),
        }
    }
}

impl From<&pb::POSIXRlimit> for Rlimit {
    fn from(r: &pb::POSIXRlimit) -> Self {
        Rlimit {
            r#type: r.type_.clone(),
            hard: r.hard,
            soft: r.soft,
        }
    }
}

impl From<&pb::LinuxResources> for LinuxResources {
    fn from(r: &pb::LinuxResources) -> Self {
        let mut out = LinuxResources::default();
        if let Some(m) = r.memory.as_ref() {
            out.memory = LinuxMemory {
                limit: unwrap_opt!(m.limit),
                reservation: unwrap_opt!(m.reservation),
                swap: unwrap_opt!(m.swap),
                kernel: unwrap_opt!(m.kernel),
                kernel_tcp: unwrap_opt!(m.kernel_tcp),
                swappiness: unwrap_opt!(m.swappiness),
                disable_oom_killer: unwrap_opt!(m.disable_oom_killer),
                use_hierarchy: unwrap_opt!(m.use_hierarchy),
            };
        }
        if let Some(c) = r.cpu.as_ref() {
            out.cpu = LinuxCpu {
                shares: unwrap_opt!(c.shares),
                quota: unwrap_opt!(c.quota),
                period: unwrap_opt!(c.period),
                realtime_runtime: unwrap_opt!(c.realtime_runtime),
                realtime_period: unwrap_opt!(c.realtime_period),
                cpus: c.cpus.clone(),
                mems: c.mems.clone(),
            };
        }
        out.hugepage_limits = r
            .hugepage_limits
            .iter()
            .map(|h| HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect();
        out.blockio_class = unwrap_opt!(r.blockio_class);
        out.rdt_class = unwrap_opt!(r.rdt_class);
        out.unified = r.unified.clone();
        out.devices = r
            .devices
            .iter()
            .map(|d| LinuxDeviceCgroup {
                allow: d.allow,
                r#type: d.type_.clone(),
                major: unwrap_opt!(d.major),
                minor: unwrap_opt!(d.minor),
                access: d.access.clone(),
            })
            .collect();
        out.pids_limit = r.pids.as_ref().map(|p| p.limit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_round_trip_keeps_unset_fields_unset() {
        let r = LinuxResources {
            memory: LinuxMemory {
                limit: Some(1 << 30),
                swappiness: Some(0),
                ..Default::default()
            },
            cpu: LinuxCpu {
                shares: Some(512),
                cpus: "0-1".into(),
                ..Default::default()
            },
            pids_limit: Some(100),
            unified: [("memory.high".to_string(), "1G".to_string())].into(),
            ..Default::default()
        };
        let wire = pb::LinuxResources::from(&r);
        assert!(wire.memory.reservation.is_none());
        assert_eq!(wire.memory.swappiness.value, 0);
        assert_eq!(LinuxResources::from(&wire), r);
    }

    #[test]
    fn adjustment_helpers_remove_then_set() {
        let a = ContainerAdjustment {
            env: vec![("A".into(), "new".into()), ("C".into(), "3".into())],
            remove_env: vec!["B".into()],
            mounts: vec![Mount {
                destination: "/data".into(),
                source: "/srv".into(),
                ..Default::default()
            }],
            remove_mounts: vec!["/tmp".into()],
            annotations: [("k".to_string(), "v".to_string())].into(),
            remove_annotations: vec!["gone".into()],
            ..Default::default()
        };
        let mut env = vec![
            "A=old".to_string(),
            "B=2".to_string(),
            "PATH=/bin".to_string(),
        ];
        a.apply_env(&mut env);
        assert_eq!(env, ["A=new", "PATH=/bin", "C=3"]);
        let mut mounts = vec![
            Mount {
                destination: "/tmp".into(),
                ..Default::default()
            },
            Mount {
                destination: "/data".into(),
                source: "/old".into(),
                ..Default::default()
            },
            Mount {
                destination: "/proc".into(),
                ..Default::default()
            },
        ];
        a.apply_mounts(&mut mounts);
        let dests: Vec<_> = mounts
            .iter()
            .map(|m| (m.destination.as_str(), m.source.as_str()))
            .collect();
        assert_eq!(dests, [("/proc", ""), ("/data", "/srv")]);
        let mut ann: HashMap<String, String> = [("gone".to_string(), "x".to_string())].into();
        a.apply_annotations(&mut ann);
        assert_eq!(ann, [("k".to_string(), "v".to_string())].into());
    }
}
