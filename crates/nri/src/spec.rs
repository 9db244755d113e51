//! Between NRI's view of a container and its OCI spec: what berthd tells
//! plugins about a container it is creating ([`container_from_spec`]), and
//! applying their combined adjustment to the spec
//! ([`ContainerAdjustment::apply_to_spec`]), as containerd's NRI
//! integration does (an injected device also gets an "rwm" device cgroup
//! rule; the RDT class becomes `linux.intelRdt.closID`).

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime as oci;

use crate::error::{NriError, Result};
use crate::types::{
    Container, ContainerAdjustment, Hook, Hooks, LinuxContainer, LinuxCpu, LinuxDevice,
    LinuxDeviceCgroup, LinuxMemory, LinuxNamespace, LinuxResources, Mount, Rlimit,
};

fn namespace_name(t: oci::LinuxNamespaceType) -> &'static str {
    match t {
        oci::LinuxNamespaceType::Mount => "mount",
        oci::LinuxNamespaceType::Cgroup => "cgroup",
        oci::LinuxNamespaceType::Uts => "uts",
        oci::LinuxNamespaceType::Ipc => "ipc",
        oci::LinuxNamespaceType::User => "user",
        oci::LinuxNamespaceType::Pid => "pid",
        oci::LinuxNamespaceType::Network => "network",
        oci::LinuxNamespaceType::Time => "time",
    }
}

fn device_type(t: &str) -> Result<oci::LinuxDeviceType> {
    Ok(match t {
        "a" => oci::LinuxDeviceType::A,
        "b" => oci::LinuxDeviceType::B,
        "c" => oci::LinuxDeviceType::C,
        "u" => oci::LinuxDeviceType::U,
        "p" => oci::LinuxDeviceType::P,
        other => {
            return Err(NriError::Apply {
                what: format!("a device of type {other:?}"),
            })
        }
    })
}

fn hook_from_oci(h: &oci::Hook) -> Hook {
    Hook {
        path: h.path().display().to_string(),
        args: h.args().clone().unwrap_or_default(),
        env: h.env().clone().unwrap_or_default(),
        timeout: h.timeout(),
    }
}

fn hook_to_oci(h: &Hook) -> oci::Hook {
    let mut o = oci::Hook::default();
    o.set_path(PathBuf::from(&h.path));
    o.set_args((!h.args.is_empty()).then(|| h.args.clone()));
    o.set_env((!h.env.is_empty()).then(|| h.env.clone()));
    o.set_timeout(h.timeout);
    o
}

/// NRI's view of OCI resources (for UpdateContainerResources: what
/// kubelet asks, mapped to OCI by berthd, goes to
/// [`crate::Nri::update_container`] in this form).
pub fn resources_from_oci(r: &oci::LinuxResources) -> LinuxResources {
    let mut out = LinuxResources::default();
    if let Some(m) = r.memory() {
        out.memory = LinuxMemory {
            limit: m.limit(),
            reservation: m.reservation(),
            swap: m.swap(),
            kernel: m.kernel(),
            kernel_tcp: m.kernel_tcp(),
            swappiness: m.swappiness(),
            disable_oom_killer: m.disable_oom_killer(),
            use_hierarchy: m.use_hierarchy(),
        };
    }
    if let Some(c) = r.cpu() {
        out.cpu = LinuxCpu {
            shares: c.shares(),
            quota: c.quota(),
            period: c.period(),
            realtime_runtime: c.realtime_runtime(),
            realtime_period: c.realtime_period(),
            cpus: c.cpus().clone().unwrap_or_default(),
            mems: c.mems().clone().unwrap_or_default(),
        };
    }
    out.hugepage_limits = r
        .hugepage_limits()
        .iter()
        .flatten()
        .map(|h| crate::types::HugepageLimit {
            page_size: h.page_size().clone(),
            limit: h.limit().max(0) as u64,
        })
        .collect();
    out.unified = r.unified().clone().unwrap_or_default();
    out.devices = r
        .devices()
        .iter()
        .flatten()
        .map(|d| LinuxDeviceCgroup {
            allow: d.allow(),
            r#type: d.typ().map(|t| t.as_str().to_string()).unwrap_or_default(),
            major: d.major(),
            minor: d.minor(),
            access: d.access().clone().unwrap_or_default(),
        })
        .collect();
    out.pids_limit = r.pids().as_ref().map(|p| p.limit());
    out
}

