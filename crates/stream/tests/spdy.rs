//! The streaming server over SPDY/3.1, as kubectl and the API server
//! reach it: the HTTP upgrade with X-Stream-Protocol-Version, one stream
//! per remotecommand channel (exit status on the error stream), and
//! port-forward stream pairs by requestID, with a closed port reported on
//! its error stream only.

use std::sync::Arc;
use std::time::Duration;

use berth_spdy::{Config as SpdyConfig, Connection, Headers};
use berth_stream::{Config, ExecRequest, PortForwardRequest, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{cat_exec, port_forward_stream, upgrade, TestBackend};

async fn server() -> Arc<Server> {
    Server::start(
        Config {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            busy_poll: std::time::Duration::from_micros(50),
            ..Config::default()
        },
        Arc::new(TestBackend),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn exec_over_spdy_v4() {
    let server = server().await;
    let url = server.exec_url(cat_exec(true)).unwrap();
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
    let pair =
        |kind: &str, port: u16, request: &str| port_forward_stream(&conn, kind, port, request);
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
