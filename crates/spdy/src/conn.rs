//! A multiplexed SPDY/3.1 connection over a tokio `AsyncRead + AsyncWrite`.
//!
//! [`Connection::new`] splits the transport and spawns two tasks: a reader
//! that decodes frames and routes them to streams, and a writer that owns
//! the header compressor and writes queued frames in order. Streams are
//! [`Stream`]s (`AsyncRead + AsyncWrite`, splittable into [`RecvStream`] and
//! [`SendStream`]); `shutdown()` sends FIN, dropping both halves of a stream
//! that this side has not finished sends RST_STREAM(CANCEL).
//!
//! Flow control (SPDY/3.1): every stream starts with a 64 KiB window each
//! way and the session with 64 KiB; WINDOW_UPDATEs (stream id 0 for the
//! session) are sent as the application reads, once half a window is
//! consumed. Under [`FlowControl::Spdy31`] a writer waits while the peer's
//! stream or session window is empty and a peer that overruns ours is
//! reset (FLOW_CONTROL_ERROR). moby/spdystream (kubectl, the kubelet) does
//! not implement flow control, so [`FlowControl::Lenient`] never waits for
//! the peer's windows and, when the peer overruns a stream's buffer, stops
//! reading the connection until the application catches up instead.
//!
//! Memory is bounded: per stream by its receive window (or, leniently, one
//! frame past it), per connection by `max_streams`, the write queue
//! (`write_queue` bytes of DATA) and 64 queued control frames caused by the
//! peer (PING echoes, RST_STREAMs); past those the reader stops reading.
//!
//! Over 800 lines: one connection's state machine (streams, both flow-control
//! windows, reader and writer tasks) shares private state that splitting would
//! have to expose.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use crate::frame::{
    settings, Decoder, Encoder, Frame, FrameError, FrameHead, GoAwayStatus, Limits, RstStatus,
    Setting, HEADER_LEN, MAX_31, MAX_FRAME_LEN,
};
use crate::headers::Headers;

/// The initial stream and session window of SPDY/3.1.
pub const DEFAULT_WINDOW: u32 = 64 << 10;

/// Control frames caused by the peer (PING echoes, RST_STREAMs) that may
/// wait for the socket before the reader stops reading.
const CONTROL_QUEUE: usize = 64;

/// Which end of the connection this is: clients open odd streams and send
/// odd pings, servers even ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that sent the HTTP upgrade (kubectl).
    Client,
    /// The side that accepted it (the kubelet streaming server).
    Server,
}

/// How the peer's flow control is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowControl {
    /// SPDY/3.1: writers wait for the peer's windows; a peer that overruns
    /// ours is reset (stream) or disconnected (session).
    Spdy31,
    /// For peers that ignore flow control (moby/spdystream): WINDOW_UPDATEs
    /// are still sent, but writers never wait for the peer's windows, and a
    /// stream buffer overrun stops the reader (TCP backpressure) instead of
    /// resetting the stream.
    Lenient,
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Limits on received frames.
    pub limits: Limits,
    /// See [`FlowControl`].
    pub flow_control: FlowControl,
    /// Receive window of each stream (64 KiB to 2^31-1; sent as SETTINGS
    /// when above 64 KiB). Also the most a stream buffers unread.
    pub stream_window: u32,
    /// Receive window of the session (64 KiB to 2^31-1; raised by a
    /// WINDOW_UPDATE on stream 0 at start when above 64 KiB). At least
    /// `stream_window * max_streams` keeps one unread stream from stalling
    /// the others.
    pub session_window: u32,
    /// Streams the peer may have open at once; more are refused
    /// (RST_STREAM REFUSED_STREAM).
    pub max_streams: usize,
    /// Largest DATA frame sent.
    pub max_send_frame: usize,
    /// Bytes of DATA queued for the socket before writers wait.
    pub write_queue: usize,
}

impl Default for Config {
    /// SPDY/3.1 flow control, 64 KiB stream windows, an 8 MiB session
    /// window, 128 streams, 32 KiB DATA frames and a 256 KiB write queue.
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            flow_control: FlowControl::Spdy31,
            stream_window: DEFAULT_WINDOW,
            session_window: 8 << 20,
            max_streams: 128,
            max_send_frame: 32 << 10,
            write_queue: 256 << 10,
        }
    }
}

impl Config {
    /// The defaults with [`FlowControl::Lenient`]: what a server talking to
    /// kubectl (moby/spdystream) needs.
    pub fn kubernetes() -> Config {
        Config {
            flow_control: FlowControl::Lenient,
            ..Config::default()
        }
    }

