//! Registry hosts: where a registry's content is fetched from, in
//! containerd's `certs.d` layout. `<config_path>/<registry>/hosts.toml`
//! (or `_default/hosts.toml`) lists mirrors (`[host."URL"]`, tried in file
//! order) and the upstream `server`, each with capabilities, TLS settings
//! and headers. Files are read on every pull, so edits apply at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use crate::{Error, Result};

/// What a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
    pub const MIRROR: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: false,
    };
}

/// One endpoint of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// The API root path (`/v2` unless `override_path`).
    pub path: String,
    pub capabilities: Capabilities,
    pub skip_verify: bool,
    /// CA bundles trusted besides the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificates: (certificate, key); the key may be in the
    /// certificate file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub headers: Vec<(String, String)>,
    /// A mirror rather than the registry itself (requests carry `?ns=`).
    pub mirror: bool,
}

impl RegistryHost {
    /// The base URL of the API (`scheme://authority/v2`).
    pub fn api_base(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.path)
    }

    /// The host part alone (credentials are looked up by it).
    pub fn host(&self) -> &str {
        &self.authority
    }
}

/// Where hosts come from: the certs.d directory, mirrors written inline in
/// berth.toml, and registries reached over plain http.
#[derive(Debug, Clone, Default)]
pub struct HostsConfig {
    pub config_path: Option<PathBuf>,
    /// registry -> mirror endpoints (URLs), the simple inline form.
    pub mirrors: BTreeMap<String, Vec<String>>,
    pub insecure: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClientSpec {
    /// One PEM with certificate and key.
    One(String),
    /// [cert, key]
    Pair(Vec<String>),
    /// [[cert, key], ...] or ["pem", ...]
    Many(Vec<OneOrMany>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostFields {
    capabilities: Option<Spanned<Vec<Spanned<String>>>>,
    skip_verify: Option<bool>,
    ca: Option<Spanned<OneOrMany>>,
    client: Option<Spanned<ClientSpec>>,
    header: Option<BTreeMap<String, OneOrMany>>,
    override_path: Option<bool>,
    /// Accepted for containerd compatibility (connection setup timeout).
    #[allow(dead_code)]
    dial_timeout: Option<String>,
}

/// The top level: the server's own settings (serde's `flatten` cannot be
/// combined with `deny_unknown_fields`, hence the repetition).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    server: Option<Spanned<String>>,
    capabilities: Option<Spanned<Vec<Spanned<String>>>>,
    skip_verify: Option<bool>,
    ca: Option<Spanned<OneOrMany>>,
    client: Option<Spanned<ClientSpec>>,
    header: Option<BTreeMap<String, OneOrMany>>,
    override_path: Option<bool>,
    #[allow(dead_code)]
    dial_timeout: Option<String>,
    #[serde(default)]
    host: IndexMap<String, Spanned<HostFields>>,
}

impl HostsFile {
    fn server_fields(&mut self) -> HostFields {
        HostFields {
            capabilities: self.capabilities.take(),
            skip_verify: self.skip_verify.take(),
            ca: self.ca.take(),
            client: self.client.take(),
            header: self.header.take(),
            override_path: self.override_path.take(),
            dial_timeout: self.dial_timeout.take(),
        }
    }
}

/// Line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

struct FileCtx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl FileCtx<'_> {
    fn err(&self, span: std::ops::Range<usize>, msg: impl std::fmt::Display) -> Error {
        Error::Config(format!(
            "{}:{}: {msg}",
            self.path.display(),
            line_of(self.text, span.start)
        ))
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new("/")).join(p)
        }
    }
}

/// Parses a host URL as containerd does: a scheme (https by default), an
/// authority and an optional path.
fn parse_url(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("https".to_owned(), url),
    };
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return None;
    }
    Some((
        scheme,
        authority.to_owned(),
        path.trim_end_matches('/').to_owned(),
    ))
}

fn api_path(path: &str, override_path: bool) -> String {
    if override_path || path.ends_with("/v2") {
        path.to_owned()
    } else {
        format!("{path}/v2")
    }
}

