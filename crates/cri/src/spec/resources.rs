//! The container's cgroup: its path, its resources, and its process's OOM
//! score.

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    LinuxCpu, LinuxDeviceCgroup, LinuxHugepageLimit, LinuxMemory, LinuxResources,
};

use crate::error::{Error, Result};
use crate::store::PodRecord;

/// The OCI `linux.resources` (without devices) for CRI container
/// resources: one mapping for CreateContainer and UpdateContainerResources.
/// Zero (or empty) CRI values are left out, and so are `memory` and `cpu`
/// when nothing in them is set.
pub fn oci_resources(r: &cri::LinuxContainerResources) -> LinuxResources {
    let positive = |v: i64| (v > 0).then_some(v);
    let mut memory = LinuxMemory::default();
    memory
        .set_limit(positive(r.memory_limit_in_bytes))
        .set_swap(positive(r.memory_swap_limit_in_bytes));
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(positive(r.cpu_shares).map(|v| v as u64))
        .set_quota((r.cpu_quota != 0).then_some(r.cpu_quota))
        .set_period(positive(r.cpu_period).map(|v| v as u64))
        .set_cpus((!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()))
        .set_mems((!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()));
    let hugepages: Vec<LinuxHugepageLimit> = r
        .hugepage_limits
        .iter()
        .map(|h| {
            let mut l = LinuxHugepageLimit::default();
            // The OCI limit is a uint64 and oci-spec's an i64: a byte count
            // beyond i64::MAX (none a kubelet sends) saturates.
            l.set_page_size(h.page_size.clone())
                .set_limit(i64::try_from(h.limit).unwrap_or(i64::MAX));
            l
        })
        .collect();
    let mut res = LinuxResources::default();
    res.set_memory((memory != LinuxMemory::default()).then_some(memory))
        .set_cpu((cpu != LinuxCpu::default()).then_some(cpu))
        .set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages))
        .set_unified((!r.unified.is_empty()).then(|| r.unified.clone()));
    res
}

/// `linux.resources`: the CRI resources and the device rules.
pub(super) fn container_resources(
    r: &cri::LinuxContainerResources,
    device_rules: Vec<LinuxDeviceCgroup>,
) -> LinuxResources {
    let mut res = oci_resources(r);
    res.set_devices(Some(device_rules));
    res
}

/// `process.oomScoreAdj`: the request's (-1000..1000), raised to `floor`
/// where berthd cannot lower scores (no CAP_SYS_RESOURCE).
pub(super) fn oom_score_adj(r: &cri::LinuxContainerResources, floor: Option<i64>) -> Result<i32> {
    let mut oom = r.oom_score_adj;
    if !(-1000..=1000).contains(&oom) {
        return Err(Error::InvalidArgument(format!(
            "oom_score_adj {oom} is out of range -1000..1000"
        )));
    }
    if let Some(floor) = floor {
        oom = oom.max(floor);
    }
    // In range: -1000..=1000, or a floor that is itself an OOM score.
    Ok(oom.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
}

/// `linux.cgroupsPath`: `<pod's cgroup parent, else /berth>/<id>`.
pub(super) fn cgroups_path(pod: &PodRecord, id: &str) -> String {
    let parent = if pod.cgroup_parent.is_empty() {
        "/berth"
    } else {
        pod.cgroup_parent.as_str()
    };
    format!("{}/{id}", parent.trim_end_matches('/'))
}
