//! Layer entry names as clean paths, resolved beneath the snapshot root.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// One path inside the snapshot, as clean components.
pub(super) type Components = Vec<OsString>;

pub(crate) fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

pub(crate) fn rel_path(components: &[OsString]) -> PathBuf {
    if components.is_empty() {
        PathBuf::from(".")
    } else {
        components.iter().collect()
    }
}

/// A tar entry name to clean components; refuses absolute paths and `..`.
pub(crate) fn clean(raw: &[u8]) -> std::result::Result<Components, &'static str> {
    // "/" alone is the layer root (umoci writes it); any other absolute
    // name tries to reach outside the snapshot.
    if raw.first() == Some(&b'/') && raw.iter().any(|b| *b != b'/') {
        return Err("absolute paths are not allowed in a layer");
    }
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("\"..\" is not allowed in a layer path"),
            p => out.push(OsStr::from_bytes(p).to_owned()),
        }
    }
    Ok(out)
}

/// rm -rf of a directory's contents, without following symlinks.
pub(crate) fn remove_tree(dir: OwnedFd) -> rustix::io::Result<()> {
    let mut entries = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() == b"." || name.as_bytes() == b".." {
            continue;
        }
        entries.push((name, entry.file_type()));
    }
    for (name, ft) in entries {
        if ft == FileType::Directory {
            let sub = rustix::fs::openat(
                &dir,
                name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            remove_tree(sub)?;
            rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::empty())?;
        }
    }
    Ok(())
}
