//! WebSocket transports: remotecommand (`channel.k8s.io` and its
//! `base64`, `v4` and `v5` variants) and port-forward (`v4` channels), as
//! the kubelet's wsstream serves them. Every message starts with its
//! channel number (base64 protocols: the channel as an ASCII digit, the
//! payload base64). Sent as binary messages (base64: text); taken as
//! either, as the kubelet's server takes them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::backend::{Backend, PortForwardRequest, StreamIo, TerminalSize};
use crate::remotecommand::{final_status, Version};
use crate::Operation;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: a message on this channel closes the channel named in its payload.
const CLOSE: u8 = 255;

/// Remotecommand protocols over WebSocket, most preferred first.
pub const REMOTECOMMAND_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
    "channel.k8s.io",
];

/// How long a WebSocket port-forward stays open for the client's last
/// bytes once every pod connection has ended (containerd: 1 s).
const PORT_CLOSED_GRACE: Duration = Duration::from_secs(1);

/// Port-forward protocols over WebSocket.
pub const PORTFORWARD_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
    "channel.k8s.io",
];

/// Frames to the client, serialised by one writer task.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Message>,
    base64: bool,
}

impl Outbox {
    async fn send(&self, channel: u8, payload: &[u8]) -> bool {
        let msg = if self.base64 {
            let mut text = String::with_capacity(1 + payload.len() * 4 / 3 + 4);
            text.push((b'0' + channel) as char);
            base64::engine::general_purpose::STANDARD.encode_string(payload, &mut text);
            Message::text(text)
        } else {
            let mut data = Vec::with_capacity(payload.len() + 1);
            data.push(channel);
            data.extend_from_slice(payload);
            Message::binary(data)
        };
        self.tx.send(msg).await.is_ok()
    }
}

/// The channel and payload of a client message. The protocol decides how
/// a message is read, not its frame type: the kubelet's server takes text
/// and binary messages alike, and clients send both (the Kubernetes Python
/// client writes a `str` to stdin as a text message).
fn decode(msg: Message, base64: bool) -> Option<(u8, Vec<u8>)> {
    let data: &[u8] = match &msg {
        Message::Binary(data) => data,
        Message::Text(text) => text.as_bytes(),
        _ => return None,
    };
    let (&first, rest) = data.split_first()?;
    if base64 {
        let channel = first.checked_sub(b'0')?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        Some((channel, payload))
    } else {
        Some((first, rest.to_vec()))
    }
}

/// Copies what `reader` yields onto `channel` until it ends.
fn pump(
    mut reader: impl AsyncRead + Unpin + Send + 'static,
    outbox: Outbox,
    channel: u8,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !outbox.send(channel, &buf[..n]).await {
                        break;
                    }
                    crate::relay::moved();
                }
            }
        }
    })
}

fn split<S>(
    ws: WebSocketStream<S>,
    base64: bool,
) -> (
    Outbox,
    futures_util::stream::SplitStream<WebSocketStream<S>>,
    tokio::task::JoinHandle<()>,
)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let closing = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    (Outbox { tx, base64 }, source, writer)
}

/// Exec or attach over a WebSocket, then the status on the error channel.
pub async fn remotecommand<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    op: Operation,
    backend: Arc<dyn Backend>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = Version::from_protocol(protocol).unwrap_or(Version::V1);
    let (outbox, mut source, writer) = split(ws, protocol.contains("base64"));
    let (tty, want_stdin, want_stdout, want_stderr) = match &op {
        Operation::Exec(r) => (r.tty, r.stdin, r.stdout, r.stderr),
        Operation::Attach(r) => (r.tty, r.stdin, r.stdout, r.stderr),
        Operation::PortForward(_) => unreachable!("port-forward has its own transport"),
    };
    let want_stderr = want_stderr && !tty;
    // The kubelet announces every channel it writes with an empty message.
    for (on, channel) in [(want_stdout, STDOUT), (want_stderr, STDERR), (true, ERROR)] {
        if on {
            outbox.send(channel, &[]).await;
        }
    }
    let mut io = StreamIo::default();
    let mut stdin_writer = None;
    if want_stdin {
        let (w, r) = tokio::io::duplex(64 * 1024);
        io.stdin = Some(Box::new(r));
        stdin_writer = Some(w);
    }
    let mut pumps = Vec::new();
    for (on, channel) in [(want_stdout, STDOUT), (want_stderr, STDERR)] {
        if on {
            let (w, r) = tokio::io::duplex(64 * 1024);
            pumps.push(pump(r, outbox.clone(), channel));
            if channel == STDOUT {
                io.stdout = Some(Box::new(w));
            } else {
                io.stderr = Some(Box::new(w));
            }
        }
    }
    let mut resize_tx = None;
    if tty {
        let (tx, rx) = mpsc::channel(8);
        io.resize = Some(rx);
        resize_tx = Some(tx);
    }
    let base64 = outbox.base64;
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, payload)) = decode(msg, base64) else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(w) = stdin_writer.as_mut() {
                        if w.write_all(&payload).await.is_err() {
                            stdin_writer = None;
                        }
                    }
                }
                RESIZE => {
                    if let (Some(tx), Ok(size)) = (
                        resize_tx.as_ref(),
                        serde_json::from_slice::<TerminalSize>(&payload),
                    ) {
                        let _ = tx.try_send(size);
                    }
                }
                CLOSE if version >= Version::V5 && payload.first() == Some(&STDIN) => {
                    stdin_writer = None;
                }
                _ => {}
            }
        }
    });
    let session = async {
        match &op {
            Operation::Exec(r) => backend.exec(r, io).await,
            Operation::Attach(r) => backend.attach(r, io).await.map(|()| 0),
            Operation::PortForward(_) => unreachable!(),
        }
    };
    tokio::pin!(session);
    let result = tokio::select! {
        result = &mut session => result,
        _ = &mut reader => {
            // The client is gone (it closed, its connection failed or was
            // idle past the timeout): the connection is closed now, not
            // when the process ends; the process's output finds no reader.
            writer.abort();
            session.await
        }
    };
    // Output the process wrote before it ended is delivered first.
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    if let Some(status) = final_status(version, &result) {
        outbox.send(ERROR, &status).await;
    }
    let _ = outbox
        .tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(outbox);
    reader.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Port-forward over a WebSocket: for the i-th port (`ports`), data on
