//! Fuzzes berthd's streaming server (the berth-stream crate) end to end,
//! as a hostile client on the network reaches it: a real server on
//! loopback, a single-use URL for an exec, an attach or a port-forward, and
//! either
//! - the HTTP upgrade to SPDY/3.1 with the protocol versions the input
//!   offers, then a script of SPDY frames (streams of every type, with
//!   good, missing and malformed `streamType`, `port` and `requestID`
//!   headers; data, resize messages, resets, settings, pings, goaways, raw
//!   bytes) and pauses; or
//! - the upgrade to WebSocket with the subprotocols the input offers (and
//!   a good, wrong, malformed or missing `?port=`), then masked frames of
//!   every opcode carrying channel messages (binary, base64 text, resize,
//!   v5 channel close), raw bytes and pauses.
//!
//! Behind the server is a backend that plays the runtime: exec and attach
//! copy stdin to stdout, and port-forward connects to an echo server on
//! loopback (the pod). Checked for every input:
//! - nothing panics: a panic in any of the server's tasks aborts the
//!   process (libFuzzer's panic hook);
//! - what the server sends after its 101 is well-formed SPDY, or
//!   well-formed server WebSocket frames;
//! - once the client hangs up, the server closes the connection within
//!   seconds, and every exec or attach it started and every connection it
//!   made to the pod ends, and the process holds no more file descriptors
//!   than before the client came: nothing outlives its client.
#![no_main]

