//! A process's stdio as the client names it: FIFO paths (containerd),
//! `file://` paths, `crilog://` log files (berthd; see crilog), `attach://`
//! (berthd: only attach sessions read or feed it), or nothing.
//! Output FIFOs and files go straight to the process; logs and `attach://`
//! outputs are relayed by the shim, which copies them to attach sessions
//! too (see attach); stdin goes through a pipe the shim feeds, so CloseIO
//! can end it; a terminal's master side is relayed by the shim.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use berth_common::socket::recv_fd;
use berth_runtime::ProcessIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::attach::{AttachableStdin, Tap};
use crate::crilog::{CriLog, Stream};

pub use berth_shim_client::ATTACH_URI;

/// What the client asked for.
#[derive(Debug, Clone, Default)]
pub struct StdioSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

enum Sink {
    None,
    /// An open FIFO or file the process writes to directly.
    Fd(OwnedFd),
    /// Relayed by the shim: into the log if any, and to attach sessions.
    Relay(Option<Arc<CriLog>>),
}

fn open_output(uri: &str, logs: &mut Vec<(PathBuf, Arc<CriLog>)>) -> std::io::Result<Sink> {
    if uri.is_empty() {
        return Ok(Sink::None);
    }
    if uri == ATTACH_URI {
        return Ok(Sink::Relay(None));
    }
    if let Some(path) = uri.strip_prefix("crilog://") {
        let path = PathBuf::from(path);
        if let Some((_, log)) = logs.iter().find(|(p, _)| *p == path) {
            return Ok(Sink::Relay(Some(Arc::clone(log))));
        }
        let log = Arc::new(CriLog::open(&path)?);
        logs.push((path, Arc::clone(&log)));
        return Ok(Sink::Relay(Some(log)));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        return Ok(Sink::Fd(f.into()));
    }
    if uri.contains("://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("stdio {uri:?}: unsupported scheme"),
        ));
    }
    // A FIFO: read-write so opening never blocks on a missing reader.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(uri)?;
    Ok(Sink::Fd(f.into()))
}

fn devnull(write: bool) -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?
        .into())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(Into::into)
}

/// The shim's side of a process's IO, started once the process exists.
pub struct Pending {
    stdin: Option<(PathBuf, OwnedFd)>,
    /// The write end of an `attach://` stdin pipe.
    attachable_stdin: Option<OwnedFd>,
    relays: Vec<(Stream, OwnedFd, Option<Arc<CriLog>>)>,
    terminal: Option<(UnixStream, TerminalInput, Sink)>,
}

/// Where a terminal's input comes from.
enum TerminalInput {
    None,
    Fifo(PathBuf),
    Attach,
}

/// Running IO: what CloseIO, ResizePty and log reopening act on.
#[derive(Default)]
pub struct IoHandle {
    stdin_close: Option<oneshot::Sender<()>>,
    pub master: Option<Arc<OwnedFd>>,
    pub logs: Vec<Arc<CriLog>>,
    /// What attach sessions receive, for relayed outputs.
    pub stdout_tap: Option<Arc<Tap>>,
    pub stderr_tap: Option<Arc<Tap>>,
    /// What attach sessions feed, for an `attach://` stdin.
    pub attachable_stdin: Option<Arc<AttachableStdin>>,
    /// Resolves when every output stream reached EOF.
    pub drained: Vec<tokio::task::JoinHandle<()>>,
}

impl IoHandle {
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
        }
        if let Some(stdin) = self.attachable_stdin.take() {
            stdin.close();
        }
    }

    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let master = self
            .master
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the process has no terminal"))?;
        let ws = rustix::termios::Winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(master.as_fd(), ws).map_err(Into::into)
    }
}

/// Prepares the fds the process gets and what the shim must run for it.
pub fn prepare(spec: &StdioSpec) -> std::io::Result<(ProcessIo, Pending)> {
    let mut pending = Pending {
        stdin: None,
        attachable_stdin: None,
        relays: Vec::new(),
        terminal: None,
    };
    let mut logs = Vec::new();
    if spec.terminal {
        let (shim_end, child_end) = UnixStream::pair()?;
        let stdout = open_output(&spec.stdout, &mut logs)?;
        let stdin = match spec.stdin.as_str() {
            "" => TerminalInput::None,
            ATTACH_URI => TerminalInput::Attach,
            path => TerminalInput::Fifo(PathBuf::from(path)),
        };
        pending.terminal = Some((shim_end, stdin, stdout));
        return Ok((
            ProcessIo {
                stdio: None,
                console: Some(child_end),
            },
            pending,
        ));
    }
    let stdin = if spec.stdin.is_empty() {
        devnull(false)?
    } else if spec.stdin == ATTACH_URI {
        let (r, w) = pipe()?;
        pending.attachable_stdin = Some(w);
        r
    } else {
        let (r, w) = pipe()?;
        pending.stdin = Some((PathBuf::from(&spec.stdin), w));
        r
    };
    let mut outs = Vec::new();
    for (uri, stream) in [
        (&spec.stdout, Stream::Stdout),
        (&spec.stderr, Stream::Stderr),
    ] {
        let fd = match open_output(uri, &mut logs)? {
            Sink::None => devnull(true)?,
            Sink::Fd(fd) => fd,
            Sink::Relay(log) => {
                let (r, w) = pipe()?;
                pending.relays.push((stream, r, log));
                w
            }
        };
        outs.push(fd);
    }
    let stderr = outs.pop().expect("two outputs");
    let stdout = outs.pop().expect("two outputs");
    Ok((
        ProcessIo {
            stdio: Some([stdin, stdout, stderr]),
            console: None,
        },
        pending,
    ))
}

