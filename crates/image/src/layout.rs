//! OCI image layouts (directories and oci-archive tars) in and out, and
//! `docker save` archives in.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde_json::{json, Value};

use crate::digest::{Digest, HashWriter};
use crate::error::{io_path, json_error, Context};
use crate::pull::{
    check_size, descriptor_size, manifest_parts, media_type_of_doc, select_platform, DOCKER_LIST,
    DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use crate::reference::Reference;
use crate::store::{Image, ImageStore};
use crate::unpack::{beneath, clean, rel_path};
use crate::{Error, Result};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The largest JSON document (index.json, manifest.json, a manifest or an
/// image config) read from an archive or layout.
const MAX_JSON: u64 = 16 << 20;

fn unsafe_entry(archive: &Path, entry: impl AsRef<[u8]>, reason: impl Into<String>) -> Error {
    Error::UnsafeArchive {
        archive: archive.display().to_string(),
        entry: String::from_utf8_lossy(entry.as_ref()).into_owned(),
        reason: reason.into(),
    }
}

fn entry_io(archive: &Path, entry: impl AsRef<[u8]>, what: &str, e: impl Into<io::Error>) -> Error {
    Error::Io {
        context: format!(
            "archive {}: entry {:?}: {what}",
            archive.display(),
            String::from_utf8_lossy(entry.as_ref())
        ),
        source: e.into(),
    }
}

/// A directory, opened to resolve names beneath it.
fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx(io_path(path))
}

/// Beneath the directory, following only symlinks that stay beneath it
/// (`docker save` links a layer it saved twice to the first copy).
fn within() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

/// Opens the regular file `name` (taken from an archive: manifest.json,
/// index.json, a digest) resolved beneath the archive's directory with
/// openat2(RESOLVE_BENEATH): `..` above it, absolute names and symlinks
/// leading out fail, whatever the string looks like.
fn open_entry(dir: &OwnedFd, archive: &Path, name: &str) -> Result<File> {
    if name.is_empty() {
        return Err(unsafe_entry(archive, name, "an empty name"));
    }
    let fd = rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        within(),
    )
    .map_err(|e| match e {
        Errno::XDEV => unsafe_entry(archive, name, "resolves outside the archive: refused"),
        Errno::LOOP => unsafe_entry(archive, name, "resolves through a symlink loop"),
        Errno::NOENT | Errno::NOTDIR => unsafe_entry(archive, name, "is not in the archive"),
        e => entry_io(archive, name, "opening", e),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| entry_io(archive, name, "stat", e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(unsafe_entry(archive, name, "is not a regular file"));
    }
    Ok(File::from(fd))
}

/// The bytes of a small file of the archive (at most `MAX_JSON`).
fn read_entry(dir: &OwnedFd, archive: &Path, name: &str) -> Result<Vec<u8>> {
    let file = open_entry(dir, archive, name)?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| entry_io(archive, name, "reading", e))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(unsafe_entry(
            archive,
            name,
            format!("larger than {MAX_JSON} bytes"),
        ));
    }
    Ok(bytes)
}

/// A JSON document of the archive; a parse error says which entry and
/// why in general terms, never the bytes of the file.
fn read_json(dir: &OwnedFd, archive: &Path, name: &str) -> Result<Value> {
    let bytes = read_entry(dir, archive, name)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| json_error(format!("{name:?} of {}", archive.display()), &e))
}

/// Creates (0700) and opens the directories `components` beneath `root`,
/// refusing to go through symlinks or files.
fn make_dirs(
    root: &OwnedFd,
    archive: &Path,
    entry: &[u8],
    components: &[std::ffi::OsString],
) -> Result<OwnedFd> {
    let mut dir = rustix::io::dup(root).map_err(|e| entry_io(archive, entry, "dup", e))?;
    for (i, name) in components.iter().enumerate() {
        match rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(entry_io(archive, entry, "mkdir", e)),
        }
        dir = rustix::fs::openat2(
            &dir,
            name.as_os_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR | Errno::LOOP | Errno::XDEV => unsafe_entry(
                archive,
                entry,
                format!(
                    "{:?} is a symlink or a file: writing through it is refused",
                    rel_path(&components[..=i])
                ),
            ),
            e => entry_io(archive, entry, "opening a directory", e),
        })?;
    }
    Ok(dir)
}

