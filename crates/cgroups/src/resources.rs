//! Applying OCI `linux.resources` to cgroup v1 and v2 hierarchies, with
//! the conversions runc uses between the two.

use std::collections::BTreeSet;
use std::path::Path;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use crate::fs;
use crate::{Error, Manager, Part, Result};

/// cpu.shares (v1, 2..262144) to cpu.weight (v2, 1..10000), as runc maps it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// blkio.weight (v1, 10..1000) to io.weight (v2, 1..10000).
pub fn blkio_weight_to_io(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    1 + (weight.clamp(10, 1000) - 10) * 9999 / 990
}

/// OCI memory.swap is memory+swap; cgroup v2's memory.swap.max is swap alone.
/// Returns None when nothing is to be written.
pub fn swap_to_v2(swap: Option<i64>, limit: Option<i64>) -> Result<Option<String>> {
    let memory = limit.unwrap_or(0);
    let swap = swap.unwrap_or(0);
    if memory == -1 && swap == 0 {
        return Ok(Some("max".into()));
    }
    match swap {
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        s if s < -1 => Err(Error::invalid_resource(format!(
            "memory.swap {s} is negative"
        ))),
        s => {
            if memory <= 0 {
                return Err(Error::invalid_resource(
                    "memory.swap needs a memory.limit on cgroup v2",
                ));
            }
            if s < memory {
                return Err(Error::invalid_resource(format!(
                    "memory.swap {s} (memory+swap) is below memory.limit {memory}"
                )));
            }
            Ok(Some((s - memory).to_string()))
        }
    }
}

fn limit_text(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// Checks ranges before anything is written, so a bad request changes nothing.
pub fn validate(r: &LinuxResources) -> Result<()> {
    let bad = |m: String| Err(Error::invalid_resource(m));
    if let Some(m) = r.memory() {
        for (name, v) in [
            ("limit", m.limit()),
            ("reservation", m.reservation()),
            ("swap", m.swap()),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return bad(format!(
                        "memory.{name} {v} is negative (use -1 for unlimited)"
                    ));
                }
            }
        }
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if l > 0 && s > 0 && s < l {
                return bad(format!(
                    "memory.swap {s} (memory+swap) is below memory.limit {l}"
                ));
            }
        }
        if let Some(sw) = m.swappiness() {
            if sw > 100 {
                return bad(format!("memory.swappiness {sw} is above 100"));
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            if s != 0 && !(2..=262_144).contains(&s) {
                return bad(format!("cpu.shares {s} is outside 2..262144"));
            }
        }
        if let Some(p) = c.period() {
            if p != 0 && !(1000..=1_000_000).contains(&p) {
                return bad(format!(
                    "cpu.period {p} is outside 1000..1000000 microseconds"
                ));
            }
        }
        if let Some(q) = c.quota() {
            if q != -1 && q != 0 && q < 1000 {
                return bad(format!(
                    "cpu.quota {q} is below 1000 microseconds (use -1 for unlimited)"
                ));
            }
        }
        if let Some(i) = c.idle() {
            if i != 0 && i != 1 {
                return bad(format!("cpu.idle {i} must be 0 or 1"));
            }
        }
        for (name, v) in [("cpus", c.cpus()), ("mems", c.mems())] {
            if let Some(v) = v {
                if !v
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ch == ',' || ch == '-')
                {
                    return bad(format!("cpu.{name} {v:?} is not a list like 0-3,5"));
                }
            }
        }
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight() {
            if w != 0 && !(10..=1000).contains(&w) {
                return bad(format!("blockIO.weight {w} is outside 10..1000"));
            }
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                if !(10..=1000).contains(&w) {
                    return bad(format!(
                        "blockIO.weightDevice {}:{} weight {w} is outside 10..1000",
                        d.major(),
                        d.minor()
                    ));
                }
            }
        }
    }
    for h in r.hugepage_limits().iter().flatten() {
        if hugepage_size_suffix(h.page_size()).is_none() {
            return bad(format!(
                "hugepageLimits: page size {:?} is not like 2MB or 1GB",
                h.page_size()
            ));
        }
    }
    for (key, _) in r.unified().iter().flatten() {
        if key.contains('/') || key.contains("..") || !key.contains('.') {
            return bad(format!(
                "unified: {key:?} is not a cgroup interface file name"
            ));
        }
        if matches!(
            key.as_str(),
            "cgroup.procs" | "cgroup.threads" | "cgroup.subtree_control"
        ) {
            return bad(format!("unified: {key:?} may not be set"));
        }
    }
    crate::devices::validate(r.devices().as_deref().unwrap_or_default())?;
    Ok(())
}

