//! The shim's log: logrus text lines on stderr, which is the bundle's `log`
//! file (berthd) or FIFO (containerd copies it into its own log), as
//! containerd's shims write them.

use std::io::Write;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let time = berth_runtime::util::rfc3339_nano(std::time::SystemTime::now());
        let msg = format!("{}", record.args());
        // One write per line, so lines of concurrent writers do not mix.
        let line = format!("time={time:?} level={level} msg={msg:?}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Warnings and errors; everything with `-debug`.
pub fn init(debug: bool) {
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(if debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    }
}
