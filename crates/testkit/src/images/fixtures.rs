//! Ready-made images for tests that need something realistic rather than
//! something hand-crafted.

use std::io;
use std::process::Command;

use super::oci::{Format, Image, Index};
use super::tarball::{Compression, Entry, Layer};

// Adds what was being attempted to error messages.
use super::Context;

/// The static busybox from Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";

/// Paths (relative to the rootfs) that exist once all three
/// [`busybox_rootfs_layers`] are applied in order.
pub const BUSYBOX_PRESENT: &[&str] = &[
    "bin/busybox",
    "bin/sh",
    "bin/ls",
    "etc/passwd",
    "etc/group",
    "etc/motd",
    "home/berth/.profile",
    "var/lib/old/c",
    "usr/share/berth/data.txt",
    "usr/share/berth/data-hardlink.txt",
    "usr/share/berth/current",
];

/// Paths that layer 1 creates and layer 2 removes (a whiteout and an opaque
/// directory), plus the markers themselves, none of which may appear in an
/// unpacked rootfs.
pub const BUSYBOX_ABSENT: &[&str] = &[
    "etc/obsolete.conf",
    "etc/.wh.obsolete.conf",
    "var/lib/old/a",
    "var/lib/old/b",
    "var/lib/old/.wh..wh..opq",
];

/// Content of `usr/share/berth/data.txt` (and so of its hardlink).
pub const BUSYBOX_DATA: &str = "berth layer 3 data\n";

/// The applets the static busybox provides, from `busybox --list`.
pub fn busybox_applets() -> io::Result<Vec<String>> {
    let mut cmd = Command::new(BUSYBOX);
    cmd.arg("--list");
    let out = super::tool_stdout(&mut cmd, &format!("{BUSYBOX} --list"), "busybox-static")?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect())
}

/// A realistic three-layer busybox rootfs:
///
/// 1. directories (`tmp` 1777, `root` 0700), `bin/busybox` (0755) with a
///    symlink `bin/<applet> -> busybox` per applet, `etc/passwd`,
///    `etc/group`, and two things layer 2 removes: `etc/obsolete.conf` and
///    `var/lib/old/{a,b}`;
/// 2. `etc/.wh.obsolete.conf` (whiteout), `var/lib/old/.wh..wh..opq` (opaque)
///    plus a new `var/lib/old/c`, `etc/motd`, and `home/berth/` owned by
///    1000:1000 with a `user.berth` xattr on `.profile`;
/// 3. `usr/share/berth/data.txt`, a hardlink `data-hardlink.txt` to it and a
///    symlink `current -> data.txt`.
///
/// [`BUSYBOX_PRESENT`] / [`BUSYBOX_ABSENT`] list what the merged rootfs must
/// and must not contain.
pub fn busybox_rootfs_layers() -> io::Result<Vec<Layer>> {
    let binary = std::fs::read(BUSYBOX).context(|| {
        format!("reading {BUSYBOX} (install it with: apt-get install busybox-static)")
    })?;
    let mut base = Layer::new()
        .dir("bin/")
        .dir("etc/")
        .entry(Entry::dir("root/").mode(0o700))
        .entry(Entry::dir("tmp/").mode(0o1777))
        .dir("usr/")
        .dir("usr/share/")
        .dir("var/")
        .dir("var/lib/")
        .dir("var/lib/old/")
        .file_mode("bin/busybox", binary, 0o755);
    for applet in busybox_applets()? {
        // `busybox` itself is the binary; a symlink would replace it.
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        base = base.symlink(format!("bin/{applet}"), "busybox");
    }
    let base = base
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\n\
             berth:x:1000:1000:berth:/home/berth:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .file("etc/group", "root:x:0:\nberth:x:1000:\nnogroup:x:65534:\n")
        .file("etc/obsolete.conf", "removed by layer 2\n")
        .file(
            "var/lib/old/a",
            "hidden by the opaque directory in layer 2\n",
        )
        .file(
            "var/lib/old/b",
            "hidden by the opaque directory in layer 2\n",
        );

    let changes = Layer::new()
        .dir("etc/")
        .whiteout("etc/obsolete.conf")
        .file("etc/motd", "welcome to berth\n")
        .entry(Entry::dir("home/").mode(0o755))
        .entry(Entry::dir("home/berth/").mode(0o750).owner(1000, 1000))
        .entry(
            Entry::file("home/berth/.profile", "export PS1='berth$ '\n")
                .owner(1000, 1000)
                .xattr("user.berth", "fixture"),
        )
        .dir("var/")
        .dir("var/lib/")
        .dir("var/lib/old/")
        .opaque("var/lib/old")
        .file("var/lib/old/c", "only this survives in var/lib/old\n");

    let links = Layer::new()
        .dir("usr/")
        .dir("usr/share/")
        .dir("usr/share/berth/")
        .file("usr/share/berth/data.txt", BUSYBOX_DATA)
        .hardlink(
            "usr/share/berth/data-hardlink.txt",
            "usr/share/berth/data.txt",
        )
        .symlink("usr/share/berth/current", "data.txt");

    Ok(vec![base, changes, links])
}

/// [`busybox_rootfs_layers`] as an OCI image (`Cmd ["/bin/sh"]`); change the
/// format with `.format(Format::Docker)` or add settings before building.
pub fn busybox_image(compression: Compression) -> io::Result<Image> {
    Ok(Image::new()
        .layers(busybox_rootfs_layers()?, compression)
        .cmd(&["/bin/sh"])
        .working_dir("/")
        .label("org.opencontainers.image.title", "berth busybox fixture"))
}

/// An index over `platforms` (`"linux/arm64/v8"`, ...) whose images share
/// `base` and differ by a last layer holding `etc/platform`, whose content is
/// the platform string exactly as given (no newline). Each image's config
/// carries the matching os/architecture/variant. Images use `format` too.
pub fn platform_index(platforms: &[&str], base: &[Layer], format: Format) -> Index {
    let mut index = Index {
        format,
        ..Index::default()
    };
    for platform in platforms {
        let marker = Layer::new().dir("etc/").file("etc/platform", platform);
        let image = Image::new()
            .format(format)
            .platform(platform)
            .layers(base.iter().cloned(), Compression::Gzip)
            .layer(marker, Compression::Gzip)
            .cmd(&["/bin/sh"]);
        index = index.image(image);
    }
    index
}

/// A small OCI index (one shared base layer with `etc/os-release`, then the
/// `etc/platform` marker) over `platforms`; no busybox, so it builds fast.
pub fn multi_platform_index(platforms: &[&str]) -> Index {
    let base = Layer::new()
        .dir("etc/")
        .file("etc/os-release", "ID=berth-fixture\n");
    platform_index(platforms, &[base], Format::Oci)
}
