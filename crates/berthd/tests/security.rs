//! Attacks on a berthd node, each performed for real: a local user running a
//! setuid binary out of a container's rootfs, a log_path that writes host
//! files, a CRI socket reachable in the window before its chmod, secrets
//! readable in bundles, descriptors berthd inherited reaching shims and
//! containers, and `recursive_read_only` mounts that must be enforced. Needs
//! root (and creates nothing outside its temporary directories).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;

/// The unprivileged host user the attacks run as.
const NOBODY: &str = "65534";

/// Runs `args` as uid/gid 65534 without supplementary groups: (success, stdout+stderr).
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        // Through a shell: setpriv's own exec of the program still carries
        // root's access to the path.
        .args(["sh", "-c", "exec \"$@\"", "sh"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Makes the test's own directory traversable, as /var/lib and /run are:
/// only berthd's permissions may stand between a user and its files.
fn open_up(d: &Berthd) {
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_users_cannot_run_setuid_binaries_from_a_container_rootfs() {
    let d = Berthd::start("suid");
    open_up(&d);
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("suid", true);
    let pod = d.run_pod(&pod_cfg, "").await;
    let c = d.sleeper(&pod, &pod_cfg, "c").await;
    // What an image could ship: a setuid-root program in the container's
    // filesystem (here the host's `id`, so it runs from the host's view).
    let rootfs = d.state.join("containers").join(&c).join("rootfs");
    assert!(
        rootfs.join("bin").is_dir(),
        "rootfs is mounted at {rootfs:?}"
    );
    let planted = rootfs.join("suid-id");
    berth_testkit::rootfs::copy_executable(Path::new("/usr/bin/id"), &planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(d.sh(&c, "stat -c %a /suid-id").await, "4755");

    let (ran, out) = as_nobody(&[planted.to_str().unwrap(), "-u"]);
    assert!(
        !ran || out.trim() != "0",
        "a local user got euid 0 from the container's rootfs: {out}"
    );
    assert!(out.contains("Permission denied"), "{out}");
    // Nothing of berthd's state is reachable.
    for dir in [&d.state, &d.root] {
        let (listed, out) = as_nobody(&["ls", dir.to_str().unwrap()]);
        assert!(!listed, "{} is readable by others: {out}", dir.display());
        assert_eq!(mode(dir) & 0o077, 0, "{} is {:o}", dir.display(), mode(dir));
    }
    // Second layer: even through traversable parents the host's view of
    // the rootfs is nosuid, while the container's own root is not.
    let host_view = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rootfs_line = host_view
        .lines()
        .find(|l| l.split(' ').nth(4) == rootfs.to_str())
        .unwrap_or_else(|| panic!("{} is not a mount", rootfs.display()));
    assert!(
        rootfs_line
            .split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "nosuid"),
        "{rootfs_line}"
    );
    let dirs = [
        d.state.clone(),
        d.state.join("containers"),
        rootfs.parent().unwrap().to_path_buf(),
    ];
    let saved: Vec<u32> = dirs.iter().map(|p| mode(p)).collect();
    for p in &dirs {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ran, out) = as_nobody(&[planted.to_str().unwrap(), "-u"]);
    for (p, m) in dirs.iter().zip(saved) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    assert!(ran, "{out}");
    assert_eq!(out.trim(), NOBODY, "setuid worked through the host's view");
    let inside = d
        .sh(&c, "awk '$5 == \"/\" {print $6}' /proc/self/mountinfo")
        .await;
    assert!(
        !inside.split(',').any(|o| o == "nosuid"),
        "container root: {inside}"
    );
    // The container still sees its setuid bit (its view is unchanged).
    assert_eq!(d.sh(&c, "stat -c %a /suid-id").await, "4755");
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_path_stays_inside_the_log_directory() {
    let d = Berthd::start("logpath");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("logpath", true);
    let pod = d.run_pod(&pod_cfg, "").await;
    let log_dir = PathBuf::from(&pod_cfg.log_directory);
    std::fs::create_dir_all(&log_dir).unwrap();
    let outside = d.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.join("host-file");

    // An absolute log_path, `..`, and a symlink planted in the log directory.
    std::os::unix::fs::symlink(&outside, log_dir.join("planted")).unwrap();
    for (name, log_path) in [
        ("abs", target.display().to_string()),
        ("dots", format!("../../outside/{}", "host-file")),
        ("link", "planted/host-file".to_owned()),
    ] {
        let mut cfg = d.container_config(name, &images().busybox, &["echo", "PWNED"]);
        cfg.log_path = log_path.clone();
        let err = d
            .try_create(&pod, &pod_cfg, &cfg)
            .await
            .expect_err(&format!("log_path {log_path:?} was accepted"));
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{log_path}: {err}"
        );
        assert!(err.message().contains("log"), "{err}");
        assert!(!target.exists(), "{log_path:?} created a host file");
    }
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    assert!(d.containers(None).await.is_empty());

    // A proper one works, and the log is 0640 as the kubelet expects.
    let mut cfg = d.container_config("ok", &images().busybox, &["echo", "fine"]);
    cfg.log_path = "ok/0.log".into();
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    d.wait_container(&c, Duration::from_secs(10), exited).await;
    let log = log_dir.join("ok/0.log");
    assert!(std::fs::read_to_string(&log).unwrap().contains("fine"));
    assert_eq!(mode(&log), 0o640);
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_secrets_are_root_only() {
    let d = Berthd::start("secrets");
    open_up(&d);
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("secrets", true);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    cfg.envs = vec![cri::KeyValue {
        key: "DB_PASSWORD".into(),
        value: "hunter2-secret".into(),
    }];
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let bundle = d.state.join("containers").join(&c);
    let config = bundle.join("config.json");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("hunter2-secret"));
    assert_eq!(mode(&config), 0o600);
    let (read, out) = as_nobody(&["cat", config.to_str().unwrap()]);
    assert!(!read && !out.contains("hunter2"), "{out}");
    // Nothing under berthd's directories is open to others.
    let mut open = Vec::new();
    for top in [&d.state, &d.root] {
        let mut stack = vec![top.clone()];
        while let Some(p) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                if meta.mode() & 0o007 != 0 && p.starts_with(&d.state) && p == *top {
                    open.push(format!("{} {:o}", p.display(), meta.mode() & 0o777));
                }
                // Not into container filesystems: their modes are the image's.
                if p.file_name().is_some_and(|n| n == "rootfs" || n == "fs") {
                    continue;
                }
                stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
            } else if meta.is_file() && meta.mode() & 0o004 != 0 && p.ends_with("config.json") {
                open.push(format!("{} {:o}", p.display(), meta.mode() & 0o777));
            }
        }
    }
    assert!(open.is_empty(), "readable by others: {open:?}");
    // The pod's log directory: the kubelet's, files 0640.
    let log = PathBuf::from(&pod_cfg.log_directory).join("c/0.log");
    assert_eq!(mode(&log), 0o640);
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
}

#[test]
fn cri_socket_is_never_open_to_others() {
    // A permissive umask, as the window in the attack needs.
    for round in 0..3 {
        let watched = PathBuf::from("/tmp").join(unique("sockrace"));
        std::fs::create_dir_all(&watched).unwrap();
        let socket = watched.join("state/berth.sock");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A watcher records the socket's mode the first moment it exists.
        let first_mode = {
            let socket = socket.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    if let Ok(m) = std::fs::symlink_metadata(&socket) {
                        return Some(m.permissions().mode() & 0o777);
                    }
                    std::hint::spin_loop();
                }
                // berthd answered before this thread looked again.
                std::fs::symlink_metadata(&socket)
                    .ok()
                    .map(|m| m.permissions().mode() & 0o777)
            })
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("umask 000; exec \"$0\" \"$@\"")
            .arg(BERTHD)
            .arg("--config")
            .arg("/dev/null")
            .arg("--root")
            .arg(watched.join("root"))
            .arg("--state")
            .arg(watched.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "berthd did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = first_mode.join().unwrap();
        let (connected, out) = as_nobody(&[
            "sh",
            "-c",
            &format!("exec 3<>{} && echo CONNECTED", socket.display()),
        ]);
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&watched);
        assert_eq!(
            seen,
            Some(0o600),
            "round {round}: socket first seen as {seen:?}"
        );
        assert!(!connected, "an unprivileged user reached the socket: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_berthd_inherited_reach_no_shim_or_container() {
    let leak = PathBuf::from("/tmp").join(unique("leaked-dir"));
    std::fs::create_dir_all(&leak).unwrap();
    let open_leak = format!("exec 7<{}; exec \"$0\" \"$@\"", leak.display());
    let d = Berthd::start_wrapped("fdleak", "", &["sh", "-c", &open_leak]);
    let berthd_pid = d.pid().unwrap() as i32;
    let holds_leak = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == leak))
    };
    assert!(holds_leak(berthd_pid), "the test did not leak the fd");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("fdleak", true);
    let pod = d.run_pod(&pod_cfg, "").await;
    let c = d.sleeper(&pod, &pod_cfg, "c").await;
    let info = d.status_verbose(&c, true).await.info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let container_pid = info["pid"].as_i64().unwrap() as i32;
    assert!(container_pid > 0, "{info}");
    let holders: Vec<String> = processes_mentioning(d.socket.to_str().unwrap())
        .into_iter()
        .chain(std::iter::once(container_pid))
        .filter(|p| *p != berthd_pid && holds_leak(*p))
        .map(|p| format!("{p} ({})", cmdline(p)))
        .collect();
    let container_fds = d.sh(&c, "ls /proc/1/fd").await;
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    drop(d);
    let _ = std::fs::remove_dir_all(&leak);
    assert!(holders.is_empty(), "the leaked fd reached {holders:?}");
    assert!(
        !container_fds.split_whitespace().any(|f| f == "7"),
        "{container_fds}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_is_enforced_or_refused() {
    let d = Berthd::start("rro");
    d.pull_busybox().await;
    let tree = d.dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    assert!(
        host(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            tree.join("sub").to_str().unwrap()
        ])
        .0
    );
    let pod_cfg = d.pod_config("rro", true);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mount = |readonly: bool, rro: bool, propagation: cri::MountPropagation| cri::Mount {
        container_path: "/data".into(),
        host_path: tree.display().to_string(),
        readonly,
        recursive_read_only: rro,
        propagation: propagation as i32,
        ..Default::default()
    };
    let mut cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    cfg.mounts = vec![mount(true, true, cri::MountPropagation::PropagationPrivate)];
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let (code, out) = d.sh_any(&c, "touch /data/sub/escape").await;
    assert_ne!(code, 0, "the submount is writable: {out}");
    assert!(out.contains("Read-only"), "{out}");
    assert!(!tree.join("sub/escape").exists());

    // What the CRI api.proto says must be refused.
    for (name, m) in [
        (
            "norw",
            mount(false, true, cri::MountPropagation::PropagationPrivate),
        ),
        (
            "shared",
            mount(
                true,
                true,
                cri::MountPropagation::PropagationHostToContainer,
            ),
        ),
    ] {
        let mut cfg = d.container_config(name, &images().busybox, &["true"]);
        cfg.mounts = vec![m];
        let err = d.try_create(&pod, &pod_cfg, &cfg).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    }

    // Handlers report it only where it is enforced: berth's runtime here,
    // not runc 1.1 (it has no rro) nor foreign shims.
    let status = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let rro = |name: &str| {
        status
            .runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.features)
            .map(|f| f.recursive_read_only_mounts)
    };
    assert_eq!(rro("berth"), Some(true));
    let runc_has_rro = Command::new("runc")
        .arg("features")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"rro\""));
    assert_eq!(rro("runc"), Some(runc_has_rro));
    if !runc_has_rro {
        // A handler that cannot enforce it refuses it instead of ignoring it.
        let runc_pod_cfg = d.pod_config("rro-runc", true);
        let runc_pod = d.run_pod(&runc_pod_cfg, "runc").await;
        let mut cfg = d.container_config("r", &images().busybox, &["true"]);
        cfg.mounts = vec![mount(true, true, cri::MountPropagation::PropagationPrivate)];
        let err = d
            .try_create(&runc_pod, &runc_pod_cfg, &cfg)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("recursively read-only"), "{err}");
        d.stop_pod(&runc_pod).await;
        d.remove_pod(&runc_pod).await;
    }
    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    let _ = host(&["umount", tree.join("sub").to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpack_limits_from_berth_toml_stop_a_pull() {
    let d = Berthd::start_with("unpack", "[unpack]\nmax_layer_bytes = 4096\n");
    let err = d
        .image_client()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: images().busybox.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a layer above max_layer_bytes was unpacked");
    assert!(err.message().contains("4096"), "{err}");
    // Nothing of the refused image stays: no image, no snapshot.
    let listed = d
        .image_client()
        .await
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
    let snapshots = d.root.join("images/snapshots");
    assert!(
        snapshots.is_dir(),
        "{} is not the store's",
        snapshots.display()
    );
    let left: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