#[path = "spdy_peer.rs"]
mod spdy_peer;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use base64::prelude::{Engine, BASE64_STANDARD};
use berth_stream::{
    AttachRequest, Backend, Config, ExecRequest, PortForwardRequest, Server, StreamIo,
};
use spdy_peer::{check_server_output, PeerFrame, SENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Arbitrary, Debug)]
enum Operation {
    Exec {
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        fails: bool,
    },
    Attach {
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        /// The ports the CRI request allowed: none (any), the pod's, or
        /// another.
        allowed: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Step {
    Peer(PeerFrame),
    /// A resize message on a stream (JSON as kubectl sends it, or not).
    Resize {
        id: spdy_peer::Id,
        width: u16,
        height: u16,
        malformed: bool,
    },
    /// Lets the server act: up to 4 ms.
    Pause(u8),
}

/// A client WebSocket frame (masked, as a client's must be), or raw bytes.
#[derive(Arbitrary, Debug)]
enum WsStep {
    Message {
        /// Binary, text, continuation, ping, pong, close; past those, a
        /// reserved opcode.
        opcode: u8,
        fin: bool,
        channel: u8,
        payload: WsPayload,
    },
    Raw(Vec<u8>),
    Pause(u8),
}

#[derive(Arbitrary, Debug)]
enum WsPayload {
    /// Bytes for stdin or a port, after the channel byte.
    Bytes(u16),
    /// Base64 after an ASCII channel digit (base64 protocols), or not
    /// base64 at all.
    Base64 { len: u8, valid: bool },
    Resize {
        width: u16,
        height: u16,
        malformed: bool,
    },
    /// v5: close the channel named.
    CloseChannel(u8),
}

#[derive(Arbitrary, Debug)]
enum Script {
    Spdy {
        /// Which `X-Stream-Protocol-Version`s the upgrade offers (a bit each).
        protocols: u8,
        steps: Vec<Step>,
    },
    WebSocket {
        /// Which `Sec-WebSocket-Protocol`s the upgrade offers.
        protocols: u8,
        /// The port-forward's `?port=`: the pod's, another, malformed, none (the
        /// CRI request's ports then).
        port: u8,
        steps: Vec<WsStep>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    operation: Operation,
    script: Script,
}

const WS_PROTOCOLS: [&str; 7] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
    "channel.k8s.io",
    "SPDY/3.1",
    "nonsense",
];

const PROTOCOLS: [&str; 7] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "portforward.k8s.io",
    "v5.channel.k8s.io",
    "nonsense",
];

/// How long the server may take to close a connection whose client hung
/// up, and for what it started to end: its own timeouts are shorter.
const END: Duration = Duration::from_secs(5);

/// Execs and attaches running, and connections to the pod open.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Live;

impl Live {
    fn new() -> Live {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The runtime behind the server: stdin to stdout, and the echo pod.
struct PlayBackend {
    pod_port: u16,
}

impl PlayBackend {
    async fn run(io: StreamIo) {
        let StreamIo {
            stdin,
            stdout,
            stderr,
            resize,
        } = io;
        let resizes = async {
            if let Some(mut resize) = resize {
                while resize.recv().await.is_some() {}
            }
        };
        let copy = async {
            if let Some(mut stderr) = stderr {
                let _ = stderr.write_all(b"err").await;
                let _ = stderr.shutdown().await;
            }
            match (stdin, stdout) {
                (Some(mut stdin), Some(mut stdout)) => {
                    let _ = tokio::io::copy(&mut stdin, &mut stdout).await;
                    let _ = stdout.shutdown().await;
                }
                (Some(mut stdin), None) => {
                    let _ = tokio::io::copy(&mut stdin, &mut tokio::io::sink()).await;
                }
                (None, Some(mut stdout)) => {
                    let _ = stdout.write_all(b"out").await;
                    let _ = stdout.shutdown().await;
                }
                (None, None) => {}
            }
        };
        tokio::join!(resizes, copy);
    }
}

#[async_trait::async_trait]
impl Backend for PlayBackend {
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, String> {
        let _live = Live::new();
        if req.cmd.first().map(String::as_str) == Some("fail") {
            return Err("the command could not run".into());
        }
        PlayBackend::run(io).await;
        Ok(3)
    }

    async fn attach(&self, _req: &AttachRequest, io: StreamIo) -> Result<(), String> {
        let _live = Live::new();
        PlayBackend::run(io).await;
        Ok(())
    }

    async fn port_forward(&self, _pod: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
        if port != self.pod_port {
            return Err(format!("connection refused on port {port}"));
        }
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())
    }
}

/// An echo server on loopback, a thread per connection, each counted in
/// [`LIVE`] until the server closes it.
fn start_pod() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("the pod's listener");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let live = Live::new();
            std::thread::spawn(move || {
                let _live = live;
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

struct World {
    runtime: tokio::runtime::Runtime,
    server: Arc<Server>,
    pod_port: u16,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let pod_port = start_pod();
        let config = Config {
            idle_timeout: Some(Duration::from_secs(3)),
            stream_creation_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            ..Config::default()
        };
        let server = runtime
            .block_on(Server::start(config, Arc::new(PlayBackend { pod_port })))
            .expect("the streaming server starts");
        World {
            runtime,
            server,
            pod_port,
        }
    })
}

fn url(w: &World, op: &Operation) -> String {
    let url = match *op {
        Operation::Exec {
            tty,
            stdin,
            stdout,
            stderr,
            fails,
        } => w.server.exec_url(ExecRequest {
            container_id: "c".into(),
            cmd: vec![if fails { "fail" } else { "cat" }.into()],
            tty,
            // As the CRI layer passes them: a terminal has no stderr of
            // its own, and at least one stream is asked for.
            stdin,
            stdout: stdout || !stdin,
            stderr: stderr && !tty,
        }),
        Operation::Attach {
            tty,
            stdin,
            stdout,
            stderr,
        } => w.server.attach_url(AttachRequest {
            container_id: "c".into(),
            tty,
            stdin,
            stdout: stdout || !stdin,
            stderr: stderr && !tty,
        }),
        Operation::PortForward { allowed } => w.server.port_forward_url(PortForwardRequest {
            pod_id: "p".into(),
            ports: match allowed % 3 {
                0 => vec![],
                1 => vec![w.pod_port],
                _ => vec![w.pod_port.wrapping_add(1)],
            },
        }),
    };
    url.expect("a token: the in-flight limit is far")
}

/// Sends an upgrade request (its method, the path of `url` and a query,
/// then `headers`); the response head, or `None` if the server closed
/// without one.
async fn upgrade(
    tcp: &mut tokio::net::TcpStream,
    method: &str,
    url: &str,
    query: &str,
    headers: &str,
) -> Option<String> {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').expect("a path");
    let req = format!(
        "{method} /{path}{query} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n{headers}\
         Content-Length: 0\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The `headers` lines for the protocols of `all` whose bit is set.
fn offered(name: &str, all: &[&str], bits: u8) -> String {
    all.iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, p)| format!("{name}: {p}\r\n"))
        .collect()
}

/// File descriptors this process holds: the server's sockets among them.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Writes what a step sends; false once the server stops taking it (a
/// stream's buffer is full and nobody reads it: the client's problem).
async fn send(to_server: &mut tokio::net::tcp::OwnedWriteHalf, wire: &[u8]) -> bool {
    let wrote = tokio::time::timeout(Duration::from_millis(20), to_server.write_all(wire));
    matches!(wrote.await, Ok(Ok(())))
}

async fn pause(ms: u8) {
    tokio::time::sleep(Duration::from_millis(u64::from(ms % 5))).await;
}

/// What a step puts on the wire, or a pause.
enum Wire {
    Bytes(Vec<u8>),
    Pause(u8),
}

/// Sends an upgrade request; on a 101, checks what the server sends with
/// `check` while it sends each step's bytes, then hangs up: the server must
/// then close its end (`protocol` names it in the failure).
async fn converse<S, C>(
    mut tcp: tokio::net::TcpStream,
    request: (&str, &str, &str, &str),
    protocol: &str,
    check: impl FnOnce(tokio::net::tcp::OwnedReadHalf) -> C,
    steps: &[S],
    mut wire: impl FnMut(&S) -> Wire,
) where
    C: std::future::Future<Output = ()> + Send + 'static,
{
    let (method, url, query, headers) = request;
    let head = tokio::time::timeout(END, upgrade(&mut tcp, method, url, query, headers))
        .await
        .expect("the server answers the upgrade");
    if !head.is_some_and(|h| h.starts_with("HTTP/1.1 101")) {
        return;
    }
    let (from_server, mut to_server) = tcp.into_split();
    let checker = tokio::spawn(check(from_server));
    for step in steps.iter().take(100) {
        match wire(step) {
            Wire::Bytes(bytes) => {
                if !send(&mut to_server, &bytes).await {
                    break;
                }
            }
            Wire::Pause(ms) => pause(ms).await,
        }
    }
    // The client hangs up.
    drop(to_server);
    match tokio::time::timeout(END, checker).await {
        Err(_) => {
            panic!("the server kept its {protocol} connection {END:?} after its client hung up")
        }
        Ok(Err(e)) => panic!("the server's {protocol} output is not well-formed: {e}"),
        Ok(Ok(())) => {}
    }
}

async fn spdy_session(
    w: &World,
    tcp: tokio::net::TcpStream,
    url: &str,
    protocols: u8,
    steps: &[Step],
) {
    let headers = format!(
        "Upgrade: SPDY/3.1\r\n{}",
        offered("X-Stream-Protocol-Version", &PROTOCOLS, protocols)
    );
    let mut encoder = berth_spdy::Encoder::new();
    let check = |r| async move { check_server_output(r, |_| true).await };
    converse(
        tcp,
        ("POST", url, "", &headers),
        "SPDY",
        check,
        steps,
        |step| match *step {
            Step::Peer(ref frame) => Wire::Bytes(frame.wire(&mut encoder, w.pod_port)),
            Step::Resize {
                id,
                width,
                height,
                malformed,
            } => {
                let mut wire = Vec::new();
                let frame = berth_spdy::Frame::Data {
                    stream_id: id.get(),
                    fin: false,
                    data: resize_json(width, height, malformed),
                };
                let _ = encoder.encode(&frame, &mut wire);
                Wire::Bytes(wire)
            }
            Step::Pause(ms) => Wire::Pause(ms),
        },
    )
    .await;
}

fn resize_json(width: u16, height: u16, malformed: bool) -> Vec<u8> {
    if malformed {
        format!("{{\"Width\":{width},\"Height\":").into_bytes()
    } else {
        format!("{{\"Width\":{width},\"Height\":{height}}}").into_bytes()
    }
}

/// A client's frame: FIN, the opcode, the mask bit and length, the mask,
/// the masked payload (RFC 6455, section 5.2).
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x1b, 0x2c, 0x3d, 0x4e];
    let mut frame = vec![u8::from(fin) << 7 | (opcode & 0x0f)];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

fn ws_message(opcode: u8, fin: bool, channel: u8, payload: &WsPayload) -> Vec<u8> {
    const OPCODES: [u8; 6] = [0x2, 0x1, 0x0, 0x9, 0xa, 0x8];
    let opcode = OPCODES
        .get(usize::from(opcode % 8))
        .copied()
        .unwrap_or(opcode);
    let body = match *payload {
        WsPayload::Bytes(len) => {
            let mut body = vec![channel];
            body.resize(1 + usize::from(len) * 4, SENT);
            body
        }
        WsPayload::Base64 { len, valid } => {
            let mut body = vec![b'0' + channel % 10];
            if valid {
                let raw = vec![SENT; usize::from(len)];
                body.extend_from_slice(BASE64_STANDARD.encode(raw).as_bytes());
            } else {
                body.extend(std::iter::repeat_n(b'*', usize::from(len)));
            }
            body
        }
        WsPayload::Resize {
            width,
            height,
            malformed,
        } => {
            let mut body = vec![channel];
            body.extend(resize_json(width, height, malformed));
            body
        }
        WsPayload::CloseChannel(which) => vec![255, which],
    };
    ws_frame(fin, opcode, &body)
}

/// Reads the server's WebSocket frames until it closes its end: each must
/// be a server's (unmasked, no extension bits, a known opcode, control
/// frames whole and short).
async fn check_ws_output(mut from_server: tokio::net::tcp::OwnedReadHalf) {
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from_server.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        wire.extend_from_slice(&buf[..n]);
        let mut pos = 0;
        while wire.len() - pos >= 2 {
            let (b0, b1) = (wire[pos], wire[pos + 1]);
            assert_eq!(b0 & 0x70, 0, "the server set reserved bits: {b0:#x}");
            let opcode = b0 & 0x0f;
            assert!(
                matches!(opcode, 0x0..=0x2 | 0x8..=0xa),
                "the server sent opcode {opcode:#x}"
            );
            assert_eq!(b1 & 0x80, 0, "the server masked a frame");
            let (len, head) = match b1 & 0x7f {
                126 if wire.len() - pos >= 4 => (
                    usize::from(u16::from_be_bytes([wire[pos + 2], wire[pos + 3]])),
                    4,
                ),
                127 if wire.len() - pos >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&wire[pos + 2..pos + 10]);
                    (
                        usize::try_from(u64::from_be_bytes(n)).expect("a length"),
                        10,
                    )
                }
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if opcode >= 0x8 {
                assert!(
                    b0 & 0x80 != 0 && len <= 125,
                    "a control frame split or too long"
                );
            }
            if wire.len() - pos < head + len {
                break;
            }
            pos += head + len;
        }
        wire.drain(..pos);
    }
}

