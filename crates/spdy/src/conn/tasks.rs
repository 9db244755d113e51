//! The connection's two tasks: the reader decodes frames and hands them to
//! [`Shared::handle`]; the writer owns the header compressor and writes
//! queued frames in order.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::shared::{Cmd, Shared};
use super::Error;
use crate::frame::{Decoder, Encoder, Frame, FrameHead, GoAwayStatus, HEADER_LEN};

pub(super) async fn reader_task<R: AsyncRead + Unpin>(shared: Arc<Shared>, r: R) {
    let mut stop = shared.stop.subscribe();
    let result = tokio::select! {
        result = read_loop(&shared, r) => result,
        _ = stop.wait_for(|stop| *stop) => Ok(()),
    };
    match result {
        Ok(()) => shared.terminate(None),
        Err(e) => {
            log::debug!("SPDY reader: {e}");
            if matches!(e, Error::Frame(_) | Error::Protocol(_)) {
                let last = shared.lock().last_peer_id;
                shared.send(Cmd::Frame(Frame::GoAway {
                    last_good_stream_id: last,
                    status: GoAwayStatus::ProtocolError,
                }));
            }
            shared.terminate(Some(e));
        }
    }
    shared.send(Cmd::Close);
}

async fn read_loop<R: AsyncRead + Unpin>(shared: &Arc<Shared>, r: R) -> Result<(), Error> {
    let mut r = BufReader::with_capacity(32 << 10, r);
    let mut decoder = Decoder::new(shared.config.limits);
    loop {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = r.read(&mut head[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(());
                }
                return Err(Error::Protocol(
                    "the connection ended inside a frame header".into(),
                ));
            }
            got += n;
        }
        let head = FrameHead::parse(head);
        decoder.check_head(&head)?;
        let mut payload = vec![0u8; head.length as usize];
        r.read_exact(&mut payload).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Protocol("the connection ended inside a frame".into())
            } else {
                Error::from(e)
            }
        })?;
        let frame = if !head.control && head.stream_id != 0 {
            // Spare DATA a copy.
            Frame::Data {
                stream_id: head.stream_id,
                fin: head.flags & crate::frame::FLAG_FIN != 0,
                data: payload,
            }
        } else {
            decoder.decode_payload(&head, &payload)?
        };
        shared.handle(frame).await?;
    }
}

pub(super) async fn writer_task<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut stop = shared.stop.subscribe();
    let result = tokio::select! {
        result = write_loop(&shared, &mut w, &mut rx) => Some(result),
        // Aborted: the transport may be stuck, so it is only dropped.
        _ = stop.wait_for(|stop| *stop) => None,
    };
    match result {
        Some(Ok(())) => {
            let _ = w.shutdown().await;
            shared.terminate(None);
            shared.stop.send_replace(true);
        }
        Some(Err(e)) => {
            // The peer may have closed its side after its last frames: what
            // it sent is still in the transport, and readers are owed it.
            // The reader ends the connection at the transport's end; a peer
            // that never ends it is cut off after a grace period.
            log::debug!("SPDY writer: {e}");
            let mut ended = shared.ended.subscribe();
            tokio::select! {
                _ = ended.wait_for(|ended| *ended) => {}
                _ = stop.wait_for(|stop| *stop) => {}
                _ = tokio::time::sleep(WRITE_FAILURE_GRACE) => {}
            }
            shared.terminate(Some(e));
            shared.stop.send_replace(true);
        }
        None => {}
    }
}

/// How long a connection whose writes fail waits for its reader to reach
/// the end of what the peer sent.
const WRITE_FAILURE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    w: &mut W,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Result<(), Error> {
    let mut encoder = Encoder::new();
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        buf.clear();
        let (mut data_bytes, mut slots, mut close) = (0, 0, false);
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Frame(frame) => encoder.encode(&frame, &mut buf)?,
                Cmd::Counted(frame) => {
                    slots += 1;
                    encoder.encode(&frame, &mut buf)?;
                }
                Cmd::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    data_bytes += data.len();
                    encoder.encode(
                        &Frame::Data {
                            stream_id,
                            fin,
                            data,
                        },
                        &mut buf,
                    )?;
                }
                Cmd::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < 64 << 10 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            w.flush().await?;
        }
        shared.wrote(data_bytes, slots);
        if close {
            break;
        }
    }
    Ok(())
}
