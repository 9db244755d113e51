//! Bad requests: each refused with the right gRPC code and a message that
//! names the problem, leaving nothing behind, with berthd still serving.
//! Needs root.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

fn check(what: &str, r: Result<String, tonic::Status>, code: tonic::Code, needle: &str) {
    match r {
        Ok(id) => panic!("{what}: accepted (id {id}); expected {code:?}"),
        Err(e) => {
            assert_eq!(e.code(), code, "{what}: {e:?}");
            assert!(
                e.message().contains(needle),
                "{what}: the message should name {needle:?}: {e:?}"
            );
        }
    }
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// RunPodSandbox with bad configs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pod_configs_are_refused() {
    let d = Berthd::start("badpod");
    let mut rt = d.runtime().await;
    let r = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id);
    check("no config", r, tonic::Code::InvalidArgument, "config");

    type Mutate = Box<dyn Fn(&mut cri::PodSandboxConfig)>;
    let cases: Vec<(&str, Mutate, tonic::Code, &str)> = vec![
        (
            "no metadata",
            Box::new(|c| c.metadata = None),
            tonic::Code::InvalidArgument,
            "metadata",
        ),
        (
            "empty name",
            Box::new(|c| c.metadata.as_mut().unwrap().name.clear()),
            tonic::Code::InvalidArgument,
            "name",
        ),
        (
            "invalid hostname",
            Box::new(|c| c.hostname = "bad_host!".into()),
            tonic::Code::InvalidArgument,
            "bad_host!",
        ),
        (
            "hostname too long",
            Box::new(|c| c.hostname = "a".repeat(70)),
            tonic::Code::InvalidArgument,
            "hostname",
        ),
        (
            "unknown sysctl",
            Box::new(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .sysctls
                    .insert("net.ipv4.no_such_knob".into(), "1".into());
            }),
            tonic::Code::InvalidArgument,
            "net.ipv4.no_such_knob",
        ),
        (
            "sysctl not namespaced",
            Box::new(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .sysctls
                    .insert("vm.swappiness".into(), "10".into());
            }),
            tonic::Code::InvalidArgument,
            "vm.swappiness",
        ),
        (
            "sysctl value malformed",
            Box::new(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .sysctls
                    .insert("net.ipv4.ip_unprivileged_port_start".into(), "lots".into());
            }),
            tonic::Code::InvalidArgument,
            "net.ipv4.ip_unprivileged_port_start",
        ),
        (
            "sysctl name escaping /proc/sys",
            Box::new(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .sysctls
                    .insert("net/../../../etc/x".into(), "1".into());
            }),
            tonic::Code::InvalidArgument,
            "net/../../../etc/x",
        ),
        (
            "dns entry with a newline",
            Box::new(|c| {
                c.dns_config = Some(cri::DnsConfig {
                    servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
                    ..Default::default()
                })
            }),
            tonic::Code::InvalidArgument,
            "dns",
        ),
        (
            "cgroup_parent with ..",
            Box::new(|c| c.linux.as_mut().unwrap().cgroup_parent = "/x/../../y".into()),
            tonic::Code::InvalidArgument,
            "cgroup_parent",
        ),
    ];
    for (what, mutate, code, needle) in &cases {
        let mut cfg = d.pod_config("bad", false);
        mutate(&mut cfg);
        check(what, d.try_run_pod(&cfg, "").await, *code, needle);
    }
    let cfg = d.pod_config("handler", false);
    check(
        "unknown runtime handler",
        d.try_run_pod(&cfg, "no-such-handler").await,
        tonic::Code::InvalidArgument,
        "no-such-handler",
    );

    assert!(d.pods(None).await.is_empty());
    assert_eq!(entries(&d.state.join("pods")), Vec::<String>::new());
    d.assert_no_leftovers().await;

    // The same name twice: AlreadyExists naming the pod holding it.
    let cfg = d.pod_config("dup", false);
    let first = d.run_pod(&cfg, "").await;
    let r = d.try_run_pod(&cfg, "").await;
    check("duplicate name", r, tonic::Code::AlreadyExists, &first);
    assert_eq!(d.pods(None).await.len(), 1);
    // After removal the name is free again.
    d.stop_pod(&first).await;
    d.remove_pod(&first).await;
    d.run_pod(&cfg, "").await;
    d.remove_all_and_check().await;
    assert_eq!(entries(&d.state.join("pods")), Vec::<String>::new());
}

