//! Pods: what a pod's containers share (network, IPC, UTS and, when asked,
//! PID namespaces; /etc/hosts, /etc/hostname, /etc/resolv.conf), host
//! network pods, the pause process, sysctls. Needs root.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

/// Two containers of one pod see one hostname, one network namespace with
/// loopback up (a listener in one is reached from the other over
/// 127.0.0.1), one IPC namespace and /dev/shm, and the pod's /etc files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_the_pods_namespaces_and_files() {
    let d = Berthd::start("share");
    d.pull_busybox().await;
    let mut pod_cfg = d.pod_config("share", false);
    pod_cfg.hostname = "share-host".into();
    pod_cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["ns1.svc.cluster.local".into(), "cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod = d.run_pod(&pod_cfg, "").await;
    let busybox = &images().busybox;
    let server = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "server",
                busybox,
                &[
                    "sh",
                    "-c",
                    "while true; do echo hello-over-lo | nc -l -p 7777; done",
                ],
            ),
        )
        .await;
    let client = d.sleeper(&pod, &pod_cfg, "client").await;

    for c in [&server, &client] {
        assert_eq!(d.sh(c, "hostname").await, "share-host");
        assert_eq!(d.sh(c, "cat /etc/hostname").await, "share-host");
        assert_eq!(d.sh(c, "echo $HOSTNAME").await, "share-host");
        let hosts = d.sh(c, "cat /etc/hosts").await;
        assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
        let resolv = d.sh(c, "cat /etc/resolv.conf").await;
        assert_eq!(
            resolv,
            "search ns1.svc.cluster.local cluster.local\nnameserver 10.0.0.10\noptions ndots:5"
        );
        // Loopback is up.
        let lo = d.sh(c, "ip link show lo").await;
        assert!(lo.contains("LOOPBACK,UP"), "{lo}");
        // Loopback only: no host interfaces.
        let links = d.sh(c, "ls /sys/class/net").await;
        assert_eq!(links, "lo");
    }
    for kind in ["net", "ipc", "uts"] {
        let a = d
            .sh(&server, &format!("readlink /proc/self/ns/{kind}"))
            .await;
        let b = d
            .sh(&client, &format!("readlink /proc/self/ns/{kind}"))
            .await;
        assert_eq!(a, b, "{kind} namespace shared");
        assert_ne!(a, host_ns(kind), "{kind} namespace is the pod's own");
    }
    // Each container has its own PID and mount namespaces (pid mode CONTAINER).
    for kind in ["pid", "mnt"] {
        let a = d
            .sh(&server, &format!("readlink /proc/self/ns/{kind}"))
            .await;
        let b = d
            .sh(&client, &format!("readlink /proc/self/ns/{kind}"))
            .await;
        assert_ne!(a, b, "{kind} namespace is per container");
    }

    // The network namespace is really one: connect over 127.0.0.1.
    let mut got = String::new();
    for _ in 0..50 {
        let (_, out) = d.sh_any(&client, "nc -w 2 127.0.0.1 7777 </dev/null").await;
        if out.contains("hello-over-lo") {
            got = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        got.contains("hello-over-lo"),
        "nothing came over lo: {got:?}"
    );

    // IPC: /dev/shm is the pod's, and one.
    d.sh(&server, "echo shared-mem > /dev/shm/marker").await;
    assert_eq!(d.sh(&client, "cat /dev/shm/marker").await, "shared-mem");
    let shm = d.sh(&client, "grep ' /dev/shm ' /proc/mounts").await;
    assert!(shm.contains("tmpfs"), "{shm}");

    d.remove_all_and_check().await;
}