    fn normalized(mut self) -> Config {
        self.stream_window = self.stream_window.clamp(DEFAULT_WINDOW, MAX_31);
        self.session_window = self.session_window.clamp(DEFAULT_WINDOW, MAX_31);
        self.max_send_frame = self.max_send_frame.clamp(1, MAX_FRAME_LEN as usize);
        self.write_queue = self.write_queue.max(1);
        self
    }
}

/// What went wrong on a connection or stream.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    #[error("SPDY connection I/O: {0}")]
    Io(Arc<io::Error>),
    /// The peer sent a malformed frame (the connection is closed with
    /// GOAWAY PROTOCOL_ERROR), or a frame could not be encoded.
    #[error("SPDY frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer broke the protocol (the connection is closed with GOAWAY
    /// PROTOCOL_ERROR).
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    /// The peer sent GOAWAY: no new stream can be opened.
    #[error("SPDY peer sent GOAWAY ({status:?}, last stream {last_good_stream_id})")]
    GoAway {
        /// The last stream the peer accepted.
        last_good_stream_id: u32,
        /// Its status.
        status: GoAwayStatus,
    },
    /// The connection is closed.
    #[error("SPDY connection closed")]
    Closed,
    /// The peer reset the stream.
    #[error("SPDY stream {id} reset by the peer ({status})")]
    RemoteReset {
        /// The stream.
        id: u32,
        /// The peer's status.
        status: RstStatus,
    },
    /// This side reset the stream.
    #[error("SPDY stream {id} reset ({status})")]
    LocalReset {
        /// The stream.
        id: u32,
        /// The status sent.
        status: RstStatus,
    },
    /// This side already sent FIN on the stream.
    #[error("SPDY stream {0}: already finished sending")]
    LocalClosed(u32),
    /// The stream was already replied to.
    #[error("SPDY stream {0}: already replied")]
    AlreadyReplied(u32),
    /// A reply was asked of a stream this side opened, or awaited on one the
    /// peer opened.
    #[error("SPDY stream {0}: wrong side for a SYN_REPLY")]
    WrongSide(u32),
    /// This side has used every stream id.
    #[error("SPDY stream ids are exhausted")]
    StreamIdsExhausted,
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io(inner) => inner.kind(),
            Error::Closed | Error::LocalClosed(_) | Error::GoAway { .. } => {
                io::ErrorKind::BrokenPipe
            }
            Error::RemoteReset { .. } => io::ErrorKind::ConnectionReset,
            Error::LocalReset { .. } => io::ErrorKind::ConnectionAborted,
            Error::Frame(_) | Error::Protocol(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[derive(Clone, Copy, Debug)]
enum Reset {
    Local(RstStatus),
    Remote(RstStatus),
}

impl Reset {
    fn error(self, id: u32) -> Error {
        match self {
            Reset::Local(status) => Error::LocalReset { id, status },
            Reset::Remote(status) => Error::RemoteReset { id, status },
        }
    }
}

struct StreamState {
    locally_initiated: bool,
    /// Accepted streams: this side sent SYN_REPLY. Opened streams: the peer did.
    replied: bool,
    reply_headers: Option<Headers>,
    /// HEADERS frames received.
    extra_headers: Vec<Headers>,
    /// FIN sent (or queued).
    local_closed: bool,
    /// FIN received.
    remote_closed: bool,
    reset: Option<Reset>,
    recv_buf: VecDeque<Vec<u8>>,
    recv_off: usize,
    recv_buffered: usize,
    /// What the peer may still send, as advertised.
    recv_window: i64,
    /// Read but not yet returned by WINDOW_UPDATE.
    recv_unacked: u64,
    /// What this side may still send.
    send_window: i64,
    reader_alive: bool,
    writer_alive: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    reply_waker: Option<Waker>,
}

impl StreamState {
    fn new(locally_initiated: bool, recv_window: u32, send_window: i64) -> StreamState {
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

    fn wake_all(&mut self) {
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

    fn wake_read(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
    }

    fn wake_write(&mut self) {
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    /// Drops unread data, returning how much there was.
    fn discard(&mut self) -> usize {
        let n = self.recv_buffered;
        self.recv_buf.clear();
        self.recv_off = 0;
        self.recv_buffered = 0;
        n
    }

    fn read_into(&mut self, buf: &mut ReadBuf<'_>) -> usize {
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
    fn finished(&self) -> bool {
        !self.reader_alive && !self.writer_alive && (self.reset.is_some() || self.remote_closed)
    }
}

struct State {
    streams: HashMap<u32, StreamState>,
    next_local_id: u32,
    last_peer_id: u32,
    next_ping_id: u32,
    pings: HashMap<u32, oneshot::Sender<()>>,
    accept_tx: Option<mpsc::UnboundedSender<Stream>>,
    /// The peer's initial window for new streams (SETTINGS).
    peer_initial_window: i64,
    send_session_window: i64,
    recv_session_window: i64,
    session_unacked: u64,
    queued_bytes: usize,
    goaway_sent: bool,
    goaway_received: Option<(u32, GoAwayStatus)>,
    closed: bool,
    close_error: Option<Error>,
}

impl State {
    fn end_error(&self) -> Error {
        self.close_error.clone().unwrap_or(Error::Closed)
    }

    /// Credits `n` read (or discarded) bytes to the session window,
    /// queueing a WINDOW_UPDATE once half of it is owed.
    fn credit_session(&mut self, n: usize, window: u32, out: &mut Vec<Frame>) {
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
fn local_reset(s: &mut StreamState, status: RstStatus) -> usize {
    s.reset = Some(Reset::Local(status));
    let dropped = s.discard();
    s.wake_all();
    dropped
}

/// Credits `n` bytes to a stream's window, as [`State::credit_session`].
fn credit_stream(id: u32, s: &mut StreamState, n: usize, window: u32, out: &mut Vec<Frame>) {
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

enum Cmd {
    /// A control frame.
    Frame(Frame),
    /// A control frame holding one of the `control_slots`.
    Counted(Frame),
    /// A DATA frame counted in `queued_bytes`.
    Data {
        stream_id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// Write what is queued, then close the transport.
    Close,
}

struct Shared {
    role: Role,
    config: Config,
    state: Mutex<State>,
    tx: mpsc::UnboundedSender<Cmd>,
    control_slots: Semaphore,
    /// Wakes the reader waiting for a stream's buffer to drain (lenient).
    space: Notify,
    stop: watch::Sender<bool>,
    ended: watch::Sender<bool>,
    guard: OnceLock<Weak<Guard>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn strict(&self) -> bool {
        self.config.flow_control == FlowControl::Spdy31
    }

    fn send(&self, cmd: Cmd) {
        // Fails only once the writer is gone, when nothing more can be sent.
        let _ = self.tx.send(cmd);
    }

    fn send_frames(&self, frames: Vec<Frame>) {
        for frame in frames {
            self.send(Cmd::Frame(frame));
        }
    }

    /// Queues a control frame caused by the peer, waiting while too many
    /// are queued (the peer is not reading).
    async fn send_counted(&self, frame: Frame) {
        if let Ok(permit) = self.control_slots.acquire().await {
            permit.forget();
            self.send(Cmd::Counted(frame));
        }
    }

    fn is_peer_id(&self, id: u32) -> bool {
        match self.role {
            Role::Server => id % 2 == 1,
            Role::Client => id % 2 == 0,
        }
    }

    /// Marks the connection ended and wakes every waiter.
    fn terminate(&self, error: Option<Error>) {
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            if let Some(e) = &error {
                log::debug!("SPDY connection ends: {e}");
            }
            st.closed = true;
            st.close_error = error;
            st.accept_tx = None;
            st.pings.clear();
            for s in st.streams.values_mut() {
                s.wake_all();
            }
        }
        // A reader waiting for a control slot or for buffer space goes on
        // (to its end).
        self.control_slots.close();
        self.space.notify_one();
        self.ended.send_replace(true);
    }

    /// GOAWAY(OK) once, then stop accepting streams.
    fn goaway(&self) {
        let mut st = self.lock();
        if st.goaway_sent || st.closed {
            return;
        }
        st.goaway_sent = true;
        st.accept_tx = None;
        self.send(Cmd::Frame(Frame::GoAway {
            last_good_stream_id: st.last_peer_id,
            status: GoAwayStatus::Ok,
        }));
    }

    /// The writer wrote `data_bytes` of DATA and `slots` counted frames.
    fn wrote(&self, data_bytes: usize, slots: usize) {
        if slots > 0 {
            self.control_slots.add_permits(slots);
        }
        if data_bytes > 0 {
            let mut st = self.lock();
            st.queued_bytes -= data_bytes;
            for s in st.streams.values_mut() {
                s.wake_write();
            }
        }
    }

    async fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), Error> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => self.on_data(stream_id, fin, data).await,
            Frame::SynStream {
                stream_id,
                fin,
                unidirectional,
                headers,
                ..
            } => {
                self.on_syn_stream(stream_id, fin, unidirectional, headers)
                    .await
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => self.on_reply(stream_id, fin, headers).await,
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => self.on_headers(stream_id, fin, headers).await,
            Frame::RstStream { stream_id, status } => {
                self.on_rst(stream_id, status);
                Ok(())
            }
            Frame::Settings { entries, .. } => self.on_settings(&entries),
            Frame::Ping { id } => {
                self.on_ping(id).await;
                Ok(())
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                self.on_goaway(last_good_stream_id, status);
                Ok(())
            }
            Frame::WindowUpdate { stream_id, delta } => {
                self.on_window_update(stream_id, delta).await
            }
            Frame::Unknown { frame_type, .. } => {
                log::debug!("SPDY: ignoring control frame of type {frame_type}");
                Ok(())
            }
        }
    }

    async fn on_data(&self, id: u32, fin: bool, data: Vec<u8>) -> Result<(), Error> {
        let len = data.len();
        let strict = self.strict();
        let (stream_window, session_window) =
            (self.config.stream_window, self.config.session_window);
        {
            let mut st = self.lock();
            if strict && len as i64 > st.recv_session_window {
                return Err(Error::Protocol(format!(
                    "DATA of {len} bytes on stream {id} overruns the session window ({})",
                    st.recv_session_window
                )));
            }
            st.recv_session_window -= len as i64;
        }
        let mut data = Some(data);
        loop {
            let mut updates = Vec::new();
            let mut rst = None;
            let mut wait = false;
            {
                let mut guard = self.lock();
                let st = &mut *guard;
                let unseen = if self.is_peer_id(id) {
                    id > st.last_peer_id
                } else {
                    id >= st.next_local_id
                };
                let mut delivered = false;
                let mut dropped = 0;
                match st.streams.get_mut(&id) {
                    // A stream that never existed is an error; one that is
                    // gone may still have data in flight.
                    None if unseen => rst = Some(RstStatus::InvalidStream),
                    None => {}
                    Some(s) => {
                        let refuse = if s.reset.is_some() {
                            None
                        } else if s.remote_closed {
                            Some(RstStatus::StreamAlreadyClosed)
                        } else if s.locally_initiated && !s.replied {
                            Some(RstStatus::ProtocolError)
                        } else if strict && len as i64 > s.recv_window {
                            Some(RstStatus::FlowControlError)
                        } else {
                            None
                        };
                        if let Some(status) = refuse {
                            dropped = local_reset(s, status);
                            rst = Some(status);
                        } else if s.reset.is_some() {
                            // Reset: dropped.
                        } else if s.reader_alive
                            && len > 0
                            && s.recv_buffered > 0
                            && s.recv_buffered + len > stream_window as usize
                        {
                            // Only a peer ignoring flow control gets here:
                            // stop reading until the application has read.
                            wait = true;
                        } else {
                            s.recv_window -= len as i64;
                            s.remote_closed |= fin;
                            if s.reader_alive {
                                if len > 0 {
                                    s.recv_buffered += len;
                                    s.recv_buf.push_back(data.take().unwrap_or_default());
                                }
                                delivered = true;
                            } else {
                                // Nobody reads: consumed at once.
                                credit_stream(id, s, len, stream_window, &mut updates);
                            }
                            s.wake_read();
                        }
                        if s.finished() {
                            st.streams.remove(&id);
                        }
                    }
                }
                if !wait {
                    let undelivered = if delivered { 0 } else { len };
                    st.credit_session(dropped + undelivered, session_window, &mut updates);
                }
            }
            if wait {
                self.space.notified().await;
                continue;
            }
            self.send_frames(updates);
            if let Some(status) = rst {
                self.send_counted(Frame::RstStream {
                    stream_id: id,
                    status,
                })
                .await;
            }
            return Ok(());
        }
    }

    async fn on_syn_stream(
        self: &Arc<Self>,
        id: u32,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    ) -> Result<(), Error> {
        let accept_tx;
        {
            let mut st = self.lock();
            if !self.is_peer_id(id) || id <= st.last_peer_id {
                return Err(Error::Protocol(format!(
                    "SYN_STREAM {id} after {}: stream ids must grow, with the peer's parity",
                    st.last_peer_id
                )));
            }
            st.last_peer_id = id;
            if st.goaway_sent || st.closed {
                // Ignored after GOAWAY (section 2.6.6).
                return Ok(());
            }
            let open = st.streams.values().filter(|s| !s.locally_initiated).count();
            accept_tx = match (&st.accept_tx, self.guard.get().and_then(Weak::upgrade)) {
                (Some(tx), Some(guard)) if open < self.config.max_streams => {
                    Some((tx.clone(), guard))
                }
                _ => None,
            };
            if accept_tx.is_some() {
                let mut s =
                    StreamState::new(false, self.config.stream_window, st.peer_initial_window);
                s.remote_closed = fin;
                if unidirectional {
                    // Nothing goes back, not even a SYN_REPLY.
                    s.local_closed = true;
                    s.replied = true;
                }
                st.streams.insert(id, s);
            }
        }
        let Some((tx, guard)) = accept_tx else {
            self.send_counted(Frame::RstStream {
                stream_id: id,
                status: RstStatus::RefusedStream,
            })
            .await;
            return Ok(());
        };
        let stream = Stream::new(self.clone(), guard, id, headers);
        if let Err(mpsc::error::SendError(stream)) = tx.send(stream) {
            // Nobody accepts any more.
            stream.recv.inner.set_reset(RstStatus::RefusedStream);
            drop(stream);
            self.send_counted(Frame::RstStream {
                stream_id: id,
                status: RstStatus::RefusedStream,
            })
            .await;
        }
        Ok(())
    }

    /// Resets stream `id` for what the peer sent on it (a stream error):
    /// its unread data is dropped and credited to the session; the caller
    /// sends the RST_STREAM.
    fn stream_error(&self, st: &mut State, id: u32, status: RstStatus) {
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        let dropped = local_reset(s, status);
        let mut updates = Vec::new();
        st.credit_session(dropped, self.config.session_window, &mut updates);
        self.send_frames(updates);
    }

    fn forget_if_finished(st: &mut State, id: u32) {
        if st.streams.get(&id).is_some_and(StreamState::finished) {
            st.streams.remove(&id);
        }
    }

    async fn on_reply(&self, id: u32, fin: bool, headers: Headers) -> Result<(), Error> {
        let rst = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let error = match st.streams.get_mut(&id) {
                None => None,
                Some(s) if s.reset.is_some() => None,
                Some(s) if !s.locally_initiated => Some(RstStatus::ProtocolError),
                Some(s) if s.replied => Some(RstStatus::StreamInUse),
                Some(s) => {
                    s.replied = true;
                    s.reply_headers = Some(headers);
                    s.remote_closed |= fin;
                    s.wake_all();
                    None
                }
            };
            if let Some(status) = error {
                self.stream_error(st, id, status);
            }
            Self::forget_if_finished(st, id);
            error
        };
        if let Some(status) = rst {
            self.send_counted(Frame::RstStream {
                stream_id: id,
                status,
            })
            .await;
        }
        Ok(())
    }

    async fn on_headers(&self, id: u32, fin: bool, headers: Headers) -> Result<(), Error> {
        let rst = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let error = match st.streams.get_mut(&id) {
                None => None,
                Some(s) if s.reset.is_some() => None,
                Some(s) if s.remote_closed => Some(RstStatus::StreamAlreadyClosed),
                Some(s) => {
                    s.extra_headers.push(headers);
                    s.remote_closed |= fin;
                    s.wake_read();
                    None
                }
            };
            if let Some(status) = error {
                self.stream_error(st, id, status);
            }
            Self::forget_if_finished(st, id);
            error
        };
        if let Some(status) = rst {
            self.send_counted(Frame::RstStream {
                stream_id: id,
                status,
            })
            .await;
        }
        Ok(())
    }

    fn on_rst(&self, id: u32, status: RstStatus) {
        let mut updates = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            if let Some(s) = st.streams.get_mut(&id) {
                if s.reset.is_none() {
                    s.reset = Some(Reset::Remote(status));
                    // What arrived before the reset is still its reader's
                    // (spdystream delivers it too: containerd sends an exit
                    // status, then resets the stream).
                    let dropped = if s.reader_alive { 0 } else { s.discard() };
                    s.wake_all();
                    st.credit_session(dropped, self.config.session_window, &mut updates);
                }
                if st.streams.get(&id).is_some_and(StreamState::finished) {
                    st.streams.remove(&id);
                }
            }
            // Reader waiting on this stream's buffer can go on.
        }
        self.space.notify_one();
        self.send_frames(updates);
    }

    fn on_settings(&self, entries: &[Setting]) -> Result<(), Error> {
        for entry in entries {
            if entry.id == settings::INITIAL_WINDOW_SIZE {
                if entry.value > MAX_31 {
                    return Err(Error::Protocol(format!(
                        "SETTINGS_INITIAL_WINDOW_SIZE {} is over 2^31-1",
                        entry.value
                    )));
                }
                let mut st = self.lock();
                let delta = i64::from(entry.value) - st.peer_initial_window;
                st.peer_initial_window = entry.value.into();
                for s in st.streams.values_mut() {
                    s.send_window += delta;
                    s.wake_write();
                }
            }
        }
        Ok(())
    }

    async fn on_ping(&self, id: u32) {
        let ours = match self.role {
            Role::Client => id % 2 == 1,
            Role::Server => id % 2 == 0,
        };
        if ours {
            let waiter = self.lock().pings.remove(&id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(());
            }
        } else {
            self.send_counted(Frame::Ping { id }).await;
        }
    }

    fn on_goaway(&self, last_good: u32, status: GoAwayStatus) {
        if status != GoAwayStatus::Ok {
            log::debug!("SPDY peer sent GOAWAY {status:?}");
        }
        let mut st = self.lock();
        st.goaway_received = Some((last_good, status));
        for (&id, s) in st.streams.iter_mut() {
            if s.locally_initiated && id > last_good && s.reset.is_none() {
                // Never processed by the peer.
                s.reset = Some(Reset::Remote(RstStatus::RefusedStream));
                s.wake_all();
            }
        }
    }

    async fn on_window_update(&self, id: u32, delta: u32) -> Result<(), Error> {
        let strict = self.strict();
        let rst = {
            let mut guard = self.lock();
            let st = &mut *guard;
            if id == 0 {
                st.send_session_window += i64::from(delta);
                if st.send_session_window > i64::from(MAX_31) {
                    if strict {
                        return Err(Error::Protocol(
                            "WINDOW_UPDATE overflows the session window".into(),
                        ));
                    }
                    st.send_session_window = MAX_31.into();
                }
                for s in st.streams.values_mut() {
                    s.wake_write();
                }
                None
            } else {
                let error = match st.streams.get_mut(&id) {
                    None => None,
                    Some(s) => {
                        s.send_window += i64::from(delta);
                        s.wake_write();
                        if s.send_window > i64::from(MAX_31) {
                            s.send_window = MAX_31.into();
                            (strict && s.reset.is_none()).then_some(RstStatus::FlowControlError)
                        } else {
                            None
                        }
                    }
                };
                if let Some(status) = error {
                    self.stream_error(st, id, status);
                }
                error
            }
        };
        if let Some(status) = rst {
            self.send_counted(Frame::RstStream {
                stream_id: id,
                status,
            })
            .await;
        }
        Ok(())
    }
}

/// Keeps the connection up while the application holds a [`Connection`]
/// or a stream; the last one gone sends GOAWAY and closes the transport.
struct Guard {
    shared: Arc<Shared>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.goaway();
        self.shared.send(Cmd::Close);
    }
}

async fn reader_task<R: AsyncRead + Unpin>(shared: Arc<Shared>, r: R) {
    let mut stop = shared.stop.subscribe();
    let result = tokio::select! {
        result = read_loop(&shared, r) => result,
        _ = stop.wait_for(|stop| *stop) => Ok(()),
    };
    match result {
        Ok(()) => shared.terminate(None),
        Err(e) => {
            log::debug!("SPDY reader: {e}");
            if matches!(e, Error::Frame(_) | Error::Protocol(_)) {
                let last = shared.lock().last_peer_id;
                shared.send(Cmd::Frame(Frame::GoAway {
                    last_good_stream_id: last,
                    status: GoAwayStatus::ProtocolError,
                }));
            }
            shared.terminate(Some(e));
        }
    }
    shared.send(Cmd::Close);
}

async fn read_loop<R: AsyncRead + Unpin>(shared: &Arc<Shared>, r: R) -> Result<(), Error> {
    let mut r = BufReader::with_capacity(32 << 10, r);
    let mut decoder = Decoder::new(shared.config.limits);
    loop {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = r.read(&mut head[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(());
                }
                return Err(Error::Protocol(
                    "the connection ended inside a frame header".into(),
                ));
            }
            got += n;
        }
        let head = FrameHead::parse(head);
        decoder.check_head(&head)?;
        let mut payload = vec![0u8; head.length as usize];
        r.read_exact(&mut payload).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Protocol("the connection ended inside a frame".into())
            } else {
                Error::from(e)
            }
        })?;
        let frame = if !head.control && head.stream_id != 0 {
            // Spare DATA a copy.
            Frame::Data {
                stream_id: head.stream_id,
                fin: head.flags & crate::frame::FLAG_FIN != 0,
                data: payload,
            }
        } else {
            decoder.decode_payload(&head, &payload)?
        };
        shared.handle(frame).await?;
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut stop = shared.stop.subscribe();
    let result = tokio::select! {
        result = write_loop(&shared, &mut w, &mut rx) => Some(result),
        // Aborted: the transport may be stuck, so it is only dropped.
        _ = stop.wait_for(|stop| *stop) => None,
    };
    match result {
        Some(Ok(())) => {
            let _ = w.shutdown().await;
            shared.terminate(None);
            shared.stop.send_replace(true);
        }
        Some(Err(e)) => {
            // The peer may have closed its side after its last frames: what
            // it sent is still in the transport, and readers are owed it.
            // The reader ends the connection at the transport's end; a peer
            // that never ends it is cut off after a grace period.
            log::debug!("SPDY writer: {e}");
            let mut ended = shared.ended.subscribe();
            tokio::select! {
                _ = ended.wait_for(|ended| *ended) => {}
                _ = stop.wait_for(|stop| *stop) => {}
                _ = tokio::time::sleep(WRITE_FAILURE_GRACE) => {}
            }
            shared.terminate(Some(e));
            shared.stop.send_replace(true);
        }
        None => {}
    }
}

