//! crictl's presentation: aligned tables (Go's tabwriter with crictl's
//! settings), human durations and sizes (docker's go-units), truncated
//! ids, and times.

use std::io::Write;

use chrono::{DateTime, Local, TimeZone, Utc};

/// Ids are shown truncated to this many characters unless `--no-trunc`.
pub const TRUNCATED_ID_LEN: usize = 13;

/// A table laid out as Go's `tabwriter.NewWriter(w, minwidth, 1, padding,
/// ' ', 0)` does: every cell but a row's last is padded to the widest cell
/// of its column plus `padding`, and at least `min_width`.
pub struct Table {
    rows: Vec<Vec<String>>,
    min_width: usize,
    padding: usize,
}

impl Default for Table {
    fn default() -> Self {
        Table::new(20, 3)
    }
}

impl Table {
    pub fn new(min_width: usize, padding: usize) -> Table {
        Table {
            rows: Vec::new(),
            min_width,
            padding,
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in &self.rows {
            // The last cell of a row is not tab-terminated: not aligned.
            for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
                widths[i] = widths[i].max(cell.chars().count() + self.padding);
            }
        }
        for w in &mut widths {
            *w = (*w).max(self.min_width);
        }
        let mut out = String::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                out.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(self.render().as_bytes());
        let _ = stdout.flush();
    }
}

/// `id` without `prefix`, cut to [`TRUNCATED_ID_LEN`] characters.
pub fn truncate_id(id: &str, prefix: &str) -> String {
    let id = id.strip_prefix(prefix).unwrap_or(id);
    id.chars().take(TRUNCATED_ID_LEN).collect()
}

