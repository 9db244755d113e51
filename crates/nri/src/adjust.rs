//! Combining what several plugins ask for one request, as containerd/nri's
//! `adaptation/result.go` does: plugins are asked in index order, each sees
//! the container as the plugins before it left it, and every adjustable
//! field (one env variable, one mount destination, the memory limit, ...)
//! may be set by one plugin only; a second plugin touching it is an error
//! naming both ("plugins "20-b" and "10-a" both tried to set env FOO").
//! Removals (a key prefixed with '-') release what an earlier plugin set.

use std::collections::HashMap;

use crate::error::{NriError, Result};
use crate::proto::nri as pb;
use crate::types::{
    ContainerAdjustment, ContainerUpdate, LinuxDevice, LinuxResources, Mount, Rlimit,
};

/// NRI's removal marker: a key prefixed with '-'.
fn removal(key: &str) -> Option<&str> {
    key.strip_prefix('-')
}

fn env_key(entry: &str) -> &str {
    entry.split('=').next().unwrap_or_default()
}

/// Who set what: (container id, field) → plugin.
#[derive(Default)]
struct Owners(HashMap<(String, String), String>);

impl Owners {
    fn claim(&mut self, container: &str, what: String, plugin: &str) -> Result<()> {
        let key = (container.to_string(), what);
        if let Some(other) = self.0.get(&key) {
            return Err(NriError::Conflict {
                plugin: plugin.to_string(),
                other: other.clone(),
                what: key.1,
            });
        }
        self.0.insert(key, plugin.to_string());
        Ok(())
    }

    fn clear(&mut self, container: &str, what: String) {
        self.0.remove(&(container.to_string(), what));
    }
}

/// Merges the set fields of `src` into `dst`; `claim` is told each field
/// that changes.
pub(crate) fn merge_resources(
    dst: &mut LinuxResources,
    src: &LinuxResources,
    claim: &mut dyn FnMut(String) -> Result<()>,
) -> Result<()> {
    macro_rules! field {
        ($group:ident . $f:ident, $what:expr) => {
            if let Some(v) = &src.$group.$f {
                claim($what.to_string())?;
                dst.$group.$f = Some(v.clone());
            }
        };
    }
    field!(memory.limit, "memory limit");
    field!(memory.reservation, "memory reservation");
    field!(memory.swap, "memory swap limit");
    field!(memory.kernel, "memory kernel limit");
    field!(memory.kernel_tcp, "memory TCP limit");
    field!(memory.swappiness, "memory swappiness");
    field!(memory.disable_oom_killer, "memory disable OOM killer");
    field!(memory.use_hierarchy, "memory 'UseHierarchy'");
    field!(cpu.shares, "CPU shares");
    field!(cpu.quota, "CPU quota");
    field!(cpu.period, "CPU period");
    field!(cpu.realtime_runtime, "CPU realtime runtime");
    field!(cpu.realtime_period, "CPU realtime period");
    if !src.cpu.cpus.is_empty() {
        claim("CPU pinning".into())?;
        dst.cpu.cpus = src.cpu.cpus.clone();
    }
    if !src.cpu.mems.is_empty() {
        claim("memory pinning".into())?;
        dst.cpu.mems = src.cpu.mems.clone();
    }
    for h in &src.hugepage_limits {
        claim(format!("hugepage limit of size {}", h.page_size))?;
        dst.hugepage_limits.retain(|x| x.page_size != h.page_size);
        dst.hugepage_limits.push(h.clone());
    }
    let mut unified: Vec<_> = src.unified.iter().collect();
    unified.sort();
    for (k, v) in unified {
        claim(format!("unified resource {k}"))?;
        dst.unified.insert(k.clone(), v.clone());
    }
    if let Some(v) = &src.blockio_class {
        claim("block I/O class".into())?;
        dst.blockio_class = Some(v.clone());
    }
    if let Some(v) = &src.rdt_class {
        claim("RDT class".into())?;
        dst.rdt_class = Some(v.clone());
    }
    if let Some(v) = src.pids_limit {
        claim("pids limit".into())?;
        dst.pids_limit = Some(v);
    }
    // Device cgroup rules are only there for NRI v1 emulation; containerd
    // does not take them from plugins either.
    Ok(())
}

