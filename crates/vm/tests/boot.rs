//! Boots real VMs (QEMU microvm; TCG on this machine) from the guest
//! scripts/build-guest wrote (BERTH_GUEST_DIR, default /var/lib/berth/vm).

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_vm::{RunCommandRequest, Vm, VmConfig, VmError};

fn guest_dir() -> PathBuf {
    std::env::var_os("BERTH_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/vm"))
}

/// The guest with Debian's generic kernel, which has 9p
/// (`scripts/build-guest --kernel generic`): BERTH_GENERIC_GUEST_DIR,
/// default /var/lib/berth/vm-generic.
fn generic_guest_dir() -> PathBuf {
    std::env::var_os("BERTH_GENERIC_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/vm-generic"))
}

fn guest_manifest() -> serde_json::Value {
    let path = guest_dir().join("guest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guest)", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn config(name: &str) -> (tempfile::TempDir, VmConfig) {
    config_of(&guest_dir(), name)
}

fn config_of(g: &Path, name: &str) -> (tempfile::TempDir, VmConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let config = VmConfig::new(
        name,
        tmp.path().join("vm"),
        g.join("vmlinux"),
        g.join("initramfs.cpio"),
    );
    (tmp, config)
}

fn alive(pid: i32) -> bool {
    // A zombie is gone as far as the VM goes: look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_vm_boots_its_agent_answers_and_stop_leaves_nothing() {
    let manifest = guest_manifest();
    let (_tmp, config) = config("boot");
    let dir = config.dir.clone();
    let vm = Vm::boot(config).await.expect("booting");
    let pid = vm.pid();
    assert!(alive(pid));
    let check = vm.agent().check(Duration::from_secs(5)).await.unwrap();
    assert_eq!(check.kernel, manifest["kernel_release"].as_str().unwrap());
    assert!(check.uptime_seconds > 0.0);
    // The guest's clock was set from the host's.
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (host - check.unix_nanos).abs() < 2_000_000_000,
        "guest clock off by {} ns",
        host - check.unix_nanos
    );
    assert!(
        check.modules.iter().any(|m| m == "virtio_console"),
        "{:?}",
        check.modules
    );
    assert!(
        check.modules.iter().any(|m| m == "overlay"),
        "{:?}",
        check.modules
    );
    eprintln!(
        "booted in {:?}; guest uptime {:.2} s",
        vm.boot_time(),
        check.uptime_seconds
    );

    // A process in the guest: its output and exit code come back.
    let run = |args: &[&str]| RunCommandRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let out = vm
        .agent()
        .run_command(&run(&["/init", "--version"]), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("berth-agent {}", check.version)
    );
    let out = vm
        .agent()
        .run_command(&run(&["/init", "--bogus"]), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument \"--bogus\""));
    let err = vm
        .agent()
        .run_command(&run(&["/no/such/program"]), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");

    // Paused, the guest does not answer; resumed, it does, its clock set
    // again.
    vm.pause().await.unwrap();
    assert!(vm.agent().check(Duration::from_secs(2)).await.is_err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    vm.resume(Duration::from_secs(10)).await.unwrap();
    let check = vm.agent().check(Duration::from_secs(10)).await.unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (host - check.unix_nanos).abs() < 2_000_000_000,
        "guest clock off by {} ns after resume",
        host - check.unix_nanos
    );

    let rss = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Pss:").map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let daemon = vm.shared().unwrap().daemon().unwrap().pid();
    eprintln!(
        "host memory (PSS): QEMU {}, virtiofsd {}",
        rss(pid),
        rss(daemon)
    );
    vm.stop(Duration::from_secs(10)).await;
    assert!(!alive(pid), "QEMU {pid} still runs after stop");
    assert!(!dir.exists(), "{} left after stop", dir.display());
}

/// The agent is the guest's init: when it dies the kernel panics, and a
/// panicking guest must end its VM (panic=-1 reboots at once, QEMU runs
/// with -no-reboot) rather than hang with its containers gone. The panic
/// is made with sysrq: init cannot be killed from inside the guest.
#[tokio::test]
async fn a_guest_whose_kernel_panics_ends_its_vm() {
    let (_tmp, config) = config("panic");
    let dir = config.dir.clone();
    let mut vm = Vm::boot(config).await.expect("booting");
    let crash = RunCommandRequest {
        args: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            "echo c > /proc/sysrq-trigger".into(),
        ],
        ..Default::default()
    };
    // No answer comes: the guest is gone.
    let _ = vm.agent().run_command(&crash, Duration::from_secs(5)).await;
    tokio::time::timeout(Duration::from_secs(30), vm.wait())
        .await
        .expect("a panicked guest ends its VM");
    assert!(!vm.is_running());
    assert!(vm.reconnect_agent(Duration::from_secs(2)).await.is_err());
    Vm::cleanup(&dir);
    assert!(!dir.exists(), "{} left", dir.display());
    assert_eq!(qemu_processes_of(&dir), Vec::<i32>::new());
}

