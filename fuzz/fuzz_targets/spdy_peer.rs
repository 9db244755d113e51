//! A hostile SPDY/3.1 peer for the fuzz targets: frames it sends, built
//! from fuzzer input and encoded with one compression context (so that
//! header blocks inflate and reach the code under test), and a check of
//! what the server sends back.

use std::collections::HashSet;

use arbitrary::Arbitrary;
use berth_spdy::{Decoder, Frame, GoAwayStatus, Headers, Limits, RstStatus, Setting};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A stream id: mostly small ones, so that frames meet the streams that
/// earlier ones opened, and now and then the edges.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Id(u8);

impl Id {
    pub fn get(self) -> u32 {
        match self.0 {
            0..=239 => u32::from(self.0 % 24),
            240..=247 => 0x7fff_fff0 + u32::from(self.0 - 240) * 2 + 1,
            248..=251 => 0x8000_0000 | u32::from(self.0),
            _ => u32::MAX,
        }
    }
}

/// The headers of a SYN_STREAM, each picked from what kubectl sends and
/// what it never would (missing, empty, malformed).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct SynHeaders {
    stream_type: u8,
    port: u8,
    request_id: u8,
}

const STREAM_TYPES: [&str; 9] = [
    "error", "data", "stdin", "stdout", "stderr", "resize", "", "DATA", "bogus",
];
const PORTS: [&str; 7] = ["0", "65535", "65536", "-1", "eighty", "", "22"];

impl SynHeaders {
    /// Port index 0 is `good_port`, the one the target listens on.
    fn headers(self, good_port: u16) -> Headers {
        let mut h = Headers::new();
        if let Some(t) = STREAM_TYPES.get(usize::from(self.stream_type) % 10) {
            h.insert("streamtype", *t);
        }
        match self.port % 10 {
            0..=2 => {
                h.insert("port", good_port.to_string());
            }
            n => {
                if let Some(p) = PORTS.get(usize::from(n - 3)) {
                    h.insert("port", *p);
                }
            }
        }
        if self.request_id < 250 {
            h.insert("requestid", (self.request_id % 6).to_string());
        }
        h
    }
}

/// A frame the peer sends, or raw bytes.
#[derive(Arbitrary, Debug)]
pub enum PeerFrame {
    Syn {
        id: Id,
        fin: bool,
        unidirectional: bool,
        associated: Id,
        priority: u8,
        headers: SynHeaders,
    },
    Reply {
        id: Id,
        fin: bool,
    },
    Data {
        id: Id,
        fin: bool,
        /// In units of 512 bytes, under 16 MiB: past any window.
        len: u16,
    },
    Rst {
        id: Id,
        status: u8,
    },
    Settings {
        clear: bool,
        entries: Vec<(u8, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last: Id,
        status: u8,
    },
    Headers {
        id: Id,
        fin: bool,
        big: bool,
    },
    WindowUpdate {
        id: Id,
        delta: u32,
    },
    Raw(Vec<u8>),
}

pub const RST: [RstStatus; 12] = [
    RstStatus::ProtocolError,
    RstStatus::InvalidStream,
    RstStatus::RefusedStream,
    RstStatus::UnsupportedVersion,
    RstStatus::Cancel,
    RstStatus::InternalError,
    RstStatus::FlowControlError,
    RstStatus::StreamInUse,
    RstStatus::StreamAlreadyClosed,
    RstStatus::InvalidCredentials,
    RstStatus::FrameTooLarge,
    RstStatus::Other(99),
];

/// The byte of every DATA frame the peer sends.
pub const SENT: u8 = 0x5a;

impl PeerFrame {
    /// The frame (`None` for raw bytes); port index 0 of a SYN_STREAM is
    /// `good_port`.
    pub fn frame(&self, good_port: u16) -> Option<Frame> {
        Some(match *self {
            PeerFrame::Syn {
                id,
                fin,
                unidirectional,
                associated,
                priority,
                headers,
            } => Frame::SynStream {
                stream_id: id.get(),
                associated_to: associated.get() & 0x7fff_ffff,
                priority: priority % 8,
                slot: 0,
                fin,
                unidirectional,
                headers: headers.headers(good_port),
            },
            PeerFrame::Reply { id, fin } => Frame::SynReply {
                stream_id: id.get(),
                fin,
                headers: Headers::new().with("x", "y"),
            },
            PeerFrame::Data { id, fin, len } => Frame::Data {
                stream_id: id.get(),
                fin,
                data: vec![SENT; usize::from(len) * 512 % (16 << 20)],
            },
            PeerFrame::Rst { id, status } => Frame::RstStream {
                stream_id: id.get(),
                status: RST[usize::from(status) % RST.len()],
            },
            PeerFrame::Settings { clear, ref entries } => Frame::Settings {
                clear,
                entries: entries
                    .iter()
                    .take(16)
                    .map(|&(id, value)| Setting {
                        flags: 0,
                        id: u32::from(id % 10),
                        value,
                    })
                    .collect(),
            },
            PeerFrame::Ping { id } => Frame::Ping { id },
            PeerFrame::GoAway { last, status } => Frame::GoAway {
                last_good_stream_id: last.get() & 0x7fff_ffff,
                status: GoAwayStatus::from_code(u32::from(status % 4)),
            },
            PeerFrame::Headers { id, fin, big } => Frame::Headers {
                stream_id: id.get(),
                fin,
                headers: Headers::new().with("h", vec![b'v'; if big { 40 << 10 } else { 1 }]),
            },
            PeerFrame::WindowUpdate { id, delta } => Frame::WindowUpdate {
                stream_id: id.get(),
                delta,
            },
            PeerFrame::Raw(_) => return None,
        })
    }

