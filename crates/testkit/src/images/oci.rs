//! Image assembly: config, manifest and index JSON, and the four ways of
//! handing an image to the code under test (OCI layout directory,
//! oci-archive, `docker save` tarball, registry push).
//!
//! Two stages on purpose. An [`Image`] / [`Index`] is a description;
//! `build()` turns it into a [`BuiltImage`] / [`BuiltIndex`] whose blobs
//! (bytes, digest, media type) are public fields. A test that wants a broken
//! image edits those fields: blob bytes that no longer match their digest, a
//! wrong diff_id in the config, an odd media type... then calls
//! `refresh_manifest()` / `refresh_index()` if the change should be reflected
//! in the manifest (or doesn't, to make the manifest lie). The writers never
//! recompute a digest: a blob is stored under the digest it claims.
//!
//! ```ignore
//! let image = Image::new()
//!     .platform("linux/arm64/v8")
//!     .layer(Layer::new().dir("etc/").file("etc/hostname", "box\n"), Compression::Gzip)
//!     .entrypoint(&["/bin/sh", "-c"])
//!     .cmd(&["echo hi"])
//!     .env("FOO=bar")
//!     .expose("8080/tcp");
//! let artifact = image.artifact()?;
//! let digest = write_oci_layout(dir.path(), "v1", &artifact)?;
//! let pushed = registry.push("library/box", "v1", &artifact)?;
//! ```
//!
//! Over 800 lines: OCI/docker image fixtures (manifests, indexes, layers,
//! hostile variants) built byte by byte for the image and CRI tests.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::json;
use serde_json::{Map, Value};

use super::http::RegistryClient;
use super::tarball::{Compression, Entry, Layer};
use super::{err, sha256_digest};

// Adds what was being attempted to error messages.
use super::Context;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The annotation an OCI layout's index.json uses to name a tag.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Fixed so that configs, and so digests, are reproducible.
pub const DEFAULT_CREATED: &str = "2023-11-14T22:13:20Z";

/// Which family of media types an image or index uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Oci,
    /// Docker image manifest v2 schema 2 / manifest list.
    Docker,
}

impl Format {
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    pub fn config_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }

    pub fn layer_media_type(self, compression: Compression) -> &'static str {
        match self {
            Format::Oci => compression.oci_media_type(),
            Format::Docker => compression.docker_media_type(),
        }
    }
}

/// `os/architecture[/variant]`, e.g. `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`; panics on anything else, which can only be
    /// a typo in a test.
    pub fn parse(s: &str) -> Platform {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] => Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            },
            [os, arch, variant] => Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            },
            _ => panic!("platform {s:?} is not os/arch[/variant]"),
        }
    }

    /// The `platform` object of an index entry.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::parse("linux/amd64")
    }
}

/// The runtime-relevant parts of an image config (the `config` object) plus
/// the platform. Anything else goes through `patch`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageConfig {
    pub platform: Platform,
    pub created: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `"80/tcp"`, `"53/udp"`, ...
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub stop_signal: Option<String>,
    /// A JSON merge patch (RFC 7396) applied to the generated config last:
    /// add fields (`{"config": {"Healthcheck": ...}}`), remove them (`null`),
    /// or make the config invalid.
    pub patch: Option<Value>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            platform: Platform::default(),
            created: Some(DEFAULT_CREATED.to_string()),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            entrypoint: None,
            cmd: None,
            working_dir: None,
            user: None,
            exposed_ports: Vec::new(),
            volumes: Vec::new(),
            labels: Vec::new(),
            stop_signal: None,
            patch: None,
        }
    }
}