/// "2MB" -> "2MB" (v1/v2 files use the same suffix form); None if malformed.
fn hugepage_size_suffix(size: &str) -> Option<&str> {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    (!digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB" | "TB" | "PB"))
    .then_some(size)
}

/// Which resource groups a request touches, with the controller each needs.
fn requested_controllers(r: &LinuxResources) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if m.limit().is_some()
            || m.reservation().is_some()
            || m.swap().is_some()
            || m.swappiness().is_some()
            || m.disable_oom_killer().is_some()
        {
            out.push(("memory limits", "memory"));
        }
    }
    if let Some(c) = r.cpu() {
        if c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.burst().is_some()
            || c.idle().is_some()
        {
            out.push(("cpu limits", "cpu"));
        }
        if c.cpus().as_ref().is_some_and(|s| !s.is_empty())
            || c.mems().as_ref().is_some_and(|s| !s.is_empty())
        {
            out.push(("cpuset limits", "cpuset"));
        }
    }
    if r.pids().is_some() {
        out.push(("a pids limit", "pids"));
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        out.push(("hugepage limits", "hugetlb"));
    }
    out
}

impl Manager {
    /// Applies `r` to every hierarchy. Validates first; errors name the file.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        self.check_resources(r)?;
        self.apply_part(r, Part::All)
    }

    /// What [`Manager::apply`] checks before it writes anything: the ranges,
    /// and that the host has a controller for every kind of limit asked
    /// for. Reads the unified hierarchy's directory, which must exist.
    pub fn check_resources(&self, r: &LinuxResources) -> Result<()> {
        validate(r)?;
        let mut available: BTreeSet<String> = BTreeSet::new();
        for (key, dir) in self.paths() {
            if key.is_empty() {
                let controllers = fs::read(dir, "cgroup.controllers").unwrap_or_default();
                available.extend(controllers.split_whitespace().map(str::to_owned));
            } else {
                available.extend(key.split(',').map(str::to_owned));
            }
        }
        // The io controller of v2 is blkio on v1.
        if available.contains("io") {
            available.insert("blkio".into());
        }
        for (what, controller) in requested_controllers(r) {
            if !available.contains(controller) {
                return Err(Error::MissingController {
                    what: what.into(),
                    controller: controller.into(),
                });
            }
        }
        Ok(())
    }

    /// Writes `r` to the hierarchies `part` covers, unchecked: callers run
    /// [`Manager::check_resources`] first.
    pub fn apply_part(&self, r: &LinuxResources, part: Part) -> Result<()> {
        let only_hierarchy = self.paths().len() == 1;
        for (key, dir) in self.part(part) {
            if key.is_empty() {
                apply_v2(dir, r, only_hierarchy)?;
            } else {
                for controller in key.split(',') {
                    apply_v1(controller, dir, r)?;
                }
            }
        }
        Ok(())
    }

    /// Enables every available controller for the container's cgroup in the
    /// unified hierarchy, from its root down to its parent (cgroup v2 only
    /// delegates controllers that the parent lists in cgroup.subtree_control).
    pub fn enable_v2_controllers(&self, mountpoint: &Path) {
        let Some(dir) = self.unified_path() else {
            return;
        };
        let Ok(rel) = dir.strip_prefix(mountpoint) else {
            return;
        };
        let mut current = mountpoint.to_path_buf();
        for component in rel.components() {
            let available = fs::read(&current, "cgroup.controllers").unwrap_or_default();
            let enabled = fs::read(&current, "cgroup.subtree_control").unwrap_or_default();
            let wanted: Vec<String> = available
                .split_whitespace()
                .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
                .map(|c| format!("+{c}"))
                .collect();
            if !wanted.is_empty() {
                // A cgroup with processes of its own cannot delegate: carry on.
                if let Err(e) = fs::write(&current, "cgroup.subtree_control", wanted.join(" ")) {
                    log::debug!("{e}");
                }
            }
            current.push(component);
        }
    }
}

