//! A stream's state and the session's: flags, buffers, both flow-control
//! windows, wakers.

use std::collections::{HashMap, VecDeque};
use std::task::Waker;

use tokio::io::ReadBuf;
use tokio::sync::{mpsc, oneshot};

use super::{Error, Stream};
use crate::frame::{Frame, GoAwayStatus, RstStatus, MAX_31};
use crate::headers::Headers;

#[derive(Clone, Copy, Debug)]
pub(super) enum Reset {
    Local(RstStatus),
    Remote(RstStatus),
}

impl Reset {
    pub(super) fn error(self, id: u32) -> Error {
        match self {
            Reset::Local(status) => Error::LocalReset { id, status },
            Reset::Remote(status) => Error::RemoteReset { id, status },
        }
    }
}

pub(super) struct StreamState {
    pub(super) locally_initiated: bool,
    /// Accepted streams: this side sent SYN_REPLY. Opened streams: the peer did.
    pub(super) replied: bool,
    pub(super) reply_headers: Option<Headers>,
    /// HEADERS frames received.
    pub(super) extra_headers: Vec<Headers>,
    /// FIN sent (or queued).
    pub(super) local_closed: bool,
    /// FIN received.
    pub(super) remote_closed: bool,
    pub(super) reset: Option<Reset>,
    pub(super) recv_buf: VecDeque<Vec<u8>>,
    recv_off: usize,
    pub(super) recv_buffered: usize,
    /// What the peer may still send, as advertised.
    pub(super) recv_window: i64,
    /// Read but not yet returned by WINDOW_UPDATE.
    recv_unacked: u64,
    /// What this side may still send.
    pub(super) send_window: i64,
    pub(super) reader_alive: bool,
    pub(super) writer_alive: bool,
    pub(super) read_waker: Option<Waker>,
    pub(super) write_waker: Option<Waker>,
    pub(super) reply_waker: Option<Waker>,
}

impl StreamState {
    pub(super) fn new(locally_initiated: bool, recv_window: u32, send_window: i64) -> StreamState {
        StreamState {
            locally_initiated,
            replied: false,
            reply_headers: None,
            extra_headers: Vec::new(),
            local_closed: false,
            remote_closed: false,
            reset: None,
            recv_buf: VecDeque::new(),
            recv_off: 0,
            recv_buffered: 0,
            recv_window: recv_window.into(),
            recv_unacked: 0,
            send_window,
            reader_alive: true,
            writer_alive: true,
            read_waker: None,
            write_waker: None,
            reply_waker: None,
        }
    }

    pub(super) fn wake_all(&mut self) {
        for waker in [
            self.read_waker.take(),
            self.write_waker.take(),
            self.reply_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            waker.wake();
        }
    }

    pub(super) fn wake_read(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
    }

    pub(super) fn wake_write(&mut self) {
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    /// Drops unread data, returning how much there was.
    pub(super) fn discard(&mut self) -> usize {
        let n = self.recv_buffered;
        self.recv_buf.clear();
        self.recv_off = 0;
        self.recv_buffered = 0;
        n
    }

    pub(super) fn read_into(&mut self, buf: &mut ReadBuf<'_>) -> usize {
        let mut n = 0;
        while buf.remaining() > 0 {
            let Some(front) = self.recv_buf.front() else {
                break;
            };
            let avail = &front[self.recv_off..];
            let take = avail.len().min(buf.remaining());
            buf.put_slice(&avail[..take]);
            n += take;
            self.recv_off += take;
            if self.recv_off == front.len() {
                self.recv_buf.pop_front();
                self.recv_off = 0;
            }
        }
        self.recv_buffered -= n;
        n
    }

    /// Both sides finished (or reset) and no handle left: forget it.
    pub(super) fn finished(&self) -> bool {
        !self.reader_alive && !self.writer_alive && (self.reset.is_some() || self.remote_closed)
    }
}

pub(super) struct State {
    pub(super) streams: HashMap<u32, StreamState>,
    pub(super) next_local_id: u32,
    pub(super) last_peer_id: u32,
    pub(super) next_ping_id: u32,
    pub(super) pings: HashMap<u32, oneshot::Sender<()>>,
    pub(super) accept_tx: Option<mpsc::UnboundedSender<Stream>>,
    /// The peer's initial window for new streams (SETTINGS).
    pub(super) peer_initial_window: i64,
    pub(super) send_session_window: i64,
    pub(super) recv_session_window: i64,
    pub(super) session_unacked: u64,
    pub(super) queued_bytes: usize,
    pub(super) goaway_sent: bool,
    pub(super) goaway_received: Option<(u32, GoAwayStatus)>,
    pub(super) closed: bool,
    pub(super) close_error: Option<Error>,
}

impl State {
    pub(super) fn end_error(&self) -> Error {
        self.close_error.clone().unwrap_or(Error::Closed)
    }

    /// Credits `n` read (or discarded) bytes to the session window,
    /// queueing a WINDOW_UPDATE once half of it is owed.
    pub(super) fn credit_session(&mut self, n: usize, window: u32, out: &mut Vec<Frame>) {
        self.session_unacked += n as u64;
        if self.session_unacked >= u64::from(window / 2) {
            let delta = self.session_unacked.min(MAX_31.into()) as u32;
            self.session_unacked -= u64::from(delta);
            self.recv_session_window += i64::from(delta);
            out.push(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            });
        }
    }
}

/// Resets a stream from this side because of what the peer sent: its
/// unread data is dropped (the count is returned, for the session window).
pub(super) fn local_reset(s: &mut StreamState, status: RstStatus) -> usize {
    s.reset = Some(Reset::Local(status));
    let dropped = s.discard();
    s.wake_all();
    dropped
}

/// Credits `n` bytes to a stream's window, as [`State::credit_session`].
pub(super) fn credit_stream(
    id: u32,
    s: &mut StreamState,
    n: usize,
    window: u32,
    out: &mut Vec<Frame>,
) {
    s.recv_unacked += n as u64;
    if s.remote_closed || s.reset.is_some() {
        return;
    }
    if s.recv_unacked >= u64::from(window / 2) {
        let delta = s.recv_unacked.min(MAX_31.into()) as u32;
        s.recv_unacked -= u64::from(delta);
        s.recv_window += i64::from(delta);
        out.push(Frame::WindowUpdate {
            stream_id: id,
            delta,
        });
    }
}
