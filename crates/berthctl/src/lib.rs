//! berthctl: a crictl-like command-line client for any CRI v1 runtime
//! (berthd, containerd's CRI plugin, CRI-O) over a unix socket.
//!
//! `main.rs` only parses the command line and calls [`main`]; the commands
//! live in `cmd`, the wire in `client`, configs and JSON in `proto`, the
//! CRI log format in `logs`, crictl's tables and units in `output`.

pub mod cli;
pub mod client;
mod cmd;
pub mod logs;
pub mod output;
pub mod progress;
pub mod proto;
pub mod stream;

use std::time::Instant;

use clap::Parser;

/// Runs berthctl with the process's arguments; returns its exit code.
pub fn main() -> i32 {
    let started = Instant::now();
    // Output piped into `head` ends quietly, as with Go programs.
    // SAFETY: resetting a signal disposition to its default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("FATA[0000] starting the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // crictl dies through logrus.Fatal: "FATA[<seconds>] <error>".
            eprintln!("FATA[{:04}] {e:#}", started.elapsed().as_secs());
            1
        }
    }
}