fn nonblocking(fd: &OwnedFd) {
    let _ = rustix::fs::fcntl_setfl(
        fd,
        rustix::fs::fcntl_getfl(fd).unwrap_or(rustix::fs::OFlags::empty())
            | rustix::fs::OFlags::NONBLOCK,
    );
}

async fn copy_fd_to_fd(from: OwnedFd, to: OwnedFd, mut stop: Option<oneshot::Receiver<()>>) {
    nonblocking(&from);
    nonblocking(&to);
    let (Ok(mut r), Ok(mut w)) = (
        tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(from),
        tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(to),
    ) else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match &mut stop {
            Some(rx) => tokio::select! {
                _ = rx => {
                    // Closed (CloseIO): what the client wrote before it
                    // closed is already in the FIFO, and still goes in. Read
                    // with the syscall itself until EAGAIN: tokio's try_read
                    // answers WouldBlock without reading while the reactor
                    // has not yet seen the FIFO readable, which lost that
                    // input when CloseIO came right after it.
                    loop {
                        match rustix::io::read(&r, &mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if w.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            Err(rustix::io::Errno::INTR) => continue,
                            Err(_) => break,
                        }
                    }
                    return;
                }
                n = r.read(&mut buf) => n,
            },
            None => r.read(&mut buf).await,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Pending {
    /// Starts the copies (call once the process is created).
    pub fn start(self) -> IoHandle {
        let mut handle = IoHandle::default();
        if let Some((fifo, pipe_w)) = self.stdin {
            let (tx, rx) = oneshot::channel();
            handle.stdin_close = Some(tx);
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
            {
                tokio::spawn(copy_fd_to_fd(f.into(), pipe_w, Some(rx)));
            }
        }
        if let Some(w) = self.attachable_stdin {
            handle.attachable_stdin = AttachableStdin::new(w, false)
                .inspect_err(|e| log::warn!("stdin for attach sessions: {e}"))
                .ok();
        }
        for (stream, pipe_r, log) in self.relays {
            handle.relay(pipe_r, stream, log);
        }
        if let Some((sock, stdin, stdout)) = self.terminal {
            // The terminal's master arrives once the process set it up.
            let mut buf = [0u8; 256];
            if let Ok((_, Some(master))) = recv_fd(&sock, &mut buf) {
                let master = Arc::new(master);
                handle.master = Some(Arc::clone(&master));
                if let TerminalInput::Attach = stdin {
                    handle.attachable_stdin = rustix::io::dup(master.as_fd())
                        .map_err(std::io::Error::from)
                        .and_then(|m| AttachableStdin::new(m, true))
                        .inspect_err(|e| log::warn!("terminal input for attach sessions: {e}"))
                        .ok();
                }
                if let TerminalInput::Fifo(path) = stdin {
                    let (tx, rx) = oneshot::channel();
                    handle.stdin_close = Some(tx);
                    if let (Ok(f), Ok(m)) = (
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path),
                        rustix::io::dup(master.as_fd()),
                    ) {
                        tokio::spawn(copy_fd_to_fd(f.into(), m, Some(rx)));
                    }
                }
                match (stdout, rustix::io::dup(master.as_fd())) {
                    (Sink::Fd(out), Ok(m)) => handle
                        .drained
                        .push(tokio::spawn(copy_fd_to_fd(m, out, None))),
                    (Sink::Relay(log), Ok(m)) => handle.relay(m, Stream::Stdout, log),
                    _ => {}
                }
            }
        }
        handle
    }
}

impl IoHandle {
    /// Relays an output into its log (if any) and to attach sessions.
    fn relay(&mut self, fd: OwnedFd, stream: Stream, log: Option<Arc<CriLog>>) {
        let tap = Arc::new(Tap::default());
        match stream {
            Stream::Stdout => self.stdout_tap = Some(Arc::clone(&tap)),
            Stream::Stderr => self.stderr_tap = Some(Arc::clone(&tap)),
        }
        if let Some(log) = &log {
            if !self.logs.iter().any(|l| Arc::ptr_eq(l, log)) {
                self.logs.push(Arc::clone(log));
            }
        }
        self.drained
            .push(tokio::spawn(crate::crilog::pump(fd, stream, log, tap)));
    }
}
