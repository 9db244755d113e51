//! containerd/nri's connection multiplexer (`pkg/net/multiplex`).
//!
//! One unix connection (the trunk) carries several logical connections.
//! Every write on a logical connection becomes one frame on the trunk:
//!
//! ```text
//! [conn id: u32 big-endian][payload length: u32 big-endian][payload]
//! ```
//!
//! Connection 0 is reserved; NRI uses [`PLUGIN_SERVICE_CONN`] (1) for the
//! ttrpc service the plugin serves and the runtime calls, and
//! [`RUNTIME_SERVICE_CONN`] (2) for the service the runtime serves and the
//! plugin calls. Opening a logical connection sends nothing: both ends just
//! agree on the ids. A payload is at most [`MAX_PAYLOAD`] bytes (a ttrpc
//! header and its largest message), and frames for an id nobody opened are
//! dropped, as the Go implementation does.
//!
//! Here each logical connection is handed out as one end of an in-memory
//! byte pipe (`tokio::io::DuplexStream`), which ttrpc takes as its socket;
//! two tasks copy between the pipes and the trunk.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// The logical connection of the plugin's `Plugin` service (the runtime is
/// the ttrpc client there).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// The logical connection of the runtime's `Runtime` service (the plugin is
/// the ttrpc client there).
pub const RUNTIME_SERVICE_CONN: u32 = 2;
/// Bytes of a frame header: connection id and payload length.
pub const HEADER_LEN: usize = 8;
/// The largest payload of one frame: a ttrpc message header (10 bytes) and
/// ttrpc's largest message (4 MiB).
pub const MAX_PAYLOAD: usize = 10 + (4 << 20);

/// The capacity of each in-memory pipe between ttrpc and the trunk.
const PIPE_CAPACITY: usize = 1 << 20;
/// The most bytes read from a pipe into one outgoing frame.
const CHUNK: usize = 64 << 10;

/// Encodes one frame.
///
/// # Errors
/// `payload` is longer than [`MAX_PAYLOAD`].
pub fn encode_frame(conn: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "mux frame payload of {} bytes is over {MAX_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&conn.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Decodes a frame header into (connection id, payload length).
pub fn decode_header(header: [u8; HEADER_LEN]) -> (u32, usize) {
    let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    (conn, len as usize)
}

/// Reads one frame; `None` at a clean end of stream between frames.
///
/// # Errors
/// The stream ends inside a frame, fails, or announces a payload over
/// [`MAX_PAYLOAD`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(u32, Vec<u8>)>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "mux trunk closed inside a frame header",
            ));
        }
        got += n;
    }
    let (conn, len) = decode_header(header);
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("mux frame for connection {conn} announces {len} bytes, over {MAX_PAYLOAD}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((conn, payload)))
}

/// A multiplexed trunk. Dropping it (or [`Mux::close`]) closes the trunk and
/// every logical connection.
pub struct Mux {
    tasks: Vec<JoinHandle<()>>,
    closed: watch::Receiver<bool>,
}

