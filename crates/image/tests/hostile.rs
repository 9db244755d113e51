//! Attacks on the image store that need no registry, each performed for
//! real: archives naming host files, decompression bombs, a full disk,
//! descriptors lying about sizes, and local users reaching setuid binaries
//! in unpacked snapshots. Runs as root.
//!
//! Over 800 lines: one test per attack class on layer unpacking (path escapes,
//! links, bombs, devices, metadata), each building its own hostile archive.

use berth_testkit::images as support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_image::{Error, ImageStore, StoreOptions, UnpackLimits};
use serde_json::{json, Value};
use support::*;

const MIB: u64 = 1 << 20;
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn open_store(root: &Path) -> ImageStore {
    ImageStore::open(root, StoreOptions::default()).unwrap()
}

/// A string found nowhere but in the file a test plants.
fn unique_secret(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("BERTH-{what}-SECRET-{}-{nanos}", std::process::id())
}

/// Every regular file under `dir` (symlinks not followed) that holds `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() {
                let bytes = fs::read(e.path()).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha256_digest(bytes)["sha256:".len()..].to_owned()
}

/// An image config listing `diff_ids`.
fn config_for(diff_ids: &[String]) -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
}

/// Writes an OCI layout in `dir`: the config and gzip layer blobs, a
/// manifest over them (changed by `edit_manifest` before it is stored) and
/// index.json naming it `v1` (its entry changed by `edit_entry`).
fn write_layout(
    dir: &Path,
    config: &Value,
    layers: &[Vec<u8>],
    edit_manifest: impl FnOnce(&mut Value),
    edit_entry: impl FnOnce(&mut Value),
) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let config_bytes = serde_json::to_vec(config).unwrap();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(&config_bytes),
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": GZIP_LAYER,
            "digest": put(l),
            "size": l.len(),
        })).collect::<Vec<_>>(),
    });
    edit_manifest(&mut manifest);
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = put(&manifest_bytes);
    let mut entry = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": manifest_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    });
    edit_entry(&mut entry);
    let index = json!({"schemaVersion": 2, "manifests": [entry]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digest
}

/// A gzip layer of regular files full of zeros (sizes in whole MiB),
/// written as concatenated gzip members so that even a GiB of zeros costs
/// the test one compressed MiB; returns (blob, diff id). The diff id is
/// hashed by sha256sum(1): unoptimised sha2 would take a minute per GiB.
fn zeros_layer(files: &[(&str, u64)]) -> (Vec<u8>, String) {
    let mut sha = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut diff = std::io::BufWriter::new(sha.stdin.take().unwrap());
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let zero_mib = vec![0u8; MIB as usize];
    let zero_mib_gz = gz(&zero_mib);
    let mut blob = Vec::new();
    for (name, size) in files {
        assert_eq!(size % MIB, 0);
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(*size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        blob.extend(gz(h.as_bytes()));
        diff.write_all(h.as_bytes()).unwrap();
        for _ in 0..size / MIB {
            blob.extend_from_slice(&zero_mib_gz);
            diff.write_all(&zero_mib).unwrap();
        }
    }
    let end = [0u8; 1024];
    blob.extend(gz(&end));
    diff.write_all(&end).unwrap();
    drop(diff);
    let out = sha.wait_with_output().unwrap();
    assert!(out.status.success());
    let hex = String::from_utf8(out.stdout).unwrap();
    (blob, format!("sha256:{}", &hex[..64]))
}

/// A one-layer gzip image with a small file, as a layout in `dir`.
fn small_layout(dir: &Path) {
    let layer = Layer::new().file("hello", "hi");
    write_layout(
        dir,
        &config_for(&[layer.diff_id()]),
        &[layer.compressed(Compression::Gzip).unwrap()],
        |_| {},
        |_| {},
    );
}

// ---------------------------------------------------------------------------
// 1. Archive names resolved beneath the archive, errors without contents.
// ---------------------------------------------------------------------------

#[test]
fn docker_archive_names_cannot_reach_host_files() {
    let dir = TempDir::new("hostile-docker").unwrap();
    let secret = unique_secret("HOST");
    let secret_path = dir.join("secret.txt");
    fs::write(&secret_path, format!("{secret}\n")).unwrap();
    let abs_secret = secret_path.display().to_string();
    let root = dir.join("store");
    let store = open_store(&root);
    // Imports extract into <root>/tmp/<name>/: three levels below `dir`.
    let rel_secret = "../../../secret.txt";
    let shadow = "../../../../../../../../../../../../etc/shadow";

    let layer = Layer::new().file("hello", "hi");
    let config_bytes = serde_json::to_vec(&config_for(&[layer.diff_id()])).unwrap();
    let layer_tar = layer.to_tar();
    let archive = |extra: Vec<Entry>, config: &str, layers: &[&str]| {
        let manifest = json!([{"Config": config, "RepoTags": ["hostile:v1"], "Layers": layers}]);
        let mut tar = Layer::new()
            .entry(Entry::file("config.json", &config_bytes))
            .entry(Entry::dir("l/"))
            .entry(Entry::file("l/layer.tar", &layer_tar));
        for e in extra {
            tar = tar.entry(e);
        }
        tar.entry(Entry::file(
            "manifest.json",
            serde_json::to_vec(&manifest).unwrap(),
        ))
        .to_tar()
    };
    let planted = |name: &str| dir.join(name);
    let abs_planted = planted("planted-absolute").display().to_string();
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "config-relative",
            archive(vec![], rel_secret, &["l/layer.tar"]),
            rel_secret.into(),
        ),
        (
            "config-absolute",
            archive(vec![], &abs_secret, &["l/layer.tar"]),
            abs_secret.clone(),
        ),
        (
            "config-shadow",
            archive(vec![], shadow, &["l/layer.tar"]),
            shadow.into(),
        ),
        (
            "layer-relative",
            archive(vec![], "config.json", &[rel_secret]),
            rel_secret.into(),
        ),
        (
            "layer-absolute",
            archive(vec![], "config.json", &[&abs_secret]),
            abs_secret.clone(),
        ),
        (
            "layer-shadow",
            archive(vec![], "config.json", &[shadow]),
            shadow.into(),
        ),
        (
            "symlink-absolute",
            archive(
                vec![Entry::symlink("evil.json", &abs_secret)],
                "evil.json",
                &["l/layer.tar"],
            ),
            "evil.json".into(),
        ),
        (
            "symlink-relative",
            archive(
                vec![
                    Entry::dir("m/"),
                    Entry::symlink("m/layer.tar", "../../../../secret.txt"),
                ],
                "config.json",
                &["m/layer.tar"],
            ),
            "m/layer.tar".into(),
        ),
        (
            "symlink-unused",
            archive(
                vec![Entry::symlink("unused", "/etc/shadow")],
                "config.json",
                &["l/layer.tar"],
            ),
            "unused".into(),
        ),
        (
            "hardlink-relative",
            archive(
                vec![Entry::hardlink("h.json", rel_secret)],
                "h.json",
                &["l/layer.tar"],
            ),
            "h.json".into(),
        ),
        (
            "hardlink-absolute",
            archive(
                vec![Entry::hardlink("h.json", &abs_secret)],
                "h.json",
                &["l/layer.tar"],
            ),
            "h.json".into(),
        ),
        (
            "entry-dotdot",
            archive(
                vec![Entry::file("../../../planted-dotdot", "x")],
                "config.json",
                &["l/layer.tar"],
            ),
            "../../../planted-dotdot".into(),
        ),
        (
            "entry-absolute",
            archive(
                vec![Entry::file(&abs_planted, "x")],
                "config.json",
                &["l/layer.tar"],
            ),
            abs_planted.clone(),
        ),
        (
            "write-through-symlink",
            archive(
                vec![
                    Entry::symlink("d", dir.path().display().to_string()),
                    Entry::file("d/planted-through", "x"),
                ],
                "config.json",
                &["l/layer.tar"],
            ),
            "d/planted-through".into(),
        ),
    ];
    for (name, bytes, entry) in cases {
        let path = dir.join(format!("{name}.tar"));
        fs::write(&path, bytes).unwrap();
        let err = store
            .import_docker_archive(&path)
            .expect_err(&format!("{name}: the import must be refused"))
            .to_string();
        assert!(
            !err.contains(&secret),
            "{name}: the error shows the secret: {err}"
        );
        assert!(
            files_containing(&root, &secret).is_empty(),
            "{name}: the secret was copied into the store: {:?}",
            files_containing(&root, &secret)
        );
        assert!(
            err.contains(&entry),
            "{name}: the error names {entry:?}: {err}"
        );
        for p in ["planted-dotdot", "planted-absolute", "planted-through"] {
            assert!(!planted(p).exists(), "{name}: {p} was written outside");
        }
        assert!(store.status("hostile:v1").unwrap().is_none(), "{name}");
    }
    assert_eq!(count_entries(&root.join("tmp")), 0, "imports clean up");

    // Contents of the archive's own files are not echoed either.
    let inside = unique_secret("ARCHIVE");
    let bad_config = format!("{{\"rootfs\": {inside}");
    let manifest =
        json!([{"Config": "bad.json", "RepoTags": ["hostile:v1"], "Layers": ["l/layer.tar"]}]);
    let tar = Layer::new()
        .entry(Entry::file("bad.json", &bad_config))
        .entry(Entry::file("l/layer.tar", &layer_tar))
        .entry(Entry::file(
            "manifest.json",
            serde_json::to_vec(&manifest).unwrap(),
        ))
        .to_tar();
    let path = dir.join("bad-config.tar");
    fs::write(&path, tar).unwrap();
    let err = store.import_docker_archive(&path).unwrap_err().to_string();
    assert!(err.contains("bad.json"), "{err}");
    assert!(!err.contains(&inside), "{err}");
    let path = dir.join("bad-manifest.tar");
    fs::write(
        &path,
        Layer::new()
            .entry(Entry::file("manifest.json", format!("[{inside}]")))
            .to_tar(),
    )
    .unwrap();
    let err = store.import_docker_archive(&path).unwrap_err().to_string();
    assert!(err.contains("manifest.json"), "{err}");
    assert!(!err.contains(&inside), "{err}");

    // What docker save really writes still imports: a layer saved twice is
    // a symlink to the first copy, inside the archive.
    let manifest = json!([{"Config": "config.json", "RepoTags": ["example.com/dup:v1"], "Layers": ["b/layer.tar"]}]);
    let tar = Layer::new()
        .entry(Entry::file("config.json", &config_bytes))
        .entry(Entry::dir("a/"))
        .entry(Entry::file("a/layer.tar", &layer_tar))
        .entry(Entry::dir("b/"))
        .entry(Entry::symlink("b/layer.tar", "../a/layer.tar"))
        .entry(Entry::file(
            "manifest.json",
            serde_json::to_vec(&manifest).unwrap(),
        ))
        .to_tar();
    let path = dir.join("dup.tar");
    fs::write(&path, tar).unwrap();
    let images = store.import_docker_archive(&path).unwrap();
    assert_eq!(images[0].repo_tags, vec!["example.com/dup:v1".to_string()]);
}

