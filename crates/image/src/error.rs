use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    #[error("content {digest}: expected {expected_size} bytes, got {actual_size}")]
    SizeMismatch {
        digest: String,
        expected_size: u64,
        actual_size: u64,
    },
    #[error("content {expected}: data hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {0} is not in the content store")]
    BlobNotFound(String),
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("{0}")]
    Registry(String),
    /// The registry or its token server refused the credentials (not
    /// retried: repeating a bad password can lock an account).
    #[error("{0}")]
    Unauthorized(String),
    /// No host has the manifest (not retried).
    #[error("{0}")]
    ManifestUnknown(String),
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("no manifest for platform {platform} in {reference}")]
    NoPlatform { platform: String, reference: String },
    #[error("parsing {what}: {message}")]
    Parse { what: String, message: String },
    /// A layer tried to escape its snapshot or is otherwise unsafe to apply.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    UnsafeLayer {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: diff id is {actual}, the image config says {expected}")]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    /// A layer would unpack to more than the store allows (decompression bombs).
    #[error("layer {layer}: entry {entry:?} would bring the unpacked size to {size} bytes, over the {scope} limit of {limit} bytes ({})", human(*limit))]
    UnpackLimit {
        layer: String,
        entry: String,
        /// `per-layer` or `per-image`.
        scope: &'static str,
        size: u64,
        limit: u64,
    },
    /// Unpacking would leave the store's filesystem with less than its reserve.
    #[error("layer {layer}: not unpacked: {path} has {available} bytes free, and {needed} more bytes would leave less than the {reserve} bytes ({}) kept free", human(*reserve))]
    NoSpace {
        layer: String,
        path: String,
        available: u64,
        needed: u64,
        reserve: u64,
    },
    /// A name in an archive or layout is unsafe or does not resolve inside it.
    #[error("archive {archive}: entry {entry:?}: {reason}")]
    UnsafeArchive {
        archive: String,
        entry: String,
        reason: String,
    },
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("rootfs {0:?} already exists")]
    RootfsExists(String),
    /// A registry configuration file is wrong (names the file and line).
    #[error("{0}")]
    Config(String),
    #[error("metadata store: {0}")]
    Metadata(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

/// `64 MiB`, `50 GiB`: sizes in messages.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A JSON parse error of `what` that says where and why in general terms:
/// never the bytes of the document (it may not be what it claims to be).
pub(crate) fn json_error(what: impl Into<String>, e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let why = match e.classify() {
        Category::Io => "could not be read",
        Category::Syntax => "is not valid JSON",
        Category::Eof => "is truncated JSON",
        Category::Data => "does not have the expected JSON structure",
    };
    Error::Parse {
        what: what.into(),
        message: format!("{why} (line {}, column {})", e.line(), e.column()),
    }
}

pub(crate) trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for rustix::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Io {
            context: context(),
            source: e.into(),
        })
    }
}

pub(crate) fn io_path(path: &std::path::Path) -> impl FnOnce() -> String + '_ {
    move || path.display().to_string()
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Metadata(e.to_string())
    }
}

impl From<Box<redb::Error>> for Error {
    fn from(e: Box<redb::Error>) -> Self {
        Error::Metadata(e.to_string())
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Metadata(e.to_string())
            }
        }
    )*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