impl Mux {
    /// Starts multiplexing `trunk` and returns the logical connections
    /// `ids`, each as the ttrpc side of an in-memory pipe.
    pub fn new<T>(trunk: T, ids: &[u32]) -> (Mux, HashMap<u32, DuplexStream>)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut trunk_r, trunk_w) = tokio::io::split(trunk);
        let trunk_w = Arc::new(Mutex::new(trunk_w));
        let (closed_tx, closed_rx) = watch::channel(false);
        let closed_tx = Arc::new(closed_tx);
        let mut handed = HashMap::new();
        let mut inbound = HashMap::new();
        let mut tasks = Vec::new();
        for &id in ids {
            let (ttrpc_side, mux_side) = tokio::io::duplex(PIPE_CAPACITY);
            handed.insert(id, ttrpc_side);
            let (mut from_ttrpc, to_ttrpc) = tokio::io::split(mux_side);
            inbound.insert(id, to_ttrpc);
            let trunk_w = trunk_w.clone();
            let closed_tx = closed_tx.clone();
            // ttrpc → trunk: each read becomes one frame.
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = match from_ttrpc.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let frame = match encode_frame(id, &buf[..n]) {
                        Ok(f) => f,
                        Err(_) => break,
                    };
                    let mut w = trunk_w.lock().await;
                    if w.write_all(&frame).await.is_err() || w.flush().await.is_err() {
                        break;
                    }
                }
                let _ = closed_tx.send(true);
            }));
        }
        // trunk → ttrpc: frames are routed by connection id.
        let closed_reader = closed_tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match read_frame(&mut trunk_r).await {
                    Ok(Some((id, payload))) => {
                        if let Some(w) = inbound.get_mut(&id) {
                            if w.write_all(&payload).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("nri: mux trunk read failed: {e}");
                        break;
                    }
                }
            }
            // Shutting the pipes' write halves down gives ttrpc its end of
            // stream (the halves alone would keep the pipes open).
            for (_, mut w) in inbound {
                let _ = w.shutdown().await;
            }
            let _ = closed_reader.send(true);
        }));
        (
            Mux {
                tasks,
                closed: closed_rx,
            },
            handed,
        )
    }

    /// Resolves once the trunk or a logical connection has closed.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether the trunk or a logical connection has closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Closes the trunk and every logical connection.
    pub fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout_is_id_then_length_big_endian() {
        let f = encode_frame(2, b"hello").unwrap();
        assert_eq!(f, [0, 0, 0, 2, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let f = encode_frame(0x0102_0304, &[]).unwrap();
        assert_eq!(f, [1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(decode_header([0, 0, 0, 1, 0, 0, 1, 0]), (1, 256));
    }

    #[test]
    fn nri_connection_ids() {
        assert_eq!(PLUGIN_SERVICE_CONN, 1);
        assert_eq!(RUNTIME_SERVICE_CONN, 2);
    }

    #[test]
    fn oversized_payload_is_refused() {
        assert!(encode_frame(1, &vec![0; MAX_PAYLOAD]).is_ok());
        assert!(encode_frame(1, &vec![0; MAX_PAYLOAD + 1]).is_err());
    }

    #[tokio::test]
    async fn read_frame_round_trips_and_sees_clean_eof() {
        let mut bytes = encode_frame(1, b"abc").unwrap();
        bytes.extend(encode_frame(2, b"").unwrap());
        let mut r = &bytes[..];
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some((1, b"abc".to_vec()))
        );
        assert_eq!(read_frame(&mut r).await.unwrap(), Some((2, vec![])));
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_and_oversized_frames_are_errors() {
        let bytes = encode_frame(1, b"abcdef").unwrap();
        let mut r = &bytes[..5];
        assert!(read_frame(&mut r).await.is_err());
        let mut r = &bytes[..10];
        assert!(read_frame(&mut r).await.is_err());
        let mut huge = vec![0, 0, 0, 1];
        huge.extend(((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        let mut r = &huge[..];
        let e = read_frame(&mut r).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn logical_connections_are_framed_on_the_trunk_and_routed_back() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let (mux, mut conns) = Mux::new(ours, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
        let mut c1 = conns.remove(&PLUGIN_SERVICE_CONN).unwrap();
        let mut c2 = conns.remove(&RUNTIME_SERVICE_CONN).unwrap();

        // Writes on a logical connection leave as frames with its id.
        c2.write_all(b"to-runtime-peer").await.unwrap();
        let (id, payload) = read_frame(&mut theirs).await.unwrap().unwrap();
        assert_eq!((id, &payload[..]), (2, &b"to-runtime-peer"[..]));

        // Frames from the peer reach the right connection; a frame for an
        // unknown id is dropped without disturbing the others.
        theirs
            .write_all(&encode_frame(7, b"nobody").unwrap())
            .await
            .unwrap();
        theirs
            .write_all(&encode_frame(1, b"one").unwrap())
            .await
            .unwrap();
        theirs
            .write_all(&encode_frame(2, b"two").unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 3];
        c1.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"one");
        c2.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"two");

        // The peer closing the trunk ends every logical connection.
        assert!(!mux.is_closed());
        drop(theirs);
        let mut rest = Vec::new();
        c1.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        mux.closed().await;
        assert!(mux.is_closed());
    }
}