fn apply_v1(controller: &str, dir: &Path, r: &LinuxResources) -> Result<()> {
    match controller {
        "memory" => {
            if let Some(m) = r.memory() {
                v1_memory(dir, m)?;
            }
        }
        "cpu" => {
            if let Some(c) = r.cpu() {
                v1_cpu(dir, c)?;
            }
        }
        "cpuset" => {
            if let Some(c) = r.cpu() {
                if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
                    fs::write(dir, "cpuset.cpus", cpus)?;
                }
                if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
                    fs::write(dir, "cpuset.mems", mems)?;
                }
            }
        }
        "pids" => {
            if let Some(p) = r.pids() {
                if p.limit() != 0 {
                    fs::write(dir, "pids.max", limit_text(p.limit()))?;
                }
            }
        }
        "blkio" => {
            if let Some(b) = r.block_io() {
                v1_blkio(dir, b)?;
            }
        }
        "hugetlb" => {
            for h in r.hugepage_limits().iter().flatten() {
                fs::write(
                    dir,
                    &format!("hugetlb.{}.limit_in_bytes", h.page_size()),
                    h.limit().to_string(),
                )?;
            }
        }
        "net_cls" => {
            if let Some(id) = r.network().as_ref().and_then(|n| n.class_id()) {
                fs::write(dir, "net_cls.classid", id.to_string())?;
            }
        }
        "net_prio" => {
            for p in r
                .network()
                .as_ref()
                .and_then(|n| n.priorities().clone())
                .unwrap_or_default()
            {
                fs::write(
                    dir,
                    "net_prio.ifpriomap",
                    format!("{} {}", p.name(), p.priority()),
                )?;
            }
        }
        "rdma" => write_rdma(dir, r)?,
        "devices" => crate::devices::apply_v1(dir, r.devices().as_deref().unwrap_or_default())?,
        _ => {}
    }
    Ok(())
}

fn v1_memory(dir: &Path, m: &LinuxMemory) -> Result<()> {
    let limit = m.limit();
    let mut swap = m.swap();
    if limit == Some(-1) && swap.is_none() {
        swap = Some(-1);
    }
    if m.check_before_update() == Some(true) {
        if let Some(l) = limit.filter(|l| *l > 0) {
            if let Ok(Some(usage)) = fs::read_u64(dir, "memory.usage_in_bytes") {
                if usage > l as u64 {
                    return Err(Error::invalid_resource(format!(
                        "memory.limit {l} is below the current usage {usage} (checkBeforeUpdate)"
                    )));
                }
            }
        }
    }
    let has_swap_file = fs::exists(dir, "memory.memsw.limit_in_bytes");
    if swap.is_some() && !has_swap_file && swap != Some(-1) {
        log::warn!("memory.swap requested but this kernel has no swap accounting (memory.memsw.*): ignored");
    }
    let swap = swap.filter(|_| has_swap_file);
    match (limit, swap) {
        (Some(l), Some(s)) => {
            // The kernel requires memory <= memory+swap at every step: write
            // in the order that keeps it true.
            let current = fs::read(dir, "memory.limit_in_bytes")
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(i64::MAX);
            if s == -1 || current < s {
                fs::write(dir, "memory.memsw.limit_in_bytes", s.to_string())?;
                fs::write(dir, "memory.limit_in_bytes", l.to_string())?;
            } else {
                fs::write(dir, "memory.limit_in_bytes", l.to_string())?;
                fs::write(dir, "memory.memsw.limit_in_bytes", s.to_string())?;
            }
        }
        (Some(l), None) => fs::write(dir, "memory.limit_in_bytes", l.to_string())?,
        (None, Some(s)) => fs::write(dir, "memory.memsw.limit_in_bytes", s.to_string())?,
        (None, None) => {}
    }
    if let Some(r) = m.reservation() {
        fs::write(dir, "memory.soft_limit_in_bytes", r.to_string())?;
    }
    if let Some(s) = m.swappiness() {
        fs::write(dir, "memory.swappiness", s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        fs::write(dir, "memory.oom_control", "1")?;
    }
    if m.kernel().is_some() || m.kernel_tcp().is_some() {
        log::warn!(
            "memory.kernel and memory.kernelTCP are not supported by current kernels: ignored"
        );
    }
    Ok(())
}

fn v1_cpu(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if let Some(s) = c.shares().filter(|s| *s != 0) {
        fs::write(dir, "cpu.shares", s.to_string())?;
    }
    let period = c.period().filter(|p| *p != 0);
    let quota = c.quota().filter(|q| *q != 0);
    if let Some(p) = period {
        if let Err(e) = fs::write(dir, "cpu.cfs_period_us", p.to_string()) {
            // A shorter period can conflict with the current quota: quota first.
            match quota {
                Some(q) => {
                    fs::write(dir, "cpu.cfs_quota_us", q.to_string())?;
                    fs::write(dir, "cpu.cfs_period_us", p.to_string())?;
                }
                None => return Err(e),
            }
        }
    }
    if let Some(q) = quota {
        fs::write(dir, "cpu.cfs_quota_us", q.to_string())?;
    }
    if let Some(b) = c.burst() {
        fs::write(dir, "cpu.cfs_burst_us", b.to_string())?;
    }
    if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
        fs::write(dir, "cpu.rt_period_us", p.to_string())?;
    }
    if let Some(r) = c.realtime_runtime().filter(|r| *r != 0) {
        fs::write(dir, "cpu.rt_runtime_us", r.to_string())?;
    }
    if let Some(i) = c.idle() {
        fs::write(dir, "cpu.idle", i.to_string())?;
    }
    Ok(())
}

