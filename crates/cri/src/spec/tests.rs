//! Whole specs for representative CRI requests, field by field.
//!
//! Over 800 lines: one fixture and ~20 whole-spec cases, each asserting the
//! fields one CRI option sets; split by concern they would repeat the fixture.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;
use crate::store::{PodNamespaces, PodState};

/// A pod directory (hostname, hosts, resolv.conf, shm) and a rootfs with
/// /etc/passwd and /etc/group, removed when dropped.
struct Fixture {
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("berth-spec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pod/shm")).unwrap();
        std::fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
        for (file, text) in [
            ("pod/hostname", "web\n"),
            ("pod/hosts", "127.0.0.1 localhost\n"),
            ("pod/resolv.conf", "nameserver 192.0.2.53\n"),
            (
                "rootfs/etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            ),
            (
                "rootfs/etc/group",
                "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
            ),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        Fixture { dir }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// A pod with namespaces of its own, or the host's (and privileged).
    fn pod(&self, host: bool) -> PodRecord {
        let pod_dir = self.dir.join("pod");
        PodRecord {
            id: "pod1".into(),
            config: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                hostname: "web".into(),
                linux: Some(cri::LinuxPodSandboxConfig {
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        privileged: host,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            runtime_handler: String::new(),
            state: PodState::Ready,
            created_at: 0,
            namespaces: if host {
                PodNamespaces::default()
            } else {
                PodNamespaces {
                    net: Some(pod_dir.join("ns/net")),
                    ipc: Some(pod_dir.join("ns/ipc")),
                    uts: Some(pod_dir.join("ns/uts")),
                    pid: Some("/proc/4242/ns/pid".into()),
                    user: None,
                }
            },
            dir: pod_dir,
            cgroup_parent: if host {
                String::new()
            } else {
                "/kubepods/pod1/".into()
            },
            shim_address: None,
            pause_pid: None,
            ips: vec![],
        }
    }
}

fn image() -> berth_image::ImageConfig {
    berth_image::ImageConfig {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["serve".into()],
        env: vec!["PATH=/bin".into(), "A=image".into()],
        working_dir: Some("/srv".into()),
        user: Some("app".into()),
        ..Default::default()
    }
}

fn config() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        annotations: [
            ("user.example/x", "1"),
            ("io.github.berth.rootfs.host-nosuid", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(Default::default()),
            security_context: Some(Default::default()),
        }),
        ..Default::default()
    }
}

fn sc(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
}

/// config.json as berthd writes it (the typed spec, serialized), checked
/// to read back as the same typed spec berth-runtime loads.
fn build(pod: &PodRecord, config: &cri::ContainerConfig, rootfs: &Path) -> Result<Value> {
    let image = image();
    let input = SpecInput {
        id: "ctr1",
        pod,
        config,
        image: &image,
        image_name: "example.com/app:1",
        rootfs,
        oom_score_adj_floor: None,
        target_pid: None,
        image_volumes: &HashMap::new(),
    };
    let built = container_oci_spec(&input)?;
    let bytes = serde_json::to_vec(&built.spec).unwrap();
    let read: Spec = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(read, built.spec);
    Ok(serde_json::from_slice(&bytes).unwrap())
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(|k| k.as_str()).collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn destinations(spec: &Value) -> Vec<&str> {
    spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect()
}

#[test]
fn container_paths() {
    assert_eq!(clean_container_path("/a//b/./c/", "x").unwrap(), "/a/b/c");
    assert!(clean_container_path("/a/../etc", "x").is_err());
    assert!(clean_container_path("rel", "x").is_err());
}

/// Only what berth means: none of oci-spec's example defaults (hostname,
/// rlimits, TERM...).
#[test]
fn default_container() {
    let f = Fixture::new("default");
    let spec = build(&f.pod(false), &config(), &f.rootfs()).unwrap();
    assert_eq!(
        keys(&spec),
        [
            "annotations",
            "linux",
            "mounts",
            "ociVersion",
            "process",
            "root"
        ]
    );
    assert_eq!(spec["ociVersion"], "1.0.2");
    assert_eq!(spec["root"], json!({"path": f.rootfs(), "readonly": false}));
    let process = &spec["process"];
    assert_eq!(
        keys(process),
        [
            "args",
            "capabilities",
            "cwd",
            "env",
            "noNewPrivileges",
            "oomScoreAdj",
            "terminal",
            "user"
        ]
    );
    assert_eq!(process["args"], json!(["/entry", "serve"]));
    assert_eq!(
        process["env"],
        json!(["PATH=/bin", "A=image", "HOSTNAME=web"])
    );
    assert_eq!(process["cwd"], "/srv");
    assert_eq!(process["terminal"], false);
    assert_eq!(process["noNewPrivileges"], false);
    assert_eq!(process["oomScoreAdj"], 0);
    assert_eq!(
        process["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 2000]})
    );
    let caps = &process["capabilities"];
    let defaults: BTreeSet<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(strings(&caps[set]), defaults, "{set}");
    }
    assert_eq!(caps["inheritable"], json!([]));
    assert_eq!(caps["ambient"], json!([]));

    // The request's annotations but berth's own, then the CRI ones.
    assert_eq!(
        spec["annotations"],
        json!({
            "user.example/x": "1",
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "pod1",
            "io.kubernetes.cri.sandbox-name": "web",
            "io.kubernetes.cri.sandbox-namespace": "default",
            "io.kubernetes.cri.sandbox-uid": "uid-1",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.image-name": "example.com/app:1",
        })
    );

    let linux = &spec["linux"];
    let mut expected = vec![
        "cgroupsPath",
        "devices",
        "maskedPaths",
        "namespaces",
        "readonlyPaths",
        "resources",
        "rootfsPropagation",
    ];
    expected.sort();
    assert_eq!(keys(linux), expected);
    assert_eq!(linux["cgroupsPath"], "/kubepods/pod1/ctr1");
    assert_eq!(linux["devices"], json!([]));
    assert_eq!(
        linux["resources"],
        json!({"devices": [{"allow": false, "access": "rwm"}]})
    );
    assert_eq!(linux["rootfsPropagation"], "rprivate");
    assert_eq!(linux["maskedPaths"], json!(DEFAULT_MASKED));
    assert_eq!(linux["readonlyPaths"], json!(DEFAULT_READONLY));
    let pod_dir = f.dir.join("pod");
    let mut namespaces = vec![
        json!({"type": "mount"}),
        json!({"type": "pid", "path": "/proc/4242/ns/pid"}),
        json!({"type": "network", "path": pod_dir.join("ns/net")}),
        json!({"type": "ipc", "path": pod_dir.join("ns/ipc")}),
        json!({"type": "uts", "path": pod_dir.join("ns/uts")}),
    ];
    if namespaces::cgroup2_unified() {
        namespaces.push(json!({"type": "cgroup"}));
    }
    assert_eq!(linux["namespaces"], json!(namespaces));

    assert_eq!(
        destinations(&spec),
        [
            "/proc",
            "/dev",
            "/sys",
            "/dev/pts",
            "/dev/mqueue",
            "/dev/shm",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/sys/fs/cgroup",
        ]
    );
    let mounts = spec["mounts"].as_array().unwrap();
    assert_eq!(
        mounts[2],
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]})
    );
    assert_eq!(
        mounts[5],
        json!({"destination": "/dev/shm", "type": "bind", "source": pod_dir.join("shm"),
               "options": ["rbind", "rprivate", "rw"]})
    );
    assert_eq!(
        mounts[7],
        json!({"destination": "/etc/hosts", "type": "bind", "source": pod_dir.join("hosts"),
               "options": ["rbind", "rprivate", "rw"]})
    );
}