    /// What goes on the wire: the frame encoded with `encoder`, or the raw
    /// bytes; nothing for a frame the encoder refuses.
    pub fn wire(&self, encoder: &mut berth_spdy::Encoder, good_port: u16) -> Vec<u8> {
        let mut wire = Vec::new();
        match (self, self.frame(good_port)) {
            (PeerFrame::Raw(bytes), _) => wire.extend_from_slice(bytes),
            (_, Some(frame)) => {
                if encoder.encode(&frame, &mut wire).is_err() {
                    wire.clear();
                }
            }
            (_, None) => {}
        }
        wire
    }
}

/// Reads what the server writes until it closes its end, and checks it is
/// well-formed SPDY: every frame decodes, the streams the server opens
/// have even ids, and no DATA follows a stream's FIN. `data_ok` checks
/// the bytes of each DATA frame.
pub async fn check_server_output<R: AsyncRead + Unpin>(
    mut from_server: R,
    data_ok: impl Fn(&[u8]) -> bool,
) {
    let mut decoder = Decoder::new(Limits::default());
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut finished = HashSet::new();
    loop {
        let n = from_server.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        wire.extend_from_slice(&buf[..n]);
        let mut used_total = 0;
        loop {
            let frame = match decoder.decode(&wire[used_total..]) {
                Ok(Some((frame, used))) => {
                    used_total += used;
                    frame
                }
                Ok(None) => break,
                Err(e) => panic!("the server wrote a frame that does not decode: {e}"),
            };
            let (stream_id, fin) = match frame {
                Frame::SynStream { stream_id, fin, .. } => {
                    assert_eq!(stream_id % 2, 0, "server-opened stream {stream_id} is odd");
                    (stream_id, fin)
                }
                Frame::SynReply { stream_id, fin, .. } | Frame::Headers { stream_id, fin, .. } => {
                    (stream_id, fin)
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    assert!(
                        data_ok(&data),
                        "DATA on stream {stream_id} carries bytes the application did not write"
                    );
                    assert!(
                        !finished.contains(&stream_id),
                        "the server sent DATA on stream {stream_id} after its FIN"
                    );
                    (stream_id, fin)
                }
                _ => continue,
            };
            if fin {
                finished.insert(stream_id);
            }
        }
        wire.drain(..used_total);
    }
}