/// A host-network pod: the host's network and UTS namespaces, its hostname
/// and /etc/hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_uses_the_host_network() {
    let d = Berthd::start("hostnet");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("hostnet", true);
    let pod = d.run_pod(&pod_cfg, "").await;
    let c = d.sleeper(&pod, &pod_cfg, "c").await;
    assert_eq!(d.sh(&c, "readlink /proc/self/ns/net").await, host_ns("net"));
    assert_eq!(d.sh(&c, "readlink /proc/self/ns/uts").await, host_ns("uts"));
    let nodename = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    assert_eq!(d.sh(&c, "hostname").await, nodename);
    assert_eq!(d.sh(&c, "cat /etc/hostname").await, nodename);
    assert_eq!(
        d.sh(&c, "echo $HOSTNAME").await,
        nodename,
        "HOSTNAME is the node's name, as containerd sets it"
    );
    let mut host_links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_links.sort();
    let links = d.sh(&c, "ls /sys/class/net").await;
    assert_eq!(
        links.split_whitespace().collect::<Vec<_>>(),
        host_links,
        "the host's interfaces"
    );
    let hosts = d.sh(&c, "cat /etc/hosts").await;
    assert_eq!(
        hosts,
        std::fs::read_to_string("/etc/hosts").unwrap().trim(),
        "the host's /etc/hosts"
    );
    // IPC is still the pod's own (ipc mode POD).
    assert_ne!(d.sh(&c, "readlink /proc/self/ns/ipc").await, host_ns("ipc"));
    // The host's traffic is not the pod's: no network usage, as containerd
    // (which reads it from the pod's own namespace only).
    let linux = d.pod_stats(&pod).await.linux.unwrap();
    assert!(linux.cpu.is_some(), "{linux:?}");
    assert_eq!(linux.network, None, "a host-network pod's network usage");
    d.remove_all_and_check().await;
}

/// PID namespace mode POD: berth's pause is PID 1, containers see each
/// other's processes; StopPodSandbox kills the pause; nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_has_a_pause_and_sees_all_processes() {
    let d = Berthd::start("pidns");
    d.pull_busybox().await;
    let mut pod_cfg = d.pod_config("pidns", false);
    pod_ns(&mut pod_cfg).pid = cri::NamespaceMode::Pod as i32;
    let pod = d.run_pod(&pod_cfg, "").await;

    let st = d.pod_status(&pod, true).await;
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let pause = info["pid"].as_u64().unwrap() as u32;
    assert!(pause > 0 && alive(pause), "pause pid {pause}: {info}");
    // The sandbox's start returns once its init is released; the execve of
    // /pause may follow a moment later.
    wait_for_exec(pause as i32, "/pause", Duration::from_secs(5));
    let cmdline = std::fs::read(format!("/proc/{pause}/cmdline")).unwrap();
    assert_eq!(cmdline, b"/pause\0", "the pause runs berth's /pause");
    assert_eq!(
        st.status
            .unwrap()
            .linux
            .unwrap()
            .namespaces
            .unwrap()
            .options
            .unwrap()
            .pid,
        cri::NamespaceMode::Pod as i32
    );

    let busybox = &images().busybox;
    let a = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("a", busybox, &["sleep", "1001"]),
        )
        .await;
    let b = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("b", busybox, &["sleep", "1002"]),
        )
        .await;
    for c in [&a, &b] {
        assert_eq!(d.sh(c, "tr '\\0' ' ' < /proc/1/cmdline").await, "/pause");
        let ps = d.sh(c, "ps -o pid,args").await;
        assert!(
            ps.contains("sleep 1001") && ps.contains("sleep 1002"),
            "{ps}"
        );
    }
    assert_eq!(
        d.sh(&a, "readlink /proc/self/ns/pid").await,
        d.sh(&b, "readlink /proc/self/ns/pid").await
    );
    assert_eq!(
        d.sh(&a, "readlink /proc/self/ns/pid").await,
        std::fs::read_link(format!("/proc/{pause}/ns/pid"))
            .unwrap()
            .display()
            .to_string()
    );
    // A signal to another container's process works in a shared namespace.
    d.sh(&a, "kill $(pidof 'sleep' | tr ' ' '\\n' | while read p; do grep -q 1002 /proc/$p/cmdline && echo $p; done)")
        .await;
    let s = d.wait_container(&b, Duration::from_secs(10), exited).await;
    assert_eq!(s.exit_code, 143, "b was SIGTERMed from a: {s:?}");

    // A second pod without a shared PID namespace: its container is PID 1.
    let mut own_cfg = d.pod_config("ownpid", false);
    own_cfg.metadata.as_mut().unwrap().uid = unique("uid");
    let own_pod = d.run_pod(&own_cfg, "").await;
    let own = d.sleeper(&own_pod, &own_cfg, "own").await;
    assert_eq!(
        d.sh(&own, "cat /proc/1/cmdline | tr '\\0' ' '").await,
        "sleep 1000"
    );
    let ps = d.sh(&own, "ps -o pid,args").await;
    assert!(!ps.contains("sleep 1001"), "{ps}");
    let st = d.pod_status(&own_pod, true).await;
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(
        info["pid"], 0,
        "no pause without a shared PID namespace: {info}"
    );

    d.stop_pod(&pod).await;
    let s = d.status(&a).await;
    assert!(exited(&s), "{s:?}");
    eventually("the pause to die", Duration::from_secs(10), || {
        !alive(pause)
    })
    .await;
    let pods = d
        .pods(Some(cri::PodSandboxFilter {
            id: pod.clone(),
            ..Default::default()
        }))
        .await;
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    d.remove_all_and_check().await;
}

