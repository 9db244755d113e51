//! Turning an OCI `process` object into a running program: executable
//! lookup, environment, rlimits, credentials, capabilities, and exec.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};

use crate::error::Context;
use crate::{sys, Error, Result};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A program ready to exec: resolved path, argv and envp.
pub struct Program {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidConfig(format!("{what} {s:?} contains a NUL byte")))
}

/// Resolves the executable in the current root (call after entering the
/// container's root) and builds argv/envp. HOME is set from /etc/passwd when
/// the config does not set it, as runc does.
pub fn prepare_program(process: &Process) -> Result<Program> {
    let args = process.args().as_deref().unwrap_or_default();
    let first = args
        .first()
        .ok_or_else(|| Error::InvalidConfig("process.args is empty".into()))?;
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = home_of(process.user().uid()).unwrap_or_else(|| "/".into());
        env.push(format!("HOME={home}"));
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let resolved = lookup_executable(first, path_var, process.cwd())?;
    Ok(Program {
        path: CString::new(resolved.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidConfig("NUL in path".into()))?,
        argv: args
            .iter()
            .map(|a| cstring(a, "argument"))
            .collect::<Result<_>>()?,
        envp: env
            .iter()
            .map(|e| cstring(e, "environment entry"))
            .collect::<Result<_>>()?,
    })
}

/// PATH lookup as execvp does it, with the error runc gives.
pub fn lookup_executable(name: &str, path_var: &str, cwd: &Path) -> Result<PathBuf> {
    let not_found = |detail: &str| Error::Init(format!("exec: {name:?}: {detail}"));
    if name.contains('/') {
        let p = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            cwd.join(name)
        };
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p),
            Ok(m) if m.is_dir() => Err(not_found("is a directory")),
            Ok(_) => Err(not_found("permission denied")),
            Err(_) => Err(not_found("no such file or directory")),
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if let Ok(m) = std::fs::metadata(&candidate) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(not_found("executable file not found in $PATH"))
}

/// The home directory of `uid` from the current root's /etc/passwd.
fn home_of(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2].parse() == Ok(uid)).then(|| fields[5].to_owned())
    })
}

fn rlimit_resource(t: PosixRlimitType) -> rustix::process::Resource {
    use rustix::process::Resource as R;
    match t {
        PosixRlimitType::RlimitCpu => R::Cpu,
        PosixRlimitType::RlimitFsize => R::Fsize,
        PosixRlimitType::RlimitData => R::Data,
        PosixRlimitType::RlimitStack => R::Stack,
        PosixRlimitType::RlimitCore => R::Core,
        PosixRlimitType::RlimitRss => R::Rss,
        PosixRlimitType::RlimitNproc => R::Nproc,
        PosixRlimitType::RlimitNofile => R::Nofile,
        PosixRlimitType::RlimitMemlock => R::Memlock,
        PosixRlimitType::RlimitAs => R::As,
        PosixRlimitType::RlimitLocks => R::Locks,
        PosixRlimitType::RlimitSigpending => R::Sigpending,
        PosixRlimitType::RlimitMsgqueue => R::Msgqueue,
        PosixRlimitType::RlimitNice => R::Nice,
        PosixRlimitType::RlimitRtprio => R::Rtprio,
        PosixRlimitType::RlimitRttime => R::Rttime,
    }
}

/// The OCI name of an rlimit (RLIMIT_NOFILE).
fn rlimit_name(t: PosixRlimitType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{t:?}"))
}

/// Applies process.rlimits to the calling process.
pub fn apply_rlimits(process: &Process) -> Result<()> {
    for rl in process.rlimits().iter().flatten() {
        if rl.soft() > rl.hard() {
            return Err(Error::InvalidConfig(format!(
                "{}: soft limit {} is above hard limit {}",
                rlimit_name(rl.typ()),
                rl.soft(),
                rl.hard()
            )));
        }
        let limit = rustix::process::Rlimit {
            current: (rl.soft() != u64::MAX).then_some(rl.soft()),
            maximum: (rl.hard() != u64::MAX).then_some(rl.hard()),
        };
        if let Err(e) = rustix::process::setrlimit(rlimit_resource(rl.typ()), limit) {
            let hint = if e == rustix::io::Errno::PERM {
                ": raising a hard limit needs CAP_SYS_RESOURCE, which this runtime does not have"
            } else {
                ""
            };
            return Err(Error::Sys {
                context: format!(
                    "setting {} to soft={} hard={}{hint}",
                    rlimit_name(rl.typ()),
                    rl.soft(),
                    rl.hard()
                ),
                source: e.into(),
            });
        }
    }
    Ok(())
}

