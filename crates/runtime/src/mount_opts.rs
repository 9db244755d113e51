//! Translation of OCI mount option strings into mount(2) flags and data.

/// What a list of mount options asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2) (MS_RDONLY, MS_NOSUID, MS_BIND, MS_REC, ...).
    pub flags: libc::c_ulong,
    /// Flags explicitly cleared (`rw`, `suid`, ...): they matter when a bind
    /// mount is remounted and would otherwise keep the source's flags.
    pub cleared: libc::c_ulong,
    /// Propagation changes to apply after mounting, in order.
    pub propagation: Vec<libc::c_ulong>,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    pub data: String,
    /// `tmpcopyup`: copy the directory's original contents into the new tmpfs.
    pub tmpcopyup: bool,
    /// Attributes for the whole mount tree (`rro`, `rnosuid`, ...), applied
    /// with mount_setattr(2) and AT_RECURSIVE after the mount is made.
    pub recursive: RecursiveAttrs,
}

/// `MOUNT_ATTR_*` bits of mount_setattr(2) (linux/mount.h).
pub mod attr {
    pub const RDONLY: u64 = 0x0000_0001;
    pub const NOSUID: u64 = 0x0000_0002;
    pub const NODEV: u64 = 0x0000_0004;
    pub const NOEXEC: u64 = 0x0000_0008;
    /// Mask of the access-time mode bits.
    pub const ATIME_MASK: u64 = 0x0000_0070;
    pub const RELATIME: u64 = 0x0000_0000;
    pub const NOATIME: u64 = 0x0000_0010;
    pub const STRICTATIME: u64 = 0x0000_0020;
    pub const NODIRATIME: u64 = 0x0000_0080;
    pub const IDMAP: u64 = 0x0010_0000;
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

/// The `attr_set` and `attr_clr` words of a `struct mount_attr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecursiveAttrs {
    pub set: u64,
    pub clear: u64,
}

impl RecursiveAttrs {
    pub fn is_empty(&self) -> bool {
        self.set == 0 && self.clear == 0
    }
}

/// MS_NOSYMFOLLOW (Linux 5.10); not in every libc crate version.
pub const MS_NOSYMFOLLOW: libc::c_ulong = 256;

/// The recursive options runc accepts: (clear?, MOUNT_ATTR bit).
const RECURSIVE_OPTIONS: [(&str, bool, u64); 18] = [
    ("rro", false, attr::RDONLY),
    ("rrw", true, attr::RDONLY),
    ("rnosuid", false, attr::NOSUID),
    ("rsuid", true, attr::NOSUID),
    ("rnodev", false, attr::NODEV),
    ("rdev", true, attr::NODEV),
    ("rnoexec", false, attr::NOEXEC),
    ("rexec", true, attr::NOEXEC),
    ("rnodiratime", false, attr::NODIRATIME),
    ("rdiratime", true, attr::NODIRATIME),
    ("rrelatime", false, attr::RELATIME),
    ("rnorelatime", true, attr::RELATIME),
    ("rnoatime", false, attr::NOATIME),
    ("ratime", true, attr::NOATIME),
    ("rstrictatime", false, attr::STRICTATIME),
    ("rnostrictatime", true, attr::STRICTATIME),
    ("rnosymfollow", false, attr::NOSYMFOLLOW),
    ("rsymfollow", true, attr::NOSYMFOLLOW),
];

/// The names of the recursive options, for the features document.
pub fn recursive_option_names() -> impl Iterator<Item = &'static str> {
    RECURSIVE_OPTIONS.iter().map(|(name, _, _)| *name)
}

fn recursive_option(opt: &str) -> Option<(bool, u64)> {
    RECURSIVE_OPTIONS
        .iter()
        .find(|(name, _, _)| *name == opt)
        .map(|(_, clear, bit)| (*clear, *bit))
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }
}

