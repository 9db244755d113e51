//! The image store: content, snapshots and metadata under one root.
//!
//! Over 800 lines: the image store's one type: open, pull, import and GC
//! share its locks and metadata tables; one layer's unpack into its snapshot
//! lives in store/layer.rs, the tar applier in unpack/.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::content::ContentStore;
use crate::digest::{chain_ids, Digest};
use crate::error::{io_path, Context};
use crate::lease::Leases;
use crate::metadata::{ActiveRecord, ImageRecord, LayerRecord, Metadata, SnapshotRecord};
use crate::pull::LayerDesc;
use crate::reference::Reference;
use crate::stack::Claims;
use crate::unpack::UnpackLimits;
use crate::{Error, Result};

mod layer;

/// What the image config says about how to run the image.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImageConfig {
    pub user: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub architecture: String,
    pub os: String,
}

/// An image as callers see it: identified by its config digest.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Image {
    /// The config digest (`sha256:…`).
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Bytes of the image's blobs (compressed layers, config, manifest).
    pub size: u64,
    pub config: ImageConfig,
    pub manifest_digest: String,
}

/// Disk used by images: what CRI's ImageFsInfo reports.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct FsUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GcStats {
    pub blobs: usize,
    pub snapshots: usize,
}

/// An overlayfs mount for a container rootfs.
#[derive(Debug, Clone, PartialEq)]
pub struct RootfsMount {
    /// Top layer first.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
}

impl RootfsMount {
    /// The overlay mount options (`lowerdir=…,upperdir=…,workdir=…`).
    pub fn options(&self) -> String {
        let lower: Vec<String> = self
            .lowerdirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upperdir.display(),
            self.workdir.display()
        )
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Registries reached over plain http (localhost always is).
    pub insecure_registries: Vec<String>,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Attempts per blob on transient failures.
    pub retries: u32,
    /// `os/arch[/variant]` chosen from image indexes.
    pub platform: String,
    /// containerd's `certs.d` directory of hosts.toml files.
    pub hosts_dir: Option<PathBuf>,
    /// Mirrors by registry, the simple inline form (tried before the
    /// registry when no hosts.toml covers it).
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// A docker config.json with credentials.
    pub docker_config: Option<PathBuf>,
    /// Bounds on unpacked sizes and the free space kept (decompression
    /// bombs); [`ImageStore::set_unpack_limits`] changes them later.
    pub unpack_limits: UnpackLimits,
}

impl StoreOptions {
    pub fn hosts_config(&self) -> crate::hosts::HostsConfig {
        crate::hosts::HostsConfig {
            config_path: self.hosts_dir.clone(),
            mirrors: self.mirrors.clone(),
            insecure: self.insecure_registries.clone(),
        }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            insecure_registries: Vec::new(),
            max_concurrent_downloads: 3,
            retries: 3,
            platform: crate::pull::default_platform(),
            hosts_dir: None,
            mirrors: Default::default(),
            docker_config: None,
            unpack_limits: UnpackLimits::default(),
        }
    }
}

pub struct ImageStore {
    pub(crate) root: PathBuf,
    pub(crate) content: ContentStore,
    pub(crate) meta: Metadata,
    pub(crate) options: StoreOptions,
    /// Held by gc, and by an unpack while it records a snapshot (two pulls
    /// of images sharing a chain unpack it once through `claims`).
    pub(crate) unpack_lock: Mutex<()>,
    /// Chains being unpacked.
    claims: Claims,
    unpack_limits: Mutex<UnpackLimits>,
    /// Bytes received from registries for blobs, retries included.
    pub(crate) downloaded: std::sync::atomic::AtomicU64,
    /// Blobs and chains that pulls under way hold against gc.
    pub(crate) leased: Leases,
}

