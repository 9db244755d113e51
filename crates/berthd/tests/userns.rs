//! User-namespaced pods (`hostUsers: false`: CRI userns_options mode POD
//! with the kubelet's mappings) through berthd's CRI socket: the container
//! is root inside and an unprivileged uid on the host, its rootfs and
//! volume are seen with the right owners through id-mapped mounts and the
//! volume is writable, nothing in the pod is host root, and a setuid file
//! the pod makes gives no host user root. Refusals: what the kubelet never
//! sends. Needs root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;
use k8s_cri::v1 as cri;

/// A host range nobody else uses: 65536 ids from a per-process offset.
fn host_base() -> u32 {
    1_000_000_000 + (std::process::id() % 1000) * 65536
}

fn userns(mode: cri::NamespaceMode, base: u32) -> cri::UserNamespace {
    let map = vec![cri::IdMapping {
        host_id: base,
        container_id: 0,
        length: 65536,
    }];
    cri::UserNamespace {
        mode: mode as i32,
        uids: map.clone(),
        gids: map,
    }
}

fn with_userns(cfg: &mut cri::PodSandboxConfig, u: cri::UserNamespace) {
    pod_ns(cfg).userns_options = Some(u);
}

/// Host uid of a process, from /proc.
fn host_uid(pid: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespaced_pod() {
    let d = Berthd::start("userns");
    let busybox_ref = d.pull_busybox().await;
    let status = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let berth = status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty() || h.name == "berth")
        .and_then(|h| h.features)
        .expect("the default handler's features");
    assert!(berth.user_namespaces, "{:?}", status.runtime_handlers);

    let base = host_base();
    let mut pod_cfg = d.pod_config("userns", false);
    with_userns(&mut pod_cfg, userns(cri::NamespaceMode::Pod, base));
    let pod = d.run_pod(&pod_cfg, "").await;
    let volume = d.dir.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = d.container_config("app", &images().busybox, &["sleep", "1000"]);
    cfg.mounts = vec![
        cri::Mount {
            container_path: "/data".into(),
            host_path: volume.display().to_string(),
            ..Default::default()
        },
        // An image volume: its layers seen through the pod's mappings too.
        cri::Mount {
            container_path: "/image".into(),
            image: Some(cri::ImageSpec {
                image: busybox_ref.clone(),
                ..Default::default()
            }),
            readonly: true,
            ..Default::default()
        },
    ];
    // The kubelet gives the container the pod's options.
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(pod_ns(&mut pod_cfg.clone()).clone()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;

    // Root inside, the mapped uid outside.
    assert_eq!(d.sh(&c, "id -u; id -g").await.trim(), "0\n0");
    let pid = d.status_verbose(&c, true).await.info["info"].clone();
    let pid: serde_json::Value = serde_json::from_str(&pid).unwrap();
    let pid = pid["pid"]
        .as_u64()
        .expect("pid in the verbose info")
        .to_string();
    assert_eq!(host_uid(&pid), Some(base));
    // Its rootfs and volume, owned by host root on disk, are root's inside.
    assert_eq!(
        d.sh(&c, "stat -c %u:%g /bin/busybox /data /image/bin/busybox")
            .await
            .trim(),
        "0:0\n0:0\n0:0"
    );
    d.sh(
        &c,
        "echo written > /data/file && cp /bin/busybox /data/suid && chmod 4755 /data/suid",
    )
    .await;
    let meta = std::fs::metadata(volume.join("file")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "written as the container's root"
    );
    // A setuid file the pod made in its rootfs gives no host user root:
    // the rootfs is nosuid on the host and its directories root-only.
    d.sh(&c, "cp /bin/busybox /suid && chmod 4755 /suid").await;
    // The host sees that file as the pod's unprivileged uid's, so the
    // rootfs needs no nosuid there, and the image's setuid files keep
    // working inside (a nosuid would be locked in the pod's namespace).
    let root_line = d
        .sh(&c, "awk '$5 == \"/\" {print $6}' /proc/self/mountinfo")
        .await;
    assert!(!root_line.contains("nosuid"), "rootfs options: {root_line}");
    let suid = d.state.join("containers").join(&c).join("rootfs/suid");
    let meta = std::fs::metadata(&suid).unwrap();
    assert_eq!(
        meta.uid(),
        base,
        "a host view of the pod root's setuid file"
    );
    assert!(suid.exists(), "{}", suid.display());
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(&suid)
        .args(["id", "-u"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_ne!(said.trim(), "0", "host root through {}", suid.display());
    // No process of the pod is host root.
    let userns_inode = std::fs::metadata(format!("/proc/{pid}/ns/user"))
        .unwrap()
        .ino();
    let mut seen = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(ns) = std::fs::metadata(entry.path().join("ns/user")) else {
            continue;
        };
        if ns.ino() == userns_inode {
            seen += 1;
            let uid = host_uid(&name).unwrap_or(u32::MAX);
            assert!(
                uid >= base && uid < base + 65536,
                "pid {name} has host uid {uid}"
            );
        }
    }
    assert!(seen >= 1);
    // Its network namespace belongs to its user namespace: berthd still
    // reads its counters (stats and metrics), and comes back to the host's.
    let network = d.pod_stats(&pod).await.linux.unwrap().network.unwrap();
    assert!(
        network.interfaces.iter().any(|i| i.name == "lo"),
        "{network:?}"
    );
    let metrics = d
        .runtime()
        .await
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    assert!(
        metrics.iter().any(|m| m.pod_sandbox_id == pod),
        "{metrics:?}"
    );
    let stray = d.threads_outside_the_host_network_namespace();
    assert!(
        stray.is_empty(),
        "berthd threads in another network namespace: {stray:?}"
    );

    // What the kubelet never sends.
    for (name, u) in [
        ("node-mapped", userns(cri::NamespaceMode::Node, base)),
        (
            "container-mode",
            userns(cri::NamespaceMode::Container, base),
        ),
        (
            "not-root",
            cri::UserNamespace {
                uids: vec![cri::IdMapping {
                    host_id: base,
                    container_id: 1,
                    length: 65536,
                }],
                ..userns(cri::NamespaceMode::Pod, base)
            },
        ),
    ] {
        let mut cfg = d.pod_config(name, false);
        with_userns(&mut cfg, u);
        let e = d.try_run_pod(&cfg, "").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
    }

    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    d.remove_all_and_check().await;
}