/// channel 2i and errors on 2i+1, each opened with the port (little
/// endian) as the kubelet's v4 protocol does.
pub async fn portforward<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    req: PortForwardRequest,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (outbox, mut source, writer) = split(ws, protocol.contains("base64"));
    let mut senders: Vec<Option<tokio::io::WriteHalf<tokio::net::TcpStream>>> = Vec::new();
    let mut pumps = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        outbox.send(data, &port.to_le_bytes()).await;
        outbox.send(error, &port.to_le_bytes()).await;
        let conn = if !req.allows(*port) {
            Err(format!("port {port} was not requested for this pod"))
        } else {
            backend.port_forward(&req.pod_id, *port).await
        };
        match conn {
            Ok(conn) => {
                let (r, w) = tokio::io::split(conn);
                pumps.push(pump(r, outbox.clone(), data));
                senders.push(Some(w));
            }
            Err(e) => {
                let msg = format!("error forwarding port {port} to pod {}: {e}", req.pod_id);
                outbox.send(error, msg.as_bytes()).await;
                senders.push(None);
            }
        }
    }
    let base64 = outbox.base64;
    // The connection carries one connection per port and has no
    // half-close: it ends once every port's pod side has ended (or never
    // opened), as the kubelet's server ends it, or when the client goes.
    let pumps_abort: Vec<_> = pumps.iter().map(|p| p.abort_handle()).collect();
    let any_connected = !pumps.is_empty();
    let pods_done = futures_util::future::join_all(pumps);
    tokio::pin!(pods_done);
    let grace = tokio::time::sleep(PORT_CLOSED_GRACE);
    tokio::pin!(grace);
    let mut in_grace = false;
    loop {
        tokio::select! {
            msg = source.next() => {
                let Some(Ok(msg)) = msg else { break };
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                let Some((channel, payload)) = decode(msg, base64) else {
                    continue;
                };
                if channel % 2 == 0 {
                    if let Some(Some(w)) = senders.get_mut(channel as usize / 2) {
                        if w.write_all(&payload).await.is_err() {
                            senders[channel as usize / 2] = None;
                        }
                        crate::relay::moved();
                    }
                }
            }
            _ = &mut pods_done, if !in_grace => {
                if !any_connected {
                    break;
                }
                // What the client sends meanwhile still reaches the pods,
                // as containerd's forwarding waits for the other direction.
                grace.as_mut().reset(tokio::time::Instant::now() + PORT_CLOSED_GRACE);
                in_grace = true;
            }
            () = &mut grace, if in_grace => break,
        }
    }
    for s in senders.iter_mut().flatten() {
        let _ = s.shutdown().await;
    }
    for p in pumps_abort {
        p.abort();
    }
    drop(outbox);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

#[cfg(test)]
mod tests {
    use super::decode;
    use tokio_tungstenite::tungstenite::Message;

    #[test]
    fn a_message_is_read_by_the_protocol_not_by_its_frame_type() {
        let raw = |m| decode(m, false);
        assert_eq!(
            raw(Message::binary(b"\x00hi".to_vec())),
            Some((0, b"hi".to_vec()))
        );
        assert_eq!(raw(Message::text("\u{0}hi")), Some((0, b"hi".to_vec())));
        assert_eq!(raw(Message::binary(vec![4])), Some((4, vec![])));
        let b64 = |m| decode(m, true);
        assert_eq!(b64(Message::text("0aGk=")), Some((0, b"hi".to_vec())));
        assert_eq!(
            b64(Message::binary(b"0aGk=".to_vec())),
            Some((0, b"hi".to_vec()))
        );
        assert_eq!(b64(Message::text("0not base64!")), None);
        assert_eq!(b64(Message::text("\u{1}aGk=")), None);
        for empty in [Message::binary(Vec::new()), Message::text("")] {
            assert_eq!(decode(empty, false), None);
        }
        assert_eq!(raw(Message::Ping(vec![1].into())), None);
    }
}
