//! Container configuration as a kubelet sends it, checked from inside the
//! container and on the host: command merging, env, users, security
//! context, mounts, devices, resources. Needs root.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;

/// A field of /proc/<pid>/status text (`CapEff`, `NoNewPrivs`, ...).
fn status_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .to_owned()
}

fn cap_index(name: &str) -> u32 {
    match name {
        "CAP_CHOWN" => 0,
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_FOWNER" => 3,
        "CAP_FSETID" => 4,
        "CAP_KILL" => 5,
        "CAP_SETGID" => 6,
        "CAP_SETUID" => 7,
        "CAP_SETPCAP" => 8,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_CHROOT" => 18,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_MKNOD" => 27,
        "CAP_AUDIT_WRITE" => 29,
        "CAP_SETFCAP" => 31,
        other => panic!("no index for {other}"),
    }
}

fn cap_mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| 1u64 << cap_index(n))
        .fold(0, |a, b| a | b)
}

/// containerd's default capability set for CRI containers.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn hex_mask(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap()
}

fn log_messages(pod_cfg: &cri::PodSandboxConfig, name: &str) -> Vec<String> {
    cri_log_records(&PathBuf::from(&pod_cfg.log_directory).join(format!("{name}/0.log")))
        .into_iter()
        .map(|r| r.2)
        .collect()
}

/// Kubelet's rules: command replaces the entrypoint (and drops the image's
/// cmd), args replace cmd; env from the image, overridden by the request;
/// the image's working directory unless the request names one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_args_env_and_working_dir_merge_with_the_image() {
    let d = Berthd::start("merge");
    let image = entry_image();
    d.pull(image).await;
    let pod_cfg = d.pod_config("merge", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let cases: &[(&str, &[&str], &[&str], &str)] = &[
        ("image-defaults", &[], &[], "entry from-cmd"),
        ("args-only", &[], &["a1", "a2"], "entry a1 a2"),
        ("command-only", &["/bin/echo", "cmd"], &[], "cmd"),
        ("both", &["/bin/echo", "cmd"], &["a1"], "cmd a1"),
    ];
    let mut ids = Vec::new();
    for (name, command, args, _) in cases {
        let mut cfg = d.container_config(name, image, command);
        cfg.args = args.iter().map(|s| s.to_string()).collect();
        ids.push(d.run_container(&pod, &pod_cfg, &cfg).await);
    }
    let mut cfg = d.container_config(
        "env",
        image,
        &[
            "sh",
            "-c",
            "echo $FROM_IMAGE $OVERRIDE $NEW; pwd; echo $PATH",
        ],
    );
    cfg.envs = vec![
        cri::KeyValue {
            key: "OVERRIDE".into(),
            value: "pod".into(),
        },
        cri::KeyValue {
            key: "NEW".into(),
            value: "a=b c".into(),
        },
    ];
    ids.push(d.run_container(&pod, &pod_cfg, &cfg).await);
    let mut cfg = d.container_config("workdir", image, &["pwd"]);
    cfg.working_dir = "/etc".into();
    ids.push(d.run_container(&pod, &pod_cfg, &cfg).await);
    for id in &ids {
        let s = d.wait_container(id, Duration::from_secs(20), exited).await;
        assert_eq!(s.exit_code, 0, "{s:?}");
    }
    for (name, _, _, want) in cases {
        assert_eq!(log_messages(&pod_cfg, name), [*want], "case {name}");
    }
    let env = log_messages(&pod_cfg, "env");
    assert_eq!(env[0], "image pod a=b c");
    assert_eq!(env[1], "/usr/share", "the image's WorkingDir");
    assert!(env[2].contains("/bin"), "PATH {}", env[2]);
    assert_eq!(log_messages(&pod_cfg, "workdir"), ["/etc"]);
    d.remove_all_and_check().await;
}

