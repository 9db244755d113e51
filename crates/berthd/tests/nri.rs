//! NRI through berthd: a plugin (berth-testkit's, written against NRI's
//! proto) connects to the daemon's NRI socket and sees the pods and
//! containers made through the CRI socket. It injects an env variable and
//! a mount the container then has, and sees every event in order; a plugin
//! that fails creation fails CreateContainer with nothing left behind, and
//! the same request then succeeds; a plugin that never answers is
//! disconnected after the request timeout and the creation goes on, its
//! container unlisted until it is created. Needs root.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_testkit::nri_plugin::{self as plugin, mask, Event, OnCreate, TestPlugin};
use berth_testkit::scratch::TempDir;
use common::*;
use k8s_cri::v1 as cri;

/// berth.toml's `[nri]`, on, with a socket of the test's own.
fn nri_config(socket: &Path, request_timeout: &str) -> String {
    format!(
        "[nri]\nenable = true\nsocket_path = \"{}\"\nplugin_request_timeout = \"{request_timeout}\"\n",
        socket.display()
    )
}

/// Waits until berthd has synchronized the plugin: from then on every
/// event reaches it (berth-nri lists a plugin before it lets the next
/// event through).
async fn synchronized(d: &Berthd, p: &TestPlugin) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = p.events().iter().find(|e| e.starts_with("Synchronize")) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the plugin was not synchronized: {:?}\n{}",
            p.events(),
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The name of the event a plugin line records ("POST_START_CONTAINER
/// p/c" and "StopContainer c" alike become "PostStartContainer" and
/// "StopContainer").
fn event_name(line: &str) -> String {
    let word = line.split(' ').next().unwrap_or_default();
    if !word.contains('_') {
        return word.to_owned();
    }
    word.split('_')
        .map(|w| {
            let lower = w.to_lowercase();
            let mut chars = lower.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

const ALL: &[Event] = &[
    Event::RUN_POD_SANDBOX,
    Event::STOP_POD_SANDBOX,
    Event::REMOVE_POD_SANDBOX,
    Event::CREATE_CONTAINER,
    Event::POST_CREATE_CONTAINER,
    Event::START_CONTAINER,
    Event::POST_START_CONTAINER,
    Event::UPDATE_CONTAINER,
    Event::POST_UPDATE_CONTAINER,
    Event::STOP_CONTAINER,
    Event::REMOVE_CONTAINER,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_injects_env_and_a_mount_and_sees_every_event_in_order() {
    let tmp = TempDir::new("nri");
    let socket = tmp.join("nri.sock");
    let data = tmp.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), "from-the-host\n").unwrap();
    let d = Berthd::start_with("nri-inject", &nri_config(&socket, "2s"));
    // Root-only from the start: whoever reaches it adjusts containers.
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    d.pull_busybox().await;

    // A pod from before the plugin: Synchronize lists it.
    let early_cfg = d.pod_config("nri-early", false);
    let early = d.run_pod(&early_cfg, "").await;
    let p = plugin::connect(
        &socket,
        "10",
        "injector",
        mask(ALL),
        OnCreate::Inject {
            env: vec![("NRI_INJECTED".into(), "yes".into())],
            mount: Some((data.display().to_string(), "/nri-mount".into())),
        },
    )
    .await;
    assert_eq!(
        synchronized(&d, &p).await,
        format!("Synchronize pods=[{early:?}] containers=[]")
    );

    let pod_cfg = d.pod_config("nri-pod", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    assert_eq!(
        d.sh(&c, "echo $NRI_INJECTED; cat /nri-mount/file").await,
        "yes\nfrom-the-host"
    );
    // The plugin saw the container before its adjustment.
    let create = p
        .events()
        .into_iter()
        .find(|e| e.starts_with("CreateContainer"))
        .unwrap();
    assert!(
        create.starts_with(&format!("CreateContainer {pod}/{c} ")),
        "{create}"
    );
    assert!(!create.contains("NRI_INJECTED") && !create.contains("/nri-mount"));

    // The plugin doubles the CPU shares asked for: that is what the cgroup
    // gets and what ContainerStatus reports.
    d.runtime()
        .await
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e:?}\n{}", d.log_tail()));
    assert_eq!(
        read_trim(cgroup_file("cpu", &d.container_cgroup(&c), "cpu.shares")),
        "1024"
    );
    let shares = d
        .status(&c)
        .await
        .resources
        .unwrap()
        .linux
        .unwrap()
        .cpu_shares;
    assert_eq!(shares, 1024);

    d.stop_container(&c, 0).await;
    d.remove_container(&c).await;
    d.stop_pod(&pod).await;
    // Stopped again (as kubelet does, and as RemovePodSandbox does first):
    // plugins hear of it once.
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;

    let ours: Vec<String> = p
        .events()
        .iter()
        .filter(|e| e.contains(&pod) || e.contains(&c))
        .map(|e| event_name(e))
        .collect();
    assert_eq!(
        ours,
        [
            "RunPodSandbox",
            "CreateContainer",
            "PostCreateContainer",
            "StartContainer",
            "PostStartContainer",
            "UpdateContainer",
            "PostUpdateContainer",
            "StopContainer",
            "RemoveContainer",
            "StopPodSandbox",
            "RemovePodSandbox",
        ],
        "{:#?}",
        p.events()
    );
    assert!(p
        .events()
        .contains(&format!("UpdateContainer {c} shares=512")));
    d.remove_all_and_check().await;
}

/// What a failed creation could leave: a bundle, a container cgroup, a
/// shim (the pod has no pause container, so none until its first
/// container), mounts other than the pod's own namespaces.
fn creation_leftovers(d: &Berthd) -> Vec<String> {
    let mut left: Vec<String> = d
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains("/state/pods/"))
        .collect();
    for e in std::fs::read_dir(d.state.join("containers"))
        .unwrap()
        .flatten()
    {
        left.push(format!("bundle {}", e.path().display()));
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_creation_fails_it_cleanly_and_the_request_can_be_retried() {
    let tmp = TempDir::new("nri");
    let socket = tmp.join("nri.sock");
    let d = Berthd::start_with("nri-fail", &nri_config(&socket, "2s"));
    d.pull_busybox().await;
    let p = plugin::connect(
        &socket,
        "20",
        "gatekeeper",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Fail("no GPUs left on this node".into()),
    )
    .await;
    synchronized(&d, &p).await;
    let pod_cfg = d.pod_config("nri-fail", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);

    let err = d.try_create(&pod, &pod_cfg, &cfg).await.unwrap_err();
    assert!(
        err.message().contains("20-gatekeeper") && err.message().contains("no GPUs left"),
        "{err:?}"
    );
    assert!(d.containers(None).await.is_empty());
    assert_eq!(creation_leftovers(&d), Vec::<String>::new());

    // The plugin relents: the same request (same name) succeeds.
    p.set_on_create(OnCreate::Nothing);
    let c = d.create(&pod, &pod_cfg, &cfg).await;
    d.start_container(&c).await;
    assert_eq!(d.containers(None).await.len(), 1);

    // Failing again, then gone: a plugin that disconnected refuses nothing.
    p.set_on_create(OnCreate::Fail("still no GPUs".into()));
    let cfg2 = d.container_config("c2", &images().busybox, &["sleep", "1000"]);
    let err = d.try_create(&pod, &pod_cfg, &cfg2).await.unwrap_err();
    assert!(err.message().contains("still no GPUs"), "{err:?}");
    drop(p);
    let deadline = Instant::now() + Duration::from_secs(10);
    let c2 = loop {
        match d.try_create(&pod, &pod_cfg, &cfg2).await {
            Ok(id) => break id,
            // berthd notices the closed connection at its next request.
            Err(e) if Instant::now() < deadline => {
                assert!(e.message().contains("still no GPUs"), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("CreateContainer after the plugin left: {e:?}"),
        }
    };
    d.start_container(&c2).await;
    assert_eq!(d.containers(None).await.len(), 2);
    d.remove_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_never_answers_is_disconnected_and_creation_goes_on_unlisted_meanwhile() {
    let tmp = TempDir::new("nri");
    let socket = tmp.join("nri.sock");
    let d = Berthd::start_with("nri-hang", &nri_config(&socket, "2s"));
    d.pull_busybox().await;
    let p = plugin::connect(
        &socket,
        "30",
        "sleeper",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Hang,
    )
    .await;
    synchronized(&d, &p).await;
    let pod_cfg = d.pod_config("nri-hang", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);

    let started = Instant::now();
    let mut rt = d.runtime().await;
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(cfg),
        sandbox_config: Some(pod_cfg),
    };
    let create = tokio::spawn(async move { rt.create_container(req).await });
    // While the plugin sits on CreateContainer, the container is not listed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.events().iter().any(|e| e.starts_with("CreateContainer")) {
        assert!(
            Instant::now() < deadline,
            "no CreateContainer reached the plugin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(d.containers(None).await.is_empty());
    assert!(
        !create.is_finished(),
        "the creation ended before the listing"
    );

    // Disconnected after the request timeout; the creation went on.
    let c = create
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", d.log_tail()))
        .into_inner()
        .container_id;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "took {took:?}"
    );
    assert!(p.wait_disconnected(Duration::from_secs(5)).await);
    let listed: Vec<String> = d.containers(None).await.into_iter().map(|c| c.id).collect();
    assert_eq!(listed, [c.as_str()]);
    d.start_container(&c).await;
    assert_eq!(d.sh(&c, "echo ${NRI_INJECTED:-none}").await, "none");
    d.remove_all_and_check().await;
}
