//! Pulling from OCI distribution registries: the hosts of a registry
//! (mirrors first, from hosts.toml) tried in order, credentials from the
//! caller or a docker config, layers downloaded in parallel and unpacked
//! as they arrive.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::hosts::RegistryHost;
use crate::reference::Reference;
use crate::registry::Endpoint;
use crate::stack::LayerStack;
use crate::store::{Image, ImageStore};
use crate::{Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Credentials for a pull.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token (CRI's `registry_token`).
    Bearer(String),
}

/// Bytes done of one layer's download.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub digest: String,
    pub done: u64,
    pub total: u64,
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

#[derive(Clone, Default)]
pub struct PullOptions {
    pub auth: Auth,
    /// The registry host `auth` is for (CRI's server_address); None: any.
    pub auth_host: Option<String>,
    pub progress: Option<ProgressFn>,
    /// Overrides the store's platform (`os/arch[/variant]`).
    pub platform: Option<String>,
}

pub fn default_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// The media type of a manifest or index document.
pub fn media_type_of_doc(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = v["mediaType"].as_str() {
        return Some(mt.to_owned());
    }
    // OCI documents may omit mediaType: tell them apart by shape.
    if v["manifests"].is_array() {
        Some(OCI_INDEX.into())
    } else if v["layers"].is_array() {
        Some(OCI_MANIFEST.into())
    } else {
        None
    }
}

/// The manifest for `platform` in an index (os/arch and, if asked, variant).
pub fn select_platform(index: &[u8], platform: &str) -> Result<Option<(Digest, String, u64)>> {
    let v: serde_json::Value =
        serde_json::from_slice(index).map_err(|e| crate::error::json_error("image index", &e))?;
    let mut want = platform.split('/');
    let (os, arch, variant) = (
        want.next().unwrap_or("linux"),
        want.next().unwrap_or("amd64"),
        want.next(),
    );
    let manifests = v["manifests"].as_array().cloned().unwrap_or_default();
    let candidates: Vec<&serde_json::Value> = manifests
        .iter()
        .filter(|m| {
            m["platform"]["os"].as_str() == Some(os)
                && m["platform"]["architecture"].as_str() == Some(arch)
        })
        .collect();
    let chosen = match variant {
        Some(var) => candidates
            .iter()
            .find(|m| m["platform"]["variant"].as_str() == Some(var))
            .copied(),
        None => candidates.first().copied(),
    };
    let Some(m) = chosen else { return Ok(None) };
    let digest = Digest::parse(m["digest"].as_str().unwrap_or(""))?;
    let size = descriptor_size(m, "image index", &digest)?;
    Ok(Some((
        digest,
        m["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_owned(),
        size,
    )))
}

/// The size a descriptor gives (required: sizes are checked like digests).
pub(crate) fn descriptor_size(
    desc: &serde_json::Value,
    what: &str,
    digest: &Digest,
) -> Result<u64> {
    desc["size"].as_u64().ok_or_else(|| Error::Parse {
        what: what.to_owned(),
        message: format!("the descriptor of {digest} has no valid size"),
    })
}

/// Refuses content whose size is not the one its descriptor gives.
pub(crate) fn check_size(digest: &Digest, expected: u64, actual: u64) -> Result<()> {
    if expected != actual {
        return Err(Error::SizeMismatch {
            digest: digest.to_string(),
            expected_size: expected,
            actual_size: actual,
        });
    }
    Ok(())
}

/// A layer as a manifest lists it: digest, media type, size.
pub type LayerDesc = (Digest, String, u64);

/// The config (digest, size) and layers a manifest lists.
pub fn manifest_parts(bytes: &[u8]) -> Result<((Digest, u64), Vec<LayerDesc>)> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| crate::error::json_error("image manifest", &e))?;
    if v["schemaVersion"].as_u64() != Some(2) {
        return Err(Error::UnsupportedMediaType(format!(
            "manifest schemaVersion {}",
            v["schemaVersion"]
        )));
    }
    let config_digest = Digest::parse(v["config"]["digest"].as_str().unwrap_or(""))?;
    let config_size = descriptor_size(&v["config"], "image manifest", &config_digest)?;
    let config = (config_digest, config_size);
    let mut layers = Vec::new();
    for l in v["layers"].as_array().cloned().unwrap_or_default() {
        let mt = l["mediaType"].as_str().unwrap_or("").to_owned();
        if crate::unpack::Compression::from_media_type(&mt).is_none() {
            return Err(Error::UnsupportedMediaType(mt));
        }
        let digest = Digest::parse(l["digest"].as_str().unwrap_or(""))?;
        let size = descriptor_size(&l, "image manifest", &digest)?;
        layers.push((digest, mt, size));
    }
    Ok((config, layers))
}

