//! Proof that the fixtures are what they claim, checked against independent
//! implementations: the `tar` crate and GNU tar for archives, umoci and
//! skopeo for layouts and archives, the real registry (and skopeo reading
//! from it) for pushes.
//!
//! Run: `cargo test -p berth-testkit --test selftest` (needs umoci, skopeo,
//! docker-registry and GNU tar).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use berth_testkit::images as support;
use support::http::resolve_location;
use support::tarball::field;
use support::*;

/// Runs a tool, returning stdout, or an error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn run_ok(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn skopeo_inspect(reference: &str, extra: &[&str]) -> Value {
    let mut args = vec!["inspect"];
    args.extend_from_slice(extra);
    args.push(reference);
    json(&run_ok("skopeo", &args))
}

/// One tar member as the `tar` crate sees it.
#[derive(Debug)]
struct Seen {
    kind: ::tar::EntryType,
    link: Option<Vec<u8>>,
    mode: u32,
    uid: u64,
    gid: u64,
    device: Option<(u32, u32)>,
    xattrs: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
}

fn read_with_tar_crate(bytes: &[u8]) -> Vec<(Vec<u8>, Seen)> {
    let mut archive = ::tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar crate: entries") {
        let mut e = entry.expect("tar crate: entry");
        let path = e.path_bytes().into_owned();
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let h = e.header();
        let kind = h.entry_type();
        let mode = h.mode().expect("mode");
        let uid = h.uid().expect("uid");
        let gid = h.gid().expect("gid");
        let device = match (h.device_major(), h.device_minor()) {
            (Ok(Some(a)), Ok(Some(b)))
                if kind.is_character_special() || kind.is_block_special() =>
            {
                Some((a, b))
            }
            _ => None,
        };
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = e.pax_extensions() {
            for ext in exts {
                let ext = ext.expect("pax record");
                if let Some(name) = ext.key().expect("pax key").strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("entry data");
        out.push((
            path,
            Seen {
                kind,
                link,
                mode,
                uid,
                gid,
                device,
                xattrs,
                data,
            },
        ));
    }
    out
}

#[test]
fn tar_writer_round_trips_through_the_tar_crate() {
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(60));
    let long_target = format!("/{}", "t".repeat(150));
    let layer = Layer::new()
        .dir("etc/")
        .entry(
            Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
                .mode(0o600)
                .owner(0, 42),
        )
        .entry(
            Entry::file("bin/su", "x")
                .mode(0o4755)
                .xattr("security.capability", [1u8, 0, 0, 2]),
        )
        .entry(Entry::file("big-ids", "").owner(10_000_000, 4_000_000_000))
        .symlink("bin/sh", "busybox")
        .hardlink("bin/sh2", "bin/sh")
        .char_device("dev/null", 1, 3)
        .block_device("dev/sda", 8, 0)
        .fifo("run/fifo")
        .entry(Entry::file(&long_file, "pax long name"))
        .entry(Entry::file(format!("gnu/{long_file}"), "gnu long name").long_names(LongNames::Gnu))
        .entry(
            Entry::file(format!("ustar/{long_file}"), "prefix").long_names(LongNames::UstarPrefix),
        )
        .symlink("long-link", &long_target)
        .entry(Entry::symlink("gnu-long-link", &long_target).long_names(LongNames::Gnu))
        .whiteout("etc/shadow")
        .opaque("var/cache")
        // Hostile members, which must come out exactly as written.
        .file("../escape", "up")
        .file("/etc/cron.d/evil", "abs")
        .hardlink("evil-hardlink", "../../etc/passwd")
        .symlink("lnk", "/etc")
        .file("lnk/written-through-symlink", "via symlink")
        .file(b"non-utf8-\xff", "bytes");
    let tar = layer.to_tar();
    assert_eq!(tar.len() % 512, 0);
    let seen: HashMap<Vec<u8>, Seen> = read_with_tar_crate(&tar).into_iter().collect();
    let get = |p: &str| {
        seen.get(p.as_bytes()).unwrap_or_else(|| {
            panic!(
                "{p} missing; have {:?}",
                seen.keys()
                    .map(|k| String::from_utf8_lossy(k))
                    .collect::<Vec<_>>()
            )
        })
    };
    use ::tar::EntryType as T;
    let passwd = get("etc/passwd");
    assert_eq!((passwd.mode, passwd.uid, passwd.gid), (0o600, 0, 42));
    assert_eq!(passwd.data, b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(get("etc/").kind, T::Directory);
    let su = get("bin/su");
    assert_eq!(su.mode, 0o4755);
    assert_eq!(
        su.xattrs,
        vec![("security.capability".to_string(), vec![1, 0, 0, 2])]
    );
    let big = get("big-ids");
    assert_eq!((big.uid, big.gid), (10_000_000, 4_000_000_000));
    assert_eq!(get("bin/sh").kind, T::Symlink);
    assert_eq!(get("bin/sh").link.as_deref(), Some(&b"busybox"[..]));
    assert_eq!(get("bin/sh2").kind, T::Link);
    assert_eq!(get("dev/null").device, Some((1, 3)));
    assert_eq!(get("dev/null").kind, T::Char);
    assert_eq!(get("dev/sda").device, Some((8, 0)));
    assert_eq!(get("run/fifo").kind, T::Fifo);
    assert_eq!(get(&long_file).data, b"pax long name");
    assert_eq!(get(&format!("gnu/{long_file}")).data, b"gnu long name");
    assert_eq!(get(&format!("ustar/{long_file}")).data, b"prefix");
    assert_eq!(
        get("long-link").link.as_deref(),
        Some(long_target.as_bytes())
    );
    assert_eq!(
        get("gnu-long-link").link.as_deref(),
        Some(long_target.as_bytes())
    );
    assert_eq!(get("etc/.wh.shadow").kind, T::Regular);
    get("var/cache/.wh..wh..opq");
    assert_eq!(get("../escape").data, b"up");
    assert_eq!(get("/etc/cron.d/evil").data, b"abs");
    assert_eq!(
        get("evil-hardlink").link.as_deref(),
        Some(&b"../../etc/passwd"[..])
    );
    assert_eq!(get("lnk/written-through-symlink").data, b"via symlink");
    assert!(seen.contains_key(&b"non-utf8-\xff"[..]));

    // A second, independent reader: GNU tar lists it without complaint.
    let dir = TempDir::new("selftest-tar").expect("tempdir");
    let path = dir.join("layer.tar");
    std::fs::write(&path, &tar).expect("write tar");
    let listing = run_ok(
        "tar",
        &[
            "--numeric-owner",
            "-tvf",
            path.to_str().expect("utf-8 path"),
        ],
    );
    assert!(
        listing.contains("etc/passwd") && listing.contains(&long_file),
        "{listing}"
    );

    // Broken archives are broken for real readers too.
    let corrupt = Layer::new()
        .entry(Entry::file("a", "x").corrupt_checksum())
        .to_tar();
    let mut entries = ::tar::Archive::new(&corrupt[..]);
    let has_error = entries.entries().unwrap().any(|e| e.is_err());
    assert!(has_error, "a corrupt checksum must be noticed");
    let lying = Layer::new()
        .entry(Entry::file("a", "x").patch_header(field::TYPEFLAG, b"5"))
        .to_tar();
    let lying = read_with_tar_crate(&lying);
    assert_eq!(lying[0].1.kind, T::Directory);
}

#[test]
fn compression_round_trips_and_diff_ids_hash_the_uncompressed_tar() {
    let layer = Layer::new().file("hello", "world");
    let tar = layer.to_tar();
    let mut gunzipped = Vec::new();
    flate2::read::GzDecoder::new(&layer.compressed(Compression::Gzip).unwrap()[..])
        .read_to_end(&mut gunzipped)
        .unwrap();
    assert_eq!(gunzipped, tar);
    assert_eq!(
        zstd::decode_all(&layer.compressed(Compression::Zstd).unwrap()[..]).unwrap(),
        tar
    );
    let built = Image::new()
        .layer(layer.clone(), Compression::Zstd)
        .build()
        .unwrap();
    let config = built.config_json().unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], layer.diff_id());
    assert_ne!(built.layers[0].blob.digest, layer.diff_id());
    assert_eq!(
        built.layers[0].blob.media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
}

