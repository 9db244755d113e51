//! The CRI RuntimeService surface a kubelet relies on: idempotent calls,
//! list filters, status fields, the event stream, and the informational
//! RPCs (the stats RPCs are in stats.rs). Needs root.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;

/// Every idempotent RPC twice and on unknown ids: OK each time
/// (api.proto: "must not return an error if ... already").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_rpcs_succeed_twice_and_on_unknown_ids() {
    let d = Berthd::start("idem");
    d.pull_busybox().await;
    let mut rt = d.runtime().await;
    let mut img = d.image_client().await;

    // Unknown ids.
    rt.stop_container(cri::StopContainerRequest {
        container_id: UNKNOWN.into(),
        timeout: 1,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: UNKNOWN.into(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: UNKNOWN.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: UNKNOWN.into(),
    })
    .await
    .unwrap();
    img.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: format!("{}/test/never-pulled:1", images().registry.addr()),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    // Status calls on unknown ids are errors: NotFound.
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: UNKNOWN.into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: UNKNOWN.into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: UNKNOWN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: UNKNOWN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: UNKNOWN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Twice on real ones.
    let pod_cfg = d.pod_config("idem", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    // Kept running so that the pod's shim stays (see pods.rs
    // new_container_after_the_pods_last_one_was_removed).
    d.sleeper(&pod, &pod_cfg, "keeper").await;
    let c = d.sleeper(&pod, &pod_cfg, "c").await;
    for _ in 0..2 {
        d.stop_container(&c, 0).await;
    }
    assert_eq!(d.status(&c).await.exit_code, 137);
    // Starting an exited container again is refused.
    let err = d.try_start(&c).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    for _ in 0..2 {
        d.remove_container(&c).await;
    }
    // A created (never started) container: stop, remove.
    let created = d
        .create(
            &pod,
            &pod_cfg,
            &d.container_config("created", &images().busybox, &["sleep", "1000"]),
        )
        .await;
    for _ in 0..2 {
        d.stop_container(&created, 1).await;
    }
    for _ in 0..2 {
        d.remove_container(&created).await;
    }
    // RemoveContainer of a running container removes it by force.
    let running = d.sleeper(&pod, &pod_cfg, "running").await;
    let pid = d.container_pid(&running).await;
    d.remove_container(&running).await;
    assert!(!alive(pid), "the removed container's process is gone");
    // RemovePodSandbox with a running container, without StopPodSandbox.
    let running = d.sleeper(&pod, &pod_cfg, "running2").await;
    let pid = d.container_pid(&running).await;
    for _ in 0..2 {
        d.stop_pod(&pod).await;
    }
    assert!(!alive(pid));
    for _ in 0..2 {
        d.remove_pod(&pod).await;
    }
    let pod2_cfg = d.pod_config("idem2", false);
    let pod2 = d.run_pod(&pod2_cfg, "").await;
    let running = d.sleeper(&pod2, &pod2_cfg, "running").await;
    let pid = d.container_pid(&running).await;
    d.remove_pod(&pod2).await;
    assert!(!alive(pid), "RemovePodSandbox kills running containers");
    assert!(d.containers(None).await.is_empty());
    // RemoveImage twice.
    for _ in 0..2 {
        img.remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: images().busybox.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage: {e:?}\n{}", d.log_tail()));
    }
    d.remove_all_and_check().await;
}

/// ListPodSandbox and ListContainers filters, and the fields of
/// ContainerStatus and PodSandboxStatus (verbose info included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_status_fields() {
    let d = Berthd::start("lists");
    let image_id = d.pull_busybox().await;
    let busybox = &images().busybox;
    let mut a_cfg = d.pod_config("pod-a", false);
    a_cfg.labels = labels(&[("app", "a"), ("tier", "x")]);
    a_cfg.annotations = labels(&[("note", "pod a")]);
    let mut b_cfg = d.pod_config("pod-b", false);
    b_cfg.labels = labels(&[("app", "b"), ("tier", "x")]);
    let a = d.run_pod(&a_cfg, "").await;
    let b = d.run_pod(&b_cfg, "").await;

    let vol = d.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let mut web = d.container_config("web", busybox, &["sleep", "1000"]);
    web.labels = labels(&[("role", "web")]);
    web.annotations = labels(&[("checksum", "abc")]);
    web.mounts = vec![cri::Mount {
        container_path: "/vol".into(),
        host_path: vol.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let before = now_ns();
    let web = d.run_container(&a, &a_cfg, &web).await;
    let mut db = d.container_config("db", busybox, &["sleep", "1000"]);
    db.labels = labels(&[("role", "db")]);
    let db = d.create(&a, &a_cfg, &db).await;
    let mut job = d.container_config("job", busybox, &["sh", "-c", "exit 4"]);
    job.labels = labels(&[("role", "job")]);
    let job = d.run_container(&a, &a_cfg, &job).await;
    d.wait_container(&job, Duration::from_secs(10), exited)
        .await;
    let other = d.sleeper(&b, &b_cfg, "other").await;
    d.stop_pod(&b).await;

    // Pods.
    let ids = |v: Vec<cri::PodSandbox>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(ids(d.pods(None).await), [a.clone(), b.clone()]);
    let by = |f: cri::PodSandboxFilter| Some(f);
    assert_eq!(
        ids(d
            .pods(by(cri::PodSandboxFilter {
                id: a.clone(),
                ..Default::default()
            }))
            .await),
        vec![a.clone()]
    );
    assert_eq!(
        ids(d
            .pods(by(cri::PodSandboxFilter {
                id: b[..12].into(),
                ..Default::default()
            }))
            .await),
        vec![b.clone()],
        "an id prefix"
    );
    assert_eq!(
        ids(d
            .pods(by(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32
                }),
                ..Default::default()
            }))
            .await),
        vec![a.clone()]
    );
    assert_eq!(
        ids(d
            .pods(by(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxNotready as i32
                }),
                ..Default::default()
            }))
            .await),
        vec![b.clone()]
    );
    assert_eq!(
        ids(d
            .pods(by(cri::PodSandboxFilter {
                label_selector: labels(&[("tier", "x")]),
                ..Default::default()
            }))
            .await),
        [a.clone(), b.clone()]
    );
    assert_eq!(
        ids(d
            .pods(by(cri::PodSandboxFilter {
                label_selector: labels(&[("tier", "x"), ("app", "b")]),
                ..Default::default()
            }))
            .await),
        vec![b.clone()]
    );
    assert!(d
        .pods(by(cri::PodSandboxFilter {
            label_selector: labels(&[("app", "none")]),
            ..Default::default()
        }))
        .await
        .is_empty());
    let listed = &d.pods(None).await[0];
    assert_eq!(listed.metadata, a_cfg.metadata);
    assert_eq!(listed.labels, a_cfg.labels);
    assert_eq!(listed.annotations, a_cfg.annotations);
    assert_eq!(
        listed.runtime_handler, "berth",
        "the default handler, named"
    );

    // Containers.
    let cids = |v: Vec<cri::Container>| {
        let mut v: Vec<String> = v.into_iter().map(|c| c.id).collect();
        v.sort();
        v
    };
    let sorted = |v: &[&String]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let cby = |f: cri::ContainerFilter| Some(f);
    assert_eq!(
        cids(d.containers(None).await),
        sorted(&[&web, &db, &job, &other])
    );
    assert_eq!(
        cids(
            d.containers(cby(cri::ContainerFilter {
                pod_sandbox_id: a.clone(),
                ..Default::default()
            }))
            .await
        ),
        sorted(&[&web, &db, &job])
    );
    let state = |s: cri::ContainerState| cri::ContainerFilter {
        state: Some(cri::ContainerStateValue { state: s as i32 }),
        ..Default::default()
    };
    assert_eq!(
        cids(
            d.containers(cby(state(cri::ContainerState::ContainerRunning)))
                .await
        ),
        sorted(&[&web])
    );
    assert_eq!(
        cids(
            d.containers(cby(state(cri::ContainerState::ContainerCreated)))
                .await
        ),
        sorted(&[&db])
    );
    assert_eq!(
        cids(
            d.containers(cby(state(cri::ContainerState::ContainerExited)))
                .await
        ),
        sorted(&[&job, &other])
    );
    assert_eq!(
        cids(
            d.containers(cby(cri::ContainerFilter {
                label_selector: labels(&[("role", "db")]),
                ..Default::default()
            }))
            .await
        ),
        sorted(&[&db])
    );
    assert_eq!(
        cids(
            d.containers(cby(cri::ContainerFilter {
                id: web[..10].into(),
                ..Default::default()
            }))
            .await
        ),
        sorted(&[&web]),
        "an id prefix"
    );
    assert!(d
        .containers(cby(cri::ContainerFilter {
            pod_sandbox_id: a.clone(),
            label_selector: labels(&[("role", "nope")]),
            ..Default::default()
        }))
        .await
        .is_empty());
    let listed: Vec<cri::Container> = d
        .containers(cby(cri::ContainerFilter {
            id: web.clone(),
            ..Default::default()
        }))
        .await;
    let l = &listed[0];
    assert_eq!(l.pod_sandbox_id, a);
    assert_eq!(l.image_id, image_id);
    assert!(l.image_ref.contains("@sha256:"), "{l:?}");
    assert_eq!(l.labels, labels(&[("role", "web")]));
    assert_eq!(l.annotations, labels(&[("checksum", "abc")]));

    // ContainerStatus fields.
    let s = d.status(&job).await;
    assert!(
        before <= s.created_at && s.created_at <= s.started_at && s.started_at <= s.finished_at,
        "created {} started {} finished {}",
        s.created_at,
        s.started_at,
        s.finished_at
    );
    assert_eq!((s.exit_code, s.reason.as_str()), (4, "Error"));
    let s = d.status(&db).await;
    assert_eq!(state_name(s.state), "created");
    assert_eq!((s.started_at, s.finished_at), (0, 0));
    let r = d.status_verbose(&web, true).await;
    let s = r.status.unwrap();
    assert_eq!(state_name(s.state), "running");
    assert!(s.started_at >= s.created_at && s.finished_at == 0);
    assert_eq!(s.metadata.unwrap().name, "web");
    assert_eq!(s.image.unwrap().image, *busybox);
    let repo_digest = s.image_ref.clone();
    assert!(
        repo_digest.starts_with(&format!(
            "{}/test/busybox@sha256:",
            images().registry.addr()
        )),
        "image_ref is the repo digest: {repo_digest}"
    );
    assert_eq!(s.image_id, image_id);
    assert_eq!(s.labels, labels(&[("role", "web")]));
    assert_eq!(s.annotations, labels(&[("checksum", "abc")]));
    assert_eq!(
        s.log_path,
        format!("{}/web/0.log", a_cfg.log_directory),
        "log_directory joined with log_path"
    );
    assert_eq!(s.mounts.len(), 1);
    assert_eq!(s.mounts[0].container_path, "/vol");
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    assert_eq!(info["sandboxID"], a.as_str());
    assert!(info["pid"].as_u64().unwrap() > 0);
    assert_eq!(info["runtimeSpec"]["process"]["args"][0], "sleep", "{info}");
    // Image status agrees.
    let img = d
        .image_client()
        .await
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image_id.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert!(img.repo_digests.contains(&repo_digest), "{img:?}");

    // Kubelet creates containers with the image_ref PullImage returned
    // (the image id): image_ref is still the repo digest.
    let by_id = d
        .run_container(
            &a,
            &a_cfg,
            &d.container_config("by-id", &image_id, &["sleep", "1000"]),
        )
        .await;
    assert_eq!(d.sh(&by_id, "echo ok").await, "ok");
    let s = d.status(&by_id).await;
    assert_eq!(s.image_id, image_id);
    assert_eq!(s.image_ref, repo_digest);
    d.remove_container(&by_id).await;

    // PodSandboxStatus.
    let r = d.pod_status(&a, true).await;
    let st = r.status.unwrap();
    assert_eq!(st.id, a);
    assert_eq!(st.metadata, a_cfg.metadata);
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(st.created_at >= before - 60_000_000_000 && st.created_at <= before);
    assert_eq!(st.labels, a_cfg.labels);
    assert_eq!(st.annotations, a_cfg.annotations);
    assert_eq!(st.runtime_handler, "berth");
    let ns = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
    assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    assert_eq!(info["runtimeHandler"], "berth");
    assert!(info["config"]["metadata"]["name"] == "pod-a", "{info}");
    let mut listed: Vec<String> = r.containers_statuses.iter().map(|c| c.id.clone()).collect();
    listed.sort();
    assert_eq!(listed, sorted(&[&web, &db, &job]));
    let st = d.pod_status(&b, false).await.status.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    d.remove_all_and_check().await;
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// GetContainerEvents: CREATED, STARTED, STOPPED, DELETED for a container,
/// in order, with its status; STOPPED also when it exits on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_stream() {
    let d = Berthd::start("events");
    d.pull_busybox().await;
    let mut rt = d.runtime().await;
    let mut stream = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let pod_cfg = d.pod_config("events", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    // Kept running so that the pod's shim stays (see pods.rs
    // new_container_after_the_pods_last_one_was_removed).
    let keeper = d.sleeper(&pod, &pod_cfg, "keeper").await;
    let c = d.sleeper(&pod, &pod_cfg, "c").await;
    d.stop_container(&c, 0).await;
    d.remove_container(&c).await;
    let quick = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("quick", &images().busybox, &["true"]),
        )
        .await;
    d.wait_container(&quick, Duration::from_secs(10), exited)
        .await;

    use cri::ContainerEventType as E;
    let mut got: HashMap<String, Vec<i32>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.get(&c).map(Vec::len).unwrap_or(0) < 4
        || got.get(&quick).map(Vec::len).unwrap_or(0) < 3
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(ev))) => ev,
            other => panic!("events so far {got:?}; then {other:?}\n{}", d.log_tail()),
        };
        assert!(ev.created_at > 0);
        let pod_status = ev.pod_sandbox_status.clone().unwrap();
        assert_eq!(pod_status.id, pod);
        if ev.container_event_type != E::ContainerDeletedEvent as i32 {
            assert_eq!(ev.containers_statuses.len(), 1, "{ev:?}");
            assert_eq!(ev.containers_statuses[0].id, ev.container_id);
        }
        got.entry(ev.container_id.clone())
            .or_default()
            .push(ev.container_event_type);
    }
    assert_eq!(
        got[&c],
        [
            E::ContainerCreatedEvent as i32,
            E::ContainerStartedEvent as i32,
            E::ContainerStoppedEvent as i32,
            E::ContainerDeletedEvent as i32
        ]
    );
    assert_eq!(
        got[&quick],
        [
            E::ContainerCreatedEvent as i32,
            E::ContainerStartedEvent as i32,
            E::ContainerStoppedEvent as i32,
        ]
    );
    assert_eq!(
        got[&keeper],
        [
            E::ContainerCreatedEvent as i32,
            E::ContainerStartedEvent as i32,
        ]
    );
    d.remove_all_and_check().await;
}

