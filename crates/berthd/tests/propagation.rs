//! Mount propagation of CRI mounts, both ways: with
//! PROPAGATION_BIDIRECTIONAL (rshared) a mount made on the host under the
//! source after the container started appears inside, and one made
//! inside appears on the host. Needs root.

mod common;

use common::*;
use k8s_cri::v1 as cri;

/// Through berth (in the shim) and through runc, the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_mounts_propagate_both_ways() {
    for handler in ["berth", "runc"] {
        bidirectional(handler).await;
    }
}

async fn bidirectional(handler: &str) {
    let d = Berthd::start(&format!("bidi-{handler}"));
    d.pull_busybox().await;
    let mut pod_cfg = d.pod_config("bidi", false);
    pod_sc(&mut pod_cfg).privileged = true;
    let pod = d.run_pod(&pod_cfg, handler).await;

    // The source must sit on a shared mount, as for containerd.
    let source = d.dir.join("bidi-source");
    std::fs::create_dir_all(&source).unwrap();
    let s = source.to_str().unwrap();
    assert!(host(&["mount", "--bind", s, s]).0);
    assert!(host(&["mount", "--make-shared", s]).0);

    let mut cfg = d.container_config("c", &images().busybox, &["sleep", "1000"]);
    sc(&mut cfg).privileged = true;
    cfg.mounts = vec![cri::Mount {
        container_path: "/bidi".into(),
        host_path: s.into(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;

    // Host to container.
    let from_host = source.join("from-host");
    std::fs::create_dir_all(&from_host).unwrap();
    assert!(host(&["mount", "-t", "tmpfs", "tmpfs", from_host.to_str().unwrap()]).0);
    std::fs::write(from_host.join("late"), "made on the host\n").unwrap();
    assert_eq!(
        d.sh(&c, "cat /bidi/from-host/late").await,
        "made on the host"
    );

    // Container to host.
    d.sh(
        &c,
        "mkdir -p /bidi/from-ctr && mount -t tmpfs tmpfs /bidi/from-ctr && echo made inside > /bidi/from-ctr/f",
    )
    .await;
    let from_ctr = source.join("from-ctr");
    assert_eq!(
        read_trim(from_ctr.join("f")),
        "made inside",
        "{handler}: a mount made in the container shows on the host"
    );

    d.remove_all_and_check_with_unmount(&[from_ctr, from_host, source])
        .await;
}
