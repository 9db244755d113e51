//! Container logs in the CRI log format, read straight from the file the
//! runtime writes (ContainerStatus.log_path), as crictl does.
//!
//! Each line of the file is `<RFC3339Nano time> <stdout|stderr> <tags>
//! <content>`, where the first tag is `F` (the content ends a line) or `P`
//! (a partial line, continued by the next record of the same stream).
//! Partials are joined; stdout lines go to stdout and stderr lines to
//! stderr. Following (`-f`) polls the file, reopens it when it was rotated
//! (replaced by a new file at the same path) or starts over when it was
//! truncated, and stops once the container is no longer running and the
//! file is drained.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::DateTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One record (line) of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: &'a str,
    pub stream: Stream,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line of a CRI log file (without its newline).
pub fn parse_record(line: &[u8]) -> Result<Record<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let (ts, rest) = split_space(line).context("timestamp is not found")?;
    let timestamp = std::str::from_utf8(ts).context("timestamp is not UTF-8")?;
    DateTime::parse_from_rfc3339(timestamp)
        .with_context(|| format!("unexpected timestamp format {timestamp:?}"))?;
    let (stream, rest) = split_space(rest).context("stream type is not found")?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        other => bail!(
            "unexpected stream type {:?}",
            String::from_utf8_lossy(other)
        ),
    };
    // Content may be empty ("... stdout F" with no trailing space is seen
    // from some writers for an empty line).
    let (tags, content) = split_space(rest).unwrap_or((rest, &b""[..]));
    let first = tags.split(|&b| b == b':').next().unwrap_or_default();
    let partial = match first {
        b"P" => true,
        b"F" => false,
        other => bail!("unexpected log tag {:?}", String::from_utf8_lossy(other)),
    };
    Ok(Record {
        timestamp,
        stream,
        partial,
        content,
    })
}

fn split_space(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == b' ')?;
    Some((&b[..i], &b[i + 1..]))
}

/// A whole line of output: partial records joined, newline included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The time of its first record.
    pub timestamp: String,
    pub stream: Stream,
    pub content: Vec<u8>,
}

impl Line {
    /// Kubelet's `--timestamps` prefix: RFC3339 with nine fractional digits
    /// in the record's own offset.
    pub fn timestamp_prefix(&self) -> String {
        match DateTime::parse_from_rfc3339(&self.timestamp) {
            Ok(t) => {
                let zone = if t.offset().local_minus_utc() == 0 {
                    "Z".to_owned()
                } else {
                    t.format("%:z").to_string()
                };
                format!("{}{zone} ", t.format("%Y-%m-%dT%H:%M:%S%.9f"))
            }
            Err(_) => format!("{} ", self.timestamp),
        }
    }
}

/// Joins partial records into lines, per stream.
#[derive(Default)]
pub struct Assembler {
    pending: [Option<Line>; 2],
}

impl Assembler {
    fn slot(stream: Stream) -> usize {
        match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    /// Adds a record; returns the line it completes, if any.
    pub fn push(&mut self, r: &Record) -> Option<Line> {
        let slot = &mut self.pending[Self::slot(r.stream)];
        let line = slot.get_or_insert_with(|| Line {
            timestamp: r.timestamp.to_owned(),
            stream: r.stream,
            content: Vec::new(),
        });
        line.content.extend_from_slice(r.content);
        if r.partial {
            return None;
        }
        let mut line = slot.take().expect("just inserted");
        line.content.push(b'\n');
        Some(line)
    }

    /// Unfinished lines (partials never completed), oldest first.
    pub fn finish(&mut self) -> Vec<Line> {
        let mut left: Vec<Line> = self.pending.iter_mut().filter_map(Option::take).collect();
        left.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        left
    }
}

/// Splits `data` into lines, parses and joins them. Bad lines are reported
/// through `warn` and skipped, as kubelet does.
pub fn parse_lines(data: &[u8], asm: &mut Assembler, warn: &mut dyn FnMut(String)) -> Vec<Line> {
    let mut out = Vec::new();
    for raw in data.split(|&b| b == b'\n') {
        if raw.is_empty() {
            continue;
        }
        match parse_record(raw) {
            Ok(rec) => out.extend(asm.push(&rec)),
            Err(e) => warn(format!(
                "failed when parsing line in log file: {e:#}: {:?}",
                String::from_utf8_lossy(raw)
            )),
        }
    }
    out
}

/// What `logs` prints and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub follow: bool,
    /// Only the last N lines of what is in the file now; None for all.
    pub tail: Option<usize>,
    pub timestamps: bool,
}