/// Extracts a tar archive of a layout into `dest` (an empty private
/// directory). Every name is created beneath `dest` with openat2 as layers
/// are: `..`, absolute names and writing through symlinks are refused;
/// hardlinks must point at a file extracted before; symlinks must lead to
/// something inside the archive. Nothing but directories, files and links
/// is created.
fn extract_archive(archive: &Path, dest: &Path) -> Result<()> {
    let root = open_dir(dest)?;
    let file = File::open(archive).ctx(io_path(archive))?;
    let mut tar = tar::Archive::new(io::BufReader::new(file));
    let mut symlinks = Vec::new();
    for entry in tar.entries().ctx(io_path(archive))? {
        let mut entry = entry.ctx(io_path(archive))?;
        let raw = entry.path_bytes().into_owned();
        let components = clean(&raw).map_err(|_| {
            unsafe_entry(
                archive,
                &raw,
                "absolute names and \"..\" are not allowed in an archive",
            )
        })?;
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind == T::Directory {
            make_dirs(&root, archive, &raw, &components)?;
            continue;
        }
        if !matches!(kind, T::Regular | T::Continuous | T::Symlink | T::Link) {
            // Extension headers (read by tar), devices, fifos: nothing to create.
            continue;
        }
        let Some((name, parents)) = components.split_last() else {
            return Err(unsafe_entry(archive, &raw, "names the archive's root"));
        };
        let parent = make_dirs(&root, archive, &raw, parents)?;
        match rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(unsafe_entry(archive, &raw, "would replace a directory"));
            }
            Ok(_) => rustix::fs::unlinkat(&parent, name.as_os_str(), AtFlags::empty())
                .map_err(|e| entry_io(archive, &raw, "unlink", e))?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(entry_io(archive, &raw, "stat", e)),
        }
        match kind {
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry(archive, &raw, "symlink without a target"))?
                    .into_owned();
                rustix::fs::symlinkat(
                    std::ffi::OsStr::from_bytes(&target),
                    &parent,
                    name.as_os_str(),
                )
                .map_err(|e| entry_io(archive, &raw, "creating a symlink", e))?;
                symlinks.push((raw, components, target));
            }
            T::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry(archive, &raw, "hardlink without a target"))?
                    .into_owned();
                let shown = String::from_utf8_lossy(&target_raw).into_owned();
                let target = clean(&target_raw)
                    .ok()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        unsafe_entry(
                            archive,
                            &raw,
                            format!("hardlink to {shown:?}: outside the archive"),
                        )
                    })?;
                let source = rustix::fs::openat2(
                    &root,
                    rel_path(&target),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    beneath(),
                )
                .map_err(|e| match e {
                    Errno::NOENT | Errno::NOTDIR => unsafe_entry(
                        archive,
                        &raw,
                        format!("hardlink to {shown:?}: no such file earlier in the archive"),
                    ),
                    Errno::XDEV | Errno::LOOP => unsafe_entry(
                        archive,
                        &raw,
                        format!("hardlink to {shown:?} goes through a symlink"),
                    ),
                    e => entry_io(archive, &raw, "opening a hardlink target", e),
                })?;
                let st =
                    rustix::fs::fstat(&source).map_err(|e| entry_io(archive, &raw, "stat", e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(unsafe_entry(
                        archive,
                        &raw,
                        format!("hardlink to {shown:?}, which is not a regular file"),
                    ));
                }
                rustix::fs::linkat(&source, "", &parent, name.as_os_str(), AtFlags::EMPTY_PATH)
                    .map_err(|e| entry_io(archive, &raw, "creating a hardlink", e))?;
            }
            _ => {
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
                .map_err(|e| entry_io(archive, &raw, "creating a file", e))?;
                io::copy(&mut entry, &mut File::from(fd))
                    .map_err(|e| entry_io(archive, &raw, "writing a file", e))?;
            }
        }
    }
    // Symlinks must lead to something inside the archive (checked once all
    // is extracted; nothing above went through them).
    for (raw, components, target) in symlinks {
        let shown = String::from_utf8_lossy(&target).into_owned();
        match rustix::fs::openat2(
            &root,
            rel_path(&components),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            within(),
        ) {
            Ok(_) => {}
            Err(Errno::XDEV) => {
                return Err(unsafe_entry(
                    archive,
                    &raw,
                    format!("symlink to {shown:?} points outside the archive: refused"),
                ))
            }
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => {
                return Err(unsafe_entry(
                    archive,
                    &raw,
                    format!("symlink to {shown:?} leads to nothing in the archive"),
                ))
            }
            Err(Errno::LOOP) => {
                return Err(unsafe_entry(
                    archive,
                    &raw,
                    format!("symlink to {shown:?} is a loop"),
                ))
            }
            Err(e) => return Err(entry_io(archive, &raw, "resolving a symlink", e)),
        }
    }
    Ok(())
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A private (0700) directory under the store's root-only `tmp/`.
fn temp_dir(store: &ImageStore, what: &str) -> Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let parent = store.root.join("tmp");
    crate::store::private_dir(&parent)?;
    let dir = parent.join(format!("{what}-{}-{n}", std::process::id()));
    // A leftover of a crashed process with the same pid.
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .ctx(io_path(&dir))?;
    Ok(TempDir(dir))
}

