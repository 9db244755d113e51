use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading cgroup mounts from {path}: {source}")]
    Mountinfo { path: PathBuf, source: io::Error },
    #[error("no cgroup hierarchy is mounted on this host")]
    NoHierarchy,
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("the systemd cgroup driver was requested but systemd is not running on this host (no /run/systemd/system); use the cgroupfs driver")]
    SystemdNotRunning,
    #[error("creating cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("adding process {pid} to cgroup {path}: {source}")]
    AddProcess {
        pid: i32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("removing cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid resources: {0}")]
    InvalidResource(String),
    #[error("setting {file} to {value:?}: {source}")]
    Write {
        file: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error(
        "{what} was requested but no cgroup hierarchy on this host has the {controller} controller"
    )]
    MissingController { what: String, controller: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("timed out waiting for {path} to freeze")]
    FreezeTimeout { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid_resource(msg: impl Into<String>) -> Error {
        Error::InvalidResource(msg.into())
    }
}
