//! Pulls from a registry behind bearer-token auth (the Docker/distribution
//! token flow): Debian's docker-registry configured with `auth: token`, and a
//! token server written here that checks basic credentials and issues RS256
//! JWTs the registry verifies against a certificate made with `openssl` at
//! test time.
//!
//! The flow under test: the registry answers 401 with `WWW-Authenticate:
//! Bearer realm=...,service=...,scope=...`; the client asks the realm for a
//! token (with the user's basic credentials, or anonymously) and retries with
//! `Authorization: Bearer <token>`.
//!
//! The registry is filled without auth first (the support `Registry`), then
//! its storage is copied and served by a second registry that demands tokens.
//!
//! Over 800 lines: registry token auth against a real registry and token
//! server: each flow (anonymous, basic, bearer, refresh, errors) needs the same
//! TLS and server setup.

use berth_testkit::images as support;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_image::{Auth, ImageStore, PullOptions, StoreOptions};
use serde_json::{json, Value};
use support::*;

const USER: &str = "berth";
const PASSWORD: &str = "s3cret";
/// The registry's `auth.token.service`: the token's `aud`.
const SERVICE: &str = "berth-test-registry";
/// The registry's `auth.token.issuer`: the token's `iss`.
const ISSUER: &str = "berth-test-token-issuer";
const REPO: &str = "tok/busybox";
const TAG: &str = "v1";

// ---------------------------------------------------------------------------
// Small encoders and decoders.

