//! A minimal HTTP/1.1 client for the distribution API over plain HTTP.
//!
//! Only what pushing fixtures needs: one request per connection
//! (`Connection: close`), bodies read by Content-Length, chunked, or to EOF,
//! optional basic auth on every request (the registry's htpasswd mode
//! challenges with `Basic`, so there is no token dance).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::Context;

/// A response with lower-cased header names.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Talks to one registry (`host:port`), optionally as a basic-auth user.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    addr: String,
    auth: Option<(String, String)>,
    timeout: Duration,
}

impl RegistryClient {
    pub fn new(addr: impl Into<String>) -> RegistryClient {
        RegistryClient {
            addr: addr.into(),
            auth: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Connect, read and write timeout per request (default 60 s, so that a
    /// wedged registry fails the test instead of hanging it).
    pub fn with_timeout(mut self, timeout: Duration) -> RegistryClient {
        self.timeout = timeout;
        self
    }

    pub fn with_basic_auth(mut self, user: &str, password: &str) -> RegistryClient {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request. `target` is an origin-form path (`/v2/...`) or an
    /// absolute `http://` URL (as found in `Location` headers).
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let (host, path) = split_target(&self.addr, target)?;
        let what = || format!("{method} http://{host}{path}");
        let sockaddr = host
            .to_socket_addrs()
            .context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| super::err(format!("{host} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&sockaddr, self.timeout)
            .context(|| format!("connecting for {}", what()))?;
        stream.set_read_timeout(Some(self.timeout)).context(what)?;
        stream.set_write_timeout(Some(self.timeout)).context(what)?;
        let mut stream = stream;

        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: berth-image-tests\r\n"
        );
        if let Some((user, password)) = &self.auth {
            let token = base64(format!("{user}:{password}").as_bytes());
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).context(what)?;
        stream.write_all(body).context(what)?;
        stream.flush().context(what)?;

        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .context(|| format!("reading the response to {}", what()))?;
        parse_response(&raw, method == "HEAD").context(|| format!("response to {}", what()))
    }

    pub fn get(&self, target: &str, accept: &[&str]) -> io::Result<Response> {
        let accept = accept.join(", ");
        let headers: Vec<(&str, &str)> = if accept.is_empty() {
            vec![]
        } else {
            vec![("Accept", accept.as_str())]
        };
        self.request("GET", target, &headers, &[])
    }

    /// Whether the repository already has the blob (HEAD .../blobs/<digest>).
    pub fn has_blob(&self, repo: &str, digest: &str) -> io::Result<bool> {
        let r = self.request("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[], &[])?;
        match r.status {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(super::err(format!(
                "HEAD blob {digest} in {repo}: HTTP {s}"
            ))),
        }
    }

    /// Monolithic upload: POST to open an upload session, then PUT the bytes
    /// to its `Location` with `?digest=`. Skips blobs already present.
    pub fn push_blob(&self, repo: &str, digest: &str, bytes: &[u8]) -> io::Result<()> {
        if self.has_blob(repo, digest)? {
            return Ok(());
        }
        let r = self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])?;
        if r.status != 202 {
            return Err(super::err(format!(
                "starting a blob upload to {repo}: HTTP {} {}",
                r.status,
                r.body_text()
            )));
        }
        let location = r
            .header("location")
            .ok_or_else(|| super::err(format!("blob upload to {repo}: 202 without Location")))?;
        let location = resolve_location(&format!("/v2/{repo}/blobs/uploads/"), location);
        let sep = if location.contains('?') { '&' } else { '?' };
        let target = format!("{location}{sep}digest={}", digest.replace(':', "%3A"));
        let r = self.request(
            "PUT",
            &target,
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )?;
        if r.status != 201 {
            return Err(super::err(format!(
                "uploading blob {digest} to {repo}: HTTP {} {}",
                r.status,
                r.body_text()
            )));
        }
        Ok(())
    }

    /// PUT /v2/<repo>/manifests/<reference> with the manifest's media type;
    /// returns the digest the registry reports (`Docker-Content-Digest`).
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> io::Result<String> {
        let r = self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            bytes,
        )?;
        if r.status != 201 {
            return Err(super::err(format!(
                "putting manifest {repo}:{reference}: HTTP {} {}",
                r.status,
                r.body_text()
            )));
        }
        Ok(r.header("docker-content-digest")
            .map(str::to_string)
            .unwrap_or_else(|| super::sha256_digest(bytes)))
    }

    /// GET a manifest by tag or digest, accepting every manifest type the
    /// fixtures produce.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> io::Result<Response> {
        self.get(
            &format!("/v2/{repo}/manifests/{reference}"),
            &[
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ],
        )
    }
}

/// Splits a request target into (host:port, origin-form path).
fn split_target(default_host: &str, target: &str) -> io::Result<(String, String)> {
    if let Some(rest) = target.strip_prefix("http://") {
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok((host.to_string(), path.to_string()))
    } else if target.starts_with('/') {
        Ok((default_host.to_string(), target.to_string()))
    } else {
        Err(super::err(format!(
            "unsupported request target {target:?} (https is not spoken here)"
        )))
    }
}

/// Resolves a `Location` header against the request path: absolute URLs and
/// absolute paths are used as they are, relative references are resolved
/// against the request path's directory (distribution sends absolute URLs
/// unless `http.relativeurls` is set).
pub fn resolve_location(request_path: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with('/') {
        return location.to_string();
    }
    let base = request_path.split('?').next().unwrap_or(request_path);
    let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(0)];
    format!("{dir}{location}")
}

fn parse_response(raw: &[u8], head_request: bool) -> io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| super::err(format!("no end of headers in {} bytes", raw.len())))?;
    let head = std::str::from_utf8(&raw[..end]).context(|| "non-UTF-8 response headers".into())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| super::err(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 {
        return Ok(response);
    }
    if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body)?;
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .context(|| format!("bad Content-Length {len:?}"))?;
        if body.len() < len {
            return Err(super::err(format!(
                "body truncated: {} of {len} bytes",
                body.len()
            )));
        }
        body.truncate(len);
    }
    response.body = body;
    Ok(response)
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| super::err("truncated chunk size line"))?;
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap_or("");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(super::err("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Standard base64 with padding (for the Authorization header).
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