#[tokio::test]
async fn a_killed_hypervisor_is_seen_as_ended() {
    let (_tmp, config) = config("killed");
    let dir = config.dir.clone();
    let vm = Vm::boot(config).await.expect("booting");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(vm.pid()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), vm.wait())
        .await
        .expect("the VM's end is seen");
    assert!(!vm.is_running());
    let err = vm.agent().check(Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, VmError::Agent(_)), "{err}");
    let pid = vm.pid();
    vm.stop(Duration::from_secs(1)).await;
    assert!(!alive(pid));
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_kernel_that_does_not_boot_fails_within_the_limit_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // An ELF header QEMU accepts as a file but no kernel.
    let bogus = tmp.path().join("bogus-kernel");
    std::fs::write(&bogus, b"\x7fELF not a kernel").unwrap();
    let g = guest_dir();
    let mut config = VmConfig::new(
        "bogus",
        tmp.path().join("vm"),
        bogus,
        g.join("initramfs.cpio"),
    );
    config.boot_timeout = Duration::from_secs(5);
    let err = Vm::boot(config)
        .await
        .err()
        .expect("a bogus kernel must not boot");
    assert!(
        matches!(
            err,
            VmError::ExitedDuringBoot { .. } | VmError::BootTimeout { .. }
        ),
        "{err}"
    );
    assert!(!tmp.path().join("vm").exists());
    assert_nothing_left(&tmp.path().join("vm"), tmp.path()).await;

    let missing = VmConfig::new(
        "missing",
        tmp.path().join("vm2"),
        Path::new("/nonexistent/vmlinux").into(),
        g.join("initramfs.cpio"),
    );
    let err = Vm::boot(missing).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("/nonexistent/vmlinux does not exist"),
        "{err}"
    );
    assert!(!tmp.path().join("vm2").exists());
}

/// Live QEMU processes started for the VM directory `dir`.
fn qemu_processes_of(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid: &i32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle) && alive(*pid)
        })
        .collect()
}