/// base64url without padding, as JWTs use.
fn b64url(bytes: &[u8]) -> String {
    support::http::base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Standard base64 (with or without padding); `None` if malformed.
fn unbase64(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Some(out)
}

/// Decodes `application/x-www-form-urlencoded` text (`%XX`, `+`).
fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn run(cmd: &mut Command, what: &str) -> io::Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::other(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

// ---------------------------------------------------------------------------
// Token signing.

/// A signing key and the self-signed certificate over it (`openssl req
/// -x509`). The registry trusts an issuer when the certificate is in its
/// `rootcertbundle`; tokens carry the certificate in their `x5c` header.
#[derive(Clone, Debug)]
struct Issuer {
    key: PathBuf,
    cert_pem: PathBuf,
    cert_der: Vec<u8>,
}

impl Issuer {
    fn generate(dir: &Path, name: &str) -> io::Result<Issuer> {
        let key = dir.join(format!("{name}.key"));
        let cert_pem = dir.join(format!("{name}.pem"));
        run(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .arg("-subj")
                .arg(format!("/CN=berth-test-{name}"))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert_pem),
            "openssl req -x509 (is the openssl CLI installed?)",
        )?;
        let cert_der = run(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert_pem),
            "openssl x509 -outform DER",
        )?;
        Ok(Issuer {
            key,
            cert_pem,
            cert_der,
        })
    }

    /// An RS256 JWT over `claims`, with the certificate as `x5c`, signed by
    /// `openssl dgst -sha256 -sign` (PKCS#1 v1.5, which is what RS256 is).
    fn sign(&self, claims: &Value) -> io::Result<String> {
        let header = json!({
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [support::http::base64(&self.cert_der)],
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::other(format!("openssl dgst -sign: {e}")))?;
        // Small enough for the pipe buffer: no deadlock writing before reading.
        child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("openssl stdin"))?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() || out.stdout.is_empty() {
            return Err(io::Error::other(format!(
                "openssl dgst -sign: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(format!("{input}.{}", b64url(&out.stdout)))
    }
}

/// The claims distribution 2.8 checks: iss, aud, exp/nbf (with a minute of
/// leeway), and `access` for the repository operation.
fn claims(subject: &str, access: Value) -> Value {
    static JTI: AtomicU64 = AtomicU64::new(0);
    let now = unix_now();
    json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 5,
        "iat": now,
        "jti": format!("berth-{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    })
}

fn pull_access(repo: &str) -> Value {
    json!([{ "type": "repository", "name": repo, "actions": ["pull"] }])
}

// ---------------------------------------------------------------------------
// The token server.

/// One request the token server answered.
#[derive(Debug, Clone)]
struct TokenRequest {
    target: String,
    /// Decoded basic credentials, if any were sent.
    credentials: Option<(String, String)>,
    /// Any other Authorization header, verbatim.
    other_authorization: Option<String>,
    service: Option<String>,
    scopes: Vec<String>,
    status: u16,
}

/// An HTTP token endpoint (`GET /token?service=..&scope=..`) on 127.0.0.1.
/// It refuses anonymous requests and wrong credentials with 401, and grants
/// `pull` (never `push`) on any repository to `USER`:`PASSWORD`. Every
/// request is recorded. Dropping it stops the thread.
struct TokenServer {
    addr: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    fn start(issuer: Issuer) -> io::Result<TokenServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let requests: Arc<Mutex<Vec<TokenRequest>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = conn else { continue };
                    if let Err(e) = serve_token_request(stream, &issuer, &r) {
                        eprintln!("token server: {e}");
                    }
                }
            })?;
        Ok(TokenServer {
            addr,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Gets a token the way a client would (GET with basic credentials).
    fn fetch(&self, user: &str, password: &str, scope: &str) -> io::Result<String> {
        let target = format!(
            "/token?service={SERVICE}&scope={}",
            scope.replace(':', "%3A").replace('/', "%2F")
        );
        let r = RegistryClient::new(self.addr.clone())
            .with_basic_auth(user, password)
            .get(&target, &[])?;
        if r.status != 200 {
            return Err(io::Error::other(format!(
                "token server: HTTP {} {}",
                r.status,
                r.body_text()
            )));
        }
        let v: Value = serde_json::from_slice(&r.body)?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| io::Error::other(format!("no token in {v}")))
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request, recording it first: the client may look at the
/// record as soon as it has the answer.
fn serve_token_request(
    mut stream: TcpStream,
    issuer: &Issuer,
    log: &Mutex<Vec<TokenRequest>>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("connection closed before a request"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 16 {
            return Err(io::Error::other("request head too large"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default().to_string(),
    );
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "service" => service = Some(percent_decode(v)),
            // One parameter may hold several space-separated scopes.
            "scope" => scopes.extend(percent_decode(v).split(' ').map(str::to_string)),
            _ => {}
        }
    }
    let credentials = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| unbase64(b.trim()))
        .and_then(|raw| {
            let text = String::from_utf8(raw).ok()?;
            let (u, p) = text.split_once(':')?;
            Some((u.to_string(), p.to_string()))
        });
    let other_authorization = authorization.filter(|a| !a.starts_with("Basic "));

    let (status, body) = if method != "GET" || path != "/token" {
        (404, json!({ "error": "not found" }))
    } else if service.as_deref() != Some(SERVICE) {
        (
            400,
            json!({ "error": format!("unknown service {service:?}") }),
        )
    } else {
        match &credentials {
            None => (
                401,
                json!({ "error": "anonymous token requests are refused" }),
            ),
            Some((u, p)) if u != USER || p != PASSWORD => {
                (401, json!({ "error": "invalid username or password" }))
            }
            Some((u, _)) => {
                // Grants pull on each requested repository, nothing else.
                let access: Vec<Value> = scopes
                    .iter()
                    .filter_map(|s| {
                        let (kind, rest) = s.split_once(':')?;
                        let (name, actions) = rest.rsplit_once(':')?;
                        let granted: Vec<&str> =
                            actions.split(',').filter(|a| *a == "pull").collect();
                        (kind == "repository" && !granted.is_empty())
                            .then(|| json!({ "type": kind, "name": name, "actions": granted }))
                    })
                    .collect();
                let token = issuer.sign(&claims(u, Value::Array(access)))?;
                (
                    200,
                    json!({ "token": token, "access_token": token, "expires_in": 300 }),
                )
            }
        }
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let body = body.to_string();
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        response.push_str("WWW-Authenticate: Basic realm=\"berth-token\"\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    log.lock().unwrap().push(TokenRequest {
        target,
        credentials,
        other_authorization,
        service,
        scopes,
        status,
    });
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

// ---------------------------------------------------------------------------
// The registry, configured for token auth.

/// A docker-registry with `auth: token` serving `storage`. Dropping it kills
/// the process (it also gets SIGKILL if the thread that started it dies).
struct TokenRegistry {
    addr: String,
    child: Child,
    log: PathBuf,
}

impl TokenRegistry {
    fn start(dir: &Path, storage: &Path, realm: &str, bundle: &Path) -> io::Result<TokenRegistry> {
        static N: AtomicU64 = AtomicU64::new(0);
        let log = dir.join("token-registry.log");
        let config = dir.join("token-registry.yml");
        let mut last = String::new();
        // Retries only cover losing the port between probing and binding.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let marker = format!(
                "{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            );
            std::fs::write(
                &config,
                format!(
                    "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: \"{storage}\"
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: \"{marker}\"
  headers:
    X-Berth-Test-Registry: [\"{marker}\"]
auth:
  token:
    realm: \"{realm}\"
    service: \"{SERVICE}\"
    issuer: \"{ISSUER}\"
    rootcertbundle: \"{bundle}\"
",
                    storage = storage.display(),
                    bundle = bundle.display(),
                ),
            )?;
            let out = std::fs::File::create(&log)?;
            let err = out.try_clone()?;
            let mut cmd = Command::new(support::registry::REGISTRY_BIN);
            cmd.arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            die_with_parent(&mut cmd);
            let child = cmd.spawn().map_err(|e| {
                io::Error::other(format!(
                    "starting {} ({e}): apt-get install docker-registry",
                    support::registry::REGISTRY_BIN
                ))
            })?;
            let mut registry = TokenRegistry {
                addr: format!("127.0.0.1:{port}"),
                child,
                log: log.clone(),
            };
            match registry.wait_ready(&marker) {
                Ok(()) => return Ok(registry),
                Err(why) if why.contains("address already in use") => last = why,
                Err(why) => return Err(io::Error::other(why)),
            }
        }
        Err(io::Error::other(format!(
            "token registry did not start after 5 attempts; last: {last}"
        )))
    }

    /// Waits until our own instance answers `GET /v2/` with a Bearer
    /// challenge.
    fn wait_ready(&mut self, marker: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = RegistryClient::new(self.addr.clone()).with_timeout(Duration::from_secs(2));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "docker-registry exited with {status}; log:\n{}",
                    self.log_text()
                ));
            }
            if let Ok(r) = client.get("/v2/", &[]) {
                if r.header("x-berth-test-registry") == Some(marker) {
                    let challenge = r.header("www-authenticate").unwrap_or_default();
                    if r.status == 401 && challenge.starts_with("Bearer ") {
                        return Ok(());
                    }
                    return Err(format!(
                        "GET /v2/ answered {} with challenge {challenge:?}; log:\n{}",
                        r.status,
                        self.log_text()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer on {} within 30s; log:\n{}",
                    self.addr,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILL for the child when the thread that spawned it ends, so a test
/// process killed before `Drop` runs leaves no registry behind.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    unsafe extern "C" {
        fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
    }
    const PR_SET_PDEATHSIG: std::ffi::c_int = 1;
    const SIGKILL: std::ffi::c_ulong = 9;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------
// The world: image, token server, token registry, and a store to pull into.

struct TokenWorld {
    // Fields drop in order: the registry and token server stop before the
    // directory holding their files is removed.
    registry: TokenRegistry,
    tokens: TokenServer,
    issuer: Issuer,
    image: BuiltImage,
    /// Manifest digest the tag resolves to.
    digest: String,
    reference: String,
    dir: TempDir,
}

impl TokenWorld {
    fn start(name: &str) -> TokenWorld {
        let dir = TempDir::new(name).unwrap();
        let image = busybox_image(Compression::Gzip)
            .unwrap()
            .env("GREETING=bearer")
            .label("berth.test", "bearer")
            .build()
            .unwrap();
        // Fill an anonymous registry, then serve a copy of its storage.
        let storage = dir.join("storage");
        let digest = {
            let open = Registry::start().unwrap();
            let digest = open
                .push(REPO, TAG, &Artifact::from(image.clone()))
                .unwrap();
            run(
                Command::new("cp")
                    .arg("-a")
                    .arg(open.storage_dir())
                    .arg(&storage),
                "copying the registry storage",
            )
            .unwrap();
            digest
        };
        assert_eq!(digest, image.manifest.digest);
        let issuer = Issuer::generate(dir.path(), "issuer").unwrap();
        let tokens = TokenServer::start(issuer.clone()).unwrap();
        let registry =
            TokenRegistry::start(dir.path(), &storage, &tokens.realm(), &issuer.cert_pem).unwrap();
        let reference = registry.reference(REPO, TAG);
        TokenWorld {
            registry,
            tokens,
            issuer,
            image,
            digest,
            reference,
            dir,
        }
    }

    /// A fresh, empty store under the world's directory.
    fn store(&self, name: &str) -> Arc<ImageStore> {
        Arc::new(ImageStore::open(&self.dir.join(name), StoreOptions::default()).unwrap())
    }

    fn pull(&self, store: &Arc<ImageStore>, auth: Auth) -> berth_image::Result<berth_image::Image> {
        let opts = PullOptions {
            auth,
            ..Default::default()
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(store.pull(&self.reference, &opts))
    }

    /// The pulled image is the pushed one: manifest, config, every layer's
    /// bytes in the content store, and the layers unpacked in order.
    fn check_pulled(&self, store: &ImageStore, store_dir: &str, pulled: &berth_image::Image) {
        assert_eq!(pulled.manifest_digest, self.digest);
        assert_eq!(pulled.id, self.image.config.digest);
        assert_eq!(pulled.repo_tags, vec![self.reference.clone()]);
        assert_eq!(
            pulled.repo_digests,
            vec![format!("{}/{REPO}@{}", self.registry.addr, self.digest)]
        );
        assert!(pulled.config.env.contains(&"GREETING=bearer".to_string()));
        assert_eq!(pulled.config.cmd, vec!["/bin/sh".to_string()]);
        assert_eq!(
            pulled.config.labels.get("berth.test").map(String::as_str),
            Some("bearer")
        );
        let status = store.status(&self.reference).unwrap();
        assert_eq!(status.as_ref(), Some(pulled));
        assert_eq!(store.list().unwrap().len(), 1);
        let blobs = self.dir.join(store_dir).join("content/blobs");
        assert_eq!(self.image.layers.len(), 3);
        for blob in self.image.blobs() {
            let (alg, hex) = blob.digest.split_once(':').unwrap();
            let stored = std::fs::read(blobs.join(alg).join(hex))
                .unwrap_or_else(|e| panic!("blob {} not in the store: {e}", blob.digest));
            assert!(stored == blob.bytes, "blob {} differs", blob.digest);
        }
        // The unpacked layers, top first, without mounting them.
        let key = format!("bearer-{}", std::process::id());
        let rootfs = store.prepare_rootfs(&self.reference, &key).unwrap();
        assert_eq!(rootfs.lowerdirs.len(), 3, "{rootfs:?}");
        assert_eq!(
            std::fs::read_to_string(rootfs.lowerdirs[0].join("usr/share/berth/data.txt")).unwrap(),
            fixtures::BUSYBOX_DATA
        );
        assert!(rootfs.lowerdirs[1].join("etc/motd").is_file());
        assert_eq!(
            std::fs::read(rootfs.lowerdirs[2].join("bin/busybox")).unwrap(),
            std::fs::read(fixtures::BUSYBOX).unwrap()
        );
        store.remove_rootfs(&key).unwrap();
    }

    fn scope(&self) -> String {
        format!("repository:{REPO}:pull")
    }
}

fn assert_unauthorized(what: &str, err: &berth_image::Error) {
    println!("{what}: berth-image says: {err}");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("401") || text.contains("unauthorized") || text.contains("not authorized"),
        "{what}: {err}"
    );
}

fn assert_nothing_recorded(store: &ImageStore, reference: &str) {
    assert!(store.status(reference).unwrap().is_none());
    assert!(store.list().unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Tests.

/// The harness itself: the registry demands a token, challenges with the
/// realm/service/scope of the token flow, rejects tokens from an untrusted
/// issuer, and accepts the token server's.
#[test]
fn the_registry_demands_a_token_from_the_trusted_issuer() {
    let world = TokenWorld::start("bearer-harness");
    let manifest = format!("/v2/{REPO}/manifests/{TAG}");
    let anonymous = RegistryClient::new(world.registry.addr.clone());
    let r = anonymous.get_manifest(REPO, TAG).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{}\",service=\"{SERVICE}\",scope=\"repository:{REPO}:pull\"",
                world.tokens.realm()
            )
            .as_str()
        )
    );
    // The registry does not accept the basic credentials themselves.
    let r = anonymous
        .clone()
        .with_basic_auth(USER, PASSWORD)
        .get(&manifest, &[])
        .unwrap();
    assert_eq!(r.status, 401);

    let with_token = |token: &str| {
        let auth = format!("Bearer {token}");
        anonymous
            .request(
                "GET",
                &manifest,
                &[
                    ("Authorization", auth.as_str()),
                    ("Accept", "application/vnd.oci.image.manifest.v1+json"),
                ],
                &[],
            )
            .unwrap()
    };
    // Right claims, signed by a key whose certificate is not in the bundle.
    let stranger = Issuer::generate(world.dir.path(), "stranger").unwrap();
    let forged = stranger.sign(&claims(USER, pull_access(REPO))).unwrap();
    assert_eq!(with_token(&forged).status, 401);
    // Trusted issuer, wrong audience.
    let mut wrong_aud = claims(USER, pull_access(REPO));
    wrong_aud["aud"] = json!("some-other-registry");
    assert_eq!(
        with_token(&world.issuer.sign(&wrong_aud).unwrap()).status,
        401
    );
    // The token server's token works.
    let token = world.tokens.fetch(USER, PASSWORD, &world.scope()).unwrap();
    let r = with_token(&token);
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.body_text(),
        world.registry.log_text()
    );
    assert!(r.body == world.image.manifest.bytes);

    // The token server refuses wrong credentials.
    assert!(world.tokens.fetch(USER, "wrong", &world.scope()).is_err());
    let statuses: Vec<u16> = world.tokens.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 401]);
}

/// `Auth::Basic` goes to the token server, and the token it issues pulls the
/// image.
#[test]
fn basic_credentials_are_exchanged_for_a_token_and_the_pull_succeeds() {
    let world = TokenWorld::start("bearer-basic");
    let store = world.store("store");
    let pulled = world
        .pull(
            &store,
            Auth::Basic {
                username: USER.into(),
                password: PASSWORD.into(),
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\ntoken requests: {:#?}\nregistry log:\n{}",
                world.tokens.requests(),
                world.registry.log_text()
            )
        });
    world.check_pulled(&store, "store", &pulled);

    let requests = world.tokens.requests();
    println!("token requests: {requests:#?}");
    assert_eq!(
        requests.len(),
        1,
        "a refused password is not retried (account lockout): {requests:#?}"
    );
    for r in &requests {
        assert!(r.target.starts_with("/token?"), "{r:?}");
        assert_eq!(
            r.credentials,
            Some((USER.to_string(), PASSWORD.to_string())),
            "{r:?}"
        );
        assert_eq!(r.other_authorization, None);
        assert_eq!(r.service.as_deref(), Some(SERVICE));
        assert_eq!(r.scopes, vec![world.scope()]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    // The registry authorized (with the token) the manifest and every blob.
    let log = world.registry.log_text();
    let authorized: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("msg=\"authorized request\""))
        .collect();
    let mut uris = vec![format!("/v2/{REPO}/manifests/{TAG}")];
    uris.extend(
        world
            .image
            .blobs()
            .iter()
            .map(|b| format!("/v2/{REPO}/blobs/{}", b.digest)),
    );
    for uri in &uris {
        assert!(
            authorized.iter().any(|l| l.contains(uri.as_str())),
            "no authorized request for {uri}:\n{log}"
        );
    }
}

/// A wrong password is refused by the token server; the pull fails saying
/// it was not authorized, and nothing is recorded.
#[test]
fn a_wrong_password_is_refused_and_nothing_is_recorded() {
    let world = TokenWorld::start("bearer-wrong");
    let store = world.store("store");
    let err = world
        .pull(
            &store,
            Auth::Basic {
                username: USER.into(),
                password: "wrong".into(),
            },
        )
        .unwrap_err();
    assert_unauthorized("wrong password", &err);
    assert_nothing_recorded(&store, &world.reference);

    let requests = world.tokens.requests();
    println!("token requests: {requests:#?}");
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(
            r.credentials,
            Some((USER.to_string(), "wrong".to_string())),
            "{r:?}"
        );
        assert_eq!(r.status, 401, "{r:?}");
    }
}

/// `Auth::Bearer` is a registry token: it is sent to the registry as is,
/// without a trip to the token server. A token for another repository, or
/// garbage, fails.
#[test]
fn a_registry_token_is_used_as_is() {
    let world = TokenWorld::start("bearer-token");
    let token = world.tokens.fetch(USER, PASSWORD, &world.scope()).unwrap();
    let before = world.tokens.requests().len();
    let store = world.store("store");
    let pulled = world
        .pull(&store, Auth::Bearer(token))
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", world.registry.log_text()));
    world.check_pulled(&store, "store", &pulled);
    assert_eq!(
        world.tokens.requests().len(),
        before,
        "berth-image must not go to the token server with a registry token"
    );

    // Scoped to another repository: the registry refuses it.
    let other = world
        .tokens
        .fetch(USER, PASSWORD, "repository:other/repo:pull")
        .unwrap();
    let store = world.store("store-other-scope");
    let err = world.pull(&store, Auth::Bearer(other)).unwrap_err();
    assert_unauthorized("token for another repository", &err);
    assert_nothing_recorded(&store, &world.reference);

    let store = world.store("store-garbage");
    let err = world
        .pull(&store, Auth::Bearer("not-a-token".into()))
        .unwrap_err();
    assert_unauthorized("garbage token", &err);
    assert_nothing_recorded(&store, &world.reference);

    // When the registry refuses the token, berth-image may fall back to
    // asking the realm itself; with no credentials to send it can only ask
    // anonymously, and the token server refuses.
    let fallbacks = world.tokens.requests()[before + 1..].to_vec();
    println!("token requests after the refused tokens: {fallbacks:#?}");
    for r in &fallbacks {
        assert_eq!(r.credentials, None, "{r:?}");
        assert_eq!(r.other_authorization, None, "{r:?}");
        assert_eq!(r.status, 401, "{r:?}");
    }
}

/// Anonymous pulls ask the token server without credentials; it refuses,
/// and so does the registry.
#[test]
fn anonymous_pull_fails_when_the_token_server_refuses_anonymous() {
    let world = TokenWorld::start("bearer-anon");
    let store = world.store("store");
    let err = world.pull(&store, Auth::Anonymous).unwrap_err();
    assert_unauthorized("anonymous", &err);
    assert_nothing_recorded(&store, &world.reference);

    let requests = world.tokens.requests();
    println!("token requests: {requests:#?}");
    assert!(
        !requests.is_empty(),
        "the client asked the realm for a token"
    );
    for r in &requests {
        assert_eq!(r.credentials, None, "{r:?}");
        assert_eq!(r.other_authorization, None, "{r:?}");
        assert_eq!(r.scopes, vec![world.scope()]);
        assert_eq!(r.status, 401, "{r:?}");
    }
}
