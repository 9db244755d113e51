//! The `vm` runtime class through berthd: pods whose handler is
//! `io.containerd.berth-vm.v2` run in a microVM each (QEMU under TCG here),
//! their containers inside, created by berth's guest agent. Needs root,
//! QEMU and the guest from scripts/build-guest (default /var/lib/berth/vm;
//! BERTH_VM_GUEST_DIR elsewhere).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

const VM_CONFIG: &str = "[runtimes.vm]\nruntime_type = \"io.containerd.berth-vm.v2\"\nhypervisor = \"qemu\"\nmemory_mib = 256\n";
const BOOT: Duration = Duration::from_secs(120);

/// The pod's QEMU (its `-name` is `berth-<pod id>`) and its VM directory.
fn qemu_of(pod: &str) -> Option<(i32, PathBuf)> {
    processes_mentioning(&format!("-name berth-{pod} "))
        .into_iter()
        .map(|pid| (pid, cmdline(pid)))
        .find(|(_, c)| c.starts_with("qemu-system"))
        .and_then(|(pid, c)| {
            let console = c.split_whitespace().find_map(|w| w.strip_prefix("file:"))?;
            Some((pid, PathBuf::from(console).parent()?.to_path_buf()))
        })
}

/// Nothing of the VM is left: no process names its directory, which is
/// gone, and nothing is mounted under it.
async fn assert_vm_gone(dir: &std::path::Path) {
    let d = dir.display().to_string();
    eventually("the VM's processes to end", Duration::from_secs(20), || {
        processes_mentioning(&d).is_empty()
    })
    .await;
    assert!(!dir.exists(), "{d} left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&d), "mounts left under {d}");
}

fn sigkill(pid: i32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
}

/// Waits up to 30 s for the pod to be NotReady (`why`: what should make it).
async fn wait_not_ready(d: &Berthd, pod: &str, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pod_state(&d.pod_status(pod, false).await) != cri::PodSandboxState::SandboxNotready as i32
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pod stayed ready {why}\n{}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_state(d: &cri::PodSandboxStatusResponse) -> i32 {
    d.status.as_ref().unwrap().state
}

/// A pod in a VM: two containers reach each other on localhost, logs,
/// ExecSync on the guest's kernel, stats, an OOM kill inside, the pod's IP
/// stays the pod's, stop and removal leave nothing (QEMU, virtiofsd,
/// mounts, the VM's directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pod_containers_localhost_logs_exec_stats_oom_and_cleanup() {
    let d = Berthd::start_with("vm", VM_CONFIG);
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("vm-pod", false);
    let started = std::time::Instant::now();
    let pod = tokio::time::timeout(BOOT, d.run_pod(&pod_cfg, "vm"))
        .await
        .expect("RunPodSandbox within the boot limit");
    eprintln!("vm pod ready in {:?}", started.elapsed());
    let st = d.pod_status(&pod, false).await;
    assert_eq!(pod_state(&st), cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.status.as_ref().unwrap().runtime_handler, "vm");
    let (qemu, vm_dir) =
        qemu_of(&pod).unwrap_or_else(|| panic!("no QEMU for pod {pod}\n{}", d.log_tail()));
    // The verbose status says what the VM is and costs.
    let verbose = d.pod_status(&pod, true).await;
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["vm"]["qemu"]["guestMemoryMiB"], 256, "{info}");
    assert_eq!(info["vm"]["qemu"]["vcpus"], 1, "{info}");
    assert_eq!(info["vm"]["qemu"]["pid"], qemu, "{info}");
    assert!(
        info["vm"]["qemu"]["anonymousBytes"].as_u64().unwrap() > 0,
        "{info}"
    );

    let server = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "server",
                &images().busybox,
                &["nc", "-ll", "-p", "8080", "-e", "echo", "pong"],
            ),
        )
        .await;
    let client = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "client",
                &images().busybox,
                &["sh", "-c", "for i in $(seq 100); do out=$(nc 127.0.0.1 8080 </dev/null) && [ -n \"$out\" ] && echo \"got $out\" && exit 0; sleep 0.2; done; exit 1"],
            ),
        )
        .await;
    let s = d.wait_container(&client, BOOT, exited).await;
    assert_eq!(s.exit_code, 0, "{s:?}\n{}", d.log_tail());
    let log = PathBuf::from(&pod_cfg.log_directory).join("client/0.log");
    let records = cri_log_records(&log);
    assert!(
        records.iter().any(|r| r.0 == "stdout" && r.2 == "got pong"),
        "the client's CRI log: {records:?}"
    );

    // ExecSync runs in the guest: its kernel, not the host's.
    let guest = d.sh(&server, "uname -r").await;
    let host = read_trim("/proc/sys/kernel/osrelease");
    assert_ne!(guest, host, "the exec ran on the host's kernel");
    let r = d.exec(&server, &["sh", "-c", "echo e >&2; exit 9"]).await;
    assert_eq!((r.stderr.as_slice(), r.exit_code), (&b"e\n"[..], 9));
    // The pod's hostname.
    assert_eq!(d.sh(&server, "hostname").await, "vm-pod");

    // Stats from the guest's cgroup.
    let stats = d.container_stats(&server).await;
    let memory = stats.memory.unwrap();
    assert!(
        memory.working_set_bytes.unwrap().value > 0,
        "memory working set from the guest"
    );
    assert!(
        memory.rss_bytes.unwrap().value > 0,
        "rss from the guest's cgroup v2 (anon)"
    );
    // The pod's processes: the guest's, as the shim lists them (the
    // server's at least; the client has exited).
    let linux = d.pod_stats(&pod).await.linux.unwrap();
    assert!(
        linux.process.unwrap().process_count.unwrap().value >= 1,
        "guest processes counted"
    );

    // An OOM kill inside the VM, by the container's own limit.
    let mut hog_cfg = d.container_config("hog", &images().busybox, &["sh", "-c", "tail /dev/zero"]);
    res(&mut hog_cfg).memory_limit_in_bytes = 32 << 20;
    let hog = d.run_container(&pod, &pod_cfg, &hog_cfg).await;
    let s = d.wait_container(&hog, BOOT, exited).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}\n{}",
        d.log_tail()
    );
    assert!(alive(qemu), "the OOM kill must stay inside the VM");
    assert_eq!(
        pod_state(&d.pod_status(&pod, false).await),
        cri::PodSandboxState::SandboxReady as i32
    );

    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    assert_vm_gone(&vm_dir).await;
    d.remove_all_and_check().await;
}

