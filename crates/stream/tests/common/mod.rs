//! What the streaming server's test binaries share: a backend and the
//! client's side of the SPDY upgrade.

#![allow(dead_code)]

use berth_stream::{AttachRequest, Backend, ExecRequest, StreamIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// exec: stdin to stdout, "err" on stderr, exit 5.
pub struct TestBackend;

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

/// The HTTP upgrade to SPDY/3.1; the protocol the server chose, or the
/// status line it refused with.
pub async fn upgrade(
    url: &str,
    protocols: &[&str],
) -> Result<(tokio::net::TcpStream, String), String> {
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