/// How long a connection whose writes fail waits for its reader to reach
/// the end of what the peer sent.
const WRITE_FAILURE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    w: &mut W,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Result<(), Error> {
    let mut encoder = Encoder::new();
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        buf.clear();
        let (mut data_bytes, mut slots, mut close) = (0, 0, false);
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Frame(frame) => encoder.encode(&frame, &mut buf)?,
                Cmd::Counted(frame) => {
                    slots += 1;
                    encoder.encode(&frame, &mut buf)?;
                }
                Cmd::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    data_bytes += data.len();
                    encoder.encode(
                        &Frame::Data {
                            stream_id,
                            fin,
                            data,
                        },
                        &mut buf,
                    )?;
                }
                Cmd::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < 64 << 10 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            w.flush().await?;
        }
        shared.wrote(data_bytes, slots);
        if close {
            break;
        }
    }
    Ok(())
}

struct ConnInner {
    shared: Arc<Shared>,
    accept_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Stream>>,
    _guard: Arc<Guard>,
}

/// A SPDY/3.1 connection. Cheap to clone; the transport closes (after a
/// GOAWAY) once every clone and every stream is dropped, on [`close`],
/// when the peer closes it, or on a protocol error (GOAWAY
/// PROTOCOL_ERROR).
///
/// [`close`]: Connection::close
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnInner>,
}

