//! Resource usage in runc's `events --stats` format (what containerd's runc
//! shim and tools expect), read from v1 or v2 files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fs;
use crate::StatsFiles;
use crate::{Manager, Result};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    pub hugetlb: BTreeMap<String, Hugetlb>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    /// Nanoseconds.
    pub total: u64,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Memory {
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
    /// OOM kills seen in the cgroup (memory.oom_control / memory.events).
    pub oom_kill: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryEntry {
    pub limit: u64,
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Pids {
    pub current: u64,
    pub limit: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Blkio {
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioServicedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Hugetlb {
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
}

/// A counter or limit file; "max" (unlimited) reads as u64::MAX, as runc reports it.
fn num(f: &mut StatsFiles, dir: &Path, file: &str) -> u64 {
    match f.read(dir, file).as_deref() {
        Ok("max") => u64::MAX,
        Ok(v) => v.parse().unwrap_or(0),
        Err(_) => 0,
    }
}

impl Manager {
    /// Reads current usage from every hierarchy the container has.
    pub fn stats(&self) -> Result<Stats> {
        self.stats_with(&mut StatsFiles::default())
    }

    /// [`Manager::stats`] through files `f` keeps open from one call to
    /// the next (the same Manager's, or one with the same paths).
    pub fn stats_with(&self, f: &mut StatsFiles) -> Result<Stats> {
        let mut s = Stats::default();
        for (key, dir) in self.paths() {
            if key.is_empty() {
                v2_stats(f, dir, &mut s);
                continue;
            }
            for controller in key.split(',') {
                match controller {
                    "cpuacct" => {
                        s.cpu.usage.total = num(f, dir, "cpuacct.usage");
                        s.cpu.usage.percpu = f
                            .read(dir, "cpuacct.usage_percpu")
                            .unwrap_or_default()
                            .split_whitespace()
                            .filter_map(|v| v.parse().ok())
                            .collect();
                        // cpuacct.stat counts USER_HZ ticks (100 per second).
                        let stat = f.read_keyed(dir, "cpuacct.stat").unwrap_or_default();
                        s.cpu.usage.user = fs::keyed(&stat, "user").unwrap_or(0) * 10_000_000;
                        s.cpu.usage.kernel = fs::keyed(&stat, "system").unwrap_or(0) * 10_000_000;
                    }
                    "cpu" => {
                        let stat = f.read_keyed(dir, "cpu.stat").unwrap_or_default();
                        s.cpu.throttling.periods = fs::keyed(&stat, "nr_periods").unwrap_or(0);
                        s.cpu.throttling.throttled_periods =
                            fs::keyed(&stat, "nr_throttled").unwrap_or(0);
                        s.cpu.throttling.throttled_time =
                            fs::keyed(&stat, "throttled_time").unwrap_or(0);
                    }
                    "memory" => {
                        s.memory.usage = MemoryEntry {
                            limit: num(f, dir, "memory.limit_in_bytes"),
                            usage: num(f, dir, "memory.usage_in_bytes"),
                            max: num(f, dir, "memory.max_usage_in_bytes"),
                            failcnt: num(f, dir, "memory.failcnt"),
                        };
                        if f.exists(dir, "memory.memsw.usage_in_bytes") {
                            s.memory.swap = MemoryEntry {
                                limit: num(f, dir, "memory.memsw.limit_in_bytes"),
                                usage: num(f, dir, "memory.memsw.usage_in_bytes"),
                                max: num(f, dir, "memory.memsw.max_usage_in_bytes"),
                                failcnt: num(f, dir, "memory.memsw.failcnt"),
                            };
                        }
                        let raw = f.read_keyed(dir, "memory.stat").unwrap_or_default();
                        s.memory.cache = fs::keyed(&raw, "total_cache")
                            .or(fs::keyed(&raw, "cache"))
                            .unwrap_or(0);
                        s.memory.raw = raw.into_iter().collect();
                        s.memory.oom_kill = oom_kills_v1(f, dir);
                    }
                    "pids" => {
                        s.pids.current = num(f, dir, "pids.current");
                        s.pids.limit = pids_limit(f, dir);
                    }
                    "blkio" => {
                        s.blkio.io_service_bytes_recursive =
                            blkio_entries(f, dir, "blkio.throttle.io_service_bytes_recursive");
                        s.blkio.io_serviced_recursive =
                            blkio_entries(f, dir, "blkio.throttle.io_serviced_recursive");
                    }
                    "hugetlb" => hugetlb_stats(f, dir, "limit_in_bytes", "usage_in_bytes", &mut s),
                    _ => {}
                }
            }
        }
        Ok(s)
    }

    /// OOM kills recorded for the cgroup so far.
    pub fn oom_kill_count(&self) -> u64 {
        if let Some(dir) = self.v1_path("memory") {
            return oom_kills_v1(&mut StatsFiles::default(), dir);
        }
        self.unified_path()
            .and_then(|dir| fs::read_keyed(dir, "memory.events").ok())
            .and_then(|e| fs::keyed(&e, "oom_kill"))
            .unwrap_or(0)
    }
}

fn pids_limit(f: &mut StatsFiles, dir: &Path) -> u64 {
    match f.read(dir, "pids.max").as_deref() {
        Ok("max") | Err(_) => 0,
        Ok(v) => v.parse().unwrap_or(0),
    }
}

fn oom_kills_v1(f: &mut StatsFiles, dir: &Path) -> u64 {
    f.read_keyed(dir, "memory.oom_control")
        .ok()
        .and_then(|c| fs::keyed(&c, "oom_kill"))
        .unwrap_or(0)
}

fn blkio_entries(f: &mut StatsFiles, dir: &Path, file: &str) -> Vec<BlkioEntry> {
    f.read(dir, file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let dev = it.next()?;
            let op = it.next()?;
            let value = it.next()?.parse().ok()?;
            let (major, minor) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                op: op.to_owned(),
                value,
            })
        })
        .collect()
}

fn hugetlb_stats(
    f: &mut StatsFiles,
    dir: &Path,
    limit_suffix: &str,
    usage_suffix: &str,
    s: &mut Stats,
) {
    for name in f.names(dir) {
        let Some(size) = name
            .strip_prefix("hugetlb.")
            .and_then(|n| n.strip_suffix(&format!(".{usage_suffix}")))
        else {
            continue;
        };
        if size.contains('.') {
            continue;
        }
        let entry = s.hugetlb.entry(size.to_owned()).or_default();
        entry.usage = num(f, dir, &name);
        entry.max = num(f, dir, &format!("hugetlb.{size}.{limit_suffix}"));
        let events = f
            .read_keyed(dir, &format!("hugetlb.{size}.events"))
            .unwrap_or_default();
        entry.failcnt = fs::keyed(&events, "max")
            .unwrap_or_else(|| num(f, dir, &format!("hugetlb.{size}.failcnt")));
    }
}

fn v2_stats(f: &mut StatsFiles, dir: &Path, s: &mut Stats) {
    let controllers = f.read(dir, "cgroup.controllers").unwrap_or_default();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    // cpu.stat exists without the cpu controller (usage only).
    if let Ok(stat) = f.read_keyed(dir, "cpu.stat") {
        if s.cpu.usage.total == 0 {
            s.cpu.usage.total = fs::keyed(&stat, "usage_usec").unwrap_or(0) * 1000;
            s.cpu.usage.user = fs::keyed(&stat, "user_usec").unwrap_or(0) * 1000;
            s.cpu.usage.kernel = fs::keyed(&stat, "system_usec").unwrap_or(0) * 1000;
        }
        if has("cpu") {
            s.cpu.throttling.periods = fs::keyed(&stat, "nr_periods").unwrap_or(0);
            s.cpu.throttling.throttled_periods = fs::keyed(&stat, "nr_throttled").unwrap_or(0);
            s.cpu.throttling.throttled_time =
                fs::keyed(&stat, "throttled_usec").unwrap_or(0) * 1000;
        }
    }
    if has("memory") {
        let events = f.read_keyed(dir, "memory.events").unwrap_or_default();
        s.memory.usage = MemoryEntry {
            limit: num(f, dir, "memory.max"),
            usage: num(f, dir, "memory.current"),
            max: f
                .read(dir, "memory.peak")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            failcnt: fs::keyed(&events, "max").unwrap_or(0),
        };
        if f.exists(dir, "memory.swap.current") {
            s.memory.swap = MemoryEntry {
                limit: num(f, dir, "memory.swap.max"),
                usage: num(f, dir, "memory.swap.current"),
                max: 0,
                failcnt: 0,
            };
        }
        let raw = f.read_keyed(dir, "memory.stat").unwrap_or_default();
        s.memory.cache = fs::keyed(&raw, "file").unwrap_or(0);
        s.memory.raw = raw.into_iter().collect();
        s.memory.oom_kill = fs::keyed(&events, "oom_kill").unwrap_or(0);
    }
    if has("pids") {
        s.pids.current = num(f, dir, "pids.current");
        s.pids.limit = pids_limit(f, dir);
    }
    if has("io") {
        for line in f.read(dir, "io.stat").unwrap_or_default().lines() {
            let mut it = line.split_whitespace();
            let Some((major, minor)) = it.next().and_then(|d| d.split_once(':')) else {
                continue;
            };
            let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
                continue;
            };
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let Ok(value) = v.parse() else { continue };
                let (list, op) = match k {
                    "rbytes" => (&mut s.blkio.io_service_bytes_recursive, "Read"),
                    "wbytes" => (&mut s.blkio.io_service_bytes_recursive, "Write"),
                    "rios" => (&mut s.blkio.io_serviced_recursive, "Read"),
                    "wios" => (&mut s.blkio.io_serviced_recursive, "Write"),
                    _ => continue,
                };
                list.push(BlkioEntry {
                    major,
                    minor,
                    op: op.into(),
                    value,
                });
            }
        }
    }
    if has("hugetlb") {
        hugetlb_stats(f, dir, "max", "current", s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CgroupPath;

    /// The files kept open report the present, not what they held when
    /// opened: a process moved in after the first read shows in the next
    /// (real cgroups of this host, whatever their layout).
    #[test]
    fn kept_open_files_read_fresh_values() {
        let path = CgroupPath::Absolute(format!("/berth-stats-test-{}", std::process::id()));
        let m = Manager::new(&path).unwrap();
        m.create().unwrap();
        let mut files = StatsFiles::default();
        let before = m.stats_with(&mut files).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let moved = m.add_process(child.id() as i32);
        let after = moved
            .as_ref()
            .ok()
            .map(|_| m.stats_with(&mut files).unwrap());
        let fresh = m.stats().ok();
        let _ = child.kill();
        let _ = child.wait();
        m.remove().unwrap();
        moved.unwrap();
        let (after, fresh) = (after.unwrap(), fresh.unwrap());
        assert_eq!(before.pids.current, 0);
        assert_eq!(after.pids.current, 1, "{after:?}");
        assert!(!after.memory.raw.is_empty());
        // The same figures as files opened afresh.
        assert_eq!(after.pids.current, fresh.pids.current);
        assert_eq!(after.memory.raw.len(), fresh.memory.raw.len());
        assert_eq!(after.memory.usage.limit, fresh.memory.usage.limit);
    }
}
