use std::io;
use std::path::PathBuf;

/// Errors of the runtime library. Each names the object it is about, so the
/// CLI can print it as-is and containerd can show it to users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    #[error("container {0:?} does not exist")]
    ContainerNotFound(String),
    #[error("reading {path}: {source}")]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("parsing {path}: {message}")]
    ParseConfig { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("container {id:?} is {status}: {op} needs it to be {needed}")]
    WrongState {
        id: String,
        status: &'static str,
        op: &'static str,
        needed: &'static str,
    },
    #[error("{hook} hook {path:?}: {reason}")]
    Hook {
        hook: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    #[error(transparent)]
    Cgroup(#[from] berth_cgroups::Error),
    /// An error the container's init process reported while setting up.
    #[error("{0}")]
    Init(String),
    #[error("{context}: {source}")]
    Sys { context: String, source: io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Adds a description of what was being done to an I/O error.
pub(crate) trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Sys {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for rustix::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|errno| Error::Sys {
            context: context(),
            source: errno.into(),
        })
    }
}