/// run_as_user, run_as_group, supplemental groups and run_as_username, seen
/// by `id`; ContainerStatus reports the user (berthd advertises
/// supplemental_groups_policy, which promises ContainerUser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_groups() {
    let d = Berthd::start("users");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("users", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let busybox = &images().busybox;

    let mut cfg = d.container_config("ids", busybox, &["sleep", "1000"]);
    let s = sc(&mut cfg);
    s.run_as_user = Some(cri::Int64Value { value: 1000 });
    s.run_as_group = Some(cri::Int64Value { value: 3000 });
    s.supplemental_groups = vec![4000, 5000];
    let ids = d.run_container(&pod, &pod_cfg, &cfg).await;
    assert_eq!(d.sh(&ids, "id -u; id -g").await, "1000\n3000");
    let mut groups: Vec<String> = d
        .sh(&ids, "id -G")
        .await
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    groups.sort();
    assert_eq!(groups, ["3000", "4000", "5000"]);
    // Non-root: no effective capabilities.
    let st = d.sh(&ids, "cat /proc/self/status").await;
    assert_eq!(hex_mask(&status_field(&st, "CapEff")), 0, "{st}");
    assert_eq!(
        hex_mask(&status_field(&st, "CapBnd")),
        cap_mask(DEFAULT_CAPS)
    );

    let mut cfg = d.container_config("byname", busybox, &["sleep", "1000"]);
    sc(&mut cfg).run_as_username = "berth".into();
    let byname = d.run_container(&pod, &pod_cfg, &cfg).await;
    assert_eq!(
        d.sh(&byname, "id -u; id -g; whoami").await,
        "1000\n1000\nberth"
    );

    let root = d.sleeper(&pod, &pod_cfg, "root").await;
    assert_eq!(d.sh(&root, "id -u; id -g").await, "0\n0");

    d.remove_all_and_check().await;
}

/// Status advertises supplemental_groups_policy, which api.proto defines as
/// "the runtime supports SupplementalGroupsPolicy and ContainerUser": then
/// ContainerStatus.user gives the uid, gid and groups of the first process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_status_reports_the_user() {
    let d = Berthd::start("cuser");
    d.pull_busybox().await;
    let mut rt = d.runtime().await;
    let features = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .features
        .unwrap_or_default();
    let pod_cfg = d.pod_config("cuser", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config("ids", &images().busybox, &["sleep", "1000"]);
    let s = sc(&mut cfg);
    s.run_as_user = Some(cri::Int64Value { value: 1000 });
    s.run_as_group = Some(cri::Int64Value { value: 3000 });
    s.supplemental_groups = vec![4000, 5000];
    let ids = d.run_container(&pod, &pod_cfg, &cfg).await;
    let user = d.status(&ids).await.user;
    if features.supplemental_groups_policy {
        let linux = user
            .and_then(|u| u.linux)
            .unwrap_or_else(|| panic!("ContainerStatus.user is missing"));
        assert_eq!((linux.uid, linux.gid), (1000, 3000));
        assert!(
            linux.supplemental_groups.contains(&4000) && linux.supplemental_groups.contains(&5000),
            "{linux:?}"
        );
    }
    d.remove_all_and_check().await;
}