#[test]
fn oci_layout_names_cannot_reach_host_files() {
    let dir = TempDir::new("hostile-oci").unwrap();
    let secret = unique_secret("HOST");
    let secret_bytes = format!("{secret}\n").into_bytes();
    let secret_path = dir.join("secret.txt");
    fs::write(&secret_path, &secret_bytes).unwrap();
    let abs_secret = secret_path.display().to_string();
    // The attacker knows the digest of the host file (a distribution's
    // /etc/passwd, say): digest verification alone does not stop the copy.
    let hex = sha256_hex(&secret_bytes);
    let blob_name = format!("blobs/sha256/{hex}");
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{hex}"),
        "size": secret_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]}))
    .unwrap();
    let root = dir.join("store");
    let store = open_store(&root);

    let check = |name: &str, result: berth_image::Result<Vec<berth_image::Image>>, entry: &str| {
        let err = result
            .expect_err(&format!("{name}: the import must be refused"))
            .to_string();
        assert!(
            files_containing(&root, &secret).is_empty(),
            "{name}: the secret was copied into the store: {:?}",
            files_containing(&root, &secret)
        );
        assert!(
            !err.contains(&secret),
            "{name}: the error shows the secret: {err}"
        );
        assert!(
            err.contains(entry),
            "{name}: the error names {entry:?}: {err}"
        );
    };

    // An oci-archive whose blob is a symlink to the host file.
    let archive = dir.join("blob-symlink.tar");
    fs::write(
        &archive,
        Layer::new()
            .entry(Entry::file(
                "oci-layout",
                r#"{"imageLayoutVersion":"1.0.0"}"#,
            ))
            .entry(Entry::file("index.json", &index))
            .entry(Entry::dir("blobs/"))
            .entry(Entry::dir("blobs/sha256/"))
            .entry(Entry::symlink(&blob_name, &abs_secret))
            .to_tar(),
    )
    .unwrap();
    check(
        "archive-blob-symlink",
        store.import_layout(&archive, Some("example.com/x")),
        &blob_name,
    );

    // The same as a layout directory.
    let layout = dir.join("layout-blob-symlink");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("index.json"), &index).unwrap();
    std::os::unix::fs::symlink(&abs_secret, layout.join(&blob_name)).unwrap();
    check(
        "layout-blob-symlink",
        store.import_layout(&layout, Some("example.com/x")),
        &blob_name,
    );

    // A layout whose blobs directory is a symlink out of it.
    let layout = dir.join("layout-blobs-dir-symlink");
    let elsewhere = dir.join("elsewhere");
    fs::create_dir_all(elsewhere.join("sha256")).unwrap();
    fs::write(elsewhere.join("sha256").join(&hex), &secret_bytes).unwrap();
    fs::create_dir_all(&layout).unwrap();
    fs::write(layout.join("index.json"), &index).unwrap();
    std::os::unix::fs::symlink(&elsewhere, layout.join("blobs")).unwrap();
    check(
        "layout-blobs-dir-symlink",
        store.import_layout(&layout, Some("example.com/x")),
        &blob_name,
    );
    fs::remove_dir_all(&elsewhere).unwrap();

    // index.json itself leading out.
    let layout = dir.join("layout-index-symlink");
    fs::create_dir_all(&layout).unwrap();
    std::os::unix::fs::symlink(&abs_secret, layout.join("index.json")).unwrap();
    check(
        "layout-index-symlink",
        store.import_layout(&layout, Some("example.com/x")),
        "index.json",
    );

    // Entry names of an oci-archive with `..` and absolute paths.
    for (name, entry) in [
        ("archive-dotdot", "../../../planted".to_string()),
        (
            "archive-absolute",
            dir.join("planted").display().to_string(),
        ),
    ] {
        let archive = dir.join(format!("{name}.tar"));
        fs::write(
            &archive,
            Layer::new()
                .entry(Entry::file(&entry, "x"))
                .entry(Entry::file("index.json", &index))
                .to_tar(),
        )
        .unwrap();
        check(
            name,
            store.import_layout(&archive, Some("example.com/x")),
            &entry,
        );
        assert!(!dir.join("planted").exists(), "{name} wrote outside");
    }
    assert_eq!(store.list().unwrap().len(), 0);
    assert_eq!(count_entries(&root.join("tmp")), 0, "imports clean up");
}

