//! berth-nri's errors; each names the plugin or path it is about.

use std::path::PathBuf;

/// What went wrong in NRI.
#[derive(Debug, thiserror::Error)]
pub enum NriError {
    /// The NRI socket could not be set up.
    #[error("nri: cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A plugin answered a request with an error: the request fails.
    #[error("nri: plugin {plugin} failed {request}: {message}")]
    Plugin {
        plugin: String,
        request: &'static str,
        message: String,
    },
    /// Two plugins changed the same thing of one container.
    #[error("nri: plugins {plugin:?} and {other:?} both tried to set {what}")]
    Conflict {
        plugin: String,
        other: String,
        what: String,
    },
    /// A plugin asked for a change berth cannot apply.
    #[error("nri: plugin {plugin} asked for {what}, which berth does not support")]
    Unsupported { plugin: String, what: String },
    /// The combined adjustment asks for what cannot be put in an OCI spec.
    #[error("nri: plugins asked for {what}, which berth cannot apply to a container's spec")]
    Apply { what: String },
    /// A plugin asked to update the container being created, which must be
    /// adjusted instead.
    #[error(
        "nri: plugin {plugin} asked to update container {container} while it is being created"
    )]
    UpdateDuringCreate { plugin: String, container: String },
}

/// berth-nri's result.
pub type Result<T> = std::result::Result<T, NriError>;
