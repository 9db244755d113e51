//! A tar writer that emits every header byte itself.
//!
//! Why not `tar::Builder`: it normalises and checks paths (rejects `..`,
//! strips leading `/`), which is right for a library but makes it impossible
//! to write the malicious layers an unpacker must survive. Here every name and
//! link target is written *verbatim*; nothing is cleaned, joined or checked.
//!
//! Format: POSIX ustar headers; names or link targets longer than 100 bytes go
//! into a PAX extended header (default) or a GNU `././@LongLink` entry, per
//! [`LongNames`]; xattrs go into PAX `SCHILY.xattr.<name>` records (what GNU
//! tar, Go's archive/tar, containerd and the `tar` crate read); numbers too big
//! for octal use GNU base-256.
//!
//! ```ignore
//! let layer = Layer::new()
//!     .dir("etc/")
//!     .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
//!     .entry(Entry::file("../escape", "x"))                    // parent escape
//!     .entry(Entry::file("/etc/shadow", "x"))                  // absolute name
//!     .hardlink("evil", "../../etc/passwd")                    // link out of the root
//!     .symlink("lnk", "/etc").file("lnk/owned", "through the symlink")
//!     .entry(Entry::file("x", "data").owner(1000, 1000).mode(0o4755).xattr("security.capability", [1, 2]));
//! let gz = layer.compressed(Compression::Gzip)?;
//! ```

use std::io::{self, Write};

use super::Context;

/// Byte offsets of the ustar header fields, for [`Entry::patch_header`].
pub mod field {
    pub const NAME: usize = 0; // 100 bytes
    pub const MODE: usize = 100; // 8
    pub const UID: usize = 108; // 8
    pub const GID: usize = 116; // 8
    pub const SIZE: usize = 124; // 12
    pub const MTIME: usize = 136; // 12
    pub const CHECKSUM: usize = 148; // 8
    pub const TYPEFLAG: usize = 156; // 1
    pub const LINKNAME: usize = 157; // 100
    pub const MAGIC: usize = 257; // 6 ("ustar\0"), GNU: 8 ("ustar  \0")
    pub const VERSION: usize = 263; // 2
    pub const UNAME: usize = 265; // 32
    pub const GNAME: usize = 297; // 32
    pub const DEVMAJOR: usize = 329; // 8
    pub const DEVMINOR: usize = 337; // 8
    pub const PREFIX: usize = 345; // 155
}

const BLOCK: usize = 512;

/// What an entry is; decides the typeflag, the payload and the linkname.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    /// Symlink to the given target, written verbatim.
    Symlink(Vec<u8>),
    /// Hardlink to the given (archive) path, written verbatim.
    Hardlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// Any typeflag (e.g. `b'7'` contiguous file, `b'g'` global PAX header,
    /// `b'S'` GNU sparse, an unknown letter) with the given payload and linkname.
    Other {
        typeflag: u8,
        data: Vec<u8>,
        linkname: Vec<u8>,
    },
}

/// How names and link targets longer than the 100-byte ustar fields are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongNames {
    /// PAX `path` / `linkpath` records (what Go and modern GNU tar write).
    #[default]
    Pax,
    /// GNU `././@LongLink` entries of type `L` (name) and `K` (link target).
    Gnu,
    /// Split the name between the ustar `prefix` and `name` fields at a `/`
    /// (link targets cannot use the prefix; they fall back to PAX). Panics if
    /// the name cannot be split, since that is a bug in the test itself.
    UstarPrefix,
    /// Cut to 100 bytes with no extension header: a deliberately broken archive.
    Truncate,
}

/// One tar member. Build with the constructors, adjust with the chained setters.
///
/// Defaults: uid/gid 0, empty user/group names, mtime 2023-11-14, mode 0755 for
/// directories, 0644 for files, fifos and `Other`, 0777 for links, 0666 for
/// devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name exactly as it will appear in the archive.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky; not the file type.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub mtime: u64,
    /// Extended attributes, written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Further PAX records, written as given (after path/linkpath/xattrs).
    pub pax: Vec<(String, Vec<u8>)>,
    pub long_names: LongNames,
    /// The size written in the header when it must differ from the payload
    /// (truncated or overlong members).
    pub declared_size: Option<u64>,
    /// Raw bytes written over the finished header at the given offsets (see
    /// [`field`]) before the checksum is computed.
    pub header_patches: Vec<(usize, Vec<u8>)>,
    /// Write a wrong header checksum.
    pub corrupt_checksum: bool,
}

