//! SPDY/3.1 frames and their codec.
//!
//! Every frame starts with 8 bytes. A control frame: the control bit, a
//! 15-bit version (3), a 16-bit type, 8 bits of flags and a 24-bit length. A
//! data frame: a clear control bit, a 31-bit stream id, 8 bits of flags and
//! a 24-bit length. The payload follows (draft-mbelshe-httpbis-spdy-00,
//! section 2.2; SPDY/3.1 adds session flow control: WINDOW_UPDATE on
//! stream 0).
//!
//! The frames and their limits are here; reading them is `decode`, writing
//! them `encode`.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use crate::headers::Headers;
pub use decode::Decoder;
pub use encode::Encoder;

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