/// Where lines go: stdout and stderr in the real command.
pub trait Sink {
    fn line(&mut self, line: &Line, timestamps: bool) -> Result<()>;
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The process's stdout and stderr.
pub struct StdSink;

impl Sink for StdSink {
    fn line(&mut self, line: &Line, timestamps: bool) -> Result<()> {
        let mut buf = Vec::with_capacity(line.content.len() + 40);
        if timestamps {
            buf.extend_from_slice(line.timestamp_prefix().as_bytes());
        }
        buf.extend_from_slice(&line.content);
        match line.stream {
            Stream::Stdout => std::io::stdout().lock().write_all(&buf)?,
            Stream::Stderr => std::io::stderr().lock().write_all(&buf)?,
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        std::io::stdout().flush()?;
        std::io::stderr().flush()?;
        Ok(())
    }
}

fn warn_stderr(msg: String) {
    eprintln!("WARN[0000] {msg}");
}

fn emit(sink: &mut dyn Sink, lines: &[Line], opts: &Options) -> Result<()> {
    for line in lines {
        sink.line(line, opts.timestamps)?;
    }
    sink.flush()
}

fn tail(mut lines: Vec<Line>, n: Option<usize>) -> Vec<Line> {
    if let Some(n) = n {
        if lines.len() > n {
            lines.drain(..lines.len() - n);
        }
    }
    lines
}

/// Prints the whole file (or its last lines) once.
pub fn print_file(path: &Path, opts: &Options, sink: &mut dyn Sink) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("open log file {}", path.display()))?;
    let mut asm = Assembler::default();
    let mut lines = parse_lines(&data, &mut asm, &mut warn_stderr);
    lines.extend(asm.finish());
    emit(sink, &tail(lines, opts.tail), opts)
}

/// An open log file and how far it was read.
struct Reader {
    file: File,
    dev_ino: (u64, u64),
    pos: u64,
    /// Bytes after the last newline, waiting for the rest of their line.
    carry: Vec<u8>,
}

impl Reader {
    fn open(path: &Path) -> std::io::Result<Reader> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(Reader {
            file,
            dev_ino: (meta.dev(), meta.ino()),
            pos: 0,
            carry: Vec::new(),
        })
    }

    /// Whole lines appended since the last call.
    fn read_new(&mut self) -> std::io::Result<Vec<u8>> {
        let len = self.file.metadata()?.len();
        if len < self.pos {
            // Truncated in place (copytruncate): start over.
            self.pos = 0;
            self.carry.clear();
        }
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(&buf);
        match data.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                self.carry = data.split_off(i + 1);
                Ok(data)
            }
            None => {
                self.carry = data;
                Ok(Vec::new())
            }
        }
    }

    /// Whether `path` now names another file than the one open.
    fn replaced(&self, path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(m) => (m.dev(), m.ino()) != self.dev_ino,
            Err(_) => false,
        }
    }
}

/// How often the file is polled for new data while following.
pub const POLL: Duration = Duration::from_millis(100);
/// How often the container's state is checked while the file is idle.
pub const STATE_CHECK: Duration = Duration::from_millis(1000);

