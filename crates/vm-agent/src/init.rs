//! What PID 1 does before serving: the guest's basic file systems and the
//! kernel modules the guest build listed (virtio transport, console,
//! virtio-fs, overlay, ...), loaded in the order it wrote them.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::path::Path;

use rustix::mount::{mount, MountFlags};

/// The list `scripts/build-guest` writes: one module path per line,
/// relative to /lib/modules, dependencies first.
const MODULE_LIST: &str = "/etc/berth/modules";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: &'static str,
        target: &'static str,
        source: io::Error,
    },
    #[error("reading the module list {MODULE_LIST}: {0}")]
    ModuleList(io::Error),
    #[error("bringing up the loopback interface: {0}")]
    Loopback(io::Error),
    #[error("leaving the initramfs for a tmpfs root: {0}")]
    SwitchRoot(io::Error),
    #[error("loading kernel module {path}: {source}")]
    Module { path: String, source: io::Error },
}

/// What the guest keeps of its initramfs once the modules are loaded.
const KEEP: &[&str] = &["init", "bin", "etc"];

/// Loads the modules, leaves the initramfs for a tmpfs root, mounts the
/// guest's file systems; returns the modules loaded.
pub fn setup() -> Result<Vec<String>, InitError> {
    let modules = load_modules(Path::new(MODULE_LIST))?;
    leave_initramfs().map_err(InitError::SwitchRoot)?;
    let nodev = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let mounts: [(
        &'static str,
        &'static str,
        &'static str,
        MountFlags,
        &'static CStr,
    ); 7] = [
        ("proc", "/proc", "proc", nodev, c""),
        ("sysfs", "/sys", "sysfs", nodev, c""),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags::NOSUID,
            c"mode=0755",
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            c"newinstance,ptmxmode=0666,mode=0620",
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nodev, c"mode=1777"),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=0755",
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=1777",
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        mount(source, target, fstype, flags, Some(data)).map_err(|e| InitError::Mount {
            what: fstype,
            target,
            source: e.into(),
        })?;
    }
    let _ = std::fs::create_dir_all("/sys/fs/cgroup");
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, Some(c"")).map_err(|e| {
        InitError::Mount {
            what: "cgroup2",
            target: "/sys/fs/cgroup",
            source: e.into(),
        }
    })?;
    // The guest's network namespace is the pod's: its containers reach
    // each other on localhost.
    berth_common::net::bring_up_loopback().map_err(InitError::Loopback)?;
    Ok(modules)
}

/// The initramfs is the kernel's rootfs, which pivot_root(2) cannot leave:
/// containers could only be entered by chroot. So, as switch_root does,
/// what the guest keeps is copied into a tmpfs, the rest deleted (its
/// memory freed: the module files alone are megabytes), and the tmpfs
/// moved over / to be the root.
fn leave_initramfs() -> io::Result<()> {
    const NEW_ROOT: &str = "/newroot";
    std::fs::create_dir_all(NEW_ROOT)?;
    mount(
        "tmpfs",
        NEW_ROOT,
        "tmpfs",
        MountFlags::empty(),
        Some(c"mode=0755"),
    )
    .map_err(io::Error::from)?;
    for name in KEEP {
        let from = Path::new("/").join(name);
        if from.exists() {
            copy_tree(&from, &Path::new(NEW_ROOT).join(name))?;
        }
    }
    for entry in std::fs::read_dir("/")? {
        let entry = entry?;
        if entry.file_name() == "newroot" {
            continue;
        }
        // Nothing is mounted below the old root yet: removal cannot cross
        // into another file system.
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::env::set_current_dir(NEW_ROOT)?;
    rustix::mount::mount_move(".", "/").map_err(io::Error::from)?;
    rustix::process::chroot(".").map_err(io::Error::from)?;
    std::env::set_current_dir("/")
}

/// Copies a file or a directory tree, keeping permission bits.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir(to)?;
        std::fs::set_permissions(to, meta.permissions())?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else {
        std::fs::copy(from, to).map(drop)
    }
}

fn load_modules(list: &Path) -> Result<Vec<String>, InitError> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        // A guest whose kernel has everything built in lists nothing.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(InitError::ModuleList(e)),
    };
    let mut loaded = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = format!("/lib/modules/{line}");
        let fail = |source: io::Error| InitError::Module {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(fail)?;
        match rustix::system::finit_module(&file, c"", 0) {
            Ok(()) => {}
            // Built in, or loaded as another module's dependency.
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(fail(e.into())),
        }
        let name = Path::new(line)
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".ko").to_owned())
            .unwrap_or_default();
        loaded.push(name);
    }
    Ok(loaded)
}

/// Flushes the file systems and powers the VM off. The hypervisor runs
/// with reboots turned into exits, so this ends it.
pub fn power_off() -> ! {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    // Only reached if reboot(2) failed: nothing else to do but wait.
    loop {
        std::thread::park();
    }
}
