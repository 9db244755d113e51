//! Times as runc, containerd and the CRI log format print them, in UTC,
//! without a calendar crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Go's `time.RFC3339Nano` in UTC, the CRI log line's timestamp: the
/// fraction without trailing zeros, none at all on a whole second.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = whole_seconds(d.as_secs() as i64);
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// RFC 3339 UTC time with all nine fraction digits
/// (`2006-01-02T15:04:05.000000005Z`), as berth's state files carry it.
pub fn rfc3339_nano_padded(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.{:09}Z",
        whole_seconds(d.as_secs() as i64),
        d.subsec_nanos()
    )
}

/// RFC 3339 UTC time with whole seconds, as logrus prints it.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    whole_seconds(d.as_secs() as i64) + "Z"
}

/// `YYYY-MM-DDTHH:MM:SS` for a Unix time.
fn whole_seconds(secs: i64) -> String {
    let (date, time) = civil_from_unix(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_times() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339_nano_padded(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn go_rfc3339_nano() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.12Z");
        assert_eq!(
            rfc3339_nano(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339_nano(UNIX_EPOCH + Duration::new(0, 5)),
            "1970-01-01T00:00:00.000000005Z"
        );
    }
}