/// 2023-11-14T22:13:20Z: fixed so that layers, and so digests, are reproducible.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

impl Entry {
    pub fn new(path: impl AsRef<[u8]>, kind: EntryKind) -> Entry {
        let mode = match kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink(_) | EntryKind::Hardlink(_) => 0o777,
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } => 0o666,
            EntryKind::File(_) | EntryKind::Fifo | EntryKind::Other { .. } => 0o644,
        };
        Entry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
            pax: Vec::new(),
            long_names: LongNames::default(),
            declared_size: None,
            header_patches: Vec::new(),
            corrupt_checksum: false,
        }
    }

    pub fn dir(path: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::Dir)
    }

    pub fn file(path: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::File(content.as_ref().to_vec()))
    }

    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.as_ref().to_vec()))
    }

    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::Hardlink(target.as_ref().to_vec()))
    }

    pub fn char_device(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::CharDevice { major, minor })
    }

    pub fn block_device(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::BlockDevice { major, minor })
    }

    pub fn fifo(path: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::Fifo)
    }

    /// An empty regular file named `<dir>/.wh.<name>`: deletes `<dir>/<name>`
    /// from the layers below (OCI image-spec whiteout).
    pub fn whiteout(path: impl AsRef<[u8]>) -> Entry {
        let path = path.as_ref();
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        Entry::file([dir, b".wh.", name].concat(), [])
    }

    /// `<dir>/.wh..wh..opq`: hides everything the layers below have in `dir`.
    pub fn opaque(dir: impl AsRef<[u8]>) -> Entry {
        let dir = dir.as_ref();
        let sep: &[u8] = if dir.is_empty() || dir.ends_with(b"/") {
            b""
        } else {
            b"/"
        };
        Entry::file([dir, sep, b".wh..wh..opq"].concat(), [])
    }

    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn names(mut self, uname: impl AsRef<[u8]>, gname: impl AsRef<[u8]>) -> Entry {
        self.uname = uname.as_ref().to_vec();
        self.gname = gname.as_ref().to_vec();
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }

    /// Adds an extended attribute, e.g. `("user.comment", b"hi")` or
    /// `("security.capability", ...)`.
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Entry {
        self.xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Adds a raw PAX record (e.g. `("mtime", b"1.5")`, `("size", b"99")`).
    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Entry {
        self.pax.push((key.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn long_names(mut self, style: LongNames) -> Entry {
        self.long_names = style;
        self
    }

    pub fn declared_size(mut self, size: u64) -> Entry {
        self.declared_size = Some(size);
        self
    }

    /// Overwrites header bytes at `offset` (see [`field`]); the checksum is
    /// computed afterwards, so the header still looks valid.
    pub fn patch_header(mut self, offset: usize, bytes: impl AsRef<[u8]>) -> Entry {
        self.header_patches.push((offset, bytes.as_ref().to_vec()));
        self
    }

    pub fn corrupt_checksum(mut self) -> Entry {
        self.corrupt_checksum = true;
        self
    }

    /// Appends this entry's blocks (extension headers, header, padded payload).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (typeflag, data, linkname): (u8, &[u8], &[u8]) = match &self.kind {
            EntryKind::Dir => (b'5', &[], &[]),
            EntryKind::File(d) => (b'0', d, &[]),
            EntryKind::Symlink(t) => (b'2', &[], t),
            EntryKind::Hardlink(t) => (b'1', &[], t),
            EntryKind::CharDevice { .. } => (b'3', &[], &[]),
            EntryKind::BlockDevice { .. } => (b'4', &[], &[]),
            EntryKind::Fifo => (b'6', &[], &[]),
            EntryKind::Other {
                typeflag,
                data,
                linkname,
            } => (*typeflag, data, linkname),
        };
        let (major, minor) = match self.kind {
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                (major, minor)
            }
            _ => (0, 0),
        };

        let gnu = self.long_names == LongNames::Gnu;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut name_field: &[u8] = &self.path;
        let mut prefix_field: &[u8] = &[];
        let mut link_field: &[u8] = linkname;

        if self.path.len() > 100 {
            match self.long_names {
                LongNames::Pax => pax.push(("path".into(), self.path.clone())),
                LongNames::Gnu => self.encode_gnu_long(out, b'L', &self.path),
                LongNames::UstarPrefix => {
                    let (p, n) = split_ustar(&self.path).unwrap_or_else(|| {
                        panic!(
                            "tar entry {:?} cannot be split into a 155-byte prefix and a 100-byte name",
                            String::from_utf8_lossy(&self.path)
                        )
                    });
                    prefix_field = p;
                    name_field = n;
                }
                LongNames::Truncate => {}
            }
            name_field = &name_field[..name_field.len().min(100)];
        }
        if linkname.len() > 100 {
            match self.long_names {
                LongNames::Pax | LongNames::UstarPrefix => {
                    pax.push(("linkpath".into(), linkname.to_vec()))
                }
                LongNames::Gnu => self.encode_gnu_long(out, b'K', linkname),
                LongNames::Truncate => {}
            }
            link_field = &linkname[..100];
        }
        for (k, v) in &self.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        pax.extend(self.pax.iter().cloned());

        if !pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in &pax {
                pax_record(&mut records, k.as_bytes(), v);
            }
            let mut h = Header::new(gnu);
            h.bytes(field::NAME, 100, b"././@PaxHeader");
            h.octal(field::MODE, 8, 0o644);
            h.octal(field::UID, 8, 0);
            h.octal(field::GID, 8, 0);
            h.octal(field::SIZE, 12, records.len() as u64);
            h.octal(field::MTIME, 12, self.mtime);
            h.0[field::TYPEFLAG] = b'x';
            h.finish(out, false);
            push_padded(out, &records);
        }

        let mut h = Header::new(gnu);
        h.bytes(field::NAME, 100, name_field);
        h.octal(field::MODE, 8, u64::from(self.mode));
        h.octal(field::UID, 8, self.uid);
        h.octal(field::GID, 8, self.gid);
        h.octal(
            field::SIZE,
            12,
            self.declared_size.unwrap_or(data.len() as u64),
        );
        h.octal(field::MTIME, 12, self.mtime);
        h.0[field::TYPEFLAG] = typeflag;
        h.bytes(field::LINKNAME, 100, link_field);
        h.bytes(field::UNAME, 32, &self.uname);
        h.bytes(field::GNAME, 32, &self.gname);
        h.octal(field::DEVMAJOR, 8, u64::from(major));
        h.octal(field::DEVMINOR, 8, u64::from(minor));
        h.bytes(field::PREFIX, 155, prefix_field);
        for (offset, bytes) in &self.header_patches {
            let end = (offset + bytes.len()).min(BLOCK);
            h.0[*offset..end].copy_from_slice(&bytes[..end - offset]);
        }
        h.finish(out, self.corrupt_checksum);
        push_padded(out, data);
    }

    /// A GNU `././@LongLink` member whose payload is the NUL-terminated name.
    fn encode_gnu_long(&self, out: &mut Vec<u8>, typeflag: u8, name: &[u8]) {
        let mut payload = name.to_vec();
        payload.push(0);
        let mut h = Header::new(true);
        h.bytes(field::NAME, 100, b"././@LongLink");
        h.octal(field::MODE, 8, 0o644);
        h.octal(field::UID, 8, 0);
        h.octal(field::GID, 8, 0);
        h.octal(field::SIZE, 12, payload.len() as u64);
        h.octal(field::MTIME, 12, 0);
        h.0[field::TYPEFLAG] = typeflag;
        h.finish(out, false);
        push_padded(out, &payload);
    }
}

