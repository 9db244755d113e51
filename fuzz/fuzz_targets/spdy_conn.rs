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

use std::time::Duration;

use arbitrary::Arbitrary;
#[path = "spdy_peer.rs"]
mod spdy_peer;

use berth_spdy::{Config, Connection, Encoder, Headers, Limits, Stream};
use spdy_peer::{check_server_output, PeerFrame, RST, SENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Arbitrary, Debug)]
enum Step {
    /// What the peer sends.
    Peer(PeerFrame),
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

/// The byte of everything the application writes: with [`SENT`], what the
/// peer sends, a byte out of place was corrupted or misrouted.
const WRITTEN: u8 = 0xa5;

/// Long enough for any step to have done what it can.
const STEP: Duration = Duration::from_millis(1);
/// What the end of a connection may take once the peer hung up: the
/// writer's grace for a peer that stopped reading is 5 s.
const END: Duration = Duration::from_secs(60);

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
    let checker = tokio::spawn(check_server_output(from_server, |data| {
        data.iter().all(|&b| b == WRITTEN)
    }));

    let mut encoder = Encoder::new();
    let mut streams: Vec<Stream> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let payload = vec![WRITTEN; 256 * 255];
    let pick = |streams: &Vec<Stream>, i: u8| -> Option<usize> {
        (!streams.is_empty()).then(|| usize::from(i) % streams.len())
    };

    for step in script.steps.iter().take(200) {
        match *step {
            Step::Peer(ref frame) => {
                let wire = frame.wire(&mut encoder, 80);
                let _ = tokio::time::timeout(STEP, to_server.write_all(&wire)).await;
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
