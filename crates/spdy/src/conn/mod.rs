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
//! One file per concern, sharing state only within this module: `state`
//! (a stream's and the session's state and windows), `shared` (what the
//! reader does with each frame the peer sends), `tasks` (the reader and
//! writer tasks), `stream` (the application's stream handles).

mod shared;
mod state;
mod stream;
mod tasks;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use crate::frame::{
    settings, Frame, FrameError, GoAwayStatus, Limits, RstStatus, Setting, MAX_31, MAX_FRAME_LEN,
};
use crate::headers::Headers;
use shared::{Cmd, Guard, Shared};
use state::{State, StreamState};
pub use stream::{RecvStream, SendStream, Stream};
use tasks::{reader_task, writer_task};

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

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.inner.shared.role)
            .finish()
    }
}
