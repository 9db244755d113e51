//! Fuzzes a SPDY/3.1 connection's state machine as berthd's streaming
//! server runs it, against a hostile peer (anyone allowed to exec into a
//! pod reaches it through the API server). A script interleaves what the
//! peer sends (frames encoded with one compression context, so that header
//! blocks inflate and reach the connection, and raw bytes) with what the
//! server's application does (accept, read, write, finish, reset, drop,
//! open, ping, goaway).
//!
//! Checked for every script:
//! - nothing panics, and memory stays within libFuzzer's limit;
//! - what the server writes is well-formed SPDY: it decodes, the streams
//!   the server opens have even ids, and it sends no DATA on a stream
//!   after its FIN;
//! - bytes arrive unchanged both ways: streams read only what the peer
//!   sent, and DATA carries only what the application wrote;
//! - once the peer hangs up, the connection ends and every stream
//!   operation finishes (no task waits for ever).
//!
//! Time is tokio's paused clock: a step that would wait (a read with no
//! data, a write against an empty window) gives up after a virtual
//! millisecond, and a script runs in microseconds whatever it waits for.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use arbitrary::Arbitrary;
use berth_spdy::{
    Config, Connection, Decoder, Encoder, Frame, GoAwayStatus, Headers, Limits, RstStatus, Setting,
    Stream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A stream id: mostly small ones, so that frames meet the streams that
/// earlier ones opened, and now and then the edges.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Id(u8);

impl Id {
    fn get(self) -> u32 {
        match self.0 {
            0..=239 => u32::from(self.0 % 24),
            240..=247 => 0x7fff_fff0 + u32::from(self.0 - 240) * 2 + 1,
            248..=251 => 0x8000_0000 | u32::from(self.0),
            _ => u32::MAX,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    // What the peer sends.
    Syn {
        id: Id,
        fin: bool,
        unidirectional: bool,
        associated: Id,
        priority: u8,
        stream_type: u8,
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
    // What the server's application does; `stream` picks one it holds.
    Accept,
    Read {
        stream: u8,
    },
    Write {
        stream: u8,
        /// In units of 256 bytes.
        len: u8,
    },
    Finish {
        stream: u8,
    },
    Reset {
        stream: u8,
        status: u8,
    },
    Drop {
        stream: u8,
    },
    Open {
        fin: bool,
    },
    PingPeer,
    GoAwayLocal,
    Idle,
}

#[derive(Arbitrary, Debug)]
struct Script {
    lenient: bool,
    small_limits: bool,
    steps: Vec<Step>,
}

const STREAM_TYPES: [&str; 6] = ["data", "error", "stdin", "stdout", "resize", ""];
const RST: [RstStatus; 12] = [
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

/// The byte of every DATA frame the peer sends, and of everything the
/// application writes: a byte out of place was corrupted or misrouted.
const SENT: u8 = 0x5a;
const WRITTEN: u8 = 0xa5;

/// Long enough for any step to have done what it can.
const STEP: Duration = Duration::from_millis(1);
/// What the end of a connection may take once the peer hung up: the
/// writer's grace for a peer that stopped reading is 5 s.
const END: Duration = Duration::from_secs(60);

fn peer_frame(step: &Step) -> Option<Frame> {
    Some(match *step {
        Step::Syn {
            id,
            fin,
            unidirectional,
            associated,
            priority,
            stream_type,
        } => Frame::SynStream {
            stream_id: id.get(),
            associated_to: associated.get() & 0x7fff_ffff,
            priority: priority % 8,
            slot: 0,
            fin,
            unidirectional,
            headers: Headers::new()
                .with(
                    "streamtype",
                    STREAM_TYPES[usize::from(stream_type) % STREAM_TYPES.len()],
                )
                .with("port", "80")
                .with("requestid", stream_type.to_string()),
        },
        Step::Reply { id, fin } => Frame::SynReply {
            stream_id: id.get(),
            fin,
            headers: Headers::new().with("x", "y"),
        },
        Step::Data { id, fin, len } => Frame::Data {
            stream_id: id.get(),
            fin,
            data: vec![SENT; usize::from(len) * 512 % (16 << 20)],
        },
        Step::Rst { id, status } => Frame::RstStream {
            stream_id: id.get(),
            status: RST[usize::from(status) % RST.len()],
        },
        Step::Settings { clear, ref entries } => Frame::Settings {
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
        Step::Ping { id } => Frame::Ping { id },
        Step::GoAway { last, status } => Frame::GoAway {
            last_good_stream_id: last.get() & 0x7fff_ffff,
            status: GoAwayStatus::from_code(u32::from(status % 4)),
        },
        Step::Headers { id, fin, big } => Frame::Headers {
            stream_id: id.get(),
            fin,
            headers: Headers::new().with("h", vec![b'v'; if big { 40 << 10 } else { 1 }]),
        },
        Step::WindowUpdate { id, delta } => Frame::WindowUpdate {
            stream_id: id.get(),
            delta,
        },
        _ => return None,
    })
}

/// Reads what the server writes, as the peer's reader does, and checks it.
async fn check_server_output(mut from_server: tokio::io::ReadHalf<tokio::io::DuplexStream>) {
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
            match frame {
                Frame::SynStream { stream_id, fin, .. } => {
                    assert_eq!(stream_id % 2, 0, "server-opened stream {stream_id} is odd");
                    if fin {
                        finished.insert(stream_id);
                    }
                }
                Frame::SynReply { stream_id, fin, .. } | Frame::Headers { stream_id, fin, .. } => {
                    if fin {
                        finished.insert(stream_id);
                    }
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    assert!(
                        data.iter().all(|&b| b == WRITTEN),
                        "DATA on stream {stream_id} carries bytes the application did not write"
                    );
                    assert!(
                        !finished.contains(&stream_id),
                        "the server sent DATA on stream {stream_id} after its FIN"
                    );
                    if fin {
                        finished.insert(stream_id);
                    }
                }
                _ => {}
            }
        }
        wire.drain(..used_total);
    }
}

async fn run(script: Script) {
    let (server_io, peer_io) = tokio::io::duplex(256 << 10);
    let mut config = if script.lenient {
        Config::kubernetes()
    } else {
        Config::default()
    };
    if script.small_limits {
        config.max_streams = 4;
        config.write_queue = 1024;
        config.max_send_frame = 700;
        config.session_window = 70_000;
        config.limits = Limits {
            max_frame_len: 40_000,
            ..Limits::default()
        };
    }
    let conn = Connection::server(server_io, config);
    let (from_server, mut to_server) = tokio::io::split(peer_io);
    let checker = tokio::spawn(check_server_output(from_server));

    let mut encoder = Encoder::new();
    let mut streams: Vec<Stream> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let payload = vec![WRITTEN; 256 * 255];
    let pick = |streams: &Vec<Stream>, i: u8| -> Option<usize> {
        (!streams.is_empty()).then(|| usize::from(i) % streams.len())
    };

    for step in script.steps.iter().take(200) {
        if let Some(frame) = peer_frame(step) {
            let mut wire = Vec::new();
            if encoder.encode(&frame, &mut wire).is_ok() {
                let _ = tokio::time::timeout(STEP, to_server.write_all(&wire)).await;
            }
            continue;
        }
        match *step {
            Step::Raw(ref bytes) => {
                let _ = tokio::time::timeout(STEP, to_server.write_all(bytes)).await;
            }
            Step::Accept => {
                if let Ok(Some(stream)) = tokio::time::timeout(STEP, conn.accept()).await {
                    let _ = stream.reply(Headers::new(), false);
                    streams.push(stream);
                }
            }
            Step::Read { stream } => {
                if let Some(i) = pick(&streams, stream) {
                    if let Ok(Ok(n)) = tokio::time::timeout(STEP, streams[i].read(&mut buf)).await {
                        assert!(
                            buf[..n].iter().all(|&b| b == SENT),
                            "a stream read bytes the peer did not send"
                        );
                    }
                }
            }
            Step::Write { stream, len } => {
                if let Some(i) = pick(&streams, stream) {
                    let data = &payload[..usize::from(len) * 256];
                    let _ = tokio::time::timeout(STEP, streams[i].write_all(data)).await;
                }
            }
            Step::Finish { stream } => {
                if let Some(i) = pick(&streams, stream) {
                    let _ = tokio::time::timeout(STEP, streams[i].shutdown()).await;
                }
            }
            Step::Reset { stream, status } => {
                if let Some(i) = pick(&streams, stream) {
                    streams[i].reset(RST[usize::from(status) % RST.len()]);
                }
            }
            Step::Drop { stream } => {
                if let Some(i) = pick(&streams, stream) {
                    drop(streams.swap_remove(i));
                }
            }
            Step::Open { fin } => {
                if let Ok(stream) = conn.open(Headers::new().with("streamtype", "data"), fin) {
                    streams.push(stream);
                }
            }
            Step::PingPeer => {
                let _ = tokio::time::timeout(STEP, conn.ping()).await;
            }
            Step::GoAwayLocal => conn.goaway(),
            Step::Idle => tokio::time::sleep(STEP).await,
            _ => unreachable!("peer frames are sent above"),
        }
    }

    // The peer hangs up. Every stream must then end, whatever it was
    // doing, and so must the connection.
    let _ = tokio::time::timeout(STEP, to_server.shutdown()).await;
    drop(to_server);
    let ending = async {
        let drains = streams.into_iter().map(|mut stream| async move {
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = stream.write_all(&[WRITTEN; 4]).await;
        });
        let accepts = async {
            while let Some(stream) = conn.accept().await {
                drop(stream);
            }
        };
        tokio::join!(
            futures_util::future::join_all(drains),
            accepts,
            conn.closed()
        );
    };
    tokio::time::timeout(END, ending)
        .await
        .expect("the connection and its streams end once the peer hangs up");
    drop(conn);
    tokio::time::timeout(END, checker)
        .await
        .expect("the server closes its end")
        .expect("the server's output is well-formed");
}

libfuzzer_sys::fuzz_target!(|script: Script| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime")
        .block_on(run(script));
});
