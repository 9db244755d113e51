//! The image store against a real registry (Debian's docker-registry on
//! 127.0.0.1) and real overlay mounts: pulls of every image shape, auth,
//! platforms, digests, hostile layers, interrupted pulls, import/export, GC.

use berth_testkit::images as support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_image::{Auth, Error, ImageStore, PullOptions, StoreOptions};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct World {
    dir: TempDir,
    store: Arc<ImageStore>,
}

impl World {
    fn new(name: &str) -> World {
        let dir = TempDir::new(name).unwrap();
        let store =
            Arc::new(ImageStore::open(&dir.join("store"), StoreOptions::default()).unwrap());
        World { dir, store }
    }

    fn pull(&self, reference: &str) -> berth_image::Result<berth_image::Image> {
        self.pull_with(reference, PullOptions::default())
    }

    fn pull_with(
        &self,
        reference: &str,
        opts: PullOptions,
    ) -> berth_image::Result<berth_image::Image> {
        runtime().block_on(self.store.pull(reference, &opts))
    }

    /// Mounts the image's rootfs, runs `check` on it, and cleans up.
    fn with_rootfs<T>(&self, image: &str, check: impl FnOnce(&Path) -> T) -> T {
        let key = format!("c-{}", std::process::id());
        self.store.prepare_rootfs(image, &key).unwrap();
        let target = self.dir.join("mnt");
        std::fs::create_dir_all(&target).unwrap();
        self.store.mount_rootfs(&key, &target).unwrap();
        let result = check(&target);
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).unwrap();
        self.store.remove_rootfs(&key).unwrap();
        result
    }

    fn blob_count(&self) -> usize {
        std::fs::read_dir(self.dir.join("store/content/blobs/sha256"))
            .unwrap()
            .count()
    }

    fn snapshot_count(&self) -> usize {
        std::fs::read_dir(self.dir.join("store/snapshots"))
            .unwrap()
            .count()
    }
}

