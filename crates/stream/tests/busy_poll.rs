//! The streaming thread's busy polling (`[stream] busy_poll_us`): it polls
//! between the turns of a conversation instead of sleeping, and sleeps
//! once data stops moving. A binary of its own: the tests count what one
//! server's thread does, so no other test may run a server meanwhile.

use std::sync::Arc;
use std::time::Duration;

use berth_spdy::{Config as SpdyConfig, Connection, Headers, RecvStream, SendStream};
use berth_stream::{Config, PortForwardRequest, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{upgrade, TestBackend};

/// One test at a time (see above).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server polling for `budget`, and its thread.
async fn start(budget: Duration) -> (Arc<Server>, u32) {
    let before = stream_threads();
    let server = Server::start(
        Config {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            busy_poll: budget,
            ..Config::default()
        },
        Arc::new(TestBackend),
    )
    .await
    .unwrap();
    // The thread names itself once it runs.
    for _ in 0..100 {
        if let Some(thread) = stream_threads().into_iter().find(|t| !before.contains(t)) {
            return (server, thread);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server's thread did not show up");
}

/// A port-forward through `server` to an echo server in this runtime.
struct PortForward {
    r: RecvStream,
    w: SendStream,
    _conn: Connection,
}

impl PortForward {
    async fn open(server: &Server) -> PortForward {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let url = server
            .port_forward_url(PortForwardRequest {
                pod_id: "p".into(),
                ports: vec![port],
            })
            .unwrap();
        let (tcp, _) = upgrade(&url, &["portforward.k8s.io"]).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let conn = Connection::client(tcp, SpdyConfig::kubernetes());
        let open = |kind: &str| {
            conn.open(
                Headers::new()
                    .with("streamType", kind)
                    .with("port", port.to_string())
                    .with("requestID", "0"),
                false,
            )
            .unwrap()
        };
        let error = open("error");
        error.wait_reply().await.unwrap();
        let data = open("data");
        data.wait_reply().await.unwrap();
        let (r, w) = data.split();
        PortForward { r, w, _conn: conn }
    }

    async fn round_trips(&mut self, n: usize) {
        let mut got = [0u8; 4];
        for _ in 0..n {
            self.w.write_all(b"ping").await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), self.r.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got, b"ping");
        }
    }
}

/// Threads of this process named `berth-stream` (the servers' threads).
fn stream_threads() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim() == "berth-stream").then(|| t.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// User and system CPU time of thread `tid`, in clock ticks.
fn cpu_ticks(tid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return 0; // ended
    };
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// How many times thread `tid` went to sleep.
fn sleeps(tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The streaming thread's sleeps per port-forward round trip.
async fn sleeps_per_round_trip(budget: Duration) -> f64 {
    let (server, thread) = start(budget).await;
    let mut forward = PortForward::open(&server).await;
    forward.round_trips(20).await;
    let before = sleeps(thread);
    const ROUND_TRIPS: usize = 300;
    forward.round_trips(ROUND_TRIPS).await;
    let per_round_trip = (sleeps(thread) - before) as f64 / ROUND_TRIPS as f64;
    drop((forward, server));
    per_round_trip
}

/// While a port-forward's client and pod answer each other, the streaming
/// thread polls in between instead of sleeping (each sleep costs the round
/// trip a wake-up); with busy polling off it sleeps in each turn, which
/// shows the count measures it.
#[tokio::test]
async fn the_streaming_thread_polls_between_the_turns_of_a_port_forward() {
    let _serial = SERIAL.lock().await;
    let polling = sleeps_per_round_trip(Duration::from_millis(1)).await;
    let sleeping = sleeps_per_round_trip(Duration::ZERO).await;
    eprintln!("streaming thread sleeps per round trip: {polling:.2} polling, {sleeping:.2} not");
    assert!(
        polling < 0.5,
        "the streaming thread slept {polling:.2} times per round trip while polling"
    );
    assert!(
        sleeping >= 0.8,
        "without polling the streaming thread slept only {sleeping:.2} times per round trip"
    );
}

/// Busy polling is bounded: with the longest budget berthd accepts, once
/// a port-forward's data has stopped moving (its connection still open)
/// the streaming thread sleeps instead of spinning.
#[tokio::test]
async fn the_streaming_thread_sleeps_when_no_data_moves() {
    let _serial = SERIAL.lock().await;
    let (server, _thread) = start(Duration::from_millis(1)).await;
    let mut forward = PortForward::open(&server).await;
    forward.round_trips(100).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Every server's thread (other tests' too: they are short).
    let threads = stream_threads();
    assert!(!threads.is_empty());
    let ticks: u64 = threads.iter().map(|t| cpu_ticks(*t)).sum();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A thread still spinning would have used about 50 ticks (100 Hz).
    let used = threads
        .iter()
        .map(|t| cpu_ticks(*t))
        .sum::<u64>()
        .saturating_sub(ticks);
    assert!(
        used <= 5,
        "the idle streaming thread used {used} ticks in 0.5 s"
    );
    drop((forward, server));
}

/// The scheduler's state of thread `tid`: 'R' running or waiting for a
/// CPU, 'S' asleep.
fn state(tid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    stat.rsplit_once(')')
        .unwrap()
        .1
        .trim_start()
        .chars()
        .next()
        .unwrap()
}

/// Waits (blocking: the server has a thread of its own) until thread
/// `tid` sleeps; false if it has not within 2 s.
fn asleep_soon(tid: u32) -> bool {
    for _ in 0..400 {
        if state(tid) == 'S' {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// How many of 20 URLs, each handed out to a streaming thread asleep,
/// found it awake (polling) 200 us later, before any client came; each
/// time, the thread must be asleep again soon after, the URL unused.
fn awake_after_urls(server: &Server, thread: u32) -> usize {
    let mut awake = 0;
    for _ in 0..20 {
        assert!(asleep_soon(thread), "the streaming thread does not sleep");
        server
            .port_forward_url(PortForwardRequest {
                pod_id: "p".into(),
                ports: vec![1],
            })
            .unwrap();
        std::thread::sleep(Duration::from_micros(200));
        if state(thread) == 'R' {
            awake += 1;
        }
    }
    assert!(
        asleep_soon(thread),
        "the streaming thread still spins after a URL nobody used"
    );
    awake
}

/// The kubelet connects to a URL right after the call that returned it:
/// from the moment the URL is handed out, the streaming thread polls
/// instead of sleeping, so the client's connection does not wait for it
/// to wake; a URL nobody uses stops the polling soon after. Without busy
/// polling the thread sleeps throughout, which shows the state read
/// tells the two apart.
#[tokio::test]
async fn a_client_handed_a_url_finds_the_streaming_thread_awake() {
    let _serial = SERIAL.lock().await;
    let (server, thread) = start(Duration::from_millis(1)).await;
    let polling = awake_after_urls(&server, thread);
    drop(server);
    let (server, thread) = start(Duration::ZERO).await;
    let sleeping = awake_after_urls(&server, thread);
    drop(server);
    eprintln!(
        "URLs that found the streaming thread awake: {polling}/20 polling, {sleeping}/20 not"
    );
    assert!(
        polling >= 15,
        "only {polling} of 20 URLs found the streaming thread awake"
    );
    assert!(
        sleeping <= 2,
        "{sleeping} of 20 URLs found a thread that does not poll awake"
    );
}