/// Creates `dir` (its parents as usual) readable by root only, and makes
/// an existing one (from an older version) so: image contents hold setuid
/// binaries and secrets, which no other user may reach.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).ctx(io_path(parent))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).ctx(io_path(dir)),
    }
    let meta = fs::metadata(dir).ctx(io_path(dir))?;
    if !meta.is_dir() {
        return Err(Error::Io {
            context: dir.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    if meta.permissions().mode() & 0o7777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).ctx(io_path(dir))?;
    }
    Ok(())
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ImageStore {
    /// Bytes this store has received from registries (blob bodies, retries
    /// included; blobs already present cost nothing) since it was opened.
    pub fn downloaded_bytes(&self) -> u64 {
        self.downloaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens (creating) a store under `root`, cleaning up what a crash left.
    /// The root, `snapshots/`, `tmp/`, the content store and the metadata
    /// db are root-only (0700 directories, 0600 files).
    pub fn open(root: &Path, options: StoreOptions) -> Result<ImageStore> {
        private_dir(root)?;
        private_dir(&root.join("snapshots"))?;
        private_dir(&root.join("tmp"))?;
        let content = ContentStore::open(&root.join("content"))?;
        let meta = Metadata::open(&root.join("metadata.redb"))?;
        let store = ImageStore {
            root: root.to_owned(),
            content,
            meta,
            unpack_limits: Mutex::new(options.unpack_limits),
            options,
            unpack_lock: Mutex::new(()),
            claims: Claims::default(),
            downloaded: Default::default(),
            leased: Leases::default(),
        };
        store.remove_orphan_snapshots()?;
        Ok(store)
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The bounds unpacking works within now.
    pub fn unpack_limits(&self) -> UnpackLimits {
        *self.unpack_limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the bounds on unpacked sizes and the free space kept, for
    /// the unpacks that start from now on.
    pub fn set_unpack_limits(&self, limits: UnpackLimits) {
        *self.unpack_limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// A new snapshot directory (0700) with the given subdirectories.
    fn create_snapshot_dir(&self, id: u64, subdirs: &[&str]) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.snapshot_dir(id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .ctx(io_path(&dir))?;
        for sub in subdirs {
            let mode = if *sub == "work" { 0o700 } else { 0o755 };
            let path = dir.join(sub);
            if let Err(e) = fs::DirBuilder::new().mode(mode).create(&path) {
                let _ = remove_all(&dir);
                return Err(e).ctx(io_path(&path));
            }
        }
        Ok(dir)
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Snapshot directories with no record: a crash between unpacking and
    /// recording, or during removal.
    fn remove_orphan_snapshots(&self) -> Result<()> {
        let known: BTreeSet<u64> = self
            .meta
            .snapshots()?
            .iter()
            .map(|(_, s)| s.id)
            .chain(self.meta.actives()?.iter().map(|(_, a)| a.id))
            .collect();
        let dir = self.root.join("snapshots");
        for e in fs::read_dir(&dir).ctx(io_path(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = name.parse::<u64>().is_ok_and(|id| known.contains(&id));
            if !keep {
                remove_all(&e.path())?;
            }
        }
        Ok(())
    }

    /// The fs directories of a chain, top first.
    fn lower_dirs(&self, chain: &str) -> Result<Vec<PathBuf>> {
        Ok(self.chain(chain)?.0)
    }

    /// The fs directories of a chain, top first, and the bytes they hold.
    fn chain(&self, chain: &str) -> Result<(Vec<PathBuf>, u64)> {
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut next = Some(chain.to_owned());
        while let Some(c) = next {
            let rec = self
                .meta
                .snapshot(&c)?
                .ok_or_else(|| Error::SnapshotNotFound(c.clone()))?;
            out.push(self.snapshot_dir(rec.id).join("fs"));
            size = size.saturating_add(rec.size);
            next = rec.parent;
        }
        Ok((out, size))
    }

    /// Unpacks every layer of `layers` (in order) and records the image names.
    pub(crate) fn unpack_and_record(
        &self,
        names: &[String],
        manifest: &Digest,
        manifest_media_type: &str,
        index: Option<&Digest>,
        config: &Digest,
        layers: &[LayerDesc],
    ) -> Result<()> {
        let records =
            self.prepare_records(names, manifest, manifest_media_type, index, config, layers)?;
        let compressed = records[0]
            .layers
            .iter()
            .fold(0u64, |sum, l| sum.saturating_add(l.size));
        // One layer after the other, each on the recorded ones below it;
        // held against gc (which no longer waits for a whole unpack).
        let mut lease = self.leased.lease();
        for l in &records[0].layers {
            lease.hold(&l.chain_id);
        }
        for i in 0..records[0].layers.len() {
            self.unpack_layer(&records[0].layers, i, compressed, None)?;
        }
        self.meta.put_images(&records)
    }

    /// The records naming an image, with chain ids from the config's diff ids.
    pub(crate) fn prepare_records(
        &self,
        names: &[String],
        manifest: &Digest,
        manifest_media_type: &str,
        index: Option<&Digest>,
        config: &Digest,
        layers: &[LayerDesc],
    ) -> Result<Vec<ImageRecord>> {
        let config_bytes = self.content.read(config)?;
        let diff_ids = diff_ids(&config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(Error::Parse {
                what: format!("image config {config}"),
                message: format!("{} diff ids for {} layers", diff_ids.len(), layers.len()),
            });
        }
        let chains = chain_ids(&diff_ids);
        let layer_records: Vec<LayerRecord> = layers
            .iter()
            .zip(diff_ids.iter().zip(chains.iter()))
            .map(|((d, mt, size), (diff, chain))| LayerRecord {
                digest: d.to_string(),
                media_type: mt.clone(),
                size: *size,
                diff_id: diff.to_string(),
                chain_id: chain.to_string(),
            })
            .collect();
        let size = layers.iter().map(|(_, _, s)| s).sum::<u64>()
            + config_bytes.len() as u64
            + self.content.size(manifest).unwrap_or(0);
        Ok(names
            .iter()
            .map(|name| ImageRecord {
                name: name.clone(),
                manifest_digest: manifest.to_string(),
                manifest_media_type: manifest_media_type.to_owned(),
                index_digest: index.map(|d| d.to_string()),
                config_digest: config.to_string(),
                layers: layer_records.clone(),
                size,
                created: now(),
            })
            .collect())
    }

    fn to_image(&self, records: &[ImageRecord]) -> Result<Image> {
        let first = &records[0];
        let mut repo_tags = Vec::new();
        let mut repo_digests = BTreeSet::new();
        for r in records {
            if let Ok(reference) = Reference::parse(&r.name) {
                if reference.digest.is_none() {
                    repo_tags.push(reference.full());
                }
                let digest = r.index_digest.as_deref().unwrap_or(&r.manifest_digest);
                if let Ok(d) = Digest::parse(digest) {
                    repo_digests.insert(reference.with_digest(&d));
                }
            }
        }
        repo_tags.sort();
        let config = parse_config(&self.content.read(&Digest::parse(&first.config_digest)?)?)?;
        Ok(Image {
            id: first.config_digest.clone(),
            repo_tags,
            repo_digests: repo_digests.into_iter().collect(),
            size: first.size,
            config,
            manifest_digest: first.manifest_digest.clone(),
        })
    }

    /// Every image, one per config digest.
    pub fn list(&self) -> Result<Vec<Image>> {
        let mut by_id: BTreeMap<String, Vec<ImageRecord>> = BTreeMap::new();
        for (_, r) in self.meta.images()? {
            by_id.entry(r.config_digest.clone()).or_default().push(r);
        }
        by_id.values().map(|rs| self.to_image(rs)).collect()
    }

    /// The records an image reference or id designates.
    fn records_for(&self, reference_or_id: &str) -> Result<Vec<ImageRecord>> {
        let all = self.meta.images()?;
        // An id (config digest), full or as an unambiguous hex prefix.
        let id_hex = reference_or_id
            .strip_prefix("sha256:")
            .unwrap_or(reference_or_id);
        if id_hex.len() >= 12 && id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matching: Vec<ImageRecord> = all
                .iter()
                .filter(|(_, r)| r.config_digest["sha256:".len()..].starts_with(id_hex))
                .map(|(_, r)| r.clone())
                .collect();
            let ids: BTreeSet<&str> = matching.iter().map(|r| r.config_digest.as_str()).collect();
            if ids.len() == 1 {
                return Ok(matching);
            }
        }
        let reference = Reference::parse(reference_or_id)?;
        let full = reference.full();
        if let Some(r) = all.iter().find(|(n, _)| *n == full) {
            return Ok(vec![r.1.clone()]);
        }
        // name@digest matches a record whose manifest or index is that digest.
        if let Some(d) = &reference.digest {
            let name = reference.name();
            let found: Vec<ImageRecord> = all
                .iter()
                .filter(|(_, r)| {
                    Reference::parse(&r.name).is_ok_and(|rr| rr.name() == name)
                        && (r.manifest_digest == d.as_str()
                            || r.index_digest.as_deref() == Some(d.as_str()))
                })
                .map(|(_, r)| r.clone())
                .collect();
            if !found.is_empty() {
                return Ok(found);
            }
        }
        Ok(Vec::new())
    }

    /// The image a reference or id designates; `None` if absent.
    pub fn status(&self, reference_or_id: &str) -> Result<Option<Image>> {
        let records = self.records_for(reference_or_id)?;
        if records.is_empty() {
            return Ok(None);
        }
        // Report every name of the image, not only the one asked for.
        let id = records[0].config_digest.clone();
        let all: Vec<ImageRecord> = self
            .meta
            .images()?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.config_digest == id)
            .collect();
        self.to_image(&all).map(Some)
    }

    /// Removes an image: by name that name, by id every name. Idempotent.
    /// Frees the blobs and snapshots nothing else uses.
    pub fn remove(&self, reference_or_id: &str) -> Result<()> {
        let id_like = {
            let h = reference_or_id
                .strip_prefix("sha256:")
                .unwrap_or(reference_or_id);
            h.len() >= 12 && h.bytes().all(|b| b.is_ascii_hexdigit())
        };
        let records = self.records_for(reference_or_id)?;
        let names: Vec<String> = if id_like {
            let ids: BTreeSet<String> = records.iter().map(|r| r.config_digest.clone()).collect();
            self.meta
                .images()?
                .into_iter()
                .filter(|(_, r)| ids.contains(&r.config_digest))
                .map(|(n, _)| n)
                .collect()
        } else {
            records.iter().map(|r| r.name.clone()).collect()
        };
        if !names.is_empty() {
            self.meta.delete_images(&names)?;
        }
        self.gc()?;
        Ok(())
    }

    /// Deletes blobs and snapshots that no image, no rootfs and no pull
    /// under way references.
    pub fn gc(&self) -> Result<GcStats> {
        let _guard = self.unpack_lock.lock().unwrap_or_else(|e| e.into_inner());
        let leased = self.leased.held();
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        let mut chains: BTreeSet<String> = BTreeSet::new();
        for (_, r) in self.meta.images()? {
            blobs.insert(r.manifest_digest.clone());
            blobs.insert(r.config_digest.clone());
            if let Some(i) = &r.index_digest {
                blobs.insert(i.clone());
            }
            for l in &r.layers {
                blobs.insert(l.digest.clone());
            }
            if let Some(top) = r.layers.last() {
                chains.insert(top.chain_id.clone());
            }
        }
        for (_, a) in self.meta.actives()? {
            chains.insert(a.parent.clone());
        }
        blobs.extend(leased.iter().cloned());
        chains.extend(leased.iter().cloned());
        // Every ancestor of a live chain is live.
        let snapshots: BTreeMap<String, SnapshotRecord> =
            self.meta.snapshots()?.into_iter().collect();
        let mut live: BTreeSet<String> = BTreeSet::new();
        for c in chains {
            let mut next = Some(c);
            while let Some(c) = next {
                if !live.insert(c.clone()) {
                    break;
                }
                next = snapshots.get(&c).and_then(|s| s.parent.clone());
            }
        }
        // A pull may hold a key after `leased` was read: each removal checks
        // the holds again, atomically with it.
        let mut stats = GcStats::default();
        for (chain, rec) in &snapshots {
            if !live.contains(chain)
                && self.leased.remove_unheld(chain, || {
                    self.meta.delete_snapshot(chain)?;
                    remove_all(&self.snapshot_dir(rec.id))
                })?
            {
                stats.snapshots += 1;
            }
        }
        for d in self.content.list()? {
            if !blobs.contains(d.as_str())
                && self
                    .leased
                    .remove_unheld(d.as_str(), || self.content.delete(&d))?
            {
                stats.blobs += 1;
            }
        }
        Ok(stats)
    }

    /// Bytes and inodes of blobs and snapshots.
    pub fn fs_usage(&self) -> Result<FsUsage> {
        let (bytes, files) = self.content.usage()?;
        let mut usage = FsUsage {
            bytes,
            inodes: files,
        };
        for (_, s) in self.meta.snapshots()? {
            usage.bytes += s.size;
            usage.inodes += s.inodes;
        }
        Ok(usage)
    }

    /// Creates a container rootfs: the image's layers under a new writable
    /// upper directory. `key` names it (a container id).
    pub fn prepare_rootfs(&self, image: &str, key: &str) -> Result<RootfsMount> {
        if self.meta.active(key)?.is_some() {
            return Err(Error::RootfsExists(key.to_owned()));
        }
        let records = self.records_for(image)?;
        let record = records
            .first()
            .ok_or_else(|| Error::ImageNotFound(image.to_owned()))?;
        let top = record.layers.last().ok_or_else(|| Error::Parse {
            what: format!("image {image}"),
            message: "it has no layers".into(),
        })?;
        let lowerdirs = self.lower_dirs(&top.chain_id)?;
        let id = self.meta.next_id()?;
        let dir = self.create_snapshot_dir(id, &["fs", "work"])?;
        self.meta.put_active(
            key,
            &ActiveRecord {
                id,
                parent: top.chain_id.clone(),
            },
        )?;
        Ok(RootfsMount {
            lowerdirs,
            upperdir: dir.join("fs"),
            workdir: dir.join("work"),
        })
    }

    /// The mount of an existing rootfs.
    pub fn rootfs(&self, key: &str) -> Result<Option<RootfsMount>> {
        let Some(a) = self.meta.active(key)? else {
            return Ok(None);
        };
        let dir = self.snapshot_dir(a.id);
        Ok(Some(RootfsMount {
            lowerdirs: self.lower_dirs(&a.parent)?,
            upperdir: dir.join("fs"),
            workdir: dir.join("work"),
        }))
    }

    /// Mounts an existing rootfs at `target` (overlayfs).
    pub fn mount_rootfs(&self, key: &str, target: &Path) -> Result<()> {
        let m = self
            .rootfs(key)?
            .ok_or_else(|| Error::SnapshotNotFound(key.to_owned()))?;
        mount_overlay(&m, target)
    }

    /// Removes a rootfs (unmount it first): frees its upper layer. Idempotent.
    pub fn remove_rootfs(&self, key: &str) -> Result<()> {
        let Some(a) = self.meta.active(key)? else {
            return Ok(());
        };
        self.meta.delete_active(key)?;
        remove_all(&self.snapshot_dir(a.id))
    }
}

/// Mounts an overlay rootfs, with paths relative to the snapshots directory
/// when the options would not fit in a page (many layers).
pub fn mount_overlay(m: &RootfsMount, target: &Path) -> Result<()> {
    mount_overlay_with(m, target, rustix::mount::MountFlags::empty())
}

/// Mounts a rootfs as an image volume: read-only, and nothing in it runs
/// or elevates (noexec, nosuid, nodev), as Kubernetes defines them.
pub fn mount_overlay_volume(m: &RootfsMount, target: &Path) -> Result<()> {
    use rustix::mount::MountFlags;
    mount_overlay_with(
        m,
        target,
        MountFlags::RDONLY | MountFlags::NOEXEC | MountFlags::NOSUID | MountFlags::NODEV,
    )
}

/// Mounts a rootfs for a user-namespaced pod, as containerd 2 does: the
/// image layers are shown through `userns`'s mappings (overlayfs takes
/// id-mapped lower layers from Linux 5.19; it cannot itself be id-mapped,
/// and an id-mapped upper layer would refuse the mounter's writes), so the
/// pod's root owns the image's root-owned files with no chown of a layer;
/// the upper layer, new and empty, is given to the pod's root (`root`:
/// its host uid and gid), and what the pod writes is stored with its host
/// ids. The lower layers share one id-mapped clone of their common
/// directory, attached on `scratch` (made and removed here) only while
/// the overlay is mounted.
pub fn mount_overlay_idmapped(
    m: &RootfsMount,
    target: &Path,
    userns: std::os::fd::BorrowedFd<'_>,
    root: (u32, u32),
    scratch: &Path,
) -> Result<()> {
    rustix::fs::chown(
        &m.upperdir,
        Some(rustix::fs::Uid::from_raw(root.0)),
        Some(rustix::fs::Gid::from_raw(root.1)),
    )
    .ctx(|| format!("giving {} to the pod's root", m.upperdir.display()))?;
    mount_on_idmapped_layers(
        m,
        target,
        userns,
        scratch,
        rustix::mount::MountFlags::empty(),
    )
}

/// [`mount_overlay_volume`] for a user-namespaced pod: the image's layers
/// shown through `userns`'s mappings (see [`mount_overlay_idmapped`]).
pub fn mount_overlay_volume_idmapped(
    m: &RootfsMount,
    target: &Path,
    userns: std::os::fd::BorrowedFd<'_>,
    scratch: &Path,
) -> Result<()> {
    use rustix::mount::MountFlags;
    mount_on_idmapped_layers(
        m,
        target,
        userns,
        scratch,
        MountFlags::RDONLY | MountFlags::NOEXEC | MountFlags::NOSUID | MountFlags::NODEV,
    )
}

fn mount_on_idmapped_layers(
    m: &RootfsMount,
    target: &Path,
    userns: std::os::fd::BorrowedFd<'_>,
    scratch: &Path,
    flags: rustix::mount::MountFlags,
) -> Result<()> {
    let Some(first) = m.lowerdirs.first() else {
        return mount_overlay_with(m, target, flags);
    };
    let mut common = first.parent().unwrap_or(Path::new("/")).to_path_buf();
    for dir in &m.lowerdirs {
        while !dir.starts_with(&common) {
            common = common.parent().unwrap_or(Path::new("/")).to_path_buf();
        }
    }
    let tree = berth_common::idmapped::idmapped_clone(&common, userns)
        .ctx(|| format!("id-mapping the layers under {}", common.display()))?;
    fs::create_dir_all(scratch).ctx(io_path(scratch))?;
    let mapped = (|| {
        berth_common::idmapped::attach(&tree, scratch)
            .ctx(|| format!("attaching id-mapped layers on {}", scratch.display()))?;
        let mapped = RootfsMount {
            lowerdirs: m
                .lowerdirs
                .iter()
                .map(|p| scratch.join(p.strip_prefix(&common).unwrap_or(p)))
                .collect(),
            upperdir: m.upperdir.clone(),
            workdir: m.workdir.clone(),
        };
        let mounted = mount_overlay_with(&mapped, target, flags);
        // The overlay keeps private clones of its layers: the attached
        // tree is needed only while it is mounted.
        let _ = rustix::mount::unmount(scratch, rustix::mount::UnmountFlags::DETACH);
        mounted
    })();
    let _ = fs::remove_dir(scratch);
    mapped
}

fn mount_overlay_with(
    m: &RootfsMount,
    target: &Path,
    flags: rustix::mount::MountFlags,
) -> Result<()> {
    let options = m.options();
    let c = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| Error::Parse {
            what: "mount options".into(),
            message: "NUL byte".into(),
        })
    };
    let target_c = c(&target.display().to_string())?;
    let data = c(&options)?;
    if options.len() < 4000 {
        return rustix::mount::mount(
            c"overlay",
            target_c.as_c_str(),
            c"overlay",
            flags,
            Some(data.as_c_str()),
        )
        .ctx(|| format!("mounting the rootfs on {}", target.display()));
    }
    Err(Error::Parse {
        what: "rootfs".into(),
        message: format!(
            "{} layers make overlay options longer than a page",
            m.lowerdirs.len()
        ),
    })
}

pub(crate) fn remove_all(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx(io_path(path)),
    }
}

/// The diff ids from an image config.
pub(crate) fn diff_ids(config: &[u8]) -> Result<Vec<Digest>> {
    let v: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| crate::error::json_error("image config", &e))?;
    v["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| Error::Parse {
            what: "image config".into(),
            message: "rootfs.diff_ids is missing".into(),
        })?
        .iter()
        .map(|d| Digest::parse(d.as_str().unwrap_or("")))
        .collect()
}

pub(crate) fn parse_config(bytes: &[u8]) -> Result<ImageConfig> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| crate::error::json_error("image config", &e))?;
    let c = &v["config"];
    let strings = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let keys = |x: &serde_json::Value| -> Vec<String> {
        x.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let opt = |x: &serde_json::Value| x.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    Ok(ImageConfig {
        user: opt(&c["User"]),
        env: strings(&c["Env"]),
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        working_dir: opt(&c["WorkingDir"]),
        exposed_ports: keys(&c["ExposedPorts"]),
        volumes: keys(&c["Volumes"]),
        labels: c["Labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
        stop_signal: opt(&c["StopSignal"]),
        architecture: v["architecture"].as_str().unwrap_or("").to_owned(),
        os: v["os"].as_str().unwrap_or("").to_owned(),
    })
}
