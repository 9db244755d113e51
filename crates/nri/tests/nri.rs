//! berth-nri against NRI plugins connecting to its socket: registration,
//! synchronization, events in order and by subscription, adjustments,
//! failures, timeouts and conflicts.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_nri::proto::nri::Event;
use berth_nri::{
    Container, ContainerUpdate, Domain, LinuxCpu, LinuxResources, Mount, Nri, NriConfig, NriError,
    PodSandbox,
};
use berth_testkit::nri_plugin::{self as plugin, mask, OnCreate};

/// A runtime with one pod and one container, recording the updates plugins
/// ask for.
#[derive(Default)]
struct FakeDomain {
    pods: Mutex<Vec<PodSandbox>>,
    containers: Mutex<Vec<Container>>,
    updates: Mutex<Vec<ContainerUpdate>>,
}

#[async_trait::async_trait]
impl Domain for FakeDomain {
    async fn list_pods_and_containers(&self) -> (Vec<PodSandbox>, Vec<Container>) {
        (
            self.pods.lock().unwrap().clone(),
            self.containers.lock().unwrap().clone(),
        )
    }

    async fn update_containers(&self, updates: Vec<ContainerUpdate>) -> Vec<ContainerUpdate> {
        self.updates.lock().unwrap().extend(updates);
        Vec::new()
    }
}

/// A socket path of its own for each test, removed at the end.
struct Sandbox(PathBuf);

