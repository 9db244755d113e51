//! The client side of the streaming server, over WebSocket: exec and
//! attach (remotecommand v5, falling back to v4: stdin, stdout, stderr,
//! resize on SIGWINCH, the exit code from the status) and port-forward
//! (one WebSocket per accepted local connection).

use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How often a session pings the server, as kubectl does: a quiet session
/// (a shell nobody types in, a port-forward nobody uses) stays open across
/// the server's idle timeout (berthd's and containerd's `stream_idle_timeout`)
/// and any proxy's on the way.
const PING_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

fn ping_interval() -> tokio::time::Interval {
    let mut every =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every
}

/// Opens a WebSocket to a streaming URL with `protocols` (preferred
/// first); the protocol the server chose.
async fn connect(url: &str, protocols: &str) -> Result<(Ws, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("streaming URL {url:?}: only http:// URLs are supported"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let mut req = format!("ws://{rest}")
        .into_client_request()
        .with_context(|| format!("streaming URL {url:?}"))?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse()?);
    let tcp = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to the streaming server at {host}"))?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .with_context(|| format!("upgrading {url} to a WebSocket"))?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((ws, chosen))
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut data = Vec::with_capacity(payload.len() + 1);
    data.push(channel);
    data.extend_from_slice(payload);
    Message::binary(data)
}

/// The terminal of stdin in raw mode until dropped.
struct RawTerminal(Option<rustix::termios::Termios>);

impl RawTerminal {
    fn enable() -> RawTerminal {
        let stdin = std::io::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(&stdin) else {
            return RawTerminal(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        RawTerminal(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

fn terminal_size() -> Option<Vec<u8>> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    Some(format!(r#"{{"Width":{},"Height":{}}}"#, ws.ws_col, ws.ws_row).into_bytes())
}

/// Exec or attach at `url` with this process's stdio; the remote exit
/// code (attach: 0 unless the server reports a failure).
pub async fn remotecommand(url: &str, stdin: bool, tty: bool) -> Result<i32> {
    let (ws, protocol) = connect(url, "v5.channel.k8s.io, v4.channel.k8s.io").await?;
    let (mut sink, mut source) = ws.split();
    let raw = (tty && std::io::stdin().is_terminal()).then(RawTerminal::enable);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        let mut ping = ping_interval();
        // Pings go on after the last input (none at all without stdin),
        // until the session ends.
        let mut input_open = true;
        loop {
            let m = tokio::select! {
                m = rx.recv(), if input_open => match m {
                    Some(m) => m,
                    None => {
                        input_open = false;
                        continue;
                    }
                },
                _ = ping.tick() => Message::Ping(Vec::new().into()),
            };
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    if tty {
        if let Some(size) = terminal_size() {
            let _ = tx.send(frame(RESIZE, &size)).await;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(size) = terminal_size() {
                    if tx.send(frame(RESIZE, &size)).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    if stdin {
        let tx = tx.clone();
        let v5 = protocol == "v5.channel.k8s.io";
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(frame(STDIN, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if v5 {
                let _ = tx.send(Message::binary(vec![CLOSE, STDIN])).await;
            }
        });
    }
    drop(tx);
    let mut status = Vec::new();
    let mut failure = None;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(msg) = source.next().await {
        let data = match msg {
            Ok(Message::Binary(d)) => d,
            Ok(Message::Close(_)) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
            Ok(_) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            STDOUT => {
                stdout.write_all(payload).await?;
                stdout.flush().await?;
            }
            STDERR => {
                stderr.write_all(payload).await?;
                stderr.flush().await?;
            }
            ERROR => status.extend_from_slice(payload),
            _ => {}
        }
    }
    writer.abort();
    drop(raw);
    if status.is_empty() {
        // v4 and v5 always end with a status, success included.
        bail!(
            "the streaming connection ended before the command's exit status{}",
            failure.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    exit_code(&status)
}

/// The exit code a v4/v5 status carries.
fn exit_code(status: &[u8]) -> Result<i32> {
    let v: serde_json::Value = serde_json::from_slice(status)
        .map_err(|_| anyhow!("{}", String::from_utf8_lossy(status)))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode" {
        if let Some(code) = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
        {
            return Ok(code);
        }
    }
    bail!(
        "{}",
        v["message"].as_str().unwrap_or("the remote command failed")
    )
}

/// Forwards one local connection to `remote` through a new URL.
pub async fn forward_connection(
    url: &str,
    remote: u16,
    mut local: tokio::net::TcpStream,
) -> Result<()> {
    let (ws, _) = connect(&format!("{url}?port={remote}"), "v4.channel.k8s.io").await?;
    let (mut sink, mut source) = ws.split();
    let (mut rd, mut wr) = local.split();
    let mut seen_prefix = [false, false];
    let upstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        let mut ping = ping_interval();
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        break;
                    }
                    sink.send(frame(0, &buf[..n])).await?;
                }
                _ = ping.tick() => sink.send(Message::Ping(Vec::new().into())).await?,
            }
        }
        anyhow::Ok(())
    };
    let downstream = async {
        let mut error = Vec::new();
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Binary(d)) => d,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, mut payload)) = data.split_first() else {
                continue;
            };
            if channel > 1 {
                continue;
            }
            // Each channel starts with the port it is for.
            if !seen_prefix[channel as usize] {
                seen_prefix[channel as usize] = true;
                payload = payload.get(2..).unwrap_or_default();
            }
            if channel == 0 {
                wr.write_all(payload).await?;
            } else {
                error.extend_from_slice(payload);
                if !error.is_empty() {
                    bail!("{}", String::from_utf8_lossy(&error));
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
}
