//! The commands of `bench/cri-stream-net`: a pod on the pod network to
//! measure in (`up`), and one round of streaming measurements in it
//! (`stream`), timed by this client the same way for every daemon.
//!
//! `up` starts a pod on the pod network (CNI) with two busybox containers,
//! `sleep` (`sleep 3600`, the exec target) and `echo` (`nc -ll -p PORT -e
//! cat`, an echo server for port-forward), checks (untimed) that the pod is
//! SANDBOX_READY with an IP and both containers CONTAINER_RUNNING, and
//! prints `{"pod", "ip", "sleep", "echo", "times"}`. If anything fails it
//! removes what it made and exits 1.
//!
//! `stream` runs each measurement of `--order` once (default: all of
//! [`KINDS`]), and prints one JSON object of their times in ms:
//!
//! - `exec-sync`: ExecSync `true`, request sent to response received (exit
//!   code 0 checked after the clock stops).
//! - `exec-spdy`: Exec `true` (stdout only, no tty), then what kubectl does
//!   with the URL: an HTTP/1.1 POST with `Upgrade: SPDY/3.1` and
//!   `X-Stream-Protocol-Version: v4.channel.k8s.io`, the 101, then the
//!   error and stdout streams opened one after the other, each waiting for
//!   its SYN_REPLY (apimachinery's CreateStream waits); timed until the
//!   error stream has carried a complete metav1.Status (v4 sends
//!   `{"status":"Success"}` for exit code 0). `eof_ms` is kubectl's end:
//!   stdout and the error stream both at EOF.
//! - `exec-ws`: the same Exec over WebSocket, subprotocol
//!   `v4.channel.k8s.io` (binary frames whose first byte is the channel:
//!   1 stdout, 3 the status); timed until channel 3 holds a complete
//!   status; `eof_ms`: the server closed the connection.
//! - `port-forward`: PortForward (the one port) and the upgrade with
//!   `portforward.k8s.io`, then as kubectl: the error stream (headers
//!   streamType, port, requestID; this side's half closed at once) and the
//!   data stream, each waiting for its reply; `first_ms` is from the RPC
//!   sent to the first echoed byte of a first payload; then `--rtts`
//!   round trips of `--payload` bytes, each timed from the write to the
//!   last byte echoed back and compared with what was sent.
//! - `direct`: the floor under port-forward, without any daemon: a TCP
//!   connection straight to the pod's IP (`--pod-ip`) and port from the
//!   host; `first_ms` from the connect started to the first echoed byte,
//!   then the same round trips as `port-forward`.
//! - `relay`: the same as `direct` through bench/helpers/minimal-relay
//!   (`--relay-port` on 127.0.0.1), which connects to the port on the
//!   pod's loopback as the daemons do: the floor under any relay.
//!
//! Every TCP connection has TCP_NODELAY, as Go's net package (kubectl,
//! the API server) sets it. A RST_STREAM(CANCEL) from the server ends a
//! stream after the data received before it, as in spdystream (see
//! [`Transport`](crate::transport::Transport)). `--check` runs, untimed and before the
//! measurements, what proves the transports carry the right bytes:
//! ExecSync's stdout, stderr and exit code, stdout and a non-zero exit
//! code (NonZeroExitCode and its cause) over SPDY and WebSocket, and a
//! port-forward echo. Any failed RPC or check is in `errors` and makes
//! the command exit 1.

use std::time::{Duration, Instant};

use berth_spdy::{Config as SpdyConfig, Connection, Headers};
use futures_util::StreamExt;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

use crate::opts::Opts;
use crate::portforward::{echo_straight, port_forward};
use crate::transport::{dial, open_stream, spdy_upgrade, split_url};
use crate::{
    check_container, container_config, ms, pod_config, pod_ip, rpc, teardown_pod, IdsFile, Runtime,
};

/// The measurements of `stream`, in their default order.
pub const KINDS: &[&str] = &[
    "exec-sync",
    "exec-spdy",
    "exec-ws",
    "port-forward",
    "direct",
    "relay",
];

