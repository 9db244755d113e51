//! Small helpers: atomic file writes, /proc reading.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to `path` through a temporary file and a rename, so readers
/// never see a partial file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let result = write_file(&tmp, data, mode).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` with `mode` (or truncates it) and writes `data` to it.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?
        .write_all(data)
}

/// State letter and start time (clock ticks since boot) of a process, from
/// /proc/<pid>/stat, or None if it does not exist.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = berth_common::kernel_file::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come ppid(4) ... starttime(22): 18 more fields.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_stat() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!("RSD".contains(state), "{state}");
        assert!(start > 0);
    }
}