/// Writes process.oomScoreAdj for the calling process.
pub fn apply_oom_score_adj(process: &Process) -> Result<()> {
    let Some(adj) = process.oom_score_adj() else {
        return Ok(());
    };
    if !(-1000..=1000).contains(&adj) {
        return Err(Error::InvalidConfig(format!(
            "oomScoreAdj {adj} is outside -1000..1000"
        )));
    }
    std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
        let hint = if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
            let now = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
            format!(
                " (from {}): lowering oom_score_adj needs CAP_SYS_RESOURCE, which this runtime does not have",
                now.trim()
            )
        } else {
            String::new()
        };
        Error::Sys {
            context: format!("setting oom_score_adj to {adj}{hint}"),
            source: e,
        }
    })
}

/// Bit mask of a capability set from config.json.
fn cap_mask(set: &Option<Capabilities>) -> Result<u64> {
    let mut mask = 0u64;
    for cap in set.iter().flatten() {
        let name = format!("CAP_{cap}");
        let parsed = caps::Capability::from_str(&name)
            .map_err(|_| Error::InvalidConfig(format!("unknown capability {name}")))?;
        mask |= 1u64 << parsed.index();
    }
    Ok(mask)
}

fn last_cap() -> u32 {
    berth_common::kernel_file::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The last steps before exec, in the order runc uses: bounding set, user
/// and groups (keeping capabilities across the uid change), the remaining
/// capability sets, no_new_privs, umask. Call with full privileges.
pub fn drop_privileges(process: &Process) -> Result<()> {
    let caps = process.capabilities().as_ref();
    if let Some(caps) = caps {
        let bounding = cap_mask(caps.bounding())?;
        for cap in 0..=last_cap() {
            if bounding & (1u64 << cap) == 0 {
                match sys::drop_bounding_cap(cap) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => {
                        return Err(e)
                            .ctx(|| format!("dropping capability {cap} from the bounding set"))
                    }
                }
            }
        }
        sys::set_keep_caps(true).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    }
    let user = process.user();
    let gids = user.additional_gids().clone().unwrap_or_default();
    match sys::setgroups(&gids) {
        Ok(()) => {}
        // setgroups is denied in some user namespaces; only an error if groups were asked for.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && gids.is_empty() => {}
        Err(e) => return Err(e).ctx(|| format!("setting additional groups {gids:?}")),
    }
    sys::setresgid(user.gid()).ctx(|| format!("setting gid {}", user.gid()))?;
    sys::setresuid(user.uid()).ctx(|| format!("setting uid {}", user.uid()))?;
    if let Some(caps) = caps {
        sys::set_keep_caps(false).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
        let effective = cap_mask(caps.effective())?;
        let permitted = cap_mask(caps.permitted())?;
        let inheritable = cap_mask(caps.inheritable())?;
        sys::capset(effective, permitted, inheritable).ctx(|| "setting capabilities".into())?;
        let ambient = cap_mask(caps.ambient())?;
        let ambient: Vec<u32> = (0..64).filter(|c| ambient & (1u64 << c) != 0).collect();
        let skipped =
            sys::set_ambient_caps(&ambient).ctx(|| "setting ambient capabilities".into())?;
        if !skipped.is_empty() {
            log::debug!(
                "ambient capabilities {skipped:?} skipped: not both permitted and inheritable"
            );
        }
    }
    if process.no_new_privileges() == Some(true) {
        sys::set_no_new_privs().ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    }
    let umask = user.umask().unwrap_or(0o022);
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask & 0o777));
    Ok(())
}

/// Clears the signal state and marks every descriptor above stdio and the
/// preserved ones close-on-exec: the last steps before execve.
pub fn prepare_exec(preserve_fds: u32) -> Result<()> {
    sys::reset_signals().map_err(|e| Error::Sys {
        context: "resetting signals".into(),
        source: e,
    })?;
    mark_inherited_fds_cloexec(preserve_fds)
}

/// Marks every descriptor above stdio and the `preserve_fds` after it
/// close-on-exec: with close_range(2), or one by one over /proc/self/fd
/// where the kernel or a seccomp profile refuses it (as runc does).
pub fn mark_inherited_fds_cloexec(preserve_fds: u32) -> Result<()> {
    berth_common::fd::mark_inherited_fds_cloexec(preserve_fds)
        .ctx(|| "inherited descriptors".into())
}

/// execve; returns only on failure.
pub fn execve(program: &Program) -> Error {
    let err = sys::execve(&program.path, &program.argv, &program.envp);
    Error::Init(format!("exec {:?}: {err}", program.path.to_string_lossy()))
}