const V4: &str = "v4.channel.k8s.io";
/// How long the untimed tail of a measurement (EOFs, closing) may take.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

// --------------------------------------------------------------------------
// up: the pod the measurements run in
// --------------------------------------------------------------------------

pub async fn cmd_up(o: &Opts, channel: Channel) -> Result<bool, String> {
    let mut rt = RuntimeServiceClient::new(channel);
    let ids = IdsFile::open(o.ids_file.as_deref())?;
    let mut made = (None, Vec::new());
    let result = up(o, &mut rt, &ids, &mut made).await;
    match result {
        Ok(v) => {
            println!("{v}");
            Ok(true)
        }
        Err(e) => {
            let (sandbox, containers) = made;
            let mut errors = vec![e];
            for cid in containers {
                errors.extend(
                    teardown_pod(rt.clone(), o.rpc_timeout, None, Some(cid))
                        .await
                        .1,
                );
            }
            if sandbox.is_some() {
                errors.extend(
                    teardown_pod(rt.clone(), o.rpc_timeout, sandbox, None)
                        .await
                        .1,
                );
            }
            println!("{}", json!({ "errors": errors }));
            Ok(false)
        }
    }
}

async fn up(
    o: &Opts,
    rt: &mut Runtime,
    ids: &IdsFile,
    made: &mut (Option<String>, Vec<String>),
) -> Result<Value, String> {
    let limit = o.rpc_timeout;
    let config = pod_config(o, &o.name, true);
    let port = o.port.to_string();
    let containers: [(&str, Vec<&str>); 2] = [
        ("sleep", vec!["sleep", "3600"]),
        ("echo", vec!["nc", "-ll", "-p", &port, "-e", "cat"]),
    ];
    for (name, _) in &containers {
        let dir = std::path::Path::new(&config.log_directory).join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut times = serde_json::Map::new();
    let t = Instant::now();
    let sid = rpc(
        "RunPodSandbox",
        limit,
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }),
    )
    .await?
    .pod_sandbox_id;
    times.insert("run_pod_sandbox_ms".into(), json!(ms(t.elapsed())));
    ids.record("pod", &sid);
    made.0 = Some(sid.clone());
    let mut out = serde_json::Map::new();
    for (name, command) in &containers {
        let t = Instant::now();
        let cid = rpc(
            "CreateContainer",
            limit,
            rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sid.clone(),
                config: Some(container_config(o, name, command, true)),
                sandbox_config: Some(config.clone()),
            }),
        )
        .await
        .map_err(|e| format!("{name}: {e}"))?
        .container_id;
        ids.record("container", &cid);
        made.1.push(cid.clone());
        rpc(
            "StartContainer",
            limit,
            rt.start_container(cri::StartContainerRequest {
                container_id: cid.clone(),
            }),
        )
        .await
        .map_err(|e| format!("{name}: {e}"))?;
        times.insert(format!("{name}_ms"), json!(ms(t.elapsed())));
        out.insert((*name).into(), json!(cid));
    }
    let s = rpc(
        "PodSandboxStatus",
        limit,
        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sid.clone(),
            verbose: false,
        }),
    )
    .await?;
    let state = s.status.as_ref().map(|s| s.state).unwrap_or(-1);
    if state != cri::PodSandboxState::SandboxReady as i32 {
        return Err(format!(
            "PodSandboxStatus of {sid}: state {state}, not SANDBOX_READY"
        ));
    }
    let ip = pod_ip(&s);
    if ip.is_empty() {
        return Err(format!("PodSandboxStatus of {sid}: no IP"));
    }
    for cid in &made.1 {
        check_container(rt, limit, cid).await?;
    }
    out.insert("pod".into(), json!(sid));
    out.insert("ip".into(), json!(ip));
    out.insert("times".into(), Value::Object(times));
    out.insert("errors".into(), json!([]));
    Ok(Value::Object(out))
}

// --------------------------------------------------------------------------
// stream: one round of measurements
// --------------------------------------------------------------------------

