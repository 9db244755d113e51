//! The CRI container log format kubelet reads:
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <message>\n`, a line longer
//! than the maximum split into partial (P) lines, as containerd writes it.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::attach::Tap;
use tokio::io::AsyncReadExt;

/// containerd's limit on one log line before it is split.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A log file shared by a container's streams; reopened for rotation.
pub struct CriLog {
    path: PathBuf,
    file: Mutex<File>,
}

/// Opens the log for appending: 0640 as the kubelet's convention wants (it
/// reads logs as root), and never through a symlink planted at its name.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

pub use berth_common::time::rfc3339_nano;

impl CriLog {
    pub fn open(path: &Path) -> std::io::Result<CriLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(CriLog {
            path: path.to_owned(),
            file: Mutex::new(open_append(path)?),
        })
    }

    /// Opens the path again (after the file was rotated away).
    pub fn reopen(&self) -> std::io::Result<()> {
        let f = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = f;
        Ok(())
    }

    /// Writes one record, stamped now.
    pub fn write_record(&self, stream: Stream, partial: bool, msg: &[u8]) {
        self.write_record_at(SystemTime::now(), stream, partial, msg)
    }

    pub fn write_record_at(&self, t: SystemTime, stream: Stream, partial: bool, msg: &[u8]) {
        let mut line = Vec::with_capacity(msg.len() + 48);
        line.extend_from_slice(rfc3339_nano(t).as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.name().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(msg);
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&line) {
            log::warn!("writing {}: {e}", self.path.display());
        }
    }
}

/// Splits a byte stream into CRI records: each newline ends a full record;
/// `max` bytes without one make a partial record; what is left at EOF is
/// a partial record (the stream did not end its line).
#[derive(Default)]
pub struct Splitter {
    buf: Vec<u8>,
}

impl Splitter {
    pub fn feed(&mut self, data: &[u8], max: usize, mut emit: impl FnMut(bool, &[u8])) {
        for &b in data {
            if b == b'\n' {
                emit(false, &self.buf);
                self.buf.clear();
            } else {
                // Split only when the line really goes on past the maximum:
                // exactly `max` bytes and a newline is one full record.
                if self.buf.len() == max {
                    emit(true, &self.buf);
                    self.buf.clear();
                }
                self.buf.push(b);
            }
        }
    }

    pub fn finish(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        if !self.buf.is_empty() {
            emit(true, &self.buf);
            self.buf.clear();
        }
    }
}

/// Copies a process's output pipe into the log (if any) and to the attach
/// sessions until EOF.
pub async fn pump(fd: OwnedFd, stream: Stream, log: Option<Arc<CriLog>>, tap: Arc<Tap>) {
    let _ = rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK);
    let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd) else {
        return;
    };
    let mut split = Splitter::default();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Some(log) = &log {
                    split.feed(&buf[..n], MAX_LINE, |partial, msg| {
                        log.write_record(stream, partial, msg)
                    });
                }
                tap.send(&buf[..n]);
            }
            // A terminal's master reports EIO once the slave side is gone.
            Err(_) => break,
        }
    }
    if let Some(log) = &log {
        split.finish(|partial, msg| log.write_record(stream, partial, msg));
    }
    tap.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting() {
        let mut out = Vec::new();
        let mut s = Splitter::default();
        s.feed(b"ab\ncdefg", 4, |p, m| out.push((p, m.to_vec())));
        s.feed(b"h\n\nxy", 4, |p, m| out.push((p, m.to_vec())));
        s.finish(|p, m| out.push((p, m.to_vec())));
        assert_eq!(
            out,
            vec![
                (false, b"ab".to_vec()),
                (true, b"cdef".to_vec()),
                (false, b"gh".to_vec()),
                (false, b"".to_vec()),
                (true, b"xy".to_vec())
            ]
        );
        let mut out = Vec::new();
        s.feed(
            b"abcd
",
            4,
            |p, m| out.push((p, m.to_vec())),
        );
        assert_eq!(out, vec![(false, b"abcd".to_vec())]);
    }
}
