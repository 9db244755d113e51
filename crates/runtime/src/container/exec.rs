//! `exec`: another process in a running container.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{write_pid_file, ExecOptions, ExecResult, ProcessIo, Runtime};
use crate::error::Op;
use crate::handshake::{
    connect_console, foreground_signals, Cleanup, Forked, Handshake, Kind, Seccomp,
};
use crate::init::{self, ExecContext};
use crate::namespaces::NsPlan;
use crate::state::{hook_state, State, Status};
use crate::{io_relay, Error, Result};

impl Runtime {
    /// `exec`: runs another process in a running container. In the
    /// foreground, returns its exit code.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        self.exec_with_io(id, opts, ProcessIo::default())
            .map(|r| r.exit_code.unwrap_or(0))
    }

    /// `exec` with explicit stdio and terminal socket.
    pub fn exec_with_io(&self, id: &str, opts: &ExecOptions, io: ProcessIo) -> Result<ExecResult> {
        let ProcessIo { stdio, console } = io;
        let (state, dir) = self.load(id)?;
        let status = state.status(&dir);
        match status {
            Status::Running | Status::Created => {}
            Status::Paused if opts.ignore_paused => {}
            _ => return Err(Error::wrong_state(id, status, Op::Exec)),
        }
        wait_for_program(&state, INIT_EXEC_WAIT)?;
        let process = &opts.process;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Error::InvalidConfig("exec needs a command to run".into()));
        }
        let terminal = process.terminal() == Some(true);
        if terminal && opts.console_socket.is_none() && console.is_none() && opts.detach {
            return Err(Error::InvalidConfig(
                "a detached exec with a terminal needs --console-socket".into(),
            ));
        }
        let console_socket = connect_console(opts.console_socket.as_deref(), console)?;
        crate::attrs::validate_process(process)?;
        // Exec'd processes get the container's seccomp profile, as with runc.
        let container_spec = self.container_config(id)?;
        let mut seccomp = Seccomp::compile(&container_spec)?;
        seccomp.connect_listener()?;
        let plan = NsPlan::for_exec(state.init_pid)?;
        if !state.init_alive() {
            return Err(Error::wrong_state(id, Status::Stopped, Op::Exec));
        }
        let signals = (!opts.detach)
            .then(|| foreground_signals(false))
            .transpose()?;
        let cgroups = sub_cgroups(state.cgroups(), &opts.sub_cgroups)?;
        // Into a frozen cgroup the process would freeze mid-setup: it joins
        // only once it runs its program (`--ignore-paused`), and runs when
        // the container is resumed.
        let paused = status == Status::Paused;
        let setup_cgroups = if paused {
            berth_cgroups::Manager::from_paths(Vec::new())
        } else {
            cgroups.clone()
        };
        let mut cleanup = Cleanup::default();
        let handshake = Handshake {
            kind: Kind::Exec,
            spec: &container_spec,
            plan: &plan,
            cgroups: &setup_cgroups,
            terminal,
            console: console_socket.as_ref(),
            stdio: stdio.as_ref(),
            preserve_fds: opts.preserve_fds,
            seccomp: &seccomp,
            run_hooks: None,
            deferred_cgroups: None,
            meanwhile: None,
        };
        let child = match handshake.run(&mut cleanup)? {
            Forked::Parent(child) => child,
            Forked::Child(side) => init::exec_init(
                &side,
                &ExecContext {
                    process,
                    container: &container_spec,
                    state: hook_state(
                        id,
                        Status::Running,
                        state.init_pid,
                        &state.bundle,
                        &state.annotations,
                    ),
                },
            ),
        };
        child.start()?;
        let pid = child.pid;
        if paused {
            cgroups.add_process(pid)?;
        }
        if let Some(pid_file) = &opts.pid_file {
            write_pid_file(pid_file, pid)?;
        }
        cleanup.disarm();
        if opts.detach {
            return Ok(ExecResult {
                pid,
                exit_code: None,
            });
        }
        let code = io_relay::wait_foreground(
            pid,
            signals.as_ref().map(|s| s.as_fd()),
            child.pty.as_ref().map(|p| p.as_fd()),
            false,
        )?;
        Ok(ExecResult {
            pid,
            exit_code: Some(code),
        })
    }
}