/// Version, Status, RuntimeConfig, UpdateRuntimeConfig, the metrics RPCs,
/// and Unimplemented for what berthd does not serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_information_rpcs() {
    let d = Berthd::start("info");
    let mut rt = d.runtime().await;
    let v = rt
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_name, "berth");
    assert!(!v.runtime_version.is_empty() && !v.version.is_empty());

    let s = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conditions = s.status.unwrap().conditions;
    // The harness gives berthd an empty CNI config directory: runtime
    // ready, network not (tests/network.rs watches it flip).
    for (want, ready) in [("RuntimeReady", true), ("NetworkReady", false)] {
        let c = conditions
            .iter()
            .find(|c| c.r#type == want)
            .unwrap_or_else(|| panic!("no {want} in {conditions:?}"));
        assert_eq!(c.status, ready, "{c:?}");
    }
    let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    for h in ["berth", "runc", "crun", "runsc"] {
        assert!(names.contains(&h), "{names:?}");
    }
    assert!(s.info.contains_key("config"), "verbose info: {:?}", s.info);

    let c = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        c.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
    rt.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: "10.88.0.0/16".into(),
            }),
        }),
    })
    .await
    .unwrap();
    rt.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: None,
    })
    .await
    .unwrap();
    rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap();
    rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap();

    fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
        r.unwrap_err().code()
    }
    assert_eq!(
        code(
            rt.exec(cri::ExecRequest {
                container_id: UNKNOWN.into(),
                cmd: vec!["sh".into()],
                stdout: true,
                ..Default::default()
            })
            .await
        ),
        tonic::Code::NotFound,
        "Exec of an unknown container"
    );
    assert_eq!(
        code(
            rt.attach(cri::AttachRequest {
                container_id: UNKNOWN.into(),
                stdout: true,
                ..Default::default()
            })
            .await
        ),
        tonic::Code::NotFound,
        "Attach of an unknown container"
    );
    assert_eq!(
        code(
            rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: UNKNOWN.into(),
                port: vec![80],
            })
            .await
        ),
        tonic::Code::NotFound,
        "PortForward to an unknown pod"
    );
    assert_eq!(
        code(
            rt.checkpoint_container(cri::CheckpointContainerRequest {
                container_id: UNKNOWN.into(),
                location: "/tmp/x.tar".into(),
                timeout: 10,
            })
            .await
        ),
        tonic::Code::Unimplemented
    );
    d.remove_all_and_check().await;
}

/// Kubelet creates containers with the image id PullImage returned;
/// containerd's ContainerStatus.image then names the image by its first
/// tag (what `kubectl get pod -o yaml` shows as the container's image),
/// not by the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_created_by_image_id_reports_its_tag() {
    let d = Berthd::start("byid");
    let image_id = d.pull_busybox().await;
    let pod_cfg = d.pod_config("byid", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let c = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("by-id", &image_id, &["sleep", "1000"]),
        )
        .await;
    let s = d.status(&c).await;
    assert_eq!(s.image.unwrap().image, images().busybox);
    let listed = d.containers(None).await;
    assert_eq!(listed[0].image.as_ref().unwrap().image, images().busybox);
    d.remove_all_and_check().await;
}