/// CreateContainer with bad configs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_container_configs_are_refused() {
    let d = Berthd::start("badctr");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("badctr", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut rt = d.runtime().await;
    let r = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: None,
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id);
    check("no config", r, tonic::Code::InvalidArgument, "config");

    let profile_dir = d.dir.join("profiles");
    std::fs::create_dir_all(&profile_dir).unwrap();
    let broken_profile = profile_dir.join("broken.json");
    std::fs::write(&broken_profile, "{ not json").unwrap();
    let missing_profile = profile_dir.join("missing.json").display().to_string();
    let broken_profile = broken_profile.display().to_string();

    type Mutate = Box<dyn Fn(&mut cri::ContainerConfig)>;
    let localhost = |path: String| {
        Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: path,
        })
    };
    let missing_clone = missing_profile.clone();
    let broken_clone = broken_profile.clone();
    let registry = images().registry.addr().to_owned();
    let cases: Vec<(&str, Mutate, tonic::Code, String)> = vec![
        (
            "no metadata",
            Box::new(|c| c.metadata = None),
            tonic::Code::InvalidArgument,
            "metadata".into(),
        ),
        (
            "empty image",
            Box::new(|c| c.image = Some(Default::default())),
            tonic::Code::InvalidArgument,
            "image".into(),
        ),
        (
            "no image",
            Box::new(|c| c.image = None),
            tonic::Code::InvalidArgument,
            "image".into(),
        ),
        (
            "image not pulled",
            Box::new(move |c| {
                c.image.as_mut().unwrap().image = format!("{registry}/test/not-pulled:1")
            }),
            tonic::Code::NotFound,
            "test/not-pulled:1".into(),
        ),
        (
            "privileged in an unprivileged pod",
            Box::new(|c| sc(c).privileged = true),
            tonic::Code::InvalidArgument,
            "privileged".into(),
        ),
        (
            "unknown capability",
            Box::new(|c| {
                sc(c).capabilities = Some(cri::Capability {
                    add_capabilities: vec!["CAP_BOGUS".into()],
                    ..Default::default()
                })
            }),
            tonic::Code::InvalidArgument,
            "CAP_BOGUS".into(),
        ),
        (
            "unknown capability dropped",
            Box::new(|c| {
                sc(c).capabilities = Some(cri::Capability {
                    drop_capabilities: vec!["NOT_A_CAP".into()],
                    ..Default::default()
                })
            }),
            tonic::Code::InvalidArgument,
            "NOT_A_CAP".into(),
        ),
        (
            "seccomp profile file missing",
            Box::new(move |c| sc(c).seccomp = localhost(missing_clone.clone())),
            tonic::Code::InvalidArgument,
            missing_profile.clone(),
        ),
        (
            "seccomp profile not JSON",
            Box::new(move |c| sc(c).seccomp = localhost(broken_clone.clone())),
            tonic::Code::InvalidArgument,
            broken_profile.clone(),
        ),
        (
            "seccomp profile path relative",
            Box::new(move |c| sc(c).seccomp = localhost("profiles/x.json".into())),
            tonic::Code::InvalidArgument,
            "profiles/x.json".into(),
        ),
        (
            "unknown user name",
            Box::new(|c| sc(c).run_as_username = "ghost".into()),
            tonic::Code::InvalidArgument,
            "ghost".into(),
        ),
        (
            "negative uid",
            Box::new(|c| sc(c).run_as_user = Some(cri::Int64Value { value: -5 })),
            tonic::Code::InvalidArgument,
            "-5".into(),
        ),
        (
            "mount with a relative container path",
            Box::new(|c| {
                c.mounts = vec![cri::Mount {
                    container_path: "data".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                }]
            }),
            tonic::Code::InvalidArgument,
            "data".into(),
        ),
        (
            "mount escaping with ..",
            Box::new(|c| {
                c.mounts = vec![cri::Mount {
                    container_path: "/data/../../etc".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                }]
            }),
            tonic::Code::InvalidArgument,
            "/data/../../etc".into(),
        ),
        (
            "device that does not exist",
            Box::new(|c| {
                c.devices = vec![cri::Device {
                    container_path: "/dev/x".into(),
                    host_path: "/dev/no-such-device".into(),
                    permissions: "rw".into(),
                }]
            }),
            tonic::Code::InvalidArgument,
            "/dev/no-such-device".into(),
        ),
        (
            "device permissions",
            Box::new(|c| {
                c.devices = vec![cri::Device {
                    container_path: "/dev/x".into(),
                    host_path: "/dev/null".into(),
                    permissions: "rwx".into(),
                }]
            }),
            tonic::Code::InvalidArgument,
            "rwx".into(),
        ),
        (
            "oom_score_adj out of range",
            Box::new(|c| res(c).oom_score_adj = 5000),
            tonic::Code::InvalidArgument,
            "5000".into(),
        ),
        (
            "log path escaping the log directory",
            Box::new(|c| c.log_path = "../../escape.log".into()),
            tonic::Code::InvalidArgument,
            "../../escape.log".into(),
        ),
        (
            "working dir relative",
            Box::new(|c| c.working_dir = "relative/dir".into()),
            tonic::Code::InvalidArgument,
            "relative/dir".into(),
        ),
    ];
    for (what, mutate, code, needle) in &cases {
        let mut cfg = d.container_config("bad", &images().busybox, &["sleep", "1000"]);
        mutate(&mut cfg);
        check(
            what,
            d.try_create(&pod, &pod_cfg, &cfg).await,
            *code,
            needle,
        );
    }
    let cfg = d.container_config("orphan", &images().busybox, &["true"]);
    check(
        "pod that does not exist",
        d.try_create(
            "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed",
            &pod_cfg,
            &cfg,
        )
        .await,
        tonic::Code::NotFound,
        "f00dfeed",
    );
    assert!(d.containers(None).await.is_empty());
    assert_eq!(
        entries(&d.state.join("containers")),
        Vec::<String>::new(),
        "no bundle left"
    );
    let left: Vec<String> = d
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains("/state/pods/"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "only the pod's own mounts");

    // The same name twice in a pod: AlreadyExists; a second start of a
    // running container: FailedPrecondition.
    let cfg = d.container_config("dup", &images().busybox, &["sleep", "1000"]);
    let first = d.run_container(&pod, &pod_cfg, &cfg).await;
    check(
        "duplicate name",
        d.try_create(&pod, &pod_cfg, &cfg).await,
        tonic::Code::AlreadyExists,
        &first,
    );
    let err = d.try_start(&first).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    // Still serving: a container runs.
    assert_eq!(d.sh(&first, "echo fine").await, "fine");
    // A container in a stopped pod is refused.
    d.stop_pod(&pod).await;
    let cfg = d.container_config("late", &images().busybox, &["true"]);
    let r = d.try_create(&pod, &pod_cfg, &cfg).await;
    assert!(r.is_err(), "a container in a stopped pod: {r:?}");
    d.remove_all_and_check().await;
    assert_eq!(entries(&d.state.join("containers")), Vec::<String>::new());
}

