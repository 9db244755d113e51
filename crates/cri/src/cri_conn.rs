//! The CRI socket's connections, registered with epoll for reading only.
//!
//! Tokio registers a socket for both directions. On a unix stream socket
//! every buffer the peer reads wakes the writer's epoll with EPOLLOUT
//! (`unix_write_space`), whether or not the writer was ever short of room:
//! each answer berthd sends woke one of its threads again once kubelet had
//! read it, a context switch per RPC for nothing. A connection here waits
//! for room only when a write would block (a large list answer filling the
//! socket's buffer), through a second descriptor registered for that alone
//! and dropped after the write went through.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct CriConnection {
    stream: AsyncFd<UnixStream>,
    /// While a write would block: the socket again, registered for
    /// writability.
    room: Option<AsyncFd<OwnedFd>>,
}

impl CriConnection {
    pub fn new(accepted: tokio::net::UnixStream) -> io::Result<CriConnection> {
        // Non-blocking still: tokio's into_std keeps the mode.
        let stream = accepted.into_std()?;
        Ok(CriConnection {
            stream: register(stream, Interest::READABLE)?,
            room: None,
        })
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        mut send: impl FnMut(&UnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match send(self.stream.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    self.room = None;
                    return Poll::Ready(done);
                }
            }
            if self.room.is_none() {
                // Registering reports the room there is now (epoll checks
                // the socket as it adds it): nothing freed since the failed
                // write is missed.
                let again = self.stream.get_ref().as_fd().try_clone_to_owned()?;
                self.room = Some(register(again, Interest::WRITABLE)?);
            }
            let room = self.room.as_ref().expect("registered above");
            ready!(room.poll_write_ready(cx))?.clear_ready();
        }
    }
}

/// Adds `fd` to the runtime's epoll for `interest` alone.
fn register<T: std::os::fd::AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: T is a UnixStream or an OwnedFd: it owns its descriptor,
    // keeps it open and returns that same one until it is dropped, and the
    // AsyncFd owns T (it deregisters before T closes the descriptor).
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

impl tonic::transport::server::Connected for CriConnection {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for CriConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|s| s.get_ref().read(unfilled)) {
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

impl AsyncWrite for CriConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, |mut s| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both directions, and a write far larger than the socket's buffer:
    /// it blocks until the peer reads, then completes (the wait for room).
    #[tokio::test]
    async fn reads_writes_and_waits_for_room() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut conn = CriConnection::new(ours).unwrap();
        let mut theirs = theirs;
        theirs.write_all(b"request").await.unwrap();
        let mut got = [0u8; 7];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request");

        let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            conn.write_all(&big).await.unwrap();
            conn.shutdown().await.unwrap();
            conn
        });
        // Let the writer fill the buffer and wait before anything is read.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!writer.is_finished(), "8 MiB cannot fit in a socket buffer");
        let mut read = Vec::new();
        theirs.read_to_end(&mut read).await.unwrap();
        assert!(
            read == expected,
            "{} of {} bytes, in order",
            read.len(),
            expected.len()
        );
        let conn = writer.await.unwrap();
        assert!(
            conn.room.is_none(),
            "the writability registration is dropped"
        );
    }
}