/// go-units' HumanDuration.
pub fn human_duration(d: std::time::Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 1 {
        return "Less than a second".to_owned();
    }
    if seconds == 1 {
        return "1 second".to_owned();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = seconds / 60;
    if minutes == 1 {
        return "About a minute".to_owned();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if hours == 1 {
        return "About an hour".to_owned();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", seconds / 3600 / 24 / 365)
}

/// "<human duration> ago" for a Unix time in nanoseconds.
pub fn ago(unix_nanos: i64) -> String {
    let now = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let d = std::time::Duration::from_nanos(now.saturating_sub(unix_nanos).max(0) as u64);
    format!("{} ago", human_duration(d))
}

/// Go's `%.<precision>g` for the magnitudes go-units produces (< 1000).
fn format_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let digits = value.abs().log10().floor() as i64 + 1;
    let decimals = (precision as i64 - digits).max(0) as usize;
    let s = format!("{value:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// go-units' HumanSizeWithPrecision: decimal (1000) units.
pub fn human_size_with_precision(size: f64, precision: usize) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = size;
    let mut i = 0;
    while size >= 1000.0 && i < UNITS.len() - 1 {
        size /= 1000.0;
        i += 1;
    }
    format!("{}{}", format_g(size, precision), UNITS[i])
}

/// go-units' HumanSize (precision 4).
pub fn human_size(size: f64) -> String {
    human_size_with_precision(size, 4)
}

fn local(unix_nanos: i64) -> DateTime<Local> {
    Local.timestamp_nanos(unix_nanos)
}

fn trimmed_fraction(nanos: u32) -> String {
    if nanos == 0 {
        return String::new();
    }
    let s = format!(".{nanos:09}");
    s.trim_end_matches('0').to_owned()
}

fn zone_suffix(t: &DateTime<Local>, utc_name: &str) -> String {
    let offset = t.offset().local_minus_utc();
    if offset == 0 {
        utc_name.to_owned()
    } else {
        t.format("%:z").to_string()
    }
}

/// Go's `time.Unix(0, ns).Format(time.RFC3339Nano)` in local time.
pub fn rfc3339_nano(unix_nanos: i64) -> String {
    let t = local(unix_nanos);
    format!(
        "{}{}{}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        trimmed_fraction(t.timestamp_subsec_nanos()),
        zone_suffix(&t, "Z")
    )
}

/// Go's `time.Unix(0, ns).String()` in local time, e.g.
/// "2024-01-02 15:04:05.5 +0000 UTC".
pub fn go_time_string(unix_nanos: i64) -> String {
    let t = local(unix_nanos);
    let offset = t.format("%z").to_string();
    let name = if t.offset().local_minus_utc() == 0 {
        "UTC".to_owned()
    } else {
        offset.clone()
    };
    format!(
        "{}{} {offset} {name}",
        t.format("%Y-%m-%d %H:%M:%S"),
        trimmed_fraction(t.timestamp_subsec_nanos())
    )
}

/// Whether `s` is a digest (`algorithm:hex`) as go-digest parses it.
pub fn is_digest(s: &str) -> bool {
    match s.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        Some(("sha384", hex)) => hex.len() == 96 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        Some(("sha512", hex)) => hex.len() == 128 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    }
}

/// Map keys in sorted order (crictl's getSortedKeys).
pub fn sorted<V>(map: &std::collections::HashMap<String, V>) -> Vec<(&String, &V)> {
    let mut v: Vec<_> = map.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn table_matches_go_tabwriter() {
        let mut t = Table::default();
        t.row(["POD ID", "CREATED", "STATE"]);
        t.row(["0123456789abc", "2 seconds ago", "Ready"]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], format!("{:<20}{:<20}STATE", "POD ID", "CREATED"));
        assert_eq!(
            lines[1],
            format!("{:<20}{:<20}Ready", "0123456789abc", "2 seconds ago")
        );
        let mut t = Table::default();
        t.row(["IMAGE", "TAG"]);
        t.row(["localhost/a/very/long/image/name", "latest"]);
        let out = t.render();
        assert!(out.starts_with(&format!("IMAGE{}TAG\n", " ".repeat(32 + 3 - 5))));
    }

    #[test]
    fn durations_like_go_units() {
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_secs(59)), "59 seconds");
        assert_eq!(human_duration(Duration::from_secs(61)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 minutes");
        assert_eq!(human_duration(Duration::from_secs(3600)), "About an hour");
        assert_eq!(human_duration(Duration::from_secs(5 * 3600)), "5 hours");
        assert_eq!(human_duration(Duration::from_secs(3 * 86400)), "3 days");
        assert_eq!(human_duration(Duration::from_secs(20 * 86400)), "2 weeks");
        assert_eq!(human_duration(Duration::from_secs(100 * 86400)), "3 months");
        assert_eq!(human_duration(Duration::from_secs(800 * 86400)), "2 years");
    }

    #[test]
    fn sizes_like_go_units() {
        assert_eq!(human_size_with_precision(0.0, 3), "0B");
        assert_eq!(human_size_with_precision(999.0, 3), "999B");
        assert_eq!(human_size_with_precision(1_234_567.0, 3), "1.23MB");
        assert_eq!(human_size_with_precision(12_345_678.0, 3), "12.3MB");
        assert_eq!(human_size_with_precision(4_200_000.0, 3), "4.2MB");
        assert_eq!(human_size(123_456.0), "123.5kB");
        assert_eq!(human_size(2_000_000_000.0), "2GB");
    }

    #[test]
    fn ids_and_digests() {
        assert_eq!(truncate_id("0123456789abcdef", ""), "0123456789abc");
        assert_eq!(
            truncate_id("sha256:0123456789abcdef", "sha256:"),
            "0123456789abc"
        );
        assert_eq!(truncate_id("short", ""), "short");
        assert!(is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_digest("sha256:abc"));
        assert!(!is_digest("busybox:latest"));
    }

    #[test]
    fn times_like_go() {
        // Only the shape: the local zone is the machine's.
        let s = rfc3339_nano(1_700_000_000_500_000_000);
        assert!(s.contains("T") && s.contains(".5"), "{s}");
        assert!(!rfc3339_nano(1_700_000_000_000_000_000).contains('.'));
        let g = go_time_string(1_700_000_000_250_000_000);
        assert!(g.contains(".25 "), "{g}");
    }
}
