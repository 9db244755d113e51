//! The shim's errors, by kind, and the one place they become ttrpc
//! statuses: a client classifies a failure by its status code
//! ([`ShimError::code`]), never by its text.

use std::io;

pub type Result<T> = std::result::Result<T, ShimError>;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A request the shim cannot take as it is: bad command-line flags or
    /// runtime options, a bundle without config.json, a malformed process
    /// spec or resources, an unknown signal. INVALID_ARGUMENT.
    #[error("{0}")]
    InvalidArgument(String),
    /// A container or process this shim does not hold, or one that has
    /// already exited (kill). NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// A container or exec id already in use. ALREADY_EXISTS.
    #[error("{0}")]
    AlreadyExists(String),
    /// A request the process's state forbids (start twice, delete while
    /// running, exec in a stopped container). FAILED_PRECONDITION.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A feature the shim does not have (checkpoints). UNIMPLEMENTED.
    #[error("{0}")]
    Unimplemented(String),
    /// berth-runtime, in this process, refused or failed: the code follows
    /// the runtime's error (see [`runtime_code`]).
    #[error(transparent)]
    Runtime(#[from] berth_runtime::Error),
    /// An OCI runtime binary (runc, crun, runsc) failed: its message, from
    /// its log or stderr. UNKNOWN: the text is the runtime's own.
    #[error("{0}")]
    RuntimeBinary(String),
    /// Reading a container's cgroup. UNKNOWN.
    #[error(transparent)]
    Cgroup(#[from] berth_cgroups::Error),
    /// A system call or file operation of the shim's own. UNKNOWN.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The pod's VM or its guest agent (the `vm` runtime class): the
    /// agent's own status code, INVALID_ARGUMENT for a bad VM
    /// configuration, else UNKNOWN.
    #[error(transparent)]
    Vm(#[from] berth_vm::VmError),
    /// Anything else that went wrong in the shim. UNKNOWN.
    #[error("{0}")]
    Other(String),
    /// What the shim was doing when `source` happened; the code is the
    /// source's.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<ShimError>,
    },
}

impl ShimError {
    /// A container or process that is not there: "`what`: not found".
    pub fn not_found(what: impl std::fmt::Display) -> ShimError {
        ShimError::NotFound(format!("{what}: not found"))
    }

    /// What the ttrpc server sends for this error: the one conversion,
    /// [`ShimError::code`] and the message.
    pub fn to_status(&self) -> ttrpc::Status {
        ttrpc::get_status(self.code(), self.to_string())
    }

    /// The ttrpc status code a client sees for this error.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Runtime(e) => runtime_code(e),
            ShimError::Vm(berth_vm::VmError::AgentStatus { code, .. }) => *code,
            ShimError::Vm(berth_vm::VmError::Config(_)) => Code::INVALID_ARGUMENT,
            ShimError::Vm(_) => Code::UNKNOWN,
            ShimError::RuntimeBinary(_)
            | ShimError::Cgroup(_)
            | ShimError::Io { .. }
            | ShimError::Other(_) => Code::UNKNOWN,
            ShimError::Context { source, .. } => source.code(),
        }
    }
}

/// The code of a berth-runtime error, by its kind.
fn runtime_code(e: &berth_runtime::Error) -> ttrpc::Code {
    use berth_runtime::Error as E;
    use ttrpc::Code;
    match e {
        // The bundle's config (a refused sysctl, mount or namespace is an
        // invalid config), the id, or a signal.
        E::InvalidId { .. } | E::InvalidConfig(_) | E::ParseConfig { .. } | E::UnknownSignal(_) => {
            Code::INVALID_ARGUMENT
        }
        E::ContainerExists(_) => Code::ALREADY_EXISTS,
        E::ContainerNotFound(_) => Code::NOT_FOUND,
        E::NotRunning(_) | E::NotPaused(_) | E::WrongState { .. } => Code::FAILED_PRECONDITION,
        _ => Code::UNKNOWN,
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(e.to_status())
    }
}

/// Says what the shim was doing when an error happened.
pub trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ShimError::Context {
            context: context(),
            source: Box::new(source),
        })
    }
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ShimError::Io {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for rustix::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|errno| ShimError::Io {
            context: context(),
            source: errno.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_by_kind_through_context() {
        let refused = ShimError::from(berth_runtime::Error::InvalidConfig(
            "sysctl \"vm.swappiness\" is not namespaced".into(),
        ));
        let e = Err::<(), _>(refused)
            .context(|| "creating container c".into())
            .unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert_eq!(
            e.to_string(),
            "creating container c: invalid config: sysctl \"vm.swappiness\" is not namespaced"
        );
        let gone = ShimError::from(berth_runtime::Error::ContainerNotFound("c".into()));
        assert_eq!(gone.code(), ttrpc::Code::NOT_FOUND);
        let ended = ShimError::from(berth_runtime::Error::NotRunning("c".into()));
        assert_eq!(ended.code(), ttrpc::Code::FAILED_PRECONDITION);
        let io = Err::<(), _>(io::Error::from_raw_os_error(libc::EPERM))
            .context(|| "mounting".into())
            .unwrap_err();
        assert_eq!(io.code(), ttrpc::Code::UNKNOWN);
        assert_eq!(
            ShimError::not_found("container x").to_string(),
            "container x: not found"
        );
        match ttrpc::Error::from(ShimError::AlreadyExists("exec e already exists".into())) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::ALREADY_EXISTS);
                assert_eq!(s.message(), "exec e already exists");
            }
            other => panic!("{other:?}"),
        }
    }
}
