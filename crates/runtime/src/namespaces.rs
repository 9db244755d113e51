//! Which namespaces a new process creates and which it joins, and the order
//! in which that happens.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use crate::error::Context;
use crate::{sys, Error, Result};

/// Join order: the user namespace first (it grants the capabilities to join
/// the others), the mount namespace last (it changes the root we resolve in).
const JOIN_ORDER: [LinuxNamespaceType; 6] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Mount,
];

pub fn clone_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => 0x80, // CLONE_NEWTIME
    }
}

fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// How a process gets into its namespaces.
#[derive(Debug, Default)]
pub struct NsPlan {
    /// Namespaces created by the clone itself (never cgroup: the cgroup
    /// namespace is unshared once the process sits in its cgroup).
    pub clone_flags: libc::c_int,
    /// Namespaces unshared by the child after it is placed in its cgroup.
    pub unshare_flags: libc::c_int,
    /// Namespaces the child joins, in join order.
    pub joins: Vec<(libc::c_int, OwnedFd)>,
    /// PID and time namespaces are entered by the parent setting the
    /// namespace its children start in.
    pub pid_join: Option<OwnedFd>,
    pub time_join: Option<OwnedFd>,
    pub new_user: bool,
    pub new_pid: bool,
    pub new_time: bool,
    /// Joining a user namespace while creating others: an intermediate child
    /// must join it first so that the new namespaces belong to it.
    pub two_stage: bool,
}

impl NsPlan {
    /// The plan for a container's init, from config.json.
    pub fn for_container(spec: &Spec) -> Result<NsPlan> {
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        let mut plan = NsPlan::default();
        let mut new_flags = 0;
        for t in JOIN_ORDER
            .iter()
            .chain([LinuxNamespaceType::Pid, LinuxNamespaceType::Time].iter())
        {
            let Some(ns) = namespaces.iter().find(|n| n.typ() == *t) else {
                continue;
            };
            match ns.path() {
                None => new_flags |= clone_flag(*t),
                Some(path) => {
                    let file = File::open(path).ctx(|| {
                        format!("opening {} namespace {}", proc_name(*t), path.display())
                    })?;
                    check_ns_file(&file, *t, &path.display().to_string())?;
                    let fd = OwnedFd::from(file);
                    match t {
                        LinuxNamespaceType::Pid => plan.pid_join = Some(fd),
                        LinuxNamespaceType::Time => plan.time_join = Some(fd),
                        _ => plan.joins.push((clone_flag(*t), fd)),
                    }
                }
            }
        }
        plan.new_user = new_flags & libc::CLONE_NEWUSER != 0;
        plan.new_pid = new_flags & libc::CLONE_NEWPID != 0;
        plan.new_time = new_flags & clone_flag(LinuxNamespaceType::Time) != 0;
        let joins_user = plan.joins.iter().any(|(f, _)| *f == libc::CLONE_NEWUSER);
        let creatable = new_flags & !clone_flag(LinuxNamespaceType::Time);
        plan.two_stage = joins_user && creatable != 0;
        if plan.two_stage {
            plan.unshare_flags = creatable;
        } else {
            plan.clone_flags = creatable & !libc::CLONE_NEWCGROUP;
            plan.unshare_flags = creatable & libc::CLONE_NEWCGROUP;
        }
        Ok(plan)
    }

    /// The plan for a process joining every namespace of a running container
    /// that differs from ours.
    pub fn for_exec(init_pid: i32) -> Result<NsPlan> {
        let mut plan = NsPlan::default();
        for t in JOIN_ORDER
            .iter()
            .chain([LinuxNamespaceType::Pid, LinuxNamespaceType::Time].iter())
        {
            let name = proc_name(*t);
            let theirs = format!("/proc/{init_pid}/ns/{name}");
            let file = match File::open(&theirs) {
                Ok(f) => f,
                // A kernel without this namespace type.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx(|| format!("opening {theirs}")),
            };
            let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
                .ctx(|| format!("stat /proc/self/ns/{name}"))?;
            let their_meta = file.metadata().ctx(|| format!("stat {theirs}"))?;
            if ours.ino() == their_meta.ino() && ours.dev() == their_meta.dev() {
                continue;
            }
            let fd = OwnedFd::from(file);
            match t {
                LinuxNamespaceType::Pid => plan.pid_join = Some(fd),
                LinuxNamespaceType::Time => plan.time_join = Some(fd),
                _ => plan.joins.push((clone_flag(*t), fd)),
            }
        }
        Ok(plan)
    }

    /// In the child: join the namespaces to join, then unshare the rest.
    /// Whether the process gets a namespace of this type other than
    /// berth's (created or joined).
    pub fn has(&self, flag: libc::c_int) -> bool {
        (self.clone_flags | self.unshare_flags) & flag != 0
            || self.joins.iter().any(|(f, _)| *f == flag)
    }

    pub fn enter(&self) -> Result<()> {
        for (flag, fd) in &self.joins {
            sys::setns(fd.as_fd(), *flag)
                .ctx(|| format!("joining {} namespace", flag_name(*flag)))?;
        }
        if self.unshare_flags != 0 {
            sys::unshare(self.unshare_flags).ctx(|| "creating namespaces (unshare)".into())?;
        }
        Ok(())
    }
}