/// No process names the VM directory `dir` (QEMU, virtiofsd) and nothing
/// is mounted under `mounts_below`. A failed boot's processes are killed
/// and seen to exit, but virtiofsd's sandbox child ends a moment later: a
/// loaded machine gets up to 5 s before this calls it a leak.
async fn assert_nothing_left(dir: &Path, mounts_below: &Path) {
    for _ in 0..100 {
        if qemu_processes_of(dir).is_empty() && mounts_under(mounts_below).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        qemu_processes_of(dir),
        Vec::<i32>::new(),
        "a process is left"
    );
    assert_eq!(mounts_under(mounts_below), Vec::<String>::new());
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_shared_directory_reaches_the_guest_read_only_where_asked() {
    shared_directory(
        &guest_dir(),
        berth_vm::Transport::VirtioFs {
            virtiofsd: berth_vm::DEFAULT_VIRTIOFSD.into(),
        },
    )
    .await;
}

#[tokio::test]
async fn the_9p_fallback_shares_alike() {
    shared_directory(&generic_guest_dir(), berth_vm::Transport::NineP).await;
}

#[tokio::test]
async fn a_guest_without_9p_refuses_the_9p_transport_by_name_and_leaves_nothing() {
    // The default guest's kernel (Debian's cloud kernel) has no 9p.
    let lacking = guest_manifest()["module_groups_lacking"].clone();
    assert!(
        lacking.as_array().unwrap().iter().any(|g| g == "9p"),
        "the default guest should lack 9p: {lacking}"
    );
    let (tmp, mut config) = config("no9p");
    config.share = Some(berth_vm::Transport::NineP);
    config.boot_timeout = Duration::from_secs(60);
    let dir = config.dir.clone();
    let err = Vm::boot(config).await.err().expect("9p must be refused");
    assert!(matches!(err, VmError::ExitedDuringBoot { .. }), "{err}");
    assert!(err.to_string().contains("module group \"9p\""), "{err}");
    assert!(!dir.exists());
    assert_nothing_left(&dir, tmp.path()).await;
}

async fn shared_directory(guest: &Path, transport: berth_vm::Transport) {
    let (tmp, mut config) = config_of(guest, "shared");
    config.share = Some(transport);
    let dir = config.dir.clone();
    let tools = tmp.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::copy("/bin/busybox", tools.join("busybox")).unwrap();
    std::fs::write(tools.join("hello.txt"), "hello from the host\n").unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();

    let vm = Vm::boot(config).await.expect("booting");
    let daemon = vm
        .shared()
        .expect("a shared directory")
        .daemon()
        .map(|d| d.pid());
    let shared = vm.shared().unwrap();
    let guest_tools = shared.share(&tools, "tools", true).unwrap();
    assert_eq!(guest_tools, format!("{}/tools", berth_vm::GUEST_SHARED_DIR));
    vm.mount_shared(Duration::from_secs(10)).await.unwrap();
    let mount = shared.guest_mount();
    let sh = |script: String| RunCommandRequest {
        args: vec![
            format!("{guest_tools}/busybox"),
            "sh".into(),
            "-c".into(),
            script,
        ],
        env: vec![format!("PATH={guest_tools}")],
        ..Default::default()
    };
    let wait = Duration::from_secs(20);
    let out = vm
        .agent()
        .run_command(&sh(format!("busybox cat {guest_tools}/hello.txt")), wait)
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, b"hello from the host\n".as_slice()),
        "{out:?}"
    );

    // Read-only is the host's: the guest cannot write there.
    let out = vm
        .agent()
        .run_command(&sh(format!("echo x > {guest_tools}/new")), wait)
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    assert!(!tools.join("new").exists());

    // Shared after the guest mounted the directory, and writable.
    let guest_data = shared.share(&data, "data", false).unwrap();
    let out = vm
        .agent()
        .run_command(&sh(format!("echo written > {guest_data}/from-guest")), wait)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(data.join("from-guest")).unwrap(),
        "written\n"
    );

    // Taken out: gone in the guest, once its cached lookups expire
    // (cache=auto: one second).
    shared.unshare("data").unwrap();
    let script = format!("for i in 1 2 3 4 5 6; do busybox ls {guest_data}/from-guest || exit 0; busybox sleep 0.5; done; exit 1");
    let out = vm.agent().run_command(&sh(script), wait).await.unwrap();
    assert_eq!(out.exit_code, 0, "still seen in the guest: {out:?}");

    // Names that would leave the shared directory are refused.
    for name in ["../escape", "a/b", "", ".."] {
        let err = shared.share(&data, name, false).unwrap_err();
        assert!(
            err.to_string().contains("not a single path component"),
            "{name:?}: {err}"
        );
    }
    let mut bad = mount.clone();
    bad.fstype = "nfs".into();
    let err = vm.agent().mount(&bad, wait).await.unwrap_err();
    assert!(err.to_string().contains("\"nfs\" is not one of"), "{err}");
    let mut bad = mount.clone();
    bad.target = "/run/../etc".into();
    let err = vm.agent().mount(&bad, wait).await.unwrap_err();
    assert!(err.to_string().contains("without \"..\""), "{err}");

    vm.stop(Duration::from_secs(10)).await;
    assert!(
        !daemon.is_some_and(alive),
        "virtiofsd {daemon:?} still runs"
    );
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert!(!dir.exists());
    // The host's files are untouched by the unmounts.
    assert!(tools.join("hello.txt").exists() && data.join("from-guest").exists());
}

#[tokio::test]
async fn a_vm_dropped_without_stop_leaves_nothing() {
    let (tmp, config) = config("dropped");
    let dir = config.dir.clone();
    let vm = Vm::boot(config).await.expect("booting");
    vm.shared()
        .unwrap()
        .share(tmp.path(), "a-share", true)
        .unwrap();
    let qemu = vm.pid();
    let virtiofsd = vm.shared().unwrap().daemon().unwrap().pid();
    // An owner that panics or returns early.
    drop(vm);
    for _ in 0..100 {
        if !alive(qemu) && !alive(virtiofsd) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(qemu), "QEMU {qemu} still runs");
    assert!(!alive(virtiofsd), "virtiofsd {virtiofsd} still runs");
    assert!(!dir.exists());
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
}