#[test]
#[allow(deprecated)]
fn privileged_container() {
    let f = Fixture::new("privileged");
    let mut c = config();
    sc(&mut c).privileged = true;
    sc(&mut c).seccomp_profile_path = "runtime/default".into();
    assert!(build(&f.pod(false), &c, &f.rootfs())
        .unwrap_err()
        .to_string()
        .contains("privileged pod sandbox"));
    let spec = build(&f.pod(true), &c, &f.rootfs()).unwrap();
    let linux = &spec["linux"];
    // Unconfined, every capability and device, a writable /sys.
    for absent in ["maskedPaths", "readonlyPaths", "seccomp"] {
        assert!(linux.get(absent).is_none(), "{absent}");
    }
    assert_eq!(
        linux["resources"]["devices"],
        json!([{"allow": true, "access": "rwm"}])
    );
    assert!(linux["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["path"] == "/dev/null" && d["type"] == "c"));
    let all: BTreeSet<String> = all_caps().into_iter().collect();
    assert_eq!(strings(&spec["process"]["capabilities"]["bounding"]), all);
    // The host's namespaces, but its own mount and PID ones.
    assert_eq!(
        linux["namespaces"],
        json!([{"type": "mount"}, {"type": "pid"}])
    );
    assert_eq!(linux["cgroupsPath"], "/berth/ctr1");
    let sys = &spec["mounts"][2];
    assert_eq!(sys["destination"], "/sys");
    assert_eq!(sys["options"][3], "rw");
    assert!(spec["mounts"][5]["options"]
        .as_array()
        .unwrap()
        .contains(&json!("rw")));
}

#[test]
fn requested_devices() {
    let f = Fixture::new("devices");
    let nodes = f.dir.join("nodes");
    std::fs::create_dir_all(nodes.join("sub")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        nodes.join("sub/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o640),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let mut c = config();
    c.devices = vec![
        cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        },
        cri::Device {
            container_path: "/dev/nodes/".into(),
            host_path: nodes.display().to_string(),
            permissions: String::new(),
        },
    ];
    let spec = build(&f.pod(false), &c, &f.rootfs()).unwrap();
    let devices = spec["linux"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(
        devices[0],
        json!({"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
               "fileMode": 0o666, "uid": 0, "gid": 0})
    );
    assert_eq!(devices[1]["path"], "/dev/nodes/sub/null");
    assert_eq!(devices[1]["fileMode"], 0o640);
    assert_eq!(
        spec["linux"]["resources"]["devices"],
        json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        ])
    );
    c.devices[0].permissions = "rwx".into();
    assert!(build(&f.pod(false), &c, &f.rootfs()).is_err());
    c.devices[0].permissions.clear();
    c.devices[0].host_path = f.dir.join("pod/hosts").display().to_string();
    assert!(build(&f.pod(false), &c, &f.rootfs())
        .unwrap_err()
        .to_string()
        .contains("not a character or block device"));
}

#[test]
fn seccomp_profiles() {
    let f = Fixture::new("seccomp");
    let pod = f.pod(false);
    let with = |t: cri::security_profile::ProfileType, r: &str| {
        let mut c = config();
        sc(&mut c).seccomp = Some(cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        });
        c
    };
    use cri::security_profile::ProfileType;

    let spec = build(&pod, &with(ProfileType::Unconfined, ""), &f.rootfs()).unwrap();
    assert!(spec["linux"].get("seccomp").is_none());

    // RuntimeDefault follows the container's capabilities.
    let mut c = with(ProfileType::RuntimeDefault, "");
    sc(&mut c).capabilities = Some(cri::Capability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    });
    let spec = build(&pod, &c, &f.rootfs()).unwrap();
    let caps = capabilities(sc(&mut c).capabilities.as_ref(), false).unwrap();
    assert_eq!(
        spec["linux"]["seccomp"],
        serde_json::to_value(berth_common::seccomp_profile::runtime_default(&caps)).unwrap()
    );

    // A localhost profile is passed on whole, a notify listener included.
    let profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "listenerPath": "/run/seccomp-agent.sock",
        "listenerMetadata": "pod=web",
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        ],
    });
    let path = f.dir.join("profile.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    let spec = build(
        &pod,
        &with(ProfileType::Localhost, path.to_str().unwrap()),
        &f.rootfs(),
    )
    .unwrap();
    assert_eq!(spec["linux"]["seccomp"], profile);
    // The deprecated path field, as older kubelets send it.
    let mut c = config();
    #[allow(deprecated)]
    {
        sc(&mut c).seccomp_profile_path = format!("localhost/{}", path.display());
    }
    let spec = build(&pod, &c, &f.rootfs()).unwrap();
    assert_eq!(spec["linux"]["seccomp"], profile);

    for bad in ["relative.json", "/nonexistent/profile.json"] {
        assert!(build(&pod, &with(ProfileType::Localhost, bad), &f.rootfs()).is_err());
    }
}

