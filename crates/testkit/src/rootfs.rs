//! Busybox root filesystems: a bundle's rootfs, and OCI images built from
//! the host's static busybox with umoci.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cmd::run_ok;
use crate::tools::require_static_busybox;

/// The reference the drop-in image is imported under (by ctr and podman).
pub const IMAGE_REF: &str = "localhost/berth-dropin/busybox:latest";

/// A symlink `bin/<applet>` -> `busybox` for every applet the host's
/// busybox lists; returns how many.
fn link_applets(busybox: &Path, bin: &Path) -> usize {
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("running {} --list: {e}", busybox.display()));
    let mut applets = 0;
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        // "busybox" itself would replace the binary with a self-symlink.
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", bin.join(applet)).expect("creating an applet symlink");
        applets += 1;
    }
    applets
}

/// Copies the executable `from` to `to` with `cp`, in a child process.
///
/// `std::fs::copy` would hold `to` open for writing in this process, and
/// a test thread forking at that moment hands the descriptor to a child
/// until the child execs. While any process holds it, executing `to`
/// fails with ETXTBSY ("Text file busy"). `cp` keeps the descriptor in a
/// process that never forks.
pub fn copy_executable(from: &Path, to: &Path) -> std::io::Result<()> {
    let out = Command::new("cp").arg("--").arg(from).arg(to).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "cp {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Writes `contents` as the executable `path` (mode 0755), through
/// [`copy_executable`] for the same reason.
pub fn write_executable(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut draft = path.as_os_str().to_owned();
    draft.push(".draft");
    let draft = PathBuf::from(draft);
    std::fs::write(&draft, contents)?;
    std::fs::set_permissions(&draft, std::fs::Permissions::from_mode(0o755))?;
    let copied = copy_executable(&draft, path);
    std::fs::remove_file(&draft)?;
    copied
}

/// A root filesystem with busybox and its applets, /etc/passwd (root and
/// user 1000) and /etc/group (root, user 1000, extra 2000).
pub fn make_busybox_rootfs(rootfs: &Path) {
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/user",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    // A copy, never a hard link: a container writing its busybox must not
    // reach the host's.
    copy_executable(Path::new("/bin/busybox"), &rootfs.join("bin/busybox")).unwrap();
    link_applets(Path::new("/bin/busybox"), &rootfs.join("bin"));
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nextra:x:2000:\n",
    )
    .unwrap();
}

/// Writes an OCI bundle at `bundle`: a busybox rootfs
/// ([`make_busybox_rootfs`]) and `config` as config.json, its process
/// running `args` without a terminal, then changed by `edit`. Returns
/// `bundle`.
pub fn busybox_bundle(
    bundle: &Path,
    mut config: Value,
    args: &[&str],
    edit: impl FnOnce(&mut Value),
) -> PathBuf {
    make_busybox_rootfs(&bundle.join("rootfs"));
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(args);
    edit(&mut config);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    bundle.to_path_buf()
}

/// Builds an OCI image holding only a static busybox (applet symlinks in
/// /bin, /etc/passwd and /etc/group) with umoci, and packs the layout into
/// an oci-archive tar file under `dir`. Its index names it `IMAGE_REF`.
pub fn build_busybox_oci_archive(dir: &Path) -> PathBuf {
    let (repo, _) = IMAGE_REF.rsplit_once(':').unwrap();
    busybox_oci_archive(dir, repo, false)
}

/// Builds an OCI image layout holding only the host's static busybox with
/// umoci and packs it as an oci-archive, `dir/busybox-oci.tar`, whose index
/// names the image `<repo>:latest` (command `sh`) and, with `pause`, also
/// `<repo>:pause` (a sleep that lasts until it is killed: a pod's sandbox
/// process). The rootfs and layout it built from are removed.
pub fn busybox_oci_archive(dir: &Path, repo: &str, pause: bool) -> PathBuf {
    let busybox = require_static_busybox();
    let rootfs = dir.join("image-rootfs");
    for d in [
        "bin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    copy_executable(&busybox, &rootfs.join("bin/busybox")).expect("copying busybox");
    std::fs::set_permissions(
        rootfs.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let applets = link_applets(&busybox, &rootfs.join("bin"));
    assert!(
        rootfs.join("bin/sh").exists(),
        "busybox --list has no `sh` applet ({applets} applets)"
    );
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();

    let layout = dir.join("image-layout");
    let latest = format!("{}:latest", layout.display());
    let t = Duration::from_secs(120);
    let umoci = |args: &[&str]| {
        run_ok(dir, Command::new("umoci").args(args), t);
    };
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &latest]);
    umoci(&["insert", "--image", &latest, rootfs.to_str().unwrap(), "/"]);
    umoci(&[
        "config",
        "--image",
        &latest,
        "--config.cmd",
        "sh",
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.workingdir",
        "/",
    ]);
    if pause {
        umoci(&[
            "config",
            "--image",
            &latest,
            "--tag",
            "pause",
            "--config.cmd",
            "sleep",
            "--config.cmd",
            "2147483647",
        ]);
    }
    umoci(&["gc", "--layout", layout.to_str().unwrap()]);

    // umoci tags are bare ("latest"); name the images fully, as
    // `skopeo copy ... oci-archive:FILE:REF` would, so that containerd and
    // podman import them under `<repo>:<tag>`.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("index.json has manifests");
    assert_eq!(
        manifests.len(),
        if pause { 2 } else { 1 },
        "the manifests in {}",
        index_path.display()
    );
    for m in manifests {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("umoci names every manifest")
            .to_owned();
        m["annotations"]["org.opencontainers.image.ref.name"] =
            serde_json::json!(format!("{repo}:{tag}"));
    }
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    // An oci-archive is a plain tar of the layout.
    let archive = dir.join("busybox-oci.tar");
    run_ok(
        dir,
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
        t,
    );
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&layout);
    archive
}
