//! Preconditions: they fail loudly, never skip.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::mounts::mounts;

/// Panics unless this process runs as root (the tests drive real
/// containers, daemons and cgroups).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests drive real containers, daemons and cgroups on the host and must run as \
         root (euid is {euid}); run them with `sudo -E cargo test ...`"
    );
}

/// The full path of `tool` in PATH (or in `extra` locations), if any.
pub fn find_tool(tool: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Panics with one message naming every missing tool: (tool, other
/// locations to look in, the Debian package that has it).
pub fn require_tools(tools: &[(&str, &[&str], &str)]) {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, extra, _)| find_tool(tool, extra).is_none())
        .map(|(tool, _, package)| format!("`{tool}` (Debian package {package})"))
        .collect();
    assert!(
        missing.is_empty(),
        "required tool(s) missing, install them to run these tests: {}",
        missing.join(", ")
    );
}

/// /bin/busybox must exist and be statically linked: it is the whole image.
pub fn require_static_busybox() -> PathBuf {
    let path = PathBuf::from("/bin/busybox");
    let mut data = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| {
            panic!(
                "{} is required (Debian package busybox-static): {e}",
                path.display()
            )
        });
    assert!(
        data.len() > 64 && &data[..4] == b"\x7fELF" && data[4] == 2 && data[5] == 1,
        "{} is not a little-endian 64-bit ELF executable ({} bytes, starting {:02x?}; mounts over it: {:?})",
        path.display(),
        data.len(),
        &data[..data.len().min(16)],
        mounts()
            .into_iter()
            .filter(|(m, _)| ["/bin", "/usr", "/usr/bin", "/bin/busybox", "/usr/bin/busybox"]
                .iter()
                .any(|p| m == Path::new(p)))
            .collect::<Vec<_>>()
    );
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let has_interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= data.len() && u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) == 3
        // PT_INTERP
    });
    assert!(
        !has_interp,
        "{} is dynamically linked; the test image needs a static one (Debian package busybox-static)",
        path.display()
    );
    path
}