/// What plugins are told about a container berthd is creating from
/// `spec`: args, env, mounts, hooks, rlimits and the Linux part. The
/// caller fills in the identity (id, pod_sandbox_id, name, labels) and, if
/// it wants, replaces the annotations (the spec's are used).
pub fn container_from_spec(spec: &oci::Spec) -> Container {
    let process = spec.process().as_ref();
    let mut c = Container {
        args: process.and_then(|p| p.args().clone()).unwrap_or_default(),
        env: process.and_then(|p| p.env().clone()).unwrap_or_default(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        rlimits: process
            .and_then(|p| p.rlimits().as_ref())
            .into_iter()
            .flatten()
            .map(|r| Rlimit {
                r#type: r.typ().to_string(),
                hard: r.hard(),
                soft: r.soft(),
            })
            .collect(),
        ..Default::default()
    };
    c.mounts = spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| Mount {
            destination: m.destination().display().to_string(),
            r#type: m.typ().clone().unwrap_or_default(),
            source: m
                .source()
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_default(),
            options: m.options().clone().unwrap_or_default(),
        })
        .collect();
    if let Some(h) = spec.hooks() {
        let conv = |v: &Option<Vec<oci::Hook>>| v.iter().flatten().map(hook_from_oci).collect();
        #[allow(deprecated)]
        let prestart = conv(h.prestart());
        c.hooks = Hooks {
            prestart,
            create_runtime: conv(h.create_runtime()),
            create_container: conv(h.create_container()),
            start_container: conv(h.start_container()),
            poststart: conv(h.poststart()),
            poststop: conv(h.poststop()),
        };
    }
    if let Some(l) = spec.linux() {
        c.linux = LinuxContainer {
            namespaces: l
                .namespaces()
                .iter()
                .flatten()
                .map(|n| LinuxNamespace {
                    r#type: namespace_name(n.typ()).to_string(),
                    path: n
                        .path()
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                })
                .collect(),
            devices: l
                .devices()
                .iter()
                .flatten()
                .map(|d| LinuxDevice {
                    path: d.path().display().to_string(),
                    r#type: d.typ().as_str().to_string(),
                    major: d.major(),
                    minor: d.minor(),
                    file_mode: d.file_mode(),
                    uid: d.uid(),
                    gid: d.gid(),
                })
                .collect(),
            resources: l.resources().as_ref().map(resources_from_oci),
            oom_score_adj: process.and_then(|p| p.oom_score_adj()).map(i64::from),
            cgroups_path: l
                .cgroups_path()
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        };
    }
    c
}

impl LinuxResources {
    /// Sets the set fields of these resources in OCI resources (memory,
    /// CPU, pids, hugepage limits, unified); block I/O and RDT classes and
    /// device rules are not resources of the OCI `linux.resources` kind
    /// and are left out here.
    pub fn apply_to_oci(&self, oci_r: &mut oci::LinuxResources) {
        apply_resources(self, oci_r);
    }
}