impl Connection {
    /// Starts a connection over `io`, spawning its reader and writer on the
    /// current tokio runtime (so it must be called within one).
    pub fn new<T>(io: T, role: Role, config: Config) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let config = config.normalized();
        let (tx, rx) = mpsc::unbounded_channel();
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let state = State {
            streams: HashMap::new(),
            next_local_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            last_peer_id: 0,
            next_ping_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            pings: HashMap::new(),
            accept_tx: Some(accept_tx),
            peer_initial_window: DEFAULT_WINDOW.into(),
            send_session_window: DEFAULT_WINDOW.into(),
            recv_session_window: config.session_window.into(),
            session_unacked: 0,
            queued_bytes: 0,
            goaway_sent: false,
            goaway_received: None,
            closed: false,
            close_error: None,
        };
        if config.stream_window != DEFAULT_WINDOW {
            let _ = tx.send(Cmd::Frame(Frame::Settings {
                clear: false,
                entries: vec![Setting {
                    flags: 0,
                    id: settings::INITIAL_WINDOW_SIZE,
                    value: config.stream_window,
                }],
            }));
        }
        if config.session_window > DEFAULT_WINDOW {
            let _ = tx.send(Cmd::Frame(Frame::WindowUpdate {
                stream_id: 0,
                delta: config.session_window - DEFAULT_WINDOW,
            }));
        }
        let shared = Arc::new(Shared {
            role,
            config,
            state: Mutex::new(state),
            tx,
            control_slots: Semaphore::new(CONTROL_QUEUE),
            space: Notify::new(),
            stop: watch::Sender::new(false),
            ended: watch::Sender::new(false),
            guard: OnceLock::new(),
        });
        let guard = Arc::new(Guard {
            shared: shared.clone(),
        });
        let _ = shared.guard.set(Arc::downgrade(&guard));
        let (r, w) = tokio::io::split(io);
        tokio::spawn(reader_task(shared.clone(), r));
        tokio::spawn(writer_task(shared.clone(), w, rx));
        Connection {
            inner: Arc::new(ConnInner {
                shared,
                accept_rx: tokio::sync::Mutex::new(accept_rx),
                _guard: guard,
            }),
        }
    }

    /// [`Connection::new`] as the server.
    pub fn server<T>(io: T, config: Config) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Connection::new(io, Role::Server, config)
    }

    /// [`Connection::new`] as the client.
    pub fn client<T>(io: T, config: Config) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Connection::new(io, Role::Client, config)
    }

    /// The next stream the peer opened, in order; `None` once the
    /// connection is closed or after [`goaway`](Self::goaway). Reply with
    /// [`Stream::reply`] (the first write replies with no headers if not).
    pub async fn accept(&self) -> Option<Stream> {
        self.inner.accept_rx.lock().await.recv().await
    }

    /// Opens a stream (SYN_STREAM with `headers`; `fin` if this side sends
    /// nothing on it). [`Stream::wait_reply`] waits for the peer's
    /// SYN_REPLY; data may be written before it.
    pub fn open(&self, headers: Headers, fin: bool) -> Result<Stream, Error> {
        headers.validate()?;
        let shared = &self.inner.shared;
        let id = {
            let mut st = shared.lock();
            if st.closed {
                return Err(st.end_error());
            }
            if let Some((last_good_stream_id, status)) = st.goaway_received {
                return Err(Error::GoAway {
                    last_good_stream_id,
                    status,
                });
            }
            let id = st.next_local_id;
            if id > MAX_31 {
                return Err(Error::StreamIdsExhausted);
            }
            st.next_local_id += 2;
            let mut s = StreamState::new(true, shared.config.stream_window, st.peer_initial_window);
            s.local_closed = fin;
            st.streams.insert(id, s);
            // Queued under the lock: ids reach the wire in order.
            shared.send(Cmd::Frame(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin,
                unidirectional: false,
                headers: headers.clone(),
            }));
            id
        };
        Ok(Stream::new(
            shared.clone(),
            self.inner._guard.clone(),
            id,
            headers,
        ))
    }

    /// Sends a PING and waits for its echo.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let shared = &self.inner.shared;
        let (tx, rx) = oneshot::channel();
        {
            let mut st = shared.lock();
            if st.closed {
                return Err(st.end_error());
            }
            let id = st.next_ping_id;
            st.next_ping_id = match id.wrapping_add(2) {
                0 => 2,
                next => next,
            };
            st.pings.insert(id, tx);
            shared.send(Cmd::Frame(Frame::Ping { id }));
        }
        let start = Instant::now();
        match rx.await {
            Ok(()) => Ok(start.elapsed()),
            Err(_) => Err(shared.lock().end_error()),
        }
    }

    /// Sends GOAWAY(OK): the peer opens no more streams, and
    /// [`accept`](Self::accept) returns `None` once those already opened
    /// are taken. Streams in progress go on.
    pub fn goaway(&self) {
        self.inner.shared.goaway();
    }

    /// GOAWAY, then closes the transport once what is queued is written:
    /// streams still open fail.
    pub fn close(&self) {
        self.inner.shared.goaway();
        self.inner.shared.send(Cmd::Close);
    }

    /// Ends the connection now: the transport is dropped without waiting
    /// for queued frames to be written (for a peer that stopped reading,
    /// after [`close`](Self::close) did not end it in time).
    pub fn abort(&self) {
        self.inner.shared.terminate(None);
        self.inner.shared.stop.send_replace(true);
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed
    }

    /// Waits for the connection to end: `None` for a clean end (closed by
    /// either side), else what ended it.
    pub async fn closed(&self) -> Option<Error> {
        let mut ended = self.inner.shared.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
        self.inner.shared.lock().close_error.clone()
    }
}

