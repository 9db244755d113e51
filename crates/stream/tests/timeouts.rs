//! What the streaming server does not wait for forever, with short
//! timeouts: an upgraded connection idle for `idle_timeout` (SPDY and
//! WebSocket; PINGs count as activity), a client that never sends its
//! request or never opens the streams it asked for, a port-forward pair
//! whose data stream never comes (its pod connection is closed too), and
//! TCP keep-alive on accepted connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_spdy::{Config as SpdyConfig, Connection, Headers};
use berth_stream::{Config, PortForwardRequest, Server};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{cat_exec, port_forward_stream, upgrade, TestBackend};

const SHORT: Duration = Duration::from_secs(1);

async fn server() -> Arc<Server> {
    Server::start(
        Config {
            idle_timeout: Some(SHORT),
            stream_creation_timeout: SHORT,
            request_timeout: SHORT,
            ..Config::default()
        },
        Arc::new(TestBackend),
    )
    .await
    .unwrap()
}

fn port_forward_url(server: &Server) -> String {
    server
        .port_forward_url(PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![],
        })
        .unwrap()
}

/// A listener standing in for the pod's port: echoes what it reads, and
/// reports on the returned channel when each connection it accepted ends.
type PodEnds = tokio::sync::mpsc::UnboundedReceiver<Instant>;

async fn echo_listener() -> (u16, PodEnds) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = ended_tx.send(Instant::now());
            });
        }
    });
    (port, ended)
}

/// A server with the short timeouts, a port-forward connection to it over
/// SPDY, and the echo listener's port and ends.
async fn port_forward_over_spdy() -> (Arc<Server>, Connection, u16, PodEnds) {
    let server = server().await;
    let (port, pod_ended) = echo_listener().await;
    let (tcp, _) = upgrade(&port_forward_url(&server), &["portforward.k8s.io"])
        .await
        .unwrap();
    let conn = Connection::client(tcp, SpdyConfig::kubernetes());
    (server, conn, port, pod_ended)
}

async fn echo(data: &mut berth_spdy::Stream, what: &[u8]) {
    data.write_all(what).await.unwrap();
    let mut got = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(5), data.read_exact(&mut got))
        .await
        .expect("no echo within 5 s")
        .unwrap();
    assert_eq!(got, what);
}

#[tokio::test]
async fn an_idle_spdy_connection_is_closed_with_its_pod_connection() {
    let (_server, conn, port, mut pod_ended) = port_forward_over_spdy().await;
    let _error = port_forward_stream(&conn, "error", port, "0");
    let mut data = port_forward_stream(&conn, "data", port, "0");
    echo(&mut data, b"before").await;
    let quiet_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("an idle connection still open after 10 s");
    let idle = quiet_from.elapsed();
    // The server's last byte went out a moment before the client read it.
    assert!(
        idle >= SHORT * 9 / 10,
        "closed after {idle:?} of quiet, before the timeout"
    );
    let pod_end = tokio::time::timeout(Duration::from_secs(5), pod_ended.recv())
        .await
        .expect("the pod connection outlived the streaming connection by 5 s")
        .unwrap();
    assert!(pod_end >= quiet_from + SHORT * 9 / 10);
}

#[tokio::test]
async fn pings_keep_a_quiet_spdy_connection_open() {
    let (_server, conn, port, _pod_ended) = port_forward_over_spdy().await;
    let _error = port_forward_stream(&conn, "error", port, "0");
    let mut data = port_forward_stream(&conn, "data", port, "0");
    echo(&mut data, b"before").await;
    // As kubectl does (every 5 s, with the kubelet's 4 h timeout): no data
    // for three timeouts, only PINGs.
    let until = Instant::now() + 3 * SHORT;
    while Instant::now() < until {
        conn.ping().await.expect("PING unanswered");
        tokio::time::sleep(SHORT / 4).await;
    }
    assert!(!conn.is_closed());
    echo(&mut data, b"after").await;
}

#[tokio::test]
async fn an_idle_websocket_is_closed_with_its_pod_connection() {
    let server = server().await;
    let (port, mut pod_ended) = echo_listener().await;
    let url = port_forward_url(&server).replacen("http://", "ws://", 1);
    let mut req = format!("{url}?port={port}").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    let host = url.trim_start_matches("ws://").split('/').next().unwrap();
    let tcp = TcpStream::connect(host).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    ws.send(Message::binary(b"\x00hi".to_vec())).await.unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 2 + 2 {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b[0] == 0 => echoed.extend_from_slice(&b[1..]),
            Ok(Some(Ok(_))) => {}
            other => panic!("no echo: {other:?}"),
        }
    }
    assert_eq!(&echoed[2..], b"hi");
    let quiet_from = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "an idle WebSocket still open after 10 s");
    assert!(quiet_from.elapsed() >= SHORT * 9 / 10);
    tokio::time::timeout(Duration::from_secs(5), pod_ended.recv())
        .await
        .expect("the pod connection outlived the WebSocket by 5 s");
}

