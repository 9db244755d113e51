//! The pause container's spec: berth-pause as nobody (65535), without
//! capabilities, in the pod's namespaces (a PID namespace of its own).

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::mounts::{mount, options};
use super::namespaces::namespace;
use super::process::{bare_process, oci_user, DEFAULT_PATH};
use super::resources::cgroups_path;
use super::security::{linux_capabilities, DEFAULT_MASKED, DEFAULT_READONLY};
use super::{bare_linux, bare_spec, devices::device_rule, root};
use crate::error::Result;
use crate::store::PodRecord;

/// The pause container's OOM score: -998 (as containerd's), or berthd's
/// floor where it cannot lower scores that far.
fn pause_oom_score_adj(floor: Option<i64>) -> i32 {
    floor.unwrap_or(-998).max(-998).clamp(-1000, 1000) as i32
}

/// config.json of the pod's pause container, whose rootfs (holding
/// /pause) is `rootfs`.
pub fn pause_spec(
    pod: &PodRecord,
    rootfs: &Path,
    oom_score_adj_floor: Option<i64>,
) -> Result<Spec> {
    let mut process = bare_process(
        oci_user(65535, 65535, None),
        vec!["/pause".into()],
        vec![DEFAULT_PATH.into()],
        "/",
    );
    process
        .set_no_new_privileges(Some(true))
        .set_capabilities(Some(linux_capabilities(&[], None, None)?))
        .set_oom_score_adj(Some(pause_oom_score_adj(oom_score_adj_floor)));

    // What containerd's sandbox spec mounts: runtimes other than berth
    // expect /proc and /dev in every container.
    let mounts = vec![
        mount(
            "/proc",
            "proc",
            "proc",
            options(&["nosuid", "noexec", "nodev"]),
        ),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            options(&["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            options(&[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ]),
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            options(&["nosuid", "noexec", "nodev"]),
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            options(&["nosuid", "noexec", "nodev", "ro"]),
        ),
    ];

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid, None),
        namespace(LinuxNamespaceType::Mount, None),
    ];
    for (typ, path) in [
        (LinuxNamespaceType::Network, &pod.namespaces.net),
        (LinuxNamespaceType::Ipc, &pod.namespaces.ipc),
        (LinuxNamespaceType::Uts, &pod.namespaces.uts),
    ] {
        if let Some(p) = path {
            namespaces.push(namespace(typ, Some(p.clone())));
        }
    }
    let mut resources = oci_spec::runtime::LinuxResources::default();
    resources.set_devices(Some(vec![device_rule(false, None, None, None, "rwm")]));
    let mut linux = bare_linux();
    linux
        .set_cgroups_path(Some(cgroups_path(pod, &pod.id).into()))
        .set_namespaces(Some(namespaces))
        .set_resources(Some(resources))
        .set_masked_paths(Some(options(DEFAULT_MASKED)))
        .set_readonly_paths(Some(options(DEFAULT_READONLY)));

    let annotations = [
        ("io.kubernetes.cri.container-type", "sandbox"),
        ("io.kubernetes.cri.sandbox-id", pod.id.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    let mut spec = bare_spec();
    spec.set_process(Some(process))
        .set_root(Some(root(rootfs, true)))
        .set_mounts(Some(mounts))
        .set_annotations(Some(annotations))
        .set_linux(Some(linux));
    if pod.namespaces.uts.is_some() {
        // Sandboxed runtimes (gVisor) take the pod's hostname from here,
        // not from the UTS namespace they are given.
        if let Ok(h) = std::fs::read_to_string(pod.dir.join("hostname")) {
            spec.set_hostname(Some(h.trim().to_owned()));
        }
    }
    Ok(spec)
}

/// What a `vm` pod's sandbox tells its VM shim: its resources, which size
/// the VM (the pod's limits, the sum of its containers' as kubelet passes
/// them, plus the overhead its RuntimeClass declares), and the pod's
/// sysctls, which the shim sets in the guest (the pod's namespaces are
/// the VM's).
pub fn size_vm_sandbox(spec: &mut Spec, pod: &PodRecord) {
    let Some(linux) = pod.config.linux.as_ref() else {
        return;
    };
    if !linux.sysctls.is_empty() {
        if let Some(l) = spec.linux_mut().as_mut() {
            l.set_sysctl(Some(linux.sysctls.clone().into_iter().collect()));
        }
    }
    let (mut memory, mut quota, mut period) = (0i64, 0i64, 0u64);
    for r in [linux.resources.as_ref(), linux.overhead.as_ref()]
        .into_iter()
        .flatten()
    {
        memory += r.memory_limit_in_bytes.max(0);
        if r.cpu_quota > 0 && r.cpu_period > 0 {
            // In one period's units.
            let p = if period == 0 {
                r.cpu_period as u64
            } else {
                period
            };
            quota += (r.cpu_quota as i128 * p as i128 / r.cpu_period as i128) as i64;
            period = p;
        }
    }
    let Some(l) = spec.linux_mut().as_mut() else {
        return;
    };
    let mut resources = l.resources().clone().unwrap_or_default();
    if memory > 0 {
        let mut m = oci_spec::runtime::LinuxMemory::default();
        m.set_limit(Some(memory));
        resources.set_memory(Some(m));
    }
    if quota > 0 {
        let mut c = oci_spec::runtime::LinuxCpu::default();
        c.set_quota(Some(quota)).set_period(Some(period));
        resources.set_cpu(Some(c));
    }
    l.set_resources(Some(resources));
}