/// Refusing beats ignoring: a weight nobody enforces is a promise broken.
fn weight_unsupported(files: &str) -> Error {
    Error::Unsupported(format!(
        "blockIO.weight was requested but this host's block I/O scheduler has no cgroup weights \
         (the cgroup has neither {files}: the CFQ or BFQ scheduler is needed)"
    ))
}

fn v1_blkio(dir: &Path, b: &LinuxBlockIo) -> Result<()> {
    // Kernels with BFQ instead of CFQ name the weights blkio.bfq.*; with
    // neither scheduler (none, mq-deadline, kyber) there is no weight at all.
    let prefix = if fs::exists(dir, "blkio.weight") {
        Some("blkio")
    } else if fs::exists(dir, "blkio.bfq.weight") {
        Some("blkio.bfq")
    } else {
        None
    };
    let wants_weight = b.weight().is_some_and(|w| w != 0)
        || b.weight_device()
            .iter()
            .flatten()
            .any(|d| d.weight().is_some());
    let prefix = match prefix {
        Some(p) => p,
        None if wants_weight => {
            return Err(weight_unsupported("blkio.weight nor blkio.bfq.weight"))
        }
        None => "blkio",
    };
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        fs::write(dir, &format!("{prefix}.weight"), w.to_string())?;
    }
    if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
        if fs::exists(dir, "blkio.leaf_weight") {
            fs::write(dir, "blkio.leaf_weight", w.to_string())?;
        } else {
            log::warn!("blockIO.leafWeight is not supported by this kernel: ignored");
        }
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            fs::write(
                dir,
                &format!("{prefix}.weight_device"),
                format!("{}:{} {w}", d.major(), d.minor()),
            )?;
        }
        if let Some(w) = d.leaf_weight() {
            if fs::exists(dir, "blkio.leaf_weight_device") {
                fs::write(
                    dir,
                    "blkio.leaf_weight_device",
                    format!("{}:{} {w}", d.major(), d.minor()),
                )?;
            }
        }
    }
    for (file, list) in [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ] {
        for d in list.iter().flatten() {
            fs::write(
                dir,
                file,
                format!("{}:{} {}", d.major(), d.minor(), d.rate()),
            )?;
        }
    }
    Ok(())
}

