//! Dialling the streaming server and the HTTP/1.1 upgrade to SPDY/3.1, and
//! the client's side of the upgraded connection (see [`Transport`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use berth_spdy::{Connection, Headers, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The client's side of an upgraded connection: first the bytes read past
/// the HTTP response head, then the socket; what the server sends passes
/// frame by frame (SPDY/3 framing: 8-byte headers with a 24-bit length),
/// so that one frame can be rewritten.
///
/// The rewrite gives berth-spdy the semantics of moby/spdystream, the
/// client kubectl uses: a RST_STREAM(CANCEL) from the server ends a stream
/// after the data that came before it. The kubelet's streaming server
/// (containerd's CRI plugin) writes the exit status and then closes its
/// connection with apimachinery's `connection.Close()`, which resets every
/// stream at once; spdystream still delivers the status it buffered,
/// berth-spdy drops a reset stream's unread data. So a CANCEL on a stream
/// the server had not finished becomes an empty DATA frame with FIN (the
/// reader gets the buffered bytes, then EOF), and one on a finished stream
/// is dropped. Other RST_STREAM statuses pass unchanged. `cancels` counts
/// the rewrites.
pub(crate) struct Transport {
    frames: Rewriter,
    /// How much of `frames.out` berth-spdy has read.
    out_pos: usize,
    io: TcpStream,
    pub(crate) cancels: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The frame-by-frame rewrite of [`Transport`].
#[derive(Default)]
struct Rewriter {
    /// Bytes ready for berth-spdy.
    out: Vec<u8>,
    /// Bytes of an incomplete frame.
    partial: Vec<u8>,
    /// Streams the server has finished (FIN seen).
    finished: std::collections::HashSet<u32>,
    cancels: usize,
}

const FLAG_FIN: u8 = 0x01;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const HEADERS: u16 = 8;

impl Transport {
    /// `head`: what was read past the HTTP response head.
    pub(crate) fn new(head: Vec<u8>, io: TcpStream) -> Transport {
        let mut frames = Rewriter::default();
        frames.received(&head);
        Transport {
            frames,
            out_pos: 0,
            io,
            cancels: Default::default(),
        }
    }
}

impl Rewriter {
    /// Adds what the server sent: complete frames go to `out`, rewritten.
    fn received(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let mut at = 0;
        while self.partial.len() - at >= 8 {
            let h = &self.partial[at..at + 8];
            let len = usize::from(h[5]) << 16 | usize::from(h[6]) << 8 | usize::from(h[7]);
            if self.partial.len() - at < 8 + len {
                break;
            }
            let frame = self.partial[at..at + 8 + len].to_vec();
            at += 8 + len;
            self.pass(frame);
        }
        self.partial.drain(..at);
    }

    fn pass(&mut self, frame: Vec<u8>) {
        let word = |b: &[u8]| u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]);
        let flags = frame[4];
        if frame[0] & 0x80 == 0 {
            // DATA: the stream id in the header
            if flags & FLAG_FIN != 0 {
                self.finished.insert(word(&frame[0..4]));
            }
            self.out.extend_from_slice(&frame);
            return;
        }
        let kind = u16::from_be_bytes([frame[2], frame[3]]);
        match kind {
            SYN_REPLY | HEADERS if frame.len() >= 12 && flags & FLAG_FIN != 0 => {
                self.finished.insert(word(&frame[8..12]));
            }
            RST_STREAM if frame.len() >= 16 => {
                let id = word(&frame[8..12]);
                let status = u32::from_be_bytes([frame[12], frame[13], frame[14], frame[15]]);
                if status == berth_spdy::RstStatus::Cancel.code() {
                    self.cancels += 1;
                    if self.finished.insert(id) {
                        // an empty DATA frame with FIN
                        self.out.extend_from_slice(&id.to_be_bytes());
                        self.out.extend_from_slice(&[FLAG_FIN, 0, 0, 0]);
                    }
                    return;
                }
            }
            _ => {}
        }
        self.out.extend_from_slice(&frame);
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.frames.out.len() {
                let n = (this.frames.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.frames.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.frames.out.len() {
                    this.frames.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 << 10];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    this.frames.received(rb.filled());
                    this.cancels
                        .store(this.frames.cancels, std::sync::atomic::Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `http://host:port/path` -> (host:port, /path).
pub(crate) fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("URL {url:?}: only http:// is supported here"))?;
    let slash = rest.find('/').unwrap_or(rest.len());
    let path = if slash == rest.len() {
        "/"
    } else {
        &rest[slash..]
    };
    Ok((&rest[..slash], path))
}

pub(crate) async fn dial(host: &str) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect(host)
        .await
        .map_err(|e| format!("connecting to {host}: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(tcp)
}

/// The HTTP/1.1 upgrade to SPDY/3.1 offering `protocol`, as kubectl sends
/// it: the transport and the protocol the server chose.
pub(crate) async fn spdy_upgrade(url: &str, protocol: &str) -> Result<Transport, String> {
    let (host, path) = split_url(url)?;
    let mut tcp = dial(host).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-cri-bench\r\n\
         Content-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {protocol}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending the upgrade: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return Err("the upgrade's response head is over 64 KiB".into());
        }
        let mut chunk = [0u8; 2048];
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the upgrade's response: {e}"))?;
        if n == 0 {
            return Err(format!(
                "the server closed the connection during the upgrade: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("the upgrade was refused: {head:?}"));
    }
    let chosen = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-stream-protocol-version"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    if chosen != protocol {
        return Err(format!(
            "the server chose protocol {chosen:?}, not {protocol:?}: {head:?}"
        ));
    }
    Ok(Transport::new(buf[end..].to_vec(), tcp))
}

/// Opens a stream and waits for the server's SYN_REPLY, as apimachinery's
/// CreateStream does.
pub(crate) async fn open_stream(conn: &Connection, headers: Headers) -> Result<Stream, String> {
    let kind = headers.get("streamtype").unwrap_or("?").to_owned();
    let s = conn
        .open(headers, false)
        .map_err(|e| format!("opening the {kind} stream: {e}"))?;
    s.wait_reply()
        .await
        .map_err(|e| format!("the {kind} stream's reply: {e}"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::Rewriter;

    fn data(id: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = id.to_be_bytes().to_vec();
        f.push(u8::from(fin));
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(payload);
        f
    }

    fn rst(id: u32, status: u32) -> Vec<u8> {
        let mut f = vec![0x80, 3, 0, 3, 0, 0, 0, 8];
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&status.to_be_bytes());
        f
    }

    /// A CANCEL after data ends the stream after it (an empty DATA with
    /// FIN), one after a FIN is dropped, other statuses pass; frames split
    /// across reads are put together first.
    #[test]
    fn a_cancel_ends_a_stream_after_its_data() {
        let mut input = data(1, false, b"status");
        input.extend(rst(1, 5));
        input.extend(data(3, true, b"out"));
        input.extend(rst(3, 5));
        input.extend(rst(5, 1));
        let mut r = Rewriter::default();
        let (a, b) = input.split_at(11);
        r.received(a);
        assert_eq!(r.out, b"");
        r.received(b);
        let mut want = data(1, false, b"status");
        want.extend(data(1, true, b""));
        want.extend(data(3, true, b"out"));
        want.extend(rst(5, 1));
        assert_eq!(r.out, want);
        assert_eq!(r.cancels, 2);
    }
}