const MANIFEST_TYPES: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// The hosts one pull may use, in order, and the one that last worked.
struct Remote {
    endpoints: Vec<Endpoint>,
    preferred: AtomicUsize,
    /// `registry/repository`, for messages.
    name: String,
}

fn note_failure(host: &RegistryHost, what: &str, e: &Error) {
    log::warn!("{what} from {}: {e}; trying the next host", host.api_base());
}

impl Remote {
    /// Endpoints to try for `need`, the preferred one first.
    fn order(&self, need: impl Fn(&RegistryHost) -> bool) -> Vec<&Endpoint> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut v: Vec<(usize, &Endpoint)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| need(&e.host))
            .collect();
        v.sort_by_key(|(i, _)| (*i != first, *i));
        v.into_iter().map(|(_, e)| e).collect()
    }

    /// A manifest by tag (hosts that may resolve) or digest (hosts that
    /// may pull), verified against the digest when there is one.
    async fn manifest(
        &self,
        reference: &str,
        digest: Option<&Digest>,
    ) -> Result<(bytes::Bytes, Digest)> {
        let candidates: Vec<&Endpoint> = if digest.is_some() {
            self.order(|h| h.capabilities.pull)
        } else {
            self.endpoints
                .iter()
                .filter(|e| e.host.capabilities.resolve)
                .collect()
        };
        if candidates.is_empty() {
            return Err(Error::Config(format!(
                "no host may {} {reference}: check the capabilities in hosts.toml",
                if digest.is_some() { "pull" } else { "resolve" }
            )));
        }
        let mut errors = Vec::new();
        for ep in candidates {
            match ep.manifest(reference, MANIFEST_TYPES).await {
                Ok(bytes) => {
                    let actual = Digest::of(&bytes);
                    if let Some(d) = digest {
                        if *d != actual {
                            let e = Error::DigestMismatch {
                                expected: d.to_string(),
                                actual: actual.to_string(),
                            };
                            note_failure(&ep.host, "manifest", &e);
                            errors.push(format!("{}: {e}", ep.host.api_base()));
                            continue;
                        }
                    }
                    if let Some(i) = self.endpoints.iter().position(|x| std::ptr::eq(x, ep)) {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return Ok((bytes, actual));
                }
                Err(e) => {
                    note_failure(&ep.host, "manifest", &e);
                    errors.push(format!("{}: {e}", ep.host.api_base()));
                }
            }
        }
        let sep = if reference.contains(':') { "@" } else { ":" };
        let msg = format!(
            "fetching the manifest of {}{sep}{reference}: {}",
            self.name,
            errors.join("; ")
        );
        Err(if errors.iter().all(|e| e.contains("manifest unknown")) {
            Error::ManifestUnknown(msg)
        } else if errors.iter().all(|e| e.contains("unauthorized")) {
            Error::Unauthorized(msg)
        } else {
            Error::Registry(msg)
        })
    }

    async fn blob(&self, digest: &Digest) -> Result<reqwest::Response> {
        let mut errors = Vec::new();
        for ep in self.order(|h| h.capabilities.pull) {
            match ep.blob(digest.as_str()).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    note_failure(&ep.host, &format!("blob {digest}"), &e);
                    errors.push(format!("{}: {e}", ep.host.api_base()));
                }
            }
        }
        Err(Error::Registry(format!(
            "fetching blob {digest} of {}: {}",
            self.name,
            errors.join("; ")
        )))
    }
}

impl ImageStore {
    /// The credentials for one host: the caller's when they are for it,
    /// else the docker config's, else none.
    fn auth_for(&self, host: &RegistryHost, registry: &str, opts: &PullOptions) -> Result<Auth> {
        let explicit = !matches!(opts.auth, Auth::Anonymous);
        let for_host = match &opts.auth_host {
            None => true,
            Some(h) => {
                let h = h
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/');
                // As containerd: credentials for a server address go to that
                // host; the registry's own name also covers its server, not
                // its mirrors.
                h == host.host()
                    || (!host.mirror
                        && (h == registry || (registry == "docker.io" && h.ends_with("docker.io"))))
            }
        };
        if explicit && for_host {
            return Ok(opts.auth.clone());
        }
        if let Some(path) = &self.options().docker_config {
            for name in [host.host(), registry] {
                if let Some(a) = crate::credentials::lookup(path, name)? {
                    return Ok(a);
                }
            }
        }
        Ok(Auth::Anonymous)
    }

