//! A first end-to-end check with an umoci-built layout (kept small; the
//! registry and hostile-layer tests live in their own files).

use std::path::Path;

use berth_image::{ImageStore, StoreOptions};

#[test]
fn import_umoci_layout_and_mount_rootfs() {
    let base = std::env::temp_dir().join(format!("berth-image-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let sh = |cmd: String| {
        assert!(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
                .unwrap()
                .success(),
            "{cmd}"
        )
    };
    sh(format!(
        "cd {0} && umoci init --layout img && umoci new --image img:v1 && mkdir -p rfs/bin rfs/etc && cp /bin/busybox rfs/bin/ && ln -s busybox rfs/bin/sh && echo hi > rfs/etc/greeting && umoci insert --image img:v1 rfs / >/dev/null",
        base.display()
    ));
    let store = ImageStore::open(&base.join("store"), StoreOptions::default()).unwrap();
    let images = store
        .import_layout(&base.join("img"), Some("example.com/smoke"))
        .unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].repo_tags,
        vec!["example.com/smoke:v1".to_string()]
    );
    let status = store.status("example.com/smoke:v1").unwrap().unwrap();
    assert_eq!(status.id, images[0].id);
    assert!(store.status("example.com/nope:v1").unwrap().is_none());
    let m = store.prepare_rootfs("example.com/smoke:v1", "c1").unwrap();
    let target = base.join("mnt");
    std::fs::create_dir_all(&target).unwrap();
    store.mount_rootfs("c1", &target).unwrap();
    let greeting = std::fs::read_to_string(target.join("etc/greeting"));
    let busybox = target.join("bin/busybox").is_file();
    std::fs::write(target.join("etc/written"), "x").unwrap();
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).unwrap();
    assert_eq!(greeting.unwrap(), "hi\n");
    assert!(busybox);
    assert!(
        m.upperdir.join("etc/written").exists(),
        "writes land in the upper layer"
    );
    store.remove_rootfs("c1").unwrap();
    assert!(!m.upperdir.exists());
    store.remove("example.com/smoke:v1").unwrap();
    store.remove("example.com/smoke:v1").unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(base.join("store/content/blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "no orphan blobs"
    );
    assert_eq!(
        std::fs::read_dir(base.join("store/snapshots"))
            .unwrap()
            .count(),
        0,
        "no orphan snapshots"
    );
    std::fs::remove_dir_all(&base).unwrap();
    let _ = Path::new("/");
}