#[test]
fn location_headers_resolve() {
    let req = "/v2/a/blobs/uploads/";
    assert_eq!(
        resolve_location(req, "http://127.0.0.1:5/v2/a/blobs/uploads/u?x=1"),
        "http://127.0.0.1:5/v2/a/blobs/uploads/u?x=1"
    );
    assert_eq!(
        resolve_location(req, "/v2/a/blobs/uploads/u"),
        "/v2/a/blobs/uploads/u"
    );
    assert_eq!(
        resolve_location(req, "u?_state=s"),
        "/v2/a/blobs/uploads/u?_state=s"
    );
    assert_eq!(
        crate::support::http::base64(b"alice:s3cret"),
        "YWxpY2U6czNjcmV0"
    );
    assert_eq!(crate::support::http::base64(b"ab"), "YWI=");
}

/// The busybox fixture as a layout that skopeo and umoci accept, and whose
/// unpacked rootfs (umoci applies whiteouts and opaque markers) is what the
/// fixture's documentation promises.
#[test]
fn oci_layout_validates_and_unpacks_with_umoci() {
    let dir = TempDir::new("selftest-layout").expect("tempdir");
    let layout = dir.join("layout");
    let image = busybox_image(Compression::Gzip)
        .expect("busybox image")
        .entrypoint(&["/bin/sh", "-c"])
        .env("FOO=bar")
        .user("1000:1000")
        .expose("8080/tcp")
        .volume("/data")
        .stop_signal("SIGTERM");
    let artifact = image.artifact().expect("build");
    let digest = write_oci_layout(&layout, "latest", &artifact).expect("layout");
    assert_eq!(digest, artifact.digest());

    // A second tag in the same layout, written through OciLayout.
    let mut multi = OciLayout::create(&dir.join("multi")).expect("layout");
    multi.add(Some("a"), &artifact).expect("add a");
    multi
        .add(
            Some("b"),
            &multi_platform_index(&["linux/amd64"]).artifact().unwrap(),
        )
        .expect("add b");
    let tags = run_ok("umoci", &["ls", "--layout", multi.dir().to_str().unwrap()]);
    assert_eq!(tags.split_whitespace().collect::<Vec<_>>(), ["a", "b"]);

    let layout_ref = format!("{}:latest", layout.display());
    run_ok("umoci", &["stat", "--image", &layout_ref]);
    let info = skopeo_inspect(&format!("oci:{layout_ref}"), &[]);
    assert_eq!(info["Digest"], digest);
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(3));
    let env = info["Env"].as_array().expect("Env");
    assert!(env.contains(&Value::from("FOO=bar")), "{env:?}");

    let bundle = dir.join("bundle");
    run_ok(
        "umoci",
        &["unpack", "--image", &layout_ref, bundle.to_str().unwrap()],
    );
    let rootfs = bundle.join("rootfs");
    for p in BUSYBOX_PRESENT {
        assert!(
            rootfs.join(p).symlink_metadata().is_ok(),
            "{p} should exist"
        );
    }
    for p in BUSYBOX_ABSENT {
        assert!(
            rootfs.join(p).symlink_metadata().is_err(),
            "{p} should not exist"
        );
    }
    let data = rootfs.join("usr/share/berth/data.txt");
    let link = rootfs.join("usr/share/berth/data-hardlink.txt");
    assert_eq!(
        std::fs::read_to_string(&link).unwrap(),
        fixtures::BUSYBOX_DATA
    );
    assert_eq!(
        data.metadata().unwrap().ino(),
        link.metadata().unwrap().ino()
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/ls")).unwrap(),
        Path::new("busybox")
    );
    let home = rootfs.join("home/berth").metadata().unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(
        rootfs.join("tmp").metadata().unwrap().mode() & 0o7777,
        0o1777
    );
    // The binary really is busybox and runs from the unpacked tree.
    let out = run_ok(
        rootfs.join("bin/busybox").to_str().unwrap(),
        &["echo", "alive"],
    );
    assert_eq!(out.trim(), "alive");
    // The runtime config umoci generated carries the image config through.
    let spec = json(&std::fs::read_to_string(bundle.join("config.json")).unwrap());
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["/bin/sh", "-c", "/bin/sh"])
    );
}

