//! The foreground side of `run` and `exec`: forwarding signals to the
//! container process, relaying its terminal, and collecting its exit code.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, WaitOptions, WaitStatus};

use crate::error::Context;
use crate::{sys, Result};

fn exit_code(status: WaitStatus) -> i32 {
    if let Some(code) = status.exit_status() {
        code
    } else if let Some(sig) = status.terminating_signal() {
        128 + sig
    } else {
        255
    }
}

/// Puts stdin in raw mode while a terminal is relayed, restoring it on drop.
struct RawMode {
    saved: Option<rustix::termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

fn copy_winsize(pty: BorrowedFd<'_>) {
    if let Ok(ws) = rustix::termios::tcgetwinsize(rustix::stdio::stdin()) {
        let _ = rustix::termios::tcsetwinsize(pty, ws);
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => continue,
            Err(_) => return,
        }
    }
}

/// Waits for `pid` to exit, forwarding every signal berth receives to it
/// and, with a terminal, relaying stdin/stdout. With `reap_all` (berth is a
/// subreaper) every other child that ends is reaped too.
pub fn wait_foreground(
    pid: i32,
    signals: Option<BorrowedFd<'_>>,
    pty: Option<BorrowedFd<'_>>,
    reap_all: bool,
) -> Result<i32> {
    let signals = signals.expect("foreground waits have a signalfd");
    let _raw = pty.map(|p| {
        copy_winsize(p);
        RawMode::enter()
    });
    let stdin = rustix::stdio::stdin();
    let stdout = rustix::stdio::stdout();
    let mut stdin_open = pty.is_some();
    let mut pty_open = pty.is_some();
    let mut code = reap(pid, reap_all);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if code.is_some() && !pty_open {
            break;
        }
        let mut fds = vec![PollFd::new(&signals, PollFlags::IN)];
        if let Some(p) = pty.filter(|_| pty_open) {
            fds.push(PollFd::from_borrowed_fd(p, PollFlags::IN));
            if stdin_open {
                fds.push(PollFd::from_borrowed_fd(stdin, PollFlags::IN));
            }
        }
        // Once the process is gone, only drain what the terminal still holds.
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, code.is_some().then_some(&timeout)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).ctx(|| "waiting for the container process".into()),
        }
        let ready: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        if !ready[0].is_empty() {
            let sig = sys::read_signalfd(signals.as_fd()).ctx(|| "reading signals".into())?;
            match sig {
                libc::SIGCHLD => {
                    if code.is_none() {
                        code = reap(pid, reap_all);
                    } else {
                        reap(pid, reap_all);
                    }
                }
                libc::SIGWINCH => {
                    if let Some(p) = pty {
                        copy_winsize(p);
                    }
                }
                _ => {
                    let _ = sys::kill(pid, sig);
                }
            }
        }
        if let Some(p) = pty.filter(|_| pty_open) {
            if ready.len() > 1 && !ready[1].is_empty() {
                match rustix::io::read(p, &mut buf) {
                    Ok(0) | Err(rustix::io::Errno::IO) => pty_open = false,
                    Ok(n) => write_all(stdout, &buf[..n]),
                    Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                    Err(_) => pty_open = false,
                }
            }
            if ready.len() > 2 && !ready[2].is_empty() {
                match rustix::io::read(stdin, &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => write_all(p, &buf[..n]),
                }
            }
        }
    }
    Ok(code.unwrap_or(255))
}

/// Reaps finished children; returns the exit code of `pid` if it ended.
fn reap(pid: i32, reap_all: bool) -> Option<i32> {
    let mut found = None;
    loop {
        let result = if reap_all {
            rustix::process::wait(WaitOptions::NOHANG)
        } else {
            rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::NOHANG)
        };
        match result {
            Ok(Some((p, status))) => {
                if p.as_raw_nonzero().get() == pid {
                    found = Some(exit_code(status));
                    if !reap_all {
                        return found;
                    }
                }
            }
            Ok(None) | Err(_) => return found,
        }
    }
}