/// The container's cgroups with `subs` applied: each hierarchy a sub-cgroup
/// names (or all, for one without controllers) is replaced by that existing
/// sub-directory, as runc's `exec --cgroup`.
fn sub_cgroups(
    cgroups: berth_cgroups::Manager,
    subs: &[(Option<Vec<String>>, PathBuf)],
) -> Result<berth_cgroups::Manager> {
    if subs.is_empty() {
        return Ok(cgroups);
    }
    let mut paths = cgroups.paths().to_vec();
    for (controllers, sub) in subs {
        if sub.is_absolute()
            || sub
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::InvalidConfig(format!(
                "--cgroup {}: must be a relative path below the container's cgroup",
                sub.display()
            )));
        }
        let mut matched = false;
        for (key, path) in paths.iter_mut() {
            let applies = match controllers {
                None => true,
                Some(list) => list.iter().any(|c| {
                    key.split(',')
                        .any(|k| k == c || k.strip_prefix("name=") == Some(c))
                        || (key.is_empty() && c == "unified")
                }),
            };
            if !applies {
                continue;
            }
            matched = true;
            let target = path.join(sub);
            if !target.is_dir() {
                return Err(Error::InvalidConfig(format!(
                    "--cgroup {}: sub-cgroup {} does not exist",
                    sub.display(),
                    target.display()
                )));
            }
            *path = target;
        }
        if !matched {
            return Err(Error::InvalidConfig(format!(
                "--cgroup {}: the container has no cgroup for controllers {:?}",
                sub.display(),
                controllers.as_deref().unwrap_or_default()
            )));
        }
    }
    Ok(berth_cgroups::Manager::from_paths(paths))
}

/// How long `exec` waits for an unsealed init to execute its program.
const INIT_EXEC_WAIT: Duration = Duration::from_secs(2);

/// Waits until the init of a container `run` started without the sealed
/// copy (`State::unsealed_exe`) has executed its program: before that its
/// /proc/<pid>/exe is berth's own binary, which a process joining the
/// container could open and later write (CVE-2019-5736). Once the init's
/// executable has changed it never changes back.
fn wait_for_program(state: &State, limit: Duration) -> Result<()> {
    let Some(berth) = state.unsealed_exe else {
        return Ok(());
    };
    let deadline = Instant::now() + limit;
    loop {
        match rustix::fs::stat(format!("/proc/{}/exe", state.init_pid)) {
            Ok(st) if (st.st_dev, st.st_ino) == berth => {}
            // Another program, or the init is gone (which the checks that
            // follow report).
            _ => return Ok(()),
        }
        if Instant::now() >= deadline {
            return Err(Error::Init(format!(
                "container {:?}: its init has not started its program after {} s; \
                 nothing may join it before it has",
                state.id,
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(pid: i32, unsealed_exe: Option<(u64, u64)>) -> State {
        State {
            id: "c".into(),
            init_pid: pid,
            init_start_time: 0,
            bundle: "/".into(),
            rootfs: "/".into(),
            created: String::new(),
            owner: String::new(),
            annotations: Default::default(),
            cgroup_paths: Vec::new(),
            own_pid_ns: true,
            poststart: Vec::new(),
            poststop: Vec::new(),
            unsealed_exe,
        }
    }

    /// An init still running the binary it was started from is not joined;
    /// one running anything else, or a sealed one, is at once.
    #[test]
    fn exec_waits_for_an_unsealed_init_to_start_its_program() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let exe = rustix::fs::stat(format!("/proc/{pid}/exe")).unwrap();
        let still_berth = state_of(pid, Some((exe.st_dev, exe.st_ino)));
        let began = Instant::now();
        let err = wait_for_program(&still_berth, Duration::from_millis(200)).unwrap_err();
        assert!(began.elapsed() >= Duration::from_millis(200));
        assert!(
            err.to_string().contains("has not started its program"),
            "{err}"
        );
        let other = state_of(pid, Some((exe.st_dev, exe.st_ino + 1)));
        wait_for_program(&other, Duration::from_millis(200)).unwrap();
        wait_for_program(&state_of(pid, None), Duration::ZERO).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // Gone: left to the state checks.
        wait_for_program(&still_berth, Duration::ZERO).unwrap();
    }
}