#[test]
fn oci_archive_is_accepted_by_skopeo() {
    let dir = TempDir::new("selftest-ociarchive").expect("tempdir");
    let path = dir.join("image.tar");
    let artifact = multi_platform_index(&["linux/amd64", "linux/arm64/v8"])
        .artifact()
        .expect("build");
    let digest = write_oci_archive(&path, "v1", &artifact).expect("archive");
    let reference = format!("oci-archive:{}:v1", path.display());
    let raw = json(&run_ok("skopeo", &["inspect", "--raw", &reference]));
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(
        crate::support::sha256_digest(&serde_json::to_vec(&raw).unwrap()),
        digest
    );
    let arm = skopeo_inspect(
        &reference,
        &["--override-arch", "arm64", "--override-variant", "v8"],
    );
    assert_eq!(arm["Architecture"], "arm64");
}

#[test]
fn docker_archive_is_accepted_by_skopeo() {
    let dir = TempDir::new("selftest-dockerarchive").expect("tempdir");
    let path = dir.join("saved.tar");
    let image = busybox_image(Compression::Gzip)
        .expect("busybox image")
        .format(Format::Docker)
        .build()
        .expect("build");
    let id = write_docker_archive(&path, &["berth/busybox:latest"], &image).expect("archive");
    assert_eq!(id, image.config.digest);
    let info = skopeo_inspect(&format!("docker-archive:{}", path.display()), &[]);
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(3));
    assert_eq!(info["Os"], "linux");
    // skopeo copy checks every layer against the config's diff_ids.
    let out = dir.join("copied");
    run_ok(
        "skopeo",
        &[
            "copy",
            "--insecure-policy",
            &format!("docker-archive:{}:berth/busybox:latest", path.display()),
            &format!("oci:{}:copied", out.display()),
        ],
    );
}

