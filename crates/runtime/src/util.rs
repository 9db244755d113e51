//! Small helpers: time formatting, atomic file writes, /proc reading.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC time with nanoseconds (`2006-01-02T15:04:05.999999999Z`),
/// the form runc and containerd print.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, time) = civil_from_unix(d.as_secs() as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        date.0,
        date.1,
        date.2,
        time.0,
        time.1,
        time.2,
        d.subsec_nanos()
    )
}

/// One logrus line, as runc and containerd's shims write them: text
/// (`time="..." level=warning msg="..."`) or JSON.
pub fn logrus_line(level: log::Level, msg: &str, json: bool) -> String {
    let level = match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    };
    let time = rfc3339(SystemTime::now());
    let msg = serde_json::to_string(msg).unwrap_or_default();
    if json {
        format!("{{\"level\":\"{level}\",\"msg\":{msg},\"time\":\"{time}\"}}\n")
    } else {
        format!("time=\"{time}\" level={level} msg={msg}\n")
    }
}

/// RFC 3339 UTC time with whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, time) = civil_from_unix(d.as_secs() as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        date.0, date.1, date.2, time.0, time.1, time.2
    )
}

/// (year, month, day), (hour, minute, second) for a Unix time, after
/// Howard Hinnant's days-from-civil algorithm.
fn civil_from_unix(secs: i64) -> ((i64, u32, u32), (u32, u32, u32)) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    ((y, m, d), (rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Writes `data` to `path` through a temporary file and a rename, so readers
/// never see a partial file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// State letter and start time (clock ticks since boot) of a process, from
/// /proc/<pid>/stat, or None if it does not exist.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come ppid(4) ... starttime(22): 18 more fields.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Binds a unix socket that is root-only from the moment it exists at
/// `path` (whoever reaches a runtime's socket runs containers as root): it
/// is bound inside a fresh 0700 directory beside `path`, made 0600, then
/// renamed into place, so the umask's permissions are never visible there.
pub fn bind_unix_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let private = dir.join(format!(".bind.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let inner = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_times() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn reads_own_stat() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!("RSD".contains(state), "{state}");
        assert!(start > 0);
    }
}
