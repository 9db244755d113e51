//! What the reader does with each frame the peer sends, and what the
//! reader, the writer and the streams share.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use tokio::sync::{mpsc, watch, Notify, Semaphore};

use super::state::{credit_stream, local_reset, Reset, State, StreamState};
use super::{Config, Error, FlowControl, Role, Stream};
use crate::frame::{settings, Frame, GoAwayStatus, RstStatus, Setting, MAX_31};
use crate::headers::Headers;

pub(super) enum Cmd {
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

pub(super) struct Shared {
    pub(super) role: Role,
    pub(super) config: Config,
    pub(super) state: Mutex<State>,
    pub(super) tx: mpsc::UnboundedSender<Cmd>,
    pub(super) control_slots: Semaphore,
    /// Wakes the reader waiting for a stream's buffer to drain (lenient).
    pub(super) space: Notify,
    pub(super) stop: watch::Sender<bool>,
    pub(super) ended: watch::Sender<bool>,
    pub(super) guard: OnceLock<Weak<Guard>>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn strict(&self) -> bool {
        self.config.flow_control == FlowControl::Spdy31
    }

    pub(super) fn send(&self, cmd: Cmd) {
        // Fails only once the writer is gone, when nothing more can be sent.
        let _ = self.tx.send(cmd);
    }

    pub(super) fn send_frames(&self, frames: Vec<Frame>) {
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

    /// Resets stream `id` for what the peer sent (a counted frame).
    async fn send_rst(&self, id: u32, status: RstStatus) {
        self.send_counted(Frame::RstStream {
            stream_id: id,
            status,
        })
        .await;
    }

    fn is_peer_id(&self, id: u32) -> bool {
        match self.role {
            Role::Server => id % 2 == 1,
            Role::Client => id % 2 == 0,
        }
    }

    /// Marks the connection ended and wakes every waiter.
    pub(super) fn terminate(&self, error: Option<Error>) {
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
    pub(super) fn goaway(&self) {
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
    pub(super) fn wrote(&self, data_bytes: usize, slots: usize) {
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

    pub(super) async fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), Error> {
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
                self.send_rst(id, status).await;
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
            self.send_rst(id, RstStatus::RefusedStream).await;
            return Ok(());
        };
        let stream = Stream::new(self.clone(), guard, id, headers);
        if let Err(mpsc::error::SendError(stream)) = tx.send(stream) {
            // Nobody accepts any more.
            stream.mark_reset(RstStatus::RefusedStream);
            drop(stream);
            self.send_rst(id, RstStatus::RefusedStream).await;
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

    /// Applies a SYN_REPLY or HEADERS frame to stream `id` with `apply`,
    /// which returns the status to reset the stream with if the frame is a
    /// stream error; a stream that is gone or reset ignores the frame.
    fn on_stream_frame(
        &self,
        id: u32,
        apply: impl FnOnce(&mut StreamState) -> Option<RstStatus>,
    ) -> Option<RstStatus> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let error = match st.streams.get_mut(&id) {
            Some(s) if s.reset.is_none() => apply(s),
            _ => None,
        };
        if let Some(status) = error {
            self.stream_error(st, id, status);
        }
        Self::forget_if_finished(st, id);
        error
    }

    async fn on_reply(&self, id: u32, fin: bool, headers: Headers) -> Result<(), Error> {
        let rst = self.on_stream_frame(id, |s| {
            if !s.locally_initiated {
                return Some(RstStatus::ProtocolError);
            }
            if s.replied {
                return Some(RstStatus::StreamInUse);
            }
            s.replied = true;
            s.reply_headers = Some(headers);
            s.remote_closed |= fin;
            s.wake_all();
            None
        });
        if let Some(status) = rst {
            self.send_rst(id, status).await;
        }
        Ok(())
    }

    async fn on_headers(&self, id: u32, fin: bool, headers: Headers) -> Result<(), Error> {
        let rst = self.on_stream_frame(id, |s| {
            if s.remote_closed {
                return Some(RstStatus::StreamAlreadyClosed);
            }
            s.extra_headers.push(headers);
            s.remote_closed |= fin;
            s.wake_read();
            None
        });
        if let Some(status) = rst {
            self.send_rst(id, status).await;
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
            self.send_rst(id, status).await;
        }
        Ok(())
    }
}

/// Keeps the connection up while the application holds a [`Connection`]
/// or a stream; the last one gone sends GOAWAY and closes the transport.
pub(super) struct Guard {
    pub(super) shared: Arc<Shared>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.goaway();
        self.shared.send(Cmd::Close);
    }
}
