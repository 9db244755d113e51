//! Containers at work: CRI logs and their rotation, ExecSync, stopping
//! with a grace period, OOM kills. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;

/// Go's time.RFC3339Nano: `2006-01-02T15:04:05.999999999Z07:00`.
fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &ts[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':')
}

/// Every line of a CRI log, checked byte by byte:
/// `<RFC3339Nano> <stdout|stderr> <F|P> <message>\n`.
fn checked_records(path: &Path) -> Vec<(String, String, String)> {
    let raw = std::fs::read(path).unwrap_or_default();
    if raw.is_empty() {
        return Vec::new();
    }
    assert_eq!(
        raw.last(),
        Some(&b'\n'),
        "{}: every record ends with a newline",
        path.display()
    );
    let text = String::from_utf8(raw).expect("the log is UTF-8 here");
    text.lines()
        .map(|l| {
            let parts: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(parts.len(), 4, "record {l:?}");
            assert!(is_rfc3339_nano(parts[0]), "timestamp of {l:?}");
            assert!(
                parts[1] == "stdout" || parts[1] == "stderr",
                "stream of {l:?}"
            );
            assert!(parts[2] == "F" || parts[2] == "P", "tag of {l:?}");
            (parts[1].into(), parts[2].into(), parts[3].into())
        })
        .collect()
}