impl ImageConfig {
    /// The config JSON for an image whose uncompressed layers have `diff_ids`.
    pub fn to_json(&self, diff_ids: &[String]) -> Value {
        let mut c = Map::new();
        if let Some(user) = &self.user {
            c.insert("User".into(), json!(user));
        }
        if !self.exposed_ports.is_empty() {
            let ports: Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            c.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !self.env.is_empty() {
            c.insert("Env".into(), json!(self.env));
        }
        if let Some(ep) = &self.entrypoint {
            c.insert("Entrypoint".into(), json!(ep));
        }
        if let Some(cmd) = &self.cmd {
            c.insert("Cmd".into(), json!(cmd));
        }
        if !self.volumes.is_empty() {
            let vols: Map<String, Value> = self
                .volumes
                .iter()
                .map(|v| (v.clone(), json!({})))
                .collect();
            c.insert("Volumes".into(), Value::Object(vols));
        }
        if let Some(wd) = &self.working_dir {
            c.insert("WorkingDir".into(), json!(wd));
        }
        if !self.labels.is_empty() {
            let labels: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            c.insert("Labels".into(), Value::Object(labels));
        }
        if let Some(sig) = &self.stop_signal {
            c.insert("StopSignal".into(), json!(sig));
        }
        let mut v = json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": c,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": (0..diff_ids.len()).map(|i| {
                let mut h = json!({ "created_by": format!("berth-image test fixture, layer {}", i + 1) });
                if let Some(created) = &self.created {
                    h["created"] = json!(created);
                }
                h
            }).collect::<Vec<_>>(),
        });
        if let Some(variant) = &self.platform.variant {
            v["variant"] = json!(variant);
        }
        if let Some(created) = &self.created {
            v["created"] = json!(created);
        }
        if let Some(patch) = &self.patch {
            merge_patch(&mut v, patch);
        }
        v
    }
}

/// RFC 7396: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Content-addressed bytes with their media type. `digest` is what the blob
/// *claims*; [`Blob::new`] computes it, tests may overwrite either field.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("media_type", &self.media_type)
            .field("digest", &self.digest)
            .field("size", &self.bytes.len())
            .finish()
    }
}

impl Blob {
    pub fn new(media_type: impl Into<String>, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    /// Serialises `value` compactly (keys sorted, so bytes are reproducible).
    pub fn json(media_type: impl Into<String>, value: &Value) -> Blob {
        // Serialising a Value cannot fail: its keys are always strings.
        let bytes = serde_json::to_vec(value).unwrap_or_else(|e| panic!("serialising JSON: {e}"));
        Blob::new(media_type, bytes)
    }

    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// `{mediaType, digest, size}` as used in manifests and indexes.
    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }

    /// The blob's path inside an OCI layout: `blobs/<algorithm>/<hex>`.
    pub fn layout_path(&self) -> String {
        let (alg, hex) = self
            .digest
            .split_once(':')
            .unwrap_or(("sha256", &self.digest));
        format!("blobs/{alg}/{hex}")
    }

    pub fn parse_json(&self) -> io::Result<Value> {
        serde_json::from_slice(&self.bytes).context(|| format!("parsing blob {}", self.digest))
    }
}

/// A single-platform image description. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Image {
    pub format: Format,
    pub config: ImageConfig,
    pub layers: Vec<(Layer, Compression)>,
    /// Manifest annotations (OCI only; Docker manifests have none).
    pub annotations: Vec<(String, String)>,
}

impl Image {
    /// An empty OCI image for linux/amd64.
    pub fn new() -> Image {
        Image::default()
    }

    /// An empty Docker schema 2 image for linux/amd64.
    pub fn docker() -> Image {
        Image::new().format(Format::Docker)
    }

    pub fn format(mut self, format: Format) -> Image {
        self.format = format;
        self
    }

    /// `os/arch[/variant]`, written to the config (and the index entry).
    pub fn platform(mut self, platform: &str) -> Image {
        self.config.platform = Platform::parse(platform);
        self
    }

    pub fn layer(mut self, layer: Layer, compression: Compression) -> Image {
        self.layers.push((layer, compression));
        self
    }

    pub fn layers(
        mut self,
        layers: impl IntoIterator<Item = Layer>,
        compression: Compression,
    ) -> Image {
        self.layers
            .extend(layers.into_iter().map(|l| (l, compression)));
        self
    }

    /// Appends one `KEY=value` to Env (the default Env has PATH).
    pub fn env(mut self, kv: &str) -> Image {
        self.config.env.push(kv.to_string());
        self
    }

