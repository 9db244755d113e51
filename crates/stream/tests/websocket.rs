//! The streaming server over WebSocket with a backend of the test's own:
//! single-use URLs, exec with stdin, stdout, stderr, resize, the v5 close
//! signal and the exit status on the error channel, base64 framing, and
//! port-forward to a listener and to a port nobody listens on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_stream::{
    AttachRequest, Backend, Config, ExecRequest, PortForwardRequest, Server, StreamIo, TerminalSize,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

mod common;

/// exec: `cat` copies stdin to stdout, says "err" on stderr, and exits
/// with the number of resize events it saw plus 3; `fail` cannot run.
/// port-forward: to a local listener's port on 127.0.0.1.
struct TestBackend {
    resizes: Mutex<Vec<TerminalSize>>,
}

#[async_trait::async_trait]
impl Backend for TestBackend {
    async fn exec(&self, req: &ExecRequest, mut io: StreamIo) -> Result<i32, String> {
        if req.cmd.first().map(String::as_str) == Some("fail") {
            return Err("no such container".into());
        }
        if let Some(e) = io.stderr.as_mut() {
            e.write_all(b"err").await.unwrap();
        }
        let mut seen = 0;
        if let (Some(mut stdin), Some(mut stdout)) = (io.stdin.take(), io.stdout.take()) {
            let mut buf = Vec::new();
            stdin.read_to_end(&mut buf).await.unwrap();
            stdout.write_all(&buf).await.unwrap();
        }
        if let Some(mut r) = io.resize.take() {
            while let Ok(Some(size)) =
                tokio::time::timeout(Duration::from_millis(300), r.recv()).await
            {
                self.resizes.lock().unwrap().push(size);
                seen += 1;
            }
        }
        Ok(3 + seen)
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

async fn server() -> (Arc<Server>, Arc<TestBackend>) {
    let backend = Arc::new(TestBackend {
        resizes: Mutex::new(Vec::new()),
    });
    let server = Server::start(
        Config {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            busy_poll: std::time::Duration::from_micros(50),
            ..Config::default()
        },
        backend.clone(),
    )
    .await
    .unwrap();
    (server, backend)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(url: &str, protocol: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    if !protocol.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    }
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

fn exec_req(cmd: &str, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c".into(),
        cmd: vec![cmd.into()],
        tty,
        stdin: true,
        stdout: true,
        stderr: true,
    }
}

/// Everything the server sends until it closes, by channel.
async fn collect(ws: &mut Ws, base64: bool) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut channels = vec![Vec::new(); 5];
    while let Some(Ok(msg)) = ws.next().await {
        let (ch, data) = match msg {
            Message::Binary(b) if !b.is_empty() => (b[0], b[1..].to_vec()),
            Message::Text(t) if base64 => (
                t.as_bytes()[0] - b'0',
                base64::engine::general_purpose::STANDARD
                    .decode(&t.as_bytes()[1..])
                    .unwrap(),
            ),
            Message::Close(_) => break,
            _ => continue,
        };
        channels[ch as usize].extend_from_slice(&data);
    }
    channels
}

#[tokio::test]
async fn exec_over_v5_with_stdin_close_and_exit_status() {
    let (server, _) = server().await;
    let url = server.exec_url(exec_req("cat", false)).unwrap();
    let mut ws = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::binary(b"\x00hello ".to_vec()))
        .await
        .unwrap();
    ws.send(Message::binary(b"\x00world".to_vec()))
        .await
        .unwrap();
    // v5's close signal: channel 255 naming stdin.
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let out = collect(&mut ws, false).await;
    assert_eq!(out[1], b"hello world");
    assert_eq!(out[2], b"err");
    let status: serde_json::Value = serde_json::from_slice(&out[3]).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // The URL was single use.
    let again = connect(&url, "v5.channel.k8s.io").await;
    assert!(again.is_err(), "a used token must be refused");
}

#[tokio::test]
async fn tty_exec_gets_resizes_and_base64_framing_works() {
    let (server, backend) = server().await;
    let mut req = exec_req("cat", true);
    req.stdin = false;
    let url = server.exec_url(req).unwrap();
    let mut ws = connect(&url, "v4.base64.channel.k8s.io").await.unwrap();
    use base64::Engine;
    let size = base64::engine::general_purpose::STANDARD.encode(br#"{"Width":120,"Height":40}"#);
    ws.send(Message::text(format!("4{size}"))).await.unwrap();
    let out = collect(&mut ws, true).await;
    let status: serde_json::Value = serde_json::from_slice(&out[3]).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "4", "{status}");
    assert!(out[2].is_empty(), "a terminal has no separate stderr");
    assert_eq!(
        backend.resizes.lock().unwrap().as_slice(),
        &[TerminalSize {
            width: 120,
            height: 40
        }]
    );
}

