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

/// An exec of `cat` with stdin and stdout, without a terminal.
pub fn cat_exec(stderr: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c".into(),
        cmd: vec!["cat".into()],
        tty: false,
        stdin: true,
        stdout: true,
        stderr,
    }
}

/// A port-forward stream (`error` or `data`) of request `request` to
/// `port`, opened by the client.
pub fn port_forward_stream(
    conn: &berth_spdy::Connection,
    kind: &str,
    port: u16,
    request: &str,
) -> berth_spdy::Stream {
    conn.open(
        berth_spdy::Headers::new()
            .with("streamType", kind)
            .with("port", port.to_string())
            .with("requestID", request),
        false,
    )
    .unwrap()
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

/// A self-signed certificate for 127.0.0.1 and its key, written in `dir`
/// (made now) by openssl.
pub fn self_signed_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    (cert, key)
}