struct StreamRef {
    id: u32,
    headers: Headers,
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

impl StreamRef {
    fn with<R>(&self, f: impl FnOnce(&mut State, Option<&mut StreamState>) -> R) -> R {
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

    fn reply(&self, headers: Headers, fin: bool) -> Result<(), Error> {
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
            if !s.locally_initiated && !s.replied {
                // HEADERS cannot come before the SYN_REPLY.
                s.replied = true;
                self.shared.send(Cmd::Frame(Frame::SynReply {
                    stream_id: self.id,
                    fin: false,
                    headers: Headers::new(),
                }));
            }
            s.local_closed = fin;
            self.shared.send(Cmd::Frame(Frame::Headers {
                stream_id: self.id,
                fin,
                headers,
            }));
            Ok(())
        })
    }

    fn reset(&self, status: RstStatus) {
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
            if !s.locally_initiated && !s.replied {
                s.replied = true;
                self.shared.send(Cmd::Frame(Frame::SynReply {
                    stream_id: self.id,
                    fin: false,
                    headers: Headers::new(),
                }));
            }
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
            if !s.locally_initiated && !s.replied {
                s.replied = true;
                self.shared.send(Cmd::Frame(Frame::SynReply {
                    stream_id: self.id,
                    fin: true,
                    headers: Headers::new(),
                }));
            } else {
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

/// A stream: both halves. See the [module](self) documentation.
pub struct Stream {
    recv: RecvStream,
    send: SendStream,
}

impl Stream {
    fn new(shared: Arc<Shared>, guard: Arc<Guard>, id: u32, headers: Headers) -> Stream {
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

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.inner.shared.role)
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