async fn ws_session(
    w: &World,
    tcp: tokio::net::TcpStream,
    url: &str,
    protocols: u8,
    port: u8,
    steps: &[WsStep],
) {
    let headers = format!(
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{}",
        offered("Sec-WebSocket-Protocol", &WS_PROTOCOLS, protocols)
    );
    let query = match port % 4 {
        0 => format!("?port={}", w.pod_port),
        1 => format!("?port={}", w.pod_port.wrapping_add(1)),
        2 => "?port=http".to_owned(),
        _ => String::new(),
    };
    converse(
        tcp,
        ("GET", url, &query, &headers),
        "WebSocket",
        check_ws_output,
        steps,
        |step| match *step {
            WsStep::Message {
                opcode,
                fin,
                channel,
                ref payload,
            } => Wire::Bytes(ws_message(opcode, fin, channel, payload)),
            WsStep::Raw(ref bytes) => Wire::Bytes(bytes.clone()),
            WsStep::Pause(ms) => Wire::Pause(ms),
        },
    )
    .await;
}

async fn run(w: &World, input: Input) {
    let fds_before = open_fds();
    let url = url(w, &input.operation);
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let tcp = tokio::net::TcpStream::connect(host)
        .await
        .expect("the streaming server accepts");
    match input.script {
        Script::Spdy { protocols, steps } => spdy_session(w, tcp, &url, protocols, &steps).await,
        Script::WebSocket {
            protocols,
            port,
            steps,
        } => ws_session(w, tcp, &url, protocols, port, &steps).await,
    }
    let deadline = Instant::now() + END;
    while LIVE.load(Ordering::SeqCst) != 0 || open_fds() > fds_before {
        assert!(
            Instant::now() < deadline,
            "{END:?} after the client left: {} exec, attach or pod connection(s) still live, \
             {} file descriptor(s) more than before it came",
            LIVE.load(Ordering::SeqCst),
            open_fds().saturating_sub(fds_before)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let w = world();
    w.runtime.block_on(run(w, input));
});
