//! SPDY/3.1 frames and their codec.
//!
//! Every frame starts with 8 bytes. A control frame: the control bit, a
//! 15-bit version (3), a 16-bit type, 8 bits of flags and a 24-bit length. A
//! data frame: a clear control bit, a 31-bit stream id, 8 bits of flags and
//! a 24-bit length. The payload follows (draft-mbelshe-httpbis-spdy-00,
//! section 2.2; SPDY/3.1 adds session flow control: WINDOW_UPDATE on
//! stream 0).
//!
//! Over 800 lines: SPDY/3 framing is one spec section: every frame type's
//! encoding, decoding and limits, kept together with the shared header-block
//! compression.

use crate::headers::Headers;
use crate::zlib::{HeaderCompressor, HeaderDecompressor};

/// The protocol version carried by control frames.
pub const VERSION: u16 = 3;
/// Size of every frame's fixed header.
pub const HEADER_LEN: usize = 8;
/// The largest length a frame can declare (24 bits).
pub const MAX_FRAME_LEN: u32 = 0x00ff_ffff;
/// The largest stream id, flow-control window and window delta (31 bits).
pub const MAX_31: u32 = 0x7fff_ffff;

/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS frames.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM frames.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS frames.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Control frame types.
pub mod frame_type {
    /// SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// SETTINGS ids this crate acts on.
pub mod settings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

/// Limits applied to what a peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest payload a frame may declare (control or data); a larger
    /// one is refused from its 8-byte header, before anything is read.
    pub max_frame_len: u32,
    /// The largest header block once inflated; inflating stops there, so a
    /// few compressed bytes cannot make a large allocation.
    pub max_header_block: usize,
    /// The most name/value pairs in a header block.
    pub max_headers: usize,
}

impl Default for Limits {
    /// 1 MiB frames (kubectl and the kubelet write at most 32 KiB at a
    /// time), 64 KiB inflated header blocks and 128 headers (their streams
    /// carry three or four).
    fn default() -> Self {
        Limits {
            max_frame_len: 1 << 20,
            max_header_block: 64 << 10,
            max_headers: 128,
        }
    }
}

/// RST_STREAM status codes (section 2.6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RstStatus {
    /// PROTOCOL_ERROR.
    ProtocolError,
    /// INVALID_STREAM.
    InvalidStream,
    /// REFUSED_STREAM.
    RefusedStream,
    /// UNSUPPORTED_VERSION.
    UnsupportedVersion,
    /// CANCEL.
    Cancel,
    /// INTERNAL_ERROR.
    InternalError,
    /// FLOW_CONTROL_ERROR.
    FlowControlError,
    /// STREAM_IN_USE.
    StreamInUse,
    /// STREAM_ALREADY_CLOSED.
    StreamAlreadyClosed,
    /// INVALID_CREDENTIALS.
    InvalidCredentials,
    /// FRAME_TOO_LARGE.
    FrameTooLarge,
    /// A code this crate does not know (never 0).
    Other(u32),
}

impl RstStatus {
    /// The wire code.
    pub fn code(self) -> u32 {
        match self {
            RstStatus::ProtocolError => 1,
            RstStatus::InvalidStream => 2,
            RstStatus::RefusedStream => 3,
            RstStatus::UnsupportedVersion => 4,
            RstStatus::Cancel => 5,
            RstStatus::InternalError => 6,
            RstStatus::FlowControlError => 7,
            RstStatus::StreamInUse => 8,
            RstStatus::StreamAlreadyClosed => 9,
            RstStatus::InvalidCredentials => 10,
            RstStatus::FrameTooLarge => 11,
            RstStatus::Other(code) => code,
        }
    }

    /// The status for a wire code; 0 is not a status.
    pub fn from_code(code: u32) -> Option<RstStatus> {
        Some(match code {
            0 => return None,
            1 => RstStatus::ProtocolError,
            2 => RstStatus::InvalidStream,
            3 => RstStatus::RefusedStream,
            4 => RstStatus::UnsupportedVersion,
            5 => RstStatus::Cancel,
            6 => RstStatus::InternalError,
            7 => RstStatus::FlowControlError,
            8 => RstStatus::StreamInUse,
            9 => RstStatus::StreamAlreadyClosed,
            10 => RstStatus::InvalidCredentials,
            11 => RstStatus::FrameTooLarge,
            other => RstStatus::Other(other),
        })
    }
}