/// A 512-byte header block being filled in.
struct Header([u8; BLOCK]);

impl Header {
    fn new(gnu: bool) -> Header {
        let mut h = Header([0; BLOCK]);
        // GNU and POSIX disagree on the magic; readers use it to decide whether
        // the prefix field is a prefix (POSIX) or atime/ctime (GNU).
        if gnu {
            h.0[field::MAGIC..field::MAGIC + 8].copy_from_slice(b"ustar  \0");
        } else {
            h.0[field::MAGIC..field::MAGIC + 6].copy_from_slice(b"ustar\0");
            h.0[field::VERSION..field::VERSION + 2].copy_from_slice(b"00");
        }
        h
    }

    /// Copies `value` into a field, cut to the field's width (fields that are
    /// exactly full carry no NUL, as the format allows).
    fn bytes(&mut self, offset: usize, width: usize, value: &[u8]) {
        let n = value.len().min(width);
        self.0[offset..offset + n].copy_from_slice(&value[..n]);
    }

    /// NUL-terminated zero-padded octal, or GNU base-256 when it does not fit.
    fn octal(&mut self, offset: usize, width: usize, value: u64) {
        let digits = width - 1;
        if digits >= 22 || value < (1u64 << (3 * digits)) {
            let s = format!("{value:0digits$o}");
            self.0[offset..offset + digits].copy_from_slice(s.as_bytes());
            self.0[offset + digits] = 0;
        } else {
            let field = &mut self.0[offset..offset + width];
            field.fill(0);
            let be = value.to_be_bytes();
            field[width - 8..].copy_from_slice(&be);
            field[0] |= 0x80;
        }
    }

