//! A guest process's stdio on the host: the agent's long polls and writes
//! relayed into and out of the fds the task service prepared (pipes,
//! FIFOs, files, or a terminal's console socket), so that logs, FIFOs and
//! attach work as for any container.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;

use berth_runtime::ProcessIo;
use berth_vm::{AgentClient, VmError};

use super::{runtime, CALL, POLL};
use crate::error::{Context, Result, ShimError};

/// Copies a guest process's stdio into the fds the task service prepared
/// (pipes, FIFOs, files, or a terminal's console socket).
pub(super) fn relay_stdio(
    agent: &AgentClient,
    id: &str,
    exec_id: &str,
    io: ProcessIo,
    terminal: bool,
    stdin: bool,
) -> Result<()> {
    let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
    if terminal {
        let console = io.console.ok_or_else(|| {
            ShimError::Other("a terminal process without a console socket".into())
        })?;
        let (output, input) =
            host_terminal(&console).context(|| "making the host side of the terminal".into())?;
        // Once the guest's output ends, the input side lets go of the
        // terminal too: the master then reads EOF, and every relay ends.
        let (done, ended) = tokio::sync::oneshot::channel();
        spawn_output(
            agent.clone(),
            id.clone(),
            exec_id.clone(),
            false,
            output,
            Some(done),
        );
        if stdin {
            spawn_input(agent.clone(), id, exec_id, input, Some(ended));
        }
        return Ok(());
    }
    let Some([stdin_fd, stdout_fd, stderr_fd]) = io.stdio else {
        return Err(ShimError::Other("a process without stdio".into()));
    };
    spawn_output(
        agent.clone(),
        id.clone(),
        exec_id.clone(),
        false,
        stdout_fd,
        None,
    );
    spawn_output(
        agent.clone(),
        id.clone(),
        exec_id.clone(),
        true,
        stderr_fd,
        None,
    );
    if stdin {
        spawn_input(agent.clone(), id, exec_id, stdin_fd, None);
    }
    Ok(())
}

/// A host terminal standing for the guest's: its master goes to the
/// console socket (the task service relays it as for any terminal), its
/// slave, raw so it changes nothing, carries the guest's bytes: opened
/// twice, for output (blocking writes) and for input (read without
/// blocking, so that its reader can stop).
fn host_terminal(console: &UnixStream) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let open = || -> std::io::Result<OwnedFd> {
        Ok(std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?
            .into())
    };
    let output = open()?;
    // A description of its own: the input's reader makes it non-blocking.
    let input = open()?;
    let mut attrs = rustix::termios::tcgetattr(&output)?;
    attrs.make_raw();
    rustix::termios::tcsetattr(&output, rustix::termios::OptionalActions::Now, &attrs)?;
    berth_common::socket::send_fd(console, b"console", master.as_fd())?;
    Ok((output, input))
}

/// Guest output → `to`, until the guest's stream ends (then `to` closes
/// and `done` fires).
fn spawn_output(
    agent: AgentClient,
    id: String,
    exec_id: String,
    stderr: bool,
    to: OwnedFd,
    done: Option<tokio::sync::oneshot::Sender<()>>,
) {
    runtime().spawn(async move {
        let _done = done;
        let mut file = Some(std::fs::File::from(to));
        loop {
            let chunk = if stderr {
                agent.read_stderr(&id, &exec_id, POLL).await
            } else {
                agent.read_stdout(&id, &exec_id, POLL).await
            };
            match chunk {
                Ok(c) if c.eof => return,
                Ok(c) => {
                    let Some(mut f) = file.take() else { return };
                    // A FIFO or file may block: not on a runtime thread.
                    let written = tokio::task::spawn_blocking(move || {
                        let r = f.write_all(&c.data);
                        (f, r)
                    })
                    .await;
                    match written {
                        Ok((f, Ok(()))) => file = Some(f),
                        _ => return,
                    }
                }
                Err(VmError::AgentTimeout { .. }) => continue,
                Err(_) => return,
            }
        }
    });
}

/// `from` (a pipe the task service feeds, or the host terminal's input
/// side) → the guest process's stdin, until it ends (EOF, or EIO once the
/// terminal's master closed) or the guest's output `ended`; then the
/// guest's stdin is closed.
fn spawn_input(
    agent: AgentClient,
    id: String,
    exec_id: String,
    from: OwnedFd,
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
) {
    runtime().spawn(async move {
        let flags = rustix::fs::fcntl_getfl(&from).unwrap_or(rustix::fs::OFlags::empty());
        let _ = rustix::fs::fcntl_setfl(&from, flags | rustix::fs::OFlags::NONBLOCK);
        let Ok(fd) = crate::sys::async_fd(std::fs::File::from(from)) else {
            return;
        };
        let ended = async {
            match ended {
                Some(rx) => drop(rx.await),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(ended);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                () = &mut ended => break,
                ready = fd.readable() => {
                    let Ok(mut guard) = ready else { break };
                    match guard.try_io(|f| f.get_ref().read(&mut buf)) {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => {
                            if agent.write_stdin(&id, &exec_id, &buf[..n], CALL).await.is_err() {
                                return;
                            }
                        }
                        Err(_would_block) => continue,
                    }
                }
            }
        }
        drop(fd);
        let _ = agent.close_stdin(&id, &exec_id, CALL).await;
    });
}
