//! Closing streaming connections that have been idle too long, as the
//! kubelet's streaming server does (containerd's `stream_idle_timeout`,
//! 4 hours by default): an exec whose client vanished without closing its
//! connection (a laptop put to sleep, a NAT that forgot the flow) would
//! otherwise hold its connection, its tasks and its pod connections for
//! good.
//!
//! Idle means no byte read or written on the upgraded connection, frames of
//! any kind included, as spdystream counts them: kubectl's PINGs keep a
//! quiet session alive. The hot path only sets a flag; the timer runs in
//! slices of an eighth of the timeout and the connection ends after a whole
//! timeout of quiet slices, so it is closed between one and 1.125 timeouts
//! after its last byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const SLICES: u32 = 8;

struct Watch {
    timeout: Duration,
    slice: Duration,
    timer: Pin<Box<Sleep>>,
    /// Bytes moved since the current slice began.
    active: bool,
    quiet_slices: u32,
    expired: bool,
}

/// An upgraded connection that fails every read and write, so that its
/// protocol's tasks end and it is dropped, once it has been idle for the
/// timeout.
pub(crate) struct IdleTimeout<T> {
    inner: T,
    watch: Option<Watch>,
}

impl<T> IdleTimeout<T> {
    /// `None`: never times out. Must be called within a tokio runtime.
    pub(crate) fn new(inner: T, timeout: Option<Duration>) -> IdleTimeout<T> {
        let watch = timeout.filter(|t| !t.is_zero()).map(|timeout| {
            let slice = (timeout / SLICES).max(Duration::from_millis(1));
            Watch {
                timeout,
                slice,
                timer: Box::pin(tokio::time::sleep(slice)),
                active: false,
                quiet_slices: 0,
                expired: false,
            }
        });
        IdleTimeout { inner, watch }
    }

    fn moved(&mut self) {
        if let Some(w) = &mut self.watch {
            w.active = true;
        }
    }

    fn check_expired(&self) -> io::Result<()> {
        match &self.watch {
            Some(w) if w.expired => Err(idle_error(w.timeout)),
            _ => Ok(()),
        }
    }

    /// Ends the slices that are over: ready with the error once a timeout's
    /// worth of them saw nothing move. Registers the task for the next one.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(w) = &mut self.watch else {
            return Poll::Pending;
        };
        while w.timer.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut w.active) {
                w.quiet_slices = 0;
            } else {
                w.quiet_slices += 1;
            }
            if w.quiet_slices >= SLICES {
                w.expired = true;
                return Poll::Ready(idle_error(w.timeout));
            }
            // From now, not from the deadline: a task that was busy past
            // several slices must not count them as quiet ones.
            let next = Instant::now() + w.slice;
            w.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

fn idle_error(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the streaming connection was idle for {}s (stream.idle_timeout)",
            timeout.as_secs_f64()
        ),
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_expired()?;
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_expired()?;
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_expired()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_fails_after_the_timeout_and_not_before() {
        // The other end stays open and silent.
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut conn = IdleTimeout::new(ours, Some(Duration::from_secs(80)));
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(80) && waited <= Duration::from_secs(90),
            "{waited:?}"
        );
        // Writes fail too from then on, so the protocol's writer ends.
        assert!(conn.write_all(b"x").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_it_open() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let conn = IdleTimeout::new(ours, Some(Duration::from_secs(80)));
        let start = Instant::now();
        let (mut r, mut w) = tokio::io::split(conn);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => panic!("EOF instead of the idle timeout"),
                    Ok(_) => continue,
                    Err(e) => return (Instant::now(), e),
                }
            }
        });
        // One byte every 50 s, out and in by turns, for 300 s.
        for i in 0..6 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            if i % 2 == 0 {
                w.write_all(b"o").await.unwrap();
                let mut b = [0u8; 1];
                theirs.read_exact(&mut b).await.unwrap();
            } else {
                theirs.write_all(b"i").await.unwrap();
            }
        }
        let (at, err) = reader.await.unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let open_for = at - start;
        assert!(
            open_for >= Duration::from_secs(380) && open_for <= Duration::from_secs(390),
            "{open_for:?}"
        );
        drop(w);
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_never_fails() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut conn = IdleTimeout::new(ours, None);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(86_400), conn.read(&mut buf)).await;
        assert!(read.is_err(), "a read with no timeout ended: {read:?}");
    }
}
