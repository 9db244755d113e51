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
        let line =
            berth_common::logrus::logrus_line(record.level(), &record.args().to_string(), false);
        // One write per line, so lines of concurrent writers do not mix.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Info and above; everything with `-debug`.
pub fn init(debug: bool) {
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(if debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    }
}