/// QEMU killed under a running pod: the pod becomes NotReady, its
/// container exits with a reason, and stop and removal leave nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pod_not_ready_when_its_vm_dies() {
    let d = Berthd::start_with("vmkill", VM_CONFIG);
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("vm-kill", false);
    let pod = tokio::time::timeout(BOOT, d.run_pod(&pod_cfg, "vm"))
        .await
        .expect("RunPodSandbox within the boot limit");
    let (qemu, vm_dir) = qemu_of(&pod).expect("the pod's QEMU");
    let c = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("sleeper", &images().busybox, &["sleep", "1000"]),
        )
        .await;
    sigkill(qemu);
    let s = d.wait_container(&c, BOOT, exited).await;
    assert_ne!(s.exit_code, 0, "{s:?}");
    assert!(!s.reason.is_empty(), "an exit without a reason: {s:?}");
    wait_not_ready(&d, &pod, "with its VM dead").await;
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    assert_vm_gone(&vm_dir).await;
    d.remove_all_and_check().await;
}

/// The pod's shim killed: the pod becomes NotReady, and stopping it ends
/// its VM all the same (the shim binary's `delete`, as after any dead shim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pod_whose_shim_dies_is_not_ready_and_leaves_nothing() {
    let d = Berthd::start_with("vmshim", VM_CONFIG);
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("vm-shim", false);
    let pod = tokio::time::timeout(BOOT, d.run_pod(&pod_cfg, "vm"))
        .await
        .expect("RunPodSandbox within the boot limit");
    let (qemu, vm_dir) = qemu_of(&pod).expect("the pod's QEMU");
    d.sleeper(&pod, &pod_cfg, "c").await;
    let shims: Vec<i32> = processes_mentioning(d.socket.to_str().unwrap())
        .into_iter()
        .filter(|p| cmdline(*p).contains("containerd-shim-berth-vm-v2"))
        .collect();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    sigkill(shims[0]);
    wait_not_ready(&d, &pod, "with its shim dead").await;
    d.stop_pod(&pod).await;
    assert!(!alive(qemu), "QEMU outlived the pod's stop");
    d.remove_pod(&pod).await;
    assert_vm_gone(&vm_dir).await;
    d.remove_all_and_check().await;
}

