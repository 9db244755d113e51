//! A client of the OCI distribution API for pulls: manifests and blobs
//! from one registry host (a mirror or the server), with the token
//! (bearer) and basic auth flows, per-host TLS (extra CAs, client
//! certificates, skip_verify), headers and API paths from hosts.toml.

use std::time::Duration;

use crate::hosts::RegistryHost;
use crate::pull::Auth;
use crate::{Error, Result};

/// Manifests above this size are refused (image content is untrusted).
const MAX_MANIFEST: usize = 4 << 20;

pub struct Endpoint {
    pub host: RegistryHost,
    http: reqwest::Client,
    /// The registry the image is named under (`?ns=` for mirrors).
    registry: String,
    repository: String,
    auth: Auth,
    /// The `Authorization` header that worked last.
    authorization: std::sync::Mutex<Option<String>>,
}

/// An HTTP failure with its causes (the TLS or socket error that says why).
fn http_error(what: &str, e: impl std::error::Error) -> Error {
    let mut msg = format!("{what}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    Error::Registry(msg)
}

/// A `WWW-Authenticate` challenge: scheme and parameters.
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(stripped) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = stripped.char_indices();
            let mut end = stripped.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &stripped[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_ascii_lowercase(), params)
}

fn basic_header(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{username}:{password}").as_bytes())
    )
}

fn base64_encode(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

impl Endpoint {
    pub fn new(
        host: RegistryHost,
        registry: &str,
        repository: &str,
        auth: Auth,
    ) -> Result<Endpoint> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if host.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        let mut roots = Vec::new();
        for ca in &host.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::Config(format!("ca file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("ca file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "ca file {}: no certificate in it",
                    ca.display()
                )));
            }
            roots.extend(certs);
        }
        if !roots.is_empty() {
            b = b.tls_certs_merge(roots);
        }
        if let Some((cert, key)) = host.client.first() {
            let mut pem = std::fs::read(cert).map_err(|e| {
                Error::Config(format!("client certificate {}: {e}", cert.display()))
            })?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key)
                        .map_err(|e| Error::Config(format!("client key {}: {e}", key.display())))?,
                );
            }
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::Config(format!("client certificate {}: {e}", cert.display()))
            })?;
            b = b.identity(id);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &host.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| Error::Config(format!("header {k:?}: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| Error::Config(format!("header {k}: value {v:?}: {e}")))?;
            headers.append(name, value);
        }
        b = b.default_headers(headers);
        let http = b
            .build()
            .map_err(|e| Error::Config(format!("registry host {}: {e}", host.api_base())))?;
        Ok(Endpoint {
            host,
            http,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            auth,
            authorization: std::sync::Mutex::new(None),
        })
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        let mut url = format!(
            "{}/{}/{kind}/{reference}",
            self.host.api_base(),
            self.repository
        );
        if self.host.mirror {
            url.push_str(&format!("?ns={}", self.registry));
        }
        url
    }

    /// A token from the realm of a bearer challenge.
    async fn token(&self, params: &[(String, String)]) -> Result<String> {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm = get("realm")
            .ok_or_else(|| Error::Registry("bearer challenge without a realm".into()))?;
        let mut query = Vec::new();
        if let Some(s) = get("service") {
            query.push(("service", s));
        }
        query.push((
            "scope",
            get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repository)),
        ));
        let mut req = self.http.get(&realm).query(&query);
        if let Auth::Basic { username, password } = &self.auth {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                basic_header(username, password),
            );
        }
        let resp = req
            .send()
            .await
            .map_err(|e| http_error(&format!("token from {realm}"), e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let make = if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                Error::Unauthorized
            } else {
                Error::Registry
            };
            return Err(make(format!(
                "token from {realm}: {status} (unauthorized: check the credentials){}",
                if body.is_empty() {
                    String::new()
                } else {
                    format!(": {}", body.trim())
                }
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = resp
            .json()
            .await
            .map_err(|e| http_error(&format!("token from {realm}"), e))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Registry(format!("token from {realm}: no token in the reply")))
    }

    /// GET with the auth dance: the header that worked before, else none,
    /// then whatever the challenge asks for.
    async fn get(&self, url: &str, accept: &[&str]) -> Result<reqwest::Response> {
        let send = |authorization: Option<String>| {
            let mut req = self.http.get(url);
            if !accept.is_empty() {
                req = req.header(reqwest::header::ACCEPT, accept.join(", "));
            }
            if let Some(a) = authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            req.send()
        };
        // Not held across requests: blobs download in parallel.
        let cached = {
            let mut c = self.authorization.lock().unwrap_or_else(|e| e.into_inner());
            if c.is_none() {
                if let Auth::Bearer(t) = &self.auth {
                    *c = Some(format!("Bearer {t}"));
                }
            }
            c.clone()
        };
        let resp = send(cached.clone())
            .await
            .map_err(|e| http_error(&format!("GET {url}"), e))?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let (scheme, params) = parse_challenge(&challenge);
        let authorization = match (scheme.as_str(), &self.auth) {
            // The caller's token was what we sent: a new one from the realm
            // would be anonymous, not what the caller asked for.
            ("bearer", Auth::Bearer(_)) => {
                return Err(Error::Unauthorized(format!(
                    "GET {url}: 401 unauthorized: the registry refused the given registry token"
                )))
            }
            ("bearer", _) => format!("Bearer {}", self.token(&params).await?),
            ("basic", Auth::Basic { username, password }) => basic_header(username, password),
            ("basic", _) => {
                return Err(Error::Unauthorized(format!(
                    "GET {url}: 401 unauthorized: the registry wants basic credentials and none were given"
                )))
            }
            _ => return Err(Error::Unauthorized(format!("GET {url}: 401 unauthorized ({challenge:?})"))),
        };
        let resp = send(Some(authorization.clone()))
            .await
            .map_err(|e| http_error(&format!("GET {url}"), e))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(Error::Registry(format!(
                "GET {url}: 401 unauthorized: the credentials were refused"
            )));
        }
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(authorization);
        Ok(resp)
    }

    fn check_status(url: &str, resp: &reqwest::Response) -> Result<()> {
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Error::Registry(format!("GET {url}: {status}")))
    }

    /// A manifest or index by tag or digest: its bytes.
    pub async fn manifest(&self, reference: &str, accept: &[&str]) -> Result<bytes::Bytes> {
        let url = self.url("manifests", reference);
        let resp = self.get(&url, accept).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::Registry(format!(
                "GET {url}: manifest unknown (404)"
            )));
        }
        Self::check_status(&url, &resp)?;
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_MANIFEST)
        {
            return Err(Error::Registry(format!(
                "GET {url}: manifest larger than {MAX_MANIFEST} bytes"
            )));
        }
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| http_error(&format!("GET {url}"), e))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_MANIFEST {
                return Err(Error::Registry(format!(
                    "GET {url}: manifest larger than {MAX_MANIFEST} bytes"
                )));
            }
        }
        Ok(body.into())
    }

    /// A blob's response, to be streamed.
    pub async fn blob(&self, digest: &str) -> Result<reqwest::Response> {
        let url = self.url("blobs", digest);
        let resp = self.get(&url, &[]).await?;
        Self::check_status(&url, &resp)?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(
            p,
            vec![
                ("realm".to_owned(), "https://auth.example/token".to_owned()),
                ("service".to_owned(), "registry.example".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull".to_owned()),
            ]
        );
        let (s, p) = parse_challenge("Basic realm=\"Registry Realm\"");
        assert_eq!((s.as_str(), p[0].1.as_str()), ("basic", "Registry Realm"));
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_encode(b"a"), "YQ==");
    }
}