/// run_as_group without run_as_user or run_as_username: api.proto says the
/// runtime MUST error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_group_without_a_user_is_refused() {
    let d = Berthd::start("grouponly");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("grouponly", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    sc(&mut cfg).run_as_group = Some(cri::Int64Value { value: 3000 });
    check(
        "run_as_group alone",
        d.try_create(&pod, &pod_cfg, &cfg).await,
        tonic::Code::InvalidArgument,
        "run_as_group",
    );
    d.remove_all_and_check().await;
}

/// A request berthd cannot finish (the image's command is missing) fails
/// at start, is reported in ContainerStatus, and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_cannot_start_reports_why() {
    let d = Berthd::start("nostart");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("nostart", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let cfg = d.container_config("c", &images().busybox, &["/no/such/program"]);
    let id = match d.try_create(&pod, &pod_cfg, &cfg).await {
        Err(e) => {
            assert!(e.message().contains("/no/such/program"), "{e:?}");
            d.remove_all_and_check().await;
            return;
        }
        Ok(id) => id,
    };
    if let Err(e) = d.try_start(&id).await {
        assert!(e.message().contains("/no/such/program"), "{e:?}");
    }
    let s = d.wait_container(&id, Duration::from_secs(10), exited).await;
    assert_ne!(s.exit_code, 0, "{s:?}");
    let said = format!(
        "{} {} {:?}",
        s.reason,
        s.message,
        cri_log_records(std::path::Path::new(&s.log_path))
    );
    assert!(said.contains("/no/such/program"), "why is reported: {said}");
    d.remove_all_and_check().await;
}

/// When the runtime itself fails (a handler whose OCI runtime is
/// /bin/false) while RunPodSandbox starts the pause, the request fails
/// with the runtime's error and leaves nothing: no record, no shim, no
/// mount, no cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pause_leaves_nothing_behind() {
    let d = Berthd::start_with(
        "pausefail",
        "[runtimes.broken]\nbinary_name = \"/bin/false\"\n",
    );
    let mut cfg = d.pod_config("broken-pause", false);
    pod_ns(&mut cfg).pid = cri::NamespaceMode::Pod as i32;
    let err = d.try_run_pod(&cfg, "broken").await.unwrap_err();
    assert!(err.message().contains("/bin/false"), "{err:?}");
    assert!(d.pods(None).await.is_empty());
    assert_eq!(entries(&d.state.join("pods")), Vec::<String>::new());
    d.assert_no_leftovers().await;
}

/// The same for CreateContainer: the container's Create fails in the
/// runtime; no record, bundle, shim or cgroup is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_container_create_leaves_nothing_behind() {
    let d = Berthd::start_with(
        "createfail",
        "[runtimes.broken]\nbinary_name = \"/bin/false\"\n",
    );
    d.pull_busybox().await;
    let cfg = d.pod_config("broken-ctr", false);
    let pod = d.run_pod(&cfg, "broken").await;
    let ccfg = d.container_config("c", &images().busybox, &["true"]);
    let err = d.try_create(&pod, &cfg, &ccfg).await.unwrap_err();
    assert!(err.message().contains("/bin/false"), "{err:?}");
    assert!(d.containers(None).await.is_empty());
    assert_eq!(entries(&d.state.join("containers")), Vec::<String>::new());
    // While the pod lives its shim may stay, ready for the next container;
    // nothing else may.
    let left: Vec<String> = d
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains("/state/pods/") && !l.starts_with("process "))
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "only the pod's own mounts and shim"
    );
    // The name is free for a retry.
    let err = d.try_create(&pod, &cfg, &ccfg).await.unwrap_err();
    assert!(err.message().contains("/bin/false"), "{err:?}");
    d.remove_all_and_check().await;
}
