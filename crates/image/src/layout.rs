//! OCI image layouts (directories and oci-archive tars) in and out, and
//! `docker save` archives in.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::error::{io_path, Context};
use crate::pull::{
    manifest_parts, media_type_of_doc, select_platform, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX,
    OCI_MANIFEST,
};
use crate::reference::Reference;
use crate::store::{Image, ImageStore};
use crate::{Error, Result};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

fn parse_json(bytes: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::Parse {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

/// Extracts a tar archive of a layout into `dest`, refusing unsafe names.
fn extract_archive(archive: &Path, dest: &Path) -> Result<()> {
    let file = File::open(archive).ctx(io_path(archive))?;
    let mut tar = tar::Archive::new(io::BufReader::new(file));
    for entry in tar.entries().ctx(io_path(archive))? {
        let mut entry = entry.ctx(io_path(archive))?;
        let path = entry.path().ctx(io_path(archive))?.into_owned();
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::Parse {
                what: archive.display().to_string(),
                message: format!("unsafe entry {path:?}"),
            });
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(dest.join(&path)).ctx(io_path(&path))?
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let target = dest.join(&path);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).ctx(io_path(parent))?;
                }
                let mut out = File::create(&target).ctx(io_path(&target))?;
                io::copy(&mut entry, &mut out).ctx(io_path(&target))?;
            }
            // Layouts hold only files; links and devices have no business here.
            _ => {}
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

fn temp_dir(store: &ImageStore, what: &str) -> Result<TempDir> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = store
        .root
        .join("tmp")
        .join(format!("{what}-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).ctx(io_path(&dir))?;
    Ok(TempDir(dir))
}

impl ImageStore {
    /// Copies a blob of a layout into the content store, verified.
    fn copy_blob(&self, layout: &Path, digest: &Digest) -> Result<()> {
        if self.content.exists(digest) {
            return Ok(());
        }
        let path = layout.join("blobs/sha256").join(digest.hex());
        let mut src = File::open(&path).map_err(|e| Error::Io {
            context: format!("blob {digest} of the layout"),
            source: e,
        })?;
        let size = src.metadata().ctx(io_path(&path))?.len();
        let mut w = self.content.writer(digest, Some(size))?;
        io::copy(&mut src, &mut w).ctx(io_path(&path))?;
        w.commit()
    }

    /// Imports an OCI image layout (a directory, or an oci-archive tar).
    /// Images are named by their ref-name annotation (a full reference, or a
    /// tag appended to `base_name`).
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
        let index_bytes = fs::read(layout.join("index.json"))
            .ctx(|| format!("{}: index.json", path.display()))?;
        let index = parse_json(&index_bytes, "index.json")?;
        let mut imported = Vec::new();
        for desc in index["manifests"].as_array().cloned().unwrap_or_default() {
            let digest = Digest::parse(desc["digest"].as_str().unwrap_or(""))?;
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
            self.copy_blob(&layout, &digest)?;
            let bytes = self.content.read(&digest)?;
            let mut media_type = media_type_of_doc(&bytes).unwrap_or_default();
            let (mut manifest, mut index_digest) = (digest.clone(), None);
            if media_type == OCI_INDEX || media_type == DOCKER_LIST {
                let (d, _, _) =
                    select_platform(&bytes, &self.options().platform)?.ok_or_else(|| {
                        Error::NoPlatform {
                            platform: self.options().platform.clone(),
                            reference: name.clone(),
                        }
                    })?;
                self.copy_blob(&layout, &d)?;
                index_digest = Some(digest.clone());
                manifest = d;
                media_type = media_type_of_doc(&self.content.read(&manifest)?).unwrap_or_default();
            }
            if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
                return Err(Error::UnsupportedMediaType(media_type));
            }
            let ((config, _), layers) = manifest_parts(&self.content.read(&manifest)?)?;
            self.copy_blob(&layout, &config)?;
            for (l, _, _) in &layers {
                self.copy_blob(&layout, l)?;
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

    /// Imports a `docker save` archive (manifest.json with RepoTags).
    pub fn import_docker_archive(&self, path: &Path) -> Result<Vec<Image>> {
        let t = temp_dir(self, "docker-import")?;
        extract_archive(path, &t.0)?;
        let manifest = parse_json(
            &fs::read(t.0.join("manifest.json"))
                .ctx(|| format!("{}: manifest.json", path.display()))?,
            "manifest.json",
        )?;
        let mut imported = Vec::new();
        for item in manifest.as_array().cloned().unwrap_or_default() {
            let config_path = t.0.join(item["Config"].as_str().unwrap_or(""));
            let config_bytes = fs::read(&config_path).ctx(io_path(&config_path))?;
            let config = self.content.write_bytes(&config_bytes)?;
            let mut layers = Vec::new();
            for l in item["Layers"].as_array().cloned().unwrap_or_default() {
                let lp = t.0.join(l.as_str().unwrap_or(""));
                let bytes_len = fs::metadata(&lp).ctx(io_path(&lp))?.len();
                let mut src = File::open(&lp).ctx(io_path(&lp))?;
                let mut hasher = crate::digest::HashWriter::new(io::sink());
                io::copy(&mut src, &mut hasher).ctx(io_path(&lp))?;
                let (_, digest) = hasher.finish();
                if !self.content.exists(&digest) {
                    let mut w = self.content.writer(&digest, Some(bytes_len))?;
                    io::copy(&mut File::open(&lp).ctx(io_path(&lp))?, &mut w).ctx(io_path(&lp))?;
                    w.commit()?;
                }
                let mut head = [0u8; 4];
                let n =
                    io::Read::read(&mut File::open(&lp).ctx(io_path(&lp))?, &mut head).unwrap_or(0);
                let mt = match crate::unpack::Compression::sniff(&head[..n]) {
                    crate::unpack::Compression::Gzip => {
                        "application/vnd.docker.image.rootfs.diff.tar.gzip"
                    }
                    crate::unpack::Compression::Zstd => {
                        "application/vnd.oci.image.layer.v1.tar+zstd"
                    }
                    crate::unpack::Compression::None => {
                        "application/vnd.docker.image.rootfs.diff.tar"
                    }
                };
                layers.push((digest, mt.to_owned(), bytes_len));
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
                    fs::copy(self.content.path(b), &target).ctx(io_path(&target))?;
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