impl std::fmt::Display for RstStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RstStatus::Other(code) => write!(f, "status {code}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// GOAWAY status codes (section 2.6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoAwayStatus {
    /// OK: a normal shutdown.
    Ok,
    /// PROTOCOL_ERROR.
    ProtocolError,
    /// INTERNAL_ERROR.
    InternalError,
    /// A code this crate does not know.
    Other(u32),
}

impl GoAwayStatus {
    /// The wire code.
    pub fn code(self) -> u32 {
        match self {
            GoAwayStatus::Ok => 0,
            GoAwayStatus::ProtocolError => 1,
            GoAwayStatus::InternalError => 2,
            GoAwayStatus::Other(code) => code,
        }
    }

    /// The status for a wire code.
    pub fn from_code(code: u32) -> GoAwayStatus {
        match code {
            0 => GoAwayStatus::Ok,
            1 => GoAwayStatus::ProtocolError,
            2 => GoAwayStatus::InternalError,
            other => GoAwayStatus::Other(other),
        }
    }
}

/// One SETTINGS entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (1) and FLAG_SETTINGS_PERSISTED (2).
    pub flags: u8,
    /// The setting's id (24 bits), e.g. [`settings::INITIAL_WINDOW_SIZE`].
    pub id: u32,
    /// Its value.
    pub value: u32,
}

/// A decoded frame. Stream ids are 31-bit; reserved bits are dropped on
/// decode and must be clear on encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// DATA.
    Data {
        /// The stream (never 0).
        stream_id: u32,
        /// FLAG_FIN: the sender's last frame on the stream.
        fin: bool,
        /// The payload.
        data: Vec<u8>,
    },
    /// SYN_STREAM: opens a stream.
    SynStream {
        /// The new stream (never 0; odd from clients, even from servers).
        stream_id: u32,
        /// The stream it is associated with, or 0.
        associated_to: u32,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// Credential slot, 0 for none.
        slot: u8,
        /// FLAG_FIN: the opener sends nothing more.
        fin: bool,
        /// FLAG_UNIDIRECTIONAL: the recipient sends nothing on it.
        unidirectional: bool,
        /// The header block.
        headers: Headers,
    },
    /// SYN_REPLY: accepts a stream.
    SynReply {
        /// The stream (never 0).
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// The header block.
        headers: Headers,
    },
    /// RST_STREAM: ends a stream abnormally.
    RstStream {
        /// The stream (never 0).
        stream_id: u32,
        /// Why.
        status: RstStatus,
    },
    /// SETTINGS.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        clear: bool,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// PING: the receiver echoes a ping the other side started.
    Ping {
        /// Odd from clients, even from servers.
        id: u32,
    },
    /// GOAWAY: no new streams on this connection.
    GoAway {
        /// The last stream the sender accepted.
        last_good_stream_id: u32,
        /// Why.
        status: GoAwayStatus,
    },
    /// HEADERS: more headers for a stream.
    Headers {
        /// The stream (never 0).
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// The header block.
        headers: Headers,
    },
    /// WINDOW_UPDATE: `delta` more bytes may be sent on the stream, or on
    /// the whole session when `stream_id` is 0 (SPDY/3.1).
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream_id: u32,
        /// 1 to 2^31-1.
        delta: u32,
    },
    /// A control frame of a type this crate does not know (CREDENTIAL,
    /// SPDY/2's NOOP, ...): the spec says to ignore it.
    Unknown {
        /// Its type.
        frame_type: u16,
        /// Its flags.
        flags: u8,
        /// Its payload.
        payload: Vec<u8>,
    },
}

impl Frame {
    /// The frame's name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Data { .. } => "DATA",
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
            Frame::Unknown { .. } => "unknown control frame",
        }
    }
}

