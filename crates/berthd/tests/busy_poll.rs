//! `[grpc] busy_poll_us`: between the calls of a burst, a berthd thread
//! polls the CRI connections instead of sleeping, so the next call finds it
//! awake; with no call coming, berthd sleeps; 0 turns polling off. Its own
//! test binary: a busy machine around it would blur what is counted.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

/// Voluntary context switches (a thread went to sleep) and CPU time (ns)
/// of all of `pid`'s threads.
fn sleeps_and_cpu(pid: u32) -> (u64, u64) {
    let mut sleeps = 0;
    let mut cpu = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        sleeps += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        cpu += schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (sleeps, cpu)
}

/// berthd's thread sleeps per call over `calls` Version calls made one
/// after another on one connection, as a burst of kubelet's.
async fn sleeps_per_call(d: &Berthd, calls: u32) -> f64 {
    let mut rt = d.runtime().await;
    let pid = d.pid().unwrap();
    // The connection and berthd's threads are up before counting.
    for _ in 0..50 {
        rt.version(cri::VersionRequest::default()).await.unwrap();
    }
    let (before, _) = sleeps_and_cpu(pid);
    for _ in 0..calls {
        rt.version(cri::VersionRequest::default()).await.unwrap();
    }
    let (after, _) = sleeps_and_cpu(pid);
    (after - before) as f64 / f64::from(calls)
}

#[tokio::test]
async fn calls_of_a_burst_find_berthd_awake_and_an_idle_berthd_sleeps() {
    // The longest budget berthd accepts: a client on a loaded machine may
    // take a while between two calls.
    let polling = Berthd::start_with("busy-poll", "[grpc]\nbusy_poll_us = 1000\n");
    let with = sleeps_per_call(&polling, 500).await;
    eprintln!("thread sleeps per call with busy polling: {with:.2}");
    assert!(
        with < 0.5,
        "{with:.2} thread sleeps per call with busy polling\n{}",
        polling.log_tail()
    );

    // Nothing comes: polling stops within its budget, and berthd sleeps.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = polling.pid().unwrap();
    let (_, cpu_before) = sleeps_and_cpu(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, cpu_after) = sleeps_and_cpu(pid);
    let idle_cpu_ms = (cpu_after - cpu_before) as f64 / 1e6;
    eprintln!("CPU of an idle berthd in 1 s: {idle_cpu_ms:.2} ms");
    assert!(
        idle_cpu_ms < 50.0,
        "an idle berthd used {idle_cpu_ms:.1} ms of CPU in 1 s"
    );
    drop(polling);

    // Off: every call wakes a thread.
    let sleeping = Berthd::start_with("no-busy-poll", "[grpc]\nbusy_poll_us = 0\n");
    let without = sleeps_per_call(&sleeping, 500).await;
    eprintln!("thread sleeps per call without: {without:.2}");
    assert!(
        without >= 0.8,
        "{without:.2} thread sleeps per call without busy polling"
    );
}

#[test]
fn a_budget_past_the_bound_is_refused_by_name() {
    let stderr = berthd_refusing("[grpc]\nbusy_poll_us = 5000\n");
    assert!(stderr.contains("grpc.busy_poll_us 5000"), "{stderr}");
}
