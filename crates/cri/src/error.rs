//! Errors of the CRI services, each with the gRPC status it maps to.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Image(#[from] berth_image::Error),
    #[error("metadata store: {0}")]
    Store(String),
    #[error("shim: {0}")]
    Shim(String),
    /// An NRI plugin refused (or plugins conflicted over) what the request
    /// does; the message names the plugin.
    #[error(transparent)]
    Nri(#[from] berth_nri::NriError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn internal(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
        Error::Internal(format!("{what}: {e}"))
    }

    /// A shim call failed: keep the shim's status code where it has one.
    pub fn from_ttrpc(what: impl std::fmt::Display, e: ttrpc::Error) -> Error {
        match e {
            ttrpc::Error::RpcStatus(s) => {
                let msg = format!("{what}: {}", s.message());
                match s.code() {
                    ttrpc::Code::NOT_FOUND => Error::NotFound(msg),
                    ttrpc::Code::INVALID_ARGUMENT => Error::InvalidArgument(msg),
                    ttrpc::Code::FAILED_PRECONDITION => Error::FailedPrecondition(msg),
                    ttrpc::Code::ALREADY_EXISTS => Error::AlreadyExists(msg),
                    ttrpc::Code::DEADLINE_EXCEEDED => Error::DeadlineExceeded(msg),
                    _ => Error::Shim(msg),
                }
            }
            other => Error::Shim(format!("{what}: {other}")),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        use berth_image::Error as I;
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::Unimplemented(_) => tonic::Status::unimplemented(msg),
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
            Error::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(msg),
            Error::Image(I::ImageNotFound(_))
            | Error::Image(I::SnapshotNotFound(_))
            | Error::Image(I::ManifestUnknown(_)) => tonic::Status::not_found(msg),
            Error::Image(I::InvalidReference { .. }) | Error::Image(I::Config(_)) => {
                tonic::Status::invalid_argument(msg)
            }
            Error::Image(I::Unauthorized(_)) => tonic::Status::unauthenticated(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}
