//! What PID 1 does before serving: the guest's basic file systems and the
//! kernel modules the guest build listed (virtio transport, console,
//! overlay, and the groups the host names for its devices: virtio-fs,
//! network, ...), loaded in the order it wrote them.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::path::Path;

use rustix::mount::{mount, MountFlags};

/// The list `scripts/build-guest` writes: `GROUP PATH` per line, the path
/// relative to /lib/modules, each group's dependencies first; `GROUP -`
/// for a group the kernel has built in.
const MODULE_LIST: &str = "/etc/berth/modules";

/// The group loaded at every boot (the agent's channel, overlay).
const BASE_GROUP: &str = "base";

/// The kernel command line's parameter naming the other groups to load.
const GROUPS_PARAM: &str = "berth.modules=";

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
    #[error("reading the kernel command line: {0}")]
    Cmdline(io::Error),
    #[error(
        "the host asks for the module group {0:?}, which this guest's kernel lacks \
         (a guest with 9p is built with scripts/build-guest --kernel generic)"
    )]
    MissingGroup(String),
}

/// What the guest keeps of its initramfs once the modules are loaded.
const KEEP: &[&str] = &["init", "bin", "etc"];

/// What the guest was set up with.
pub struct Setup {
    /// The kernel modules loaded.
    pub modules: Vec<String>,
    /// The host reaches the agent over vsock (else its virtio-serial port).
    pub vsock: bool,
}

/// Loads the modules, leaves the initramfs for a tmpfs root, mounts the
/// guest's file systems.
pub fn setup() -> Result<Setup, InitError> {
    let cmdline = kernel_cmdline().map_err(InitError::Cmdline)?;
    let vsock = cmdline
        .split_ascii_whitespace()
        .any(|p| p == berth_api::agent::v1::VSOCK_PARAM);
    let modules = load_modules(Path::new(MODULE_LIST), &cmdline)?;
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
    Ok(Setup { modules, vsock })
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

/// The kernel command line, for the module groups the host names. A
/// parameter with a dot never reaches init's arguments or environment, so
/// it is read from /proc, mounted for the moment (the initramfs must have
/// nothing mounted below it when it is left).
fn kernel_cmdline() -> io::Result<String> {
    std::fs::create_dir_all("/proc")?;
    mount("proc", "/proc", "proc", MountFlags::empty(), Some(c"")).map_err(io::Error::from)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline");
    rustix::mount::unmount("/proc", rustix::mount::UnmountFlags::empty())
        .map_err(io::Error::from)?;
    cmdline
}

fn groups_named(cmdline: &str) -> Vec<String> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|p| p.strip_prefix(GROUPS_PARAM))
        .flat_map(|v| v.split(','))
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The module files to load, in order: the base group's, then each wanted
/// group's; a file in several groups once.
fn modules_to_load(list: &str, wanted: &[String]) -> Result<Vec<String>, InitError> {
    let entries = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once(' ').ok_or_else(|| {
                InitError::ModuleList(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{l:?} is not `GROUP PATH`"),
                ))
            })
        })
        .collect::<Result<Vec<(&str, &str)>, InitError>>()?;
    let mut files: Vec<String> = Vec::new();
    let groups = std::iter::once(BASE_GROUP).chain(wanted.iter().map(String::as_str));
    for group in groups {
        let mut listed = false;
        for (_, file) in entries.iter().filter(|(g, _)| *g == group) {
            listed = true;
            if *file != "-" && !files.iter().any(|f| f == file) {
                files.push((*file).to_owned());
            }
        }
        // A guest listing nothing (every module built in) has no groups.
        if !listed && !entries.is_empty() {
            return Err(InitError::MissingGroup(group.to_owned()));
        }
    }
    Ok(files)
}

fn load_modules(list: &Path, cmdline: &str) -> Result<Vec<String>, InitError> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        // A guest whose kernel has everything built in lists nothing.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(InitError::ModuleList(e)),
    };
    let mut loaded = Vec::new();
    for line in modules_to_load(&text, &groups_named(cmdline))? {
        let path = format!("/lib/modules/{line}");
        let fail = |source: io::Error| InitError::Module {
            path: path.clone(),
            source,
        };
        let name = Path::new(&line)
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".ko").to_owned())
            .unwrap_or_default();
        let file = File::open(&path).map_err(fail)?;
        match rustix::system::finit_module(&file, c"", 0) {
            Ok(()) => {}
            // Built in, or loaded as another module's dependency.
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(fail(e.into())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "base v/ring.ko\nbase v/mmio.ko\nbase fs/overlay.ko\n\
                        net v/ring.ko\nnet n/virtio_net.ko\nblk -\n";

    #[test]
    fn only_the_base_group_and_the_named_groups_load_each_file_once() {
        let wanted = groups_named("console=ttyS0 berth.modules=net,blk quiet");
        assert_eq!(wanted, ["net", "blk"]);
        assert_eq!(
            modules_to_load(LIST, &wanted).unwrap(),
            ["v/ring.ko", "v/mmio.ko", "fs/overlay.ko", "n/virtio_net.ko"]
        );
        assert_eq!(
            modules_to_load(LIST, &[]).unwrap(),
            ["v/ring.ko", "v/mmio.ko", "fs/overlay.ko"]
        );
    }

    #[test]
    fn a_group_the_guest_lacks_is_named() {
        let err = modules_to_load(LIST, &["9p".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("\"9p\""), "{err}");
    }

    #[test]
    fn a_line_without_a_group_is_refused() {
        let err = modules_to_load("a.ko\n", &[]).unwrap_err();
        assert!(err.to_string().contains("not `GROUP PATH`"), "{err}");
    }
}
