//! containerd 1.6 (Debian's `containerd` and `ctr`) using the `vm` runtime
//! class's shim, `containerd-shim-berth-vm-v2`, as `io.containerd.berth-vm.v2`:
//! each pod boots a microVM (QEMU under TCG here) with berth's agent as its
//! init, and its containers run inside. Needs root, QEMU and the guest from
//! scripts/build-guest (BERTH_VM_GUEST_DIR, default /var/lib/berth/vm).
//!
//! Slow (a VM boot each): run with `--test-threads=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_testkit::containerd::*;
use berth_testkit::prelude::*;
use berth_testkit::procs::alive;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-berth-vm-v2");
const RUNTIME: &str = "io.containerd.berth-vm.v2";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Ends the VMs of a test's pods whatever happens: containerd's harness
/// kills the shims of a failed test, and a VM outlives its killed shim
/// (its QEMU and virtiofsd name the VM's directory).
struct VmGuard(Vec<PathBuf>);

impl Drop for VmGuard {
    fn drop(&mut self) {
        for dir in &self.0 {
            kill_processes_mentioning(&dir.display().to_string());
            unmount_under(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start_containerd() -> Containerd {
    let shim_dir = Path::new(SHIM).parent().unwrap().to_path_buf();
    Containerd::start(Setup {
        prefix: "berth-vm",
        tools: Vec::new(),
        extra_config: String::new(),
        path_prepend: vec![shim_dir],
        runtime_state_parent: PathBuf::from("/run/containerd/berth"),
        delete_leftover: None,
    })
}

/// The VM directory of pod `group` (QEMU's sockets, PID files, shares).
fn vm_dir(ctd: &Containerd, group: &str) -> PathBuf {
    berth_shim::vm::vm_dir(&ctd.namespace, group)
}

/// QEMU and virtiofsd processes of that VM.
fn vm_processes(dir: &Path) -> Vec<(i32, String)> {
    processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter(|(pid, _)| alive(*pid))
        .collect()
}

fn shim_processes(ctd: &Containerd) -> Vec<(i32, String)> {
    processes_mentioning(&ctd.socket.display().to_string())
        .into_iter()
        .filter(|(pid, cmd)| cmd.contains("containerd-shim-berth-vm-v2") && alive(*pid))
        .collect()
}

/// Nothing of the pods is left: containers, shims, QEMU, virtiofsd, the
/// VM directories and the mounts under them.
fn assert_all_gone(ctd: &Containerd, ids: &[&str], groups: &[&str]) {
    for id in ids {
        ctd.assert_container_gone(id);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !shim_processes(ctd).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(shim_processes(ctd), vec![], "shims left running");
    for group in groups {
        let dir = vm_dir(ctd, group);
        assert_eq!(vm_processes(&dir), vec![], "VM processes left running");
        assert!(!dir.exists(), "VM directory {} left behind", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&dir.display().to_string()),
            "mounts left under {}",
            dir.display()
        );
    }
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_owned()
}

/// `ctr run --rm`: the container runs on the guest's kernel, its output
/// reaches ctr and its exit status becomes ctr's; afterwards the VM is gone.
#[test]
fn vm_run_rm_output_exit_code_guest_kernel_and_cleanup() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();
    let id = unique("vmrun");
    let _vm = VmGuard(vec![vm_dir(&ctd, &id)]);
    let fifo = ctd.fifo_dir();
    let started = Instant::now();
    let out = ctd.run(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--fifo-dir",
            &fifo,
            IMAGE_REF,
            &id,
            "sh",
            "-c",
            "uname -r; echo hello-from-the-vm; echo to-stderr >&2; exit 7",
        ],
        SLOW,
    );
    eprintln!("ctr run --rm in a VM: {:?}", started.elapsed());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[1] == "hello-from-the-vm" && out.code == Some(7),
        "expected the guest's kernel, hello-from-the-vm and exit code 7 from {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    assert_ne!(
        lines[0],
        host_kernel(),
        "the container ran on the host's kernel"
    );
    assert!(out.stderr.contains("to-stderr"), "{}", out.describe());
    assert_all_gone(&ctd, &[&id], &[&id]);
}

/// A detached task: a bind mount reaches the host, writes to the root
/// land in containerd's snapshot, exec, ps, pause, resume, metrics,
/// SIGKILL (137), delete, and nothing left.
#[test]
fn vm_detached_bind_mount_exec_ps_pause_resume_metrics_kill_delete() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();
    let id = unique("vmdet");
    let _vm = VmGuard(vec![vm_dir(&ctd, &id)]);
    let fifo = ctd.fifo_dir();
    let out_dir = ctd.dir.join(unique("out"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let ticks = out_dir.join("ticks");
    let mount = format!(
        "type=bind,src={},dst=/out,options=rbind:rw",
        out_dir.display()
    );
    ctd.run_ok(
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--fifo-dir",
            &fifo,
            "--mount",
            &mount,
            IMAGE_REF,
            &id,
            "sh",
            "-c",
            "echo in-root > /written-in-root; while :; do echo tick >> /out/ticks; sleep 0.1; done",
        ],
        SLOW,
    );
    assert_eq!(ctd.task_status(&id).as_deref(), Some("RUNNING"));
    let dir = vm_dir(&ctd, &id);
    assert!(
        vm_processes(&dir)
            .iter()
            .any(|(_, c)| c.starts_with("qemu-system")),
        "no QEMU runs for {id}: {:?}",
        vm_processes(&dir)
    );
    let n = wait_lines_above(&ticks, 2, Duration::from_secs(30));
    assert!(n > 2, "the container wrote {n} lines to the shared /out");
    // The root is containerd's snapshot, shared read-write.
    let written = ctd.bundle(&id).join("rootfs/written-in-root");
    assert_eq!(
        std::fs::read_to_string(&written).ok().as_deref(),
        Some("in-root\n"),
        "a write to the container's root should land in the host's snapshot"
    );

    let out = ctd.run(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "--fifo-dir",
            &fifo,
            &id,
            "sh",
            "-c",
            "echo in-exec; cat /written-in-root; exit 3",
        ],
        SLOW,
    );
    assert!(
        out.stdout == "in-exec\nin-root\n" && out.code == Some(3),
        "expected the exec's output and exit code 3 from {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );

    // ps: the guest's pids of the container (its init is 1 in its own
    // PID namespace, but berth lists the guest's view).
    let ps = ctd.run_ok(&["tasks", "ps", &id], QUICK);
    let rows = parse_ctr_ps(&ps.stdout);
    assert!(!rows.is_empty(), "ctr tasks ps: {}", ps.describe());

    ctd.run_ok(&["tasks", "pause", &id], QUICK);
    assert_eq!(ctd.task_status(&id).as_deref(), Some("PAUSED"));
    let before = line_count(&ticks);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        line_count(&ticks),
        before,
        "the container kept writing while PAUSED"
    );
    ctd.run_ok(&["tasks", "resume", &id], QUICK);
    assert_eq!(ctd.task_status(&id).as_deref(), Some("RUNNING"));
    let n = wait_lines_above(&ticks, before + 2, Duration::from_secs(20));
    assert!(n > before + 2, "the container did not resume writing");