// ---------------------------------------------------------------------------
// 2. Decompression bombs and free space.
// ---------------------------------------------------------------------------

fn assert_nothing_left(root: &Path, store: &ImageStore) {
    assert_eq!(
        count_entries(&root.join("snapshots")),
        0,
        "no snapshot directory is left: {:?}",
        fs::read_dir(root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count_entries(&root.join("content/ingest")),
        0,
        "no ingest file"
    );
    assert!(store.list().unwrap().is_empty(), "no image record");
    assert_eq!(store.fs_usage().unwrap().bytes, {
        // Only the blobs remain (until gc): no snapshot record counts.
        let (b, _) = fs::read_dir(root.join("content/blobs/sha256"))
            .unwrap()
            .fold((0, 0), |(b, n), e| {
                (b + e.unwrap().metadata().unwrap().len(), n + 1)
            });
        b
    });
}

#[test]
fn a_decompression_bomb_is_refused_and_leaves_nothing() {
    let dir = TempDir::new("bomb").unwrap();
    let root = dir.join("store");
    let store = open_store(&root);
    // (Small limits keep the unoptimised test build quick: it unpacks up
    // to the limit before refusing.)
    store.set_unpack_limits(UnpackLimits {
        layer_bytes: Some(16 * MIB),
        ..Default::default()
    });
    // 1 GiB of zeros in 64 files: a MiB or so compressed. The first file
    // fits the limit, the second does not.
    let names: Vec<String> = (0..64).map(|i| format!("bomb/zeros-{i:02}")).collect();
    let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 16 * MIB)).collect();
    let (blob, diff_id) = zeros_layer(&files);
    assert!(blob.len() < 4 * MIB as usize, "{} bytes", blob.len());
    let layer_digest = sha256_digest(&blob);
    let layout = dir.join("layout");
    write_layout(&layout, &config_for(&[diff_id]), &[blob], |_| {}, |_| {});

    let err = store
        .import_layout(&layout, Some("example.com/bomb"))
        .unwrap_err();
    let text = err.to_string();
    match &err {
        Error::UnpackLimit {
            layer,
            limit,
            scope,
            ..
        } => {
            assert_eq!(layer, &layer_digest);
            assert_eq!(*limit, 16 * MIB);
            assert_eq!(*scope, "per-layer");
        }
        other => panic!("expected an unpack-limit error, got {other}"),
    }
    assert!(text.contains(&layer_digest), "{text}");
    assert!(
        text.contains("16777216") && text.contains("16 MiB"),
        "{text}"
    );
    assert_nothing_left(&root, &store);

    // The image limit counts every layer: two of 10 MiB against 16 MiB.
    store.set_unpack_limits(UnpackLimits {
        image_bytes: Some(16 * MIB),
        ..Default::default()
    });
    let (first, first_diff) = zeros_layer(&[("a/zeros", 10 * MIB)]);
    let (second, second_diff) = zeros_layer(&[("b/zeros", 10 * MIB)]);
    let second_digest = sha256_digest(&second);
    let layout = dir.join("layout-two");
    write_layout(
        &layout,
        &config_for(&[first_diff, second_diff]),
        &[first, second],
        |_| {},
        |_| {},
    );
    let err = store
        .import_layout(&layout, Some("example.com/two"))
        .unwrap_err();
    match &err {
        Error::UnpackLimit { layer, scope, .. } => {
            assert_eq!(layer, &second_digest);
            assert_eq!(*scope, "per-image");
        }
        other => panic!("expected an unpack-limit error, got {other}"),
    }
    assert!(err.to_string().contains(&second_digest), "{err}");
    // The first layer was fine and stays until collected; the second left nothing.
    assert_eq!(count_entries(&root.join("snapshots")), 1);
    store.gc().unwrap();
    assert_nothing_left(&root, &store);

    // Within the limits the same layer unpacks.
    store.set_unpack_limits(UnpackLimits {
        image_bytes: Some(24 * MIB),
        ..Default::default()
    });
    store
        .import_layout(&layout, Some("example.com/two"))
        .unwrap();
}