    pub fn entrypoint(mut self, argv: &[&str]) -> Image {
        self.config.entrypoint = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn cmd(mut self, argv: &[&str]) -> Image {
        self.config.cmd = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn working_dir(mut self, dir: &str) -> Image {
        self.config.working_dir = Some(dir.to_string());
        self
    }

    pub fn user(mut self, user: &str) -> Image {
        self.config.user = Some(user.to_string());
        self
    }

    /// `"8080/tcp"`.
    pub fn expose(mut self, port: &str) -> Image {
        self.config.exposed_ports.push(port.to_string());
        self
    }

    pub fn volume(mut self, path: &str) -> Image {
        self.config.volumes.push(path.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Image {
        self.config
            .labels
            .push((key.to_string(), value.to_string()));
        self
    }

    pub fn stop_signal(mut self, signal: &str) -> Image {
        self.config.stop_signal = Some(signal.to_string());
        self
    }

    /// See [`ImageConfig::patch`]; successive patches are merged.
    pub fn config_patch(mut self, patch: Value) -> Image {
        match &mut self.config.patch {
            Some(existing) => merge_patch(existing, &patch),
            None => self.config.patch = Some(patch),
        }
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Image {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    /// Renders every layer and the config, and the manifest over them.
    pub fn build(&self) -> io::Result<BuiltImage> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, (layer, compression)) in self.layers.iter().enumerate() {
            let tar = layer.to_tar();
            let compressed = compression
                .compress(&tar)
                .context(|| format!("layer {}", i + 1))?;
            layers.push(BuiltLayer {
                diff_id: sha256_digest(&tar),
                blob: Blob::new(self.format.layer_media_type(*compression), compressed),
                compression: *compression,
                tar,
            });
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config = Blob::json(
            self.format.config_media_type(),
            &self.config.to_json(&diff_ids),
        );
        let mut built = BuiltImage {
            format: self.format,
            platform: self.config.platform.clone(),
            config,
            layers,
            annotations: self.annotations.clone(),
            manifest: Blob::new(self.format.manifest_media_type(), Vec::new()),
        };
        built.refresh_manifest();
        Ok(built)
    }

    /// `build()` wrapped as an [`Artifact`] for the writers.
    pub fn artifact(&self) -> io::Result<Artifact> {
        Ok(Artifact::Image(self.build()?))
    }
}

/// One rendered layer.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// The (possibly compressed) blob the manifest points at.
    pub blob: Blob,
    /// The uncompressed tar; `docker save` archives carry this.
    pub tar: Vec<u8>,
    /// `sha256:` of `tar`, as listed in the config's rootfs.diff_ids.
    pub diff_id: String,
    pub compression: Compression,
}

/// A rendered image: every blob's bytes plus the manifest over them.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub format: Format,
    /// Where the image goes in an index (the config says the same, unless a
    /// test made them disagree).
    pub platform: Platform,
    pub config: Blob,
    pub layers: Vec<BuiltLayer>,
    pub annotations: Vec<(String, String)>,
    pub manifest: Blob,
}

impl BuiltImage {
    /// Re-renders `manifest` from the current config and layer descriptors
    /// (after a test changed them).
    pub fn refresh_manifest(&mut self) {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_media_type(),
            "config": self.config.descriptor(),
            "layers": self.layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            let a: Map<String, Value> = self
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            m["annotations"] = Value::Object(a);
        }
        self.manifest = Blob::json(self.format.manifest_media_type(), &m);
    }

    pub fn config_json(&self) -> io::Result<Value> {
        self.config.parse_json()
    }

    /// Replaces the config (e.g. after editing its JSON) and re-renders the
    /// manifest.
    pub fn set_config_json(&mut self, config: &Value) {
        self.config = Blob::json(self.config.media_type.clone(), config);
        self.refresh_manifest();
    }

    /// The manifest's entry in an index.
    pub fn index_descriptor(&self) -> Value {
        let mut d = self.manifest.descriptor();
        d["platform"] = self.platform.to_json();
        d
    }

    /// Config and layer blobs, in manifest order.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config)
            .chain(self.layers.iter().map(|l| &l.blob))
            .collect()
    }
}

/// A multi-platform image description (OCI index or Docker manifest list).
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub format: Format,
    pub images: Vec<Image>,
    pub annotations: Vec<(String, String)>,
}

impl Index {
    /// An empty OCI image index.
    pub fn new() -> Index {
        Index::default()
    }

    /// An empty Docker manifest list (give it [`Image::docker`] images).
    pub fn docker() -> Index {
        Index {
            format: Format::Docker,
            ..Index::default()
        }
    }