/// Full messages of one stream, partial records joined.
fn messages(records: &[(String, String, String)], stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (s, tag, msg) in records {
        if s != stream {
            continue;
        }
        cur.push_str(msg);
        if tag == "F" {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Logs land at log_directory/log_path in the CRI format, long lines split
/// into partial records; ReopenContainerLog after a rename starts a new
/// file; on a stopped container it fails and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_in_cri_format_and_reopen_after_rotation() {
    let d = Berthd::start("logs");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("logs", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config(
        "writer",
        &images().busybox,
        &[
            "sh",
            "-c",
            "echo first-out; echo first-err >&2; head -c 20000 /dev/zero | tr '\\0' x; echo; \
             i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    cfg.log_path = "writer/0.log".into();
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let log = PathBuf::from(&pod_cfg.log_directory).join("writer/0.log");
    assert_eq!(d.status(&c).await.log_path, log.display().to_string());

    eventually("log lines", Duration::from_secs(10), || {
        messages(&cri_log_records(&log), "stdout")
            .iter()
            .any(|m| m == "line-5")
    })
    .await;
    let records = checked_records(&log);
    let out = messages(&records, "stdout");
    assert_eq!(out[0], "first-out");
    assert_eq!(messages(&records, "stderr"), ["first-err"]);
    assert_eq!(out[1], "x".repeat(20000), "the long line, rejoined");
    let partial: Vec<_> = records.iter().filter(|r| r.1 == "P").collect();
    assert!(
        !partial.is_empty() && partial.iter().all(|r| r.2.len() <= 16 * 1024),
        "a 20000-byte line is split into partial records of at most 16 KiB"
    );

    // Rotation as kubelet does it: rename, then ReopenContainerLog.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let mut rt = d.runtime().await;
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("ReopenContainerLog: {e:?}\n{}", d.log_tail()));
    eventually("the new log file", Duration::from_secs(5), || {
        messages(&cri_log_records(&log), "stdout").len() >= 3
    })
    .await;
    let number = |m: &String| m.strip_prefix("line-").and_then(|n| n.parse::<u64>().ok());
    let old_last = messages(&checked_records(&rotated), "stdout")
        .iter()
        .filter_map(number)
        .max()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_after = messages(&checked_records(&rotated), "stdout")
        .iter()
        .filter_map(number)
        .max()
        .unwrap();
    assert_eq!(old_last, old_after, "nothing more goes to the rotated file");
    let new: Vec<u64> = messages(&checked_records(&log), "stdout")
        .iter()
        .filter_map(number)
        .collect();
    assert_eq!(new[0], old_last + 1, "no line lost or repeated: {new:?}");

    // A last line without a newline is a partial record, as containerd
    // writes it at EOF ("treated as a partial line").
    let tail = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "tail",
                &images().busybox,
                &["sh", "-c", "echo first; printf tail-without-newline"],
            ),
        )
        .await;
    d.wait_container(&tail, Duration::from_secs(10), exited)
        .await;
    let tail_log = PathBuf::from(&pod_cfg.log_directory).join("tail/0.log");
    let records = checked_records(&tail_log);
    assert_eq!(
        records.last().map(|r| (r.1.as_str(), r.2.as_str())),
        Some(("P", "tail-without-newline")),
        "{records:?}"
    );

    // Stopped: Reopen fails and creates no file.
    d.stop_container(&c, 0).await;
    std::fs::rename(&log, log.with_extension("log.2")).unwrap();
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(!log.exists(), "no log file made after an error");
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: "0123456789abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    d.remove_all_and_check().await;
}

/// ExecSync: output, exit codes, the container's process settings, large
/// output, time limits, and the errors for containers not running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_outputs_codes_and_time_limits() {
    let d = Berthd::start("exec");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("exec", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    cfg.working_dir = "/tmp".into();
    cfg.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: "hi there".into(),
    }];
    sc(&mut cfg).run_as_user = Some(cri::Int64Value { value: 1000 });
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;

    let r = d
        .exec(&c, &["sh", "-c", "echo out; echo err >&2; exit 42"])
        .await;
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 42)
    );
    // The container's user, cwd and environment.
    assert_eq!(
        d.sh(&c, "id -u; pwd; echo $GREETING").await,
        "1000\n/tmp\nhi there"
    );
    // 1 MiB of output intact.
    let r = d
        .exec(&c, &["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' z"])
        .await;
    assert_eq!(r.stdout.len(), 1 << 20);
    assert!(r.stdout.iter().all(|b| *b == b'z'));
    // A command that is not there.
    match d.try_exec(&c, &["/no/such/binary"], 10).await {
        Ok(r) => assert_ne!(r.exit_code, 0, "{r:?}"),
        Err(e) => assert!(e.message().contains("/no/such/binary"), "{e:?}"),
    }

    // Time limit: DeadlineExceeded within the timeout plus slack, and the
    // command is killed.
    let begun = Instant::now();
    let err = d.try_exec(&c, &["sleep", "37"], 2).await.unwrap_err();
    let took = begun.elapsed();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "timeout 2 s took {took:?}"
    );
    let ps = d.sh(&c, "ps -o args").await;
    assert!(
        !ps.contains("sleep 37"),
        "the timed-out command is killed: {ps}"
    );
    // A command finishing within its limit is not affected by it.
    let r = d.try_exec(&c, &["sleep", "0.2"], 5).await.unwrap();
    assert_eq!(r.exit_code, 0);

    // Not running: created, exited; unknown ids.
    let created = d
        .create(
            &pod,
            &pod_cfg,
            &d.container_config("created", &images().busybox, &["sleep", "1000"]),
        )
        .await;
    let err = d.try_exec(&created, &["true"], 5).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    d.stop_container(&c, 0).await;
    let err = d.try_exec(&c, &["true"], 5).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&c), "names the container: {err:?}");
    let err = d
        .try_exec("0123456789abcdef0123", &["true"], 5)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    d.remove_all_and_check().await;
}

