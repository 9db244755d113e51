//! The agent's end of its channel to the host: the virtio-serial port the
//! VM was given for it (found by name under /sys/class/virtio-ports), or a
//! unix socket (`--listen`, for tests on the host).
//!
//! A virtio-serial port is one byte stream that the host may drop and take
//! up again (a restarted shim): the listener yields a connection when the
//! host side is connected, and the next one only after that one ended.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures_util::stream;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use ttrpc::r#async::transport::Listener;

/// How long the port's device may take to appear after the modules load.
const PORT_APPEARS_WITHIN: Duration = Duration::from_secs(10);
/// How often a port whose host side is gone is looked at again.
const HOST_ABSENT_POLL: Duration = Duration::from_millis(20);

pub fn unix_listener(path: &Path) -> Result<Listener> {
    let _ = std::fs::remove_file(path);
    Listener::bind(format!("unix://{}", path.display()))
        .with_context(|| format!("listening on {}", path.display()))
}

/// Connections over the virtio-serial port named `name`.
pub fn serial_listener(name: &str) -> Result<Listener> {
    let device = find_port(name)?;
    eprintln!("berth-agent: serving on {}", device.display());
    let connections = stream::unfold(
        (device, None::<oneshot::Receiver<()>>),
        |(device, previous)| async move {
            if let Some(ended) = previous {
                let _ = ended.await;
            }
            let next = connect(&device).await;
            let (item, ended) = match next {
                Ok((port, ended)) => (Ok(port), Some(ended)),
                Err(e) => {
                    // Reported to the server, which goes on accepting; do not
                    // spin on a broken device.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    (Err(e), None)
                }
            };
            Some((item, (device, ended)))
        },
    );
    Ok(Listener::new(connections))
}

/// The device of the port named `name`, waiting for it to appear.
fn find_port(name: &str) -> Result<PathBuf> {
    let deadline = std::time::Instant::now() + PORT_APPEARS_WITHIN;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let named = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if named.trim_end() == name {
                    let device = Path::new("/dev").join(entry.file_name());
                    if device.exists() {
                        return Ok(device);
                    }
                }
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("no virtio-serial port named {name:?} appeared within {PORT_APPEARS_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens the port and waits until the host side is connected.
async fn connect(device: &Path) -> io::Result<(SerialPort, oneshot::Receiver<()>)> {
    let fd = rustix::fs::open(
        device,
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
        poll(&mut fds, None)?;
        if !fds[0].revents().contains(PollFlags::HUP) {
            break;
        }
        tokio::time::sleep(HOST_ABSENT_POLL).await;
    }
    // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until
    // dropped: the descriptor stays open and the same for its lifetime.
    let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
    eprintln!("berth-agent: the host connected to {}", device.display());
    let (tx, rx) = oneshot::channel();
    Ok((SerialPort { fd, _ended: tx }, rx))
}

/// One host session on the port; dropping it lets the listener reopen the
/// port for the next.
struct SerialPort {
    fd: AsyncFd<OwnedFd>,
    _ended: oneshot::Sender<()>,
}

impl AsyncRead for SerialPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref().as_fd(), &mut *unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref().as_fd(), data)?)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
