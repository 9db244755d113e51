//! One tar entry at a time into the snapshot: files, links, devices,
//! whiteouts and opaque markers, ownership, modes, xattrs and times.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, XattrFlags};

use crate::{Error, Result};

use super::limits::{fs_space, Bounds, Space, SPACE_RECHECK_BYTES, SPACE_RECHECK_ENTRIES};
use super::paths::{beneath, clean, rel_path, remove_tree, Components};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What is at a path in the merged view of the lower layers.
#[derive(Debug)]
enum Lower {
    Absent,
    Dir { mode: u32, uid: u32, gid: u32 },
    Symlink,
    File { path: PathBuf },
    Other,
}

pub(super) struct Applier<'a> {
    pub(super) layer: String,
    pub(super) root: OwnedFd,
    /// The last parent directory opened: tar entries come grouped by
    /// directory, so most entries reuse it.
    pub(super) parent_cache: Option<(Components, OwnedFd)>,
    pub(super) lowers: super::LowerDirs<'a>,
    pub(super) dir_times: Vec<(Components, i64)>,
    pub(super) size: u64,
    pub(super) inodes: u64,
    pub(super) bounds: Bounds,
    pub(super) space: Space,
}

fn is_whiteout(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

impl Applier<'_> {
    fn unsafe_entry(&self, entry: &[u8], reason: impl Into<String>) -> Error {
        Error::UnsafeLayer {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn io(&self, entry: &[u8], what: &str, e: impl Into<io::Error>) -> Error {
        Error::Io {
            context: format!(
                "layer {}: entry {:?}: {what}",
                self.layer,
                String::from_utf8_lossy(entry)
            ),
            source: e.into(),
        }
    }

    /// Counts `bytes` of file contents against the limits and the free
    /// space, before they are written.
    fn charge(&mut self, entry: &[u8], bytes: u64) -> Result<()> {
        let entry_name = || String::from_utf8_lossy(entry).into_owned();
        let size = self.size.saturating_add(bytes);
        if size > self.bounds.layer_limit {
            return Err(Error::UnpackLimit {
                layer: self.layer.clone(),
                entry: entry_name(),
                scope: "per-layer",
                size,
                limit: self.bounds.layer_limit,
            });
        }
        let image = match &self.bounds.image_shared {
            Some(total) => total
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
                .saturating_add(bytes),
            None => self.bounds.image_used.saturating_add(size),
        };
        if image > self.bounds.image_limit {
            return Err(Error::UnpackLimit {
                layer: self.layer.clone(),
                entry: entry_name(),
                scope: "per-image",
                size: image,
                limit: self.bounds.image_limit,
            });
        }
        self.reserve_space(bytes)
    }

    /// Checks that `bytes` more leave the reserve free; statvfs is called
    /// again every so many bytes or entries, and whenever the estimate
    /// comes close to the reserve (others write to the filesystem too).
    fn reserve_space(&mut self, bytes: u64) -> Result<()> {
        let s = &mut self.space;
        s.entries_since += 1;
        let near = s.free.saturating_sub(bytes) < s.reserve.saturating_add(SPACE_RECHECK_BYTES);
        if near
            || s.bytes_since.saturating_add(bytes) >= SPACE_RECHECK_BYTES
            || s.entries_since >= SPACE_RECHECK_ENTRIES
        {
            let (free, _) = fs_space(self.root.as_fd()).map_err(|e| Error::Io {
                context: format!("statvfs of {}", s.upper.display()),
                source: e.into(),
            })?;
            s.free = free;
            s.bytes_since = 0;
            s.entries_since = 0;
        }
        if s.free < s.reserve.saturating_add(bytes) {
            return Err(Error::NoSpace {
                layer: self.layer.clone(),
                path: s.upper.display().to_string(),
                available: s.free,
                needed: bytes,
                reserve: s.reserve,
            });
        }
        s.free -= bytes;
        s.bytes_since += bytes;
        Ok(())
    }

    /// The merged lower view of `path` (top layer first), honouring
    /// whiteouts and opaque directories of the lower layers.
    fn lower_lookup(&self, path: &[OsString]) -> Result<Lower> {
        Ok(self.lower_lookup_in(self.lowers.get()?, path))
    }

    fn lower_lookup_in(&self, lowers: &[PathBuf], path: &[OsString]) -> Lower {
        'layers: for lower in lowers {
            let Ok(mut dir) = rustix::fs::open(
                lower,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            for (i, name) in path.iter().enumerate() {
                let st = match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                {
                    Ok(st) => st,
                    Err(_) => {
                        // Not in this layer: an opaque ancestor here hides lower layers.
                        if i > 0 && is_opaque(&dir) {
                            return Lower::Absent;
                        }
                        continue 'layers;
                    }
                };
                if is_whiteout(&st) {
                    return Lower::Absent;
                }
                let ft = FileType::from_raw_mode(st.st_mode);
                let last = i + 1 == path.len();
                if last {
                    return match ft {
                        FileType::Directory => Lower::Dir {
                            mode: st.st_mode & 0o7777,
                            uid: st.st_uid,
                            gid: st.st_gid,
                        },
                        FileType::Symlink => Lower::Symlink,
                        FileType::RegularFile => Lower::File {
                            path: lower.join(rel_path(path)),
                        },
                        _ => Lower::Other,
                    };
                }
                match ft {
                    FileType::Directory => {
                        match rustix::fs::openat2(
                            &dir,
                            name.as_os_str(),
                            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                            beneath(),
                        ) {
                            Ok(d) => dir = d,
                            Err(_) => continue 'layers,
                        }
                    }
                    FileType::Symlink => return Lower::Symlink,
                    _ => return Lower::Other,
                }
            }
        }
        Lower::Absent
    }

    /// Opens (creating as needed) the parent directory of an entry inside
    /// the new layer. Directories that exist below are recreated with their
    /// owner and mode, as overlayfs would copy them up.
    fn parent(&mut self, entry: &[u8], parents: &[OsString]) -> Result<OwnedFd> {
        if let Some((path, fd)) = &self.parent_cache {
            if path.as_slice() == parents {
                return rustix::io::dup(fd).map_err(|e| self.io(entry, "dup", e));
            }
        }
        let dir = self.open_parent(entry, parents)?;
        let cached = rustix::io::dup(&dir).map_err(|e| self.io(entry, "dup", e))?;
        self.parent_cache = Some((parents.to_vec(), cached));
        Ok(dir)
    }

    fn open_parent(&mut self, entry: &[u8], parents: &[OsString]) -> Result<OwnedFd> {
        let mut dir = rustix::io::dup(&self.root).map_err(|e| self.io(entry, "dup", e))?;
        for (i, name) in parents.iter().enumerate() {
            match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {}
                    FileType::Symlink => {
                        return Err(self.unsafe_entry(
                            entry,
                            format!(
                                "{:?} is a symlink: writing through it is refused",
                                rel_path(&parents[..=i])
                            ),
                        ))
                    }
                    _ if is_whiteout(&st) => {
                        // Deleted earlier in this layer and now recreated: a new, opaque directory.
                        rustix::fs::unlinkat(&dir, name.as_os_str(), AtFlags::empty())
                            .map_err(|e| self.io(entry, "replacing a whiteout", e))?;
                        rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o755))
                            .map_err(|e| self.io(entry, "mkdir", e))?;
                        self.inodes += 1;
                    }
                    _ => {
                        return Err(self.unsafe_entry(
                            entry,
                            format!("{:?} is not a directory", rel_path(&parents[..=i])),
                        ))
                    }
                },
                Err(rustix::io::Errno::NOENT) => {
                    let (mode, uid, gid) = match self.lower_lookup(&parents[..=i])? {
                        Lower::Absent => (0o755, 0, 0),
                        Lower::Dir { mode, uid, gid } => (mode, uid, gid),
                        Lower::Symlink => {
                            return Err(self.unsafe_entry(
                                entry,
                                format!(
                                "{:?} is a symlink in a lower layer: writing through it is refused",
                                rel_path(&parents[..=i])
                            ),
                            ))
                        }
                        Lower::File { .. } | Lower::Other => {
                            return Err(self.unsafe_entry(
                                entry,
                                format!(
                                    "{:?} is not a directory in a lower layer",
                                    rel_path(&parents[..=i])
                                ),
                            ))
                        }
                    };
                    rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(mode))
                        .map_err(|e| self.io(entry, "mkdir", e))?;
                    rustix::fs::chownat(
                        &dir,
                        name.as_os_str(),
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.io(entry, "chown", e))?;
                    rustix::fs::chmodat(
                        &dir,
                        name.as_os_str(),
                        Mode::from_raw_mode(mode),
                        AtFlags::empty(),
                    )
                    .map_err(|e| self.io(entry, "chmod", e))?;
                    self.inodes += 1;
                }
                Err(e) => return Err(self.io(entry, "stat", e)),
            }
            dir = rustix::fs::openat2(
                &dir,
                name.as_os_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            )
            .map_err(|e| self.io(entry, "opening a parent directory", e))?;
        }
        Ok(dir)
    }

    /// Removes whatever this layer already has at `name` (a file, or a whole directory).
    fn remove_existing(&mut self, entry: &[u8], dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                // The cached parent may be inside what is removed.
                self.parent_cache = None;
                let sub = rustix::fs::openat2(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    beneath(),
                )
                .map_err(|e| self.io(entry, "opening a directory to replace", e))?;
                remove_tree(sub).map_err(|e| self.io(entry, "removing a replaced directory", e))?;
                rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
                    .map_err(|e| self.io(entry, "rmdir", e))
            }
            Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| self.io(entry, "unlink", e)),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(entry, "stat", e)),
        }
    }

    pub(super) fn apply_entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let components = clean(&raw).map_err(|reason| self.unsafe_entry(&raw, reason))?;
        let header = e.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0) as i64;
        // File contents are counted at the size the header declares (the
        // apparent size of a sparse file) before anything is written.
        if matches!(
            kind,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
        ) {
            self.charge(&raw, e.size())?;
        } else {
            self.reserve_space(0)?;
        }
        let xattrs = pax_xattrs(&mut e);

        let Some((name, parents)) = components.split_last() else {
            // "./": the layer's root directory itself.
            if kind.is_dir() {
                rustix::fs::chownat(
                    &self.root,
                    ".",
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::empty(),
                )
                .map_err(|err| self.io(&raw, "chown", err))?;
                rustix::fs::chmodat(&self.root, ".", Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(|err| self.io(&raw, "chmod", err))?;
            }
            return Ok(());
        };
        let parent = self.parent(&raw, parents)?;
        let name_str = name.to_string_lossy();

        if name_str == OPAQUE_MARKER {
            let dir = rustix::fs::openat(
                &parent,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| self.io(&raw, "opening an opaque directory", err))?;
            rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|err| self.io(&raw, "marking a directory opaque", err))?;
            return Ok(());
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty()
                || hidden.starts_with(WHITEOUT_PREFIX)
                || hidden == "."
                || hidden == ".."
            {
                return Err(self.unsafe_entry(&raw, "malformed whiteout"));
            }
            let hidden = OsStr::new(hidden);
            self.remove_existing(&raw, parent.as_fd(), hidden)?;
            rustix::fs::mknodat(&parent, hidden, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(|err| self.io(&raw, "creating a whiteout", err))?;
            self.inodes += 1;
            return Ok(());
        }

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let exists_as_dir = matches!(rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW), Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory);
                if !exists_as_dir {
                    self.remove_existing(&raw, parent.as_fd(), name)?;
                    rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(|err| self.io(&raw, "mkdir", err))?;
                    self.inodes += 1;
                }
                self.set_owner_mode(&raw, parent.as_fd(), name, uid, gid, Some(mode))?;
                if !xattrs.is_empty() {
                    let fd = rustix::fs::openat2(
                        &parent,
                        name.as_os_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                        beneath(),
                    )
                    .map_err(|err| self.io(&raw, "opening a directory", err))?;
                    self.set_xattrs(&raw, fd.as_fd(), &xattrs)?;
                }
                self.dir_times.push((components.clone(), mtime));
            }
            T::Regular | T::Continuous => {
                self.remove_existing(&raw, parent.as_fd(), name)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|err| self.io(&raw, "creating a file", err))?;
                let mut file = File::from(fd);
                let n = io::copy(&mut e, &mut file)
                    .map_err(|err| self.io(&raw, "writing a file", err))?;
                self.size += n;
                self.inodes += 1;
                rustix::fs::fchown(
                    &file,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .map_err(|err| self.io(&raw, "chown", err))?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|err| self.io(&raw, "chmod", err))?;
                self.set_xattrs(&raw, file.as_fd(), &xattrs)?;
                let t = rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: mtime,
                        tv_nsec: 0,
                    },
                    last_modification: rustix::fs::Timespec {
                        tv_sec: mtime,
                        tv_nsec: 0,
                    },
                };
                rustix::fs::futimens(&file, &t)
                    .map_err(|err| self.io(&raw, "setting times", err))?;
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "symlink without a target"))?
                    .into_owned();
                self.remove_existing(&raw, parent.as_fd(), name)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|err| self.io(&raw, "creating a symlink", err))?;
                self.inodes += 1;
                self.set_owner_mode(&raw, parent.as_fd(), name, uid, gid, None)?;
                set_times_at(parent.as_fd(), name, mtime)
                    .map_err(|err| self.io(&raw, "setting times", err))?;
            }
            T::Link => {
                let target_raw = e
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "hardlink without a target"))?
                    .into_owned();
                let target = clean(&target_raw).map_err(|reason| {
                    self.unsafe_entry(
                        &raw,
                        format!(
                            "hardlink target {:?}: {reason}",
                            String::from_utf8_lossy(&target_raw)
                        ),
                    )
                })?;
                if target.is_empty() {
                    return Err(self.unsafe_entry(&raw, "hardlink to the layer root"));
                }
                let source = self.link_source(&raw, &target)?;
                self.remove_existing(&raw, parent.as_fd(), name)?;
                rustix::fs::linkat(&source, "", &parent, name.as_os_str(), AtFlags::EMPTY_PATH)
                    .map_err(|err| self.io(&raw, "creating a hardlink", err))?;
            }
            T::Char | T::Block | T::Fifo => {
                let ft = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
                if ft == FileType::CharacterDevice && major == 0 && minor == 0 {
                    return Err(self.unsafe_entry(
                        &raw,
                        "a 0:0 character device is an overlay whiteout; layers use .wh. files",
                    ));
                }
                self.remove_existing(&raw, parent.as_fd(), name)?;
                rustix::fs::mknodat(
                    &parent,
                    name.as_os_str(),
                    ft,
                    Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major as u32, minor as u32),
                )
                .map_err(|err| self.io(&raw, "mknod", err))?;
                self.inodes += 1;
                self.set_owner_mode(&raw, parent.as_fd(), name, uid, gid, Some(mode))?;
                set_times_at(parent.as_fd(), name, mtime)
                    .map_err(|err| self.io(&raw, "setting times", err))?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                return Err(self.unsafe_entry(&raw, format!("unsupported tar entry type {other:?}")))
            }
        }
        Ok(())
    }

    /// The file a hardlink points to, inside this layer; a file of a lower
    /// layer is copied up first (overlayfs cannot link across layers).
    fn link_source(&mut self, entry: &[u8], target: &[OsString]) -> Result<OwnedFd> {
        let rel = rel_path(target);
        match rustix::fs::openat2(
            &self.root,
            &rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        ) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).map_err(|e| self.io(entry, "stat", e))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(self.unsafe_entry(entry, "hardlink to a directory"));
                }
                return Ok(fd);
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::XDEV) | Err(rustix::io::Errno::LOOP) => {
                return Err(self.unsafe_entry(
                    entry,
                    format!("hardlink target {rel:?} goes through a symlink"),
                ))
            }
            Err(e) => return Err(self.io(entry, "opening a hardlink target", e)),
        }
        let Lower::File { path } = self.lower_lookup(target)? else {
            return Err(self.unsafe_entry(
                entry,
                format!("hardlink target {rel:?} is not a file of this image"),
            ));
        };
        let (name, parents) = target.split_last().expect("not empty");
        let parent = self.parent(entry, parents)?;
        let mut src =
            File::open(&path).map_err(|e| self.io(entry, "opening a lower file to copy up", e))?;
        let meta = src.metadata().map_err(|e| self.io(entry, "stat", e))?;
        self.charge(entry, meta.len())?;
        let fd = rustix::fs::openat(
            &parent,
            name.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.io(entry, "copying up a hardlink target", e))?;
        let mut dst = File::from(fd);
        io::copy(&mut src, &mut dst)
            .map_err(|e| self.io(entry, "copying up a hardlink target", e))?;
        use std::os::unix::fs::MetadataExt;
        rustix::fs::fchown(
            &dst,
            Some(rustix::fs::Uid::from_raw(meta.uid())),
            Some(rustix::fs::Gid::from_raw(meta.gid())),
        )
        .map_err(|e| self.io(entry, "chown", e))?;
        rustix::fs::fchmod(&dst, Mode::from_raw_mode(meta.mode() & 0o7777))
            .map_err(|e| self.io(entry, "chmod", e))?;
        self.size += meta.len();
        self.inodes += 1;
        rustix::fs::openat2(
            &self.root,
            &rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        )
        .map_err(|e| self.io(entry, "opening a copied-up file", e))
    }

    fn set_owner_mode(
        &self,
        entry: &[u8],
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: u32,
        gid: u32,
        mode: Option<u32>,
    ) -> Result<()> {
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io(entry, "chown", e))?;
        if let Some(mode) = mode {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty())
                .map_err(|e| self.io(entry, "chmod", e))?;
        }
        Ok(())
    }

    fn set_xattrs(
        &self,
        entry: &[u8],
        fd: BorrowedFd<'_>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        for (key, value) in xattrs {
            // Overlayfs's own attributes would let a layer forge whiteouts or redirects.
            if key.starts_with("trusted.overlay.") {
                continue;
            }
            if let Err(e) = rustix::fs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty()) {
                if e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::PERM {
                    log::debug!(
                        "layer {}: {:?}: xattr {key} not supported here",
                        self.layer,
                        String::from_utf8_lossy(entry)
                    );
                    continue;
                }
                return Err(self.io(entry, &format!("setting xattr {key}"), e));
            }
        }
        Ok(())
    }
}

fn is_opaque(dir: &OwnedFd) -> bool {
    let Ok(fd) = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut buf = [0u8; 4];
    matches!(rustix::fs::fgetxattr(&fd, OPAQUE_XATTR, &mut buf), Ok(1) if buf[0] == b'y')
}

pub(super) fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mtime: i64,
) -> rustix::io::Result<()> {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(dir, name, &t, AtFlags::SYMLINK_NOFOLLOW)
}

fn pax_xattrs<R: Read>(e: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = e.pax_extensions() {
        for ext in exts.flatten() {
            if let Ok(key) = ext.key() {
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    out.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    out
}
