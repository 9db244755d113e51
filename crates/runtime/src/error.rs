use std::io;
use std::path::PathBuf;

use crate::state::Status;

/// Errors of the runtime library. Each names the object it is about, so the
/// CLI can print it as-is and containerd can show it to users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    /// runc's `ErrNotExist`, word for word: containerd's shims treat a
    /// runtime error containing "does not exist" as a container already gone.
    #[error("container does not exist")]
    ContainerNotFound(String),
    #[error("reading {path}: {source}")]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("parsing {path}: {message}")]
    ParseConfig { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// runc's `ErrNotRunning` (kill, pause or update of a container whose
    /// init is gone): containerd's checkKillError reads "container not
    /// running" as "process already finished".
    #[error("container not running")]
    NotRunning(String),
    /// runc's `ErrNotPaused` (resume of a container that is not paused).
    #[error("container not paused")]
    NotPaused(String),
    /// Any other request the container's status forbids, in runc's words
    /// (see [`Error::wrong_state`]).
    #[error("{message}")]
    WrongState {
        id: String,
        status: &'static str,
        message: String,
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

impl Error {
    /// The refusal of `op` for a container in `status`, worded as runc
    /// 1.1 words it (clients match these texts, so they are kept verbatim).
    pub(crate) fn wrong_state(id: &str, status: Status, op: Op) -> Error {
        let message = match (op, status) {
            (Op::Kill | Op::Pause | Op::Update, _) => return Error::NotRunning(id.to_owned()),
            (Op::Resume, _) => return Error::NotPaused(id.to_owned()),
            (Op::Start, Status::Running) => "cannot start an already running container".into(),
            (Op::Start, Status::Paused) => "cannot start a container in the paused state".into(),
            (Op::Start, Status::Stopped) => "cannot start a container that has stopped".into(),
            (Op::Start, _) => format!("cannot start a container in the {} state", status.as_str()),
            (Op::Delete, _) => format!(
                "cannot delete container {id} that is not stopped: {}",
                status.as_str()
            ),
            (Op::Exec, Status::Paused) => {
                "cannot exec in a paused container (use --ignore-paused to override)".into()
            }
            (Op::Exec, _) => format!("cannot exec in a {} container", status.as_str()),
            (Op::Stats, _) => format!("container with id {id} is not running"),
        };
        Error::WrongState {
            id: id.to_owned(),
            status: status.as_str(),
            message,
        }
    }

    /// Whether the error says the container (or its init) is already gone:
    /// what a caller tearing a container down may ignore.
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::ContainerNotFound(_) | Error::NotRunning(_))
    }
}

/// The operations whose refusal depends on the container's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Start,
    Kill,
    Delete,
    Pause,
    Resume,
    Exec,
    Update,
    Stats,
}

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
