//! berthd killed with SIGKILL and started again: pods and containers are
//! as they were (containers keep running in their shims), exits that
//! happened meanwhile are recorded with their true codes, and requests a
//! crash cut short leave no reserved name and nothing on the host.
//! Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;

/// (id, state) of every pod and container, sorted.
async fn snapshot(d: &Berthd) -> (Vec<(String, i32)>, Vec<(String, i32)>) {
    let mut pods: Vec<(String, i32)> = d
        .pods(None)
        .await
        .into_iter()
        .map(|p| (p.id, p.state))
        .collect();
    pods.sort();
    let mut cs: Vec<(String, i32)> = d
        .containers(None)
        .await
        .into_iter()
        .map(|c| (c.id, c.state))
        .collect();
    cs.sort();
    (pods, cs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_containers_survive_a_berthd_crash() {
    let mut d = Berthd::start("crash");
    d.pull_busybox().await;
    let busybox = images().busybox.clone();
    let ctl = d.dir.join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();

    let pod_cfg = d.pod_config("crash", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let running = d.sleeper(&pod, &pod_cfg, "running").await;
    let done = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("done", &busybox, &["sh", "-c", "exit 3"]),
        )
        .await;
    d.wait_container(&done, Duration::from_secs(10), exited)
        .await;
    let created = d
        .create(
            &pod,
            &pod_cfg,
            &d.container_config("created", &busybox, &["sleep", "1000"]),
        )
        .await;
    let mut later_cfg = d.container_config(
        "later",
        &busybox,
        &[
            "sh",
            "-c",
            "while [ ! -e /ctl/go ]; do sleep 0.05; done; echo going; exit 7",
        ],
    );
    later_cfg.mounts = vec![cri::Mount {
        container_path: "/ctl".into(),
        host_path: ctl.display().to_string(),
        ..Default::default()
    }];
    let later = d.run_container(&pod, &pod_cfg, &later_cfg).await;
    let later_pid = d.container_pid(&later).await;
    let running_pid = d.container_pid(&running).await;

    // A second pod sharing its PID namespace (with a pause).
    let mut shared_cfg = d.pod_config("shared", false);
    pod_ns(&mut shared_cfg).pid = cri::NamespaceMode::Pod as i32;
    let shared = d.run_pod(&shared_cfg, "").await;
    let info: serde_json::Value =
        serde_json::from_str(&d.pod_status(&shared, true).await.info["info"]).unwrap();
    let pause = info["pid"].as_u64().unwrap() as u32;
    let in_shared = d.sleeper(&shared, &shared_cfg, "in-shared").await;
    let before = snapshot(&d).await;

    d.kill();
    // The container exits while berthd is down.
    std::fs::write(ctl.join("go"), "").unwrap();
    eventually("the container to exit", Duration::from_secs(10), || {
        !alive(later_pid)
    })
    .await;
    assert!(alive(running_pid), "containers outlive berthd");
    assert!(alive(pause), "the pause outlives berthd");
    d.spawn();

    let after = snapshot(&d).await;
    assert_eq!(after.0, before.0, "the same pods, in the same states");
    let state_of = |id: &str| after.1.iter().find(|(c, _)| c == id).unwrap().1;
    assert_eq!(after.1.len(), before.1.len());
    assert_eq!(
        state_of(&running),
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(state_of(&done), cri::ContainerState::ContainerExited as i32);
    assert_eq!(
        state_of(&created),
        cri::ContainerState::ContainerCreated as i32
    );
    assert_eq!(
        state_of(&later),
        cri::ContainerState::ContainerExited as i32
    );

    let s = d.status(&done).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    let s = d.status(&later).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (7, "Error"),
        "the true exit code of a container that exited while berthd was down: {s:?}\n{}",
        d.log_tail()
    );
    assert!(s.finished_at > s.started_at, "{s:?}");

    // The running ones work as before.
    assert_eq!(d.sh(&running, "echo still-here").await, "still-here");
    assert_eq!(d.sh(&in_shared, "echo shared-here").await, "shared-here");
    let ps = d.sh(&in_shared, "ps -o args").await;
    assert!(ps.contains("/pause"), "{ps}");
    // The created one can still be started.
    d.start_container(&created).await;
    assert_eq!(d.sh(&created, "echo started").await, "started");
    // Stop with a grace period still works (sleep ignores SIGTERM as pid 1).
    let begun = Instant::now();
    d.stop_container(&running, 1).await;
    assert!(begun.elapsed() >= Duration::from_millis(900));
    let s = d.status(&running).await;
    assert_eq!((state_name(s.state), s.exit_code), ("exited", 137));
    assert!(!alive(running_pid));
    // An exit after the restart is noticed too.
    let pid = d.container_pid(&created).await;
    // SAFETY: plain kill(2) of the container's init.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let s = d
        .wait_container(&created, Duration::from_secs(10), exited)
        .await;
    assert_eq!(s.exit_code, 137);

    d.stop_pod(&shared).await;
    eventually("the pause to go", Duration::from_secs(10), || !alive(pause)).await;
    d.remove_all_and_check().await;
}

/// Waits for a path matching `pred` under `dir` (one level of children).
async fn wait_for_child(dir: &Path, timeout: Duration, pred: impl Fn(&Path) -> bool) -> PathBuf {
    let deadline = Instant::now() + timeout;
    loop {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if pred(&e.path()) {
                return e.path();
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing appeared in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// berthd killed in the middle of RunPodSandbox (its pause being
/// started); then the same pod is run again, and everything removed.
async fn crash_in_run_pod_sandbox(name: &str, check_leftovers: bool) {
    let mut d = Berthd::start(name);
    let mut cfg = d.pod_config(name, false);
    pod_ns(&mut cfg).pid = cri::NamespaceMode::Pod as i32;
    let request = {
        let cfg = cfg.clone();
        let mut rt = d.runtime().await;
        tokio::spawn(async move {
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
        })
    };
    let pods_dir = d.state.join("pods");
    wait_for_child(&pods_dir, Duration::from_secs(20), |p| {
        p.join("pause/config.json").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(15)).await;
    d.kill();
    let r = request.await.unwrap();
    d.spawn();
    match r {
        Err(e) => eprintln!("the interrupted RunPodSandbox failed as expected: {e}"),
        Ok(r) => eprintln!(
            "RunPodSandbox finished before the kill ({}); the test proves less",
            r.into_inner().pod_sandbox_id
        ),
    }
    // An attempt that was recorded before the kill (its answer may still
    // have been lost) is a whole, listed pod holding its name by right, as
    // kubelet's garbage collection would find it: removed like one.
    for p in d.pods(None).await {
        eprintln!("the interrupted attempt completed as pod {}", p.id);
        d.stop_pod(&p.id).await;
        d.remove_pod(&p.id).await;
    }
    // No stuck "name reserved": nothing listed holds it now.
    let pod = d.run_pod(&cfg, "").await;
    let pods = d.pods(None).await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, pod);
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    assert!(d.pods(None).await.is_empty());
    if check_leftovers {
        d.assert_no_leftovers().await;
    }
}

/// After a crash in RunPodSandbox the pod's name is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_run_pod_sandbox_frees_the_name() {
    crash_in_run_pod_sandbox("crashname", false).await;
}

/// ... and nothing of the interrupted attempt stays on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_run_pod_sandbox_leaves_nothing() {
    crash_in_run_pod_sandbox("crashrun", true).await;
}

/// berthd killed in the middle of CreateContainer; then a container of
/// the same name is created and runs, and everything is removed.
async fn crash_in_create_container(name: &str, check_leftovers: bool) {
    let mut d = Berthd::start(name);
    d.pull_busybox().await;
    let pod_cfg = d.pod_config(name, false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let keeper = d.sleeper(&pod, &pod_cfg, "keeper").await;
    let cfg = d.container_config("victim", &images().busybox, &["sleep", "1000"]);
    let request = {
        let (pod, pod_cfg, cfg) = (pod.clone(), pod_cfg.clone(), cfg.clone());
        let mut rt = d.runtime().await;
        tokio::spawn(async move {
            rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(cfg),
                sandbox_config: Some(pod_cfg),
            })
            .await
        })
    };
    let containers_dir = d.state.join("containers");
    let keeper_dir = containers_dir.join(&keeper);
    wait_for_child(&containers_dir, Duration::from_secs(20), |p| {
        p != keeper_dir && p.join("config.json").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    d.kill();
    let r = request.await.unwrap();
    eprintln!(
        "the interrupted CreateContainer: {:?}",
        r.map(|r| r.into_inner())
    );
    d.spawn();
    // Whatever the crash left, the name is usable (a container the crash
    // did record may be removed first, as a kubelet would).
    for c in d.containers(None).await {
        if c.id != keeper {
            d.remove_container(&c.id).await;
        }
    }
    let victim = d.run_container(&pod, &pod_cfg, &cfg).await;
    assert_eq!(d.sh(&victim, "echo ok").await, "ok");
    assert_eq!(d.sh(&keeper, "echo ok").await, "ok");
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    assert!(d.containers(None).await.is_empty());
    if check_leftovers {
        d.assert_no_leftovers().await;
    }
}

/// After a crash in CreateContainer the container's name is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_create_container_frees_the_name() {
    crash_in_create_container("crashcname", false).await;
}

/// ... and nothing of the interrupted container stays on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_create_container_leaves_nothing() {
    crash_in_create_container("crashcreate", true).await;
}