/// Names of the adjustment fields of NRI's API that berth does not apply
/// (and so does not declare): a plugin setting one is refused.
fn unsupported_adjustment(plugin: &str, adj: &pb::ContainerAdjustment) -> Result<()> {
    let name = |msg: &str, n: u32| -> String {
        let known = match (msg, n) {
            ("adjustment", 8) => "CDI devices",
            ("adjustment", 9) => "args",
            ("linux", 4) => "OOM score adjustment",
            ("linux", 5) => "I/O priority",
            ("linux", 6) => "seccomp policy",
            ("linux", 7) => "namespaces",
            ("linux", 8) => "sysctls",
            ("linux", 9) => "network devices",
            ("linux", 10) => "scheduling policy",
            ("linux", 11) => "RDT",
            ("linux", 12) => "memory policy",
            _ => "",
        };
        if known.is_empty() {
            format!("an adjustment of unknown field {n} ({msg})")
        } else {
            format!("an adjustment of {known}")
        }
    };
    let refuse = |what: String| {
        Err(NriError::Unsupported {
            plugin: plugin.to_string(),
            what,
        })
    };
    if let Some((n, _)) = adj.special_fields.unknown_fields().iter().next() {
        return refuse(name("adjustment", n));
    }
    if let Some(l) = adj.linux.as_ref() {
        if let Some((n, _)) = l.special_fields.unknown_fields().iter().next() {
            return refuse(name("linux", n));
        }
    }
    Ok(())
}

/// The combined answers to one request.
pub(crate) struct Collector {
    /// The container being created, as the next plugin is to see it.
    pub(crate) container: Option<pb::Container>,
    pub(crate) adjust: ContainerAdjustment,
    owners: Owners,
    /// Updates of other containers, in the order first asked.
    updates: Vec<ContainerUpdate>,
    /// The container of an UpdateContainer request and its resources.
    target: Option<(String, LinuxResources)>,
}

impl Collector {
    fn new() -> Collector {
        Collector {
            container: None,
            adjust: ContainerAdjustment::default(),
            owners: Owners::default(),
            updates: Vec::new(),
            target: None,
        }
    }

    /// For a CreateContainer request about `container`.
    pub(crate) fn for_create(container: pb::Container) -> Collector {
        Collector {
            container: Some(container),
            ..Collector::new()
        }
    }

    /// For an UpdateContainer request of `id` to `resources`.
    pub(crate) fn for_update(id: &str, resources: LinuxResources) -> Collector {
        Collector {
            target: Some((id.to_string(), resources)),
            ..Collector::new()
        }
    }

    /// For requests whose answers only update other containers.
    pub(crate) fn for_updates() -> Collector {
        Collector::new()
    }

    /// The resources an UpdateContainer request ends with.
    pub(crate) fn target_resources(&self) -> Option<&LinuxResources> {
        self.target.as_ref().map(|(_, r)| r)
    }

    /// The updates of other containers.
    pub(crate) fn into_updates(self) -> Vec<ContainerUpdate> {
        self.updates
    }

