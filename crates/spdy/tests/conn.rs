//! Connections over an in-memory duplex pipe: client and server exchanging
//! data on several streams both ways, FIN, RST_STREAM, flow control, PING,
//! GOAWAY, and a raw peer that behaves like moby/spdystream (kubectl).
//!
//! Over 800 lines: the connection's behaviour end to end (flow control, resets,
//! half-close, malformed peers) over one shared in-memory peer.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_spdy::frame::Limits;
use berth_spdy::{
    Config, Connection, Decoder, Encoder, Error, Frame, GoAwayStatus, Headers, RstStatus, Stream,
};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::time::{sleep, timeout};

const SECOND: Duration = Duration::from_secs(1);
const TEN_SECONDS: Duration = Duration::from_secs(10);

fn pair(server: Config, client: Config) -> (Connection, Connection) {
    let (a, b) = tokio::io::duplex(64 << 10);
    (Connection::server(a, server), Connection::client(b, client))
}

/// Deterministic test data.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn read_to_end(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

/// Waits for `counter` to reach `value`, then checks that it stays there.
async fn settles_at(counter: &AtomicUsize, value: usize) {
    timeout(TEN_SECONDS, async {
        while counter.load(Ordering::SeqCst) < value {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stuck at {} before {value}", counter.load(Ordering::SeqCst)));
    sleep(Duration::from_millis(300)).await;
    assert_eq!(counter.load(Ordering::SeqCst), value);
}

fn kubectl_headers(streamtype: &str, request: u32) -> Headers {
    Headers::new()
        .with("streamtype", streamtype)
        .with("port", "8080")
        .with("requestid", request.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_data_both_ways_with_half_close() {
    let (server, client) = pair(Config::default(), Config::default());
    const STREAMS: u32 = 6;
    const LEN: usize = 200 << 10; // over three stream windows each way

    // Server: for each stream, read the request to its FIN, then answer
    // with the bytes reversed and FIN.
    let server_task = tokio::spawn(async move {
        let mut handlers = Vec::new();
        for _ in 0..STREAMS {
            let mut stream = timeout(TEN_SECONDS, server.accept())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stream.headers().get("streamtype"), Some("data"));
            assert_eq!(stream.headers().get("port"), Some("8080"));
            stream.reply(Headers::new(), false).unwrap();
            handlers.push(tokio::spawn(async move {
                let mut request = read_to_end(&mut stream).await.unwrap();
                request.reverse();
                stream.write_all(&request).await.unwrap();
                stream.shutdown().await.unwrap();
                stream.id()
            }));
        }
        let mut ids = Vec::new();
        for h in handlers {
            ids.push(h.await.unwrap());
        }
        ids
    });

    let mut clients = Vec::new();
    for request in 0..STREAMS {
        let stream = client
            .open(kubectl_headers("data", request), false)
            .unwrap();
        clients.push(tokio::spawn(async move {
            assert_eq!(stream.wait_reply().await.unwrap(), Headers::new());
            let data = pattern(request, LEN);
            let (mut rx, mut tx) = stream.split();
            let writer = {
                let data = data.clone();
                tokio::spawn(async move {
                    tx.write_all(&data).await.unwrap();
                    tx.shutdown().await.unwrap();
                    // Writing after FIN fails.
                    let err = tx.write_all(b"late").await.unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
                })
            };
            let answer = read_to_end(&mut rx).await.unwrap();
            writer.await.unwrap();
            let mut want = data;
            want.reverse();
            assert!(answer == want, "stream {request}: wrong answer");
            rx.id()
        }));
    }
    let mut client_ids = Vec::new();
    for c in clients {
        client_ids.push(timeout(TEN_SECONDS, c).await.unwrap().unwrap());
    }
    let mut server_ids = timeout(TEN_SECONDS, server_task).await.unwrap().unwrap();
    server_ids.sort();
    assert_eq!(client_ids, [1, 3, 5, 7, 9, 11]);
    assert_eq!(server_ids, client_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_opened_streams_and_headers_frames() {
    let (server, client) = pair(Config::default(), Config::default());
    let opened = server
        .open(Headers::new().with("purpose", "push"), false)
        .unwrap();
    assert_eq!(opened.id(), 2);
    let mut accepted = timeout(SECOND, client.accept()).await.unwrap().unwrap();
    assert_eq!(accepted.headers().get("purpose"), Some("push"));
    // Writing first replies with empty headers.
    accepted.write_all(b"from client").await.unwrap();
    assert_eq!(opened.wait_reply().await.unwrap(), Headers::new());
    // A second reply is refused.
    assert!(matches!(
        accepted.reply(Headers::new(), false),
        Err(Error::AlreadyReplied(2))
    ));
    // HEADERS with FIN ends the client's side.
    accepted
        .send_headers(Headers::new().with("trailer", "yes"), true)
        .unwrap();
    let mut opened = opened;
    assert_eq!(read_to_end(&mut opened).await.unwrap(), b"from client");
    assert_eq!(
        opened.take_headers(),
        [Headers::new().with("trailer", "yes")]
    );
    opened.write_all(b"from server").await.unwrap();
    opened.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut accepted).await.unwrap(), b"from server");
    // Replying is for the side that did not open the stream.
    assert!(matches!(
        opened.reply(Headers::new(), false),
        Err(Error::LocalClosed(2))
    ));
    let fresh = server.open(Headers::new(), false).unwrap();
    assert!(matches!(
        fresh.reply(Headers::new(), false),
        Err(Error::WrongSide(4))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_blocks_on_an_exhausted_stream_window_until_the_reader_reads() {
    let (server, client) = pair(Config::default(), Config::default());
    let stream = client.open(kubectl_headers("stdin", 0), false).unwrap();
    let mut accepted = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    accepted.reply(Headers::new(), false).unwrap();

    const LEN: usize = 200 << 10;
    let data = pattern(7, LEN);
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (data, sent) = (data.clone(), sent.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            for chunk in data.chunks(4096) {
                stream.write_all(chunk).await.unwrap();
                sent.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            stream.shutdown().await.unwrap();
            stream
        })
    };
    // Nobody reads: the writer stops at the 64 KiB window.
    settles_at(&sent, 64 << 10).await;
    assert!(!writer.is_finished());
    // Reading releases it.
    let got = timeout(TEN_SECONDS, read_to_end(&mut accepted))
        .await
        .unwrap()
        .unwrap();
    assert!(got == data);
    timeout(TEN_SECONDS, writer).await.unwrap().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_window_is_shared_by_streams() {
    // The server advertises only the initial 64 KiB session window.
    let server_config = Config {
        session_window: 64 << 10,
        ..Config::default()
    };
    let (server, client) = pair(server_config, Config::default());
    let mut a = client.open(kubectl_headers("a", 0), false).unwrap();
    let b = client.open(kubectl_headers("b", 1), false).unwrap();
    let mut server_a = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    let mut server_b = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    server_a.reply(Headers::new(), false).unwrap();
    server_b.reply(Headers::new(), false).unwrap();

    a.write_all(&[1; 48 << 10]).await.unwrap();
    let sent_b = Arc::new(AtomicUsize::new(0));
    let writer_b = {
        let sent_b = sent_b.clone();
        tokio::spawn(async move {
            let mut b = b;
            for _ in 0..12 {
                b.write_all(&[2; 4096]).await.unwrap();
                sent_b.fetch_add(4096, Ordering::SeqCst);
            }
            b.shutdown().await.unwrap();
            b
        })
    };
    // Stream b has window left, but the session has only 16 KiB.
    settles_at(&sent_b, 16 << 10).await;
    // Reading stream a returns session credit (WINDOW_UPDATE on stream 0).
    let mut buf = vec![0; 48 << 10];
    server_a.read_exact(&mut buf).await.unwrap();
    timeout(TEN_SECONDS, writer_b).await.unwrap().unwrap();
    assert_eq!(read_to_end(&mut server_b).await.unwrap(), vec![2; 48 << 10]);
    a.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut server_a).await.unwrap(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_stream_both_ways() {
    let (server, client) = pair(Config::default(), Config::default());
    // The server resets a stream: the client's reads and writes fail.
    let mut s1 = client.open(kubectl_headers("data", 0), false).unwrap();
    let a1 = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    a1.reply(Headers::new(), false).unwrap();
    a1.reset(RstStatus::InternalError);
    let mut buf = [0u8; 8];
    let err = timeout(SECOND, s1.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(err.to_string().contains("InternalError"), "{err}");
    assert_eq!(
        s1.write(b"x").await.unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );

    // Data sent before a reset is still read, then the reset.
    let mut s4 = client.open(kubectl_headers("data", 3), false).unwrap();
    let a4 = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    a4.reply(Headers::new(), false).unwrap();
    let mut a4 = a4;
    a4.write_all(b"status").await.unwrap();
    a4.flush().await.unwrap();
    // Let the data frame arrive before the reset frame is sent.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    a4.reset(RstStatus::Cancel);
    let mut got = [0u8; 6];
    timeout(SECOND, s4.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"status");
    let err = timeout(SECOND, s4.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);

    // The client drops a stream it had not finished: the server sees CANCEL.
    let s2 = client.open(kubectl_headers("data", 1), false).unwrap();
    let mut a2 = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    a2.reply(Headers::new(), false).unwrap();
    drop(s2);
    let err = timeout(SECOND, a2.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(err.to_string().contains("Cancel"), "{err}");

    // A stream both sides finished is not reset by dropping it.
    let mut s3 = client.open(kubectl_headers("data", 2), true).unwrap();
    let mut a3 = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    a3.reply(Headers::new(), false).unwrap();
    a3.write_all(b"bye").await.unwrap();
    a3.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s3).await.unwrap(), b"bye");
    assert_eq!(read_to_end(&mut a3).await.unwrap(), b"");
    drop(s3);
    drop(a3);
    // The connection is still fine.
    timeout(SECOND, client.ping()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_both_ways() {
    let (server, client) = pair(Config::default(), Config::default());
    for _ in 0..3 {
        timeout(SECOND, client.ping()).await.unwrap().unwrap();
        timeout(SECOND, server.ping()).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_sends_goaway_and_ends_both_sides() {
    let (server, client) = pair(Config::default(), Config::default());
    let mut open = client.open(kubectl_headers("data", 0), false).unwrap();
    let accepted = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    accepted.reply(Headers::new(), false).unwrap();
    server.close();
    assert!(timeout(SECOND, server.accept()).await.unwrap().is_none());
    assert!(timeout(SECOND, server.closed()).await.unwrap().is_none());
    assert!(timeout(SECOND, client.closed()).await.unwrap().is_none());
    assert!(client.is_closed());
    // The client's unfinished stream fails; no new stream can be opened.
    let mut buf = [0u8; 1];
    assert!(open.read(&mut buf).await.is_err());
    assert!(client.open(Headers::new(), false).is_err());
    assert!(client.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_connection() {
    let (a, b) = tokio::io::duplex(4096);
    let server = Connection::server(a, Config::default());
    let mut raw = RawPeer::new(b);
    drop(server);
    // GOAWAY(OK), then end of stream.
    assert_eq!(
        raw.recv_skipping_flow_control().await,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::Ok
        })
    );
    assert_eq!(raw.recv().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_are_refused() {
    let server_config = Config {
        max_streams: 2,
        ..Config::default()
    };
    let (server, client) = pair(server_config, Config::default());
    let s1 = client.open(kubectl_headers("a", 0), false).unwrap();
    let s2 = client.open(kubectl_headers("b", 0), false).unwrap();
    let s3 = client.open(kubectl_headers("c", 0), false).unwrap();
    let err = timeout(SECOND, s3.wait_reply()).await.unwrap().unwrap_err();
    assert!(matches!(
        err,
        Error::RemoteReset {
            id: 5,
            status: RstStatus::RefusedStream
        }
    ));
    for _ in 0..2 {
        timeout(SECOND, server.accept())
            .await
            .unwrap()
            .unwrap()
            .reply(Headers::new(), false)
            .unwrap();
    }
    s1.wait_reply().await.unwrap();
    s2.wait_reply().await.unwrap();
}

/// A peer written against the codec alone, to send exactly what a test
/// needs (kubectl's moby/spdystream, which has no flow control, or a
/// broken peer).
struct RawPeer {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    enc: Encoder,
    dec: Decoder,
    buf: Vec<u8>,
}

impl RawPeer {
    fn new(io: DuplexStream) -> RawPeer {
        let (rd, wr) = tokio::io::split(io);
        RawPeer {
            rd,
            wr,
            enc: Encoder::new(),
            dec: Decoder::new(Limits {
                max_frame_len: 1 << 24,
                ..Limits::default()
            }),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = Vec::new();
        self.enc.encode(&frame, &mut out).unwrap();
        self.wr.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    /// The next frame, or None at the end of the stream.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = self.dec.decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 8192];
            let n = timeout(TEN_SECONDS, self.rd.read(&mut chunk))
                .await
                .unwrap()
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until one matches, skipping WINDOW_UPDATE and SETTINGS as
    /// spdystream does.
    async fn recv_skipping_flow_control(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await? {
                Frame::WindowUpdate { .. } | Frame::Settings { .. } => continue,
                frame => return Some(frame),
            }
        }
    }

    async fn syn_stream(&mut self, id: u32, headers: Headers, fin: bool) {
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin,
            unidirectional: false,
            headers,
        })
        .await;
    }
}

async fn write_and_finish(mut stream: impl AsyncWrite + Unpin, data: Vec<u8>) {
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_server_talks_to_a_peer_without_flow_control() {
    // kubectl exec: stdout and error streams; the peer never sends
    // WINDOW_UPDATE, so a strict server would stall after 64 KiB.
    let (a, b) = tokio::io::duplex(64 << 10);
    let server = Connection::server(a, Config::kubernetes());
    let mut kubectl = RawPeer::new(b);
    kubectl
        .syn_stream(1, Headers::new().with("streamtype", "error"), true)
        .await;
    kubectl
        .syn_stream(3, Headers::new().with("streamtype", "stdout"), false)
        .await;

    let mut error = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    let stdout = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    assert_eq!(error.headers().get("streamtype"), Some("error"));
    // The error stream came with FIN: it reads as empty at once.
    assert_eq!(read_to_end(&mut error).await.unwrap(), b"");
    error.reply(Headers::new(), false).unwrap();
    stdout.reply(Headers::new(), false).unwrap();
    let output = pattern(3, 1 << 20);
    let writer = tokio::spawn(write_and_finish(stdout, output.clone()));

    let mut got = Vec::new();
    let mut replies = 0;
    loop {
        match kubectl.recv_skipping_flow_control().await.unwrap() {
            Frame::SynReply { stream_id, .. } => {
                assert!(stream_id == 1 || stream_id == 3);
                replies += 1;
            }
            Frame::Data {
                stream_id: 3,
                fin,
                data,
            } => {
                got.extend_from_slice(&data);
                if fin {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(replies, 2);
    assert!(got == output);
    timeout(SECOND, writer).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_server_waits_for_window_updates() {
    let (a, b) = tokio::io::duplex(64 << 10);
    let server = Connection::server(a, Config::default());
    let mut peer = RawPeer::new(b);
    peer.syn_stream(1, Headers::new().with("streamtype", "stdout"), true)
        .await;
    let stdout = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    stdout.reply(Headers::new(), false).unwrap();
    let writer = tokio::spawn(write_and_finish(stdout, vec![5; 100 << 10]));
    let mut got = 0;
    while got < 64 << 10 {
        match peer.recv_skipping_flow_control().await.unwrap() {
            Frame::Data { data, .. } => got += data.len(),
            Frame::SynReply { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Exactly the window, then nothing until a WINDOW_UPDATE.
    assert_eq!(got, 64 << 10);
    sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished());
    // The stream's window alone is not enough: the session's (64 KiB at
    // start, SPDY/3.1) is spent too.
    peer.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 64 << 10,
    })
    .await;
    sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished());
    peer.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 64 << 10,
    })
    .await;
    loop {
        match peer.recv_skipping_flow_control().await.unwrap() {
            Frame::Data { data, fin, .. } => {
                got += data.len();
                if fin {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, 100 << 10);
    timeout(SECOND, writer).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrunning_peer_is_reset_strictly_and_paced_leniently() {
    // Strict: 64 KiB + 1 unread byte on a stream is a FLOW_CONTROL_ERROR.
    let (a, b) = tokio::io::duplex(256 << 10);
    let server = Connection::server(a, Config::default());
    let mut peer = RawPeer::new(b);
    peer.syn_stream(1, Headers::new().with("streamtype", "stdin"), false)
        .await;
    let stdin = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    stdin.reply(Headers::new(), false).unwrap();
    for _ in 0..2 {
        peer.send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: vec![0; 32 << 10],
        })
        .await;
    }
    peer.send(Frame::Data {
        stream_id: 1,
        fin: false,
        data: vec![0; 1],
    })
    .await;
    loop {
        match peer.recv_skipping_flow_control().await.unwrap() {
            Frame::SynReply { .. } => {}
            Frame::RstStream { stream_id, status } => {
                assert_eq!((stream_id, status), (1, RstStatus::FlowControlError));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Lenient: 1 MiB sent at once is all delivered, the reader reading
    // slowly; the server stops reading the socket meanwhile.
    let (a, b) = tokio::io::duplex(64 << 10);
    let server = Connection::server(a, Config::kubernetes());
    let mut kubectl = RawPeer::new(b);
    kubectl
        .syn_stream(1, Headers::new().with("streamtype", "stdin"), false)
        .await;
    let mut stdin: Stream = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    stdin.reply(Headers::new(), false).unwrap();
    let input = pattern(9, 1 << 20);
    let sender = {
        let input = input.clone();
        tokio::spawn(async move {
            for chunk in input.chunks(32 << 10) {
                kubectl
                    .send(Frame::Data {
                        stream_id: 1,
                        fin: false,
                        data: chunk.to_vec(),
                    })
                    .await;
            }
            kubectl
                .send(Frame::Data {
                    stream_id: 1,
                    fin: true,
                    data: vec![],
                })
                .await;
            kubectl
        })
    };
    let mut got = Vec::new();
    let mut buf = vec![0; 16 << 10];
    loop {
        let n = timeout(TEN_SECONDS, stdin.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() % (256 << 10) == 0 {
            sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(got == input);
    let mut kubectl = timeout(SECOND, sender).await.unwrap().unwrap();
    // No RST_STREAM, just the SYN_REPLY (and WINDOW_UPDATEs), and FIN
    // from shutdown().
    stdin.shutdown().await.unwrap();
    drop(stdin);
    drop(server);
    while let Some(frame) = kubectl.recv().await {
        assert!(
            matches!(
                frame,
                Frame::SynReply { .. }
                    | Frame::WindowUpdate { .. }
                    | Frame::GoAway { .. }
                    | Frame::Data {
                        stream_id: 1,
                        fin: true,
                        ..
                    }
            ),
            "unexpected {frame:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_ends_the_connection_with_goaway() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad version",
            vec![
                0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0a, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
            ],
        ),
        (
            "huge length",
            vec![0x00, 0x00, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff],
        ),
        ("header bomb", HEADER_BOMB_PREFIX.to_vec()),
        ("even stream id from a client", Vec::new()),
        (
            "truncated frame",
            vec![0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00],
        ),
    ];
    for (what, bytes) in cases {
        let (a, b) = tokio::io::duplex(64 << 10);
        let server = Connection::server(a, Config::default());
        let mut peer = RawPeer::new(b);
        if what == "even stream id from a client" {
            peer.syn_stream(2, Headers::new(), false).await;
        } else {
            peer.send_raw(&bytes).await;
        }
        if what == "truncated frame" {
            // The peer goes away mid-frame.
            peer.wr.shutdown().await.unwrap();
        }
        let err = timeout(SECOND, server.closed())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: ended cleanly"));
        match what {
            "bad version" => assert!(matches!(
                err,
                Error::Frame(berth_spdy::FrameError::UnsupportedVersion(2))
            )),
            "huge length" => assert!(matches!(
                err,
                Error::Frame(berth_spdy::FrameError::FrameTooLarge { .. })
            )),
            "header bomb" => assert!(matches!(
                err,
                Error::Frame(berth_spdy::FrameError::HeaderBlockTooLarge { .. })
            )),
            _ => assert!(matches!(err, Error::Protocol(_)), "{what}: {err}"),
        }
        if what != "truncated frame" {
            assert_eq!(
                peer.recv_skipping_flow_control().await,
                Some(Frame::GoAway {
                    last_good_stream_id: 0,
                    status: GoAwayStatus::ProtocolError
                }),
                "{what}"
            );
        }
        assert!(timeout(SECOND, server.accept()).await.unwrap().is_none());
    }
}

/// A SYN_STREAM that inflates far past 64 KiB: 8 bytes of frame header and
/// 10 of stream fields, then zlib with the SPDY dictionary deflating a
/// block that declares one header named with 200 000 'x's.
static HEADER_BOMB_PREFIX: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut raw = 1u32.to_be_bytes().to_vec();
    raw.extend_from_slice(&200_000u32.to_be_bytes());
    raw.extend(std::iter::repeat_n(b'x', 200_000));
    raw.extend_from_slice(&1u32.to_be_bytes());
    raw.push(b'v');
    let mut deflate = flate2::Compress::new(flate2::Compression::best(), true);
    deflate
        .set_dictionary(berth_spdy::dictionary::DICTIONARY)
        .unwrap();
    let mut z = Vec::with_capacity(4096);
    deflate
        .compress_vec(&raw, &mut z, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(z.len() < 1024, "{}", z.len());
    let mut frame = vec![0x80, 3, 0, 1];
    frame.extend_from_slice(&((10 + z.len()) as u32).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&z);
    frame
});

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime() {
    // As in the shim: one thread for everything.
    let (server, client) = pair(Config::default(), Config::default());
    let echo = tokio::spawn(async move {
        while let Some(stream) = server.accept().await {
            stream.reply(Headers::new(), false).unwrap();
            tokio::spawn(async move {
                let (mut rx, mut tx) = stream.split();
                tokio::io::copy(&mut rx, &mut tx).await.unwrap();
                tx.shutdown().await.unwrap();
            });
        }
    });
    let mut tasks = Vec::new();
    for i in 0..3 {
        let stream = client.open(kubectl_headers("data", i), false).unwrap();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i, 150 << 10);
            let (mut rx, tx) = stream.split();
            let writer = tokio::spawn(write_and_finish(tx, data.clone()));
            let back = read_to_end(&mut rx).await.unwrap();
            writer.await.unwrap();
            assert!(back == data);
        }));
    }
    for t in tasks {
        timeout(TEN_SECONDS, t).await.unwrap().unwrap();
    }
    client.close();
    timeout(SECOND, echo).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_ends_a_connection_whose_peer_stopped_reading() {
    let (a, b) = tokio::io::duplex(4096);
    let server = Connection::server(a, Config::kubernetes());
    let mut peer = RawPeer::new(b);
    peer.syn_stream(1, Headers::new().with("streamtype", "stdout"), true)
        .await;
    let stdout = timeout(SECOND, server.accept()).await.unwrap().unwrap();
    stdout.reply(Headers::new(), false).unwrap();
    // The peer reads nothing: the writes fill the pipe and the write queue.
    let writer = tokio::spawn(async move {
        let mut stdout = stdout;
        stdout.write_all(&vec![0; 4 << 20]).await
    });
    sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished());
    // close() cannot get its GOAWAY through; abort() ends it anyway.
    server.close();
    sleep(Duration::from_millis(100)).await;
    server.abort();
    assert!(timeout(SECOND, server.closed()).await.unwrap().is_none());
    let err = timeout(SECOND, writer).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe, "{err}");
    // The peer sees the transport end after what was written.
    let mut frames = 0;
    while peer.recv().await.is_some() {
        frames += 1;
    }
    assert!(frames > 0);
}