pub async fn cmd_stream(o: &Opts, channel: Channel) -> Result<bool, String> {
    let mut rt = RuntimeServiceClient::new(channel);
    let mut out = serde_json::Map::new();
    let mut errors = Vec::new();
    if o.check {
        let passed = checks(o, &mut rt, &mut errors).await;
        out.insert("checks".into(), json!(passed));
    }
    if errors.is_empty() {
        for kind in &o.order {
            let r = match kind.as_str() {
                "exec-sync" => exec_sync_true(o, &mut rt).await,
                "exec-spdy" => spdy_exec(&mut rt, o.rpc_timeout, &o.container, &["true"])
                    .await
                    .and_then(|r| r.success().map(|()| r.times())),
                "exec-ws" => ws_exec(&mut rt, o.rpc_timeout, &o.container, &["true"])
                    .await
                    .and_then(|r| r.success().map(|()| r.times())),
                "port-forward" => port_forward(o, &mut rt, o.rtts, 0).await,
                "direct" => match o.pod_ip {
                    Some(ip) => echo_straight(o, std::net::SocketAddr::new(ip, o.port)).await,
                    None => Err("direct needs --pod-ip".to_string()),
                },
                "relay" => match o.relay_port {
                    Some(port) => {
                        echo_straight(o, std::net::SocketAddr::from(([127, 0, 0, 1], port))).await
                    }
                    None => Err("relay needs --relay-port".to_string()),
                },
                _ => Err(format!("unknown measurement {kind}")),
            };
            match r {
                Ok(v) => {
                    out.insert(kind.clone(), v);
                }
                Err(e) => {
                    errors.push(format!("{kind}: {e}"));
                    break;
                }
            }
        }
    }
    let ok = errors.is_empty();
    out.insert("errors".into(), json!(errors));
    println!("{}", Value::Object(out));
    Ok(ok)
}

fn exec_sync_request(cid: &str, cmd: &[&str]) -> cri::ExecSyncRequest {
    cri::ExecSyncRequest {
        container_id: cid.to_owned(),
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        timeout: 0,
    }
}

async fn exec_sync_true(o: &Opts, rt: &mut Runtime) -> Result<Value, String> {
    let t = Instant::now();
    let r = rpc(
        "ExecSync",
        o.rpc_timeout,
        rt.exec_sync(exec_sync_request(&o.container, &["true"])),
    )
    .await?;
    let total = t.elapsed();
    if r.exit_code != 0 {
        return Err(format!(
            "ExecSync `true`: exit code {} (stderr {:?})",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr)
        ));
    }
    Ok(json!({ "ms": ms(total) }))
}

/// The Exec RPC kubectl's request turns into: stdout only, no tty.
fn exec_request(cid: &str, cmd: &[&str]) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: cid.to_owned(),
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
    }
}

/// One streaming exec: its phases (ms after the RPC was sent), its output
/// and its status.
struct ExecRun {
    rpc: Duration,
    upgrade: Duration,
    streams: Option<Duration>,
    status_at: Duration,
    eof: Duration,
    status: Value,
    stdout: Vec<u8>,
    /// RST_STREAM(CANCEL)s from the server (see [`Transport`](crate::transport::Transport)).
    cancels: usize,
}

impl ExecRun {
    fn times(&self) -> Value {
        let mut m = json!({
            "ms": ms(self.status_at),
            "rpc_ms": ms(self.rpc),
            "upgrade_ms": ms(self.upgrade),
            "eof_ms": ms(self.eof),
        });
        if let Some(s) = self.streams {
            m["streams_ms"] = json!(ms(s));
            m["peer_cancels"] = json!(self.cancels);
        }
        m
    }

    /// The v4 status says Success.
    fn success(&self) -> Result<(), String> {
        if self.status["status"] == "Success" {
            Ok(())
        } else {
            Err(format!("the status is not Success: {}", self.status))
        }
    }

