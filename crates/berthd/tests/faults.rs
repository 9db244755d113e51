//! What bench/soak found under churn and faults, kept fixed: a shim killed
//! with SIGKILL leaves nothing once its pod is removed (not even its
//! socket), and berthd hands the memory of removed pods back to the node.
//! Needs root.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The shim daemons of `d`'s pods. A child the shim has just forked to run
/// the runtime shows the shim's command line until its execve: it is left
/// out by its parent, a shim.
fn shim_pids(d: &Berthd) -> Vec<i32> {
    let matching: Vec<i32> = processes_mentioning(d.socket.to_str().unwrap())
        .into_iter()
        .filter(|pid| cmdline(*pid).contains("containerd-shim-berth-v2"))
        .collect();
    matching
        .iter()
        .copied()
        .filter(|pid| parent(*pid).is_none_or(|p| !matching.contains(&p)))
        .collect()
}

fn sockets_in(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(sockets_in(&e.path()));
        } else if std::os::unix::fs::FileTypeExt::is_socket(&e.file_type().unwrap()) {
            out.push(e.path().display().to_string());
        }
    }
    out
}

fn cgroup_procs(rel: &str) -> Vec<String> {
    cgroup_dirs(rel)
        .iter()
        .flat_map(|d| {
            read_trim(d.join("cgroup.procs"))
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_ends_its_containers_and_leaves_nothing() {
    let d = Berthd::start("shimkill");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("shimkill", true);
    let pod = d.run_pod(&pod_cfg, "").await;
    let ctr = d.sleeper(&pod, &pod_cfg, "sleeper").await;
    let shims = shim_pids(&d);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let before = sockets_in(&d.state);

    // SAFETY: kill has no memory preconditions; the pid is the shim's.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);

    // kubelet sees the container end (its exit code cannot be known) and
    // nothing of it runs on.
    d.wait_container(&ctr, Duration::from_secs(20), exited)
        .await;
    let rel = d.container_cgroup(&ctr);
    assert!(
        cgroup_procs(&rel).is_empty(),
        "reported exited, but {:?} run",
        cgroup_procs(&rel)
    );

    // kubelet restarts the container in the same pod: a new shim runs it.
    let again = d.sleeper(&pod, &pod_cfg, "again").await;
    assert_eq!(
        d.status(&again).await.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );

    // The kubelet's teardown succeeds, and nothing is left: the dead
    // shim's socket neither.
    for c in [&ctr, &again] {
        d.stop_container(c, 0).await;
        d.remove_container(c).await;
    }
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    let left: Vec<String> = sockets_in(&d.state)
        .into_iter()
        .filter(|s| !s.ends_with("berth.sock") && before.contains(s))
        .collect();
    assert!(left.is_empty(), "the dead shim's socket stayed: {left:?}");
    d.remove_all_and_check().await;
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

async fn churn(d: &Berthd, round: usize, pods: usize) {
    let mut tasks = Vec::new();
    for i in 0..pods {
        let name = format!("churn-{round}-{i}");
        let cfg = d.pod_config(&name, true);
        let ctr = d.container_config("c", &images().busybox, &["true"]);
        tasks.push(async move {
            let pod = d.run_pod(&cfg, "").await;
            let c = d.run_container(&pod, &cfg, &ctr).await;
            d.wait_container(&c, Duration::from_secs(20), exited).await;
            d.remove_container(&c).await;
            d.stop_pod(&pod).await;
            d.remove_pod(&pod).await;
        });
    }
    futures_util::future::join_all(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_removed_pods_goes_back_to_the_node() {
    let d = Berthd::start("rss");
    d.pull_busybox().await;
    churn(&d, 0, 8).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = d.pid().unwrap();
    let warm = rss_kb(pid);
    for round in 1..=6 {
        churn(&d, round, 8).await;
    }
    // berthd trims two seconds after the last removal.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let end = rss_kb(pid);
    assert!(
        end * 10 <= warm * 11,
        "berthd's RSS with no pod grew from {warm} kB to {end} kB over 48 pods"
    );
    d.remove_all_and_check().await;
}

fn fill(dir: &std::path::Path) -> std::fs::File {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fill")).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    f
}

/// A full disk under berthd's root fails what needs space, with the
/// error, but nothing after it: the pod and container records (redb)
/// are written again once there is room, and an exit that happened
/// meanwhile is recorded (it was lost, the container reported running for
/// ever, and every later write failed with redb's "Previous I/O error").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_requests_but_not_the_ones_after_it() {
    let mut d = Berthd::start("enospc");
    d.stop();
    let (ok, _, err) = host(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=48m,mode=0700",
        "berth-enospc",
        d.root.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    d.spawn();
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("enospc", true);
    let pod = d.run_pod(&pod_cfg, "").await;
    let cfg = d.container_config("late", &images().busybox, &["sh", "-c", "sleep 3; exit 5"]);
    let late = d.run_container(&pod, &pod_cfg, &cfg).await;

    let filler = fill(&d.root);
    // Requests that need room fail while the disk is full, naming why.
    let mut refused = 0;
    for i in 0..6 {
        match d
            .try_run_pod(&d.pod_config(&format!("full-{i}"), true), "")
            .await
        {
            Ok(id) => {
                d.stop_pod(&id).await;
                d.remove_pod(&id).await;
            }
            Err(e) => {
                refused += 1;
                assert!(
                    e.message().contains("No space left") || e.message().contains("I/O error"),
                    "{e:?}"
                );
            }
        }
    }
    // The container exits while the disk is full.
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(filler);
    std::fs::remove_file(d.root.join("fill")).unwrap();

    let st = d
        .wait_container(&late, Duration::from_secs(15), exited)
        .await;
    assert!(
        exited(&st),
        "the exit during the full disk was lost:\n{}",
        d.log_tail()
    );
    assert_eq!(st.exit_code, 5);
    let again = d.run_pod(&d.pod_config("after", true), "").await;
    d.stop_pod(&again).await;
    d.remove_pod(&again).await;
    assert!(refused > 0, "a full disk refused no RunPodSandbox");
    for c in [&late] {
        d.remove_container(c).await;
    }
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    assert!(d.pods(None).await.is_empty());
    // Nothing left but the test's own mount (the shims take a moment).
    let root_mount = format!("mount {}", d.root.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = d
            .leftovers()
            .into_iter()
            .filter(|l| *l != root_mount)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{left:?}\n{}", d.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