/// A tmpfs mounted for a test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", at.display());
        Tmpfs(at.to_owned())
    }

    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn unpacking_keeps_free_space() {
    let dir = TempDir::new("nospace").unwrap();
    let small = Tmpfs::mount(&dir.join("small"), "32m");
    let root = small.0.join("store");
    let store = open_store(&root);
    // 64 MiB of zeros on a 32 MiB filesystem, default limits (the layer
    // limit is 50 GiB; the reserve 5% of the filesystem).
    let files: Vec<(&str, u64)> = vec![
        ("z/a", 16 * MIB),
        ("z/b", 16 * MIB),
        ("z/c", 16 * MIB),
        ("z/d", 16 * MIB),
    ];
    let (blob, diff_id) = zeros_layer(&files);
    let layer_digest = sha256_digest(&blob);
    let layout = dir.join("layout");
    write_layout(&layout, &config_for(&[diff_id]), &[blob], |_| {}, |_| {});
    let free_before = small.free();

    let err = store
        .import_layout(&layout, Some("example.com/big"))
        .unwrap_err();
    match &err {
        Error::NoSpace { layer, reserve, .. } => {
            assert_eq!(layer, &layer_digest);
            assert!(*reserve > 0 && *reserve < 2 * MIB, "{err}");
        }
        other => panic!("expected a free-space error (not ENOSPC), got {other}"),
    }
    assert!(err.to_string().contains(&layer_digest), "{err}");
    assert_nothing_left(&root, &store);
    assert!(
        small.free() + MIB >= free_before,
        "the space is given back: {} then {}",
        free_before,
        small.free()
    );

    // A filesystem already below the reserve: refused before anything is
    // created (no snapshot directory, not even for a moment's use).
    store.set_unpack_limits(UnpackLimits {
        reserve_bytes: Some(64 * MIB),
        ..Default::default()
    });
    let tiny = dir.join("tiny");
    small_layout(&tiny);
    let err = store
        .import_layout(&tiny, Some("example.com/tiny"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoSpace { needed: 0, reserve, .. } if *reserve == 64 * MIB),
        "{err}"
    );
    assert_nothing_left(&root, &store);
    drop(store);
    drop(small);
}

