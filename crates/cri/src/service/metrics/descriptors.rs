//! The cAdvisor metrics berthd reports: names, help texts, types and
//! label keys, in ListMetricDescriptors' order.

use k8s_cri::v1 as cri;

/// One metric's descriptor: its name, help, type and the label keys it
/// has after [`BASE`].
pub(super) struct Desc {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    pub(super) kind: cri::MetricType,
    pub(super) extra: &'static [&'static str],
}

/// The label keys every metric starts with.
pub(super) const BASE: [&str; 5] = ["pod", "namespace", "container", "id", "image"];

pub(super) const COUNTER: cri::MetricType = cri::MetricType::Counter;
const GAUGE: cri::MetricType = cri::MetricType::Gauge;

const fn desc(
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    extra: &'static [&'static str],
) -> Desc {
    Desc {
        name,
        help,
        kind,
        extra,
    }
}

const INTERFACE: &[&str] = &["interface"];
const DEVICE: &[&str] = &["device"];

pub(super) const CPU_USAGE: Desc = desc(
    "container_cpu_usage_seconds_total",
    "Cumulative cpu time consumed in seconds.",
    COUNTER,
    &[],
);
pub(super) const CPU_USER: Desc = desc(
    "container_cpu_user_seconds_total",
    "Cumulative user cpu time consumed in seconds.",
    COUNTER,
    &[],
);
pub(super) const CPU_SYSTEM: Desc = desc(
    "container_cpu_system_seconds_total",
    "Cumulative system cpu time consumed in seconds.",
    COUNTER,
    &[],
);
pub(super) const CFS_PERIODS: Desc = desc(
    "container_cpu_cfs_periods_total",
    "Number of elapsed enforcement period intervals.",
    COUNTER,
    &[],
);
pub(super) const CFS_THROTTLED_PERIODS: Desc = desc(
    "container_cpu_cfs_throttled_periods_total",
    "Number of throttled period intervals.",
    COUNTER,
    &[],
);
pub(super) const CFS_THROTTLED_SECONDS: Desc = desc(
    "container_cpu_cfs_throttled_seconds_total",
    "Total time duration the container has been throttled.",
    COUNTER,
    &[],
);
pub(super) const MEMORY_USAGE: Desc = desc(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
    GAUGE,
    &[],
);
pub(super) const MEMORY_WORKING_SET: Desc = desc(
    "container_memory_working_set_bytes",
    "Current working set in bytes.",
    GAUGE,
    &[],
);
pub(super) const MEMORY_RSS: Desc =
    desc("container_memory_rss", "Size of RSS in bytes.", GAUGE, &[]);