fn flag_name(flag: libc::c_int) -> &'static str {
    JOIN_ORDER
        .iter()
        .chain([LinuxNamespaceType::Pid, LinuxNamespaceType::Time].iter())
        .find(|t| clone_flag(**t) == flag)
        .map(|t| proc_name(*t))
        .unwrap_or("unknown")
}

/// Refuses a namespace path that is not a namespace of the expected type.
fn check_ns_file(file: &File, t: LinuxNamespaceType, path: &str) -> Result<()> {
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    // The ioctl is the kernel's own answer; nsfs files also live on "nsfs".
    let actual = rustix::fs::fstatfs(file).ctx(|| format!("statfs {path}"))?;
    const NSFS_MAGIC: i64 = 0x6e736673;
    if actual.f_type as i64 != NSFS_MAGIC {
        return Err(Error::InvalidConfig(format!(
            "namespace path {path} is not a namespace file"
        )));
    }
    let nstype = sys_ioctl_nstype(fd, NS_GET_NSTYPE);
    if let Some(n) = nstype {
        if n != clone_flag(t) {
            return Err(Error::InvalidConfig(format!(
                "namespace path {path} is not a {} namespace",
                proc_name(t)
            )));
        }
    }
    Ok(())
}

fn sys_ioctl_nstype(fd: i32, req: libc::c_ulong) -> Option<libc::c_int> {
    sys::ioctl_noarg(fd, req).ok()
}

/// Writes /proc/<pid>/uid_map or gid_map (one write, as the kernel requires).
pub fn write_id_map(pid: i32, file: &str, maps: &[LinuxIdMapping]) -> Result<()> {
    let mut text = String::new();
    for m in maps {
        text.push_str(&format!(
            "{} {} {}\n",
            m.container_id(),
            m.host_id(),
            m.size()
        ));
    }
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text.as_bytes()).ctx(|| format!("writing {path}"))
}

/// In a process that joined a user namespace: whether the config's
/// mappings are that namespace's (as runc 1.2 checks), read from
/// /proc/self, which from inside shows the ids on the parent's side.
pub fn check_joined_id_maps(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for (file, field, maps) in [
        ("uid_map", "uidMappings", linux.uid_mappings()),
        ("gid_map", "gidMappings", linux.gid_mappings()),
    ] {
        let Some(maps) = maps.as_ref().filter(|m| !m.is_empty()) else {
            continue;
        };
        let text = berth_common::kernel_file::read_to_string(format!("/proc/self/{file}"))
            .ctx(|| format!("reading the joined user namespace's {file}"))?;
        let mut have: Vec<(u32, u32, u32)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace().map(|n| n.parse::<u32>().ok());
                Some((f.next()??, f.next()??, f.next()??))
            })
            .collect();
        let mut want: Vec<(u32, u32, u32)> = maps
            .iter()
            .map(|m| (m.container_id(), m.host_id(), m.size()))
            .collect();
        have.sort_unstable();
        want.sort_unstable();
        if have != want {
            return Err(Error::InvalidConfig(format!(
                "linux.{field} {want:?} are not the mappings of the joined user namespace {have:?}"
            )));
        }
    }
    Ok(())
}

/// Sets the parent's namespace for future children (pid or time) and gives
/// back a guard that restores ours on drop.
pub struct ChildNsGuard {
    restore: Vec<(OwnedFd, libc::c_int)>,
}

impl ChildNsGuard {
    pub fn enter(plan: &NsPlan, time_offsets: Option<&str>) -> Result<ChildNsGuard> {
        let mut guard = ChildNsGuard {
            restore: Vec::new(),
        };
        if let Some(fd) = &plan.pid_join {
            let own = File::open("/proc/self/ns/pid").ctx(|| "opening /proc/self/ns/pid".into())?;
            sys::setns(fd.as_fd(), libc::CLONE_NEWPID)
                .ctx(|| "entering the container's pid namespace".into())?;
            guard.restore.push((own.into(), libc::CLONE_NEWPID));
        }
        let time_flag = clone_flag(LinuxNamespaceType::Time);
        if plan.time_join.is_some() || plan.new_time {
            let own =
                File::open("/proc/self/ns/time").ctx(|| "opening /proc/self/ns/time".into())?;
            guard.restore.push((own.into(), time_flag));
            if let Some(fd) = &plan.time_join {
                sys::setns(fd.as_fd(), time_flag)
                    .ctx(|| "entering the container's time namespace".into())?;
            } else {
                sys::unshare(time_flag).ctx(|| "creating a time namespace".into())?;
                if let Some(offsets) = time_offsets {
                    std::fs::write("/proc/self/timens_offsets", offsets)
                        .ctx(|| "writing /proc/self/timens_offsets".into())?;
                }
            }
        }
        Ok(guard)
    }
}

impl Drop for ChildNsGuard {
    fn drop(&mut self) {
        for (fd, flag) in self.restore.drain(..) {
            if let Err(e) = sys::setns(fd.as_fd(), flag) {
                log::warn!(
                    "restoring own {} namespace for children: {e}",
                    flag_name(flag)
                );
            }
        }
    }
}

/// The timens_offsets text for linux.timeOffsets.
pub fn time_offsets_text(spec: &Spec) -> Option<String> {
    let offsets = spec.linux().as_ref()?.time_offsets().as_ref()?;
    let mut text = String::new();
    for (clock, off) in offsets {
        text.push_str(&format!(
            "{clock} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    Some(text)
}
