//! Running OCI lifecycle hooks with the container state on stdin.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use oci_spec::runtime::Hook;

use crate::{Error, Result};

/// Runs `hooks` in order; the first failure stops the list.
pub fn run_hooks(kind: &'static str, hooks: &[Hook], state: &[u8]) -> Result<()> {
    run_hooks_with_default_env(kind, hooks, state, &[])
}

/// As [`run_hooks`]; a hook without an `env` of its own gets `default_env`.
pub fn run_hooks_with_default_env(
    kind: &'static str,
    hooks: &[Hook],
    state: &[u8],
    default_env: &[String],
) -> Result<()> {
    for hook in hooks {
        run_hook(kind, hook, state, default_env)?;
    }
    Ok(())
}

/// Runs `hooks` in order, logging failures instead of stopping (poststart
/// and poststop hooks: the spec says the lifecycle continues).
pub fn run_hooks_warn(kind: &'static str, hooks: &[Hook], state: &[u8]) {
    for hook in hooks {
        if let Err(e) = run_hook(kind, hook, state, &[]) {
            log::warn!("{e}");
        }
    }
}

fn run_hook(kind: &'static str, hook: &Hook, state: &[u8], default_env: &[String]) -> Result<()> {
    let fail = |reason: String| Error::Hook {
        hook: kind,
        path: hook.path().clone(),
        reason,
    };
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((first, rest)) = args.split_first() {
            cmd.arg0(first).args(rest);
        }
    }
    cmd.env_clear();
    for var in hook.env().as_deref().unwrap_or(default_env) {
        if let Some((k, v)) = var.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores its stdin may exit before reading it: EPIPE is fine.
        let _ = stdin.write_all(state);
    }
    let timeout = hook.timeout().map(|t| Duration::from_secs(t as u64));
    let status = match timeout {
        None => child.wait().map_err(|e| fail(format!("waiting: {e}")))?,
        Some(limit) => {
            match wait_timeout(&mut child, limit).map_err(|e| fail(format!("waiting: {e}")))? {
                Some(status) => status,
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("timed out after {}s", limit.as_secs())));
                }
            }
        }
    };
    if !status.success() {
        return Err(fail(format!("failed: {status}")));
    }
    Ok(())
}

/// Waits for `child` up to `limit`; None if it is still running.
fn wait_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("child pid is positive");
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: limit.as_secs() as i64,
        tv_nsec: limit.subsec_nanos() as i64,
    };
    loop {
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(None),
            Ok(_) => return child.wait().map(Some),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
