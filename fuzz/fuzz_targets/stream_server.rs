//! Fuzzes berthd's streaming server (the berth-stream crate) end to end,
//! as a hostile client on the network reaches it: a real server on
//! loopback, a single-use URL for an exec, an attach or a port-forward, the
//! HTTP upgrade to SPDY/3.1 with the protocol versions the input offers,
//! then a script of SPDY frames (streams of every type, with good, missing
//! and malformed `streamType`, `port` and `requestID` headers; data,
//! resets, settings, pings, goaways, raw bytes) and pauses.
//!
//! Behind the server is a backend that plays the runtime: exec and attach
//! copy stdin to stdout, and port-forward connects to an echo server on
//! loopback (the pod). Checked for every input:
//! - nothing panics: a panic in any of the server's tasks aborts the
//!   process (libFuzzer's panic hook);
//! - what the server sends after its 101 is well-formed SPDY;
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
use berth_stream::{
    AttachRequest, Backend, Config, ExecRequest, PortForwardRequest, Server, StreamIo,
};
use spdy_peer::{check_server_output, PeerFrame};
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

#[derive(Arbitrary, Debug)]
struct Input {
    operation: Operation,
    /// Which `X-Stream-Protocol-Version`s the upgrade offers (a bit each).
    protocols: u8,
    steps: Vec<Step>,
}

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

/// The upgrade request; the response head, or `None` if the server closed
/// without one.
async fn upgrade(tcp: &mut tokio::net::TcpStream, url: &str, protocols: u8) -> Option<String> {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for (i, p) in PROTOCOLS.iter().enumerate() {
        if protocols & (1 << i) != 0 {
            req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
    }
    req.push_str("Content-Length: 0\r\n\r\n");
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

/// File descriptors this process holds: the server's sockets among them.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

async fn run(w: &World, input: Input) {
    let fds_before = open_fds();
    let url = url(w, &input.operation);
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let mut tcp = tokio::net::TcpStream::connect(host)
        .await
        .expect("the streaming server accepts");
    let head = tokio::time::timeout(END, upgrade(&mut tcp, &url, input.protocols))
        .await
        .expect("the server answers the upgrade");
    let upgraded = head.is_some_and(|h| h.starts_with("HTTP/1.1 101"));
    if upgraded {
        let (from_server, mut to_server) = tcp.into_split();
        let checker = tokio::spawn(check_server_output(from_server, |_| true));
        let mut encoder = berth_spdy::Encoder::new();
        let port = w.pod_port;
        for step in input.steps.iter().take(100) {
            let wire = match *step {
                Step::Peer(ref frame) => frame.wire(&mut encoder, port),
                Step::Resize {
                    id,
                    width,
                    height,
                    malformed,
                } => {
                    let json = if malformed {
                        format!("{{\"Width\":{width},\"Height\":")
                    } else {
                        format!("{{\"Width\":{width},\"Height\":{height}}}")
                    };
                    let mut wire = Vec::new();
                    let frame = berth_spdy::Frame::Data {
                        stream_id: id.get(),
                        fin: false,
                        data: json.into_bytes(),
                    };
                    let _ = encoder.encode(&frame, &mut wire);
                    wire
                }
                Step::Pause(ms) => {
                    tokio::time::sleep(Duration::from_micros(u64::from(ms % 5) * 1000)).await;
                    continue;
                }
            };
            // A server that stops reading (a stream's buffer is full and
            // nobody reads it) is the peer's problem: give up the write.
            let wrote = tokio::time::timeout(Duration::from_millis(20), to_server.write_all(&wire));
            if !matches!(wrote.await, Ok(Ok(()))) {
                break;
            }
        }
        // The client hangs up.
        drop(to_server);
        tokio::time::timeout(END, checker)
            .await
            .expect("the server closes the connection once its client hung up")
            .expect("the server's output is well-formed");
    } else {
        // Refused: the client hangs up.
        drop(tcp);
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