fn host_from_fields(
    ctx: &FileCtx,
    url: &str,
    url_span: std::ops::Range<usize>,
    f: HostFields,
    default_caps: Capabilities,
    mirror: bool,
) -> Result<RegistryHost> {
    let (scheme, authority, path) = parse_url(url)
        .ok_or_else(|| ctx.err(url_span.clone(), format!("invalid host URL {url:?}")))?;
    let capabilities = match f.capabilities {
        None => default_caps,
        Some(list) => {
            let mut c = Capabilities::default();
            for cap in list.into_inner() {
                match cap.get_ref().as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => c.push = true,
                    other => {
                        return Err(ctx.err(
                            cap.span(),
                            format!(
                                "unknown capability {other:?} (expected pull, resolve or push)"
                            ),
                        ))
                    }
                }
            }
            c
        }
    };
    let mut ca = Vec::new();
    if let Some(list) = f.ca {
        let span = list.span();
        for p in list.into_inner().into_vec() {
            let path = ctx.resolve(&p);
            if !path.is_file() {
                return Err(ctx.err(
                    span.clone(),
                    format!("ca file {} does not exist", path.display()),
                ));
            }
            ca.push(path);
        }
    }
    let mut client = Vec::new();
    if let Some(spec) = f.client {
        let span = spec.span();
        let pairs: Vec<Vec<String>> = match spec.into_inner() {
            ClientSpec::One(s) => vec![vec![s]],
            ClientSpec::Pair(v) => {
                if v.len() > 2 {
                    return Err(ctx.err(
                        span,
                        "client: expected \"pem\", [cert, key] or [[cert, key], ...]",
                    ));
                }
                vec![v]
            }
            ClientSpec::Many(v) => v.into_iter().map(OneOrMany::into_vec).collect(),
        };
        for pair in pairs {
            let (cert, key) = match pair.as_slice() {
                [c] => (ctx.resolve(c), None),
                [c, k] => (ctx.resolve(c), Some(ctx.resolve(k))),
                _ => return Err(ctx.err(span.clone(), "client: expected [cert, key]")),
            };
            for p in std::iter::once(&cert).chain(key.iter()) {
                if !p.is_file() {
                    return Err(ctx.err(
                        span.clone(),
                        format!("client file {} does not exist", p.display()),
                    ));
                }
            }
            client.push((cert, key));
        }
    }
    let mut headers = Vec::new();
    for (k, v) in f.header.unwrap_or_default() {
        for value in v.into_vec() {
            headers.push((k.clone(), value));
        }
    }
    Ok(RegistryHost {
        scheme,
        authority,
        path: api_path(&path, f.override_path.unwrap_or(false)),
        capabilities,
        skip_verify: f.skip_verify.unwrap_or(false),
        ca,
        client,
        headers,
        mirror,
    })
}

/// The upstream server of a registry when no file names one.
fn default_server(registry: &str, insecure: bool) -> RegistryHost {
    let authority = if registry == "docker.io" {
        "registry-1.docker.io".to_owned()
    } else {
        registry.to_owned()
    };
    RegistryHost {
        scheme: if insecure { "http" } else { "https" }.into(),
        authority,
        path: "/v2".into(),
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca: Vec::new(),
        client: Vec::new(),
        headers: Vec::new(),
        mirror: false,
    }
}

/// Parses one hosts.toml for `registry`.
pub fn parse_hosts_file(path: &Path, registry: &str, insecure: bool) -> Result<Vec<RegistryHost>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let ctx = FileCtx { path, text: &text };
    let mut file: HostsFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start)).unwrap_or(0);
        Error::Config(format!("{}:{line}: {}", path.display(), e.message()))
    })?;
    let server_fields = file.server_fields();
    let mut hosts = Vec::new();
    for (url, fields) in file.host {
        let span = fields.span();
        hosts.push(host_from_fields(
            &ctx,
            &url,
            span,
            fields.into_inner(),
            Capabilities::MIRROR,
            true,
        )?);
    }
    let server = match file.server {
        Some(s) => {
            let span = s.span();
            host_from_fields(
                &ctx,
                s.get_ref(),
                span,
                server_fields,
                Capabilities::ALL,
                false,
            )?
        }
        None => {
            let mut d = default_server(registry, insecure);
            let f = server_fields;
            if f.capabilities.is_some()
                || f.ca.is_some()
                || f.client.is_some()
                || f.header.is_some()
                || f.skip_verify.is_some()
            {
                let mut with =
                    host_from_fields(&ctx, &d.api_base(), 0..0, f, Capabilities::ALL, false)?;
                with.path = d.path.clone();
                d = with;
            }
            d
        }
    };
    hosts.push(server);
    Ok(hosts)
}