    /// The v4 status says the command exited with `code`.
    fn exited_with(&self, code: i32) -> Result<(), String> {
        let s = &self.status;
        let cause = &s["details"]["causes"][0];
        if s["status"] == "Failure"
            && s["reason"] == "NonZeroExitCode"
            && cause["reason"] == "ExitCode"
            && cause["message"].as_str() == Some(code.to_string().as_str())
        {
            Ok(())
        } else {
            Err(format!("expected exit code {code}, got the status {s}"))
        }
    }
}

/// Reads until `buf` holds one complete JSON value (or EOF).
async fn read_status(r: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Result<Value, String> {
    let mut chunk = [0u8; 4096];
    loop {
        if !buf.is_empty() {
            if let Ok(v) = serde_json::from_slice::<Value>(buf) {
                return Ok(v);
            }
        }
        let n = r
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the error stream: {e}"))?;
        if n == 0 {
            return Err(format!(
                "the error stream ended without a status (got {:?})",
                String::from_utf8_lossy(buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn spdy_exec(
    rt: &mut Runtime,
    limit: Duration,
    cid: &str,
    cmd: &[&str],
) -> Result<ExecRun, String> {
    let t0 = Instant::now();
    let url = rpc("Exec", limit, rt.exec(exec_request(cid, cmd)))
        .await?
        .url;
    let rpc_done = t0.elapsed();
    let run = async {
        let io = spdy_upgrade(&url, V4).await?;
        let cancels = io.cancels.clone();
        let upgraded = t0.elapsed();
        let conn = Connection::client(io, SpdyConfig::kubernetes());
        let error = open_stream(&conn, Headers::new().with("streamType", "error")).await?;
        let stdout = open_stream(&conn, Headers::new().with("streamType", "stdout")).await?;
        let opened = t0.elapsed();
        let (mut er, _ew) = error.split();
        let (mut or, _ow) = stdout.split();
        let out_task = tokio::spawn(async move {
            let mut v = Vec::new();
            or.read_to_end(&mut v).await.map(|_| v)
        });
        let mut buf = Vec::new();
        let status = read_status(&mut er, &mut buf).await?;
        let status_at = t0.elapsed();
        // untimed from here: kubectl's end, both streams at EOF
        let tail = async {
            let mut rest = Vec::new();
            let _ = er.read_to_end(&mut rest).await;
            out_task.await
        };
        let stdout = match tokio::time::timeout(GRACE, tail).await {
            Ok(Ok(Ok(v))) => v,
            Ok(Ok(Err(e))) => return Err(format!("reading stdout: {e}")),
            Ok(Err(e)) => return Err(format!("the stdout task: {e}")),
            Err(_) => return Err(format!("stdout not at EOF {GRACE:?} after the status")),
        };
        let eof = t0.elapsed();
        conn.close();
        Ok(ExecRun {
            rpc: rpc_done,
            upgrade: upgraded,
            streams: Some(opened),
            status_at,
            eof,
            status,
            stdout,
            cancels: cancels.load(std::sync::atomic::Ordering::Relaxed),
        })
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("exec over SPDY: no status within {} s", limit.as_secs()))?
}

async fn ws_exec(
    rt: &mut Runtime,
    limit: Duration,
    cid: &str,
    cmd: &[&str],
) -> Result<ExecRun, String> {
    let t0 = Instant::now();
    let url = rpc("Exec", limit, rt.exec(exec_request(cid, cmd)))
        .await?
        .url;
    let rpc_done = t0.elapsed();
    let run = async {
        let (host, _) = split_url(&url)?;
        let ws_url = url.replacen("http://", "ws://", 1);
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("URL {url:?}: {e}"))?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(V4));
        let tcp = dial(host).await?;
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| format!("the WebSocket handshake: {e}"))?;
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if chosen != V4 {
            return Err(format!("the server chose subprotocol {chosen:?}, not {V4}"));
        }
        let upgraded = t0.elapsed();
        let mut channels = vec![Vec::new(); 256];
        let status = loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    let ch = usize::from(b[0]);
                    channels[ch].extend_from_slice(&b[1..]);
                    if ch == 3 {
                        if let Ok(v) = serde_json::from_slice::<Value>(&channels[3]) {
                            break v;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(format!(
                        "the server closed the WebSocket without a status (channel 3: {:?})",
                        String::from_utf8_lossy(&channels[3])
                    ))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("reading the WebSocket: {e}")),
            }
        };
        let status_at = t0.elapsed();
        // untimed from here: until the server closes
        let tail = async {
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Binary(b) if !b.is_empty() => {
                        channels[usize::from(b[0])].extend_from_slice(&b[1..])
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(GRACE, tail).await.is_err() {
            return Err(format!(
                "the server did not close the WebSocket {GRACE:?} after the status"
            ));
        }
        let eof = t0.elapsed();
        let _ = ws.close(None).await;
        Ok(ExecRun {
            rpc: rpc_done,
            upgrade: upgraded,
            streams: None,
            status_at,
            eof,
            status,
            stdout: std::mem::take(&mut channels[1]),
            cancels: 0,
        })
    };
    tokio::time::timeout(limit, run).await.map_err(|_| {
        format!(
            "exec over WebSocket: no status within {} s",
            limit.as_secs()
        )
    })?
}

/// The untimed checks: what each transport carries is right. Returns the
/// names of the checks passed; failures go to `errors`.
async fn checks(o: &Opts, rt: &mut Runtime, errors: &mut Vec<String>) -> Vec<&'static str> {
    let limit = o.rpc_timeout;
    let cid = o.container.as_str();
    let mut passed = Vec::new();
    let mut note = |name: &'static str, r: Result<(), String>| match r {
        Ok(()) => passed.push(name),
        Err(e) => errors.push(format!("check {name}: {e}")),
    };
    let r = rpc(
        "ExecSync",
        limit,
        rt.exec_sync(exec_sync_request(cid, &["echo", "exec-sync-check"])),
    )
    .await
    .and_then(|r| {
        if r.exit_code == 0 && r.stdout == b"exec-sync-check\n" && r.stderr.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "ExecSync `echo exec-sync-check`: exit {}, stdout {:?}, stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ))
        }
    });
    note("exec-sync-stdout", r);
    let r = rpc(
        "ExecSync",
        limit,
        rt.exec_sync(exec_sync_request(
            cid,
            &["sh", "-c", "echo oops >&2; exit 3"],
        )),
    )
    .await
    .and_then(|r| {
        if r.exit_code == 3 && r.stdout.is_empty() && r.stderr == b"oops\n" {
            Ok(())
        } else {
            Err(format!(
                "ExecSync `sh -c 'echo oops >&2; exit 3'`: exit {}, stdout {:?}, stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ))
        }
    });
    note("exec-sync-exit-code", r);
    let expect_stdout = |r: &ExecRun, want: &[u8]| {
        r.success()?;
        if r.stdout == want {
            Ok(())
        } else {
            Err(format!(
                "stdout {:?}, expected {:?}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(want)
            ))
        }
    };
    let r = spdy_exec(rt, limit, cid, &["echo", "spdy-check"]).await;
    note(
        "exec-spdy-stdout",
        r.and_then(|r| expect_stdout(&r, b"spdy-check\n")),
    );
    let r = spdy_exec(rt, limit, cid, &["sh", "-c", "exit 7"]).await;
    note("exec-spdy-exit-code", r.and_then(|r| r.exited_with(7)));
    let r = ws_exec(rt, limit, cid, &["echo", "ws-check"]).await;
    note(
        "exec-ws-stdout",
        r.and_then(|r| expect_stdout(&r, b"ws-check\n")),
    );
    let r = ws_exec(rt, limit, cid, &["sh", "-c", "exit 7"]).await;
    note("exec-ws-exit-code", r.and_then(|r| r.exited_with(7)));
    let r = port_forward(o, rt, 3, 1000).await;
    note("port-forward-echo", r.map(|_| ()));
    passed
}