impl ImageStore {
    /// Copies a blob of a layout into the content store, verified: its
    /// size must be the descriptor's, as its digest must.
    fn copy_blob(
        &self,
        layout: &OwnedFd,
        archive: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        if let Some(actual) = self.content.size(digest) {
            return check_size(digest, size, actual);
        }
        let name = format!("blobs/sha256/{}", digest.hex());
        let src = open_entry(layout, archive, &name)?;
        let actual = src
            .metadata()
            .map_err(|e| entry_io(archive, &name, "stat", e))?
            .len();
        check_size(digest, size, actual)?;
        let mut w = self.content.writer(digest, Some(size))?;
        io::copy(&mut src.take(size.saturating_add(1)), &mut w)
            .map_err(|e| entry_io(archive, &name, "copying", e))?;
        w.commit()
    }

    /// Copies a manifest, index or config of a layout (bounded in size).
    fn copy_document(
        &self,
        layout: &OwnedFd,
        archive: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        if size > MAX_JSON {
            return Err(Error::Parse {
                what: format!("{digest} of {}", archive.display()),
                message: format!("{size} bytes is too large for a manifest or config"),
            });
        }
        self.copy_blob(layout, archive, digest, size)
    }

    /// Imports an OCI image layout (a directory, or an oci-archive tar).
    /// Images are named by their ref-name annotation (a full reference, or a
    /// tag appended to `base_name`). Every blob is read beneath the layout
    /// and must have its descriptor's digest and size.
    pub fn import_layout(&self, path: &Path, base_name: Option<&str>) -> Result<Vec<Image>> {
        let _tmp;
        let layout = if path.is_dir() {
            path.to_path_buf()
        } else {
            let t = temp_dir(self, "import")?;
            extract_archive(path, &t.0)?;
            let dir = t.0.clone();
            _tmp = t;
            dir
        };
        let dir = open_dir(&layout)?;
        let index = read_json(&dir, path, "index.json")?;
        let mut imported = Vec::new();
        for desc in index["manifests"].as_array().cloned().unwrap_or_default() {
            let digest = Digest::parse(desc["digest"].as_str().unwrap_or(""))?;
            let size = descriptor_size(&desc, "index.json", &digest)?;
            let annotations = &desc["annotations"];
            let name = annotations[CONTAINERD_NAME]
                .as_str()
                .or(annotations[REF_NAME].as_str());
            let name = match (name, base_name) {
                (Some(n), _)
                    if Reference::parse(n).is_ok()
                        && (n.contains('/') || n.contains(':') || base_name.is_none()) =>
                {
                    Reference::parse(n)?.full()
                }
                (Some(tag), Some(base)) => Reference::parse(&format!("{base}:{tag}"))?.full(),
                (None, Some(base)) => Reference::parse(base)?.full(),
                (Some(n), None) => Reference::parse(n)?.full(),
                (None, None) => {
                    Reference::parse(&format!("import/{}", &digest.hex()[..12]))?.full()
                }
            };
            self.copy_document(&dir, path, &digest, size)?;
            let bytes = self.content.read(&digest)?;
            let mut media_type = media_type_of_doc(&bytes).unwrap_or_default();
            let (mut manifest, mut index_digest) = (digest.clone(), None);
            if media_type == OCI_INDEX || media_type == DOCKER_LIST {
                let (d, _, d_size) = select_platform(&bytes, &self.options().platform)?
                    .ok_or_else(|| Error::NoPlatform {
                        platform: self.options().platform.clone(),
                        reference: name.clone(),
                    })?;
                self.copy_document(&dir, path, &d, d_size)?;
                index_digest = Some(digest.clone());
                manifest = d;
                media_type = media_type_of_doc(&self.content.read(&manifest)?).unwrap_or_default();
            }
            if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
                return Err(Error::UnsupportedMediaType(media_type));
            }
            let ((config, config_size), layers) = manifest_parts(&self.content.read(&manifest)?)?;
            self.copy_document(&dir, path, &config, config_size)?;
            for (l, _, l_size) in &layers {
                self.copy_blob(&dir, path, l, *l_size)?;
            }
            self.unpack_and_record(
                std::slice::from_ref(&name),
                &manifest,
                &media_type,
                index_digest.as_ref(),
                &config,
                &layers,
            )?;
            imported.push(
                self.status(&name)?
                    .ok_or_else(|| Error::ImageNotFound(name.clone()))?,
            );
        }
        Ok(imported)
    }

    /// Imports a `docker save` archive (manifest.json with RepoTags). The
    /// names in manifest.json are resolved beneath the extracted archive.
    pub fn import_docker_archive(&self, path: &Path) -> Result<Vec<Image>> {
        let t = temp_dir(self, "docker-import")?;
        extract_archive(path, &t.0)?;
        let dir = open_dir(&t.0)?;
        let manifest = read_json(&dir, path, "manifest.json")?;
        let items = manifest.as_array().ok_or_else(|| Error::Parse {
            what: format!("\"manifest.json\" of {}", path.display()),
            message: "not a list of images".into(),
        })?;
        let bad_manifest = |message: &str| Error::Parse {
            what: format!("\"manifest.json\" of {}", path.display()),
            message: message.to_owned(),
        };
        let mut imported = Vec::new();
        for item in items {
            let config_name = item["Config"]
                .as_str()
                .ok_or_else(|| bad_manifest("an image without a Config name"))?;
            let config_bytes = read_entry(&dir, path, config_name)?;
            serde_json::from_slice::<Value>(&config_bytes).map_err(|e| {
                json_error(format!("config {config_name:?} of {}", path.display()), &e)
            })?;
            let config = self.content.write_bytes(&config_bytes)?;
            let mut layers = Vec::new();
            for l in item["Layers"]
                .as_array()
                .ok_or_else(|| bad_manifest("an image without a Layers list"))?
            {
                let name = l
                    .as_str()
                    .ok_or_else(|| bad_manifest("a layer name that is not a string"))?;
                layers.push(self.copy_docker_layer(&dir, path, name)?);
            }
            let manifest_doc = json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config.to_string(), "size": config_bytes.len()},
                "layers": layers.iter().map(|(d, mt, s)| json!({"mediaType": mt, "digest": d.to_string(), "size": s})).collect::<Vec<_>>(),
            });
            let manifest_digest = self
                .content
                .write_bytes(&serde_json::to_vec(&manifest_doc).expect("json"))?;
            let names: Vec<String> = item["RepoTags"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|t| {
                    t.as_str()
                        .and_then(|t| Reference::parse(t).ok())
                        .map(|r| r.full())
                })
                .collect();
            let names = if names.is_empty() {
                vec![Reference::parse(&format!("import/{}", &config.hex()[..12]))?.full()]
            } else {
                names
            };
            self.unpack_and_record(
                &names,
                &manifest_digest,
                DOCKER_MANIFEST,
                None,
                &config,
                &layers,
            )?;
            imported.push(
                self.status(&names[0])?
                    .ok_or_else(|| Error::ImageNotFound(names[0].clone()))?,
            );
        }
        Ok(imported)
    }

    /// Stores the layer `name` of a docker archive: (digest, media type, size).
    fn copy_docker_layer(
        &self,
        dir: &OwnedFd,
        archive: &Path,
        name: &str,
    ) -> Result<crate::pull::LayerDesc> {
        let mut src = open_entry(dir, archive, name)?;
        let len = src
            .metadata()
            .map_err(|e| entry_io(archive, name, "stat", e))?
            .len();
        let mut hasher = HashWriter::new(io::sink());
        io::copy(&mut (&src).take(len), &mut hasher)
            .map_err(|e| entry_io(archive, name, "reading", e))?;
        let (_, digest) = hasher.finish();
        if !self.content.exists(&digest) {
            src.rewind()
                .map_err(|e| entry_io(archive, name, "reading", e))?;
            let mut w = self.content.writer(&digest, Some(len))?;
            io::copy(&mut (&src).take(len), &mut w)
                .map_err(|e| entry_io(archive, name, "copying", e))?;
            w.commit()?;
        }
        let mut head = [0u8; 4];
        let n = src.read_at(&mut head, 0).unwrap_or(0);
        let mt = match crate::unpack::Compression::sniff(&head[..n]) {
            crate::unpack::Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            crate::unpack::Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            crate::unpack::Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
        };
        Ok((digest, mt.to_owned(), len))
    }

    /// Writes images to an OCI layout directory, or an oci-archive tar when
    /// `dest` ends in `.tar`.
    pub fn export_layout(&self, references: &[&str], dest: &Path) -> Result<()> {
        let as_tar = dest.extension().is_some_and(|e| e == "tar");
        let _tmp;
        let dir = if as_tar {
            let t = temp_dir(self, "export")?;
            let d = t.0.clone();
            _tmp = t;
            d
        } else {
            dest.to_path_buf()
        };
        fs::create_dir_all(dir.join("blobs/sha256")).ctx(io_path(&dir))?;
        let mut manifests = Vec::new();
        for r in references {
            let records = self.meta.images()?;
            let full = Reference::parse(r)?.full();
            let (_, rec) = records
                .iter()
                .find(|(n, _)| *n == full)
                .ok_or_else(|| Error::ImageNotFound(r.to_string()))?;
            let mut blobs = vec![
                Digest::parse(&rec.manifest_digest)?,
                Digest::parse(&rec.config_digest)?,
            ];
            for l in &rec.layers {
                blobs.push(Digest::parse(&l.digest)?);
            }
            for b in &blobs {
                let target = dir.join("blobs/sha256").join(b.hex());
                if !target.exists() {
                    // A copy with the destination's usual modes, not the
                    // store's root-only ones.
                    let mut src = self.content.open_blob(b)?;
                    let mut out = File::create(&target).ctx(io_path(&target))?;
                    io::copy(&mut src, &mut out).ctx(io_path(&target))?;
                }
            }
            manifests.push(json!({
                "mediaType": rec.manifest_media_type,
                "digest": rec.manifest_digest,
                "size": self.content.size(&blobs[0]).unwrap_or(0),
                "annotations": {CONTAINERD_NAME: full, REF_NAME: Reference::parse(&full)?.tag.unwrap_or_default()},
            }));
        }
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .ctx(io_path(&dir))?;
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .ctx(io_path(&dir))?;
        if as_tar {
            let file = File::create(dest).ctx(io_path(dest))?;
            let mut builder = tar::Builder::new(io::BufWriter::new(file));
            builder.follow_symlinks(false);
            builder.append_dir_all(".", &dir).ctx(io_path(dest))?;
            builder
                .into_inner()
                .ctx(io_path(dest))?
                .flush()
                .ctx(io_path(dest))?;
        }
        Ok(())
    }
}