    /// Adds an image; its platform comes from its config.
    pub fn image(mut self, image: Image) -> Index {
        self.images.push(image);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Index {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    pub fn build(&self) -> io::Result<BuiltIndex> {
        let mut images = Vec::with_capacity(self.images.len());
        for (i, image) in self.images.iter().enumerate() {
            images.push(image.build().context(|| format!("index entry {i}"))?);
        }
        let mut built = BuiltIndex {
            format: self.format,
            images,
            annotations: self.annotations.clone(),
            index: Blob::new(self.format.index_media_type(), Vec::new()),
        };
        built.refresh_index();
        Ok(built)
    }

    pub fn artifact(&self) -> io::Result<Artifact> {
        Ok(Artifact::Index(self.build()?))
    }
}

/// A rendered index and all the images it lists.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    pub format: Format,
    pub images: Vec<BuiltImage>,
    pub annotations: Vec<(String, String)>,
    pub index: Blob,
}

impl BuiltIndex {
    /// Re-renders `index` from the images' current manifests.
    pub fn refresh_index(&mut self) {
        let mut v = json!({
            "schemaVersion": 2,
            "mediaType": self.format.index_media_type(),
            "manifests": self.images.iter().map(BuiltImage::index_descriptor).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            let a: Map<String, Value> = self
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            v["annotations"] = Value::Object(a);
        }
        self.index = Blob::json(self.format.index_media_type(), &v);
    }

    /// The image for `platform` (`"linux/arm64"`), if listed.
    pub fn image_for(&self, platform: &str) -> Option<&BuiltImage> {
        let p = Platform::parse(platform);
        self.images.iter().find(|i| i.platform == p)
    }
}

/// What a tag points at: one image or an index. The writers take this.
#[derive(Clone, Debug)]
pub enum Artifact {
    Image(BuiltImage),
    Index(BuiltIndex),
}

impl From<BuiltImage> for Artifact {
    fn from(i: BuiltImage) -> Artifact {
        Artifact::Image(i)
    }
}

impl From<BuiltIndex> for Artifact {
    fn from(i: BuiltIndex) -> Artifact {
        Artifact::Index(i)
    }
}

impl Artifact {
    /// The manifest or index blob a tag resolves to.
    pub fn top(&self) -> &Blob {
        match self {
            Artifact::Image(i) => &i.manifest,
            Artifact::Index(i) => &i.index,
        }
    }

    /// Digest of [`Artifact::top`].
    pub fn digest(&self) -> &str {
        &self.top().digest
    }

    pub fn images(&self) -> Vec<&BuiltImage> {
        match self {
            Artifact::Image(i) => vec![i],
            Artifact::Index(i) => i.images.iter().collect(),
        }
    }

    /// Every blob including manifests and the index, children before the
    /// manifests that reference them, each digest once.
    pub fn all_blobs(&self) -> Vec<&Blob> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for image in self.images() {
            for b in image.blobs().into_iter().chain([&image.manifest]) {
                if seen.insert(b.digest.as_str()) {
                    out.push(b);
                }
            }
        }
        // An index's bytes differ from every manifest's, so no check needed.
        if let Artifact::Index(i) = self {
            out.push(&i.index);
        }
        out
    }

    /// Pushes blobs, then child manifests by digest, then the top manifest
    /// by `tag`; returns the registry's digest for it.
    pub fn push(&self, client: &RegistryClient, repo: &str, tag: &str) -> io::Result<String> {
        for image in self.images() {
            for blob in image.blobs() {
                client
                    .push_blob(repo, &blob.digest, &blob.bytes)
                    .context(|| format!("pushing {repo}:{tag}"))?;
            }
            if let Artifact::Index(_) = self {
                client
                    .put_manifest(
                        repo,
                        &image.manifest.digest,
                        &image.manifest.media_type,
                        &image.manifest.bytes,
                    )
                    .context(|| format!("pushing {repo}:{tag} ({})", image.platform))?;
            }
        }
        let top = self.top();
        client
            .put_manifest(repo, tag, &top.media_type, &top.bytes)
            .context(|| format!("pushing {repo}:{tag}"))
    }
}

/// An OCI image layout being assembled in memory: blobs by path plus the
/// entries of index.json. Shared by the directory and archive writers.
#[derive(Clone, Debug, Default)]
struct LayoutContents {
    blobs: BTreeMap<String, Vec<u8>>,
    manifests: Vec<Value>,
}

impl LayoutContents {
    fn add(&mut self, tag: Option<&str>, artifact: &Artifact) -> String {
        for blob in artifact.all_blobs() {
            self.blobs
                .entry(blob.layout_path())
                .or_insert_with(|| blob.bytes.clone());
        }
        let mut entry = artifact.top().descriptor();
        if let Some(tag) = tag {
            entry["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
        }
        if let Artifact::Image(i) = artifact {
            entry["platform"] = i.platform.to_json();
        }
        self.manifests.push(entry);
        artifact.digest().to_string()
    }

    /// (relative path, contents) of every file, `oci-layout` and
    /// `index.json` first.
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": self.manifests,
        });
        let mut files = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (
                "index.json".to_string(),
                Blob::json(OCI_INDEX, &index).bytes,
            ),
        ];
        files.extend(self.blobs.iter().map(|(p, b)| (p.clone(), b.clone())));
        files
    }
}

