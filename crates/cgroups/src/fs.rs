//! Reading and writing cgroupfs interface files.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `value` to `dir/file` (one write, as cgroupfs expects).
pub fn write(dir: &Path, file: &str, value: impl AsRef<str>) -> Result<()> {
    let path = dir.join(file);
    let value = value.as_ref();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| Error::Write {
            file: path,
            value: value.to_owned(),
            source,
        })
}

/// An interface file opened at its first write and kept open for the next
/// ones, each a separate write(2) the kernel parses on its own
/// (devices.allow takes one rule per write).
pub struct RuleWriter {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl RuleWriter {
    pub fn new(dir: &Path, file: &str) -> RuleWriter {
        RuleWriter {
            path: dir.join(file),
            file: None,
        }
    }

    pub fn write(&mut self, value: &str) -> Result<()> {
        let written = match &mut self.file {
            Some(f) => f.write(value.as_bytes()),
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .and_then(|f| self.file.insert(f).write(value.as_bytes())),
        };
        let source = match written {
            Ok(n) if n == value.len() => return Ok(()),
            Ok(_) => std::io::Error::new(std::io::ErrorKind::WriteZero, "short write"),
            Err(e) => e,
        };
        Err(Error::Write {
            file: self.path.clone(),
            value: value.to_owned(),
            source,
        })
    }
}

/// Reads `dir/file`, trimmed.
pub fn read(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    berth_common::kernel_file::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| Error::Read { path, source })
}

pub fn exists(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

/// Reads a single number; "max" reads as None.
pub fn read_u64(dir: &Path, file: &str) -> Result<Option<u64>> {
    let text = read(dir, file)?;
    if text == "max" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| Error::Read {
        path: dir.join(file),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        ),
    })
}

/// Parses "key value" lines (memory.stat, cpu.stat, memory.events).
pub fn read_keyed(dir: &Path, file: &str) -> Result<Vec<(String, u64)>> {
    Ok(parse_keyed(&read(dir, file)?))
}

/// "key value" lines; others are skipped.
pub fn parse_keyed(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_owned(), v))
        })
        .collect()
}

pub fn keyed(list: &[(String, u64)], key: &str) -> Option<u64> {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}
