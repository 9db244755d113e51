//! The port-forward measurement and its two floors (`direct`, `relay`):
//! the same echoes through a daemon's port-forward, straight to the pod,
//! and through bench/helpers/minimal-relay; see the `stream` module for
//! what each times.

use std::time::Instant;

use berth_spdy::{Config as SpdyConfig, Connection, Headers};
use k8s_cri::v1 as cri;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::opts::Opts;
use crate::stream::GRACE;
use crate::transport::{open_stream, spdy_upgrade};
use crate::{ms, rpc, Runtime};

const PORTFORWARD: &str = "portforward.k8s.io";

/// A payload of `size` bytes that differs from round to round.
fn payload(size: usize, round: usize) -> Vec<u8> {
    (0..size).map(|j| b'a' + ((round + j) % 26) as u8).collect()
}

/// `rtts` echoes of `size` bytes (payloads varied by `seed`), each timed
/// from the write to the last byte back and compared with what was sent.
async fn round_trips(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    rtts: usize,
    size: usize,
    seed: usize,
) -> Result<Vec<f64>, String> {
    let mut got = vec![0u8; size];
    let mut samples = Vec::with_capacity(rtts);
    for round in 1..=rtts {
        let p = payload(size, seed + round);
        let t = Instant::now();
        w.write_all(&p)
            .await
            .map_err(|e| format!("round trip {round}: writing: {e}"))?;
        r.read_exact(&mut got)
            .await
            .map_err(|e| format!("round trip {round}: reading: {e}"))?;
        samples.push(ms(t.elapsed()));
        if got != p {
            return Err(format!(
                "round trip {round}: the echo differs: sent {:?}, got {:?}",
                String::from_utf8_lossy(&p),
                String::from_utf8_lossy(&got)
            ));
        }
    }
    Ok(samples)
}

/// A floor under port-forward: the same echoes over a TCP connection to
/// `addr`, straight to the pod or through the minimal relay.
pub(crate) async fn echo_straight(o: &Opts, addr: std::net::SocketAddr) -> Result<Value, String> {
    let run = async {
        let t0 = Instant::now();
        let conn = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        conn.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let (mut r, mut w) = conn.into_split();
        let first = payload(o.payload, 0);
        let mut got = vec![0u8; first.len()];
        w.write_all(&first)
            .await
            .map_err(|e| format!("writing to {addr}: {e}"))?;
        r.read_exact(&mut got[..1])
            .await
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        let first_at = t0.elapsed();
        r.read_exact(&mut got[1..])
            .await
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        if got != first {
            return Err(format!("the first echo from {addr} differs"));
        }
        let samples = round_trips(&mut r, &mut w, o.rtts, o.payload, 0).await?;
        Ok(json!({"first_ms": ms(first_at), "rtt_ms": samples}))
    };
    tokio::time::timeout(o.rpc_timeout, run)
        .await
        .map_err(|_| format!("{addr}: not done within {} s", o.rpc_timeout.as_secs()))?
}

/// The port-forward measurement: first echoed byte, then `rtts` round
/// trips. `seed` varies the payloads.
pub(crate) async fn port_forward(
    o: &Opts,
    rt: &mut Runtime,
    rtts: usize,
    seed: usize,
) -> Result<Value, String> {
    let limit = o.rpc_timeout;
    let port = o.port;
    let t0 = Instant::now();
    let url = rpc(
        "PortForward",
        limit,
        rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: o.pod.clone(),
            port: vec![i32::from(port)],
        }),
    )
    .await?
    .url;
    let rpc_done = t0.elapsed();
    let run = async {
        let io = spdy_upgrade(&url, PORTFORWARD).await?;
        let cancels = io.cancels.clone();
        let upgraded = t0.elapsed();
        let conn = Connection::client(io, SpdyConfig::kubernetes());
        let headers = |kind: &str| {
            Headers::new()
                .with("streamType", kind)
                .with("port", port.to_string())
                .with("requestID", "0")
        };
        let error = open_stream(&conn, headers("error")).await?;
        let error_opened = t0.elapsed();
        let (mut er, mut ew) = error.split();
        // kubectl closes its side of the error stream at once
        ew.shutdown()
            .await
            .map_err(|e| format!("closing the error stream: {e}"))?;
        let data = open_stream(&conn, headers("data")).await?;
        let opened = t0.elapsed();
        let (mut dr, mut dw) = data.split();
        let mut err_task = tokio::spawn(async move {
            let mut v = Vec::new();
            let _ = er.read_to_end(&mut v).await;
            v
        });
        let first = payload(o.payload, seed);
        dw.write_all(&first)
            .await
            .map_err(|e| format!("writing the data stream: {e}"))?;
        let mut got = vec![0u8; first.len()];
        let mut err_done = false;
        let n = loop {
            tokio::select! {
                r = dr.read(&mut got) => break r.map_err(|e| format!("reading the data stream: {e}"))?,
                e = &mut err_task, if !err_done => {
                    err_done = true;
                    let msg = e.unwrap_or_default();
                    if !msg.is_empty() {
                        return Err(format!("the error stream: {}", String::from_utf8_lossy(&msg)));
                    }
                }
            }
        };
        if n == 0 {
            return Err("the data stream ended before any byte came back".into());
        }
        let first_at = t0.elapsed();
        dr.read_exact(&mut got[n..])
            .await
            .map_err(|e| format!("reading the first echo: {e}"))?;
        if got != first {
            return Err(format!(
                "the first echo differs: sent {:?}, got {:?}",
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(&got)
            ));
        }
        let samples = round_trips(&mut dr, &mut dw, rtts, o.payload, seed).await?;
        // untimed: FIN; the echo server's `cat` sees EOF and exits, so the
        // data stream ends; the error stream must have stayed empty
        dw.shutdown()
            .await
            .map_err(|e| format!("closing the data stream: {e}"))?;
        let mut rest = Vec::new();
        match tokio::time::timeout(GRACE, dr.read_to_end(&mut rest)).await {
            Ok(Ok(_)) if rest.is_empty() => {}
            Ok(Ok(_)) => return Err(format!("{} unexpected bytes after the echoes", rest.len())),
            Ok(Err(e)) => return Err(format!("the data stream's end: {e}")),
            Err(_) => return Err(format!("the data stream not at EOF {GRACE:?} after FIN")),
        }
        if !err_done {
            match tokio::time::timeout(GRACE, &mut err_task).await {
                Ok(Ok(msg)) if !msg.is_empty() => {
                    return Err(format!(
                        "the error stream: {}",
                        String::from_utf8_lossy(&msg)
                    ))
                }
                Ok(_) => {}
                Err(_) => err_task.abort(),
            }
        }
        let closed = t0.elapsed();
        conn.close();
        Ok(json!({
            "first_ms": ms(first_at),
            "rpc_ms": ms(rpc_done),
            "upgrade_ms": ms(upgraded),
            "error_stream_ms": ms(error_opened),
            "streams_ms": ms(opened),
            "close_ms": ms(closed),
            "peer_cancels": cancels.load(std::sync::atomic::Ordering::Relaxed),
            "rtt_ms": samples,
        }))
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("port-forward: not done within {} s", limit.as_secs()))?
}