#[tokio::test]
async fn a_failed_exec_and_bad_requests_are_reported() {
    let (server, _) = server().await;
    let url = server.exec_url(exec_req("fail", false)).unwrap();
    let mut ws = connect(&url, "v4.channel.k8s.io").await.unwrap();
    let out = collect(&mut ws, false).await;
    let status: serde_json::Value = serde_json::from_slice(&out[3]).unwrap();
    assert_eq!(status["reason"], "InternalError");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("no such container"));

    // An unknown token, and a protocol nobody speaks.
    assert!(connect(
        &format!("{}/exec/nope", server.base_url()),
        "v4.channel.k8s.io"
    )
    .await
    .is_err());
    let url = server.exec_url(exec_req("cat", false)).unwrap();
    assert!(connect(&url, "v9.nonsense").await.is_err());
}

#[tokio::test]
async fn port_forward_reaches_a_listener_and_reports_a_closed_port() {
    let (server, _) = server().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"pong:").await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    // A port nothing listens on: bound then released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![],
        })
        .unwrap();
    let mut ws = connect(
        &format!("{url}?port={port}&port={closed}"),
        "v4.channel.k8s.io",
    )
    .await
    .unwrap();
    ws.send(Message::binary(b"\x00ping".to_vec()))
        .await
        .unwrap();
    let mut data = Vec::new();
    let mut closed_error = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (data.len() < 2 + 9 || closed_error.len() <= 2) && tokio::time::Instant::now() < deadline
    {
        let Ok(Some(Ok(Message::Binary(b)))) =
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await
        else {
            break;
        };
        match b[0] {
            0 => data.extend_from_slice(&b[1..]),
            3 => closed_error.extend_from_slice(&b[1..]),
            _ => {}
        }
    }
    assert_eq!(
        &data[..2],
        &port.to_le_bytes(),
        "the data channel opens with its port"
    );
    assert_eq!(&data[2..], b"pong:ping");
    assert_eq!(&closed_error[..2], &closed.to_le_bytes());
    let msg = String::from_utf8_lossy(&closed_error[2..]).into_owned();
    assert!(msg.contains(&format!("port {closed}")), "{msg}");
    // The listener closed its side and the other port never opened: the
    // connection ends (a WebSocket has no half-close), as the kubelet's.
    assert!(
        closes_within(&mut ws, Duration::from_secs(5)).await,
        "the connection stayed open after every pod connection ended"
    );

    // Only a closed port: the error, then the end, without a grace.
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![closed],
        })
        .unwrap();
    let mut ws = connect(&url, "v4.channel.k8s.io").await.unwrap();
    assert!(closes_within(&mut ws, Duration::from_millis(900)).await);
}

/// Whether the server closes the connection within `limit`.
async fn closes_within(ws: &mut Ws, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(_) = msg {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// With a certificate and key the server speaks https; an unknown token
/// is a 404 there too.
#[tokio::test]
async fn tls_when_configured() {
    use rustls_pki_types::pem::PemObject;
    let dir = std::env::temp_dir().join(format!("berth-stream-tls-{}", std::process::id()));
    let (cert, key) = common::self_signed_certificate(&dir);
    let backend = Arc::new(TestBackend {
        resizes: Mutex::new(Vec::new()),
    });
    let server = Server::start(
        Config {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: Some((cert.clone(), key.clone())),
            busy_poll: std::time::Duration::ZERO,
            ..Config::default()
        },
        backend,
    )
    .await
    .unwrap();
    assert!(server.base_url().starts_with("https://"));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = server.base_url().trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into()),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(b"GET /exec/unknown HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    // A key file that is not one is refused, naming it.
    let err = Server::start(
        Config {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: Some((cert.clone(), cert.clone())),
            busy_poll: std::time::Duration::ZERO,
            ..Config::default()
        },
        Arc::new(TestBackend {
            resizes: Mutex::new(Vec::new()),
        }),
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("cert.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
