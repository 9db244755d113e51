//! berth-cgroups statistics as containerd's cgroups v1 Metrics message
//! (what `ctr task metrics` and containerd's CRI decode).

use containerd_shim_protos::cgroups::metrics as m;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};

pub const METRICS_V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

pub fn to_any(s: &berth_cgroups::Stats) -> Any {
    let mut out = m::Metrics::new();
    let mut pids = m::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    out.pids = MessageField::some(pids);
    let mut usage = m::CPUUsage::new();
    usage.total = s.cpu.usage.total;
    usage.kernel = s.cpu.usage.kernel;
    usage.user = s.cpu.usage.user;
    usage.per_cpu = s.cpu.usage.percpu.clone();
    let mut throttling = m::Throttle::new();
    throttling.periods = s.cpu.throttling.periods;
    throttling.throttled_periods = s.cpu.throttling.throttled_periods;
    throttling.throttled_time = s.cpu.throttling.throttled_time;
    let mut cpu = m::CPUStat::new();
    cpu.usage = MessageField::some(usage);
    cpu.throttling = MessageField::some(throttling);
    out.cpu = MessageField::some(cpu);
    let entry = |e: &berth_cgroups::stats::MemoryEntry| {
        let mut x = m::MemoryEntry::new();
        x.limit = e.limit;
        x.usage = e.usage;
        x.max = e.max;
        x.failcnt = e.failcnt;
        x
    };
    let mut mem = m::MemoryStat::new();
    mem.cache = s.memory.cache;
    mem.usage = MessageField::some(entry(&s.memory.usage));
    mem.swap = MessageField::some(entry(&s.memory.swap));
    let raw = |k: &str| s.memory.raw.get(k).copied();
    // memory.stat's keys: cgroup v1's, or v2's under their v1 names (v2
    // has no hierarchy totals: its figures are the subtree's already).
    let v1_or_v2 = |v1: &str, v2: &str| raw(v1).or_else(|| raw(v2)).unwrap_or(0);
    mem.rss = v1_or_v2("rss", "anon");
    mem.total_rss = v1_or_v2("total_rss", "anon");
    mem.mapped_file = v1_or_v2("mapped_file", "file_mapped");
    mem.pg_fault = v1_or_v2("pgfault", "pgfault");
    mem.pg_maj_fault = v1_or_v2("pgmajfault", "pgmajfault");
    mem.inactive_file = v1_or_v2("inactive_file", "inactive_file");
    mem.active_file = v1_or_v2("active_file", "active_file");
    mem.total_inactive_file = v1_or_v2("total_inactive_file", "inactive_file");
    out.memory = MessageField::some(mem);
    let mut oom = m::MemoryOomControl::new();
    oom.oom_kill = s.memory.oom_kill;
    out.memory_oom_control = MessageField::some(oom);
    let mut blkio = m::BlkIOStat::new();
    for (list, src) in [
        (
            &mut blkio.io_service_bytes_recursive,
            &s.blkio.io_service_bytes_recursive,
        ),
        (
            &mut blkio.io_serviced_recursive,
            &s.blkio.io_serviced_recursive,
        ),
    ] {
        for e in src {
            let mut x = m::BlkIOEntry::new();
            x.major = e.major;
            x.minor = e.minor;
            x.op = e.op.clone();
            x.value = e.value;
            list.push(x);
        }
    }
    out.blkio = MessageField::some(blkio);
    for (size, h) in &s.hugetlb {
        let mut x = m::HugetlbStat::new();
        x.pagesize = size.clone();
        x.usage = h.usage;
        x.max = h.max;
        x.failcnt = h.failcnt;
        out.hugetlb.push(x);
    }
    let mut any = Any::new();
    any.type_url = METRICS_V1_TYPE.into();
    any.value = out.write_to_bytes().unwrap_or_default();
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_of(raw: &[(&str, u64)]) -> m::MemoryStat {
        let mut s = berth_cgroups::Stats::default();
        s.memory.raw = raw.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let any = to_any(&s);
        let metrics = m::Metrics::parse_from_bytes(&any.value).unwrap();
        metrics.memory.unwrap()
    }

    #[test]
    fn cgroup_v2_memory_keys_fill_the_v1_fields() {
        let v2 = memory_of(&[
            ("anon", 7 << 20),
            ("file_mapped", 3 << 20),
            ("inactive_file", 5 << 20),
            ("pgmajfault", 9),
        ]);
        assert_eq!(
            (v2.rss, v2.total_rss, v2.mapped_file),
            (7 << 20, 7 << 20, 3 << 20)
        );
        assert_eq!(
            (v2.inactive_file, v2.total_inactive_file),
            (5 << 20, 5 << 20)
        );
        assert_eq!(v2.pg_maj_fault, 9);
        // v1's own keys win where both could apply.
        let v1 = memory_of(&[("rss", 1), ("total_rss", 2), ("total_inactive_file", 4)]);
        assert_eq!((v1.rss, v1.total_rss, v1.total_inactive_file), (1, 2, 4));
    }
}
