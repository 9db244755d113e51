//! Protection against overwriting the runtime binary from inside a container
//! (CVE-2019-5736): before any process enters a container, berth re-executes
//! itself from a sealed, anonymous in-memory copy, so /proc/<pid>/exe of
//! every berth process a container could reach points at that copy, which no
//! one can write to.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;

use rustix::fs::{MemfdFlags, SealFlags};

use crate::error::Context;
use crate::{sys, Result};

const REQUIRED_SEALS: SealFlags = SealFlags::SEAL
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE);

/// Whether the running executable is a sealed memfd.
pub fn is_sealed() -> bool {
    let Ok(exe) = File::open("/proc/self/exe") else {
        return false;
    };
    rustix::fs::fcntl_get_seals(&exe).is_ok_and(|s| s.contains(REQUIRED_SEALS))
}

/// Re-executes the current program from a sealed memfd copy unless it
/// already runs from one. Returns only if it already does.
pub fn ensure_sealed() -> Result<()> {
    if is_sealed() {
        return Ok(());
    }
    let exe = File::open("/proc/self/exe").ctx(|| "opening /proc/self/exe".into())?;
    let memfd = rustix::fs::memfd_create("berth", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .ctx(|| "creating the sealed copy of berth (memfd_create)".into())?;
    let len = exe.metadata().ctx(|| "stat /proc/self/exe".into())?.len();
    let mut copied = 0u64;
    while copied < len {
        let n = rustix::fs::sendfile(&memfd, &exe, None, (len - copied) as usize)
            .ctx(|| "copying berth into its sealed copy".into())?;
        if n == 0 {
            break;
        }
        copied += n as u64;
    }
    rustix::fs::fcntl_add_seals(&memfd, REQUIRED_SEALS)
        .ctx(|| "sealing the copy of berth".into())?;
    let argv: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_vec()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).unwrap_or_default()
        })
        .collect();
    let err = sys::fexecve(memfd.as_raw_fd(), &argv, &envp);
    Err(crate::Error::Sys {
        context: "re-executing berth from its sealed copy".into(),
        source: err,
    })
}
