//! berthd's registry configuration: hosts.toml mirrors from berth.toml's
//! `[registry] config_path`, inline mirrors, and broken files reported at
//! start and on the pull they affect. Needs root.

mod common;

use common::*;
use k8s_cri::v1 as cri;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_dir_and_inline_mirrors_from_berth_toml() {
    let addr = images().registry.addr().to_owned();
    let hosts = std::path::PathBuf::from("/tmp").join(unique("bd-hosts"));
    let write = |registry: &str, text: &str| {
        std::fs::create_dir_all(hosts.join(registry)).unwrap();
        std::fs::write(hosts.join(registry).join("hosts.toml"), text).unwrap();
    };
    // A server nobody answers on: the image must come from the mirror.
    write(
        "registry.k8s.io",
        &format!("server = \"http://127.0.0.1:9\"\n\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    );
    write(
        "broken.io",
        "[host.\"http://127.0.0.1:9\"]\n  capabilities = [\"pull\", \"teleport\"]\n",
    );
    let d = Berthd::start_with(
        "registry",
        &format!(
            "[registry]\nconfig_path = \"{}\"\n[registry.mirrors.\"gcr.io\"]\nendpoint = [\"http://{addr}\"]\n",
            hosts.display()
        ),
    );
    assert!(
        std::fs::read_to_string(&d.log)
            .unwrap()
            .contains("broken.io/hosts.toml:2"),
        "a broken hosts file is reported at start: {}",
        d.log_tail()
    );
    let mut images_client = d.image_client().await;
    for name in ["registry.k8s.io/test/busybox:1", "gcr.io/test/busybox:1"] {
        let image_ref = images_client
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pulling {name}: {e}\n{}", d.log_tail()))
            .into_inner()
            .image_ref;
        let status = images_client
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: name.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
            .expect("the pulled image");
        assert_eq!(status.id, image_ref);
        assert!(status.repo_tags.contains(&name.to_owned()), "{status:?}");
        let repo = name.rsplit_once(':').unwrap().0;
        assert!(
            status
                .repo_digests
                .iter()
                .any(|d| d.starts_with(&format!("{repo}@sha256:"))),
            "{status:?}"
        );
    }
    let err = images_client
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "broken.io/x/y:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("broken.io/hosts.toml:2") && err.message().contains("teleport"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&hosts);
}
