//! runc-compatible logging: logrus text or JSON lines to --log or stderr.
//! containerd reads the last `"level":"error"` line of a JSON log to report
//! why a runtime command failed.

use berth_runtime::util::logrus_line;
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

    /// Records a fatal error: in the log file (containerd reads the last
    /// error line from it) and, plainly, on stderr.
    pub fn fatal(&self, msg: &str) {
        if let Some(f) = &self.file {
            let line = self.line(log::Level::Error, msg);
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
        let _ = writeln!(std::io::stderr(), "berth: {msg}");
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
        match &self.file {
            Some(f) => {
                let line = self.line(record.level(), &record.args().to_string());
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let plain = format!(
                    "berth: {}: {}\n",
                    record.level().as_str().to_lowercase(),
                    record.args()
                );
                let _ = std::io::stderr().write_all(plain.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}
