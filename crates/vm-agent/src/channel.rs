//! The agent's end of its channel to the host: the virtio-serial port the
//! VM was given for it (found by name under /sys/class/virtio-ports), a
//! vsock port (hosts with vhost-vsock), or a unix socket (`--listen`, for
//! tests on the host).
//!
//! A virtio-serial port is one byte stream that the host may drop and take
//! up again (a restarted shim): the listener yields a connection when the
//! host side is connected, and the next one only after that one ended.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures_util::stream;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use ttrpc::r#async::transport::Listener;

use crate::fdio::FdStream;

/// How long the port's device may take to appear after the modules load.
const PORT_APPEARS_WITHIN: Duration = Duration::from_secs(10);
/// How often a port whose host side is gone is looked at again.
const HOST_ABSENT_POLL: Duration = Duration::from_millis(20);

pub fn unix_listener(path: &Path) -> Result<Listener> {
    let _ = std::fs::remove_file(path);
    Listener::bind(format!("unix://{}", path.display()))
        .with_context(|| format!("listening on {}", path.display()))
}

/// Connections over vsock, from the host (any context id) to `port`.
pub fn vsock_listener(port: u32) -> Result<Listener> {
    let address = format!("vsock://-1:{port}");
    let listener = Listener::bind(&address).with_context(|| format!("listening on {address}"))?;
    eprintln!("berth-agent: serving on {address}");
    Ok(listener)
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
    eprintln!("berth-agent: the host connected to {}", device.display());
    let (tx, rx) = oneshot::channel();
    Ok((
        SerialPort {
            io: FdStream::new(fd)?,
            _ended: tx,
        },
        rx,
    ))
}

/// One host session on the port; dropping it lets the listener reopen the
/// port for the next.
struct SerialPort {
    io: FdStream,
    _ended: oneshot::Sender<()>,
}

impl AsyncRead for SerialPort {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_vsock_listener_binds_any_context_id() {
        // This host has a vsock transport (it is itself a VM); a guest's
        // kernel with vmw_vsock_virtio_transport loaded does too.
        if !std::path::Path::new("/dev/vsock").exists() {
            let err = super::vsock_listener(1024).err().expect("no vsock here");
            assert!(format!("{err:#}").contains("vsock://-1:1024"), "{err:#}");
            return;
        }
        super::vsock_listener(40_000 + std::process::id() % 20_000).expect("binding vsock");
    }
}
