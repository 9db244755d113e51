//! Running one CNI plugin: `CNI_*` variables, the network config on
//! stdin, the result or a CNI error on stdout, within a time limit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// What a plugin is run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    /// Verifies a pod's attachment is still as ADD left it (0.4.0+).
    Check,
    /// Asks whether the plugin could serve an ADD now (1.1.0+); no pod.
    Status,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
        }
    }
}

/// The runtime's side of one invocation (the `CNI_*` variables).
pub struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    /// Empty for a DEL whose namespace is already gone.
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// The plugin binary `kind` in the first directory that has it.
pub fn find(bin_dirs: &[PathBuf], kind: &str) -> Option<PathBuf> {
    bin_dirs.iter().map(|d| d.join(kind)).find(|p| p.is_file())
}

/// Runs plugin `kind` with `config` on stdin; its result for ADD (JSON),
/// `Value::Null` for the other commands.
pub async fn run(inv: &Invocation<'_>, kind: &str, network: &str, config: &Value) -> Result<Value> {
    let what = format!(
        "CNI plugin {kind:?} (network {network:?}) {}",
        inv.command.as_str()
    );
    let binary = find(inv.bin_dirs, kind).ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "{what}: no plugin binary {kind:?} in {}",
            join_dirs(inv.bin_dirs)
        ))
    })?;
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut command = tokio::process::Command::new(&binary);
    command
        .env_clear()
        .env("PATH", path)
        .env("CNI_COMMAND", inv.command.as_str())
        .env(
            "CNI_PATH",
            std::env::join_paths(inv.bin_dirs).unwrap_or_default(),
        );
    // STATUS concerns the plugin, not a pod: the spec passes no pod
    // variables with it.
    if inv.command != Command::Status {
        command
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns)
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", inv.args);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Internal(format!("{what}: starting {}: {e}", binary.display())))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = config.to_string();
    let output = async {
        // A plugin that exits without reading its config is reported by
        // its status, not by this write.
        let _ = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(inv.timeout, output)
        .await
        .map_err(|_| {
            Error::DeadlineExceeded(format!(
                "{what}: no answer within {}s (killed)",
                inv.timeout.as_secs()
            ))
        })?
        .map_err(|e| Error::Internal(format!("{what}: {e}")))?;
    if !output.status.success() {
        return Err(Error::Internal(format!(
            "{what} failed: {}",
            plugin_error(&output.stdout, &output.stderr, output.status)
        )));
    }
    if inv.command != Command::Add || output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| Error::Internal(format!("{what}: its result is not JSON: {e}")))
}

/// A plugin's failure as the CNI error it printed (`code`, `msg`,
/// `details`), else its stderr.
fn plugin_error(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        if let Some(msg) = v["msg"].as_str() {
            let mut s = format!("{msg} (CNI error {})", v["code"]);
            if let Some(d) = v["details"].as_str().filter(|d| !d.is_empty()) {
                s.push_str(": ");
                s.push_str(d);
            }
            return s;
        }
    }
    let err = String::from_utf8_lossy(stderr);
    let err = err.trim();
    if err.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {err}")
    }
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| Path::display(d).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
