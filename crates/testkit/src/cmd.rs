//! Running client commands (ctr, podman, crictl-like CLIs) with a deadline.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Timeouts of client commands: quick queries, and runs or imports.
pub const QUICK: Duration = Duration::from_secs(30);
pub const SLOW: Duration = Duration::from_secs(180);

/// What a finished (or timed-out) command did.
pub struct Outcome {
    pub cmdline: String,
    /// The exit code; None if killed by a signal or timed out.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn describe(&self) -> String {
        let status = if self.timed_out {
            "TIMED OUT (killed)".to_owned()
        } else {
            match self.code {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_owned(),
            }
        };
        format!(
            "`{}`: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// `cmd` as one line, words with spaces (or none) quoted.
fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let s = a.to_string_lossy();
            if s.contains(' ') || s.is_empty() {
                format!("'{s}'")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` (stdin /dev/null) with a deadline. stdout and stderr go to
/// files in `scratch` rather than pipes, so a daemon the command leaves
/// behind (shim, conmon) can never make us wait for EOF.
pub fn run_in(scratch: &Path, cmd: &mut Command, timeout: Duration) -> Outcome {
    let n = crate::names::next();
    std::fs::create_dir_all(scratch).expect("creating the scratch dir");
    let out_path = scratch.join(format!("cmd-{n}.out"));
    let err_path = scratch.join(format!("cmd-{n}.err"));
    let line = cmdline(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("waiting for a killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let outcome = Outcome {
        cmdline: line,
        code: if timed_out { None } else { status.code() },
        timed_out,
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    outcome
}

/// Runs `cmd` and panics unless it exits 0.
pub fn run_ok(scratch: &Path, cmd: &mut Command, timeout: Duration) -> Outcome {
    let out = run_in(scratch, cmd, timeout);
    assert!(out.success(), "command failed: {}", out.describe());
    out
}

/// The last `n` lines of a text file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