/// StopContainer sends SIGTERM (or the image's StopSignal) and waits for the
/// grace period; a container ignoring it is SIGKILLed when it runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_honours_the_grace_period_and_stop_signal() {
    let d = Berthd::start("stop");
    d.pull_busybox().await;
    d.pull(entry_image()).await;
    let pod_cfg = d.pod_config("stop", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let busybox = &images().busybox;
    let polite = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "polite",
                busybox,
                &[
                    "sh",
                    "-c",
                    "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
                ],
            ),
        )
        .await;
    let stubborn = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "stubborn",
                busybox,
                &[
                    "sh",
                    "-c",
                    "trap 'echo ignored' TERM; echo ready; while true; do sleep 0.1; done",
                ],
            ),
        )
        .await;
    let by_signal_cfg = d.container_config(
        "usr1",
        entry_image(),
        &[
            "sh",
            "-c",
            "trap 'echo usr1; exit 7' USR1; trap 'exit 8' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    let by_signal = d.run_container(&pod, &pod_cfg, &by_signal_cfg).await;
    let log_of = |name: &str| PathBuf::from(&pod_cfg.log_directory).join(format!("{name}/0.log"));
    for name in ["polite", "stubborn", "usr1"] {
        let log = log_of(name);
        eventually("the trap to be set", Duration::from_secs(10), || {
            messages(&cri_log_records(&log), "stdout").contains(&"ready".to_string())
        })
        .await;
    }

    let begun = Instant::now();
    d.stop_container(&polite, 10).await;
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(3), "exits at SIGTERM: {took:?}");
    let s = d.status(&polite).await;
    assert_eq!(
        (state_name(s.state), s.exit_code, s.reason.as_str()),
        ("exited", 0, "Completed")
    );
    assert!(messages(&cri_log_records(&log_of("polite")), "stdout").contains(&"bye".into()));

    let begun = Instant::now();
    d.stop_container(&stubborn, 2).await;
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "killed once the 2 s grace period is over: {took:?}"
    );
    let s = d.status(&stubborn).await;
    assert_eq!(
        (state_name(s.state), s.exit_code, s.reason.as_str()),
        ("exited", 137, "Error")
    );
    assert!(
        messages(&cri_log_records(&log_of("stubborn")), "stdout").contains(&"ignored".into()),
        "it got SIGTERM first"
    );
    assert!(s.finished_at >= s.started_at && s.started_at >= s.created_at);

    d.stop_container(&by_signal, 10).await;
    let s = d.status(&by_signal).await;
    assert_eq!(
        s.exit_code, 7,
        "the image's StopSignal (SIGUSR1) was sent: {s:?}"
    );

    // Timeout 0: SIGKILL at once.
    let c = d.sleeper(&pod, &pod_cfg, "sleeper").await;
    let begun = Instant::now();
    d.stop_container(&c, 0).await;
    assert!(begun.elapsed() < Duration::from_secs(2));
    assert_eq!(d.status(&c).await.exit_code, 137);
    d.remove_all_and_check().await;
}

/// A container over its memory limit is OOM-killed and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed_container_reports_oomkilled() {
    let d = Berthd::start("oom");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("oom", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config(
        "hog",
        &images().busybox,
        &[
            "sh",
            "-c",
            "x=$(head -c 100m /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    res(&mut cfg).memory_limit_in_bytes = 32 << 20;
    res(&mut cfg).memory_swap_limit_in_bytes = 32 << 20;
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let s = d.wait_container(&c, Duration::from_secs(60), exited).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}\n{}",
        d.log_tail()
    );
    let out = messages(
        &cri_log_records(&PathBuf::from(&pod_cfg.log_directory).join("hog/0.log")),
        "stdout",
    );
    assert!(!out.contains(&"survived".into()));
    // A container that stays under its limit is not OOMKilled.
    let mut cfg = d.container_config(
        "modest",
        &images().busybox,
        &["sh", "-c", "x=$(head -c 1m /dev/zero | tr '\\0' a); exit 0"],
    );
    res(&mut cfg).memory_limit_in_bytes = 32 << 20;
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let s = d.wait_container(&c, Duration::from_secs(30), exited).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    d.remove_all_and_check().await;
}

/// ExecSync of a command leaving a background child that holds stdout
/// open: the output written before the command exited is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_keeps_output_when_a_child_holds_the_pipe() {
    let d = Berthd::start("execbg");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("execbg", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let c = d.sleeper(&pod, &pod_cfg, "c").await;
    let begun = Instant::now();
    let r = d
        .try_exec(&c, &["sh", "-c", "sleep 60 & echo hi; echo there >&2"], 20)
        .await
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"hi\n"[..], &b"there\n"[..], 0)
    );
    assert!(
        begun.elapsed() < Duration::from_secs(20),
        "{:?}",
        begun.elapsed()
    );
    d.remove_all_and_check().await;
}
