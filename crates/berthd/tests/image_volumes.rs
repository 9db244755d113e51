//! Image volumes (CRI Mount.image, Kubernetes ImageVolume) through
//! berthd's CRI socket: an image mounted whole and by sub path, read-only,
//! not executable, reported by digest in ContainerStatus; a missing sub
//! path and a missing image refused with nothing left behind; the image's
//! layers kept while it is mounted. Needs root.

mod common;

use common::*;
use k8s_cri::v1 as cri;

fn image_mount(path: &str, image: &str, sub_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        readonly: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_mounted_as_volumes() {
    let d = Berthd::start("imgvol");
    d.pull_busybox().await;
    // The kubelet pulls the volume's image and names it by its image_ref.
    let volume_ref = d.pull(entry_image()).await;
    let pod_cfg = d.pod_config("imgvol", true);
    let pod = d.run_pod(&pod_cfg, "").await;

    let mut cfg = d.container_config("reader", &images().busybox, &["sleep", "1000"]);
    cfg.mounts = vec![
        image_mount("/whole", &volume_ref, ""),
        image_mount("/bins", &volume_ref, "/bin"),
    ];
    let c = d.run_container(&pod, &pod_cfg, &cfg).await;
    let out = d
        .sh(&c, "ls /whole/bin/busybox && ls /bins/busybox && echo seen")
        .await;
    assert!(out.contains("seen"), "{out}");
    // Read-only, whatever the request said, and nothing in it runs.
    let (code, out) = d.sh_any(&c, "touch /whole/new").await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Read-only"), "{out}");
    let (code, out) = d.sh_any(&c, "/bins/busybox true").await;
    assert_ne!(code, 0, "an image volume's binary ran: {out}");
    let mounts = d.sh(&c, "grep -E ' /(whole|bins) ' /proc/mounts").await;
    for line in mounts.lines() {
        let opts = line.split(' ').nth(3).unwrap_or_default();
        for o in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(opts.split(',').any(|x| x == o), "{o} missing: {line}");
        }
    }
    // ContainerStatus names the image by digest.
    let status = d.status(&c).await;
    let reported: Vec<String> = status
        .mounts
        .iter()
        .filter_map(|m| m.image.as_ref().map(|i| i.image.clone()))
        .collect();
    assert_eq!(reported.len(), 2, "{:?}", status.mounts);
    assert!(
        reported
            .iter()
            .all(|r| r.contains("@sha256:") || r.starts_with("sha256:")),
        "{reported:?}"
    );

    // A sub path the image does not have, an image nobody pulled, a
    // read-write image mount, a host path beside an image: refused,
    // nothing left.
    for (name, mount, code) in [
        (
            "nosub",
            image_mount("/v", &volume_ref, "/no/such/dir"),
            tonic::Code::InvalidArgument,
        ),
        (
            "noimg",
            image_mount("/v", "127.0.0.1:1/never/pulled:1", ""),
            tonic::Code::NotFound,
        ),
        (
            "readwrite",
            cri::Mount {
                readonly: false,
                ..image_mount("/v", &volume_ref, "")
            },
            tonic::Code::InvalidArgument,
        ),
        (
            "both",
            cri::Mount {
                host_path: "/tmp".into(),
                ..image_mount("/v", &volume_ref, "")
            },
            tonic::Code::InvalidArgument,
        ),
    ] {
        let mut cfg = d.container_config(name, &images().busybox, &["true"]);
        cfg.mounts = vec![mount];
        let e = d.try_create(&pod, &pod_cfg, &cfg).await.unwrap_err();
        assert_eq!(e.code(), code, "{name}: {e:?}");
    }
    let e = {
        let mut cfg = d.container_config("nosub2", &images().busybox, &["true"]);
        cfg.mounts = vec![image_mount("/v", &volume_ref, "no-such")];
        d.try_create(&pod, &pod_cfg, &cfg).await.unwrap_err()
    };
    assert!(e.message().contains("no-such"), "{e:?}");
    assert_eq!(d.containers(None).await.len(), 1);

    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    d.remove_all_and_check().await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("image-volumes"),
        "an image volume is still mounted"
    );
}