fn write_rdma(dir: &Path, r: &LinuxResources) -> Result<()> {
    for (device, limit) in r.rdma().iter().flatten() {
        let mut line = device.clone();
        if let Some(h) = limit.hca_handles() {
            line.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = limit.hca_objects() {
            line.push_str(&format!(" hca_object={o}"));
        }
        fs::write(dir, "rdma.max", line)?;
    }
    Ok(())
}

/// Applies to a cgroup v2 directory, writing only controllers it has (on a
/// hybrid host most live in v1). `only_hierarchy`: this is a v2-only host.
fn apply_v2(dir: &Path, r: &LinuxResources, only_hierarchy: bool) -> Result<()> {
    let controllers = fs::read(dir, "cgroup.controllers").unwrap_or_default();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if let Some(m) = r.memory().as_ref().filter(|_| has("memory")) {
        if m.check_before_update() == Some(true) {
            if let (Some(l), Ok(Some(current))) = (
                m.limit().filter(|l| *l > 0),
                fs::read_u64(dir, "memory.current"),
            ) {
                if current > l as u64 {
                    return Err(Error::invalid_resource(format!(
                        "memory.limit {l} is below the current usage {current} (checkBeforeUpdate)"
                    )));
                }
            }
        }
        if let Some(swap) = swap_to_v2(m.swap(), m.limit())? {
            if fs::exists(dir, "memory.swap.max") {
                fs::write(dir, "memory.swap.max", swap)?;
            } else if swap != "max" {
                log::warn!("memory.swap requested but this kernel has no swap accounting: ignored");
            }
        }
        if let Some(l) = m.limit() {
            fs::write(dir, "memory.max", limit_text(l))?;
        }
        if let Some(r) = m.reservation().filter(|r| *r >= 0) {
            fs::write(dir, "memory.low", r.to_string())?;
        }
        if m.swappiness().is_some() {
            log::warn!("memory.swappiness is not supported on cgroup v2: ignored");
        }
        if m.disable_oom_killer() == Some(true) {
            log::warn!("memory.disableOOMKiller is not supported on cgroup v2: ignored");
        }
    }
    if let Some(c) = r.cpu().as_ref().filter(|_| has("cpu")) {
        if let Some(w) = c.shares().map(shares_to_weight).filter(|w| *w != 0) {
            fs::write(dir, "cpu.weight", w.to_string())?;
        }
        if c.quota().is_some() || c.period().is_some() {
            let current = fs::read(dir, "cpu.max").unwrap_or_else(|_| "max 100000".into());
            let mut parts = current.split_whitespace();
            let cur_quota = parts.next().unwrap_or("max").to_owned();
            let cur_period = parts.next().unwrap_or("100000").to_owned();
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                Some(_) => "max".into(),
                None => cur_quota,
            };
            let period = c
                .period()
                .filter(|p| *p != 0)
                .map(|p| p.to_string())
                .unwrap_or(cur_period);
            fs::write(dir, "cpu.max", format!("{quota} {period}"))?;
        }
        if let Some(b) = c.burst() {
            fs::write(dir, "cpu.max.burst", b.to_string())?;
        }
        if let Some(i) = c.idle() {
            fs::write(dir, "cpu.idle", i.to_string())?;
        }
        if c.realtime_runtime().is_some_and(|r| r != 0)
            || c.realtime_period().is_some_and(|p| p != 0)
        {
            return Err(Error::Unsupported(
                "cpu.realtimeRuntime/realtimePeriod are not supported on cgroup v2".into(),
            ));
        }
    }
    if let Some(c) = r.cpu().as_ref().filter(|_| has("cpuset")) {
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            fs::write(dir, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            fs::write(dir, "cpuset.mems", mems)?;
        }
    }
    if let Some(p) = r.pids().as_ref().filter(|_| has("pids")) {
        if p.limit() != 0 {
            fs::write(dir, "pids.max", limit_text(p.limit()))?;
        }
    }
    if let Some(b) = r.block_io().as_ref().filter(|_| has("io")) {
        let bfq = !fs::exists(dir, "io.weight");
        let wants_weight = b.weight().is_some_and(|w| w != 0)
            || b.weight_device()
                .iter()
                .flatten()
                .any(|d| d.weight().is_some());
        if bfq && wants_weight && !fs::exists(dir, "io.bfq.weight") {
            return Err(weight_unsupported("io.weight nor io.bfq.weight"));
        }
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            if bfq {
                fs::write(dir, "io.bfq.weight", w.to_string())?;
            } else {
                fs::write(dir, "io.weight", blkio_weight_to_io(w.into()).to_string())?;
            }
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                fs::write(
                    dir,
                    "io.bfq.weight",
                    format!("{}:{} {w}", d.major(), d.minor()),
                )?;
            }
        }
        for (key, list) in [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ] {
            for d in list.iter().flatten() {
                let rate = if d.rate() == 0 {
                    "max".to_owned()
                } else {
                    d.rate().to_string()
                };
                fs::write(
                    dir,
                    "io.max",
                    format!("{}:{} {key}={rate}", d.major(), d.minor()),
                )?;
            }
        }
    }
    if has("hugetlb") {
        for h in r.hugepage_limits().iter().flatten() {
            fs::write(
                dir,
                &format!("hugetlb.{}.max", h.page_size()),
                limit_text(h.limit()),
            )?;
        }
    }
    if has("rdma") {
        write_rdma(dir, r)?;
    }
    if only_hierarchy {
        crate::devices::apply_v2(dir, r.devices().as_deref().unwrap_or_default())?;
    }
    for (key, value) in r.unified().iter().flatten() {
        let controller = key.split('.').next().unwrap_or("");
        if controller != "cgroup" && !has(controller) {
            return Err(Error::MissingController {
                what: format!("unified resource {key}"),
                controller: controller.into(),
            });
        }
        fs::write(dir, key, value)?;
    }
    Ok(())
}