#[tokio::test]
async fn a_port_forward_pair_without_its_data_stream_times_out_alone() {
    let (_server, conn, port, mut pod_ended) = port_forward_over_spdy().await;
    let lone_error = port_forward_stream(&conn, "error", port, "lone");
    let opened = Instant::now();
    // A complete pair on the same connection, busy all along.
    let _error = port_forward_stream(&conn, "error", port, "whole");
    let mut data = port_forward_stream(&conn, "data", port, "whole");
    let (mut er, _ew) = lone_error.split();
    let mut msg = Vec::new();
    let reading = er.read_to_end(&mut msg);
    tokio::pin!(reading);
    let read = loop {
        tokio::select! {
            r = &mut reading => break r,
            () = tokio::time::sleep(SHORT / 4) => echo(&mut data, b"busy").await,
        }
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "no timeout within 10 s"
        );
    };
    read.unwrap();
    assert!(opened.elapsed() >= SHORT);
    let msg = String::from_utf8_lossy(&msg).into_owned();
    assert!(msg.contains("timed out waiting for streams"), "{msg}");
    assert!(msg.contains("lone"), "{msg}");
    // The lone pair's early connection to the pod is closed...
    tokio::time::timeout(Duration::from_secs(5), pod_ended.recv())
        .await
        .expect("the lone pair's pod connection is still open");
    // ...and the whole pair goes on.
    echo(&mut data, b"still").await;
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn an_exec_whose_streams_never_come_is_closed() {
    let server = server().await;
    let url = server.exec_url(cat_exec(false)).unwrap();
    let (tcp, _) = upgrade(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let conn = Connection::client(tcp, SpdyConfig::kubernetes());
    // stdin and stdout never opened; pings keep it from being idle.
    let error = conn
        .open(Headers::new().with("streamType", "error"), false)
        .unwrap();
    error.wait_reply().await.unwrap();
    let start = Instant::now();
    while !conn.is_closed() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still open after 10 s"
        );
        let _ = conn.ping().await;
        tokio::time::sleep(SHORT / 4).await;
    }
    assert!(start.elapsed() >= SHORT / 2, "closed at once");
}

/// Nothing, half a request head, or a refused request and then nothing:
/// the connection is closed after the request timeout, never upgraded.
#[tokio::test]
async fn a_client_that_never_sends_its_request_is_dropped() {
    let server = server().await;
    let host = server.base_url().trim_start_matches("http://").to_owned();
    let refused = b"GET /exec/unknown HTTP/1.1\r\nHost: x\r\n\r\n";
    for sent in [&b""[..], b"POST /exec/abc HTTP/1.1\r\nHost: x\r\n", refused] {
        let mut tcp = TcpStream::connect(&host).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let got = closed_within_10s(&mut tcp, sent).await;
        if sent == refused {
            assert!(got.starts_with("HTTP/1.1 404"), "{got}");
        } else {
            assert!(got.is_empty(), "{got}");
        }
    }
}

/// What the server sent before it closed the connection, at least half
/// the short timeout after `sent`.
async fn closed_within_10s(conn: &mut (impl AsyncReadExt + Unpin), sent: &[u8]) -> String {
    let start = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "still open after 10 s having sent {:?}",
        String::from_utf8_lossy(sent)
    );
    assert!(start.elapsed() >= SHORT / 2, "closed at once");
    String::from_utf8_lossy(&got).into_owned()
}

/// With TLS, a client that connects and never starts its handshake.
#[tokio::test]
async fn a_silent_tls_client_is_dropped() {
    let dir = std::env::temp_dir().join(format!("berth-stream-tls-idle-{}", std::process::id()));
    let (cert, key) = common::self_signed_certificate(&dir);
    let server = Server::start(
        Config {
            tls: Some((cert, key)),
            request_timeout: SHORT,
            ..Config::default()
        },
        Arc::new(TestBackend),
    )
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let host = server.base_url().trim_start_matches("https://").to_owned();
    let mut tcp = TcpStream::connect(&host).await.unwrap();
    let got = closed_within_10s(&mut tcp, b"").await;
    assert!(got.is_empty(), "{got}");
}

#[tokio::test]
async fn accepted_connections_have_tcp_keepalive() {
    let server = server().await;
    let host = server.base_url().trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&host).await.unwrap();
    let client_port = tcp.local_addr().unwrap().port();
    // An answer (404) means the server has accepted the connection and
    // set its options, which it does before reading.
    tcp.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 404");
    // The server's end of it, as the kernel shows it: a keepalive timer.
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(format!("( dport = :{client_port} )"))
        .output()
        .expect("ss (iproute2)");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("timer:(keepalive,"), "{out}");
    drop(tcp);
}