/// berthd killed and started again: the VM pod is still ready, its
/// container still runs and answers ExecSync (berthd finds the shim, which
/// kept the VM), and QEMU's death is still noticed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pod_survives_a_berthd_restart() {
    let mut d = Berthd::start_with("vmrestart", VM_CONFIG);
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("vm-restart", false);
    let pod = tokio::time::timeout(BOOT, d.run_pod(&pod_cfg, "vm"))
        .await
        .expect("RunPodSandbox within the boot limit");
    let (qemu, vm_dir) = qemu_of(&pod).expect("the pod's QEMU");
    let c = d.sleeper(&pod, &pod_cfg, "c").await;
    d.kill();
    d.spawn();
    assert_eq!(
        pod_state(&d.pod_status(&pod, false).await),
        cri::PodSandboxState::SandboxReady as i32,
        "{}",
        d.log_tail()
    );
    assert_eq!(state_name(d.status(&c).await.state), "running");
    assert_eq!(d.sh(&c, "echo still-here").await, "still-here");
    assert_eq!(qemu_of(&pod).map(|q| q.0), Some(qemu), "the same VM");
    // The restarted berthd watches the sandbox again.
    sigkill(qemu);
    wait_not_ready(&d, &pod, "with its VM dead after the restart").await;
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    assert_vm_gone(&vm_dir).await;
    d.remove_all_and_check().await;
}

/// A guest that does not boot in time, and one whose kernel finds no init:
/// RunPodSandbox fails saying so, and nothing is left (no QEMU, no VM
/// directory, no pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boot_failures_are_reported_and_leave_nothing() {
    // Paths of this test's own, so that its QEMUs are found by them.
    let guest = std::env::temp_dir().join(unique("vm-guest"));
    std::fs::create_dir_all(&guest).unwrap();
    let real = std::env::var_os("BERTH_VM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/vm"));
    for f in ["vmlinux", "initramfs.cpio"] {
        std::os::unix::fs::symlink(real.join(f), guest.join(f)).unwrap();
    }
    let empty = guest.join("empty.cpio");
    std::fs::write(&empty, b"").unwrap();
    let d = Berthd::start_with(
        "vmboot",
        &format!(
            "[runtimes.slow]\nruntime_type = \"io.containerd.berth-vm.v2\"\nguest_dir = \"{g}\"\nboot_timeout = 1\n\
             [runtimes.broken]\nruntime_type = \"io.containerd.berth-vm.v2\"\nguest_dir = \"{g}\"\ninitramfs = \"{e}\"\n",
            g = guest.display(),
            e = empty.display()
        ),
    );
    let slow = d
        .try_run_pod(&d.pod_config("vm-slow", false), "slow")
        .await
        .unwrap_err();
    assert!(
        slow.message().contains("did not answer within 1.0 s"),
        "{slow:?}\n{}",
        d.log_tail()
    );
    let broken = d
        .try_run_pod(&d.pod_config("vm-broken", false), "broken")
        .await
        .unwrap_err();
    assert!(
        broken.message().contains("exited during boot"),
        "{broken:?}\n{}",
        d.log_tail()
    );
    assert!(d.pods(None).await.is_empty());
    let left = processes_mentioning(guest.to_str().unwrap());
    assert!(left.is_empty(), "QEMU left running: {left:?}");
    d.remove_all_and_check().await;
    let _ = std::fs::remove_dir_all(&guest);
}

/// What a VM cannot do is refused, by name: the host's namespaces, a
/// pod-wide PID namespace, VM settings on another handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pod_refuses_host_namespaces() {
    let d = Berthd::start_with("vmrefuse", VM_CONFIG);
    let host_net = d.pod_config("vm-host", true);
    let e = d.try_run_pod(&host_net, "vm").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("network"), "{e:?}");
    let mut shared_pid = d.pod_config("vm-pid", false);
    pod_ns(&mut shared_pid).pid = cri::NamespaceMode::Pod as i32;
    let e = d.try_run_pod(&shared_pid, "vm").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("PID namespace"), "{e:?}");
    d.remove_all_and_check().await;
}

