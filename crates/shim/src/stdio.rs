//! A process's stdio as the client names it: FIFO paths (containerd),
//! `file://` paths, `crilog://` log files (berthd; see crilog), or nothing.
//! Output FIFOs and files go straight to the process; stdin goes through a
//! pipe the shim feeds, so CloseIO can end it; a terminal's master side is
//! relayed by the shim.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use berth_runtime::ProcessIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::crilog::{CriLog, Stream};

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
    Log(Arc<CriLog>),
}

fn open_output(uri: &str, logs: &mut Vec<(PathBuf, Arc<CriLog>)>) -> std::io::Result<Sink> {
    if uri.is_empty() {
        return Ok(Sink::None);
    }
    if let Some(path) = uri.strip_prefix("crilog://") {
        let path = PathBuf::from(path);
        if let Some((_, log)) = logs.iter().find(|(p, _)| *p == path) {
            return Ok(Sink::Log(Arc::clone(log)));
        }
        let log = Arc::new(CriLog::open(&path)?);
        logs.push((path, Arc::clone(&log)));
        return Ok(Sink::Log(log));
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
    logs: Vec<(Stream, OwnedFd, Arc<CriLog>)>,
    terminal: Option<(UnixStream, Option<PathBuf>, Sink)>,
}

/// Running IO: what CloseIO, ResizePty and log reopening act on.
#[derive(Default)]
pub struct IoHandle {
    stdin_close: Option<oneshot::Sender<()>>,
    pub master: Option<Arc<OwnedFd>>,
    pub logs: Vec<Arc<CriLog>>,
    /// Resolves when every output stream reached EOF.
    pub drained: Vec<tokio::task::JoinHandle<()>>,
}

impl IoHandle {
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
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
        logs: Vec::new(),
        terminal: None,
    };
    let mut logs = Vec::new();
    if spec.terminal {
        let (shim_end, child_end) = UnixStream::pair()?;
        let stdout = open_output(&spec.stdout, &mut logs)?;
        let stdin = (!spec.stdin.is_empty()).then(|| PathBuf::from(&spec.stdin));
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
            Sink::Log(log) => {
                let (r, w) = pipe()?;
                pending.logs.push((stream, r, log));
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
                _ = rx => return,
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
        for (stream, pipe_r, log) in self.logs {
            handle.logs.push(Arc::clone(&log));
            handle
                .drained
                .push(tokio::spawn(crate::crilog::pump(pipe_r, stream, log)));
        }
        if let Some((sock, stdin, stdout)) = self.terminal {
            // The terminal's master arrives once the process set it up.
            let mut buf = [0u8; 256];
            if let Ok((_, Some(master))) = recv_fd(&sock, &mut buf) {
                let master = Arc::new(master);
                handle.master = Some(Arc::clone(&master));
                if let Some(path) = stdin {
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
                    (Sink::Log(log), Ok(m)) => {
                        handle.logs.push(Arc::clone(&log));
                        handle.drained.push(tokio::spawn(crate::crilog::pump(
                            m,
                            Stream::Stdout,
                            log,
                        )));
                    }
                    _ => {}
                }
            }
        }
        handle
    }
}

/// Receives the terminal master sent with SCM_RIGHTS.
fn recv_fd(sock: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            fd = fds.next();
        }
    }
    Ok((msg.bytes, fd))
}