    fn finish(mut self, out: &mut Vec<u8>, corrupt: bool) {
        self.0[field::CHECKSUM..field::CHECKSUM + 8].fill(b' ');
        let mut sum: u32 = self.0.iter().map(|&b| u32::from(b)).sum();
        if corrupt {
            sum = sum.wrapping_add(1);
        }
        let s = format!("{:06o}\0 ", sum & 0o777777);
        self.0[field::CHECKSUM..field::CHECKSUM + 8].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&self.0);
    }
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rem = data.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// Appends `"<len> <key>=<value>\n"`, where len counts the whole record
/// including its own digits (hence the fixed-point loop).
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    loop {
        let total = rest + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn split_ustar(path: &[u8]) -> Option<(&[u8], &[u8])> {
    (0..path.len())
        .filter(|&i| path[i] == b'/')
        .map(|i| (&path[..i], &path[i + 1..]))
        .find(|(p, n)| p.len() <= 155 && n.len() <= 100 && !n.is_empty())
}

/// A member of a [`Layer`]: an entry, or bytes appended as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Entry(Box<Entry>),
    Raw(Vec<u8>),
}

/// An uncompressed layer tar described entry by entry, in archive order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub items: Vec<Item>,
    /// Whether to end with the two zero blocks (off: a truncated archive).
    pub end_marker: bool,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            items: Vec::new(),
            end_marker: true,
        }
    }

    pub fn entry(mut self, entry: Entry) -> Layer {
        self.items.push(Item::Entry(Box::new(entry)));
        self
    }

    /// Appends bytes verbatim (a hand-made header, garbage, a partial block).
    pub fn raw(mut self, bytes: impl AsRef<[u8]>) -> Layer {
        self.items.push(Item::Raw(bytes.as_ref().to_vec()));
        self
    }

    pub fn without_end_marker(mut self) -> Layer {
        self.end_marker = false;
        self
    }

    pub fn dir(self, path: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::dir(path))
    }

    pub fn file(self, path: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::file(path, content))
    }

    pub fn file_mode(self, path: impl AsRef<[u8]>, content: impl AsRef<[u8]>, mode: u32) -> Layer {
        self.entry(Entry::file(path, content).mode(mode))
    }

    pub fn symlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::symlink(path, target))
    }

    pub fn hardlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::hardlink(path, target))
    }

    pub fn char_device(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> Layer {
        self.entry(Entry::char_device(path, major, minor))
    }

    pub fn block_device(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> Layer {
        self.entry(Entry::block_device(path, major, minor))
    }

    pub fn fifo(self, path: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::fifo(path))
    }

    pub fn whiteout(self, path: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::whiteout(path))
    }

    pub fn opaque(self, dir: impl AsRef<[u8]>) -> Layer {
        self.entry(Entry::opaque(dir))
    }

    /// The uncompressed tar stream.
    pub fn to_tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for item in &self.items {
            match item {
                Item::Entry(e) => e.encode(&mut out),
                Item::Raw(b) => out.extend_from_slice(b),
            }
        }
        if self.end_marker {
            out.resize(out.len() + 2 * BLOCK, 0);
        }
        out
    }

    /// `sha256:` of the uncompressed tar: the layer's diff_id.
    pub fn diff_id(&self) -> String {
        super::sha256_digest(&self.to_tar())
    }

    pub fn compressed(&self, compression: Compression) -> io::Result<Vec<u8>> {
        compression.compress(&self.to_tar())
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(data)
                    .context(|| "gzip-compressing a layer".into())?;
                enc.finish().context(|| "finishing a gzip stream".into())
            }
            Compression::Zstd => {
                zstd::encode_all(data, 3).context(|| "zstd-compressing a layer".into())
            }
        }
    }

    /// `application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]`.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Docker schema 2 only defines `.tar.gzip`; the other two are what
    /// containerd and moby accept in practice.
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        }
    }
}
