//! The interface files a container's usage is read from, kept open.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The files [`Manager::stats_with`](crate::Manager::stats_with) reads,
/// each opened at its first read and kept open: a later read is one
/// pread(2) of the open file ([`berth_common::kernel_file::reread`])
/// instead of a path walk through cgroupfs, an open, two reads and a close
/// per file, twenty files per container (kubelet asks for every
/// container's stats every few seconds, and a shim answers for its pod's).
/// Keep one per container, for the container's life: a cgroup's files do
/// not change while it exists.
#[derive(Default)]
pub struct StatsFiles {
    /// None: the file does not exist (the kernel lacks that counter).
    open: HashMap<PathBuf, Option<File>>,
    /// The names in a directory (hugetlb's per-size files).
    names: HashMap<PathBuf, Vec<String>>,
}

impl StatsFiles {
    fn file(&mut self, dir: &Path, name: &str) -> Option<&File> {
        let path = dir.join(name);
        self.open
            .entry(path)
            .or_insert_with_key(|path| File::open(path).ok())
            .as_ref()
    }

    /// `dir/name` now, trimmed.
    pub(crate) fn read(&mut self, dir: &Path, name: &str) -> Result<String> {
        let read = match self.file(dir, name) {
            Some(f) => berth_common::kernel_file::reread(f),
            None => Err(std::io::ErrorKind::NotFound.into()),
        };
        read.map(|s| s.trim().to_owned())
            .map_err(|source| Error::Read {
                path: dir.join(name),
                source,
            })
    }

    /// `dir/name` as "key value" lines.
    pub(crate) fn read_keyed(&mut self, dir: &Path, name: &str) -> Result<Vec<(String, u64)>> {
        Ok(crate::fs::parse_keyed(&self.read(dir, name)?))
    }

    pub(crate) fn exists(&mut self, dir: &Path, name: &str) -> bool {
        self.file(dir, name).is_some()
    }

    /// The names of the files in `dir`, listed once.
    pub(crate) fn names(&mut self, dir: &Path) -> Vec<String> {
        self.names
            .entry(dir.to_owned())
            .or_insert_with(|| {
                std::fs::read_dir(dir)
                    .map(|entries| {
                        entries
                            .flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .clone()
    }
}