fn apply_resources(r: &LinuxResources, oci_r: &mut oci::LinuxResources) {
    let m = &r.memory;
    if *m != LinuxMemory::default() {
        let mem = oci_r.memory_mut().get_or_insert_with(Default::default);
        macro_rules! set {
            ($f:ident, $set:ident) => {
                if let Some(v) = m.$f {
                    mem.$set(Some(v));
                }
            };
        }
        set!(limit, set_limit);
        set!(reservation, set_reservation);
        set!(swap, set_swap);
        set!(kernel, set_kernel);
        set!(kernel_tcp, set_kernel_tcp);
        set!(swappiness, set_swappiness);
        set!(disable_oom_killer, set_disable_oom_killer);
        set!(use_hierarchy, set_use_hierarchy);
    }
    let c = &r.cpu;
    if *c != LinuxCpu::default() {
        let cpu = oci_r.cpu_mut().get_or_insert_with(Default::default);
        macro_rules! set {
            ($f:ident, $set:ident) => {
                if let Some(v) = c.$f {
                    cpu.$set(Some(v));
                }
            };
        }
        set!(shares, set_shares);
        set!(quota, set_quota);
        set!(period, set_period);
        set!(realtime_runtime, set_realtime_runtime);
        set!(realtime_period, set_realtime_period);
        if !c.cpus.is_empty() {
            cpu.set_cpus(Some(c.cpus.clone()));
        }
        if !c.mems.is_empty() {
            cpu.set_mems(Some(c.mems.clone()));
        }
    }
    if let Some(limit) = r.pids_limit {
        let mut pids = oci::LinuxPids::default();
        pids.set_limit(limit);
        oci_r.set_pids(Some(pids));
    }
    if !r.hugepage_limits.is_empty() {
        let limits = oci_r.hugepage_limits_mut().get_or_insert_with(Vec::new);
        for h in &r.hugepage_limits {
            limits.retain(|x| *x.page_size() != h.page_size);
            let mut l = oci::LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone());
            l.set_limit(h.limit.min(i64::MAX as u64) as i64);
            limits.push(l);
        }
    }
    if !r.unified.is_empty() {
        let unified = oci_r.unified_mut().get_or_insert_with(HashMap::new);
        unified.extend(r.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

impl ContainerAdjustment {
    /// Applies the adjustment to the OCI spec of the container being
    /// created.
    ///
    /// # Errors
    /// It asks for what berth cannot put in a spec: a block I/O class
    /// (berth has no block I/O class configuration), an unknown rlimit or
    /// device type.
    pub fn apply_to_spec(&self, spec: &mut oci::Spec) -> Result<()> {
        if let Some(class) = &self.resources.blockio_class {
            return Err(NriError::Apply {
                what: format!("block I/O class {class:?}"),
            });
        }
        if !self.annotations.is_empty() || !self.remove_annotations.is_empty() {
            let annotations = spec.annotations_mut().get_or_insert_with(HashMap::new);
            self.apply_annotations(annotations);
        }
        if !self.mounts.is_empty() || !self.remove_mounts.is_empty() {
            let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
            mounts.retain(|m| {
                let dest = m.destination().display().to_string();
                !self.remove_mounts.contains(&dest)
                    && !self.mounts.iter().any(|a| a.destination == dest)
            });
            for a in &self.mounts {
                let mut m = oci::Mount::default();
                m.set_destination(PathBuf::from(&a.destination));
                m.set_typ((!a.r#type.is_empty()).then(|| a.r#type.clone()));
                m.set_source((!a.source.is_empty()).then(|| PathBuf::from(&a.source)));
                m.set_options((!a.options.is_empty()).then(|| a.options.clone()));
                mounts.push(m);
            }
        }
        if !self.env.is_empty() || !self.remove_env.is_empty() || !self.rlimits.is_empty() {
            let process = spec.process_mut().get_or_insert_with(Default::default);
            if !self.env.is_empty() || !self.remove_env.is_empty() {
                let env = process.env_mut().get_or_insert_with(Vec::new);
                self.apply_env(env);
            }
            if !self.rlimits.is_empty() {
                let mut rlimits = process.rlimits().clone().unwrap_or_default();
                for r in &self.rlimits {
                    let apply_err = || NriError::Apply {
                        what: format!("rlimit {:?}", r.r#type),
                    };
                    let typ: oci::PosixRlimitType = r.r#type.parse().map_err(|_| apply_err())?;
                    rlimits.retain(|x| x.typ() != typ);
                    let l = oci::PosixRlimitBuilder::default()
                        .typ(typ)
                        .hard(r.hard)
                        .soft(r.soft)
                        .build()
                        .map_err(|_| apply_err())?;
                    rlimits.push(l);
                }
                process.set_rlimits(Some(rlimits));
            }
        }
        if !self.hooks.is_empty() {
            let hooks = spec.hooks_mut().get_or_insert_with(Default::default);
            let add = |stage: &mut Option<Vec<oci::Hook>>, new: &[Hook]| {
                if !new.is_empty() {
                    stage
                        .get_or_insert_with(Vec::new)
                        .extend(new.iter().map(hook_to_oci));
                }
            };
            #[allow(deprecated)]
            add(hooks.prestart_mut(), &self.hooks.prestart);
            add(hooks.create_runtime_mut(), &self.hooks.create_runtime);
            add(hooks.create_container_mut(), &self.hooks.create_container);
            add(hooks.start_container_mut(), &self.hooks.start_container);
            add(hooks.poststart_mut(), &self.hooks.poststart);
            add(hooks.poststop_mut(), &self.hooks.poststop);
        }
        let resources_set = self.resources != LinuxResources::default();
        if self.devices.is_empty()
            && self.remove_devices.is_empty()
            && !resources_set
            && self.cgroups_path.is_none()
        {
            return Ok(());
        }
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        if !self.devices.is_empty() || !self.remove_devices.is_empty() {
            let devices = linux.devices_mut().get_or_insert_with(Vec::new);
            devices.retain(|d| {
                let path = d.path().display().to_string();
                !self.remove_devices.contains(&path) && !self.devices.iter().any(|a| a.path == path)
            });
            let mut rules = Vec::new();
            for a in &self.devices {
                let typ = device_type(&a.r#type)?;
                let mut d = oci::LinuxDevice::default();
                d.set_path(PathBuf::from(&a.path));
                d.set_typ(typ);
                d.set_major(a.major);
                d.set_minor(a.minor);
                d.set_file_mode(a.file_mode);
                d.set_uid(a.uid);
                d.set_gid(a.gid);
                devices.push(d);
                let mut rule = oci::LinuxDeviceCgroup::default();
                rule.set_allow(true);
                rule.set_typ(Some(typ));
                rule.set_major(Some(a.major));
                rule.set_minor(Some(a.minor));
                rule.set_access(Some("rwm".into()));
                rules.push(rule);
            }
            if !rules.is_empty() {
                let res = linux.resources_mut().get_or_insert_with(Default::default);
                res.devices_mut().get_or_insert_with(Vec::new).extend(rules);
            }
        }
        if resources_set {
            if let Some(class) = &self.resources.rdt_class {
                let rdt = linux.intel_rdt_mut().get_or_insert_with(Default::default);
                rdt.set_clos_id(Some(class.clone()));
            }
            let res = linux.resources_mut().get_or_insert_with(Default::default);
            apply_resources(&self.resources, res);
        }
        if let Some(path) = &self.cgroups_path {
            linux.set_cgroups_path(Some(PathBuf::from(path)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> oci::Spec {
        let mut spec = oci::Spec::default();
        let process = spec.process_mut().get_or_insert_with(Default::default);
        process.set_args(Some(vec!["sleep".into(), "1".into()]));
        process.set_env(Some(vec!["PATH=/bin".into(), "DROP=1".into()]));
        spec
    }

    #[test]
    fn container_from_spec_carries_what_plugins_see() {
        let c = container_from_spec(&spec());
        assert_eq!(c.args, ["sleep", "1"]);
        assert_eq!(c.env, ["PATH=/bin", "DROP=1"]);
        assert!(c.mounts.iter().any(|m| m.destination == "/proc"));
        assert!(c.linux.namespaces.iter().any(|n| n.r#type == "pid"));
        assert!(c.linux.devices.is_empty());
    }

    #[test]
    fn adjustment_lands_in_the_spec() {
        let mut s = spec();
        let a = ContainerAdjustment {
            env: vec![("ADDED".into(), "yes".into())],
            remove_env: vec!["DROP".into()],
            mounts: vec![Mount {
                destination: "/data".into(),
                r#type: "bind".into(),
                source: "/srv/data".into(),
                options: vec!["rbind".into(), "ro".into()],
            }],
            remove_mounts: vec!["/dev/shm".into()],
            annotations: [("nri.example/set".to_string(), "1".to_string())].into(),
            hooks: Hooks {
                create_runtime: vec![Hook {
                    path: "/bin/hook".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            devices: vec![LinuxDevice {
                path: "/dev/fuse".into(),
                r#type: "c".into(),
                major: 10,
                minor: 229,
                ..Default::default()
            }],
            resources: LinuxResources {
                memory: LinuxMemory {
                    limit: Some(1 << 28),
                    ..Default::default()
                },
                cpu: LinuxCpu {
                    cpus: "0".into(),
                    ..Default::default()
                },
                pids_limit: Some(64),
                ..Default::default()
            },
            cgroups_path: Some("/nri/ctr".into()),
            rlimits: vec![Rlimit {
                r#type: "RLIMIT_NOFILE".into(),
                hard: 4096,
                soft: 1024,
            }],
            ..Default::default()
        };
        a.apply_to_spec(&mut s).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/bin", "ADDED=yes"]);
        let nofile = p
            .rlimits()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.typ() == oci::PosixRlimitType::RlimitNofile);
        assert_eq!(nofile.map(|r| (r.hard(), r.soft())), Some((4096, 1024)));
        let mounts: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert!(
            mounts.contains(&"/data".to_string()) && !mounts.contains(&"/dev/shm".to_string()),
            "{mounts:?}"
        );
        assert_eq!(s.annotations().as_ref().unwrap()["nri.example/set"], "1");
        assert_eq!(
            s.hooks()
                .as_ref()
                .unwrap()
                .create_runtime()
                .as_ref()
                .unwrap()[0]
                .path(),
            &PathBuf::from("/bin/hook")
        );
        let linux = s.linux().as_ref().unwrap();
        assert!(linux
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .any(|d| d.path() == &PathBuf::from("/dev/fuse")));
        let res = linux.resources().as_ref().unwrap();
        assert!(res
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.allow() && r.major() == Some(10) && r.minor() == Some(229)));
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(1 << 28));
        assert_eq!(res.cpu().as_ref().unwrap().cpus().as_deref(), Some("0"));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 64);
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(std::path::Path::new("/nri/ctr"))
        );
    }

    #[test]
    fn resources_round_trip_through_oci() {
        let r = LinuxResources {
            memory: LinuxMemory {
                limit: Some(1 << 20),
                swap: Some(2 << 20),
                ..Default::default()
            },
            cpu: LinuxCpu {
                shares: Some(2),
                quota: Some(50_000),
                period: Some(100_000),
                ..Default::default()
            },
            pids_limit: Some(10),
            unified: [("memory.high".to_string(), "max".to_string())].into(),
            ..Default::default()
        };
        let mut o = oci::LinuxResources::default();
        r.apply_to_oci(&mut o);
        assert_eq!(resources_from_oci(&o), r);
    }

    #[test]
    fn a_block_io_class_cannot_be_applied() {
        let a = ContainerAdjustment {
            resources: LinuxResources {
                blockio_class: Some("slow".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            a.apply_to_spec(&mut spec()),
            Err(NriError::Apply { .. })
        ));
    }
}