/// What is wrong with a frame, received or to be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A control frame of another SPDY version.
    #[error("SPDY version {0} is not supported (only 3)")]
    UnsupportedVersion(u16),
    /// A frame longer than [`Limits::max_frame_len`] (or 24 bits, to send).
    #[error("{kind} frame of {length} bytes is over the limit of {max}")]
    FrameTooLarge {
        /// The frame's name.
        kind: &'static str,
        /// Its declared or needed length.
        length: u64,
        /// The limit.
        max: u32,
    },
    /// A payload whose length does not fit its frame type.
    #[error("{kind} frame has a {length}-byte payload ({expected})")]
    BadLength {
        /// The frame's name.
        kind: &'static str,
        /// The length.
        length: u32,
        /// What the type requires.
        expected: &'static str,
    },
    /// A frame that needs a stream id has 0.
    #[error("{0} frame on stream 0")]
    ZeroStreamId(&'static str),
    /// An id above 2^31-1, to send.
    #[error("{kind} frame: id {id} does not fit in 31 bits")]
    IdTooLarge {
        /// The frame's name.
        kind: &'static str,
        /// The id.
        id: u32,
    },
    /// RST_STREAM with status 0.
    #[error("RST_STREAM on stream {0} has status 0")]
    ZeroRstStatus(u32),
    /// WINDOW_UPDATE with a delta of 0 or (to send) above 2^31-1.
    #[error("WINDOW_UPDATE on stream {stream_id} has delta {delta} (1 to 2^31-1)")]
    BadWindowDelta {
        /// The stream, or 0.
        stream_id: u32,
        /// The delta.
        delta: u32,
    },
    /// A priority above 7, to send.
    #[error("SYN_STREAM priority {0} is over 7")]
    BadPriority(u8),
    /// A SETTINGS id above 24 bits, to send.
    #[error("SETTINGS id {0} does not fit in 24 bits")]
    BadSettingId(u32),
    /// The header block ends inside a length or a string.
    #[error("header block is truncated")]
    TruncatedHeaderBlock,
    /// Bytes after the header block's last pair.
    #[error("header block has {0} bytes after its last header")]
    TrailingHeaderBytes(usize),
    /// More pairs than [`Limits::max_headers`].
    #[error("header block has {count} headers, over the limit of {max}")]
    TooManyHeaders {
        /// The declared count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An inflated block over [`Limits::max_header_block`] (or, to send, a
    /// block too large for a frame).
    #[error("header block inflates past the limit of {max} bytes")]
    HeaderBlockTooLarge {
        /// The limit.
        max: usize,
    },
    /// A header with an empty name.
    #[error("header with an empty name")]
    EmptyHeaderName,
    /// A header name that is not UTF-8.
    #[error("header name is not UTF-8")]
    InvalidHeaderName,
    /// A header name with uppercase letters.
    #[error("header name {0:?} is not lowercase")]
    UppercaseHeaderName(String),
    /// The same name twice in one block.
    #[error("header {0:?} appears twice")]
    DuplicateHeader(String),
    /// zlib could not inflate the block.
    #[error("header block does not inflate: {0}")]
    Decompress(String),
    /// The block was deflated with another preset dictionary.
    #[error("header block needs zlib dictionary {0:#010x}, not SPDY/3's")]
    WrongDictionary(u32),
    /// The peer ended its zlib stream, so no later block can be read.
    #[error("the peer ended its header compression stream")]
    CompressionStreamEnded,
    /// An earlier header block failed: the shared compression context is
    /// out of step with the peer's, and the connection cannot go on.
    #[error("header compression context lost by an earlier error")]
    CompressionContextLost,
}

/// A frame's fixed 8-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// The control bit.
    pub control: bool,
    /// Control frames: the version.
    pub version: u16,
    /// Control frames: the type.
    pub frame_type: u16,
    /// Data frames: the stream id.
    pub stream_id: u32,
    /// The flags.
    pub flags: u8,
    /// The payload's length.
    pub length: u32,
}

impl FrameHead {
    /// Splits the 8 header bytes into their fields.
    pub fn parse(bytes: [u8; HEADER_LEN]) -> FrameHead {
        let first = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let second = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let control = first & 0x8000_0000 != 0;
        FrameHead {
            control,
            version: if control {
                (first >> 16) as u16 & 0x7fff
            } else {
                0
            },
            frame_type: if control { first as u16 } else { 0 },
            stream_id: if control { 0 } else { first & MAX_31 },
            flags: (second >> 24) as u8,
            length: second & MAX_FRAME_LEN,
        }
    }

    fn kind(&self) -> &'static str {
        if !self.control {
            return "DATA";
        }
        match self.frame_type {
            frame_type::SYN_STREAM => "SYN_STREAM",
            frame_type::SYN_REPLY => "SYN_REPLY",
            frame_type::RST_STREAM => "RST_STREAM",
            frame_type::SETTINGS => "SETTINGS",
            frame_type::PING => "PING",
            frame_type::GOAWAY => "GOAWAY",
            frame_type::HEADERS => "HEADERS",
            frame_type::WINDOW_UPDATE => "WINDOW_UPDATE",
            _ => "unknown control frame",
        }
    }
}

