//! SPDY/3.1 transports (the kubelet's and kubectl's default): remotecommand
//! with one stream per channel named by its `streamType` header, and
//! port-forward with a data and an error stream per `requestID`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_spdy::{Config, Connection, Headers, RstStatus, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::backend::{Backend, PortForwardRequest, StreamIo, TerminalSize};
use crate::remotecommand::{final_status, Version};
use crate::Operation;

/// Remotecommand protocols over SPDY, most preferred first.
pub const REMOTECOMMAND_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

pub const PORTFORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// Reads the resize stream's JSON objects, one after another.
fn resizes(mut stream: impl AsyncRead + Unpin + Send + 'static) -> mpsc::Receiver<TerminalSize> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let mut de = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
            let mut used = 0;
            while let Some(Ok(size)) = de.next() {
                used = de.byte_offset();
                if tx.send(size).await.is_err() {
                    return;
                }
            }
            buf.drain(..used);
        }
    });
    rx
}

/// Exec or attach over SPDY, then the status on the error stream.
pub async fn remotecommand<T>(
    io: T,
    protocol: &str,
    op: Operation,
    creation_timeout: Duration,
    backend: Arc<dyn Backend>,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let version = Version::from_protocol(protocol).unwrap_or(Version::V1);
    let conn = Connection::server(io, Config::kubernetes());
    let (tty, want_stdin, want_stdout, want_stderr) = match &op {
        Operation::Exec(r) => (r.tty, r.stdin, r.stdout, r.stderr),
        Operation::Attach(r) => (r.tty, r.stdin, r.stdout, r.stderr),
        Operation::PortForward(_) => unreachable!("port-forward has its own transport"),
    };
    let mut expected = 1 + usize::from(want_stdin) + usize::from(want_stdout);
    expected += usize::from(want_stderr && !tty);
    expected += usize::from(tty && version.has_resize());
    let mut streams: HashMap<String, Stream> = HashMap::new();
    let deadline = tokio::time::Instant::now() + creation_timeout;
    while streams.len() < expected {
        let Ok(Some(stream)) = tokio::time::timeout_at(deadline, conn.accept()).await else {
            tracing::debug!(
                "SPDY remotecommand: the client opened {} of {expected} streams",
                streams.len()
            );
            conn.close();
            return;
        };
        let Some(kind) = stream.headers().get("streamtype").map(str::to_owned) else {
            stream.reset(RstStatus::ProtocolError);
            continue;
        };
        if stream.reply(Headers::new(), false).is_err() {
            return;
        }
        streams.insert(kind, stream);
    }
    let mut io = StreamIo::default();
    let mut finish = Vec::new();
    if let Some(s) = streams.remove("stdin") {
        let (recv, send) = s.split();
        io.stdin = Some(Box::new(recv));
        finish.push(send);
    }
    for (name, is_stdout) in [("stdout", true), ("stderr", false)] {
        if let Some(s) = streams.remove(name) {
            let (_recv, send) = s.split();
            if is_stdout {
                io.stdout = Some(Box::new(send));
            } else {
                io.stderr = Some(Box::new(send));
            }
        }
    }
    if let Some(s) = streams.remove("resize") {
        let (recv, send) = s.split();
        io.resize = Some(resizes(recv));
        finish.push(send);
    }
    let result = match &op {
        Operation::Exec(r) => backend.exec(r, io).await,
        Operation::Attach(r) => backend.attach(r, io).await.map(|()| 0),
        Operation::PortForward(_) => unreachable!(),
    };
    if let Some(error) = streams.remove("error") {
        let (_recv, mut send) = error.split();
        if let Some(status) = final_status(version, &result) {
            let _ = send.write_all(&status).await;
        }
        let _ = send.shutdown().await;
    }
    for mut s in finish {
        let _ = s.shutdown().await;
    }
    conn.close();
}

