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
    /// Sends made so far (the tests count an answer's writes).
    #[cfg(test)]
    sends: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CriConnection {
    pub fn new(accepted: tokio::net::UnixStream) -> io::Result<CriConnection> {
        // Non-blocking still: tokio's into_std keeps the mode.
        let stream = accepted.into_std()?;
        crate::busy_poll::CRI.watch(&stream);
        Ok(CriConnection {
            stream: register(stream, Interest::READABLE)?,
            room: None,
            #[cfg(test)]
            sends: Default::default(),
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
                    if done.is_ok() {
                        crate::busy_poll::CRI.moved();
                    }
                    #[cfg(test)]
                    self.sends
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
            let wanted = unfilled.len();
            match guard.try_io(|s| s.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A stream socket reads short only when it has nothing
                    // more queued: wait for the next event rather than
                    // learning that from another read's EAGAIN, a syscall
                    // per RPC (tokio's own sockets do the same).
                    if n > 0 && n < wanted {
                        guard.clear_ready();
                    }
                    if n > 0 {
                        crate::busy_poll::CRI.moved();
                    }
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

    /// No: h2 then copies a DATA frame of up to 1 KiB into its write
    /// buffer, where the trailers follow it, instead of chaining every
    /// payload over 256 bytes and flushing it before it takes the trailers.
    /// A unary answer of that size (a PodSandboxStatus, a ContainerStatus)
    /// leaves in one write, and wakes kubelet once instead of twice.
    fn is_write_vectored(&self) -> bool {
        false
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

    /// A unary gRPC answer as tonic gives it to h2 (headers, one DATA frame
    /// of a PodSandboxStatus's size, trailers) leaves in a single write:
    /// the client is woken once per call, not once for the message and
    /// again for its trailers.
    #[test]
    fn a_small_answer_and_its_trailers_leave_in_one_write() {
        const ANSWER: usize = 700;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let (sends_tx, sends_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let conn =
                    CriConnection::new(tokio::net::UnixStream::from_std(ours).unwrap()).unwrap();
                sends_tx.send(std::sync::Arc::clone(&conn.sends)).unwrap();
                let mut h2 = h2::server::handshake(conn).await.unwrap();
                while let Some(Ok((_request, mut respond))) = h2.accept().await {
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let mut send = respond.send_response(response, false).unwrap();
                    send.send_data(bytes::Bytes::from(vec![7u8; ANSWER]), false)
                        .unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    send.send_trailers(trailers).unwrap();
                }
            });
        });
        let sends = sends_rx.recv().unwrap();
        let writes = move || sends.load(std::sync::atomic::Ordering::Relaxed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let io = tokio::net::UnixStream::from_std(theirs).unwrap();
            let (client, connection) = h2::client::handshake(io).await.unwrap();
            tokio::spawn(connection);
            let mut client = client.ready().await.unwrap();
            let mut call = || {
                let request =
                    http::Request::post("http://berthd/runtime.v1.RuntimeService/PodSandboxStatus")
                        .body(())
                        .unwrap();
                let (response, _) = client.send_request(request, true).unwrap();
                async move {
                    let mut body = response.await.unwrap().into_body();
                    let mut got = 0;
                    while let Some(data) = body.data().await {
                        got += data.unwrap().len();
                    }
                    assert_eq!(got, ANSWER);
                    let trailers = body.trailers().await.unwrap().expect("trailers");
                    assert_eq!(trailers["grpc-status"], "0");
                }
            };
            // The first calls also carry the connection's settings acks.
            for _ in 0..3 {
                call().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            for i in 0..20 {
                let before = writes();
                call().await;
                // Anything the server would write after the trailers.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let after = writes();
                assert_eq!(after - before, 1, "writes for call {i}");
            }
        });
        drop(rt);
        server.join().unwrap();
    }
}
