//! Process attributes beyond credentials: personality, scheduler, I/O
//! priority, NUMA memory policy, CPU affinity and LSM labels.

use oci_spec::runtime::{
    IOPriorityClass, LinuxMemoryPolicy, LinuxPersonality, LinuxPersonalityDomain,
    LinuxSchedulerFlag, LinuxSchedulerPolicy, MemoryPolicyFlagType, MemoryPolicyModeType, Process,
    Spec,
};

use crate::error::Context;
use crate::{sys, Error, Result};

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

/// "0-3,5" -> [0, 1, 2, 3, 5]
pub fn parse_list(text: &str, what: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || invalid(format!("{what} {text:?} is not a list like 0-3,5"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b > 4095 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => {
                let n: usize = part.parse().map_err(|_| bad())?;
                if n > 4095 {
                    return Err(bad());
                }
                out.push(n);
            }
        }
    }
    Ok(out)
}

fn personality_flag(name: &str) -> Option<libc::c_ulong> {
    Some(match name {
        "UNAME26" => 0x0020000,
        "ADDR_NO_RANDOMIZE" => 0x0040000,
        "FDPIC_FUNCPTRS" => 0x0080000,
        "MMAP_PAGE_ZERO" => 0x0100000,
        "ADDR_COMPAT_LAYOUT" => 0x0200000,
        "READ_IMPLIES_EXEC" => 0x0400000,
        "ADDR_LIMIT_32BIT" => 0x0800000,
        "SHORT_INODE" => 0x1000000,
        "WHOLE_SECONDS" => 0x2000000,
        "STICKY_TIMEOUTS" => 0x4000000,
        "ADDR_LIMIT_3GB" => 0x8000000,
        _ => return None,
    })
}

fn personality_value(p: &LinuxPersonality) -> Result<libc::c_ulong> {
    let mut value: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    for flag in p.flags().iter().flatten() {
        value |= personality_flag(flag)
            .ok_or_else(|| invalid(format!("linux.personality: unknown flag {flag:?}")))?;
    }
    Ok(value)
}

fn sched_attr(process: &Process) -> Result<Option<sys::SchedAttr>> {
    let Some(s) = process.scheduler() else {
        return Ok(None);
    };
    let policy = match s.policy() {
        LinuxSchedulerPolicy::SchedOther => 0,
        LinuxSchedulerPolicy::SchedFifo => 1,
        LinuxSchedulerPolicy::SchedRr => 2,
        LinuxSchedulerPolicy::SchedBatch => 3,
        LinuxSchedulerPolicy::SchedIso => 4,
        LinuxSchedulerPolicy::SchedIdle => 5,
        LinuxSchedulerPolicy::SchedDeadline => 6,
    };
    let priority = s.priority().unwrap_or(0);
    let nice = s.nice().unwrap_or(0);
    if !(-20..=19).contains(&nice) {
        return Err(invalid(format!(
            "process.scheduler.nice {nice} is outside -20..19"
        )));
    }
    match policy {
        1 | 2 if !(1..=99).contains(&priority) => {
            return Err(invalid(format!(
                "process.scheduler.priority {priority} must be 1..99 for SCHED_FIFO/SCHED_RR"
            )))
        }
        0 | 3 | 5 if priority != 0 => {
            return Err(invalid(format!(
                "process.scheduler.priority must be 0 for this policy, not {priority}"
            )))
        }
        6 if s.runtime().unwrap_or(0) == 0 => {
            return Err(invalid(
                "process.scheduler: SCHED_DEADLINE needs runtime, deadline and period".into(),
            ))
        }
        _ => {}
    }
    let mut flags = 0u64;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            LinuxSchedulerFlag::SchedFlagUtilClampMin => 0x20,
            LinuxSchedulerFlag::SchedFlagUtilClampMax => 0x40,
        };
    }
    Ok(Some(sys::SchedAttr {
        policy,
        flags,
        nice,
        priority: priority as u32,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
        ..Default::default()
    }))
}

fn ioprio_value(process: &Process) -> Result<Option<i32>> {
    let Some(p) = process.io_priority() else {
        return Ok(None);
    };
    let class = match p.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    if !(0..=7).contains(&p.priority()) {
        return Err(invalid(format!(
            "process.ioPriority.priority {} is outside 0..7",
            p.priority()
        )));
    }
    Ok(Some((class << 13) | p.priority() as i32))
}

