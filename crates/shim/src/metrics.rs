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
    let raw = |k: &str| s.memory.raw.get(k).copied().unwrap_or(0);
    mem.rss = raw("rss");
    mem.total_rss = raw("total_rss");
    mem.mapped_file = raw("mapped_file");
    mem.pg_fault = raw("pgfault");
    mem.pg_maj_fault = raw("pgmajfault");
    mem.inactive_file = raw("inactive_file");
    mem.active_file = raw("active_file");
    mem.total_inactive_file = raw("total_inactive_file");
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
