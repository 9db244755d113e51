//! The streaming server over SPDY/3.1, as kubectl and the API server
//! reach it: the HTTP upgrade with X-Stream-Protocol-Version, one stream
//! per remotecommand channel (exit status on the error stream), and
//! port-forward stream pairs by requestID, with a closed port reported on
//! its error stream only.

use std::sync::Arc;
use std::time::Duration;

use berth_spdy::{Config as SpdyConfig, Connection, Headers};
use berth_stream::{
    AttachRequest, Backend, Config, ExecRequest, PortForwardRequest, Server, StreamIo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// exec: stdin to stdout, "err" on stderr, exit 5.
struct TestBackend;

#[async_trait::async_trait]
impl Backend for TestBackend {
    async fn exec(&self, _req: &ExecRequest, mut io: StreamIo) -> Result<i32, String> {
        if let Some(e) = io.stderr.as_mut() {
            e.write_all(b"err").await.unwrap();
            e.shutdown().await.unwrap();
        }
        if let (Some(mut stdin), Some(mut stdout)) = (io.stdin.take(), io.stdout.take()) {
            let mut buf = Vec::new();
            stdin.read_to_end(&mut buf).await.unwrap();
            stdout.write_all(&buf).await.unwrap();
            stdout.shutdown().await.unwrap();
        }
        Ok(5)
    }

    async fn attach(&self, _req: &AttachRequest, _io: StreamIo) -> Result<(), String> {
        Ok(())
    }

    async fn port_forward(&self, _pod: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())
    }
}

async fn server() -> Arc<Server> {
    Server::start(
        Config {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            busy_poll: std::time::Duration::from_micros(50),
        },
        Arc::new(TestBackend),
    )
    .await
    .unwrap()
}

/// The HTTP upgrade to SPDY/3.1; the protocol the server chose, or the
/// status line it refused with.
async fn upgrade(url: &str, protocols: &[&str]) -> Result<(tokio::net::TcpStream, String), String> {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    let chosen = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-stream-protocol-version:")
                .then(|| l.split_once(':').unwrap().1.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((tcp, chosen))
}

#[tokio::test]
async fn exec_over_spdy_v4() {
    let server = server().await;
    let url = server
        .exec_url(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["cat".into()],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .unwrap();
    let (tcp, chosen) = upgrade(&url, &["v4.channel.k8s.io", "v3.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(chosen, "v4.channel.k8s.io");
    let conn = Connection::client(tcp, SpdyConfig::kubernetes());
    let open = |kind: &str| {
        conn.open(Headers::new().with("streamType", kind), false)
            .unwrap()
    };
    let error = open("error");
    let mut stdin = open("stdin");
    let stdout = open("stdout");
    let stderr = open("stderr");
    for s in [&error, &stdin, &stdout, &stderr] {
        s.wait_reply().await.unwrap();
    }
    stdin.write_all(b"through spdy").await.unwrap();
    stdin.shutdown().await.unwrap();
    let read_all = |s: berth_spdy::Stream| async move {
        let (mut r, _w) = s.split();
        let mut v = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut v))
            .await
            .unwrap()
            .unwrap();
        v
    };
    let (out, err, status) = tokio::join!(read_all(stdout), read_all(stderr), read_all(error));
    assert_eq!(out, b"through spdy");
    assert_eq!(err, b"err");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "5");

    // A protocol the server does not speak is refused before the upgrade.
    let url = server
        .exec_url(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    let refused = upgrade(&url, &["v9.channel.k8s.io"]).await.unwrap_err();
    assert!(refused.contains("403"), "{refused}");
}

#[tokio::test]
async fn port_forward_over_spdy() {
    let server = server().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"pong:").await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![],
        })
        .unwrap();
    let (tcp, chosen) = upgrade(&url, &["portforward.k8s.io"]).await.unwrap();
    assert_eq!(chosen, "portforward.k8s.io");
    let conn = Connection::client(tcp, SpdyConfig::kubernetes());
    let pair = |kind: &str, port: u16, request: &str| {
        conn.open(
            Headers::new()
                .with("streamType", kind)
                .with("port", port.to_string())
                .with("requestID", request),
            false,
        )
        .unwrap()
    };
    // A port nothing listens on: the message comes on its error stream.
    let closed_err = pair("error", closed, "0");
    let closed_data = pair("data", closed, "0");
    let err_open = pair("error", port, "1");
    let mut data = pair("data", port, "1");
    data.write_all(b"ping").await.unwrap();
    let (mut r, _w) = data.split();
    let mut got = vec![0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), r.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"pong:ping");
    let (mut er, _ew) = closed_err.split();
    let mut msg = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), er.read_to_end(&mut msg))
        .await
        .unwrap()
        .unwrap();
    let msg = String::from_utf8_lossy(&msg).into_owned();
    assert!(msg.contains(&format!("port {closed}")), "{msg}");
    drop((closed_data, err_open));
}

/// Threads of this process named `berth-stream` (the servers' threads).
fn stream_threads() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim() == "berth-stream").then(|| t.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// User and system CPU time of thread `tid`, in clock ticks.
fn cpu_ticks(tid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return 0; // ended
    };
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Busy polling is bounded: with the longest budget berthd accepts, once
/// a port-forward's data has stopped moving (its connection still open)
/// the streaming thread sleeps instead of spinning.
#[tokio::test]
async fn the_streaming_thread_sleeps_when_no_data_moves() {
    let server = Server::start(
        Config {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            busy_poll: Duration::from_millis(1),
        },
        Arc::new(TestBackend),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![port],
        })
        .unwrap();
    let (tcp, _) = upgrade(&url, &["portforward.k8s.io"]).await.unwrap();
    let conn = Connection::client(tcp, SpdyConfig::kubernetes());
    let open = |kind: &str| {
        conn.open(
            Headers::new()
                .with("streamType", kind)
                .with("port", port.to_string())
                .with("requestID", "0"),
            false,
        )
        .unwrap()
    };
    let _error = open("error");
    let data = open("data");
    let (mut r, mut w) = data.split();
    let mut got = [0u8; 4];
    for _ in 0..100 {
        w.write_all(b"ping").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), r.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"ping");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Every server's thread (other tests' too: they are short).
    let threads = stream_threads();
    assert!(!threads.is_empty());
    let ticks: u64 = threads.iter().map(|t| cpu_ticks(*t)).sum();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A thread still spinning would have used about 50 ticks (100 Hz).
    let used = threads
        .iter()
        .map(|t| cpu_ticks(*t))
        .sum::<u64>()
        .saturating_sub(ticks);
    assert!(
        used <= 5,
        "the idle streaming thread used {used} ticks in 0.5 s"
    );
    drop((r, w, conn, server));
}