/// An emptyDir of medium Memory (kubelet's tmpfs under the pod's
/// `volumes/kubernetes.io~empty-dir/`) lives in guest memory: one tmpfs
/// of the same size shared by the pod's containers, read-only where a
/// container asks, a kubelet subPath of it bound from the same tmpfs; the
/// host's tmpfs stays empty. A disk-backed emptyDir beside it is the
/// host's directory, shared into the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_empty_dir_lives_in_guest_memory_shared_by_the_pods_containers() {
    let d = Berthd::start_with("vmmem", VM_CONFIG);
    d.pull_busybox().await;
    let volumes = d
        .dir
        .join("kubelet/pods/uid-1/volumes/kubernetes.io~empty-dir");
    let memory = volumes.join("cache");
    let disk = volumes.join("scratch");
    std::fs::create_dir_all(&memory).unwrap();
    std::fs::create_dir_all(&disk).unwrap();
    let (ok, _, err) = host(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=16m,mode=0777",
        "tmpfs",
        memory.to_str().unwrap(),
    ]);
    assert!(ok, "mounting the host tmpfs: {err}");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = host(&["umount", "-l", self.0.to_str().unwrap()]);
        }
    }
    let _unmount = Unmount(memory.clone());
    // kubelet's subPath "logs/app" of the volume: a bind of that directory
    // of its tmpfs under the pod's volume-subpaths.
    let logs = memory.join("logs/app");
    std::fs::create_dir_all(&logs).unwrap();
    let subpath = d.dir.join("kubelet/pods/uid-1/volume-subpaths/cache/sub/0");
    std::fs::create_dir_all(&subpath).unwrap();
    let (ok, _, err) = host(&[
        "mount",
        "--bind",
        logs.to_str().unwrap(),
        subpath.to_str().unwrap(),
    ]);
    assert!(ok, "binding the subPath: {err}");
    let _unmount_subpath = Unmount(subpath.clone());

    let pod_cfg = d.pod_config("vm-mem", false);
    let pod = tokio::time::timeout(BOOT, d.run_pod(&pod_cfg, "vm"))
        .await
        .expect("RunPodSandbox within the boot limit");
    let mount = |path: &PathBuf, at: &str, readonly: bool| cri::Mount {
        container_path: at.into(),
        host_path: path.display().to_string(),
        readonly,
        ..Default::default()
    };
    let mut writer_cfg = d.container_config("writer", &images().busybox, &["sleep", "1000"]);
    writer_cfg.mounts = vec![
        mount(&memory, "/cache", false),
        mount(&disk, "/scratch", false),
    ];
    let writer = d.run_container(&pod, &pod_cfg, &writer_cfg).await;
    let mut reader_cfg = d.container_config("reader", &images().busybox, &["sleep", "1000"]);
    reader_cfg.mounts = vec![mount(&memory, "/cache", true)];
    let reader = d.run_container(&pod, &pod_cfg, &reader_cfg).await;
    let mut sub_cfg = d.container_config("sub", &images().busybox, &["sleep", "1000"]);
    sub_cfg.mounts = vec![mount(&subpath, "/logs", false)];
    let sub = d.run_container(&pod, &pod_cfg, &sub_cfg).await;

    d.sh(
        &writer,
        "echo in-guest > /cache/f && echo on-disk > /scratch/g",
    )
    .await;
    // The other container sees the same tmpfs, read-only for it.
    assert_eq!(d.sh(&reader, "cat /cache/f").await, "in-guest");
    assert!(d
        .sh(&reader, "echo x > /cache/h 2>&1; echo $?")
        .await
        .ends_with('1'));
    // A tmpfs of the host tmpfs's size, in the guest.
    let df = d.sh(&writer, "df -k /cache | tail -1").await;
    let fields: Vec<&str> = df.split_whitespace().collect();
    assert_eq!(fields[0], "tmpfs", "{df}");
    assert_eq!(fields[1], "16384", "{df}");
    // The subPath is that directory of the same guest tmpfs, both ways.
    d.sh(&writer, "echo from-volume > /cache/logs/app/v").await;
    assert_eq!(d.sh(&sub, "cat /logs/v").await, "from-volume");
    d.sh(&sub, "echo from-subpath > /logs/s").await;
    assert_eq!(d.sh(&reader, "cat /cache/logs/app/s").await, "from-subpath");
    // Nothing reached the host's tmpfs (but kubelet's subPath directory);
    // the disk-backed volume is the host's.
    assert!(!memory.join("f").exists());
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_to_string(disk.join("g")).unwrap(),
        "on-disk\n"
    );
    // (kubelet's own mounts, not the runtime's to clean up.)
    drop(_unmount_subpath);
    drop(_unmount);
    d.remove_all_and_check().await;
}
