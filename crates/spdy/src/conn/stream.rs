//! The application's handles on a stream: [`Stream`], and its halves
//! [`RecvStream`] and [`SendStream`].

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::shared::{Cmd, Guard, Shared};
use super::state::{credit_stream, Reset, State, StreamState};
use super::Error;
use crate::frame::{Frame, RstStatus};
use crate::headers::Headers;

struct StreamRef {
    pub(super) id: u32,
    pub(super) headers: Headers,
    pub(super) shared: Arc<Shared>,
    pub(super) _guard: Arc<Guard>,
}

impl StreamRef {
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut State, Option<&mut StreamState>) -> R) -> R {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        // Taken out and put back so `f` can use the rest of the state.
        let mut s = st.streams.remove(&self.id);
        let result = f(st, s.as_mut());
        if let Some(s) = s {
            st.streams.insert(self.id, s);
        }
        result
    }

    fn set_reset(&self, status: RstStatus) {
        self.with(|_, s| {
            if let Some(s) = s {
                s.reset = Some(Reset::Local(status));
            }
        });
    }

    /// Checks that the stream can still send: its state, or the error.
    fn sendable(&self, st: &State, s: Option<&StreamState>) -> Result<(), Error> {
        if st.closed {
            return Err(st.end_error());
        }
        let Some(s) = s else {
            return Err(Error::Closed);
        };
        if let Some(reset) = s.reset {
            return Err(reset.error(self.id));
        }
        if s.local_closed {
            return Err(Error::LocalClosed(self.id));
        }
        Ok(())
    }

    pub(super) fn reply(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        headers.validate()?;
        self.with(|st, s| {
            self.sendable(st, s.as_deref())?;
            let s = s.ok_or(Error::Closed)?;
            if s.locally_initiated {
                return Err(Error::WrongSide(self.id));
            }
            if s.replied {
                return Err(Error::AlreadyReplied(self.id));
            }
            s.replied = true;
            s.local_closed = fin;
            self.shared.send(Cmd::Frame(Frame::SynReply {
                stream_id: self.id,
                fin,
                headers,
            }));
            Ok(())
        })
    }

    /// A stream the peer opened gets its SYN_REPLY before anything else
    /// this side sends on it (HEADERS cannot come first): an empty one when
    /// the application did not reply. True if it was sent now.
    fn reply_first(&self, s: &mut StreamState, fin: bool) -> bool {
        if s.locally_initiated || s.replied {
            return false;
        }
        s.replied = true;
        self.shared.send(Cmd::Frame(Frame::SynReply {
            stream_id: self.id,
            fin,
            headers: Headers::new(),
        }));
        true
    }

    fn poll_reply(&self, cx: &mut Context<'_>) -> Poll<Result<Headers, Error>> {
        self.with(|st, s| {
            let Some(s) = s else {
                return Poll::Ready(Err(Error::Closed));
            };
            if !s.locally_initiated {
                return Poll::Ready(Err(Error::WrongSide(self.id)));
            }
            if let Some(headers) = &s.reply_headers {
                return Poll::Ready(Ok(headers.clone()));
            }
            if let Some(reset) = s.reset {
                return Poll::Ready(Err(reset.error(self.id)));
            }
            if st.closed {
                return Poll::Ready(Err(st.end_error()));
            }
            s.reply_waker = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    fn send_headers(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        headers.validate()?;
        self.with(|st, s| {
            self.sendable(st, s.as_deref())?;
            let s = s.ok_or(Error::Closed)?;
            self.reply_first(s, false);
            s.local_closed = fin;
            self.shared.send(Cmd::Frame(Frame::Headers {
                stream_id: self.id,
                fin,
                headers,
            }));
            Ok(())
        })
    }

    pub(super) fn reset(&self, status: RstStatus) {
        let mut updates = Vec::new();
        self.with(|st, s| {
            let Some(s) = s else { return };
            if s.reset.is_some() || (s.local_closed && s.remote_closed) || st.closed {
                return;
            }
            s.reset = Some(Reset::Local(status));
            let dropped = s.discard();
            s.wake_all();
            st.credit_session(dropped, self.shared.config.session_window, &mut updates);
            self.shared.send(Cmd::Frame(Frame::RstStream {
                stream_id: self.id,
                status,
            }));
        });
        self.shared.space.notify_one();
        self.shared.send_frames(updates);
    }

    fn take_headers(&self) -> Vec<Headers> {
        self.with(|_, s| {
            s.map(|s| std::mem::take(&mut s.extra_headers))
                .unwrap_or_default()
        })
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut updates = Vec::new();
        let result = self.with(|st, s| {
            let Some(s) = s else {
                return Poll::Ready(Err(Error::Closed.into()));
            };
            if s.recv_buffered > 0 {
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                let n = s.read_into(buf);
                credit_stream(
                    self.id,
                    s,
                    n,
                    self.shared.config.stream_window,
                    &mut updates,
                );
                st.credit_session(n, self.shared.config.session_window, &mut updates);
                return Poll::Ready(Ok(()));
            }
            if let Some(reset) = s.reset {
                return Poll::Ready(Err(reset.error(self.id).into()));
            }
            if s.remote_closed {
                return Poll::Ready(Ok(()));
            }
            if st.closed {
                return Poll::Ready(Err(st.end_error().into()));
            }
            s.read_waker = Some(cx.waker().clone());
            Poll::Pending
        });
        if !updates.is_empty() || result.is_ready() {
            self.shared.space.notify_one();
        }
        self.shared.send_frames(updates);
        result
    }

    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let strict = self.shared.strict();
        let config = &self.shared.config;
        self.with(|st, s| {
            if let Err(e) = self.sendable(st, s.as_deref()) {
                return Poll::Ready(Err(e.into()));
            }
            let Some(s) = s else {
                return Poll::Ready(Err(Error::Closed.into()));
            };
            if data.is_empty() {
                return Poll::Ready(Ok(0));
            }
            self.reply_first(s, false);
            let mut n = data.len().min(config.max_send_frame);
            if strict {
                let window = s.send_window.min(st.send_session_window).max(0);
                n = n.min(usize::try_from(window).unwrap_or(usize::MAX));
            }
            n = n.min(config.write_queue.saturating_sub(st.queued_bytes));
            if n == 0 {
                s.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if strict {
                s.send_window -= n as i64;
                st.send_session_window -= n as i64;
            }
            st.queued_bytes += n;
            self.shared.send(Cmd::Data {
                stream_id: self.id,
                fin: false,
                data: data[..n].to_vec(),
            });
            Poll::Ready(Ok(n))
        })
    }

    fn poll_shutdown(&self) -> Poll<io::Result<()>> {
        self.with(|st, s| {
            if s.as_ref()
                .is_some_and(|s| s.local_closed && s.reset.is_none())
            {
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = self.sendable(st, s.as_deref()) {
                return Poll::Ready(Err(e.into()));
            }
            let Some(s) = s else {
                return Poll::Ready(Err(Error::Closed.into()));
            };
            s.local_closed = true;
            if !self.reply_first(s, true) {
                self.shared.send(Cmd::Data {
                    stream_id: self.id,
                    fin: true,
                    data: Vec::new(),
                });
            }
            Poll::Ready(Ok(()))
        })
    }

    /// One handle half is gone; the last one sends RST_STREAM(CANCEL) if
    /// this side had not finished sending, and forgets the stream once the
    /// peer has finished too.
    fn release(&self, reader: bool) {
        let mut updates = Vec::new();
        let mut cancel = false;
        {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            if let Some(s) = st.streams.get_mut(&self.id) {
                let config = &self.shared.config;
                if reader {
                    s.reader_alive = false;
                    let dropped = s.discard();
                    credit_stream(self.id, s, dropped, config.stream_window, &mut updates);
                    st.credit_session(dropped, config.session_window, &mut updates);
                } else {
                    s.writer_alive = false;
                }
                if let Some(s) = st.streams.get_mut(&self.id) {
                    if !s.reader_alive && !s.writer_alive && s.reset.is_none() && !s.local_closed {
                        s.reset = Some(Reset::Local(RstStatus::Cancel));
                        cancel = !st.closed;
                    }
                }
                if st.streams.get(&self.id).is_some_and(StreamState::finished) {
                    st.streams.remove(&self.id);
                }
            }
        }
        self.shared.space.notify_one();
        self.shared.send_frames(updates);
        if cancel {
            self.shared.send(Cmd::Frame(Frame::RstStream {
                stream_id: self.id,
                status: RstStatus::Cancel,
            }));
        }
    }
}

/// The receiving half of a stream (`AsyncRead`). Dropping it discards
/// whatever the peer still sends on the stream.
pub struct RecvStream {
    inner: Arc<StreamRef>,
}

/// The sending half of a stream (`AsyncWrite`; `shutdown` sends FIN).
pub struct SendStream {
    inner: Arc<StreamRef>,
}

/// A stream: both halves. See the [module](super) documentation.
pub struct Stream {
    recv: RecvStream,
    send: SendStream,
}

impl Stream {
    pub(super) fn new(shared: Arc<Shared>, guard: Arc<Guard>, id: u32, headers: Headers) -> Stream {
        let inner = Arc::new(StreamRef {
            id,
            headers,
            shared,
            _guard: guard,
        });
        Stream {
            recv: RecvStream {
                inner: inner.clone(),
            },
            send: SendStream { inner },
        }
    }

    /// Marks the stream reset with `status` without sending RST_STREAM (the
    /// caller sends it).
    pub(super) fn mark_reset(&self, status: RstStatus) {
        self.recv.inner.set_reset(status);
    }

    /// Splits the stream so each half can go to its own task.
    pub fn split(self) -> (RecvStream, SendStream) {
        (self.recv, self.send)
    }

    /// Accepts a stream the peer opened (SYN_REPLY; `fin` if this side sends
    /// nothing on it).
    pub fn reply(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        self.recv.inner.reply(headers, fin)
    }

    /// Waits for the peer's SYN_REPLY to a stream this side opened.
    pub async fn wait_reply(&self) -> Result<Headers, Error> {
        poll_fn(|cx| self.recv.inner.poll_reply(cx)).await
    }

    /// Sends a HEADERS frame (`fin` ends this side).
    pub fn send_headers(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        self.send.inner.send_headers(headers, fin)
    }
}

macro_rules! common_stream_methods {
    ($ty:ty, $($field:ident).+) => {
        impl $ty {
            /// The stream id.
            pub fn id(&self) -> u32 {
                self.$($field).+.id
            }

            /// The SYN_STREAM's headers: the peer's for an accepted stream,
            /// this side's for an opened one.
            pub fn headers(&self) -> &Headers {
                &self.$($field).+.headers
            }

            /// Resets the stream (RST_STREAM): nothing more is sent or
            /// received on it. Does nothing once it is closed both ways.
            pub fn reset(&self, status: RstStatus) {
                self.$($field).+.reset(status)
            }

            /// Header blocks the peer sent in HEADERS frames since the last
            /// call.
            pub fn take_headers(&self) -> Vec<Headers> {
                self.$($field).+.take_headers()
            }
        }
    };
}

common_stream_methods!(Stream, recv.inner);
common_stream_methods!(RecvStream, inner);
common_stream_methods!(SendStream, inner);

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.inner.release(true);
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        self.inner.release(false);
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.recv.inner.id)
            .finish()
    }
}

impl std::fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvStream")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl std::fmt::Debug for SendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.poll_read(cx, buf)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.recv.inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_shutdown()
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.send.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send.inner.poll_shutdown()
    }
}
