//! The OCI seccomp object compiled with libseccomp, and the RuntimeDefault
//! profile (equal in effect to containerd's and Docker's default).

use std::collections::HashSet;
use std::os::fd::{FromRawFd, OwnedFd};
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::{Error, Result};

const EPERM: i32 = libc::EPERM;

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(format!("seccomp: {msg}"))
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.map_or(EPERM, |e| e as i32)),
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.map_or(EPERM as u16, |e| e as u16))
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    }
}

fn compare(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (ScmpCompareOp, u64) {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        // OCI: value is the mask, valueTwo the value compared after masking.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0))
        }
    }
}

/// A compiled filter, ready to load in the container process.
pub struct Filter {
    ctx: ScmpFilterContext,
    /// Some rule uses SCMP_ACT_NOTIFY: the listener gets the notify fd.
    pub notify: bool,
}

/// Compiles `s`. Syscall names the host's libseccomp does not know are
/// skipped (runc does the same: profiles list syscalls of newer kernels).
pub fn compile(s: &LinuxSeccomp) -> Result<Filter> {
    let err = |what: &str, e: libseccomp::error::SeccompError| invalid(format!("{what}: {e}"));
    let default = action(s.default_action(), s.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| err("creating the filter", e))?;
    // no_new_privs is berth's to set, from process.noNewPrivileges.
    ctx.set_ctl_nnp(false)
        .map_err(|e| err("filter attribute", e))?;
    for arch in s.architectures().iter().flatten() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let arch = ScmpArch::from_str(&name)
            .map_err(|_| invalid(format!("unknown architecture {name:?}")))?;
        ctx.add_arch(arch)
            .map_err(|e| err(&format!("adding architecture {name}"), e))?;
    }
    for flag in s.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
            #[allow(unreachable_patterns)]
            other => {
                return Err(invalid(format!(
                    "seccomp flag {other:?} is not supported by berth"
                )))
            }
        }
        .map_err(|e| err("setting a filter flag", e))?;
    }
    let mut notify = false;
    for call in s.syscalls().iter().flatten() {
        let act = action(call.action(), call.errno_ret());
        if call.action() == LinuxSeccompAction::ScmpActNotify {
            notify = true;
        }
        // libseccomp refuses rules that repeat the default action.
        if act == default {
            continue;
        }
        let args = call.args().clone().unwrap_or_default();
        for index in args.iter().map(|a| a.index()) {
            if index > 5 {
                return Err(invalid(format!("argument index {index} is above 5")));
            }
        }
        let conditions: Vec<ScmpArgCompare> = args
            .iter()
            .map(|a| {
                let (op, datum) = compare(a.op(), a.value(), a.value_two());
                ScmpArgCompare::new(a.index() as u32, op, datum)
            })
            .collect();
        // Conditions on distinct arguments are ANDed in one rule; several on
        // the same argument become separate rules (ORed), as runc does.
        let distinct = args.iter().map(|a| a.index()).collect::<HashSet<_>>().len() == args.len();
        for name in call.names() {
            let syscall = match ScmpSyscall::from_name(name) {
                Ok(s) => s,
                Err(_) => {
                    log::debug!("seccomp: syscall {name:?} unknown to libseccomp: skipped");
                    continue;
                }
            };
            let result = if conditions.is_empty() {
                ctx.add_rule(act, syscall).map(drop)
            } else if distinct {
                ctx.add_rule_conditional(act, syscall, &conditions)
                    .map(drop)
            } else {
                conditions.iter().try_for_each(|c| {
                    ctx.add_rule_conditional(act, syscall, std::slice::from_ref(c))
                        .map(drop)
                })
            };
            result.map_err(|e| err(&format!("rule for {name}"), e))?;
        }
    }
    Ok(Filter { ctx, notify })
}

impl Filter {
    /// Loads the filter into the calling process; with SCMP_ACT_NOTIFY rules
    /// returns the notification fd for the listener.
    pub fn load(&self) -> Result<Option<OwnedFd>> {
        self.ctx
            .load()
            .map_err(|e| Error::Init(format!("loading the seccomp filter: {e}")))?;
        if !self.notify {
            return Ok(None);
        }
        let fd = self
            .ctx
            .get_notify_fd()
            .map_err(|e| Error::Init(format!("getting the seccomp notify fd: {e}")))?;
        // SAFETY: libseccomp hands over a new fd that nothing else owns.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// Whether the host has seccomp at all.
/// The architectures `berth features` may list: those this host's
/// libseccomp can add to a filter for the native one (big-endian ABIs
/// cannot join a little-endian filter, and the other way round).
pub fn usable_architectures() -> Vec<&'static str> {
    const ALL: [&str; 17] = [
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_ARM",
        "SCMP_ARCH_MIPS",
        "SCMP_ARCH_MIPS64",
        "SCMP_ARCH_MIPS64N32",
        "SCMP_ARCH_MIPSEL",
        "SCMP_ARCH_MIPSEL64",
        "SCMP_ARCH_MIPSEL64N32",
        "SCMP_ARCH_PPC",
        "SCMP_ARCH_PPC64",
        "SCMP_ARCH_PPC64LE",
        "SCMP_ARCH_RISCV64",
        "SCMP_ARCH_S390",
        "SCMP_ARCH_S390X",
        "SCMP_ARCH_X32",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X86_64",
    ];
    ALL.into_iter()
        .filter(|name| {
            let Ok(arch) = ScmpArch::from_str(name) else {
                return false;
            };
            ScmpFilterContext::new(ScmpAction::Allow)
                .and_then(|mut ctx| ctx.add_arch(arch).map(drop))
                .is_ok()
        })
        .collect()
}

pub fn supported() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_common::seccomp_profile::runtime_default;
    use serde_json::json;

    #[test]
    fn runtime_default_compiles_and_depends_on_caps() {
        let plain = runtime_default(&["CAP_CHOWN".into()]);
        compile(&plain).unwrap();
        let names = |s: &LinuxSeccomp| -> Vec<String> {
            s.syscalls()
                .iter()
                .flatten()
                .filter(|c| {
                    c.action() == LinuxSeccompAction::ScmpActAllow
                        && c.args().as_ref().is_none_or(|a| a.is_empty())
                })
                .flat_map(|c| c.names().clone())
                .collect()
        };
        assert!(!names(&plain).contains(&"mount".to_string()));
        let admin = runtime_default(&["CAP_SYS_ADMIN".into()]);
        assert!(names(&admin).contains(&"mount".to_string()));
        compile(&admin).unwrap();
    }

    #[test]
    fn bad_profiles_are_refused() {
        let s: LinuxSeccomp = serde_json::from_value(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]})).unwrap();
        let err = compile(&s).err().unwrap();
        assert!(err.to_string().contains("index 9"), "{err}");
        assert!(serde_json::from_value::<LinuxSeccomp>(
            json!({"defaultAction": "SCMP_ACT_EXPLODE"})
        )
        .is_err());
        assert!(serde_json::from_value::<LinuxSeccomp>(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]})
        )
        .is_err());
    }

    #[test]
    fn unknown_syscalls_are_skipped() {
        let s: LinuxSeccomp = serde_json::from_value(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["no_such_syscall_xyz", "getppid"], "action": "SCMP_ACT_ERRNO"}]})).unwrap();
        compile(&s).unwrap();
    }
}