/// Port-forward over SPDY: streams come in pairs (error, data) sharing a
/// `requestID`; each data stream is relayed to a connection to its port
/// in the pod; a port that cannot be reached is reported on the pair's
/// error stream, and only that pair ends. A pair whose data stream does
/// not come within `creation_timeout` is ended the same way, with its
/// connection to the pod, as the kubelet's server does.
///
/// kubectl opens a pair's error stream first and its data stream after
/// the error stream's reply, a round trip later; the connection to the pod
/// is started when the first stream of the pair arrives, so that round
/// trip and the pod's accept overlap.
pub async fn portforward<T>(
    io: T,
    req: PortForwardRequest,
    creation_timeout: Duration,
    backend: Arc<dyn Backend>,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let conn = Connection::server(io, Config::kubernetes());
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    loop {
        let accepted = match pairs.values().map(|p| p.deadline).min() {
            None => conn.accept().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, conn.accept()).await {
                Ok(accepted) => accepted,
                Err(_) => {
                    end_incomplete_pairs(&mut pairs, creation_timeout);
                    continue;
                }
            },
        };
        let Some(stream) = accepted else { break };
        // kubectl opens the pair's other stream as soon as this one's
        // reply reaches it.
        crate::relay::moved();
        let headers = stream.headers();
        let kind = headers.get("streamtype").map(str::to_owned);
        let request = headers.get("requestid").map(str::to_owned);
        let port = headers.get("port").and_then(|p| p.parse::<u16>().ok());
        let (Some(kind), Some(request), Some(port)) = (kind, request, port) else {
            stream.reset(RstStatus::ProtocolError);
            continue;
        };
        if kind != "error" && kind != "data" {
            stream.reset(RstStatus::ProtocolError);
            continue;
        }
        // The connection to the pod starts before the reply is written:
        // it is the longer way (the pod has yet to accept and answer), and
        // this thread runs its tasks in the order they were woken.
        let mut pair = pairs
            .remove(&request)
            .unwrap_or_else(|| Pair::new(port, &req, &backend, creation_timeout));
        if stream.reply(Headers::new(), false).is_err() {
            break;
        }
        if kind == "error" {
            pair.error = Some(stream);
            pairs.insert(request, pair);
            continue;
        }
        if pair.port != port {
            stream.reset(RstStatus::ProtocolError);
            continue;
        }
        let pod_id = req.pod_id.clone();
        tokio::spawn(async move {
            let target = match pair.connecting.await {
                Ok(result) => result,
                Err(e) => Err(format!("connecting: {e}")),
            };
            forward(stream, pair.error, port, &pod_id, target).await;
        });
    }
}

/// Ends the pairs whose data stream is overdue: the reason on the error
/// stream, and the connection to the pod, made or under way, closed.
fn end_incomplete_pairs(pairs: &mut HashMap<String, Pair>, creation_timeout: Duration) {
    let now = tokio::time::Instant::now();
    let overdue: Vec<String> = pairs
        .iter()
        .filter(|(_, p)| p.deadline <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for id in overdue {
        let Some(pair) = pairs.remove(&id) else {
            continue;
        };
        pair.connecting.abort();
        tracing::debug!("port-forward request {id}: no data stream within {creation_timeout:?}");
        if let Some(error) = pair.error {
            tokio::spawn(async move {
                let (_r, mut w) = error.split();
                let msg = format!(
                    "timed out waiting for streams: request {id} opened no data stream within {}s",
                    creation_timeout.as_secs_f64()
                );
                let _ = w.write_all(msg.as_bytes()).await;
                let _ = w.shutdown().await;
            });
        }
    }
}

/// The streams of one `requestID` seen so far, and its connection to the
/// pod, under way since the pair's first stream.
struct Pair {
    port: u16,
    error: Option<Stream>,
    connecting: tokio::task::JoinHandle<Result<TcpStream, String>>,
    /// When the pair's first stream is given up on if the other has not come.
    deadline: tokio::time::Instant,
}

impl Pair {
    fn new(
        port: u16,
        req: &PortForwardRequest,
        backend: &Arc<dyn Backend>,
        creation_timeout: Duration,
    ) -> Pair {
        let allowed = req.allows(port);
        let backend = Arc::clone(backend);
        let pod_id = req.pod_id.clone();
        let connecting = tokio::spawn(async move {
            if !allowed {
                return Err(format!("port {port} was not requested for this pod"));
            }
            backend.port_forward(&pod_id, port).await
        });
        Pair {
            port,
            error: None,
            connecting,
            deadline: tokio::time::Instant::now() + creation_timeout,
        }
    }
}

async fn forward(
    data: Stream,
    error: Option<Stream>,
    port: u16,
    pod_id: &str,
    target: Result<TcpStream, String>,
) {
    let (mut from_client, mut to_client) = data.split();
    match target {
        Ok(target) => {
            let (mut from_target, mut to_target) = target.into_split();
            let up = async {
                let _ = crate::relay::copy(&mut from_client, &mut to_target).await;
                let _ = to_target.shutdown().await;
            };
            let down = async {
                let _ = crate::relay::copy(&mut from_target, &mut to_client).await;
                let _ = to_client.shutdown().await;
            };
            tokio::join!(up, down);
        }
        Err(e) => {
            if let Some(error) = error {
                let (_r, mut w) = error.split();
                let msg = format!("error forwarding port {port} to pod {pod_id}: {e}");
                let _ = w.write_all(msg.as_bytes()).await;
                let _ = w.shutdown().await;
            }
            let _ = to_client.shutdown().await;
            return;
        }
    }
    if let Some(error) = error {
        let (_r, mut w) = error.split();
        let _ = w.shutdown().await;
    }
}
