//! The cgroup-facing commands: update, ps, events.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use berth_runtime::Runtime;
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};

use crate::commands::Args;

/// "512m", "1G", "1024" -> bytes (binary units, as runc's --memory takes).
pub fn parse_bytes(text: &str) -> Result<i64> {
    let t = text.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a size"))?;
    let mult: i64 = match unit
        .to_ascii_lowercase()
        .trim_end_matches('b')
        .trim_end_matches('i')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => bail!("{text:?}: unknown size unit {unit:?}"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("{text:?} is too large"))
}

/// A Go-style duration: "5s", "100ms", "1m", "2h".
pub fn parse_duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a duration"))?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("{text:?}: unknown duration unit {unit:?}"),
    };
    if secs <= 0.0 {
        bail!("duration {text:?} must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn number(p: &Args, flag: &str) -> Result<Option<Value>> {
    p.get(flag)
        .map(|v| {
            v.parse::<i64>()
                .map(Value::from)
                .map_err(|_| anyhow!("--{flag} {v:?} is not a number"))
        })
        .transpose()
}

/// The resources of `update`: --resources FILE (or - for stdin), with the
/// individual flags applied on top, as runc does.
pub fn resources_from_flags(p: &Args) -> Result<LinuxResources> {
    let mut doc: Value = match p.get("resources") {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            serde_json::from_str(&text).context("parsing resources from stdin")?
        }
        Some(file) => {
            let raw = std::fs::read(file).with_context(|| format!("reading {file}"))?;
            serde_json::from_slice(&raw).with_context(|| format!("parsing {file}"))?
        }
        None => json!({}),
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| anyhow!("resources must be a JSON object"))?;
    let mut set = |section: &str, key: &str, value: Option<Value>| {
        if let Some(v) = value {
            let entry = obj
                .entry(section)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(o) = entry.as_object_mut() {
                o.insert(key.to_owned(), v);
            }
        }
    };
    for (flag, key) in [
        ("memory", "limit"),
        ("memory-reservation", "reservation"),
        ("memory-swap", "swap"),
    ] {
        set(
            "memory",
            key,
            p.get(flag).map(parse_bytes).transpose()?.map(Value::from),
        );
    }
    for (flag, key) in [
        ("cpu-period", "period"),
        ("cpu-quota", "quota"),
        ("cpu-burst", "burst"),
        ("cpu-share", "shares"),
        ("cpu-rt-period", "realtimePeriod"),
        ("cpu-rt-runtime", "realtimeRuntime"),
        ("cpu-idle", "idle"),
    ] {
        set("cpu", key, number(p, flag)?);
    }
    set("cpu", "cpus", p.get("cpuset-cpus").map(Value::from));
    set("cpu", "mems", p.get("cpuset-mems").map(Value::from));
    set("pids", "limit", number(p, "pids-limit")?);
    set("blockIO", "weight", number(p, "blkio-weight")?);
    if p.get("l3-cache-schema").is_some() || p.get("mem-bw-schema").is_some() {
        bail!("Intel RDT is not supported by this version of berth");
    }
    serde_json::from_value(doc).context("invalid resources")
}

/// `ps`: the container's pids as JSON, or the lines of `ps` for them.
pub fn ps(rt: &Runtime, p: &Args) -> Result<()> {
    let Some((id, ps_args)) = p.positionals.split_first() else {
        bail!("ps: usage: berth ps [--format table|json] <container-id> [ps options]");
    };
    let pids = rt.pids(id)?;
    let mut out = std::io::stdout().lock();
    match p.get("format").unwrap_or("table") {
        // runc prints Go's encoding of an empty slice: null.
        "json" if pids.is_empty() => writeln!(out, "null")?,
        "json" => writeln!(out, "{}", serde_json::to_string(&pids)?)?,
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let output = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("running ps")?;
            if !output.status.success() {
                bail!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&output.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let column = header
                .split_whitespace()
                .position(|c| c == "PID")
                .ok_or_else(|| anyhow!("ps output has no PID column"))?;
            writeln!(out, "{header}")?;
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(column)
                    .and_then(|v| v.parse::<i32>().ok());
                if pid.is_some_and(|pid| pids.contains(&pid)) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        other => bail!("invalid --format {other:?}: table or json"),
    }
    Ok(())
}

/// `events`: one stats line with --stats, else a stream of stats every
/// --interval and OOM events as they happen.
pub fn events(rt: &Runtime, p: &Args) -> Result<()> {
    let id = match p.positionals.as_slice() {
        [id] => id,
        _ => bail!("events: usage: berth events [--stats] [--interval 5s] <container-id>"),
    };
    if p.is_set("stats") {
        println!("{}", serde_json::to_string(&rt.stats(id)?)?);
        return Ok(());
    }
    let interval = parse_duration(p.get("interval").unwrap_or("5s"))?;
    rt.events(id, interval, |event| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(event).unwrap_or_default()).is_ok()
            && out.flush().is_ok()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("2kb").unwrap(), 2048);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("12q").is_err());
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
