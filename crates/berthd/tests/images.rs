//! The CRI ImageService against real registries: pulls (anonymous and
//! with credentials), listing, status, removal, filesystem info, errors.
//! Needs root.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn status(img: &mut ImageServiceClient<Channel>, image: &str) -> Option<cri::Image> {
    img.image_status(cri::ImageStatusRequest {
        image: spec(image),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("ImageStatus {image}: {e:?}"))
    .into_inner()
    .image
}

async fn list(img: &mut ImageServiceClient<Channel>) -> Vec<cri::Image> {
    img.list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(img: &mut ImageServiceClient<Channel>, image: &str) {
    img.remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage {image}: {e:?}"));
}

async fn fs_used(img: &mut ImageServiceClient<Channel>) -> u64 {
    let r = img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let fs = &r.image_filesystems[0];
    assert!(!fs.fs_id.as_ref().unwrap().mountpoint.is_empty(), "{r:?}");
    assert!(fs.timestamp > 0);
    assert!(!r.container_filesystems.is_empty(), "{r:?}");
    fs.used_bytes.as_ref().unwrap().value
}

/// PullImage, then the image as ListImages, ImageStatus (by tag, id and
/// digest) and ImageFsInfo see it; ImageStatus of an absent image is an
/// empty answer; RemoveImage by tag and by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_and_remove() {
    let d = Berthd::start("images");
    let mut img = d.image_client().await;
    let busybox = images().busybox.clone();
    let entry = entry_image().to_owned();
    let empty_used = fs_used(&mut img).await;
    assert!(list(&mut img).await.is_empty());

    let id = d.pull(&busybox).await;
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let all = list(&mut img).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let i = &all[0];
    assert_eq!(i.id, id);
    assert_eq!(i.repo_tags, vec![busybox.clone()]);
    let repo = format!("{}/test/busybox", images().registry.addr());
    assert_eq!(i.repo_digests.len(), 1, "{i:?}");
    let digest_ref = i.repo_digests[0].clone();
    assert!(digest_ref.starts_with(&format!("{repo}@sha256:")), "{i:?}");
    assert!(i.size > 500_000, "busybox is about a megabyte: {}", i.size);
    assert!(fs_used(&mut img).await > empty_used + 500_000);

    for name in [busybox.as_str(), id.as_str(), digest_ref.as_str()] {
        let s = status(&mut img, name).await;
        assert_eq!(s.map(|s| s.id), Some(id.clone()), "ImageStatus {name}");
    }
    let verbose = img
        .image_status(cri::ImageStatusRequest {
            image: spec(&busybox),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    // Free-form per api.proto; containerd puts the OCI image config there
    // (config.Cmd), berthd its own view (cmd).
    let cmd = &info["imageSpec"]["config"]["Cmd"][0];
    let cmd = if cmd.is_null() {
        &info["imageSpec"]["cmd"][0]
    } else {
        cmd
    };
    assert_eq!(cmd, "/bin/sh", "{info}");

    // Absent images: no error, no image.
    for absent in [
        format!("{}/test/busybox:nope", images().registry.addr()),
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        "docker.io/library/never:pulled".into(),
    ] {
        assert!(status(&mut img, &absent).await.is_none(), "{absent}");
    }
    // Pulling again is fine and changes nothing.
    assert_eq!(d.pull(&busybox).await, id);
    assert_eq!(list(&mut img).await.len(), 1);

    // A second image; filters.
    let entry_id = d.pull(&entry).await;
    assert_ne!(entry_id, id);
    assert_eq!(list(&mut img).await.len(), 2);
    let filtered = img
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&entry),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(
        filtered.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        vec![entry_id.clone()]
    );

    // Pull by digest.
    remove(&mut img, &busybox).await;
    assert!(status(&mut img, &busybox).await.is_none());
    assert_eq!(d.pull(&digest_ref).await, id);
    assert_eq!(status(&mut img, &digest_ref).await.unwrap().id, id);

    // Remove by id; then both are gone and the space comes back.
    remove(&mut img, &id).await;
    remove(&mut img, &entry).await;
    assert!(status(&mut img, &id).await.is_none());
    assert!(status(&mut img, &entry_id).await.is_none());
    assert!(list(&mut img).await.is_empty());
    assert!(
        fs_used(&mut img).await < empty_used + 500_000,
        "removed images' blobs are collected"
    );
    d.remove_all_and_check().await;
}

/// Pulls that cannot work fail with an error naming what was asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_are_clear() {
    let d = Berthd::start("pullerr");
    let mut img = d.image_client().await;
    let puller = img.clone();
    let pull = |image: String| {
        let mut img = puller.clone();
        async move {
            let begun = Instant::now();
            let r = img
                .pull_image(cri::PullImageRequest {
                    image: spec(&image),
                    ..Default::default()
                })
                .await;
            (r.map(|r| r.into_inner().image_ref), begun.elapsed())
        }
    };
    let addr = images().registry.addr().to_owned();
    for image in [
        format!("{addr}/test/no-such-repo:1"),
        format!("{addr}/test/busybox:no-such-tag"),
    ] {
        let (r, _) = pull(image.clone()).await;
        let err = r.unwrap_err();
        assert!(
            err.message().contains(&image),
            "the error names the image: {err:?}"
        );
        assert!(
            err.message().contains("404") || err.message().contains("unknown"),
            "the error says it is not there: {err:?}"
        );
    }
    // Nothing listens on port 1.
    let (r, took) = pull("127.0.0.1:1/test/busybox:1".into()).await;
    let err = r.unwrap_err();
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(err.message().contains("127.0.0.1:1"), "{err:?}");
    // Malformed references and an empty image.
    for bad in ["Not/A:Valid::Ref", "x@sha256:123"] {
        let (r, _) = pull(bad.into()).await;
        let err = r.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
    }
    let err = img
        .pull_image(cri::PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(list(&mut img).await.is_empty());
    // berthd still serves.
    d.pull_busybox().await;
    d.remove_all_and_check().await;
}

/// A registry behind basic auth: username/password and the base64 `auth`
/// field work; no or wrong credentials fail clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_credentials() {
    let registry = support::Registry::start_with_basic_auth("puller", "s3cret-pass")
        .expect("starting a registry with basic auth");
    let image = support::busybox_image(support::Compression::Gzip)
        .unwrap()
        .build()
        .unwrap();
    registry
        .push("private/busybox", "1", &image.into())
        .expect("pushing to the auth registry");
    let reference = registry.reference("private/busybox", "1");
    let d = Berthd::start("auth");
    let mut img = d.image_client().await;
    let puller = img.clone();
    let pull = |auth: Option<cri::AuthConfig>| {
        let mut img = puller.clone();
        let reference = reference.clone();
        async move {
            img.pull_image(cri::PullImageRequest {
                image: spec(&reference),
                auth,
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().image_ref)
        }
    };
    let err = pull(None).await.unwrap_err();
    let lower = err.message().to_lowercase();
    assert!(
        lower.contains("unauthorized") || lower.contains("401") || lower.contains("authentic"),
        "anonymous pull refused clearly: {err:?}"
    );
    let err = pull(Some(cri::AuthConfig {
        username: "puller".into(),
        password: "wrong".into(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    let lower = err.message().to_lowercase();
    assert!(
        lower.contains("unauthorized") || lower.contains("401") || lower.contains("authentic"),
        "wrong password refused clearly: {err:?}"
    );
    assert!(!err.message().contains("wrong"), "no password in messages");
    assert!(list(&mut img).await.is_empty());

    let id = pull(Some(cri::AuthConfig {
        username: "puller".into(),
        password: "s3cret-pass".into(),
        server_address: registry.addr().into(),
        ..Default::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("pull with username/password: {e:?}\n{}", d.log_tail()));
    assert_eq!(status(&mut img, &reference).await.unwrap().id, id);
    remove(&mut img, &reference).await;
    assert!(status(&mut img, &reference).await.is_none());

    let auth = support::http::base64(b"puller:s3cret-pass");
    let id2 = pull(Some(cri::AuthConfig {
        auth,
        ..Default::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("pull with the auth field: {e:?}\n{}", d.log_tail()));
    assert_eq!(id2, id);
    // A container runs from it.
    let pod_cfg = d.pod_config("auth", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let c = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config("c", &reference, &["echo", "private"]),
        )
        .await;
    let s = d.wait_container(&c, Duration::from_secs(10), exited).await;
    assert_eq!(s.exit_code, 0);
    d.remove_all_and_check().await;
}

/// A pull of an image the registry does not have is NotFound, as
/// containerd answers (its resolver's ErrNotFound through errdefs.ToGRPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_of_a_missing_image_is_not_found() {
    let d = Berthd::start("pull404");
    let mut img = d.image_client().await;
    let addr = images().registry.addr().to_owned();
    for image in [
        format!("{addr}/test/no-such-repo:1"),
        format!("{addr}/test/busybox:no-such-tag"),
    ] {
        let err = img
            .pull_image(cri::PullImageRequest {
                image: spec(&image),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{image}: {err:?}");
    }
    d.remove_all_and_check().await;
}