// ---------------------------------------------------------------------------
// 3. Descriptor sizes must match, as digests must.
// ---------------------------------------------------------------------------

#[test]
fn descriptor_sizes_must_match() {
    let dir = TempDir::new("sizes").unwrap();
    let root = dir.join("store");
    let store = open_store(&root);
    let layer = Layer::new().file("hello", "hi");
    let blob = layer.compressed(Compression::Gzip).unwrap();
    let layer_digest = sha256_digest(&blob);
    let config = config_for(&[layer.diff_id()]);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_digest(&config_bytes);
    let real = blob.len() as u64;

    // (case, manifest edit, index entry edit, digest named, declared, actual)
    type Edit = Box<dyn Fn(&mut Value)>;
    let none = || -> Edit { Box::new(|_| {}) };
    let cases: Vec<(&str, Edit, Edit, String, u64, u64)> = vec![
        (
            "layer-larger",
            Box::new(move |m| m["layers"][0]["size"] = json!(real + 1)),
            none(),
            layer_digest.clone(),
            real + 1,
            real,
        ),
        (
            "layer-smaller",
            Box::new(move |m| m["layers"][0]["size"] = json!(real - 1)),
            none(),
            layer_digest.clone(),
            real - 1,
            real,
        ),
        (
            "config",
            Box::new(|m| m["config"]["size"] = json!(3)),
            none(),
            config_digest.clone(),
            3,
            config_bytes.len() as u64,
        ),
    ];
    for (name, edit_manifest, edit_entry, digest, declared, actual) in cases {
        let layout = dir.join(name);
        write_layout(
            &layout,
            &config,
            std::slice::from_ref(&blob),
            |m| edit_manifest(m),
            |e| edit_entry(e),
        );
        let err = store
            .import_layout(&layout, Some("example.com/sizes"))
            .expect_err(name);
        let text = err.to_string();
        assert!(
            matches!(&err, Error::SizeMismatch { digest: d, expected_size, actual_size }
                if *d == digest && *expected_size == declared && *actual_size == actual),
            "{name}: {text}"
        );
        for needle in [digest.clone(), declared.to_string(), actual.to_string()] {
            assert!(text.contains(&needle), "{name}: {needle} in {text}");
        }
        assert!(store.list().unwrap().is_empty(), "{name}");
    }

    // The manifest's own size in index.json.
    let layout = dir.join("manifest");
    let mut manifest_size = 0;
    let manifest_digest = write_layout(
        &layout,
        &config,
        std::slice::from_ref(&blob),
        |_| {},
        |e| {
            manifest_size = e["size"].as_u64().unwrap();
            e["size"] = json!(manifest_size + 10);
        },
    );
    let err = store
        .import_layout(&layout, Some("example.com/sizes"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::SizeMismatch { digest, expected_size, actual_size }
            if *digest == manifest_digest && *expected_size == manifest_size + 10 && *actual_size == manifest_size),
        "{err}"
    );

    // No size at all is refused too (the OCI spec requires one).
    let layout = dir.join("missing");
    write_layout(
        &layout,
        &config,
        std::slice::from_ref(&blob),
        |m| {
            m["layers"][0].as_object_mut().unwrap().remove("size");
        },
        |_| {},
    );
    let err = store
        .import_layout(&layout, Some("example.com/sizes"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&layer_digest) && err.contains("size"), "{err}");

    // A blob already in the store does not excuse a wrong size: import the
    // image correctly, then the same layer with a wrong size.
    let good = dir.join("good");
    write_layout(&good, &config, std::slice::from_ref(&blob), |_| {}, |_| {});
    store
        .import_layout(&good, Some("example.com/good"))
        .unwrap();
    let layout = dir.join("again");
    write_layout(
        &layout,
        &config,
        std::slice::from_ref(&blob),
        |m| m["layers"][0]["size"] = json!(real + 100),
        |_| {},
    );
    let err = store
        .import_layout(&layout, Some("example.com/again"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::SizeMismatch { digest, expected_size, actual_size }
            if *digest == layer_digest && *expected_size == real + 100 && *actual_size == real),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// 4. Local users and setuid binaries in snapshots.
// ---------------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Runs `argv` as nobody (uid/gid 65534, no supplementary groups, no
/// capabilities). Through a shell: setpriv keeps root's capabilities until
/// its own execve, so `setpriv ... PATH` would resolve PATH as root.
fn as_nobody(argv: &[&str]) -> std::process::Output {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            "/bin/sh",
            "-c",
            "grep -q '^CapEff:.0*$' /proc/self/status || exit 99; exec \"$@\"",
            "sh",
        ])
        .args(argv)
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(99),
        "the shell as nobody still had capabilities"
    );
    out
}

