//! berthd end to end through its CRI socket, with a real registry, real
//! pods and containers. Needs root.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

/// (id, state) of every pod and container in the unfiltered lists, asked
/// twice (berthd keeps these answers until a record changes: the second
/// must still agree with the records), and checked against the same lists
/// filtered by each id, which are built afresh.
async fn listed(rt: &mut Runtime) -> (Vec<(String, i32)>, Vec<(String, i32)>) {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut pods: Vec<(String, i32)> = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .map(|p| (p.id, p.state))
            .collect();
        let mut containers: Vec<(String, i32)> = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .into_iter()
            .map(|c| (c.id, c.state))
            .collect();
        pods.sort();
        containers.sort();
        seen.push((pods, containers));
    }
    assert_eq!(seen[0], seen[1], "a second unfiltered list differs");
    let (pods, containers) = seen.pop().unwrap();
    for (id, state) in &pods {
        let one = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    id: id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert_eq!(one.len(), 1);
        assert_eq!(
            one[0].state, *state,
            "pod {id}: filtered and unfiltered lists differ"
        );
    }
    for (id, state) in &containers {
        let one = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    id: id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(one.len(), 1);
        assert_eq!(
            one[0].state, *state,
            "container {id}: filtered and unfiltered lists differ"
        );
    }
    (pods, containers)
}

/// A pod's whole life: pull, run a pod, a container that writes logs and
/// exits, a long one with ExecSync, stop with a grace period, remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle() {
    let d = Berthd::start("life");
    let image_ref = d.pull_busybox().await;
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let mut rt = d.runtime().await;

    let pod_config = d.pod_config("web", false);
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", d.log_tail()))
        .into_inner()
        .pod_sandbox_id;
    let ready = cri::PodSandboxState::SandboxReady as i32;
    assert_eq!(listed(&mut rt).await, (vec![(pod.clone(), ready)], vec![]));

    let busybox = images().busybox.clone();
    let cfg = d.container_config(
        "hello",
        &busybox,
        &["sh", "-c", "echo out; echo err >&2; hostname; exit 3"],
    );
    let cid = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", d.log_tail()))
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: cid.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", d.log_tail()));
    let s = d
        .wait_container(&cid, Duration::from_secs(20), |s| {
            s.state == cri::ContainerState::ContainerExited as i32
        })
        .await;
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    let log = std::path::PathBuf::from(&s.log_path);
    let records = cri_log_records(&log);
    assert!(
        records.contains(&("stdout".into(), "F".into(), "out".into())),
        "{records:?}"
    );
    assert!(
        records.contains(&("stderr".into(), "F".into(), "err".into())),
        "{records:?}"
    );
    assert!(
        records.contains(&("stdout".into(), "F".into(), "web".into())),
        "the pod's hostname: {records:?}"
    );

    let cfg = d.container_config("sleeper", &busybox, &["sleep", "1000"]);
    let sleeper = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: sleeper.clone(),
    })
    .await
    .unwrap();
    let (running, exited) = (
        cri::ContainerState::ContainerRunning as i32,
        cri::ContainerState::ContainerExited as i32,
    );
    let mut want = vec![(cid.clone(), exited), (sleeper.clone(), running)];
    want.sort();
    assert_eq!(listed(&mut rt).await, (vec![(pod.clone(), ready)], want));
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo hi; echo there >&2; exit 5".into(),
            ],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", d.log_tail()))
        .into_inner();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"hi\n"[..], &b"there\n"[..], 5)
    );
    let err = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");

    let begun = std::time::Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: sleeper.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    assert!(
        begun.elapsed() >= Duration::from_millis(900),
        "the grace period is honoured"
    );
    let s = d
        .wait_container(&sleeper, Duration::from_secs(5), |s| {
            s.state == cri::ContainerState::ContainerExited as i32
        })
        .await;
    assert_eq!(
        s.exit_code, 137,
        "sleep ignores nothing: SIGTERM as pid 1 is ignored, then SIGKILL"
    );

    // Idempotent stops and removes.
    for _ in 0..2 {
        rt.stop_container(cri::StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: sleeper.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(
        listed(&mut rt).await,
        (vec![(pod.clone(), ready)], vec![(cid.clone(), exited)])
    );
    for _ in 0..2 {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    let not_ready = cri::PodSandboxState::SandboxNotready as i32;
    assert_eq!(
        listed(&mut rt).await,
        (vec![(pod.clone(), not_ready)], vec![(cid.clone(), exited)])
    );
    for _ in 0..2 {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    let cs = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(cs.is_empty(), "{cs:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.leftovers(), Vec::<String>::new());
}
