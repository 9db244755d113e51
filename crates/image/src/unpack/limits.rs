//! How much a layer may write: unpacked-size limits against
//! decompression bombs, and the free space it must leave.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The smallest default unpacked-size limit, per layer and per image.
pub const DEFAULT_MIN_UNPACK_LIMIT: u64 = 50 << 30;
/// The default limit is this many times the compressed size, when larger.
pub const DEFAULT_EXPANSION_FACTOR: u64 = 8;
/// The default reserve is this share of the filesystem (1/20), at most
/// [`DEFAULT_MAX_RESERVE`].
const DEFAULT_RESERVE_DIVISOR: u64 = 20;
pub const DEFAULT_MAX_RESERVE: u64 = 1 << 30;

/// Bounds on unpacking, set on the image store. `None` means the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file contents one layer may unpack to. Default:
    /// max(8 × the layer's compressed size, 50 GiB).
    pub layer_bytes: Option<u64>,
    /// Bytes of file contents all the layers of one image may unpack to.
    /// Default: max(8 × the image's compressed size, 50 GiB).
    pub image_bytes: Option<u64>,
    /// Bytes unpacking leaves free on the store's filesystem. Default:
    /// 5% of the filesystem, at most 1 GiB.
    pub reserve_bytes: Option<u64>,
}

fn default_limit(compressed: u64) -> u64 {
    compressed
        .saturating_mul(DEFAULT_EXPANSION_FACTOR)
        .max(DEFAULT_MIN_UNPACK_LIMIT)
}

impl UnpackLimits {
    /// The limit for one layer of `compressed` bytes.
    pub fn layer_limit(&self, compressed: u64) -> u64 {
        self.layer_bytes
            .unwrap_or_else(|| default_limit(compressed))
    }

    /// The limit for an image of `compressed` bytes of layers.
    pub fn image_limit(&self, compressed: u64) -> u64 {
        self.image_bytes
            .unwrap_or_else(|| default_limit(compressed))
    }

    /// The free bytes to keep on a filesystem of `fs_bytes`.
    pub fn reserve(&self, fs_bytes: u64) -> u64 {
        self.reserve_bytes
            .unwrap_or_else(|| (fs_bytes / DEFAULT_RESERVE_DIVISOR).min(DEFAULT_MAX_RESERVE))
    }
}

/// What one layer may write, as [`apply_layer_with`] enforces it.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Bytes of file contents this layer may write.
    pub layer_limit: u64,
    /// Bytes of file contents the whole image may hold.
    pub image_limit: u64,
    /// Bytes the layers below this one already hold.
    pub image_used: u64,
    /// When the image's layers are unpacked side by side: the bytes all of
    /// them hold so far, charged as they are written (`image_used` is
    /// then not used).
    pub image_shared: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// How much free space to keep (the reserve of [`UnpackLimits`]).
    pub limits: UnpackLimits,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            layer_limit: DEFAULT_MIN_UNPACK_LIMIT,
            image_limit: DEFAULT_MIN_UNPACK_LIMIT,
            image_used: 0,
            image_shared: None,
            limits: UnpackLimits::default(),
        }
    }
}

/// Free and total bytes of the filesystem holding `fd` (for unprivileged
/// users: root may dip into the blocks reserved for it, unpacking may not).
pub(crate) fn fs_space(fd: BorrowedFd<'_>) -> rustix::io::Result<(u64, u64)> {
    let st = rustix::fs::fstatvfs(fd)?;
    let frsize = st.f_frsize.max(1);
    Ok((
        st.f_bavail.saturating_mul(frsize),
        st.f_blocks.saturating_mul(frsize),
    ))
}

/// Refuses to go on when the filesystem of `fd` has less than the reserve
/// plus `needed` bytes free.
pub(crate) fn check_space(
    fd: BorrowedFd<'_>,
    path: &Path,
    layer: &str,
    limits: &UnpackLimits,
    needed: u64,
) -> Result<(u64, u64)> {
    let (free, total) = fs_space(fd).map_err(|e| Error::Io {
        context: format!("statvfs of {}", path.display()),
        source: e.into(),
    })?;
    let reserve = limits.reserve(total);
    if free < reserve.saturating_add(needed) {
        return Err(Error::NoSpace {
            layer: layer.to_owned(),
            path: path.display().to_string(),
            available: free,
            needed,
            reserve,
        });
    }
    Ok((free, reserve))
}

/// Free space is looked at again after this many bytes were written, or
/// this close to the reserve.
pub(super) const SPACE_RECHECK_BYTES: u64 = 64 << 20;
/// ... or after this many entries (directories and inodes take space too).
pub(super) const SPACE_RECHECK_ENTRIES: u64 = 4096;

/// The free space of the snapshot's filesystem, as last seen and since.
pub(super) struct Space {
    pub(super) upper: PathBuf,
    pub(super) reserve: u64,
    /// Free bytes at the last statvfs, minus what was charged since.
    pub(super) free: u64,
    pub(super) bytes_since: u64,
    pub(super) entries_since: u64,
}