fn mempolicy(m: &LinuxMemoryPolicy) -> Result<(i32, Vec<u64>)> {
    let mut mode = match m.mode() {
        MemoryPolicyModeType::MpolDefault => 0,
        MemoryPolicyModeType::MpolPreferred => 1,
        MemoryPolicyModeType::MpolBind => 2,
        MemoryPolicyModeType::MpolInterleave => 3,
        MemoryPolicyModeType::MpolLocal => 4,
        MemoryPolicyModeType::MpolPreferredMany => 5,
        MemoryPolicyModeType::MpolWeightedInterleave => 6,
    };
    for f in m.flags().iter().flatten() {
        mode |= match f {
            MemoryPolicyFlagType::MpolFNumaBalancing => 1 << 13,
            MemoryPolicyFlagType::MpolFRelativeNodes => 1 << 14,
            MemoryPolicyFlagType::MpolFStaticNodes => 1 << 15,
        };
    }
    let nodes = parse_list(
        m.nodes().as_deref().unwrap_or(""),
        "linux.memoryPolicy.nodes",
    )?;
    let base = mode & 0xff;
    if matches!(base, 2 | 3 | 5 | 6) && nodes.is_empty() {
        return Err(invalid("linux.memoryPolicy: this mode needs nodes".into()));
    }
    if matches!(base, 0 | 4) && !nodes.is_empty() {
        return Err(invalid(
            "linux.memoryPolicy: MPOL_DEFAULT and MPOL_LOCAL take no nodes".into(),
        ));
    }
    let mut mask = Vec::new();
    if let Some(max) = nodes.iter().max() {
        mask = vec![0u64; max / 64 + 1];
        for n in nodes {
            mask[n / 64] |= 1 << (n % 64);
        }
    }
    Ok((mode, mask))
}

/// Checks every attribute (so that bad values fail `create` cleanly,
/// before anything runs) and the LSMs the config asks for exist.
pub fn validate(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    if let Some(p) = linux.and_then(|l| l.personality().as_ref()) {
        personality_value(p)?;
    }
    if let Some(m) = linux.and_then(|l| l.memory_policy().as_ref()) {
        mempolicy(m)?;
    }
    if let Some(process) = spec.process() {
        validate_process(process)?;
    }
    if linux
        .and_then(|l| l.mount_label().as_deref())
        .is_some_and(|l| !l.is_empty())
        && !selinux_enabled()
    {
        return Err(invalid(
            "linux.mountLabel is set but SELinux is not enabled on this host".into(),
        ));
    }
    Ok(())
}

pub fn validate_process(process: &Process) -> Result<()> {
    sched_attr(process)?;
    ioprio_value(process)?;
    if let Some(a) = process.exec_cpu_affinity() {
        for list in [a.initial(), a.cpu_affinity_final()].into_iter().flatten() {
            parse_list(list, "process.execCPUAffinity")?;
        }
    }
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        if !apparmor_enabled() {
            return Err(invalid(format!(
                "process.apparmorProfile {profile:?} is set but AppArmor is not enabled on this host"
            )));
        }
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        if !selinux_enabled() {
            return Err(invalid(format!(
                "process.selinuxLabel {label:?} is set but SELinux is not enabled on this host"
            )));
        }
    }
    Ok(())
}

pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

pub fn selinux_enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

/// The container's execution domain: for its init and, as runc does, for
/// every process `exec` starts in it.
pub fn apply_personality(spec: &Spec) -> Result<()> {
    if let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) {
        sys::personality(personality_value(p)?).ctx(|| "setting linux.personality".into())?;
    }
    Ok(())
}

/// Personality and memory policy of the container (init only).
pub fn apply_container(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    apply_personality(spec)?;
    if let Some(m) = linux.and_then(|l| l.memory_policy().as_ref()) {
        let (mode, mask) = mempolicy(m)?;
        sys::set_mempolicy(mode, &mask)
            .ctx(|| "setting linux.memoryPolicy (set_mempolicy)".into())?;
    }
    Ok(())
}

/// Scheduler and I/O priority of a process (init or exec).
pub fn apply_process(process: &Process) -> Result<()> {
    if let Some(attr) = sched_attr(process)? {
        sys::sched_setattr(&attr).ctx(|| "setting process.scheduler (sched_setattr)".into())?;
    }
    if let Some(value) = ioprio_value(process)? {
        sys::ioprio_set(value).ctx(|| "setting process.ioPriority (ioprio_set)".into())?;
    }
    Ok(())
}

/// Pins the calling process to the CPUs in `list`.
pub fn set_affinity(list: &str) -> Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for cpu in parse_list(list, "process.execCPUAffinity")? {
        set.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &set).ctx(|| format!("setting CPU affinity to {list}"))
}

/// Asks the LSMs to label the program we are about to exec.
pub fn set_exec_labels(process: &Process) -> Result<()> {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let path = if std::path::Path::new("/proc/self/attr/apparmor/exec").exists() {
            "/proc/self/attr/apparmor/exec"
        } else {
            "/proc/self/attr/exec"
        };
        std::fs::write(path, format!("exec {profile}"))
            .ctx(|| format!("applying AppArmor profile {profile:?}"))?;
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        std::fs::write("/proc/self/attr/exec", label)
            .ctx(|| format!("applying SELinux label {label:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(parse_list("0-2,5", "x").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_list("", "x").unwrap(), Vec::<usize>::new());
        for bad in ["a", "3-1", "1-", "99999"] {
            assert!(parse_list(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn personality_flags() {
        let p: LinuxPersonality =
            serde_json::from_str(r#"{"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE"]}"#)
                .unwrap();
        assert_eq!(personality_value(&p).unwrap(), 0x0008 | 0x0040000);
        let p: LinuxPersonality =
            serde_json::from_str(r#"{"domain": "LINUX", "flags": ["NOPE"]}"#).unwrap();
        assert!(personality_value(&p).is_err());
    }
}