impl Sandbox {
    fn new() -> Sandbox {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-nri-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        Sandbox(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("nri.sock")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod(id: &str) -> PodSandbox {
    PodSandbox {
        id: id.into(),
        name: format!("{id}-name"),
        namespace: "default".into(),
        uid: format!("{id}-uid"),
        ..Default::default()
    }
}

fn container(id: &str, pod: &str) -> Container {
    Container {
        id: id.into(),
        pod_sandbox_id: pod.into(),
        name: format!("{id}-name"),
        env: vec!["PATH=/bin".into()],
        mounts: vec![Mount {
            destination: "/etc/hosts".into(),
            source: "/run/hosts".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn domain() -> Arc<FakeDomain> {
    let d = FakeDomain::default();
    d.pods.lock().unwrap().push(pod("old-pod"));
    d.containers
        .lock()
        .unwrap()
        .push(container("old-ctr", "old-pod"));
    Arc::new(d)
}

fn start(sandbox: &Sandbox, domain: Arc<FakeDomain>, request_timeout: Duration) -> Arc<Nri> {
    let config = NriConfig {
        enable: true,
        socket_path: sandbox.socket(),
        plugin_request_timeout: request_timeout,
        ..Default::default()
    };
    Nri::start(config, domain).expect("starting NRI")
}

/// Waits until NRI lists exactly `names` as its plugins.
async fn wait_plugins(nri: &Nri, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = nri.plugins().await;
        if now == names {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "plugins are {now:?}, expected {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
async fn plugin_registers_synchronizes_and_receives_subscribed_events_in_order() {
    let sandbox = Sandbox::new();
    let nri = start(&sandbox, domain(), Duration::from_secs(2));

    // The socket is there, root-only, before any plugin connects.
    let meta = std::fs::metadata(sandbox.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let recorder = plugin::connect(
        &sandbox.socket(),
        "10",
        "recorder",
        mask(ALL),
        OnCreate::Inject {
            env: vec![("INJECTED".into(), "by-nri".into())],
            mount: Some(("/srv/data".into(), "/data".into())),
        },
    )
    .await;
    // A second plugin with a lower index but only CreateContainer: it is
    // called first, and gets nothing else.
    let creator = plugin::connect(
        &sandbox.socket(),
        "05",
        "creator",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Nothing,
    )
    .await;
    wait_plugins(&nri, &["05-creator", "10-recorder"]).await;

    let p = pod("pod1");
    let c = container("ctr1", "pod1");
    nri.run_pod_sandbox(&p).await.unwrap();
    let adjustment = nri.create_container(&p, &c).await.unwrap();
    assert_eq!(
        adjustment.env,
        [("INJECTED".to_string(), "by-nri".to_string())]
    );
    assert_eq!(adjustment.mounts.len(), 1);
    assert_eq!(adjustment.mounts[0].destination, "/data");
    assert_eq!(adjustment.mounts[0].source, "/srv/data");
    assert_eq!(adjustment.mounts[0].options, ["rbind", "ro"]);
    let mut env = c.env.clone();
    adjustment.apply_env(&mut env);
    assert_eq!(env, ["PATH=/bin", "INJECTED=by-nri"]);

    nri.post_create_container(&p, &c).await.unwrap();
    nri.start_container(&p, &c).await.unwrap();
    nri.post_start_container(&p, &c).await.unwrap();
    let asked = LinuxResources {
        cpu: LinuxCpu {
            shares: Some(100),
            ..Default::default()
        },
        ..Default::default()
    };
    let resources = nri.update_container(&p, &c, &asked).await.unwrap();
    assert_eq!(
        resources.cpu.shares,
        Some(200),
        "the plugin doubles the shares"
    );
    nri.post_update_container(&p, &c).await.unwrap();
    nri.stop_container(&p, &c).await.unwrap();
    nri.remove_container(&p, &c).await.unwrap();
    nri.stop_pod_sandbox(&p).await.unwrap();
    nri.remove_pod_sandbox(&p).await.unwrap();

    assert_eq!(
        recorder.events(),
        [
            "Configure runtime=berth request_timeout=2000 registration_timeout=5000",
            "Synchronize pods=[\"old-pod\"] containers=[\"old-ctr\"]",
            "RUN_POD_SANDBOX pod1",
            "CreateContainer pod1/ctr1 env=[\"PATH=/bin\"] mounts=[\"/etc/hosts\"]",
            "POST_CREATE_CONTAINER pod1/ctr1",
            "START_CONTAINER pod1/ctr1",
            "POST_START_CONTAINER pod1/ctr1",
            "UpdateContainer ctr1 shares=100",
            "POST_UPDATE_CONTAINER pod1/ctr1",
            "StopContainer ctr1",
            "REMOVE_CONTAINER pod1/ctr1",
            "STOP_POD_SANDBOX pod1",
            "REMOVE_POD_SANDBOX pod1",
        ]
    );
    assert_eq!(creator.events().len(), 3, "{:?}", creator.events());
    assert!(creator.events()[2].starts_with("CreateContainer pod1/ctr1"));

    nri.shutdown().await;
    assert!(recorder.wait_disconnected(Duration::from_secs(5)).await);
    assert_eq!(recorder.events().last().unwrap(), "Shutdown");
    assert!(!sandbox.socket().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_plugins_see_earlier_adjustments_and_a_plugin_connecting_later_is_synchronized() {
    let sandbox = Sandbox::new();
    let domain = domain();
    let nri = start(&sandbox, domain.clone(), Duration::from_secs(2));
    let first = plugin::connect(
        &sandbox.socket(),
        "10",
        "first",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Inject {
            env: vec![("A".into(), "1".into())],
            mount: None,
        },
    )
    .await;
    wait_plugins(&nri, &["10-first"]).await;

    // The runtime now has a new pod; a plugin connecting now learns of it.
    domain.pods.lock().unwrap().push(pod("pod2"));
    let second = plugin::connect(
        &sandbox.socket(),
        "20",
        "second",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Inject {
            env: vec![("B".into(), "2".into())],
            mount: None,
        },
    )
    .await;
    wait_plugins(&nri, &["10-first", "20-second"]).await;
    assert_eq!(
        second.events()[1],
        "Synchronize pods=[\"old-pod\", \"pod2\"] containers=[\"old-ctr\"]"
    );

    let adj = nri
        .create_container(&pod("pod2"), &container("ctr2", "pod2"))
        .await
        .unwrap();
    assert_eq!(
        adj.env,
        [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string())
        ]
    );
    assert_eq!(
        second.events()[2],
        "CreateContainer pod2/ctr2 env=[\"PATH=/bin\", \"A=1\"] mounts=[\"/etc/hosts\"]"
    );
    drop(first);
    nri.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_create_container_fails_the_request() {
    let sandbox = Sandbox::new();
    let nri = start(&sandbox, domain(), Duration::from_secs(2));
    let _ok = plugin::connect(
        &sandbox.socket(),
        "10",
        "injector",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Inject {
            env: vec![("X".into(), "1".into())],
            mount: None,
        },
    )
    .await;
    let _refuser = plugin::connect(
        &sandbox.socket(),
        "20",
        "refuser",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Fail("no GPUs left on this node".into()),
    )
    .await;
    wait_plugins(&nri, &["10-injector", "20-refuser"]).await;
    let err = nri
        .create_container(&pod("p"), &container("c", "p"))
        .await
        .unwrap_err();
    match &err {
        NriError::Plugin {
            plugin,
            request,
            message,
        } => {
            assert_eq!(plugin, "20-refuser");
            assert_eq!(*request, "CreateContainer");
            assert!(message.contains("no GPUs left on this node"), "{message}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("20-refuser"));
    // The plugin stays connected: only its answer failed.
    wait_plugins(&nri, &["10-injector", "20-refuser"]).await;
    nri.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_never_answers_is_disconnected_after_the_timeout() {
    let sandbox = Sandbox::new();
    let nri = start(&sandbox, domain(), Duration::from_millis(300));
    let hung = plugin::connect(
        &sandbox.socket(),
        "10",
        "sleeper",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Hang,
    )
    .await;
    let fine = plugin::connect(
        &sandbox.socket(),
        "20",
        "fine",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Inject {
            env: vec![("OK".into(), "1".into())],
            mount: None,
        },
    )
    .await;
    wait_plugins(&nri, &["10-sleeper", "20-fine"]).await;

    let started = Instant::now();
    let adj = nri
        .create_container(&pod("p"), &container("c", "p"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    // The request went on without the silent plugin...
    assert_eq!(adj.env, [("OK".to_string(), "1".to_string())]);
    // ...which was disconnected: its connection is closed and it is gone.
    assert!(hung.wait_disconnected(Duration::from_secs(5)).await);
    wait_plugins(&nri, &["20-fine"]).await;
    assert!(!fine.disconnected());
    nri.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugins_setting_the_same_env_variable_conflict() {
    let sandbox = Sandbox::new();
    let nri = start(&sandbox, domain(), Duration::from_secs(2));
    let set = |v: &str| OnCreate::Inject {
        env: vec![("FOO".into(), v.into())],
        mount: None,
    };
    let _a = plugin::connect(
        &sandbox.socket(),
        "10",
        "a",
        mask(&[Event::CREATE_CONTAINER]),
        set("a"),
    )
    .await;
    let _b = plugin::connect(
        &sandbox.socket(),
        "20",
        "b",
        mask(&[Event::CREATE_CONTAINER]),
        set("b"),
    )
    .await;
    wait_plugins(&nri, &["10-a", "20-b"]).await;
    let err = nri
        .create_container(&pod("p"), &container("c", "p"))
        .await
        .unwrap_err();
    assert!(matches!(err, NriError::Conflict { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "nri: plugins \"20-b\" and \"10-a\" both tried to set env FOO"
    );
    nri.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_other_containers_reach_the_domain() {
    let sandbox = Sandbox::new();
    let domain = domain();
    let nri = start(&sandbox, domain.clone(), Duration::from_secs(2));
    let p = plugin::connect(
        &sandbox.socket(),
        "10",
        "rebalancer",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::UpdateOther {
            id: "old-ctr".into(),
            shares: 42,
        },
    )
    .await;
    wait_plugins(&nri, &["10-rebalancer"]).await;
    let adj = nri
        .create_container(&pod("p"), &container("c", "p"))
        .await
        .unwrap();
    assert!(adj.is_empty());
    {
        let updates = domain.updates.lock().unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].container_id, "old-ctr");
        assert_eq!(updates[0].resources.cpu.shares, Some(42));
    }

    // Unsolicited, through the Runtime service.
    let mut res = berth_nri::proto::nri::LinuxResources::new();
    res.memory.mut_or_insert_default().limit =
        protobuf::MessageField::some(berth_nri::proto::nri::OptionalInt64 {
            value: 1 << 30,
            ..Default::default()
        });
    let req = berth_nri::proto::nri::UpdateContainersRequest {
        update: vec![berth_nri::proto::nri::ContainerUpdate {
            container_id: "old-ctr".into(),
            linux: protobuf::MessageField::some(berth_nri::proto::nri::LinuxContainerUpdate {
                resources: protobuf::MessageField::some(res),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let rsp = p
        .runtime
        .update_containers(ttrpc::context::with_timeout(5_000_000_000), &req)
        .await
        .unwrap();
    assert!(rsp.failed.is_empty());
    let updates = domain.updates.lock().unwrap().clone();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1].resources.memory.limit, Some(1 << 30));
    nri.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_with_an_invalid_index_is_refused() {
    let sandbox = Sandbox::new();
    let nri = start(&sandbox, domain(), Duration::from_secs(2));
    let refused =
        plugin::try_connect(&sandbox.socket(), "1", "bad", mask(ALL), OnCreate::Nothing).await;
    let status = match refused {
        Err(ttrpc::Error::RpcStatus(status)) => status,
        Err(e) => panic!("registration with index \"1\" failed without a status: {e}"),
        Ok(_) => panic!("registration with index \"1\" was accepted"),
    };
    assert!(
        status.message().contains("must be 2 digits"),
        "{}",
        status.message()
    );
    assert!(nri.plugins().await.is_empty());
    nri.shutdown().await;
}

#[tokio::test]
async fn disabled_nri_listens_nowhere_and_does_nothing() {
    let sandbox = Sandbox::new();
    let config = NriConfig {
        socket_path: sandbox.socket(),
        ..Default::default()
    };
    assert!(!config.enable, "NRI is off by default");
    let nri = Nri::start(config, domain()).unwrap();
    assert!(!nri.is_enabled());
    assert!(!sandbox.socket().exists());
    let adj = nri
        .create_container(&pod("p"), &container("c", "p"))
        .await
        .unwrap();
    assert!(adj.is_empty());
    let asked = LinuxResources {
        cpu: LinuxCpu {
            shares: Some(3),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        nri.update_container(&pod("p"), &container("c", "p"), &asked)
            .await
            .unwrap(),
        asked
    );
    nri.run_pod_sandbox(&pod("p")).await.unwrap();
    assert!(nri.plugins().await.is_empty());
    nri.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adjustment_lands_in_the_containers_oci_spec() {
    let sandbox = Sandbox::new();
    let nri = start(&sandbox, domain(), Duration::from_secs(2));
    let _p = plugin::connect(
        &sandbox.socket(),
        "10",
        "injector",
        mask(&[Event::CREATE_CONTAINER]),
        OnCreate::Inject {
            env: vec![("INJECTED".into(), "by-nri".into())],
            mount: Some(("/srv/data".into(), "/data".into())),
        },
    )
    .await;
    wait_plugins(&nri, &["10-injector"]).await;

    // What berthd does: tell plugins about the container from its spec,
    // then apply their adjustment to the spec.
    let mut spec = oci_spec::runtime::Spec::default();
    let mut c = berth_nri::container_from_spec(&spec);
    c.id = "ctr".into();
    c.pod_sandbox_id = "p".into();
    let adj = nri.create_container(&pod("p"), &c).await.unwrap();
    adj.apply_to_spec(&mut spec).unwrap();
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&"INJECTED=by-nri".to_string()), "{env:?}");
    let data = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == std::path::Path::new("/data"));
    let data = data.expect("the injected mount is in the spec");
    assert_eq!(
        data.source().as_deref(),
        Some(std::path::Path::new("/srv/data"))
    );
    assert_eq!(data.typ().as_deref(), Some("bind"));
    nri.shutdown().await;
}

/// berthd awaits these inside spawned tasks, so each future must be `Send`
/// for every lifetime it borrows with (checked when this compiles).
#[allow(dead_code, unused_must_use)]
fn futures_can_be_spawned(nri: Arc<Nri>, pod: PodSandbox, c: Container, r: LinuxResources) {
    tokio::spawn(async move {
        nri.run_pod_sandbox(&pod).await;
        nri.stop_pod_sandbox(&pod).await;
        nri.remove_pod_sandbox(&pod).await;
        nri.update_pod_sandbox(&pod, None, Some(&r)).await;
        nri.create_container(&pod, &c).await;
        nri.post_create_container(&pod, &c).await;
        nri.start_container(&pod, &c).await;
        nri.post_start_container(&pod, &c).await;
        nri.update_container(&pod, &c, &r).await;
        nri.post_update_container(&pod, &c).await;
        nri.stop_container(&pod, &c).await;
        nri.remove_container(&pod, &c).await;
        nri.plugins().await;
        nri.shutdown().await;
    });
}