    let metrics = ctd.run_ok(&["tasks", "metrics", &id], QUICK);
    let memory = ctr_metric(&metrics.stdout, "memory.usage_in_bytes");
    assert!(
        memory.is_some_and(|m| m > 0),
        "memory usage from the guest's cgroup: {}",
        metrics.describe()
    );

    ctd.run_ok(&["tasks", "kill", "-s", "SIGKILL", &id], QUICK);
    ctd.wait_task_status(&id, "STOPPED", Duration::from_secs(30), "SIGKILL");
    let listed = ctd.run_ok(&["tasks", "ls"], QUICK);
    assert!(
        listed.stdout.lines().any(|l| l.contains(&id)),
        "{}",
        listed.describe()
    );
    let deleted = ctd.run_ok(&["tasks", "delete", &id], QUICK);
    assert!(
        deleted.stderr.contains("exit code 137"),
        "ctr tasks delete should report the SIGKILL's 137: {}",
        deleted.describe()
    );
    ctd.run_ok(&["containers", "delete", &id], QUICK);
    assert_all_gone(&ctd, &[&id], &[&id]);
}

/// Two containers of one pod (same sandbox-id annotation) run in one VM:
/// they reach each other on localhost; the VM outlives the first one's
/// deletion and ends with the last.
#[test]
fn vm_pod_containers_share_one_vm() {
    require_root();
    let ctd = start_containerd();
    ctd.import_image();
    let pod = unique("vmpod");
    let _vm = VmGuard(vec![vm_dir(&ctd, &pod)]);
    let annotation = format!("{SANDBOX_ID}={pod}");
    let fifo = ctd.fifo_dir();
    let server = unique("server");
    ctd.run_ok(
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--fifo-dir",
            &fifo,
            "--annotation",
            &annotation,
            IMAGE_REF,
            &server,
            "nc",
            "-ll",
            "-p",
            "8080",
            "-e",
            "echo",
            "pong",
        ],
        SLOW,
    );
    let client = unique("client");
    let out = ctd.run(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--fifo-dir",
            &fifo,
            "--annotation",
            &annotation,
            IMAGE_REF,
            &client,
            "sh",
            "-c",
            "for i in $(seq 50); do out=$(nc 127.0.0.1 8080 </dev/null) && [ -n \"$out\" ] && echo \"got $out\" && exit 0; sleep 0.2; done; exit 1",
        ],
        SLOW,
    );
    assert!(
        out.stdout.trim() == "got pong" && out.code == Some(0),
        "the client should reach the server on localhost: {}\n{}",
        out.describe(),
        ctd.diagnostics()
    );
    let dir = vm_dir(&ctd, &pod);
    let qemus: Vec<_> = vm_processes(&dir)
        .into_iter()
        .filter(|(_, c)| c.starts_with("qemu-system"))
        .collect();
    assert_eq!(qemus.len(), 1, "one QEMU for the pod: {qemus:?}");
    assert_eq!(ctd.task_status(&server).as_deref(), Some("RUNNING"));

    ctd.run_ok(&["tasks", "kill", "-s", "SIGKILL", &server], QUICK);
    ctd.wait_task_status(&server, "STOPPED", Duration::from_secs(30), "SIGKILL");
    ctd.run_ok(&["tasks", "delete", &server], QUICK);
    ctd.run_ok(&["containers", "delete", &server], QUICK);
    assert_all_gone(&ctd, &[&server, &client], &[&pod]);
}

/// `ctr run --rm -t` (on a terminal made by `script`): the guest process's
/// stdio is a terminal, its input and output cross the VM boundary.
#[test]
fn vm_run_tty() {
    require_root();
    require_tools(&[("script", &[], "util-linux")]);
    let ctd = start_containerd();
    ctd.import_image();
    let id = unique("vmtty");
    let _vm = VmGuard(vec![vm_dir(&ctd, &id)]);
    ctd.assert_run_tty(RUNTIME, IMAGE_REF, &id);
    assert_all_gone(&ctd, &[&id], &[&id]);
}
