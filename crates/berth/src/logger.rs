//! runc-compatible logging: logrus text or JSON lines to --log or stderr.
//! containerd reads the last `"level":"error"` line of a JSON log to report
//! why a runtime command failed; tools reading stderr look for
//! `level=error`.

use berth_common::logrus::logrus_line;
use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub struct Logger {
    file: Option<Mutex<File>>,
    format: Format,
    level: log::LevelFilter,
}

impl Logger {
    pub fn install(
        path: Option<&str>,
        format: Format,
        debug: bool,
    ) -> anyhow::Result<&'static Logger> {
        let file = match path {
            Some(p) if !p.is_empty() => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| anyhow::anyhow!("opening log file {p}: {e}"))?,
            )),
            _ => None,
        };
        let level = if debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Warn
        };
        let logger: &'static Logger = Box::leak(Box::new(Logger {
            file,
            format,
            level,
        }));
        let _ = log::set_logger(logger);
        log::set_max_level(level);
        Ok(logger)
    }

    /// Reports the error that ends the command, as runc does: a logrus
    /// line (`level=error`) in the log file, with the bare message on
    /// stderr; with no log file, the logrus line itself on stderr, in the
    /// chosen format. containerd reads the last error line of its
    /// `--log` file; go-runc and conmon read stderr.
    pub fn fatal(&self, msg: &str) {
        let line = self.line(log::Level::Error, msg);
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
                let _ = writeln!(std::io::stderr(), "{msg}");
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn line(&self, level: log::Level, msg: &str) -> String {
        logrus_line(level, msg, self.format == Format::Json)
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.line(record.level(), &record.args().to_string());
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// An error met before the logger exists (bad global flags): a logrus text
/// line on stderr, as runc prints it.
pub fn early_fatal(msg: &str) {
    let _ = std::io::stderr().write_all(logrus_line(log::Level::Error, msg, false).as_bytes());
}