#[test]
fn pushes_are_readable_by_skopeo() {
    let registry = Registry::start().expect("registry");
    let tls = "--tls-verify=false";

    // OCI image with a zstd layer next to gzip and uncompressed ones.
    let image = Image::new()
        .layer(
            Layer::new().dir("etc/").file("etc/a", "a"),
            Compression::None,
        )
        .layer(
            Layer::new().dir("etc/").file("etc/b", "b"),
            Compression::Gzip,
        )
        .layer(
            Layer::new().dir("etc/").file("etc/c", "c"),
            Compression::Zstd,
        )
        .cmd(&["/bin/true"]);
    let artifact = image.artifact().unwrap();
    let digest = registry.push("berth/mixed", "v1", &artifact).expect("push");
    assert_eq!(digest, artifact.digest());
    let info = skopeo_inspect(
        &format!("docker://{}", registry.reference("berth/mixed", "v1")),
        &[tls],
    );
    assert_eq!(info["Digest"], digest);
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(3));
    // Pushing again is a no-op for the blobs (HEAD finds them).
    assert_eq!(
        registry.push("berth/mixed", "v1", &artifact).unwrap(),
        digest
    );

    // Docker schema 2 busybox, copied back out: skopeo verifies blob digests.
    let docker = busybox_image(Compression::Gzip)
        .unwrap()
        .format(Format::Docker)
        .artifact()
        .unwrap();
    let digest = registry
        .push("library/busybox", "latest", &docker)
        .expect("push docker");
    let reference = format!(
        "docker://{}",
        registry.reference("library/busybox", "latest")
    );
    let raw = json(&run_ok("skopeo", &["inspect", tls, "--raw", &reference]));
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(skopeo_inspect(&reference, &[tls])["Digest"], digest);
    let dir = TempDir::new("selftest-push").expect("tempdir");
    run_ok(
        "skopeo",
        &[
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            &reference,
            &format!("dir:{}", dir.join("bb").display()),
        ],
    );

    // An index: skopeo picks the arm64 image, whose marker says so.
    let index = multi_platform_index(&["linux/amd64", "linux/arm64"])
        .artifact()
        .unwrap();
    let digest = registry
        .push("berth/multi", "latest", &index)
        .expect("push index");
    let reference = format!("docker://{}", registry.reference("berth/multi", "latest"));
    let raw = json(&run_ok("skopeo", &["inspect", tls, "--raw", &reference]));
    assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2));
    let arm = skopeo_inspect(&reference, &[tls, "--override-arch", "arm64"]);
    assert_eq!(arm["Architecture"], "arm64");
    let layout = dir.join("arm");
    run_ok(
        "skopeo",
        &[
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            "--override-arch",
            "arm64",
            &reference,
            &format!("oci:{}:arm", layout.display()),
        ],
    );
    let bundle = dir.join("arm-bundle");
    run_ok(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:arm", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/platform")).unwrap(),
        "linux/arm64"
    );
    // skopeo reports the index digest, but the arm64 image's own layers.
    let Artifact::Index(built) = &index else {
        unreachable!("multi_platform_index builds an index")
    };
    let marker = &built.image_for("linux/arm64").unwrap().layers[1]
        .blob
        .digest;
    assert_eq!(arm["Layers"][1].as_str(), Some(marker.as_str()));
    assert_eq!(arm["Digest"].as_str(), Some(digest.as_str()));
    assert_eq!(digest, index.digest());

    // A Docker manifest list over Docker images.
    let list = platform_index(&["linux/amd64", "linux/arm/v7"], &[], Format::Docker)
        .artifact()
        .unwrap();
    registry
        .push("berth/list", "latest", &list)
        .expect("push manifest list");
    let reference = format!("docker://{}", registry.reference("berth/list", "latest"));
    let raw = json(&run_ok("skopeo", &["inspect", tls, "--raw", &reference]));
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    // skopeo 1.9's inspect summary has no Variant; the config does.
    let arm = skopeo_inspect(
        &reference,
        &[
            tls,
            "--config",
            "--override-arch",
            "arm",
            "--override-variant",
            "v7",
        ],
    );
    assert_eq!(arm["architecture"], "arm");
    assert_eq!(arm["variant"], "v7");
}

