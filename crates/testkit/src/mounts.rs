//! Mounts, as this process sees them in /proc/self/mountinfo.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, filesystem type) of every mount this process sees.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((
                PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                fields.get(sep + 1)?.to_string(),
            ))
        })
        .collect()
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    // mountinfo has canonical paths; $TMPDIR may go through a symlink.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Lazily unmounts (MNT_DETACH) `mount_point`.
fn detach(mount_point: &Path) -> std::io::Result<()> {
    let c = CString::new(mount_point.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lazily unmounts everything at or below `dir` once, deepest first, and
/// returns what is still mounted there (e.g. when not root).
pub fn detach_mounts_under(dir: &Path) -> Vec<PathBuf> {
    for mount in mounts_under(dir) {
        let _ = detach(&mount);
    }
    mounts_under(dir)
}

/// Lazily unmounts everything at or below `dir`, deepest first, until
/// nothing is left (ten rounds at most); says what fails on stderr.
pub fn unmount_under(dir: &Path) {
    for _ in 0..10 {
        let found = mounts_under(dir);
        if found.is_empty() {
            return;
        }
        for mp in found {
            if let Err(e) = detach(&mp) {
                eprintln!("test cleanup: umount {}: {e}", mp.display());
            }
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        eprintln!(
            "test cleanup: mounts left under {}: {left:?}",
            dir.display()
        );
    }
}