pub(super) const MEMORY_CACHE: Desc = desc(
    "container_memory_cache",
    "Number of bytes of page cache memory.",
    GAUGE,
    &[],
);
pub(super) const MEMORY_SWAP: Desc = desc(
    "container_memory_swap",
    "Container swap usage in bytes.",
    GAUGE,
    &[],
);
pub(super) const MEMORY_MAPPED_FILE: Desc = desc(
    "container_memory_mapped_file",
    "Size of memory mapped files in bytes.",
    GAUGE,
    &[],
);
pub(super) const MEMORY_MAX_USAGE: Desc = desc(
    "container_memory_max_usage_bytes",
    "Maximum memory usage recorded in bytes",
    GAUGE,
    &[],
);
pub(super) const MEMORY_FAILCNT: Desc = desc(
    "container_memory_failcnt",
    "Number of memory usage hits limits",
    COUNTER,
    &[],
);
pub(super) const MEMORY_FAILURES: Desc = desc(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    COUNTER,
    &["failure_type", "scope"],
);
pub(super) const OOM_EVENTS: Desc = desc(
    "container_oom_events_total",
    "Count of out of memory events observed for the container",
    COUNTER,
    &[],
);
pub(super) const PROCESSES: Desc = desc(
    "container_processes",
    "Number of processes running inside the container.",
    GAUGE,
    &[],
);
pub(super) const THREADS: Desc = desc(
    "container_threads",
    "Number of threads running inside the container",
    GAUGE,
    &[],
);
pub(super) const THREADS_MAX: Desc = desc(
    "container_threads_max",
    "Maximum number of threads allowed inside the container, infinity if value is zero",
    GAUGE,
    &[],
);
pub(super) const FS_USAGE: Desc = desc(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
    GAUGE,
    DEVICE,
);
pub(super) const FS_READS_BYTES: Desc = desc(
    "container_fs_reads_bytes_total",
    "Cumulative count of bytes read",
    COUNTER,
    DEVICE,
);
pub(super) const FS_WRITES_BYTES: Desc = desc(
    "container_fs_writes_bytes_total",
    "Cumulative count of bytes written",
    COUNTER,
    DEVICE,
);
pub(super) const FS_READS: Desc = desc(
    "container_fs_reads_total",
    "Cumulative count of reads completed",
    COUNTER,
    DEVICE,
);
pub(super) const FS_WRITES: Desc = desc(
    "container_fs_writes_total",
    "Cumulative count of writes completed",
    COUNTER,
    DEVICE,
);
pub(super) const BLKIO_DEVICE_USAGE: Desc = desc(
    "container_blkio_device_usage_total",
    "Blkio Device bytes usage",
    COUNTER,
    &["device", "major", "minor", "operation"],
);
pub(super) const NET_RX_BYTES: Desc = desc(
    "container_network_receive_bytes_total",
    "Cumulative count of bytes received",
    COUNTER,
    INTERFACE,
);
pub(super) const NET_RX_PACKETS: Desc = desc(
    "container_network_receive_packets_total",
    "Cumulative count of packets received",
    COUNTER,
    INTERFACE,
);
pub(super) const NET_RX_DROPPED: Desc = desc(
    "container_network_receive_packets_dropped_total",
    "Cumulative count of packets dropped while receiving",
    COUNTER,
    INTERFACE,
);
pub(super) const NET_RX_ERRORS: Desc = desc(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving",
    COUNTER,
    INTERFACE,
);
pub(super) const NET_TX_BYTES: Desc = desc(
    "container_network_transmit_bytes_total",
    "Cumulative count of bytes transmitted",
    COUNTER,
    INTERFACE,
);
pub(super) const NET_TX_PACKETS: Desc = desc(
    "container_network_transmit_packets_total",
    "Cumulative count of packets transmitted",
    COUNTER,
    INTERFACE,
);
pub(super) const NET_TX_DROPPED: Desc = desc(
    "container_network_transmit_packets_dropped_total",
    "Cumulative count of packets dropped while transmitting",
    COUNTER,
    INTERFACE,
);
pub(super) const NET_TX_ERRORS: Desc = desc(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting",
    COUNTER,
    INTERFACE,
);
pub(super) const START_TIME: Desc = desc(
    "container_start_time_seconds",
    "Start time of the container since unix epoch in seconds.",
    GAUGE,
    &[],
);
pub(super) const LAST_SEEN: Desc = desc(
    "container_last_seen",
    "Last time a container was seen by the exporter",
    GAUGE,
    &[],
);
pub(super) const SPEC_CPU_PERIOD: Desc = desc(
    "container_spec_cpu_period",
    "CPU period of the container.",
    GAUGE,
    &[],
);
pub(super) const SPEC_CPU_QUOTA: Desc = desc(
    "container_spec_cpu_quota",
    "CPU quota of the container.",
    GAUGE,
    &[],
);
pub(super) const SPEC_CPU_SHARES: Desc = desc(
    "container_spec_cpu_shares",
    "CPU share of the container.",
    GAUGE,
    &[],
);
pub(super) const SPEC_MEMORY_LIMIT: Desc = desc(
    "container_spec_memory_limit_bytes",
    "Memory limit for the container.",
    GAUGE,
    &[],
);
pub(super) const SPEC_MEMORY_SWAP_LIMIT: Desc = desc(
    "container_spec_memory_swap_limit_bytes",
    "Memory swap limit for the container.",
    GAUGE,
    &[],
);

/// Every metric berthd reports, in ListMetricDescriptors' order.
pub(super) const DESCRIPTORS: &[&Desc] = &[
    &CPU_USAGE,
    &CPU_USER,
    &CPU_SYSTEM,
    &CFS_PERIODS,
    &CFS_THROTTLED_PERIODS,
    &CFS_THROTTLED_SECONDS,
    &MEMORY_USAGE,
    &MEMORY_WORKING_SET,
    &MEMORY_RSS,
    &MEMORY_CACHE,
    &MEMORY_SWAP,
    &MEMORY_MAPPED_FILE,
    &MEMORY_MAX_USAGE,
    &MEMORY_FAILCNT,
    &MEMORY_FAILURES,
    &OOM_EVENTS,
    &PROCESSES,
    &THREADS,
    &THREADS_MAX,
    &FS_USAGE,
    &FS_READS_BYTES,
    &FS_WRITES_BYTES,
    &FS_READS,
    &FS_WRITES,
    &BLKIO_DEVICE_USAGE,
    &NET_RX_BYTES,
    &NET_RX_PACKETS,
    &NET_RX_DROPPED,
    &NET_RX_ERRORS,
    &NET_TX_BYTES,
    &NET_TX_PACKETS,
    &NET_TX_DROPPED,
    &NET_TX_ERRORS,
    &START_TIME,
    &LAST_SEEN,
    &SPEC_CPU_PERIOD,
    &SPEC_CPU_QUOTA,
    &SPEC_CPU_SHARES,
    &SPEC_MEMORY_LIMIT,
    &SPEC_MEMORY_SWAP_LIMIT,
];

pub(super) fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: BASE.iter().chain(d.extra).map(|k| k.to_string()).collect(),
        })
        .collect()
}