impl HostsConfig {
    /// The hosts file that applies to `registry`, if any.
    pub fn hosts_file(&self, registry: &str) -> Option<PathBuf> {
        let dir = self.config_path.as_ref()?;
        // containerd names directories host_port when a port would make
        // the name awkward on some systems; accept both forms.
        let candidates = [
            registry.to_owned(),
            registry.replace(':', "_"),
            "_default".to_owned(),
        ];
        candidates
            .iter()
            .map(|c| dir.join(c).join("hosts.toml"))
            .find(|p| p.is_file())
    }

    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                registry
            }
        });
        host == "localhost"
            || host == "127.0.0.1"
            || host == "[::1]"
            || self.insecure.iter().any(|r| r == registry || r == host)
    }

    /// The endpoints to try for `registry`, in order: mirrors, then the
    /// server.
    pub fn hosts_for(&self, registry: &str) -> Result<Vec<RegistryHost>> {
        let insecure = self.is_insecure(registry);
        if let Some(file) = self.hosts_file(registry) {
            return parse_hosts_file(&file, registry, insecure);
        }
        let mut hosts = Vec::new();
        for m in self.mirrors.get(registry).into_iter().flatten() {
            let (scheme, authority, path) = parse_url(m)
                .ok_or_else(|| Error::Config(format!("mirror {m:?} of {registry}: invalid URL")))?;
            hosts.push(RegistryHost {
                scheme,
                authority,
                path: api_path(&path, false),
                capabilities: Capabilities::MIRROR,
                skip_verify: false,
                ca: Vec::new(),
                client: Vec::new(),
                headers: Vec::new(),
                mirror: true,
            });
        }
        hosts.push(default_server(registry, insecure));
        Ok(hosts)
    }

    /// Checks every hosts file under config_path: (file, error) for each
    /// broken one. Broken files only affect their own registry.
    pub fn validate(&self) -> Vec<(PathBuf, Error)> {
        let mut out = Vec::new();
        let Some(dir) = &self.config_path else {
            return out;
        };
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let file = e.path().join("hosts.toml");
            if file.is_file() {
                let registry = e.file_name().to_string_lossy().into_owned();
                if let Err(err) = parse_hosts_file(&file, &registry, self.is_insecure(&registry)) {
                    out.push((file, err));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, registry: &str, text: &str) -> PathBuf {
        let d = dir.join(registry);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hosts.toml"), text).unwrap();
        d.join("hosts.toml")
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-hosts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mirrors_in_order_then_server() {
        let dir = tmp("order");
        std::fs::write(dir.join("ca.pem"), "x").unwrap();
        write(
            &dir,
            "docker.io",
            r#"
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example/custom/path"]
  capabilities = ["pull"]
  override_path = true
  skip_verify = true
  ca = "../ca.pem"
  [host."https://mirror.example/custom/path".header]
    x-token = "abc"
    x-list = ["a", "b"]
"#,
        );
        let cfg = HostsConfig {
            config_path: Some(dir.clone()),
            ..Default::default()
        };
        let hosts = cfg.hosts_for("docker.io").unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0].api_base(), "http://127.0.0.1:5001/v2");
        assert!(hosts[0].mirror && hosts[0].capabilities == Capabilities::MIRROR);
        assert_eq!(hosts[1].api_base(), "https://mirror.example/custom/path");
        assert_eq!(
            hosts[1].capabilities,
            Capabilities {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert!(hosts[1].skip_verify);
        assert_eq!(hosts[1].ca, vec![dir.join("docker.io/../ca.pem")]);
        assert_eq!(
            hosts[1].headers,
            vec![
                ("x-list".into(), "a".into()),
                ("x-list".into(), "b".into()),
                ("x-token".into(), "abc".into())
            ]
        );
        assert_eq!(hosts[2].api_base(), "https://registry-1.docker.io/v2");
        assert!(!hosts[2].mirror && hosts[2].capabilities == Capabilities::ALL);
        // Registries without a file: the _default one, else the server.
        assert_eq!(cfg.hosts_for("quay.io").unwrap().len(), 1);
        write(&dir, "_default", "[host.\"http://10.0.0.1:5000\"]\n");
        assert_eq!(
            cfg.hosts_for("quay.io").unwrap()[0].api_base(),
            "http://10.0.0.1:5000/v2"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tmp("errors");
        let f = write(&dir, "bad.io", "server = \"https://bad.io\"\n\n[host.\"https://m\"]\n  capabilities = [\"pull\", \"fly\"]\n");
        let cfg = HostsConfig {
            config_path: Some(dir.clone()),
            ..Default::default()
        };
        let e = cfg.hosts_for("bad.io").unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}:4", f.display())) && e.contains("fly"),
            "{e}"
        );
        write(
            &dir,
            "ca.io",
            "[host.\"https://m\"]\n  ca = \"/nonexistent/ca.pem\"\n",
        );
        let e = cfg.hosts_for("ca.io").unwrap_err().to_string();
        assert!(
            e.contains("hosts.toml:2") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        write(&dir, "syntax.io", "server = \n");
        let e = cfg.hosts_for("syntax.io").unwrap_err().to_string();
        assert!(e.contains("syntax.io/hosts.toml:1"), "{e}");
        write(
            &dir,
            "typo.io",
            "[host.\"https://m\"]\n  capabilties = [\"pull\"]\n",
        );
        let e = cfg.hosts_for("typo.io").unwrap_err().to_string();
        assert!(e.contains("capabilties"), "{e}");
        // One broken file does not affect another registry.
        assert_eq!(cfg.hosts_for("good.io").unwrap().len(), 1);
        assert_eq!(cfg.validate().len(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn inline_mirrors_and_insecure() {
        let mut cfg = HostsConfig::default();
        cfg.mirrors.insert(
            "registry.k8s.io".into(),
            vec!["http://127.0.0.1:5000".into()],
        );
        let hosts = cfg.hosts_for("registry.k8s.io").unwrap();
        assert_eq!(hosts[0].api_base(), "http://127.0.0.1:5000/v2");
        assert_eq!(hosts[1].api_base(), "https://registry.k8s.io/v2");
        assert_eq!(cfg.hosts_for("localhost:5000").unwrap()[0].scheme, "http");
        assert_eq!(
            cfg.hosts_for("docker.io").unwrap()[0].authority,
            "registry-1.docker.io"
        );
    }
}