#[test]
fn basic_auth_registry_refuses_anonymous_pushes() {
    let registry = Registry::start_with_basic_auth("alice", "s3cret").expect("registry");
    let artifact = multi_platform_index(&["linux/amd64"]).artifact().unwrap();

    let anonymous = artifact.push(&registry.anonymous_client(), "berth/private", "v1");
    let e = anonymous.expect_err("anonymous push must be refused");
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    let wrong = RegistryClient::new(registry.addr()).with_basic_auth("alice", "wrong");
    assert!(artifact.push(&wrong, "berth/private", "v1").is_err());

    let digest = registry
        .push("berth/private", "v1", &artifact)
        .expect("authenticated push");
    let reference = format!("docker://{}", registry.reference("berth/private", "v1"));
    let anonymous_read = run(
        "skopeo",
        &["inspect", "--tls-verify=false", "--raw", &reference],
    );
    assert!(
        anonymous_read.is_err(),
        "read without credentials succeeded"
    );
    let raw = run_ok(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            "alice:s3cret",
            "--raw",
            &reference,
        ],
    );
    assert_eq!(crate::support::sha256_digest(raw.as_bytes()), digest);
}

/// Registries started side by side get their own port and directory, and
/// dropping one kills its process and removes its directory.
#[test]
fn registries_are_isolated_and_cleaned_up() {
    let registries: Vec<Registry> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(Registry::start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().expect("registry"))
            .collect()
    });
    let mut addrs: Vec<&str> = registries.iter().map(|r| r.addr()).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 3);
    let gone: Vec<(u32, std::path::PathBuf)> = registries
        .iter()
        .map(|r| (r.pid(), r.storage_dir()))
        .collect();
    drop(registries);
    for (pid, storage) in gone {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "registry {pid} still running"
        );
        assert!(
            !storage.parent().unwrap().exists(),
            "{} not removed",
            storage.display()
        );
    }
}