#[tokio::test]
async fn a_disk_reaches_the_guest_read_only_where_asked() {
    let (tmp, mut disk_config) = config("disk");
    // An ext4 image holding one file, made from a directory.
    let content = tmp.path().join("content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("on-disk.txt"), "from a block device\n").unwrap();
    let image = tmp.path().join("disk.img");
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("16M")
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    disk_config.disks = vec![berth_vm::Disk {
        path: image.clone(),
        read_only: true,
    }];
    let tools = tmp.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::copy("/bin/busybox", tools.join("busybox")).unwrap();
    let vm = Vm::boot(disk_config).await.expect("booting");
    let guest_tools = vm.shared().unwrap().share(&tools, "tools", true).unwrap();
    vm.mount_shared(Duration::from_secs(10)).await.unwrap();
    let mount = berth_vm::MountRequest {
        fstype: "ext4".into(),
        source: "/dev/vda".into(),
        target: "/run/disk".into(),
        options: vec![],
        read_only: true,
    };
    vm.agent()
        .mount(&mount, Duration::from_secs(10))
        .await
        .unwrap();
    let run = |script: &str| RunCommandRequest {
        args: vec![
            format!("{guest_tools}/busybox"),
            "sh".into(),
            "-c".into(),
            script.into(),
        ],
        env: vec![format!("PATH={guest_tools}")],
        ..Default::default()
    };
    let wait = Duration::from_secs(20);
    let out = vm
        .agent()
        .run_command(&run("busybox cat /run/disk/on-disk.txt"), wait)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"from a block device\n", "{out:?}");
    // Read-only at the device: even a read-write mount of it is refused.
    let out = vm
        .agent()
        .run_command(
            &run("busybox mount -o remount,rw /run/disk && busybox touch /run/disk/x"),
            wait,
        )
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0, "{out:?}");
    vm.stop(Duration::from_secs(10)).await;
    // The image is untouched.
    assert!(std::fs::metadata(&image).is_ok());

    let (_tmp2, mut missing) = config("no-disk");
    missing.disks = vec![berth_vm::Disk {
        path: "/nonexistent/disk.img".into(),
        read_only: false,
    }];
    let err = Vm::boot(missing).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("/nonexistent/disk.img does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn a_boot_abandoned_half_way_leaves_nothing() {
    let (tmp, config) = config("abandoned");
    let dir = config.dir.clone();
    // Long enough for QEMU and virtiofsd to start, not for the guest.
    let booting = tokio::time::timeout(Duration::from_millis(600), Vm::boot(config)).await;
    assert!(booting.is_err(), "booted within 600 ms under emulation?");
    assert!(!dir.exists(), "{} left", dir.display());
    // QEMU and virtiofsd are killed and reaped before the drop returns;
    // virtiofsd's sandbox child follows on its parent-death signal, a
    // moment later (CI on 7e51b3f caught it still there).
    assert_nothing_left(&dir, tmp.path()).await;
}

/// vsock is the agent's channel under KVM on hosts with vhost-vsock; it is
/// chosen only there. Asked for where vhost-vsock is missing (this machine:
/// no vhost_vsock module), the boot fails naming the device, within the
/// limit, and leaves nothing.
#[tokio::test]
async fn vsock_is_chosen_only_with_vhost_vsock_and_its_absence_is_named() {
    let (tmp, mut config) = config("vsock");
    let dir = config.dir.clone();
    let has_vhost_vsock = Path::new("/dev/vhost-vsock").exists();
    let (accel, _) = berth_vm::Accel::detect();
    let chosen = berth_vm::AgentChannel::choose(accel, &dir);
    if accel == berth_vm::Accel::Kvm && has_vhost_vsock {
        assert!(matches!(chosen, berth_vm::AgentChannel::Vsock { .. }));
    } else {
        assert_eq!(chosen, berth_vm::AgentChannel::Serial);
    }
    if has_vhost_vsock {
        // The failure below cannot be made here.
        return;
    }
    config.channel = Some(berth_vm::AgentChannel::Vsock { cid: 77 });
    config.boot_timeout = Duration::from_secs(30);
    let err = Vm::boot(config).await.err().expect("no vhost-vsock here");
    assert!(matches!(err, VmError::ExitedDuringBoot { .. }), "{err}");
    assert!(err.to_string().contains("vhost-vsock"), "{err}");
    assert!(!dir.exists());
    assert_nothing_left(&dir, tmp.path()).await;
}