#[test]
fn local_users_cannot_reach_setuid_binaries_in_the_store() {
    let dir = TempDir::new("setuid").unwrap();
    // The store's parent is traversable by everyone, as /var/lib is.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.join("store");
    // What an older version left: everything world-readable.
    for d in ["snapshots", "tmp", "content/blobs/sha256", "content/ingest"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for d in [
        "",
        "snapshots",
        "tmp",
        "content",
        "content/blobs",
        "content/blobs/sha256",
        "content/ingest",
    ] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(root.join("metadata.redb"), b"").unwrap();
    fs::set_permissions(
        root.join("metadata.redb"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    let store = open_store(&root);
    // A setuid-root copy of id(1) in a layer.
    let id = fs::read("/usr/bin/id").unwrap();
    let layer = Layer::new()
        .dir("bin/")
        .entry(Entry::file("bin/id", &id).mode(0o4755).owner(0, 0));
    write_layout(
        &dir.join("layout"),
        &config_for(&[layer.diff_id()]),
        &[layer.compressed(Compression::Gzip).unwrap()],
        |_| {},
        |_| {},
    );
    store
        .import_layout(&dir.join("layout"), Some("example.com/suid"))
        .unwrap();
    let snapshot = fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("fs/bin/id").exists())
        .expect("the unpacked layer");
    let binary = snapshot.join("fs/bin/id");
    assert_eq!(mode(&binary), 0o4755, "the layer's setuid bit is kept");
    let binary = binary.display().to_string();

    // Another user can neither run it (euid 0) nor even see it.
    let run = as_nobody(&[&binary, "-u"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("Permission denied"),
        "nobody ran the setuid binary: status {:?}, stdout {stdout:?}, stderr {stderr:?}",
        run.status
    );
    let stat = as_nobody(&["stat", &binary]);
    assert!(
        !stat.status.success()
            && String::from_utf8_lossy(&stat.stderr).contains("Permission denied"),
        "nobody could stat {binary}: {}",
        String::from_utf8_lossy(&stat.stdout)
    );
    // Root still can (the store works).
    let run = Command::new(&binary).arg("-u").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "0");

    // Modes: root-only directories (fixed where an older version left
    // them open), 0600 files.
    for d in [
        "",
        "snapshots",
        "tmp",
        "content",
        "content/blobs",
        "content/blobs/sha256",
        "content/ingest",
    ] {
        assert_eq!(mode(&root.join(d)), 0o700, "{}/{d}", root.display());
    }
    assert_eq!(mode(&snapshot), 0o700, "{}", snapshot.display());
    assert_eq!(mode(&root.join("metadata.redb")), 0o600);
    let mut blobs = 0;
    for e in fs::read_dir(root.join("content/blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        blobs += 1;
    }
    assert_eq!(blobs, 3, "config, layer and manifest");
    // A container rootfs gets a private snapshot directory too.
    let rootfs = store.prepare_rootfs("example.com/suid:v1", "c1").unwrap();
    assert_eq!(mode(rootfs.upperdir.parent().unwrap()), 0o700);
    store.remove_rootfs("c1").unwrap();

    // A fresh store is private from the start.
    let fresh = dir.join("fresh/store");
    drop(open_store(&fresh));
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("metadata.redb")), 0o600);
    let ls = as_nobody(&["ls", &fresh.join("snapshots").display().to_string()]);
    assert!(!ls.status.success());
}