    /// Takes one plugin's adjustment of the container being created.
    pub(crate) fn adjust(&mut self, plugin: &str, adj: &pb::ContainerAdjustment) -> Result<()> {
        unsupported_adjustment(plugin, adj)?;
        let Some(container) = self.container.as_mut() else {
            return Ok(());
        };
        let id = container.id.clone();
        let out = &mut self.adjust;
        let owners = &mut self.owners;

        // Annotations.
        let mut keys: Vec<_> = adj.annotations.iter().collect();
        keys.sort();
        for (k, _) in keys.iter().filter(|(k, _)| removal(k).is_some()) {
            let k = removal(k).unwrap_or_default().to_string();
            owners.clear(&id, format!("annotation {k}"));
            out.annotations.remove(&k);
            container.annotations.remove(&k);
            if !out.remove_annotations.contains(&k) {
                out.remove_annotations.push(k);
            }
        }
        for (k, v) in keys.iter().filter(|(k, _)| removal(k).is_none()) {
            owners.claim(&id, format!("annotation {k}"), plugin)?;
            out.annotations.insert(k.to_string(), v.to_string());
            container.annotations.insert(k.to_string(), v.to_string());
        }

        // Mounts, by destination.
        let (del, add): (Vec<&pb::Mount>, Vec<&pb::Mount>) = adj
            .mounts
            .iter()
            .partition(|m| removal(&m.destination).is_some());
        for m in del {
            let dest = removal(&m.destination).unwrap_or_default().to_string();
            owners.clear(&id, format!("mount {dest}"));
            out.mounts.retain(|x| x.destination != dest);
            container.mounts.retain(|x| x.destination != dest);
            if !out.remove_mounts.contains(&dest) {
                out.remove_mounts.push(dest);
            }
        }
        for m in add {
            owners.claim(&id, format!("mount {}", m.destination), plugin)?;
            container.mounts.retain(|x| x.destination != m.destination);
            container.mounts.push(m.clone());
            out.mounts.push(Mount::from(m));
        }

        // Environment, by name.
        let (del, add): (Vec<&pb::KeyValue>, Vec<&pb::KeyValue>) =
            adj.env.iter().partition(|e| removal(&e.key).is_some());
        for e in del {
            let key = removal(&e.key).unwrap_or_default().to_string();
            owners.clear(&id, format!("env {key}"));
            out.env.retain(|(k, _)| *k != key);
            container.env.retain(|x| env_key(x) != key);
            if !out.remove_env.contains(&key) {
                out.remove_env.push(key);
            }
        }
        for e in add {
            owners.claim(&id, format!("env {}", e.key), plugin)?;
            container.env.retain(|x| env_key(x) != e.key);
            container.env.push(format!("{}={}", e.key, e.value));
            out.env.push((e.key.clone(), e.value.clone()));
        }

        // Hooks are appended, never a conflict.
        if let Some(h) = adj.hooks.as_ref() {
            let hooks = container.hooks.mut_or_insert_default();
            macro_rules! stage {
                ($s:ident) => {
                    hooks.$s.extend(h.$s.iter().cloned());
                    out.hooks
                        .$s
                        .extend(h.$s.iter().map(crate::types::Hook::from));
                };
            }
            stage!(prestart);
            stage!(create_runtime);
            stage!(create_container);
            stage!(start_container);
            stage!(poststart);
            stage!(poststop);
        }

        if let Some(l) = adj.linux.as_ref() {
            let linux = container.linux.mut_or_insert_default();
            // Devices, by path.
            let (del, add): (Vec<&pb::LinuxDevice>, Vec<&pb::LinuxDevice>) =
                l.devices.iter().partition(|d| removal(&d.path).is_some());
            for d in del {
                let path = removal(&d.path).unwrap_or_default().to_string();
                owners.clear(&id, format!("device {path}"));
                out.devices.retain(|x| x.path != path);
                linux.devices.retain(|x| x.path != path);
                if !out.remove_devices.contains(&path) {
                    out.remove_devices.push(path);
                }
            }
            for d in add {
                owners.claim(&id, format!("device {}", d.path), plugin)?;
                linux.devices.retain(|x| x.path != d.path);
                linux.devices.push(d.clone());
                out.devices.push(LinuxDevice::from(d));
            }
            // Resources, field by field.
            if let Some(r) = l.resources.as_ref() {
                let asked = LinuxResources::from(r);
                merge_resources(&mut out.resources, &asked, &mut |what| {
                    owners.claim(&id, what, plugin)
                })?;
                let mut seen = linux
                    .resources
                    .as_ref()
                    .map(LinuxResources::from)
                    .unwrap_or_default();
                merge_resources(&mut seen, &asked, &mut |_| Ok(()))?;
                linux.resources = protobuf::MessageField::some(pb::LinuxResources::from(&seen));
            }
            if !l.cgroups_path.is_empty() {
                owners.claim(&id, "cgroups path".into(), plugin)?;
                out.cgroups_path = Some(l.cgroups_path.clone());
                linux.cgroups_path = l.cgroups_path.clone();
            }
        }

        // Rlimits, by type.
        for r in &adj.rlimits {
            owners.claim(&id, format!("rlimit {}", r.type_), plugin)?;
            container.rlimits.retain(|x| x.type_ != r.type_);
            container.rlimits.push(r.clone());
            out.rlimits.retain(|x| x.r#type != r.type_);
            out.rlimits.push(Rlimit::from(r));
        }
        Ok(())
    }

    /// Takes one plugin's updates of existing containers.
    pub(crate) fn update(&mut self, plugin: &str, updates: &[pb::ContainerUpdate]) -> Result<()> {
        for u in updates {
            let id = u.container_id.as_str();
            if let Some(c) = &self.container {
                if c.id == id {
                    return Err(NriError::UpdateDuringCreate {
                        plugin: plugin.to_string(),
                        container: id.to_string(),
                    });
                }
            }
            let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
                continue;
            };
            let asked = LinuxResources::from(r);
            // Work on a copy: an ignored failure changes nothing.
            let (mut res, ignore) = match &self.target {
                Some((t, res)) if t == id => (res.clone(), u.ignore_failure),
                _ => match self.updates.iter().find(|x| x.container_id == id) {
                    Some(x) => (x.resources.clone(), u.ignore_failure),
                    None => (LinuxResources::default(), u.ignore_failure),
                },
            };
            let owners = &mut self.owners;
            match merge_resources(&mut res, &asked, &mut |what| owners.claim(id, what, plugin)) {
                Ok(()) => {}
                Err(_) if ignore => continue,
                Err(e) => return Err(e),
            }
            match &mut self.target {
                Some((t, target)) if t == id => *target = res,
                _ => match self.updates.iter_mut().find(|x| x.container_id == id) {
                    Some(x) => {
                        x.resources = res;
                        x.ignore_failure &= u.ignore_failure;
                    }
                    None => self.updates.push(ContainerUpdate {
                        container_id: id.to_string(),
                        resources: res,
                        ignore_failure: u.ignore_failure,
                    }),
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::MessageField;

    fn kv(k: &str, v: &str) -> pb::KeyValue {
        pb::KeyValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }
    }

    fn created(env: &[&str]) -> Collector {
        Collector::for_create(pb::Container {
            id: "c1".into(),
            env: env.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn env_from_two_plugins_combines_and_later_plugins_see_it() {
        let mut c = created(&["PATH=/bin", "OLD=1"]);
        c.adjust(
            "10-a",
            &pb::ContainerAdjustment {
                env: vec![kv("A", "1"), kv("-OLD", "")],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.container.as_ref().unwrap().env, ["PATH=/bin", "A=1"]);
        c.adjust(
            "20-b",
            &pb::ContainerAdjustment {
                env: vec![kv("B", "2")],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.adjust.env,
            [("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(c.adjust.remove_env, ["OLD"]);
    }

    #[test]
    fn same_env_from_two_plugins_is_a_conflict_naming_both() {
        let mut c = created(&[]);
        c.adjust(
            "10-a",
            &pb::ContainerAdjustment {
                env: vec![kv("X", "1")],
                ..Default::default()
            },
        )
        .unwrap();
        let e = c.adjust(
            "20-b",
            &pb::ContainerAdjustment {
                env: vec![kv("X", "2")],
                ..Default::default()
            },
        );
        let msg = e.unwrap_err().to_string();
        assert!(
            msg.contains("\"20-b\" and \"10-a\" both tried to set env X"),
            "{msg}"
        );
    }

    #[test]
    fn removal_releases_an_earlier_plugins_claim() {
        let mut c = created(&[]);
        c.adjust(
            "10-a",
            &pb::ContainerAdjustment {
                env: vec![kv("X", "1")],
                ..Default::default()
            },
        )
        .unwrap();
        c.adjust(
            "20-b",
            &pb::ContainerAdjustment {
                env: vec![kv("-X", ""), kv("X", "2")],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.adjust.env, [("X".into(), "2".into())]);
    }

    #[test]
    fn resources_conflict_per_field() {
        let mut c = created(&[]);
        let mem = |limit| pb::ContainerAdjustment {
            linux: MessageField::some(pb::LinuxContainerAdjustment {
                resources: MessageField::some(pb::LinuxResources::from(&LinuxResources {
                    memory: crate::types::LinuxMemory {
                        limit: Some(limit),
                        ..Default::default()
                    },
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.adjust("10-a", &mem(100)).unwrap();
        assert_eq!(c.adjust.resources.memory.limit, Some(100));
        let cpu = pb::ContainerAdjustment {
            linux: MessageField::some(pb::LinuxContainerAdjustment {
                resources: MessageField::some(pb::LinuxResources::from(&LinuxResources {
                    cpu: crate::types::LinuxCpu {
                        cpus: "1".into(),
                        ..Default::default()
                    },
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.adjust("20-b", &cpu).unwrap();
        let e = c.adjust("30-c", &mem(200)).unwrap_err().to_string();
        assert!(
            e.contains("\"30-c\" and \"10-a\" both tried to set memory limit"),
            "{e}"
        );
    }

    #[test]
    fn updates_merge_per_container_and_refuse_the_one_being_created() {
        let mut c = created(&[]);
        let upd = |id: &str, shares| pb::ContainerUpdate {
            container_id: id.into(),
            linux: MessageField::some(pb::LinuxContainerUpdate {
                resources: MessageField::some(pb::LinuxResources::from(&LinuxResources {
                    cpu: crate::types::LinuxCpu {
                        shares: Some(shares),
                        ..Default::default()
                    },
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.update("10-a", &[upd("other", 10)]).unwrap();
        assert!(c.update("20-b", &[upd("other", 20)]).is_err());
        let e = c.update("20-b", &[upd("c1", 20)]).unwrap_err();
        assert!(matches!(e, NriError::UpdateDuringCreate { .. }));
        assert_eq!(c.into_updates()[0].resources.cpu.shares, Some(10));
    }

    #[test]
    fn update_request_resources_are_overridden_by_plugins() {
        let asked = LinuxResources {
            cpu: crate::types::LinuxCpu {
                shares: Some(1),
                quota: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut c = Collector::for_update("c1", asked);
        let u = pb::ContainerUpdate {
            container_id: "c1".into(),
            linux: MessageField::some(pb::LinuxContainerUpdate {
                resources: MessageField::some(pb::LinuxResources::from(&LinuxResources {
                    cpu: crate::types::LinuxCpu {
                        shares: Some(7),
                        ..Default::default()
                    },
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.update("10-a", &[u]).unwrap();
        let r = c.target_resources().unwrap();
        assert_eq!((r.cpu.shares, r.cpu.quota), (Some(7), Some(5)));
        assert!(c.into_updates().is_empty());
    }
}
