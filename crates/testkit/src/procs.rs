//! Processes: finding them by command line, checking and killing them.
//!
//! The needles are paths unique to one test (a socket, a directory), so
//! what these find and kill is only ever what that test started.

use std::process::Child;
use std::time::{Duration, Instant};

/// A process's command line, spaces for NULs ("" if it is gone).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Waits up to `within` for process `pid` to run `program` (the first word
/// of its command line), as it does once its execve is done: a runtime's
/// start returns when the init is released, a moment before that. The
/// command line then, or as it was at the deadline.
pub fn wait_for_exec(pid: i32, program: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let line = cmdline(pid);
        if line.split(' ').next() == Some(program) || Instant::now() >= deadline {
            return line;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: impl Into<i64>) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.into()))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The parent of process `pid`, if it exists.
pub fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: the state, then the parent.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (pid, command line with spaces for NULs) of every process except this
/// one whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(needle) {
            found.push((pid, line.trim_end().to_owned()));
        }
    }
    found
}

/// The pids of the live (not zombie) processes, except this one, whose
/// command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    processes_mentioning(needle)
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| alive(*pid))
        .collect()
}

/// SIGTERM to our child, then SIGKILL if it has not exited after `grace`;
/// reaps it.
pub fn terminate(child: &mut Child, grace: Duration) {
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILLs (by pid) every process whose command line mentions `needle`,
/// except this one; returns their pids.
pub fn kill_processes_mentioning(needle: &str) -> Vec<i32> {
    let mut killed = Vec::new();
    for (pid, _) in processes_mentioning(needle) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        killed.push(pid);
    }
    killed
}