/// An OCI image layout directory that can hold several tags.
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
    contents: LayoutContents,
}

impl OciLayout {
    /// Creates (or takes over) `dir` as an empty layout.
    pub fn create(dir: &Path) -> io::Result<OciLayout> {
        let layout = OciLayout {
            dir: dir.to_path_buf(),
            contents: LayoutContents::default(),
        };
        layout.flush()?;
        Ok(layout)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds `artifact` (its blobs, and an index.json entry named `tag` if
    /// given); returns its manifest or index digest.
    pub fn add(&mut self, tag: Option<&str>, artifact: &Artifact) -> io::Result<String> {
        let digest = self.contents.add(tag, artifact);
        self.flush()?;
        Ok(digest)
    }

    fn flush(&self) -> io::Result<()> {
        fs::create_dir_all(self.dir.join("blobs/sha256"))
            .context(|| format!("creating {}/blobs/sha256", self.dir.display()))?;
        for (rel, bytes) in self.contents.files() {
            let path = self.dir.join(&rel);
            if rel.starts_with("blobs/") && path.exists() {
                continue;
            }
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
            }
            fs::write(&path, bytes).context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Writes `artifact` as an OCI layout in `dir` (created if missing), with
/// index.json naming it `tag`; returns its manifest or index digest.
/// Use as `oci:DIR:TAG` with skopeo, `DIR:TAG` with umoci.
pub fn write_oci_layout(dir: &Path, tag: &str, artifact: &Artifact) -> io::Result<String> {
    OciLayout::create(dir)?.add(Some(tag), artifact)
}

/// Writes the same layout as [`write_oci_layout`] into a tar file at `path`
/// (an `oci-archive:`); returns the manifest or index digest.
pub fn write_oci_archive(path: &Path, tag: &str, artifact: &Artifact) -> io::Result<String> {
    let mut contents = LayoutContents::default();
    let digest = contents.add(Some(tag), artifact);
    let mut tar = Layer::new().dir("blobs/").dir("blobs/sha256/");
    for (rel, bytes) in contents.files() {
        tar = tar.entry(Entry::file(rel, bytes));
    }
    fs::write(path, tar.to_tar()).context(|| format!("writing {}", path.display()))?;
    Ok(digest)
}

/// Writes a `docker save` tarball of one image: `manifest.json`
/// (`[{Config, RepoTags, Layers}]`), the config as `<hex>.json`, and each
/// layer *uncompressed* as `<diff_id hex>/layer.tar`, as docker does.
/// `repo_tags` are like `"busybox:latest"`. Returns the image ID (the config
/// digest), which is what docker calls the image.
pub fn write_docker_archive(
    path: &Path,
    repo_tags: &[&str],
    image: &BuiltImage,
) -> io::Result<String> {
    if let Some(bad) = repo_tags.iter().find(|t| !t.contains(':')) {
        return Err(err(format!("docker archive tag {bad:?} is not repo:tag")));
    }
    let config_hex = image
        .config
        .digest
        .split_once(':')
        .map(|(_, h)| h)
        .unwrap_or(&image.config.digest);
    let config_name = format!("{config_hex}.json");
    let mut tar = Layer::new().entry(Entry::file(&config_name, &image.config.bytes));
    let mut layer_paths = Vec::new();
    let mut written = std::collections::HashSet::new();
    for layer in &image.layers {
        let hex = layer.diff_id.trim_start_matches("sha256:");
        let rel = format!("{hex}/layer.tar");
        if written.insert(rel.clone()) {
            tar = tar
                .dir(format!("{hex}/"))
                .entry(Entry::file(format!("{hex}/VERSION"), "1.0"))
                .entry(Entry::file(&rel, &layer.tar));
        }
        layer_paths.push(rel);
    }
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": layer_paths,
    }]);
    let manifest = serde_json::to_vec(&manifest).context(|| "serialising manifest.json".into())?;
    tar = tar.entry(Entry::file("manifest.json", manifest));
    fs::write(path, tar.to_tar()).context(|| format!("writing {}", path.display()))?;
    Ok(image.config.digest.clone())
}