/// Capabilities, no_new_privs, read-only rootfs, seccomp (RuntimeDefault,
/// Unconfined, Localhost), masked and read-only paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context_of_an_unprivileged_container() {
    let d = Berthd::start("secctx");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("secctx", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let busybox = &images().busybox;

    // Defaults: containerd's capabilities, no NNP, seccomp unconfined,
    // masked /proc/kcore, read-only /proc/sys and /sys.
    let plain = d.sleeper(&pod, &pod_cfg, "plain").await;
    let st = d.sh(&plain, "cat /proc/self/status").await;
    assert_eq!(
        hex_mask(&status_field(&st, "CapEff")),
        cap_mask(DEFAULT_CAPS),
        "{st}"
    );
    assert_eq!(status_field(&st, "CapBnd"), status_field(&st, "CapEff"));
    assert_eq!(status_field(&st, "NoNewPrivs"), "0");
    assert_eq!(status_field(&st, "Seccomp"), "0", "unconfined by default");
    assert_eq!(d.sh(&plain, "head -c 16 /proc/kcore | wc -c").await, "0");
    let (code, _) = d
        .sh_any(&plain, "echo 1 > /proc/sys/kernel/domainname")
        .await;
    assert_ne!(code, 0, "/proc/sys is read-only");
    let (code, _) = d.sh_any(&plain, "echo 1 > /proc/sysrq-trigger").await;
    assert_ne!(code, 0, "/proc/sysrq-trigger is read-only");
    let mounts = d.sh(&plain, "cat /proc/mounts").await;
    assert!(
        mounts.lines().any(|l| l.starts_with("sysfs /sys sysfs ro")),
        "{mounts}"
    );
    d.sh(&plain, "touch /written && echo ok > /tmp/x").await;

    // Capabilities added and dropped; no_new_privs; read-only rootfs.
    let mut cfg = d.container_config("tight", busybox, &["sleep", "1000"]);
    let s = sc(&mut cfg);
    s.capabilities = Some(cri::Capability {
        add_capabilities: vec!["SYS_ADMIN".into(), "CAP_NET_ADMIN".into()],
        drop_capabilities: vec!["NET_RAW".into(), "KILL".into()],
        add_ambient_capabilities: vec![],
    });
    s.no_new_privs = true;
    s.readonly_rootfs = true;
    let tight = d.run_container(&pod, &pod_cfg, &cfg).await;
    let st = d.sh(&tight, "cat /proc/self/status").await;
    let want = (cap_mask(DEFAULT_CAPS) | cap_mask(&["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]))
        & !cap_mask(&["CAP_NET_RAW", "CAP_KILL"]);
    assert_eq!(hex_mask(&status_field(&st, "CapEff")), want, "{st}");
    assert_eq!(status_field(&st, "NoNewPrivs"), "1");
    let (code, out) = d.sh_any(&tight, "touch /newfile").await;
    assert_ne!(code, 0, "read-only rootfs: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, _) = d.sh_any(&tight, "echo x > /etc/hostname").await;
    assert_ne!(code, 0, "the pod's files are read-only too");
    d.sh(&tight, "echo ok > /dev/shm/ok").await;

    let mut cfg = d.container_config("none", busybox, &["sleep", "1000"]);
    sc(&mut cfg).capabilities = Some(cri::Capability {
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    let none = d.run_container(&pod, &pod_cfg, &cfg).await;
    let st = d.sh(&none, "cat /proc/self/status").await;
    assert_eq!(hex_mask(&status_field(&st, "CapEff")), 0);
    assert_eq!(hex_mask(&status_field(&st, "CapBnd")), 0);
    let (code, _) = d.sh_any(&none, "chown 1000 /tmp").await;
    assert_ne!(code, 0, "no CAP_CHOWN");

    // Seccomp RuntimeDefault: a filter is on, and unshare(CLONE_NEWUSER)
    // (allowed without it, as the unconfined container shows) is refused.
    let mut cfg = d.container_config("seccomp", busybox, &["sleep", "1000"]);
    sc(&mut cfg).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let confined = d.run_container(&pod, &pod_cfg, &cfg).await;
    let st = d.sh(&confined, "cat /proc/self/status").await;
    assert_eq!(status_field(&st, "Seccomp"), "2", "{st}");
    d.sh(&plain, "unshare -U true").await;
    let (code, out) = d.sh_any(&confined, "unshare -U true").await;
    assert_ne!(code, 0, "RuntimeDefault refuses unshare: {out}");
    // The deprecated path form.
    #[allow(deprecated)]
    {
        let mut cfg = d.container_config("seccomp-path", busybox, &["sleep", "1000"]);
        sc(&mut cfg).seccomp_profile_path = "runtime/default".into();
        let c = d.run_container(&pod, &pod_cfg, &cfg).await;
        let st = d.sh(&c, "cat /proc/self/status").await;
        assert_eq!(status_field(&st, "Seccomp"), "2");
    }
    // A localhost profile that refuses mkdir.
    let profile = d.dir.join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mut cfg = d.container_config("seccomp-local", busybox, &["sleep", "1000"]);
    sc(&mut cfg).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: profile.display().to_string(),
    });
    let local = d.run_container(&pod, &pod_cfg, &cfg).await;
    let (code, out) = d.sh_any(&local, "mkdir /tmp/newdir").await;
    assert_ne!(code, 0, "the localhost profile refuses mkdir: {out}");
    d.sh(&local, "touch /tmp/file-is-fine").await;

    // Masked and read-only paths as the kubelet lists them.
    let mut cfg = d.container_config("masked", busybox, &["sleep", "1000"]);
    sc(&mut cfg).masked_paths = vec!["/etc/motd".into(), "/usr/share/berth".into()];
    sc(&mut cfg).readonly_paths = vec!["/home".into()];
    let masked = d.run_container(&pod, &pod_cfg, &cfg).await;
    assert_eq!(d.sh(&masked, "cat /etc/motd | wc -c").await, "0");
    assert_eq!(d.sh(&masked, "ls -A /usr/share/berth | wc -l").await, "0");
    let (code, _) = d.sh_any(&masked, "touch /home/x").await;
    assert_ne!(code, 0, "/home is read-only");
    assert_eq!(d.sh(&plain, "cat /etc/motd").await, "welcome to berth");
    d.remove_all_and_check().await;
}

/// A privileged container in a privileged pod: every capability berthd
/// has, the host's devices, writable /sys, nothing masked, no seccomp.
/// Also an unprivileged container adding "ALL" capabilities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_container_in_a_privileged_pod() {
    let d = Berthd::start("priv");
    d.pull_busybox().await;
    let mut pod_cfg = d.pod_config("priv", false);
    pod_sc(&mut pod_cfg).privileged = true;
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config("priv", &images().busybox, &["sleep", "1000"]);
    sc(&mut cfg).privileged = true;
    sc(&mut cfg).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = d.status(&c).await;
    assert_eq!(
        state_name(s.state),
        "running",
        "{s:?}\noutput: {:?}\n{}",
        cri_log_records(std::path::Path::new(&s.log_path)),
        d.log_tail()
    );
    let st = d.sh(&c, "cat /proc/self/status").await;
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(
        status_field(&st, "CapEff"),
        status_field(&own, "CapBnd"),
        "all the capabilities berthd itself has"
    );
    assert_eq!(
        status_field(&st, "Seccomp"),
        "0",
        "no seccomp when privileged"
    );
    let devs = d.sh(&c, "ls /dev").await;
    for dev in ["kmsg", "loop-control", "null"] {
        if std::path::Path::new("/dev").join(dev).exists() {
            assert!(
                devs.split_whitespace().any(|x| x == dev),
                "host device {dev}: {devs}"
            );
        }
    }
    d.sh(
        &c,
        "head -c 1 /dev/kmsg >/dev/null || dd if=/dev/loop-control count=0",
    )
    .await;
    let mounts = d.sh(&c, "cat /proc/mounts").await;
    assert!(
        mounts.lines().any(|l| l.starts_with("sysfs /sys sysfs rw")),
        "{mounts}"
    );
    // Not masked when privileged (where the host kernel has it at all).
    if std::path::Path::new("/proc/kcore").exists() {
        assert_eq!(d.sh(&c, "head -c 16 /proc/kcore | wc -c").await, "16");
    }
    // Mounting works (CAP_SYS_ADMIN, no seccomp).
    d.sh(
        &c,
        "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && umount /mnt/t",
    )
    .await;

    // add_capabilities ["ALL"]: as containerd, every capability there is
    // to have (not more than berthd has).
    let mut cfg = d.container_config("all-caps", &images().busybox, &["sleep", "1000"]);
    sc(&mut cfg).capabilities = Some(cri::Capability {
        add_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    let all = d.run_container(&pod, &pod_cfg, &cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = d.status(&all).await;
    assert_eq!(
        state_name(s.state),
        "running",
        "{s:?}\noutput: {:?}",
        cri_log_records(std::path::Path::new(&s.log_path)),
    );
    let st = d.sh(&all, "cat /proc/self/status").await;
    assert_eq!(status_field(&st, "CapEff"), status_field(&own, "CapBnd"));
    d.remove_all_and_check().await;
}

/// Bind mounts: read-only and read-write, a single file, a missing source
/// (made a directory), and HostToContainer propagation from a shared host
/// mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mounts_readonly_and_propagation() {
    let d = Berthd::start("mounts");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("mounts", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let vol = d.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("hello"), "from the host\n").unwrap();
    let file = d.dir.join("single.conf");
    std::fs::write(&file, "key=value\n").unwrap();
    let missing = d.dir.join("made/by/berthd");
    // A shared mount on the host, for propagation into the container.
    let prop = d.dir.join("prop");
    std::fs::create_dir_all(&prop).unwrap();
    let p = prop.to_str().unwrap();
    assert!(host(&["mount", "--bind", p, p]).0);
    assert!(host(&["mount", "--make-shared", p]).0);
    let private_prop = d.dir.join("prop-private");
    std::fs::create_dir_all(&private_prop).unwrap();
    let pp = private_prop.to_str().unwrap();
    assert!(host(&["mount", "--bind", pp, pp]).0);
    assert!(host(&["mount", "--make-shared", pp]).0);

    let mount =
        |host_path: &std::path::Path, ctr: &str, readonly: bool, propagation: i32| cri::Mount {
            container_path: ctr.into(),
            host_path: host_path.display().to_string(),
            readonly,
            propagation,
            ..Default::default()
        };
    let mut cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    cfg.mounts = vec![
        mount(&vol, "/data-ro", true, 0),
        mount(&vol, "/data-rw", false, 0),
        mount(&file, "/etc/single.conf", true, 0),
        mount(&missing, "/made", false, 0),
        mount(
            &prop,
            "/prop",
            true,
            cri::MountPropagation::PropagationHostToContainer as i32,
        ),
        mount(
            &private_prop,
            "/prop-private",
            true,
            cri::MountPropagation::PropagationPrivate as i32,
        ),
    ];
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    assert_eq!(d.sh(&c, "cat /data-ro/hello").await, "from the host");
    let (code, out) = d.sh_any(&c, "touch /data-ro/new").await;
    assert_ne!(code, 0, "read-only mount: {out}");
    d.sh(&c, "echo from-the-container > /data-rw/back").await;
    assert_eq!(read_trim(vol.join("back")), "from-the-container");
    assert_eq!(d.sh(&c, "cat /etc/single.conf").await, "key=value");
    assert!(missing.is_dir(), "a missing host path becomes a directory");
    d.sh(&c, "touch /made/x").await;
    assert!(missing.join("x").exists());

    // Mounted on the host after the container started.
    for dir in [&prop, &private_prop] {
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        assert!(host(&["mount", "-t", "tmpfs", "tmpfs", sub.to_str().unwrap()]).0);
        std::fs::write(sub.join("late"), "late\n").unwrap();
    }
    assert_eq!(
        d.sh(&c, "cat /prop/sub/late").await,
        "late",
        "HostToContainer: a later host mount shows inside"
    );
    let (code, _) = d.sh_any(&c, "cat /prop-private/sub/late").await;
    assert_ne!(code, 0, "private: a later host mount does not show inside");

    let status = d.status(&c).await;
    assert_eq!(status.mounts.len(), 6, "{:?}", status.mounts);
    assert_eq!(status.mounts[0].container_path, "/data-ro");
    assert!(status.mounts[0].readonly);

    d.remove_all_and_check_with_unmount(&[
        prop.join("sub"),
        prop.clone(),
        private_prop.join("sub"),
        private_prop.clone(),
    ])
    .await;
}

/// Devices: a host node under another name with its permissions enforced
/// by the device cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_added_with_their_permissions() {
    let d = Berthd::start("devices");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("devices", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    cfg.devices = vec![
        cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        },
        // Not among the devices every container gets (null, zero, full,
        // random, urandom, tty, ptmx): its rule is the request's alone.
        cri::Device {
            container_path: "/dev/readonly-loop-control".into(),
            host_path: "/dev/loop-control".into(),
            permissions: "r".into(),
        },
    ];
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    assert_eq!(
        d.sh(&c, "stat -c '%F %t:%T' /dev/mynull").await,
        "character special file 1:3"
    );
    d.sh(&c, "echo x > /dev/mynull").await;
    d.sh(&c, "dd if=/dev/readonly-loop-control count=0").await;
    let (code, out) = d
        .sh_any(&c, "dd of=/dev/readonly-loop-control count=0")
        .await;
    assert_ne!(
        code, 0,
        "opening for writing refused by the device cgroup: {out}"
    );
    assert!(out.contains("Operation not permitted"), "{out}");
    // Not granted: a node made inside cannot be opened.
    let (code, out) = d
        .sh_any(&c, "mknod /tmp/kmsg c 1 11 && head -c 1 /tmp/kmsg")
        .await;
    assert_ne!(code, 0, "{out}");
    d.remove_all_and_check().await;
}

/// Memory and CPU limits land in the container's cgroup (v1 here), and
/// UpdateContainerResources changes them; ContainerStatus reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_land_in_the_cgroup_and_update() {
    let d = Berthd::start("resources");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("resources", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    {
        let r = res(&mut cfg);
        r.memory_limit_in_bytes = 64 << 20;
        r.memory_swap_limit_in_bytes = 96 << 20;
        r.cpu_shares = 512;
        r.cpu_period = 100_000;
        r.cpu_quota = 50_000;
        r.cpuset_cpus = "0".into();
        r.hugepage_limits = vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }];
    }
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let cg = d.container_cgroup(&c);
    let pid = d.container_pid(&c).await;
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.lines().any(|l| l.ends_with(&format!(":memory:{cg}"))),
        "the container's cgroup is <cgroup_parent>/<id>: {own}"
    );
    let file = |ctl: &str, f: &str| read_trim(cgroup_file(ctl, &cg, f));
    assert_eq!(
        file("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        file("memory", "memory.memsw.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    assert_eq!(file("cpu", "cpu.shares"), "512");
    assert_eq!(file("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(file("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(file("cpuset", "cpuset.cpus"), "0");
    // This host's hugetlb controller is in the cgroup2 part of its layout.
    assert_eq!(file("unified", "hugetlb.2MB.max"), (4u64 << 20).to_string());

    let mut rt = d.runtime().await;
    let update = cri::LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        memory_swap_limit_in_bytes: 128 << 20,
        cpu_shares: 1024,
        cpu_period: 100_000,
        cpu_quota: 20_000,
        hugepage_limits: vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 8 << 20,
        }],
        ..Default::default()
    };
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(update.clone()),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e:?}\n{}", d.log_tail()));
    assert_eq!(
        file("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(
        file("memory", "memory.memsw.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(file("cpu", "cpu.shares"), "1024");
    assert_eq!(file("cpu", "cpu.cfs_quota_us"), "20000");
    // UpdateContainerResources dropped hugepage limits once.
    assert_eq!(file("unified", "hugetlb.2MB.max"), (8u64 << 20).to_string());
    let s = d.status(&c).await;
    let r = s.resources.unwrap().linux.unwrap();
    assert_eq!(
        (r.memory_limit_in_bytes, r.cpu_shares, r.cpu_quota),
        (128 << 20, 1024, 20_000)
    );
    // Unknown container.
    let err = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "0123456789abcdef".into(),
            linux: Some(update),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    d.remove_all_and_check().await;
}

/// oom_score_adj: a positive value is applied as given; a negative one is
/// raised to berthd's own here (root without CAP_SYS_RESOURCE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_score_adj_is_applied() {
    let d = Berthd::start("oomadj");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("oomadj", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let mut cfg = d.container_config("pos", &images().busybox, &["sleep", "1000"]);
    res(&mut cfg).oom_score_adj = 742;
    let pos = d.run_container(&pod, &pod_cfg, &cfg).await;
    let pid = d.container_pid(&pos).await;
    assert_eq!(read_trim(format!("/proc/{pid}/oom_score_adj")), "742");
    assert_eq!(d.sh(&pos, "cat /proc/self/oom_score_adj").await, "742");

    let mut cfg = d.container_config("neg", &images().busybox, &["sleep", "1000"]);
    res(&mut cfg).oom_score_adj = -500;
    let neg = d.run_container(&pod, &pod_cfg, &cfg).await;
    let pid = d.container_pid(&neg).await;
    let berthd_own = read_trim(format!("/proc/{}/oom_score_adj", d.pid().unwrap()))
        .parse::<i64>()
        .unwrap();
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let can_lower = hex_mask(&status_field(&own, "CapEff")) & cap_mask(&["CAP_SYS_RESOURCE"]) != 0;
    let want = if can_lower {
        -500
    } else {
        berthd_own.max(-500)
    };
    assert_eq!(
        read_trim(format!("/proc/{pid}/oom_score_adj")),
        want.to_string()
    );
    d.remove_all_and_check().await;
}