    fn remote(&self, r: &Reference, opts: &PullOptions) -> Result<Remote> {
        let hosts = self.options().hosts_config().hosts_for(&r.registry)?;
        let mut endpoints = Vec::new();
        for host in hosts {
            let auth = self.auth_for(&host, &r.registry, opts)?;
            endpoints.push(Endpoint::new(host, &r.registry, &r.repository, auth)?);
        }
        Ok(Remote {
            endpoints,
            preferred: AtomicUsize::new(0),
            name: format!("{}/{}", r.registry, r.repository),
        })
    }

    /// Pulls an image: manifest (chosen from an index by platform), config
    /// and layers (in parallel, retried, verified), unpacked into snapshots.
    pub async fn pull(self: &Arc<Self>, reference: &str, opts: &PullOptions) -> Result<Image> {
        let r = Reference::parse(reference)?;
        let remote = Arc::new(self.remote(&r, opts)?);
        let top = r
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .or_else(|| r.tag.clone())
            .unwrap_or_else(|| "latest".into());
        // Everything this pull writes is held against a concurrent gc (an
        // image removal) until its records are in (bench/soak: a pull
        // beside a RemoveImage of the same image lost its blobs).
        let mut lease = self.leased.lease();
        let (mut bytes, mut manifest_digest) = self
            .retry("the manifest", || remote.manifest(&top, r.digest.as_ref()))
            .await?;
        lease.hold(manifest_digest.as_str());
        if let Some(d) = &r.digest {
            if d != &manifest_digest {
                return Err(Error::DigestMismatch {
                    expected: d.to_string(),
                    actual: manifest_digest.to_string(),
                });
            }
        }
        let mut media_type = media_type_of_doc(&bytes)
            .ok_or_else(|| Error::UnsupportedMediaType("unknown manifest".into()))?;
        let mut index = None;
        if media_type == OCI_INDEX || media_type == DOCKER_LIST {
            let platform = opts
                .platform
                .clone()
                .unwrap_or_else(|| self.options().platform.clone());
            let (d, mt, size) =
                select_platform(&bytes, &platform)?.ok_or_else(|| Error::NoPlatform {
                    platform: platform.clone(),
                    reference: r.full(),
                })?;
            self.content.write_bytes(&bytes)?;
            index = Some(manifest_digest.clone());
            let (b, got) = self
                .retry("the platform manifest", || {
                    remote.manifest(d.as_str(), Some(&d))
                })
                .await?;
            if got != d {
                return Err(Error::DigestMismatch {
                    expected: d.to_string(),
                    actual: got.to_string(),
                });
            }
            lease.hold(got.as_str());
            check_size(&d, size, b.len() as u64)?;
            bytes = b;
            manifest_digest = got;
            media_type = media_type_of_doc(&bytes).unwrap_or(mt);
        }
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            return Err(Error::UnsupportedMediaType(media_type));
        }
        self.content.write_bytes(&bytes)?;
        let ((config, config_size), layers) = manifest_parts(&bytes)?;
        lease.hold(config.as_str());
        for (digest, _, _) in &layers {
            lease.hold(digest.as_str());
        }
        match self.content.size(&config) {
            Some(actual) => check_size(&config, config_size, actual)?,
            None => self.fetch_blob(&remote, &config, config_size, None).await?,
        }
        // A blob already here must have the size this manifest gives it.
        for (digest, _, size) in &layers {
            if let Some(actual) = self.content.size(digest) {
                check_size(digest, *size, actual)?;
            }
        }
        // Downloads run in parallel; each layer is unpacked as soon as it and
        // the layers below it are in.
        let semaphore = Arc::new(tokio::sync::Semaphore::new(
            self.options().max_concurrent_downloads.max(1),
        ));
        if let Some(p) = &opts.progress {
            // Every layer known from the start, so a progress display can
            // show the whole image before the first bytes arrive.
            for (digest, _, size) in &layers {
                p(&Progress {
                    digest: digest.to_string(),
                    done: 0,
                    total: *size,
                });
            }
        }
        let mut downloads = Vec::new();
        for (digest, _, size) in &layers {
            let store = Arc::clone(self);
            let remote = Arc::clone(&remote);
            let semaphore = Arc::clone(&semaphore);
            let progress = opts.progress.clone();
            let (digest, size) = (digest.clone(), *size);
            downloads.push(tokio::spawn(async move {
                if store.content.exists(&digest) {
                    if let Some(p) = &progress {
                        p(&Progress {
                            digest: digest.to_string(),
                            done: size,
                            total: size,
                        });
                    }
                    return Ok(());
                }
                let _permit = semaphore
                    .acquire()
                    .await
                    .map_err(|e| Error::Registry(e.to_string()))?;
                store
                    .fetch_blob(&remote, &digest, size, progress.as_ref())
                    .await
            }));
        }
        let names = vec![r.full()];
        let compressed = layers
            .iter()
            .fold(0u64, |sum, (_, _, s)| sum.saturating_add(*s));
        let records = self.prepare_records(
            &names,
            &manifest_digest,
            &media_type,
            index.as_ref(),
            &config,
            &layers,
        )?;
        for l in &records[0].layers {
            lease.hold(&l.chain_id);
        }
        // Each layer is unpacked as soon as its download is in, beside the
        // other layers' downloads and unpacks (as many at once as there
        // are CPUs), and recorded after the layers below it.
        let slots = std::thread::available_parallelism().map_or(1, usize::from);
        let stack = Arc::new(LayerStack::new(downloads.len(), slots));
        let mut unpacks = Vec::new();
        for (i, download) in downloads.into_iter().enumerate() {
            let store = Arc::clone(self);
            let layers = records[0].layers.clone();
            let stack = Arc::clone(&stack);
            unpacks.push(tokio::spawn(async move {
                let downloaded = download
                    .await
                    .map_err(|e| Error::Registry(format!("download task: {e}")))
                    .and_then(|r| r);
                if let Err(e) = downloaded {
                    stack.fail(i);
                    return Err(e);
                }
                let unpack = Arc::clone(&stack);
                tokio::task::spawn_blocking(move || {
                    unpack.run(i, || {
                        store.unpack_layer(&layers, i, compressed, Some(&unpack))
                    })
                })
                .await
                .map_err(|e| {
                    stack.fail(i);
                    Error::Registry(format!("unpack task: {e}"))
                })?
            }));
        }
        // Every layer's task ends (a failed layer fails those above it);
        // the lowest layer's error is the one reported.
        let mut first_error = None;
        for unpack in unpacks {
            let outcome = unpack
                .await
                .map_err(|e| Error::Registry(format!("layer task: {e}")))
                .and_then(|r| r);
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        self.meta.put_images(&records)?;
        self.status(&r.full())?
            .ok_or_else(|| Error::ImageNotFound(r.full()))
    }

    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let attempts = self.options().retries.max(1);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=attempts {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e @ Error::Registry(_))
                | Err(e @ Error::DigestMismatch { .. })
                | Err(e @ Error::SizeMismatch { .. })
                    if attempt < attempts =>
                {
                    log::warn!("fetching {what} (attempt {attempt}/{attempts}): {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("attempts >= 1")
    }

    /// Downloads one blob into the content store, verified, with retries.
    async fn fetch_blob(
        &self,
        remote: &Remote,
        digest: &Digest,
        size: u64,
        progress: Option<&ProgressFn>,
    ) -> Result<()> {
        self.retry(&format!("blob {digest}"), || async {
            let mut resp = remote.blob(digest).await?;
            let mut writer = self.content.writer(digest, Some(size))?;
            let mut last_report = 0u64;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| Error::Registry(format!("reading blob {digest}: {e}")))?
            {
                // More than the manifest says: refused now, not when the
                // disk is full.
                if writer.written() + chunk.len() as u64 > size {
                    return Err(Error::SizeMismatch {
                        digest: digest.to_string(),
                        expected_size: size,
                        actual_size: writer.written() + chunk.len() as u64,
                    });
                }
                writer.write_all(&chunk).map_err(|e| Error::Io {
                    context: format!("writing blob {digest}"),
                    source: e,
                })?;
                self.downloaded
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let done = writer.written();
                if let Some(p) = progress {
                    if done - last_report >= 1 << 20 || done == size {
                        last_report = done;
                        p(&Progress {
                            digest: digest.to_string(),
                            done,
                            total: size,
                        });
                    }
                }
            }
            let done = writer.written();
            writer.commit()?;
            if let Some(p) = progress {
                p(&Progress {
                    digest: digest.to_string(),
                    done,
                    total: size.max(done),
                });
            }
            Ok(())
        })
        .await
    }
}
