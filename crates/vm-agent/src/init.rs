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
    #[error("loading kernel module {path}: {source}")]
    Module { path: String, source: io::Error },
}

/// Mounts the guest's file systems and loads its modules; returns the
/// modules loaded.
pub fn setup() -> Result<Vec<String>, InitError> {
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
    load_modules(Path::new(MODULE_LIST))
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