#[test]
fn resources() {
    let r = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: -1,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 128 << 20,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }],
        unified: [("memory.high".to_string(), "50000000".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(oci_resources(&r)).unwrap(),
        json!({
            "memory": {"limit": 64 << 20, "swap": 128 << 20},
            "cpu": {"shares": 512, "quota": -1, "period": 100_000, "cpus": "0-1", "mems": "0"},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
            "unified": {"memory.high": "50000000"},
        })
    );
    // Nothing set: nothing written (UpdateContainerResources sends `{}`).
    let none = cri::LinuxContainerResources::default();
    assert_eq!(
        serde_json::to_value(oci_resources(&none)).unwrap(),
        json!({})
    );
    let cpu_only = cri::LinuxContainerResources {
        cpu_shares: 2,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(oci_resources(&cpu_only)).unwrap(),
        json!({"cpu": {"shares": 2}})
    );

    // The OOM score, within range, raised to berthd's floor.
    let oom = |v: i64, floor: Option<i64>| {
        resources::oom_score_adj(
            &cri::LinuxContainerResources {
                oom_score_adj: v,
                ..Default::default()
            },
            floor,
        )
    };
    assert_eq!(oom(-500, None).unwrap(), -500);
    assert_eq!(oom(-500, Some(-100)).unwrap(), -100);
    assert_eq!(oom(900, Some(-100)).unwrap(), 900);
    assert!(oom(1001, None).is_err());
    assert!(oom(-1001, Some(0)).is_err());

    // In a container's spec, with the device rules.
    let f = Fixture::new("resources");
    let mut c = config();
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        oom_score_adj: 100,
        ..r
    });
    let spec = build(&f.pod(false), &c, &f.rootfs()).unwrap();
    assert_eq!(spec["process"]["oomScoreAdj"], 100);
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(
        spec["linux"]["resources"]["devices"],
        json!([{"allow": false, "access": "rwm"}])
    );
}

