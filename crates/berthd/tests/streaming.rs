//! Exec, Attach and PortForward through berthd's streaming server, with a
//! WebSocket client written against the protocol here: exec with and
//! without a terminal, stdin and its close, terminal resize seen by
//! `stty size`, exit codes in the v4/v5 status; port-forward into a pod to
//! a listener and to a closed port; attach sessions (two at once, stdin
//! kept across sessions or closed by stdin_once, a terminal); single-use
//! URLs; clear errors for a stopped container and a pod that is gone.
//! Needs root.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(url: &str, protocol: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

/// Messages by channel until the server closes (or 20 s pass).
async fn collect(ws: &mut Ws) -> Vec<Vec<u8>> {
    let mut channels = vec![Vec::new(); 5];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        match msg {
            Message::Binary(b) if !b.is_empty() => {
                channels[b[0] as usize].extend_from_slice(&b[1..])
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    channels
}

fn exit_code(status: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(status)
        .unwrap_or_else(|e| panic!("status {:?}: {e}", String::from_utf8_lossy(status)));
    if v["status"] == "Success" {
        return "0".into();
    }
    v["details"]["causes"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no exit code in {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_port_forward_over_websocket() {
    let d = Berthd::start("stream");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("stream", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let server = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "server",
                &images().busybox,
                &[
                    "sh",
                    "-c",
                    "while true; do echo hello-through-port-forward | nc -l -p 8080; done",
                ],
            ),
        )
        .await;

    // Without a terminal: stdin to cat, closed with v5's signal; stderr
    // apart; the exit code in the status.
    let url = d
        .exec_url(
            &server,
            &["sh", "-c", "cat; echo to-stderr >&2; exit 7"],
            false,
            true,
        )
        .await
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mut ws = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::binary(b"\x00line one\n".to_vec()))
        .await
        .unwrap();
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let out = collect(&mut ws).await;
    assert_eq!(String::from_utf8_lossy(&out[1]), "line one\n");
    assert_eq!(String::from_utf8_lossy(&out[2]), "to-stderr\n");
    assert_eq!(exit_code(&out[3]), "7");
    // The URL was single use.
    assert!(connect(&url, "v5.channel.k8s.io").await.is_err());

    // With a terminal: a resize before the command reads the size.
    let url = d
        .exec_url(
            &server,
            &["sh", "-c", "read go; stty size; exit 3"],
            true,
            true,
        )
        .await
        .unwrap();
    let mut ws = connect(&url, "v4.channel.k8s.io").await.unwrap();
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":123,"Height":45}"#);
    ws.send(Message::binary(resize)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::binary(b"\x00go\r".to_vec()))
        .await
        .unwrap();
    let out = collect(&mut ws).await;
    let screen = String::from_utf8_lossy(&out[1]);
    assert!(screen.contains("45 123"), "stty size saw: {screen:?}");
    assert_eq!(exit_code(&out[3]), "3");

    if default_pods_in_vms() {
        // A VM pod's listeners are in its guest: refused, by name.
        let e = d.port_forward_url(&pod, vec![8080]).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
        assert!(e.message().contains("VM"), "{e:?}");
    } else {
        // Port-forward: a listener in the pod, and a port nobody listens on.
        let url = d.port_forward_url(&pod, vec![]).await.unwrap();
        let mut ws = connect(&format!("{url}?port=8080&port=8081"), "v4.channel.k8s.io")
            .await
            .unwrap();
        let (mut data, mut closed_err) = (Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(String::from_utf8_lossy(&data).contains("hello-through-port-forward")
            && closed_err.len() > 2)
        {
            let Ok(Some(Ok(Message::Binary(b)))) =
                tokio::time::timeout_at(deadline, ws.next()).await
            else {
                break;
            };
            match b[0] {
                0 => data.extend_from_slice(&b[1..]),
                3 => closed_err.extend_from_slice(&b[1..]),
                _ => {}
            }
        }
        assert_eq!(&data[..2], &8080u16.to_le_bytes());
        assert!(
            String::from_utf8_lossy(&data[2..]).contains("hello-through-port-forward"),
            "{:?}",
            String::from_utf8_lossy(&data)
        );
        let err = String::from_utf8_lossy(&closed_err[2..]).into_owned();
        assert!(err.contains("8081") && err.contains("refused"), "{err}");
        drop(ws);

        // As a kubelet does it: the ports in the PortForward request, and
        // the client's upgrade proxied to the URL without its query. (The
        // server's `nc` listens again a moment after each connection.)
        let (mut answered, mut errors) = (false, Vec::new());
        for _ in 0..50 {
            let url = d.port_forward_url(&pod, vec![8080]).await.unwrap();
            let mut ws = connect(&url, "v4.channel.k8s.io").await.unwrap();
            let (mut data, mut error) = (Vec::new(), Vec::new());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while let Ok(Some(Ok(Message::Binary(b)))) =
                tokio::time::timeout_at(deadline, ws.next()).await
            {
                match b[0] {
                    0 => data.extend_from_slice(&b[1..]),
                    1 => error.extend_from_slice(&b[1..]),
                    _ => {}
                }
                if String::from_utf8_lossy(&data).contains("hello-through-port-forward") {
                    break;
                }
            }
            if String::from_utf8_lossy(&data).contains("hello-through-port-forward") {
                answered = true;
                break;
            }
            errors.push(String::from_utf8_lossy(&error).into_owned());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(answered, "port 8080 never answered: {errors:?}");
    }

    // A stopped container, a bad request, a pod that is gone.
    d.stop_container(&server, 0).await;
    let e = d
        .exec_url(&server, &["true"], false, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = d.exec_url(&server, &[], false, true).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
        ),
        "{e:?}"
    );
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    let e = d.port_forward_url(&pod, vec![80]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    d.remove_all_and_check().await;
}

/// Reads messages until channel `channel` has shown `needle` (20 s at most);
/// what that channel received.
async fn read_until(ws: &mut Ws, channel: u8, needle: &str) -> String {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&channel) => {
                got.extend_from_slice(&b[1..])
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "channel {channel} never showed {needle:?} (got {:?}, then {other:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_running_containers() {
    let d = Berthd::start("attach");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("attach", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let busybox = &images().busybox;

    // Output, to two sessions at once and still to the log; a session's
    // end leaves the other and the container alone.
    let ticker = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "ticker",
                busybox,
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo tick$i; echo tock$i >&2; i=$((i+1)); sleep 0.2; done",
                ],
            ),
        )
        .await;
    let mut first = connect(
        &d.attach_url(&ticker, false, false).await.unwrap(),
        "v4.channel.k8s.io",
    )
    .await
    .unwrap();
    // stdin asked for, but the container has none: ignored, as containerd.
    let mut second = connect(
        &d.attach_url(&ticker, false, true).await.unwrap(),
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    read_until(&mut first, 1, "tick").await;
    read_until(&mut first, 2, "tock").await;
    read_until(&mut second, 1, "tick").await;
    drop(first);
    let seen = read_until(&mut second, 1, "\n").await;
    read_until(&mut second, 1, "tick").await;
    assert!(!seen.is_empty());
    drop(second);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state_name(d.status(&ticker).await.state), "running");
    let log_dir = pod_cfg.log_directory.clone();
    let records = cri_log_records(&std::path::Path::new(&log_dir).join("ticker/0.log"));
    assert!(records
        .iter()
        .any(|(s, _, m)| s == "stdout" && m.starts_with("tick")));
    assert!(records
        .iter()
        .any(|(s, _, m)| s == "stderr" && m.starts_with("tock")));

    // stdin held open for attach: one session's input, its end, then
    // another session's input reach the same `cat`.
    let mut cfg = d.container_config("cat", busybox, &["cat"]);
    cfg.stdin = true;
    let cat = d.run_container(&pod, &pod_cfg, &cfg).await;
    let mut ws = connect(
        &d.attach_url(&cat, false, true).await.unwrap(),
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    ws.send(Message::binary(b"\x00first line\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut ws, 1, "first line\n").await;
    // v5's close of stdin: without stdin_once the container keeps it.
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state_name(d.status(&cat).await.state), "running");
    let mut ws = connect(
        &d.attach_url(&cat, false, true).await.unwrap(),
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    ws.send(Message::binary(b"\x00second line\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut ws, 1, "second line\n").await;
    drop(ws);

    // stdin_once: the first session's end of input ends the container's;
    // the session then ends with the container.
    let mut cfg = d.container_config("once", busybox, &["sh", "-c", "cat; exit 4"]);
    cfg.stdin = true;
    cfg.stdin_once = true;
    let once = d.run_container(&pod, &pod_cfg, &cfg).await;
    let mut ws = connect(
        &d.attach_url(&once, false, true).await.unwrap(),
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    ws.send(Message::binary(b"\x00only line\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut ws, 1, "only line\n").await;
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let out = collect(&mut ws).await;
    assert_eq!(exit_code(&out[3]), "0", "attach itself succeeded");
    let s = d
        .wait_container(&once, Duration::from_secs(10), exited)
        .await;
    assert_eq!(s.exit_code, 4);

    // A terminal: resize, input with a carriage return, the shell's exit.
    let mut cfg = d.container_config("tty", busybox, &["sh"]);
    cfg.stdin = true;
    cfg.tty = true;
    let tty = d.run_container(&pod, &pod_cfg, &cfg).await;
    let url = d.attach_url(&tty, true, true).await.unwrap();
    let mut ws = connect(&url, "v4.channel.k8s.io").await.unwrap();
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":101,"Height":37}"#);
    ws.send(Message::binary(resize)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::binary(b"\x00stty size\r".to_vec()))
        .await
        .unwrap();
    read_until(&mut ws, 1, "37 101").await;
    ws.send(Message::binary(b"\x00exit 5\r".to_vec()))
        .await
        .unwrap();
    let out = collect(&mut ws).await;
    assert_eq!(
        exit_code(&out[3]),
        "0",
        "{:?}",
        String::from_utf8_lossy(&out[1])
    );
    let s = d
        .wait_container(&tty, Duration::from_secs(10), exited)
        .await;
    assert_eq!(s.exit_code, 5);

    // A container that has exited, one that does not exist.
    let e = d.attach_url(&once, false, true).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = d
        .attach_url("no-such-container", false, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    d.remove_all_and_check().await;
}

/// `[stream] idle_timeout`: an interactive exec whose client went quiet is
/// closed after the timeout (containerd's `stream_idle_timeout`), its
/// stdin is closed so the command ends, and berthd goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_exec_session_is_closed_after_the_idle_timeout() {
    let d = Berthd::start_with("stream-idle", "[stream]\nidle_timeout = \"2s\"\n");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("stream-idle", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let c = d.sleeper(&pod, &pod_cfg, "idle").await;
    let url = d
        .exec_url(&c, &["sh", "-c", "exec cat"], false, true)
        .await
        .unwrap();
    let mut ws = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::binary(b"\x00typed\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut ws, 1, "typed").await;
    let quiet_from = std::time::Instant::now();
    assert!(
        !cats_in(&d, &c).await.is_empty(),
        "the exec's cat is not found"
    );
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    let quiet = quiet_from.elapsed();
    assert!(ended.is_ok(), "an idle exec session still open after 15 s");
    // The server's last byte went out a moment before the client read it.
    assert!(
        quiet >= Duration::from_millis(1900),
        "closed after {quiet:?}"
    );
    // The exec's `cat` saw its stdin end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let cats = cats_in(&d, &c).await;
        if cats.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle session's cat is still running: {cats}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    d.remove_all_and_check().await;
}

/// The pids of the processes named `cat` in container `c` (found with the
/// shell's own `read`, not a `cat` of their comm files).
async fn cats_in(d: &Berthd, c: &str) -> String {
    d.sh(
        c,
        "for p in /proc/[0-9]*; do read -r n < $p/comm 2>/dev/null && [ \"$n\" = cat ] && echo ${p#/proc/}; done; true",
    )
    .await
}
