//! The content store: blobs addressed by digest under `blobs/sha256/<hex>`.
//! A blob is written to `ingest/`, verified (size and digest) and synced,
//! then renamed into place: a half-written blob is never visible, and a
//! crash leaves at most a stale ingest file, removed on open.
//!
//! Blobs are root-only: the directories are 0700 and blob files 0600
//! (layers may hold secrets and setuid binaries).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, HashWriter};
use crate::error::{io_path, Context};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<ContentStore> {
        let store = ContentStore {
            root: root.to_owned(),
        };
        for dir in [root.to_owned(), root.join("blobs"), store.blob_dir()] {
            crate::store::private_dir(&dir)?;
        }
        // Leftovers of writes interrupted by a crash.
        let _ = fs::remove_dir_all(store.ingest_dir());
        crate::store::private_dir(&store.ingest_dir())?;
        Ok(store)
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blob_dir().join(d.hex())
    }

    pub fn exists(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        fs::read(self.path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::BlobNotFound(d.to_string()),
            _ => Error::Io {
                context: format!("reading blob {d}"),
                source: e,
            },
        })
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        File::open(self.path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::BlobNotFound(d.to_string()),
            _ => Error::Io {
                context: format!("opening blob {d}"),
                source: e,
            },
        })
    }

    /// A writer for a blob expected to have `expected` digest (and size).
    pub fn writer(&self, expected: &Digest, expected_size: Option<u64>) -> Result<BlobWriter> {
        let seq = INGEST_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp =
            self.ingest_dir()
                .join(format!("{}-{}-{seq}", expected.hex(), std::process::id()));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
                .ctx(io_path(&tmp))?
        };
        Ok(BlobWriter {
            inner: Some(HashWriter::new(file)),
            tmp,
            dest: self.path(expected),
            dir: self.blob_dir(),
            expected: expected.clone(),
            expected_size,
        })
    }

    /// Stores `data` (a manifest or config) and returns its digest.
    pub fn write_bytes(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        if !self.exists(&digest) {
            let mut w = self.writer(&digest, Some(data.len() as u64))?;
            w.write_all(data).ctx(|| format!("writing blob {digest}"))?;
            w.commit()?;
        }
        Ok(digest)
    }

    pub fn delete(&self, d: &Digest) -> Result<()> {
        match fs::remove_file(self.path(d)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx(|| format!("removing blob {d}")),
        }
    }

    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.blob_dir())
            .ctx(io_path(&self.blob_dir()))?
            .flatten()
        {
            if let Some(name) = e.file_name().to_str() {
                if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Bytes and files used by the blobs.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let mut bytes = 0;
        let mut files = 0;
        for e in fs::read_dir(self.blob_dir())
            .ctx(io_path(&self.blob_dir()))?
            .flatten()
        {
            if let Ok(m) = e.metadata() {
                bytes += m.len();
                files += 1;
            }
        }
        Ok((bytes, files))
    }
}

/// An in-progress blob write; dropped without commit, it leaves nothing.
pub struct BlobWriter {
    inner: Option<HashWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    expected: Digest,
    expected_size: Option<u64>,
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.inner.as_ref().map_or(0, |w| w.count)
    }

    /// Verifies size and digest, syncs and publishes the blob. On failure
    /// the partial file is removed.
    pub fn commit(mut self) -> Result<()> {
        let result = self.publish();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result
    }

    fn publish(&mut self) -> Result<()> {
        let inner = self.inner.take().expect("commit once");
        let count = inner.count;
        let (file, digest) = inner.finish();
        if let Some(size) = self.expected_size {
            if size != count {
                return Err(Error::SizeMismatch {
                    digest: self.expected.to_string(),
                    expected_size: size,
                    actual_size: count,
                });
            }
        }
        if digest != self.expected {
            return Err(Error::DigestMismatch {
                expected: self.expected.to_string(),
                actual: digest.to_string(),
            });
        }
        file.sync_all().ctx(|| format!("syncing blob {digest}"))?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).ctx(|| format!("publishing blob {digest}"))?;
        sync_dir(&self.dir).ctx(io_path(&self.dir))?;
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.as_mut().expect("not committed").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_atomic_writes() {
        let dir = std::env::temp_dir().join(format!("berth-content-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = ContentStore::open(&dir).unwrap();
        let d = store.write_bytes(b"hello").unwrap();
        assert_eq!(store.read(&d).unwrap(), b"hello");
        // Wrong content: refused, nothing published, nothing left in ingest.
        let other = Digest::of(b"other");
        let mut w = store.writer(&other, Some(5)).unwrap();
        w.write_all(b"wrong").unwrap();
        assert!(matches!(w.commit(), Err(Error::DigestMismatch { .. })));
        assert!(!store.exists(&other));
        let mut w = store.writer(&other, Some(9)).unwrap();
        w.write_all(b"other").unwrap();
        assert!(matches!(w.commit(), Err(Error::SizeMismatch { .. })));
        // An abandoned write leaves nothing.
        let w = store.writer(&other, None).unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.join("ingest")).unwrap().count(), 0);
        assert_eq!(store.list().unwrap(), vec![d]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