/// Follows the log at `path`: prints what is there (or its last lines),
/// then what is appended, across rotations, until `running` says the
/// container stopped (and the file is drained).
pub async fn follow<F, Fut>(
    path: &Path,
    opts: &Options,
    sink: &mut dyn Sink,
    mut running: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let mut reader =
        Reader::open(path).with_context(|| format!("open log file {}", path.display()))?;
    let mut asm = Assembler::default();
    let first = reader.read_new()?;
    let lines = parse_lines(&first, &mut asm, &mut warn_stderr);
    emit(sink, &tail(lines, opts.tail), opts)?;

    // The first check comes at once: following an exited container just
    // prints its log.
    let mut last_check: Option<Instant> = None;
    let mut stopping = false;
    let mut replaced_since: Option<Instant> = None;
    loop {
        let data = reader.read_new()?;
        if !data.is_empty() {
            let lines = parse_lines(&data, &mut asm, &mut warn_stderr);
            emit(sink, &lines, opts)?;
            continue;
        }
        if reader.replaced(path) {
            // A writer may finish a write to the old file just after the
            // new one appears: switch once the drained old file stayed
            // quiet for a poll interval.
            let since = *replaced_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= POLL || stopping {
                match Reader::open(path) {
                    Ok(r) => {
                        if !reader.carry.is_empty() {
                            let mut rest = std::mem::take(&mut reader.carry);
                            rest.push(b'\n');
                            let lines = parse_lines(&rest, &mut asm, &mut warn_stderr);
                            emit(sink, &lines, opts)?;
                        }
                        reader = r;
                        replaced_since = None;
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).context(format!("reopen log file {}", path.display())),
                }
            }
        }
        if stopping {
            break;
        }
        if last_check.is_none_or(|t| t.elapsed() >= STATE_CHECK) {
            last_check = Some(Instant::now());
            if !running().await? {
                // One more pass picks up what was written before the exit.
                stopping = true;
                continue;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    if !reader.carry.is_empty() {
        let rest = std::mem::take(&mut reader.carry);
        let lines = parse_lines(&rest, &mut asm, &mut warn_stderr);
        emit(sink, &lines, opts)?;
    }
    let left = asm.finish();
    emit(sink, &left, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Default)]
    struct VecSink {
        out: Vec<u8>,
        err: Vec<u8>,
    }

    impl Sink for VecSink {
        fn line(&mut self, line: &Line, timestamps: bool) -> Result<()> {
            let buf = match line.stream {
                Stream::Stdout => &mut self.out,
                Stream::Stderr => &mut self.err,
            };
            if timestamps {
                buf.extend_from_slice(line.timestamp_prefix().as_bytes());
            }
            buf.extend_from_slice(&line.content);
            Ok(())
        }
    }

    const TS: &str = "2024-05-06T07:08:09.123456789Z";

    #[test]
    fn parses_records() {
        let line = format!("{TS} stdout F hello world\n");
        let r = parse_record(line.as_bytes()).unwrap();
        assert_eq!(
            r,
            Record {
                timestamp: TS,
                stream: Stream::Stdout,
                partial: false,
                content: b"hello world"
            }
        );
        let r = parse_record(b"2024-05-06T07:08:09+02:00 stderr P part").unwrap();
        assert_eq!(r.stream, Stream::Stderr);
        assert!(r.partial);
        assert_eq!(r.content, b"part");
        // Extra tags after ':' are allowed; content keeps its own spaces.
        let line = format!("{TS} stdout F:x  two spaces");
        assert_eq!(
            parse_record(line.as_bytes()).unwrap().content,
            b" two spaces"
        );
        // An empty line.
        let line = format!("{TS} stdout F");
        assert_eq!(parse_record(line.as_bytes()).unwrap().content, b"");
        let line = format!("{TS} stdout F ");
        assert_eq!(parse_record(line.as_bytes()).unwrap().content, b"");
    }

    #[test]
    fn rejects_bad_records() {
        assert!(parse_record(b"").is_err());
        assert!(parse_record(b"not-a-time stdout F x").is_err());
        assert!(parse_record(format!("{TS} stdin F x").as_bytes()).is_err());
        assert!(parse_record(format!("{TS} stdout X x").as_bytes()).is_err());
        assert!(parse_record(TS.as_bytes()).is_err());
    }

    #[test]
    fn joins_partials_per_stream() {
        let data = format!(
            "{TS} stdout P abc\n{TS} stderr P err1-\n{TS} stdout P def\n\
             2024-05-06T07:08:10Z stdout F ghi\n{TS} stderr F err2\n{TS} stdout F next\n"
        );
        let mut asm = Assembler::default();
        let mut warnings = Vec::new();
        let lines = parse_lines(data.as_bytes(), &mut asm, &mut |w| warnings.push(w));
        assert!(warnings.is_empty());
        let got: Vec<(Stream, String, String)> = lines
            .iter()
            .map(|l| {
                (
                    l.stream,
                    l.timestamp.clone(),
                    String::from_utf8(l.content.clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, TS.to_owned(), "abcdefghi\n".to_owned()),
                (Stream::Stderr, TS.to_owned(), "err1-err2\n".to_owned()),
                (Stream::Stdout, TS.to_owned(), "next\n".to_owned()),
            ]
        );
        assert!(asm.finish().is_empty());
    }

    #[test]
    fn skips_bad_lines_with_a_warning() {
        let data = format!("garbage\n{TS} stdout F ok\n");
        let mut asm = Assembler::default();
        let mut warnings = Vec::new();
        let lines = parse_lines(data.as_bytes(), &mut asm, &mut |w| warnings.push(w));
        assert_eq!(lines.len(), 1);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn timestamps_are_fixed_width() {
        let line = Line {
            timestamp: "2024-05-06T07:08:09.5+02:00".into(),
            stream: Stream::Stdout,
            content: b"x\n".to_vec(),
        };
        assert_eq!(
            line.timestamp_prefix(),
            "2024-05-06T07:08:09.500000000+02:00 "
        );
        let line = Line {
            timestamp: "2024-05-06T07:08:09Z".into(),
            ..line
        };
        assert_eq!(line.timestamp_prefix(), "2024-05-06T07:08:09.000000000Z ");
    }

    /// A scratch directory removed when the test ends, passed or not.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("berthctl-logs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    #[test]
    fn prints_file_with_tail_and_streams() {
        let dir = scratch("print");
        let path = dir.0.join("c.log");
        std::fs::write(
            &path,
            format!(
                "{TS} stdout F one\n{TS} stderr F two\n{TS} stdout P thr\n{TS} stdout F ee\n{TS} stdout P unfinished"
            ),
        )
        .unwrap();
        let mut sink = VecSink::default();
        print_file(&path, &Options::default(), &mut sink).unwrap();
        assert_eq!(String::from_utf8_lossy(&sink.out), "one\nthree\nunfinished");
        assert_eq!(String::from_utf8_lossy(&sink.err), "two\n");

        let mut sink = VecSink::default();
        let opts = Options {
            tail: Some(2),
            timestamps: true,
            ..Default::default()
        };
        print_file(&path, &opts, &mut sink).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&sink.out),
            "2024-05-06T07:08:09.123456789Z three\n2024-05-06T07:08:09.123456789Z unfinished"
        );
        assert!(sink.err.is_empty());
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn follows_appends_rotation_and_stops_when_the_container_exits() {
        let dir = scratch("follow");
        let path = dir.0.join("c.log");
        append(&path, &format!("{TS} stdout F old1\n{TS} stdout F old2\n"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let checks = Rc::new(Cell::new(0u32));
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let p = writer_path;
            std::thread::sleep(Duration::from_millis(300));
            append(&p, &format!("{TS} stdout F half-"));
            std::thread::sleep(Duration::from_millis(300));
            append(&p, &format!("line\n{TS} stderr F err\n"));
            std::thread::sleep(Duration::from_millis(300));
            // Rotate: rename, then a new file at the same path.
            append(&p, &format!("{TS} stdout F last-in-old\n"));
            std::fs::rename(&p, p.with_extension("log.1")).unwrap();
            append(&p, &format!("{TS} stdout F in-new\n"));
        });
        let mut sink = VecSink::default();
        let opts = Options {
            follow: true,
            tail: Some(1),
            timestamps: false,
        };
        let c = checks.clone();
        rt.block_on(follow(&path, &opts, &mut sink, move || {
            let c = c.clone();
            async move {
                c.set(c.get() + 1);
                // Running for the first two checks (about 2 s).
                Ok(c.get() <= 2)
            }
        }))
        .unwrap();
        writer.join().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&sink.out),
            "old2\nhalf-line\nlast-in-old\nin-new\n"
        );
        assert_eq!(String::from_utf8_lossy(&sink.err), "err\n");
        assert_eq!(checks.get(), 3);
    }

    #[test]
    fn follow_starts_over_after_truncation() {
        let dir = scratch("truncate");
        let path = dir.0.join("c.log");
        append(&path, &format!("{TS} stdout F before-truncate\n"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(&p, format!("{TS} stdout F a\n")).unwrap();
        });
        let mut sink = VecSink::default();
        let mut n = 0;
        rt.block_on(follow(
            &path,
            &Options {
                follow: true,
                ..Default::default()
            },
            &mut sink,
            move || {
                n += 1;
                let running = n < 2;
                async move { Ok(running) }
            },
        ))
        .unwrap();
        writer.join().unwrap();
        assert_eq!(String::from_utf8_lossy(&sink.out), "before-truncate\na\n");
    }
}