/// Namespaced sysctls of the pod are set in its namespaces, not the host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_sysctls_are_set_in_the_pod() {
    let d = Berthd::start("sysctl");
    d.pull_busybox().await;
    let host_value = read_trim("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    let host_rmid = read_trim("/proc/sys/kernel/shm_rmid_forced");
    let mut pod_cfg = d.pod_config("sysctl", false);
    let linux = pod_cfg.linux.as_mut().unwrap();
    linux
        .sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
    linux
        .sysctls
        .insert("kernel.shm_rmid_forced".into(), "1".into());
    let pod = d.run_pod(&pod_cfg, "").await;
    let c = d.sleeper(&pod, &pod_cfg, "c").await;
    assert_eq!(
        d.sh(&c, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start")
            .await,
        "80"
    );
    assert_eq!(d.sh(&c, "cat /proc/sys/kernel/shm_rmid_forced").await, "1");
    assert_eq!(
        read_trim("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
        host_value
    );
    assert_eq!(read_trim("/proc/sys/kernel/shm_rmid_forced"), host_rmid);
    // The effect: a non-root user may bind port 80 but not 79.
    let mut cfg = d.container_config(
        "web",
        &images().busybox,
        &[
            "sh",
            "-c",
            "nc -l -p 80 & sleep 0.3; nc -l -p 79; echo rc=$?; sleep 1000",
        ],
    );
    sc(&mut cfg).run_as_user = Some(cri::Int64Value { value: 1000 });
    let web = d.run_container(&pod, &pod_cfg, &cfg).await;
    let mut out = String::new();
    for _ in 0..50 {
        out = d.sh(&web, "netstat -ltn 2>/dev/null || true").await;
        if out.contains(":80 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(out.contains(":80 "), "port 80 bound as uid 1000: {out}");
    assert!(!out.contains(":79 "), "port 79 refused as uid 1000: {out}");
    d.remove_all_and_check().await;
}

/// A pod whose only container was removed gets a new one (kubelet does
/// this, e.g. after garbage-collecting a dead container): berthd lets the
/// pod's shim go with its last container, and must start a working one
/// for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_container_after_the_pods_last_one_was_removed() {
    let d = Berthd::start("reshim");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("reshim", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    for round in 0..3 {
        let name = format!("c{round}");
        let cfg = d.container_config(&name, &images().busybox, &["sleep", "1000"]);
        let id = tokio::time::timeout(Duration::from_secs(30), async {
            let id = d.create(&pod, &pod_cfg, &cfg).await;
            d.start_container(&id).await;
            id
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: create and start hung\n{}", d.log_tail()));
        assert_eq!(d.sh(&id, "echo alive").await, "alive");
        d.remove_container(&id).await;
    }
    d.remove_all_and_check().await;
}

/// Kubelet starts pods and containers concurrently: several pods at once,
/// several containers of one pod at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pods_and_containers() {
    let d = std::sync::Arc::new(Berthd::start("concurrent"));
    d.pull_busybox().await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut cfg = d.pod_config(&format!("pod{i}"), false);
            if i == 2 {
                pod_ns(&mut cfg).pid = cri::NamespaceMode::Pod as i32;
            }
            let pod = d.run_pod(&cfg, "").await;
            (pod, cfg)
        }));
    }
    let mut pods = Vec::new();
    for t in tasks {
        pods.push(t.await.unwrap());
    }
    let mut tasks = Vec::new();
    for (pod, cfg) in &pods {
        for j in 0..3 {
            let (d, pod, cfg) = (d.clone(), pod.clone(), cfg.clone());
            tasks.push(tokio::spawn(async move {
                let id = d.sleeper(&pod, &cfg, &format!("c{j}")).await;
                assert_eq!(d.sh(&id, "hostname").await, cfg.hostname);
                id
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(d.containers(None).await.len(), 9);
    let mut tasks = Vec::new();
    for (pod, _) in pods {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            d.stop_pod(&pod).await;
            d.remove_pod(&pod).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    d.remove_all_and_check().await;
}