#[test]
fn pid_namespaces() {
    let f = Fixture::new("namespaces");
    let pod = f.pod(false);
    let with = |pid: cri::NamespaceMode| cri::NamespaceOption {
        pid: pid as i32,
        target_id: "other".into(),
        ..Default::default()
    };
    let pids = |ns: &[oci_spec::runtime::LinuxNamespace]| -> Vec<Option<PathBuf>> {
        ns.iter()
            .filter(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid)
            .map(|n| n.path().clone())
            .collect()
    };
    let build = |ns: &cri::NamespaceOption, target: Option<u32>, privileged, cgroup2| {
        namespaces::container_namespaces(&pod, ns, target, privileged, cgroup2)
    };
    use cri::NamespaceMode;
    let ns = build(&with(NamespaceMode::Pod), None, false, false).unwrap();
    assert_eq!(pids(&ns), [Some("/proc/4242/ns/pid".into())]);
    let ns = build(&with(NamespaceMode::Container), None, false, false).unwrap();
    assert_eq!(pids(&ns), [None]);
    let ns = build(&with(NamespaceMode::Node), None, false, false).unwrap();
    assert!(pids(&ns).is_empty());
    let ns = build(&with(NamespaceMode::Target), Some(77), false, false).unwrap();
    assert_eq!(pids(&ns), [Some("/proc/77/ns/pid".into())]);
    assert!(matches!(
        build(&with(NamespaceMode::Target), None, false, false),
        Err(Error::NotFound(_))
    ));
    // A cgroup namespace of its own on cgroup v2, unless privileged.
    let cgroup = |ns: &[oci_spec::runtime::LinuxNamespace]| {
        ns.iter()
            .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup)
    };
    assert!(cgroup(
        &build(&with(NamespaceMode::Pod), None, false, true).unwrap()
    ));
    assert!(!cgroup(
        &build(&with(NamespaceMode::Pod), None, true, true).unwrap()
    ));
    assert!(!cgroup(
        &build(&with(NamespaceMode::Pod), None, false, false).unwrap()
    ));

    // A container cannot ask for a user namespace its pod does not have
    // (here: mode POD without the kubelet's mappings).
    let mut c = config();
    sc(&mut c).namespace_options = Some(cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace {
            mode: NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(matches!(
        super::tests::build(&pod, &c, &f.rootfs()),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn requested_mounts() {
    let f = Fixture::new("mounts");
    let vol = f.dir.join("vol");
    let m =
        |dest: &str, host: &Path, readonly: bool, p: cri::MountPropagation, rro: bool| cri::Mount {
            container_path: dest.into(),
            host_path: host.display().to_string(),
            readonly,
            propagation: p as i32,
            recursive_read_only: rro,
            ..Default::default()
        };
    use cri::MountPropagation::*;
    let mut c = config();
    sc(&mut c).readonly_rootfs = true;
    let hosts = f.dir.join("my-hosts");
    std::fs::write(&hosts, "").unwrap();
    c.mounts = vec![
        m(
            "/data/deep",
            &vol.join("a"),
            false,
            PropagationPrivate,
            false,
        ),
        m("/data", &vol.join("b"), true, PropagationPrivate, true),
        m("/etc/hosts", &hosts, true, PropagationPrivate, false),
        m(
            "/shared/",
            &vol.join("c"),
            false,
            PropagationBidirectional,
            false,
        ),
        m(
            "/slave",
            &vol.join("d"),
            true,
            PropagationHostToContainer,
            false,
        ),
    ];
    let spec = build(&f.pod(false), &c, &f.rootfs()).unwrap();
    // Missing sources become directories.
    assert!(vol.join("a").is_dir() && vol.join("d").is_dir());
    assert_eq!(spec["root"]["readonly"], true);
    assert_eq!(spec["linux"]["rootfsPropagation"], "rshared");
    let mounts = spec["mounts"].as_array().unwrap();
    let at = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap();
    // Parents before children; same depths in order; the request's
    // /etc/hosts replaces the pod's, moved after the other pod files.
    assert_eq!(
        destinations(&spec),
        [
            "/proc",
            "/dev",
            "/sys",
            "/data",
            "/shared",
            "/slave",
            "/dev/pts",
            "/dev/mqueue",
            "/dev/shm",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/data/deep",
            "/etc/hosts",
            "/sys/fs/cgroup",
        ]
    );
    assert_eq!(at("/etc/hosts")["source"], json!(hosts));
    assert_eq!(
        at("/etc/hostname")["options"],
        json!(["rbind", "rprivate", "ro"])
    );
    assert_eq!(
        at("/data")["options"],
        json!(["rbind", "rprivate", "ro", "rro"])
    );
    assert_eq!(at("/shared")["options"], json!(["rbind", "rshared", "rw"]));
    assert_eq!(
        at("/slave"),
        &json!({"destination": "/slave", "type": "bind", "source": vol.join("d"),
                "options": ["rbind", "rslave", "ro"]})
    );
    c.mounts.remove(3);
    let spec = build(&f.pod(false), &c, &f.rootfs()).unwrap();
    assert_eq!(spec["linux"]["rootfsPropagation"], "rslave");

    for bad in [
        m("/x", &vol, false, PropagationPrivate, true),
        m("/x", &vol, true, PropagationHostToContainer, true),
        m("x", &vol, false, PropagationPrivate, false),
        m("/x/../y", &vol, false, PropagationPrivate, false),
        m("/x", Path::new("rel"), false, PropagationPrivate, false),
        cri::Mount {
            uid_mappings: vec![cri::IdMapping {
                host_id: 100_000,
                container_id: 0,
                length: 65536,
            }],
            ..m("/x", &vol, false, PropagationPrivate, false)
        },
    ] {
        let mut c = config();
        c.mounts = vec![bad];
        assert!(build(&f.pod(false), &c, &f.rootfs()).is_err());
    }
}

/// The pause container's spec is containerd's sandbox spec, as berthd has
/// written it as JSON.
#[test]
fn pause_container() {
    let f = Fixture::new("pause");
    let rootfs = f.dir.join("pause/rootfs");
    for host in [false, true] {
        let pod = f.pod(host);
        let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
        for (kind, p) in [
            ("network", &pod.namespaces.net),
            ("ipc", &pod.namespaces.ipc),
            ("uts", &pod.namespaces.uts),
        ] {
            if let Some(p) = p {
                namespaces.push(json!({"type": kind, "path": p}));
            }
        }
        let parent = if host { "/berth" } else { "/kubepods/pod1" };
        let mut expected = json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["/pause"], "cwd": "/", "user": {"uid": 65535, "gid": 65535},
                "env": [DEFAULT_PATH], "noNewPrivileges": true,
                "capabilities": {"bounding": [], "effective": [], "permitted": []},
                "oomScoreAdj": -998,
            },
            "root": {"path": rootfs, "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            ],
            "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": pod.id,
            },
            "linux": {
                "cgroupsPath": format!("{parent}/{}", pod.id),
                "namespaces": namespaces,
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "maskedPaths": DEFAULT_MASKED, "readonlyPaths": DEFAULT_READONLY,
            },
        });
        if !host {
            expected["hostname"] = json!("web");
        }
        let spec = pause_spec(&pod, &rootfs, None).unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            expected,
            "host {host}"
        );
        let spec = pause_spec(&pod, &rootfs, Some(-500)).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(-500));
        let spec = pause_spec(&pod, &rootfs, Some(-1000)).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(-998));
    }
}

/// A propagation value outside CRI's enum is refused, not taken for the
/// largest one (it used to decide rootfsPropagation and hide a
/// bidirectional mount's rshared).
#[test]
fn unknown_mount_propagation_is_refused() {
    let f = Fixture::new("badprop");
    let pod = f.pod(false);
    let host = f.rootfs();
    let mount = |propagation: i32| cri::Mount {
        container_path: "/data".into(),
        host_path: host.display().to_string(),
        propagation,
        ..Default::default()
    };
    let mut c = config();
    c.mounts = vec![mount(9)];
    let err = build(&pod, &c, &f.rootfs()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("propagation 9"), "{err}");
    c.mounts = vec![mount(
        cri::MountPropagation::PropagationBidirectional as i32,
    )];
    let spec = build(&pod, &c, &f.rootfs()).unwrap();
    assert_eq!(spec["linux"]["rootfsPropagation"], "rshared");
}
