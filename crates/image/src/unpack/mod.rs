//! Applying a layer (a tar stream, maybe compressed) into a new, empty
//! snapshot directory that overlayfs will stack on the lower layers.
//!
//! Whiteouts become overlayfs whiteouts (a 0:0 character device) and opaque
//! markers the `trusted.overlay.opaque` xattr. Every path is resolved under
//! the snapshot root with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS):
//! an entry with `..`, an absolute path, a path through a symlink (planted
//! by this layer or a lower one) or a hardlink leaving the layer is refused
//! with an error naming it, before anything is written for it.
//!
//! What a layer writes is bounded (decompression bombs): the bytes of its
//! files (the sizes their headers declare, sparse files at their apparent
//! size) are counted against a per-layer and a per-image limit before each
//! file is written, and the filesystem's free space is checked (statvfs)
//! before and while unpacking, so a layer never takes it below a reserve.

mod applier;
mod limits;
mod paths;

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::digest::{Digest, HashReader};
use crate::{Error, Result};

use applier::{set_times_at, Applier};
pub(crate) use limits::check_space;
use limits::Space;
pub use limits::{
    Bounds, UnpackLimits, DEFAULT_EXPANSION_FACTOR, DEFAULT_MAX_RESERVE, DEFAULT_MIN_UNPACK_LIMIT,
};
pub(crate) use paths::{beneath, clean, rel_path};

/// What applying a layer produced.
#[derive(Debug, Clone)]
pub struct Applied {
    pub diff_id: Digest,
    pub size: u64,
    pub inodes: u64,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let base = media_type
            .strip_prefix("application/")
            .unwrap_or(media_type);
        if base.ends_with("+gzip") || base.ends_with(".tar.gzip") || base.ends_with("tar.gzip") {
            Some(Compression::Gzip)
        } else if base.ends_with("+zstd") || base.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if base.ends_with(".tar") || base.ends_with("tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// Guesses from the first bytes (for archives without media types).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn decoder<'a, R: Read + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                io::BufReader::with_capacity(256 * 1024, r),
            )),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }
}

/// Supplies the zero padding and end-of-archive blocks some writers omit
/// (umoci 0.4 ends a layer right after the last file's data). The content
/// is still whatever the blob digest vouched for; only the framing is
/// completed, outside the diff id hash.
struct PadAtEof<R> {
    inner: R,
    padding_left: usize,
    at_eof: bool,
}

impl<R: Read> Read for PadAtEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.at_eof {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.at_eof = true;
        }
        let n = buf.len().min(self.padding_left);
        buf[..n].fill(0);
        self.padding_left -= n;
        Ok(n)
    }
}

/// Applies the tar stream `reader` (already decompressed) into the empty
/// directory `upper`, with `lowers` (top first) as the layers below, with
/// the default [`Bounds`].
pub fn apply_layer(
    reader: impl Read,
    layer: &str,
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<Applied> {
    apply_layer_with(reader, layer, upper, lowers, &Bounds::default())
}

/// [`apply_layer`] within `bounds`: a layer that would unpack to more, or
/// take the filesystem below its reserve, is refused with an error naming
/// it (what it wrote is left for the caller to remove).
pub fn apply_layer_with(
    reader: impl Read,
    layer: &str,
    upper: &Path,
    lowers: &[PathBuf],
    bounds: &Bounds,
) -> Result<Applied> {
    apply_layer_lazy(
        reader,
        layer,
        upper,
        LowerDirs::ready(lowers.to_vec()),
        bounds,
    )
}

/// The layers below the one being applied (top first), found when first
/// needed: most layers never need them (only for a directory the tar does
/// not carry, or a hardlink to a lower file), so a layer can be applied
/// while those below it are still being written.
pub struct LowerDirs<'a> {
    resolve: Box<dyn Fn() -> Result<Vec<PathBuf>> + 'a>,
    dirs: std::cell::OnceCell<Vec<PathBuf>>,
}

impl<'a> LowerDirs<'a> {
    /// Layers already there.
    pub fn ready(dirs: Vec<PathBuf>) -> LowerDirs<'a> {
        LowerDirs {
            resolve: Box::new(|| Ok(Vec::new())),
            dirs: std::cell::OnceCell::from(dirs),
        }
    }

    /// Layers `resolve` returns (waiting for them as it must) when first
    /// needed; its error fails the layer.
    pub fn lazy(resolve: impl Fn() -> Result<Vec<PathBuf>> + 'a) -> LowerDirs<'a> {
        LowerDirs {
            resolve: Box::new(resolve),
            dirs: std::cell::OnceCell::new(),
        }
    }

    pub(crate) fn get(&self) -> Result<&[PathBuf]> {
        if self.dirs.get().is_none() {
            let dirs = (self.resolve)()?;
            let _ = self.dirs.set(dirs);
        }
        Ok(self.dirs.get().map(Vec::as_slice).unwrap_or_default())
    }
}

/// [`apply_layer_with`] with the layers below found when first needed.
pub fn apply_layer_lazy(
    reader: impl Read,
    layer: &str,
    upper: &Path,
    lowers: LowerDirs<'_>,
    bounds: &Bounds,
) -> Result<Applied> {
    let root = rustix::fs::open(
        upper,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        context: format!("opening snapshot {}", upper.display()),
        source: e.into(),
    })?;
    let (free, reserve) = check_space(root.as_fd(), upper, layer, &bounds.limits, 0)?;
    let mut hashed = HashReader::new(reader);
    let mut applier = Applier {
        layer: layer.to_owned(),
        root,
        parent_cache: None,
        lowers,
        dir_times: Vec::new(),
        size: 0,
        inodes: 0,
        bounds: bounds.clone(),
        space: Space {
            upper: upper.to_owned(),
            reserve,
            free,
            bytes_since: 0,
            entries_since: 0,
        },
    };
    {
        let padded = PadAtEof {
            inner: &mut hashed,
            padding_left: 512 + 1024,
            at_eof: false,
        };
        let mut archive = tar::Archive::new(padded);
        let entries = archive.entries().map_err(|e| Error::Parse {
            what: format!("layer {layer}"),
            message: e.to_string(),
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::Parse {
                what: format!("layer {layer}"),
                message: e.to_string(),
            })?;
            applier.apply_entry(entry)?;
        }
    }
    // The diff id covers the whole stream, end-of-archive padding included.
    io::copy(&mut hashed, &mut io::sink()).map_err(|e| Error::Io {
        context: format!("reading the end of layer {layer}"),
        source: e,
    })?;
    // Directory times last: creating their children changed them.
    for (components, mtime) in applier.dir_times.iter().rev() {
        let Some((name, parents)) = components.split_last() else {
            continue;
        };
        if let Ok(parent) = rustix::fs::openat2(
            &applier.root,
            rel_path(parents),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        ) {
            let _ = set_times_at(parent.as_fd(), name, *mtime);
        }
    }
    Ok(Applied {
        diff_id: hashed.digest(),
        size: applier.size,
        inodes: applier.inodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn cleaning() {
        assert_eq!(
            clean(b"./a/b/").unwrap(),
            vec![OsString::from("a"), OsString::from("b")]
        );
        assert!(clean(b"/etc/passwd").is_err());
        assert_eq!(clean(b"/").unwrap(), Vec::<OsString>::new());
        assert!(clean(b"a/../../x").is_err());
        assert_eq!(clean(b"./").unwrap(), Vec::<OsString>::new());
    }

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("application/json"), None);
    }
}
