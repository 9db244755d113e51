//! kubectl exec's last leg, as apimachinery's SPDY executor does it: the
//! URL from the Exec RPC, an HTTP/1.1 upgrade to SPDY/3.1 with
//! `v4.channel.k8s.io`, then the error, stdin, stdout and stderr streams.
//! Against containerd's streaming server (moby/spdystream, Go's zlib) it
//! shows berth's SPDY client is read right: its header blocks (stored,
//! as zlib writes them at level 0) name each stream.

use std::time::Duration;

use berth_spdy::{Config, Connection, Error, Headers, RstStatus, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one exec printed on stdout and stderr, and its v4 status.
pub struct Exec {
    pub stdout: String,
    pub stderr: String,
    pub status: serde_json::Value,
}

/// Runs the exec behind `url`, writing `stdin` and closing it.
pub fn exec(url: &str, stdin: &[u8]) -> Result<Exec, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), exec_async(url, stdin))
            .await
            .map_err(|_| format!("exec over SPDY at {url}: no end within 10 s"))?
    })
}

async fn exec_async(url: &str, stdin: &[u8]) -> Result<Exec, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let (host, path) = rest.split_once('/').ok_or("no path in the URL")?;
    let mut tcp = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("connecting to {host}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("the upgrade was refused: {head}"));
    }
    let conn = Connection::client(tcp, Config::kubernetes());
    let open = |kind: &str| {
        conn.open(Headers::new().with("streamType", kind), false)
            .map_err(|e| format!("opening the {kind} stream: {e}"))
    };
    // Each opened once the previous one is accepted, as CreateStream waits.
    let mut streams = Vec::new();
    for kind in ["error", "stdin", "stdout", "stderr"] {
        let stream = open(kind)?;
        stream
            .wait_reply()
            .await
            .map_err(|e| format!("the {kind} stream was not accepted: {e}"))?;
        streams.push(stream);
    }
    let [error, mut input, stdout, stderr]: [Stream; 4] =
        streams.try_into().map_err(|_| "four streams")?;
    input.write_all(stdin).await.map_err(|e| e.to_string())?;
    input.shutdown().await.map_err(|e| e.to_string())?;
    // containerd ends the exec with RST_STREAM(CANCEL) on a stream, after
    // its data: spdystream, kubectl's side, takes that as the end.
    let read_all = |s: Stream| async move {
        let (mut r, _w) = s.split();
        let mut v = Vec::new();
        match r.read_to_end(&mut v).await {
            Ok(_) => Ok(v),
            Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
                Some(Error::RemoteReset {
                    status: RstStatus::Cancel,
                    ..
                }) => Ok(v),
                _ => Err(e),
            },
        }
    };
    let (out, err, status) = tokio::join!(read_all(stdout), read_all(stderr), read_all(error));
    let text = |v: std::io::Result<Vec<u8>>| {
        v.map(|v| String::from_utf8_lossy(&v).into_owned())
            .map_err(|e| e.to_string())
    };
    let status = text(status)?;
    Ok(Exec {
        stdout: text(out)?,
        stderr: text(err)?,
        status: serde_json::from_str(&status)
            .map_err(|e| format!("the error stream is not a status ({e}): {status:?}"))?,
    })
}