/// Reads frames sent by one peer: holds the inflate side of the
/// connection's header compression, so one decoder serves one direction of
/// one connection, frames in order. After an error in a header block the
/// context is lost ([`FrameError::CompressionContextLost`]): the connection
/// must end (GOAWAY PROTOCOL_ERROR).
pub struct Decoder {
    limits: Limits,
    inflate: HeaderDecompressor,
    broken: bool,
}

impl Decoder {
    /// A decoder for a new connection.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            inflate: HeaderDecompressor::new(),
            broken: false,
        }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Checks a frame's header before its payload is read: the version of a
    /// control frame and the length limit.
    pub fn check_head(&self, head: &FrameHead) -> Result<(), FrameError> {
        if head.control && head.version != VERSION {
            return Err(FrameError::UnsupportedVersion(head.version));
        }
        if head.length > self.limits.max_frame_len {
            return Err(FrameError::FrameTooLarge {
                kind: head.kind(),
                length: head.length.into(),
                max: self.limits.max_frame_len,
            });
        }
        Ok(())
    }

    /// Decodes the first frame in `buf`: `Ok(None)` while `buf` holds less
    /// than a whole frame, else the frame and how many bytes it took. A
    /// header over the limits is refused as soon as its 8 bytes are in.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let head = FrameHead::parse(*head);
        self.check_head(&head)?;
        let total = HEADER_LEN + head.length as usize;
        let Some(payload) = buf.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        Ok(Some((self.decode_payload(&head, payload)?, total)))
    }

    /// Decodes a frame from its parsed header and whole payload.
    pub fn decode_payload(
        &mut self,
        head: &FrameHead,
        payload: &[u8],
    ) -> Result<Frame, FrameError> {
        let result = self.decode_payload_inner(head, payload);
        let carries_headers = head.control
            && matches!(
                head.frame_type,
                frame_type::SYN_STREAM | frame_type::SYN_REPLY | frame_type::HEADERS
            );
        if result.is_err() && carries_headers {
            // Whether or not its block was inflated, the peer's context has
            // moved on and ours may not have.
            self.broken = true;
        }
        result
    }

    fn decode_payload_inner(
        &mut self,
        head: &FrameHead,
        payload: &[u8],
    ) -> Result<Frame, FrameError> {
        self.check_head(head)?;
        if payload.len() != head.length as usize {
            return Err(FrameError::BadLength {
                kind: head.kind(),
                length: payload.len().try_into().unwrap_or(u32::MAX),
                expected: "the length in its header",
            });
        }
        let fin = head.flags & FLAG_FIN != 0;
        if !head.control {
            if head.stream_id == 0 {
                return Err(FrameError::ZeroStreamId("DATA"));
            }
            return Ok(Frame::Data {
                stream_id: head.stream_id,
                fin,
                data: payload.to_vec(),
            });
        }
        let kind = head.kind();
        let fixed = |expected_len: u32, expected: &'static str| {
            if head.length == expected_len {
                Ok(())
            } else {
                Err(FrameError::BadLength {
                    kind,
                    length: head.length,
                    expected,
                })
            }
        };
        let at_least = |min: u32, expected: &'static str| {
            if head.length >= min {
                Ok(())
            } else {
                Err(FrameError::BadLength {
                    kind,
                    length: head.length,
                    expected,
                })
            }
        };
        let word = |i: usize| {
            u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
        };
        let stream = |i: usize| -> Result<u32, FrameError> {
            match word(i) & MAX_31 {
                0 => Err(FrameError::ZeroStreamId(kind)),
                id => Ok(id),
            }
        };
        Ok(match head.frame_type {
            frame_type::SYN_STREAM => {
                at_least(10, "at least 10 bytes")?;
                let headers = self.header_block(&payload[10..])?;
                Frame::SynStream {
                    stream_id: stream(0)?,
                    associated_to: word(4) & MAX_31,
                    priority: payload[8] >> 5,
                    slot: payload[9],
                    fin,
                    unidirectional: head.flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            frame_type::SYN_REPLY | frame_type::HEADERS => {
                at_least(4, "at least 4 bytes")?;
                let headers = self.header_block(&payload[4..])?;
                let stream_id = stream(0)?;
                if head.frame_type == frame_type::SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            frame_type::RST_STREAM => {
                fixed(8, "8 bytes")?;
                let stream_id = stream(0)?;
                let status =
                    RstStatus::from_code(word(4)).ok_or(FrameError::ZeroRstStatus(stream_id))?;
                Frame::RstStream { stream_id, status }
            }
            frame_type::SETTINGS => {
                at_least(4, "a 4-byte count and 8 bytes per entry")?;
                let count = word(0);
                if u64::from(head.length) != 4 + 8 * u64::from(count) {
                    return Err(FrameError::BadLength {
                        kind,
                        length: head.length,
                        expected: "a 4-byte count and 8 bytes per entry",
                    });
                }
                let entries = payload[4..]
                    .chunks_exact(8)
                    .map(|entry| {
                        let id = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
                        Setting {
                            flags: (id >> 24) as u8,
                            id: id & 0x00ff_ffff,
                            value: u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear: head.flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }
            }
            frame_type::PING => {
                fixed(4, "4 bytes")?;
                Frame::Ping { id: word(0) }
            }
            frame_type::GOAWAY => {
                fixed(8, "8 bytes")?;
                Frame::GoAway {
                    last_good_stream_id: word(0) & MAX_31,
                    status: GoAwayStatus::from_code(word(4)),
                }
            }
            frame_type::WINDOW_UPDATE => {
                fixed(8, "8 bytes")?;
                let stream_id = word(0) & MAX_31;
                let delta = word(4) & MAX_31;
                if delta == 0 {
                    return Err(FrameError::BadWindowDelta { stream_id, delta });
                }
                Frame::WindowUpdate { stream_id, delta }
            }
            other => Frame::Unknown {
                frame_type: other,
                flags: head.flags,
                payload: payload.to_vec(),
            },
        })
    }

    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        if self.broken {
            return Err(FrameError::CompressionContextLost);
        }
        self.inflate
            .decompress(compressed, self.limits.max_header_block)
            .and_then(|raw| Headers::decode(&raw, &self.limits))
    }
}

/// Writes frames to one peer: holds the sending side of the connection's
/// header compression, so frames must go on the wire in the order they
/// were encoded. An error from a header-carrying frame after its block was
/// written leaves the context out of step with the peer's
/// ([`FrameError::CompressionContextLost`] from then on); every check that
/// can be made first is made first.
pub struct Encoder {
    deflate: HeaderCompressor,
    broken: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder for a new connection.
    pub fn new() -> Encoder {
        Encoder {
            deflate: HeaderCompressor::new(),
            broken: false,
        }
    }

    /// Appends `frame`'s bytes to `out`. On error `out` is left as it was.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = out.len();
        let result = self.encode_inner(frame, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_inner(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let kind = frame.kind();
        let id31 = |id: u32| {
            if id > MAX_31 {
                Err(FrameError::IdTooLarge { kind, id })
            } else {
                Ok(id)
            }
        };
        let stream = |id: u32| {
            if id == 0 {
                Err(FrameError::ZeroStreamId(kind))
            } else {
                id31(id)
            }
        };
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let stream_id = stream(*stream_id)?;
                let length = frame_len(kind, data.len())?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&flags_length(fin_flag(*fin), length));
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                let stream_id = stream(*stream_id)?;
                let associated_to = id31(*associated_to)?;
                if *priority > 7 {
                    return Err(FrameError::BadPriority(*priority));
                }
                let mut flags = fin_flag(*fin);
                if *unidirectional {
                    flags |= FLAG_UNIDIRECTIONAL;
                }
                let mut fixed = [0u8; 10];
                fixed[..4].copy_from_slice(&stream_id.to_be_bytes());
                fixed[4..8].copy_from_slice(&associated_to.to_be_bytes());
                fixed[8] = priority << 5;
                fixed[9] = *slot;
                self.header_frame(frame_type::SYN_STREAM, flags, &fixed, headers, out)?;
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                let fixed = stream(*stream_id)?.to_be_bytes();
                self.header_frame(frame_type::SYN_REPLY, fin_flag(*fin), &fixed, headers, out)?;
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let fixed = stream(*stream_id)?.to_be_bytes();
                self.header_frame(frame_type::HEADERS, fin_flag(*fin), &fixed, headers, out)?;
            }
            Frame::RstStream { stream_id, status } => {
                let stream_id = stream(*stream_id)?;
                if status.code() == 0 {
                    return Err(FrameError::ZeroRstStatus(stream_id));
                }
                control_head(frame_type::RST_STREAM, 0, 8, out);
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&status.code().to_be_bytes());
            }
            Frame::Settings { clear, entries } => {
                let length = frame_len(kind, entries.len().saturating_mul(8).saturating_add(4))?;
                if let Some(bad) = entries.iter().find(|e| e.id > 0x00ff_ffff) {
                    return Err(FrameError::BadSettingId(bad.id));
                }
                let flags = if *clear { FLAG_SETTINGS_CLEAR } else { 0 };
                control_head(frame_type::SETTINGS, flags, length, out);
                // frame_len() bounded the count by 2^21.
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for entry in entries {
                    out.extend_from_slice(&(u32::from(entry.flags) << 24 | entry.id).to_be_bytes());
                    out.extend_from_slice(&entry.value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                control_head(frame_type::PING, 0, 4, out);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let last = id31(*last_good_stream_id)?;
                control_head(frame_type::GOAWAY, 0, 8, out);
                out.extend_from_slice(&last.to_be_bytes());
                out.extend_from_slice(&status.code().to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let stream_id = id31(*stream_id)?;
                if *delta == 0 || *delta > MAX_31 {
                    return Err(FrameError::BadWindowDelta {
                        stream_id,
                        delta: *delta,
                    });
                }
                control_head(frame_type::WINDOW_UPDATE, 0, 8, out);
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
            }
            Frame::Unknown {
                frame_type,
                flags,
                payload,
            } => {
                let length = frame_len(kind, payload.len())?;
                control_head(*frame_type, *flags, length, out);
                out.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    fn header_frame(
        &mut self,
        frame_type: u16,
        flags: u8,
        fixed: &[u8],
        headers: &Headers,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if self.broken {
            return Err(FrameError::CompressionContextLost);
        }
        let raw = headers.encode()?;
        let start = out.len();
        control_head(frame_type, flags, 0, out);
        out.extend_from_slice(fixed);
        self.deflate.compress(&raw, out);
        let length = out.len() - start - HEADER_LEN;
        // Headers::encode() capped the raw block at 8 MiB, stored in well
        // under 16 MiB; should that fail, the context is spent.
        let length = match frame_len("header", length) {
            Ok(length) => length,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
        out[start + 4..start + HEADER_LEN].copy_from_slice(&flags_length(flags, length));
        Ok(())
    }
}

fn frame_len(kind: &'static str, len: usize) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(len) if len <= MAX_FRAME_LEN => Ok(len),
        _ => Err(FrameError::FrameTooLarge {
            kind,
            length: len as u64,
            max: MAX_FRAME_LEN,
        }),
    }
}

fn flags_length(flags: u8, length: u32) -> [u8; 4] {
    (u32::from(flags) << 24 | length).to_be_bytes()
}

fn control_head(frame_type: u16, flags: u8, length: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&flags_length(flags, length));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubectl_headers() -> Headers {
        Headers::new()
            .with("streamtype", "data")
            .with("port", "8080")
            .with("requestid", "0")
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: b"hello".to_vec(),
            },
            Frame::Data {
                stream_id: MAX_31,
                fin: true,
                data: vec![],
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 1,
                priority: 7,
                slot: 2,
                fin: false,
                unidirectional: true,
                headers: kubectl_headers(),
            },
            Frame::SynStream {
                stream_id: 5,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: true,
                unidirectional: false,
                headers: Headers::new(),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: false,
                headers: Headers::new(),
            },
            Frame::SynReply {
                stream_id: 5,
                fin: true,
                headers: kubectl_headers(),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::Cancel,
            },
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::Other(99),
            },
            Frame::Settings {
                clear: true,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: settings::INITIAL_WINDOW_SIZE,
                        value: 1 << 20,
                    },
                    Setting {
                        flags: 0,
                        id: settings::MAX_CONCURRENT_STREAMS,
                        value: 100,
                    },
                ],
            },
            Frame::Settings {
                clear: false,
                entries: vec![],
            },
            Frame::Ping { id: 1 },
            Frame::Ping { id: u32::MAX },
            Frame::GoAway {
                last_good_stream_id: 7,
                status: GoAwayStatus::Ok,
            },
            Frame::GoAway {
                last_good_stream_id: 0,
                status: GoAwayStatus::ProtocolError,
            },
            Frame::Headers {
                stream_id: 9,
                fin: true,
                headers: Headers::new().with("status", "200"),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: MAX_31,
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 1,
            },
            Frame::Unknown {
                frame_type: 10,
                flags: 3,
                payload: vec![1, 2, 3],
            },
        ]
    }

    #[test]
    fn every_frame_type_round_trips() {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new(Limits::default());
        let mut wire = Vec::new();
        let frames = all_frames();
        for frame in &frames {
            enc.encode(frame, &mut wire).unwrap();
        }
        // Decoded one after another from a single buffer, as on a socket.
        let mut pos = 0;
        for frame in &frames {
            let (back, used) = dec.decode(&wire[pos..]).unwrap().unwrap();
            assert_eq!(&back, frame);
            pos += used;
        }
        assert_eq!(pos, wire.len());
        assert_eq!(dec.decode(&wire[pos..]), Ok(None));
    }

    #[test]
    fn fixed_frames_have_their_exact_bytes() {
        let bytes = |frame: Frame| {
            let mut out = Vec::new();
            Encoder::new().encode(&frame, &mut out).unwrap();
            out
        };
        assert_eq!(
            bytes(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::ProtocolError
            }),
            [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1]
        );
        assert_eq!(
            bytes(Frame::Ping { id: 0x12345678 }),
            [0x80, 3, 0, 6, 0, 0, 0, 4, 0x12, 0x34, 0x56, 0x78]
        );
        assert_eq!(
            bytes(Frame::GoAway {
                last_good_stream_id: 0x7fffffff,
                status: GoAwayStatus::InternalError
            }),
            [0x80, 3, 0, 7, 0, 0, 0, 8, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 2]
        );
        assert_eq!(
            bytes(Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x10000
            }),
            [0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(
            bytes(Frame::Settings {
                clear: false,
                entries: vec![Setting {
                    flags: 1,
                    id: 7,
                    value: 0x20000
                }]
            }),
            [0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 1, 0, 0, 7, 0, 2, 0, 0]
        );
        assert_eq!(
            bytes(Frame::Data {
                stream_id: 5,
                fin: true,
                data: b"ab".to_vec()
            }),
            [0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']
        );
    }

    #[test]
    fn reserved_bits_are_ignored_on_decode() {
        let mut dec = Decoder::new(Limits::default());
        // Data frame: the stream id cannot carry the control bit, but a
        // WINDOW_UPDATE's reserved bits are set here on both fields.
        let wire = [0x80, 3, 0, 9, 0, 0, 0, 8, 0x80, 0, 0, 1, 0x80, 0, 0, 5];
        let (frame, _) = dec.decode(&wire).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 5
            }
        );
    }

    #[test]
    fn encode_refuses_what_cannot_be_sent() {
        let mut enc = Encoder::new();
        let mut out = vec![0xaa];
        let bad = [
            Frame::Data {
                stream_id: 0,
                fin: false,
                data: vec![],
            },
            Frame::Data {
                stream_id: 1 << 31,
                fin: false,
                data: vec![],
            },
            Frame::RstStream {
                stream_id: 1,
                status: RstStatus::Other(0),
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 1 << 31,
            },
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 8,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new(),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new().with("", "x"),
            },
            Frame::Settings {
                clear: false,
                entries: vec![Setting {
                    flags: 0,
                    id: 1 << 24,
                    value: 0,
                }],
            },
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: vec![0; MAX_FRAME_LEN as usize + 1],
            },
        ];
        for frame in &bad {
            assert!(enc.encode(frame, &mut out).is_err(), "{frame:?}");
            assert_eq!(out, [0xaa], "{frame:?} left bytes behind");
        }
        // None of those touched the compression context.
        enc.encode(
            &Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: kubectl_headers(),
            },
            &mut out,
        )
        .unwrap();
        let mut dec = Decoder::new(Limits::default());
        let (frame, _) = dec.decode(&out[1..]).unwrap().unwrap();
        assert!(matches!(frame, Frame::SynReply { headers, .. } if headers == kubectl_headers()));
    }
}
