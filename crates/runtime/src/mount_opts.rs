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