fn check_busybox_rootfs(root: &Path) {
    for p in BUSYBOX_PRESENT {
        assert!(root.join(p).symlink_metadata().is_ok(), "{p} must exist");
    }
    for p in BUSYBOX_ABSENT {
        assert!(
            root.join(p).symlink_metadata().is_err(),
            "{p} must not exist"
        );
    }
    let data = root.join("usr/share/berth/data.txt");
    let link = root.join("usr/share/berth/data-hardlink.txt");
    assert_eq!(
        std::fs::read_to_string(&link).unwrap(),
        fixtures::BUSYBOX_DATA
    );
    assert_eq!(
        std::fs::metadata(&data).unwrap().ino(),
        std::fs::metadata(&link).unwrap().ino(),
        "a hardlink"
    );
    assert_eq!(
        std::fs::read_link(root.join("usr/share/berth/current")).unwrap(),
        PathBuf::from("data.txt")
    );
    let home = std::fs::metadata(root.join("home/berth")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/busybox", "echo", "runs"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "runs\n");
}

#[test]
fn pulls_a_multi_layer_image_with_whiteouts_links_and_progress() {
    let registry = Registry::start().unwrap();
    let image = busybox_image(Compression::Gzip)
        .unwrap()
        .env("GREETING=hi")
        .cmd(&["sh"])
        .working_dir("/home/berth")
        .user("1000")
        .expose("8080/tcp")
        .label("k", "v")
        .stop_signal("SIGQUIT");
    let digest = registry
        .push("lib/busybox", "v1", &image.artifact().unwrap())
        .unwrap();
    let world = World::new("pull");
    let seen: Arc<Mutex<Vec<berth_image::Progress>>> = Arc::default();
    let s = Arc::clone(&seen);
    let opts = PullOptions {
        progress: Some(Arc::new(move |p: &berth_image::Progress| {
            s.lock().unwrap().push(p.clone())
        })),
        ..Default::default()
    };
    let reference = registry.reference("lib/busybox", "v1");
    let pulled = world.pull_with(&reference, opts).unwrap();
    assert_eq!(pulled.repo_tags, vec![reference.clone()]);
    assert_eq!(
        pulled.repo_digests,
        vec![format!("{}/lib/busybox@{digest}", registry.addr())]
    );
    assert!(pulled.id.starts_with("sha256:"));
    assert!(
        pulled.config.env.contains(&"GREETING=hi".to_string()),
        "{:?}",
        pulled.config.env
    );
    assert_eq!(pulled.config.cmd, vec!["sh".to_string()]);
    assert_eq!(pulled.config.working_dir.as_deref(), Some("/home/berth"));
    assert_eq!(pulled.config.user.as_deref(), Some("1000"));
    assert_eq!(pulled.config.exposed_ports, vec!["8080/tcp".to_string()]);
    assert_eq!(pulled.config.labels.get("k").map(String::as_str), Some("v"));
    assert_eq!(pulled.config.stop_signal.as_deref(), Some("SIGQUIT"));
    // Progress: every layer reported, each finishing at its total.
    let seen = seen.lock().unwrap().clone();
    let finished: std::collections::BTreeSet<String> = seen
        .iter()
        .filter(|p| p.done == p.total && p.total > 0)
        .map(|p| p.digest.clone())
        .collect();
    assert_eq!(finished.len(), 3, "{seen:?}");
    let announced: std::collections::BTreeSet<String> = seen[..3]
        .iter()
        .filter(|p| p.done == 0)
        .map(|p| p.digest.clone())
        .collect();
    assert_eq!(
        announced, finished,
        "every layer announced before bytes: {seen:?}"
    );
    world.with_rootfs(&reference, check_busybox_rootfs);
    // Status: by name, by id, by repo digest; absent is None.
    assert_eq!(
        world.store.status(&pulled.id).unwrap().unwrap().id,
        pulled.id
    );
    assert_eq!(
        world
            .store
            .status(&pulled.repo_digests[0])
            .unwrap()
            .unwrap()
            .id,
        pulled.id
    );
    assert!(world
        .store
        .status(&registry.reference("lib/busybox", "v2"))
        .unwrap()
        .is_none());
    assert!(world.store.fs_usage().unwrap().bytes > 1_000_000);
    // A second pull of the same image reuses everything.
    let blobs = world.blob_count();
    world.pull(&reference).unwrap();
    assert_eq!(world.blob_count(), blobs);
}

#[test]
fn every_layer_format_and_manifest_type() {
    let registry = Registry::start().unwrap();
    let world = World::new("formats");
    for (i, compression) in [Compression::None, Compression::Gzip, Compression::Zstd]
        .into_iter()
        .enumerate()
    {
        let tag = format!("c{i}");
        registry
            .push(
                "fmt/oci",
                &tag,
                &busybox_image(compression).unwrap().artifact().unwrap(),
            )
            .unwrap();
        let reference = registry.reference("fmt/oci", &tag);
        world.pull(&reference).unwrap();
        world.with_rootfs(&reference, check_busybox_rootfs);
    }
    // Docker schema 2.
    let docker = busybox_image(Compression::Gzip)
        .unwrap()
        .format(Format::Docker);
    registry
        .push("fmt/docker", "v1", &docker.artifact().unwrap())
        .unwrap();
    let reference = registry.reference("fmt/docker", "v1");
    world.pull(&reference).unwrap();
    world.with_rootfs(&reference, check_busybox_rootfs);
}

#[test]
fn platforms_from_indexes_and_manifest_lists() {
    let registry = Registry::start().unwrap();
    for (repo, index) in [
        (
            "multi/oci",
            multi_platform_index(&["linux/arm64/v8", "linux/amd64", "linux/s390x"]),
        ),
        (
            "multi/docker",
            platform_index(
                &["linux/arm64/v8", "linux/amd64"],
                &[Layer::new().dir("etc/").file("etc/os-release", "ID=x\n")],
                Format::Docker,
            ),
        ),
    ] {
        let index_digest = registry
            .push(repo, "v1", &index.artifact().unwrap())
            .unwrap();
        let reference = registry.reference(repo, "v1");
        let world = World::new("multi");
        let image = world.pull(&reference).unwrap();
        assert_eq!(image.config.architecture, "amd64");
        assert_eq!(
            image.repo_digests,
            vec![format!("{}/{repo}@{index_digest}", registry.addr())],
            "the repo digest is the index's"
        );
        world.with_rootfs(&reference, |root| {
            assert_eq!(
                std::fs::read_to_string(root.join("etc/platform")).unwrap(),
                "linux/amd64"
            )
        });
        let arm = World::new("multi-arm");
        arm.pull_with(
            &reference,
            PullOptions {
                platform: Some("linux/arm64".into()),
                ..Default::default()
            },
        )
        .unwrap();
        arm.with_rootfs(&reference, |root| {
            assert_eq!(
                std::fs::read_to_string(root.join("etc/platform")).unwrap(),
                "linux/arm64/v8"
            )
        });
        let err = World::new("multi-none")
            .pull_with(
                &reference,
                PullOptions {
                    platform: Some("linux/riscv64".into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(matches!(err, Error::NoPlatform { .. }), "{err}");
    }
}

#[test]
fn digest_pinned_references() {
    let registry = Registry::start().unwrap();
    let digest = registry
        .push(
            "pin/busybox",
            "v1",
            &busybox_image(Compression::Gzip)
                .unwrap()
                .artifact()
                .unwrap(),
        )
        .unwrap();
    let world = World::new("pin");
    let pinned = format!("{}/pin/busybox@{digest}", registry.addr());
    let image = world.pull(&pinned).unwrap();
    assert!(image.repo_tags.is_empty(), "pulled by digest: no tag");
    assert_eq!(image.repo_digests, vec![pinned.clone()]);
    let wrong = format!("{}/pin/busybox@sha256:{}", registry.addr(), "0".repeat(64));
    assert!(World::new("pin-wrong").pull(&wrong).is_err());
}

#[test]
fn basic_auth_registry() {
    let registry = Registry::start_with_basic_auth("berth", "s3cret").unwrap();
    registry
        .push(
            "auth/busybox",
            "v1",
            &busybox_image(Compression::Gzip)
                .unwrap()
                .artifact()
                .unwrap(),
        )
        .unwrap();
    let reference = registry.reference("auth/busybox", "v1");
    let world = World::new("auth");
    let err = world.pull(&reference).unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("401") || text.contains("unauthorized") || text.contains("not authorized"),
        "{err}"
    );
    let bad = PullOptions {
        auth: Auth::Basic {
            username: "berth".into(),
            password: "wrong".into(),
        },
        ..Default::default()
    };
    assert!(world.pull_with(&reference, bad).is_err());
    let good = PullOptions {
        auth: Auth::Basic {
            username: "berth".into(),
            password: "s3cret".into(),
        },
        ..Default::default()
    };
    world.pull_with(&reference, good).unwrap();
    assert!(world.store.status(&reference).unwrap().is_some());
}

/// Each hostile layer is refused with the entry named, and nothing is
/// written outside the snapshot root (the sentinel directory stays empty).
#[test]
fn hostile_layers_are_refused() {
    let world = World::new("hostile");
    let outside = world.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let out = outside.display().to_string();
    let rel_out = format!("../../../../../../../../../../..{out}");
    let cases: Vec<(&str, Vec<Layer>, &str)> = vec![
        (
            "dotdot",
            vec![Layer::new().entry(Entry::file(format!("{rel_out}/pwned"), "x"))],
            "pwned",
        ),
        (
            "absolute",
            vec![Layer::new().entry(Entry::file(format!("{out}/pwned"), "x"))],
            "pwned",
        ),
        (
            "symlink-same-layer",
            vec![Layer::new()
                .entry(Entry::symlink("evil", out.as_str()))
                .entry(Entry::file("evil/pwned", "x"))],
            "evil/pwned",
        ),
        (
            "symlink-lower-layer",
            vec![
                Layer::new().entry(Entry::symlink("evil", out.as_str())),
                Layer::new().entry(Entry::file("evil/pwned", "x")),
            ],
            "evil/pwned",
        ),
        (
            "symlink-relative",
            vec![Layer::new()
                .entry(Entry::symlink("evil", rel_out.as_str()))
                .entry(Entry::dir("evil/sub/"))],
            "evil/sub",
        ),
        (
            "hardlink-out",
            vec![Layer::new().entry(Entry::hardlink("link", "../../../../../../etc/passwd"))],
            "link",
        ),
        (
            "hardlink-absolute",
            vec![Layer::new().entry(Entry::hardlink("link", "/etc/passwd"))],
            "link",
        ),
    ];
    for (name, layers, entry) in cases {
        let mut image = Image::new();
        for l in layers {
            image = image.layer(l, Compression::Gzip);
        }
        let layout = world.dir.join(format!("layout-{name}"));
        write_oci_layout(&layout, "v1", &image.artifact().unwrap()).unwrap();
        let err = world
            .store
            .import_layout(&layout, Some(&format!("hostile/{name}")))
            .unwrap_err();
        match &err {
            Error::UnsafeLayer { entry: e, .. } => assert!(e.contains(entry), "{name}: {err}"),
            other => panic!("{name}: expected an unsafe-layer error, got {other}"),
        }
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{name} wrote outside"
        );
        assert!(world
            .store
            .status(&format!("hostile/{name}:v1"))
            .unwrap()
            .is_none());
    }
    assert!(Path::new("/etc/passwd").exists());
    world.store.gc().unwrap();
    assert_eq!(
        world.snapshot_count(),
        0,
        "refused layers leave no snapshot"
    );
}

/// Three gzip layers `blob0..2` of `len` incompressible bytes each (xorshift
/// from `seed`): pulls that take a while.
fn noise_image(seed: u64, len: usize) -> Image {
    let mut image = Image::new();
    for layer in 0..3u64 {
        image = image.layer(
            Layer::new().entry(Entry::file(
                format!("blob{layer}"),
                noise(seed ^ layer, len),
            )),
            Compression::Gzip,
        );
    }
    image
}

#[test]
fn a_killed_pull_resumes_and_gc_leaves_nothing() {
    let registry = Registry::start().unwrap();
    // Incompressible layers make the pull last long enough to be killed.
    let image = noise_image(0x9e37_79b9_7f4a_7c15, 6 << 20);
    registry
        .push("big/noise", "v1", &image.artifact().unwrap())
        .unwrap();
    let reference = registry.reference("big/noise", "v1");
    let world = World::new("killed");
    let root = world.dir.join("store");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth-image"))
        .args(["--root", root.to_str().unwrap(), "pull", &reference])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as a download is under way.
    let ingest = root.join("content/ingest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_dir(&ingest).map(|d| d.count()).unwrap_or(0) == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Reopening cleans what the crash left; the pull then completes.
    drop(world.store);
    let store = Arc::new(ImageStore::open(&root, StoreOptions::default()).unwrap());
    assert_eq!(
        std::fs::read_dir(&ingest).unwrap().count(),
        0,
        "half-written blobs are gone"
    );
    let image = runtime()
        .block_on(store.pull(&reference, &PullOptions::default()))
        .unwrap();
    assert_eq!(store.status(&reference).unwrap().unwrap().id, image.id);
    store.remove(&reference).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(root.join("content/blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "no orphan blobs"
    );
    assert_eq!(
        std::fs::read_dir(root.join("snapshots")).unwrap().count(),
        0,
        "no orphan snapshots"
    );
}

#[test]
fn import_export_and_gc_of_shared_layers() {
    let world = World::new("import");
    let base = busybox_image(Compression::Gzip).unwrap();
    // oci-archive import, named by the base name and the layout's tag.
    let archive = world.dir.join("busybox.tar");
    write_oci_archive(&archive, "v1", &base.artifact().unwrap()).unwrap();
    let imported = world
        .store
        .import_layout(&archive, Some("example.com/busybox"))
        .unwrap();
    assert_eq!(
        imported[0].repo_tags,
        vec!["example.com/busybox:v1".to_string()]
    );
    world.with_rootfs("example.com/busybox:v1", check_busybox_rootfs);
    // A second image sharing the base layers, from a docker-save archive.
    let derived = busybox_image(Compression::Gzip)
        .unwrap()
        .layer(
            Layer::new().entry(Entry::file("extra", "x")),
            Compression::None,
        )
        .build()
        .unwrap();
    let docker = world.dir.join("derived-docker.tar");
    write_docker_archive(
        &docker,
        &["example.com/derived:v2", "example.com/derived:latest"],
        &derived,
    )
    .unwrap();
    let d = world.store.import_docker_archive(&docker).unwrap();
    assert_eq!(
        d[0].repo_tags,
        vec![
            "example.com/derived:latest".to_string(),
            "example.com/derived:v2".to_string()
        ]
    );
    world.with_rootfs("example.com/derived:v2", |root| {
        check_busybox_rootfs(root);
        assert!(root.join("extra").exists());
    });
    // Export to a layout and import into a fresh store: same image id.
    let exported = world.dir.join("export.tar");
    world
        .store
        .export_layout(&["example.com/busybox:v1"], &exported)
        .unwrap();
    let other = World::new("reimport");
    let again = other.store.import_layout(&exported, None).unwrap();
    assert_eq!(again[0].id, imported[0].id);
    assert_eq!(
        again[0].repo_tags,
        vec!["example.com/busybox:v1".to_string()]
    );
    // Removing the first image keeps what the derived image shares.
    world.store.remove("example.com/busybox:v1").unwrap();
    world.with_rootfs("example.com/derived:v2", check_busybox_rootfs);
    // Removing by id removes every tag; then nothing is left.
    world.store.remove(&d[0].id).unwrap();
    world.store.remove(&d[0].id).unwrap();
    assert!(world.store.list().unwrap().is_empty());
    assert_eq!(world.blob_count(), 0);
    assert_eq!(world.snapshot_count(), 0);
}

#[test]
fn a_rootfs_keeps_its_layers_alive() {
    let world = World::new("rootfs-gc");
    let layout = world.dir.join("layout");
    write_oci_layout(
        &layout,
        "v1",
        &busybox_image(Compression::Gzip)
            .unwrap()
            .artifact()
            .unwrap(),
    )
    .unwrap();
    world
        .store
        .import_layout(&layout, Some("example.com/keep"))
        .unwrap();
    let m = world
        .store
        .prepare_rootfs("example.com/keep:v1", "ctr1")
        .unwrap();
    assert!(matches!(
        world.store.prepare_rootfs("example.com/keep:v1", "ctr1"),
        Err(Error::RootfsExists(_))
    ));
    world.store.remove("example.com/keep:v1").unwrap();
    for l in &m.lowerdirs {
        assert!(l.exists(), "a rootfs in use keeps its lower layers");
    }
    world.store.remove_rootfs("ctr1").unwrap();
    world.store.gc().unwrap();
    assert_eq!(world.snapshot_count(), 0);
}

#[test]
fn device_nodes_modes_owners_and_times() {
    use std::os::unix::fs::FileTypeExt;
    let world = World::new("nodes");
    let layer = Layer::new()
        .entry(Entry::dir("dev/").mode(0o755))
        .entry(Entry::char_device("dev/null", 1, 3).mode(0o666))
        .entry(
            Entry::block_device("dev/loop9", 7, 9)
                .mode(0o660)
                .owner(0, 6),
        )
        .entry(Entry::fifo("dev/pipe").mode(0o600))
        .entry(
            Entry::file("bin/tool", "#!/bin/sh\n")
                .mode(0o4755)
                .owner(0, 0)
                .mtime(1_000_000_000),
        )
        .entry(
            Entry::file("home/me/notes", "n")
                .owner(1234, 5678)
                .mode(0o640),
        );
    let layout = world.dir.join("layout");
    write_oci_layout(
        &layout,
        "v1",
        &Image::new()
            .layer(layer, Compression::Zstd)
            .artifact()
            .unwrap(),
    )
    .unwrap();
    world
        .store
        .import_layout(&layout, Some("example.com/nodes"))
        .unwrap();
    world.with_rootfs("example.com/nodes:v1", |root| {
        let null = std::fs::metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (null.rdev(), null.mode() & 0o777),
            (rustix::fs::makedev(1, 3), 0o666)
        );
        let lp = std::fs::metadata(root.join("dev/loop9")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!((lp.rdev(), lp.gid()), (rustix::fs::makedev(7, 9), 6));
        assert!(std::fs::metadata(root.join("dev/pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
        let tool = std::fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!(tool.mtime(), 1_000_000_000);
        let notes = std::fs::metadata(root.join("home/me/notes")).unwrap();
        assert_eq!(
            (notes.uid(), notes.gid(), notes.mode() & 0o777),
            (1234, 5678, 0o640)
        );
    });
}

#[test]
fn gc_during_a_pull_leaves_the_pull_its_blobs_and_layers() {
    let registry = Registry::start().unwrap();
    // Incompressible layers keep the pull busy while gc runs beside it.
    let image = noise_image(0x2545_f491_4f6c_dd1d, 4 << 20);
    registry
        .push("gc/noise", "v1", &image.artifact().unwrap())
        .unwrap();
    let reference = registry.reference("gc/noise", "v1");
    let world = World::new("gcpull");
    for round in 0..3 {
        // An image removal (kubelet's image GC) while the same image is
        // pulled again: the pull must not lose what it fetched.
        let done = std::sync::atomic::AtomicBool::new(false);
        let (pulled, gcs) = std::thread::scope(|s| {
            let gc = s.spawn(|| {
                let mut n = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    world.store.remove(&reference).unwrap();
                    n += 1;
                }
                n
            });
            let pulled = world.pull(&reference);
            done.store(true, std::sync::atomic::Ordering::Release);
            (pulled, gc.join().unwrap())
        });
        let pulled = pulled.unwrap_or_else(|e| panic!("round {round}: pull beside gc: {e}"));
        assert!(gcs > 0, "gc ran during the pull");
        // Whether the last removal came before or after the pull's
        // records, what is recorded is whole.
        if world.store.status(&reference).unwrap().is_some() {
            assert_eq!(
                world.store.status(&reference).unwrap().unwrap().id,
                pulled.id
            );
            world.with_rootfs(&reference, |root| {
                for seed in 0..3 {
                    assert_eq!(
                        std::fs::metadata(root.join(format!("blob{seed}")))
                            .unwrap()
                            .len(),
                        4 << 20
                    );
                }
            });
        }
    }
    world.store.remove(&reference).unwrap();
    assert_eq!(world.blob_count(), 0, "no orphan blobs");
    assert_eq!(world.snapshot_count(), 0, "no orphan snapshots");
}

/// An incompressible payload of `len` bytes (xorshift from `seed`, not 0).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn layers_unpacked_side_by_side_see_the_layers_below_them() {
    // A pull unpacks its layers at the same time. The upper layer is tiny,
    // so it is in long before the 24 MiB one below it, and it needs that
    // layer twice: its file goes into a directory only the lower layer has
    // (recreated with the lower directory's owner and mode, as overlayfs
    // copies it up), and a hardlink points at a lower file (copied up).
    let registry = Registry::start().unwrap();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::dir("srv/").mode(0o710).owner(1234, 4321))
                .entry(Entry::file("srv/lower.txt", "from below"))
                .entry(Entry::file("big", noise(7, 24 << 20))),
            Compression::Gzip,
        )
        .layer(
            Layer::new()
                .entry(Entry::file("srv/upper.txt", "from above"))
                .entry(Entry::hardlink("linked.txt", "srv/lower.txt")),
            Compression::Gzip,
        );
    registry
        .push("lib/stacked", "v1", &image.artifact().unwrap())
        .unwrap();
    let world = World::new("stacked");
    let reference = registry.reference("lib/stacked", "v1");
    world.pull(&reference).unwrap();
    world.with_rootfs(&reference, |root| {
        let srv = std::fs::metadata(root.join("srv")).unwrap();
        assert_eq!(
            (srv.uid(), srv.gid(), srv.mode() & 0o7777),
            (1234, 4321, 0o710)
        );
        assert_eq!(
            std::fs::read_to_string(root.join("srv/upper.txt")).unwrap(),
            "from above"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("srv/lower.txt")).unwrap(),
            "from below"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("linked.txt")).unwrap(),
            "from below"
        );
        assert_eq!(std::fs::metadata(root.join("big")).unwrap().len(), 24 << 20);
    });
    // Recorded bottom up: the top snapshot's parent chain is whole, and a
    // second pull finds every layer there.
    let snapshots = world.snapshot_count();
    assert_eq!(snapshots, 2);
    world.pull(&reference).unwrap();
    assert_eq!(world.snapshot_count(), snapshots);
}

#[test]
fn a_pull_refuses_an_upper_layer_writing_through_a_lower_symlink() {
    // The same attack as hostile_layers_are_refused's symlink-lower-layer,
    // through a pull, where the upper layer is unpacked beside the lower
    // one: it must wait for the lower layer and then be refused, and the
    // layer below a refused one is not left recorded for nothing.
    let world = World::new("pull-hostile");
    let registry = Registry::start().unwrap();
    let outside = world.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let image = Image::new()
        .layer(
            Layer::new()
                .entry(Entry::file("big", noise(11, 8 << 20)))
                .entry(Entry::symlink("evil", outside.display().to_string())),
            Compression::Gzip,
        )
        .layer(
            Layer::new().entry(Entry::file("evil/pwned", "x")),
            Compression::Gzip,
        )
        .layer(
            Layer::new().entry(Entry::file("above", "y")),
            Compression::Gzip,
        );
    registry
        .push("lib/evil", "v1", &image.artifact().unwrap())
        .unwrap();
    let reference = registry.reference("lib/evil", "v1");
    let err = world.pull(&reference).unwrap_err();
    match &err {
        Error::UnsafeLayer { entry, .. } => assert!(entry.contains("evil/pwned"), "{err}"),
        other => panic!("expected an unsafe-layer error, got {other}"),
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside"
    );
    assert!(world.store.status(&reference).unwrap().is_none());
    world.store.gc().unwrap();
    assert_eq!(
        world.snapshot_count(),
        0,
        "a refused pull leaves no snapshot"
    );
    assert_eq!(world.blob_count(), 0, "nor blobs");
}