/// mount(2) flag for a propagation keyword.
pub fn propagation_flag(opt: &str) -> Option<libc::c_ulong> {
    Some(match opt {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

/// (set?, flag) for a flag keyword.
fn flag_option(opt: &str) -> Option<(bool, libc::c_ulong)> {
    Some(match opt {
        "ro" => (true, libc::MS_RDONLY),
        "rw" => (false, libc::MS_RDONLY),
        "nosuid" => (true, libc::MS_NOSUID),
        "suid" => (false, libc::MS_NOSUID),
        "nodev" => (true, libc::MS_NODEV),
        "dev" => (false, libc::MS_NODEV),
        "noexec" => (true, libc::MS_NOEXEC),
        "exec" => (false, libc::MS_NOEXEC),
        "sync" => (true, libc::MS_SYNCHRONOUS),
        "async" => (false, libc::MS_SYNCHRONOUS),
        "dirsync" => (true, libc::MS_DIRSYNC),
        "remount" => (true, libc::MS_REMOUNT),
        "mand" => (true, libc::MS_MANDLOCK),
        "nomand" => (false, libc::MS_MANDLOCK),
        "atime" => (false, libc::MS_NOATIME),
        "noatime" => (true, libc::MS_NOATIME),
        "diratime" => (false, libc::MS_NODIRATIME),
        "nodiratime" => (true, libc::MS_NODIRATIME),
        "relatime" => (true, libc::MS_RELATIME),
        "norelatime" => (false, libc::MS_RELATIME),
        "strictatime" => (true, libc::MS_STRICTATIME),
        "nostrictatime" => (false, libc::MS_STRICTATIME),
        "lazytime" => (true, libc::MS_LAZYTIME),
        "nolazytime" => (false, libc::MS_LAZYTIME),
        "silent" => (true, libc::MS_SILENT),
        "loud" => (false, libc::MS_SILENT),
        "bind" => (true, libc::MS_BIND),
        "rbind" => (true, libc::MS_BIND | libc::MS_REC),
        // mount(8)'s "defaults": no flag of its own (rw, suid, dev, exec, async).
        "defaults" => (true, 0),
        "nosymfollow" => (true, MS_NOSYMFOLLOW),
        "symfollow" => (false, MS_NOSYMFOLLOW),
        _ => return None,
    })
}

/// Parses OCI mount options. Unknown words go to the filesystem data, as runc does.
pub fn parse(options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        if let Some(p) = propagation_flag(opt) {
            out.propagation.push(p);
        } else if let Some((set, flag)) = flag_option(opt) {
            if set {
                out.flags |= flag;
                out.cleared &= !flag;
            } else {
                out.flags &= !flag;
                out.cleared |= flag;
            }
        } else if let Some((clear, bit)) = recursive_option(opt) {
            let r = &mut out.recursive;
            if bit & attr::ATIME_MASK == bit {
                // The access-time mode is one field: mount_setattr(2) only
                // takes it cleared whole. Clearing noatime or strictatime
                // leaves the default, relatime; rnorelatime is strictatime.
                r.clear |= attr::ATIME_MASK;
                r.set &= !attr::ATIME_MASK;
                match (clear, bit) {
                    (false, b) => r.set |= b,
                    (true, attr::RELATIME) => r.set |= attr::STRICTATIME,
                    (true, _) => {}
                }
            } else if clear {
                r.clear |= bit;
                r.set &= !bit;
            } else {
                r.set |= bit;
                r.clear &= !bit;
            }
        } else if opt == "idmap" || opt == "ridmap" {
            // Handled by crate::idmap from the mount's mappings.
        } else if opt == "tmpcopyup" {
            out.tmpcopyup = true;
        } else if !opt.is_empty() {
            data.push(opt);
        }
    }
    out.data = data.join(",");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_data_and_propagation() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k", "rslave"]);
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
        assert!(!o.is_bind());
    }

    #[test]
    fn recursive_attributes() {
        let o = opts(&["rbind", "rro", "rnosuid", "rnoatime"]);
        assert_eq!(o.recursive.set, attr::RDONLY | attr::NOSUID | attr::NOATIME);
        assert_eq!(o.recursive.clear, attr::ATIME_MASK);
        assert_eq!(o.data, "", "recursive options are not filesystem data");
        let o = opts(&["rro", "rrw", "rrelatime"]);
        assert_eq!(o.recursive.set, attr::RELATIME);
        assert_eq!(o.recursive.clear, attr::RDONLY | attr::ATIME_MASK);
        let o = opts(&["rnoatime", "ratime"]);
        assert_eq!((o.recursive.set, o.recursive.clear), (0, attr::ATIME_MASK));
        let o = opts(&["rnorelatime"]);
        assert_eq!(o.recursive.set, attr::STRICTATIME);
        let o = opts(&["nosymfollow"]);
        assert_eq!(o.flags, MS_NOSYMFOLLOW);
        assert!(opts(&["ro"]).recursive.is_empty());
    }

    #[test]
    fn later_options_win() {
        let o = opts(&["ro", "rw"]);
        assert_eq!(o.flags & libc::MS_RDONLY, 0);
        assert_ne!(o.cleared & libc::MS_RDONLY, 0);
        let o = opts(&["rbind", "ro"]);
        assert!(o.is_bind());
        assert_ne!(o.flags & libc::MS_REC, 0);
        assert_ne!(o.flags & libc::MS_RDONLY, 0);
    }
}
