//! Registry configuration ("Registry configuration: mirrors, insecure hosts
//! and credentials"): hosts.toml files in containerd's certs.d layout, the
//! inline `mirrors` option, docker config.json credentials and per-host TLS,
//! against real Debian `docker-registry` instances on 127.0.0.1.
//!
//! Nothing here reaches the internet: images are named under docker.io,
//! registry.k8s.io, gcr.io, ... but every hosts.toml sends them to a local
//! registry, and where a failing pull could fall through to the real server,
//! the file names a local `server` that refuses connections instead.
//!
//! The last test pulls the same image through the same hosts.toml files with
//! Debian's containerd 1.6 (`ctr images pull --hosts-dir`) and with berth.
//!
//! Over 800 lines: containerd's hosts.toml semantics case by case (mirrors,
//! capabilities, TLS, headers, fallbacks) against real registries.

use berth_testkit::images as support;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_image::{Auth, Error, ImageStore, PullOptions, StoreOptions};
use support::tls::{Pki, TlsRegistry};
use support::*;

const USER: &str = "berth";
const PASSWORD: &str = "s3cret-Pa55";

// ---------------------------------------------------------------------------
// Scaffolding: a temporary directory with a certs.d tree and stores in it.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pull(
    store: &Arc<ImageStore>,
    reference: &str,
    opts: &PullOptions,
) -> berth_image::Result<berth_image::Image> {
    runtime().block_on(store.pull(reference, opts))
}

fn pull_anon(store: &Arc<ImageStore>, reference: &str) -> berth_image::Result<berth_image::Image> {
    pull(store, reference, &PullOptions::default())
}

/// A temporary directory holding `certs.d/` (the hosts dir) and any number
/// of stores, each under its own subdirectory.
struct Setup {
    dir: TempDir,
    stores: AtomicU32,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let dir = TempDir::new(label).unwrap();
        std::fs::create_dir(dir.join("certs.d")).unwrap();
        Setup {
            dir,
            stores: AtomicU32::new(0),
        }
    }

    fn hosts_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// Writes `certs.d/<registry>/hosts.toml`; returns its path.
    fn write_hosts(&self, registry: &str, text: &str) -> PathBuf {
        let d = self.hosts_dir().join(registry);
        std::fs::create_dir_all(&d).unwrap();
        let file = d.join("hosts.toml");
        std::fs::write(&file, text).unwrap();
        file
    }

    /// Options with `hosts_dir` set to `certs.d`.
    fn options(&self) -> StoreOptions {
        StoreOptions {
            hosts_dir: Some(self.hosts_dir()),
            ..Default::default()
        }
    }

    /// A fresh, empty store using `certs.d`.
    fn store(&self) -> Arc<ImageStore> {
        self.store_with(self.options())
    }

    fn store_with(&self, options: StoreOptions) -> Arc<ImageStore> {
        let n = self.stores.fetch_add(1, Ordering::Relaxed);
        let root = self.dir.join(format!("store-{n}"));
        Arc::new(ImageStore::open(&root, options).unwrap())
    }

    /// Writes a docker config.json; returns its path.
    fn docker_config(&self, name: &str, json: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, json).unwrap();
        path
    }
}

/// `[host."URL"]` with pull and resolve, as a mirror entry.
fn mirror_table(url: &str) -> String {
    format!("[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
}

/// A hosts.toml whose mirrors are `urls`, in order, and whose server is
/// `server`.
fn hosts_toml(server: &str, urls: &[String]) -> String {
    let mut text = format!("server = \"{server}\"\n");
    for url in urls {
        text.push('\n');
        text.push_str(&mirror_table(url));
    }
    text
}

/// A small single-platform image whose config carries `label`, so images
/// made with different labels have different digests.
fn small_image(label: &str) -> Artifact {
    support::Image::new()
        .layer(
            Layer::new()
                .dir("etc/")
                .file("etc/berth-label", format!("{label}\n")),
            Compression::Gzip,
        )
        .cmd(&["/bin/true"])
        .label("test.berth/label", label)
        .artifact()
        .unwrap()
}

/// `name:tag` -> `name` (names here have no registry port).
fn repo_of(name_tag: &str) -> &str {
    name_tag.rsplit_once(':').unwrap().0
}

/// The image is recorded under `name_tag` only, with the repo digest under
/// the same name: what CRI's ImageStatus reports.
fn assert_recorded(store: &ImageStore, name_tag: &str, top_digest: &str) -> berth_image::Image {
    let image = store
        .status(name_tag)
        .unwrap()
        .unwrap_or_else(|| panic!("{name_tag} is not in the store"));
    assert_eq!(image.repo_tags, vec![name_tag.to_owned()], "{image:?}");
    assert_eq!(
        image.repo_digests,
        vec![format!("{}@{top_digest}", repo_of(name_tag))],
        "{image:?}"
    );
    image
}

fn assert_not_recorded(store: &ImageStore, name_tag: &str) {
    assert!(
        store.status(name_tag).unwrap().is_none(),
        "{name_tag} must not be recorded after a failed pull"
    );
}

/// No record mentions a 127.0.0.1 mirror: only original names.
fn assert_no_mirror_names(store: &ImageStore) {
    for image in store.list().unwrap() {
        for name in image.repo_tags.iter().chain(&image.repo_digests) {
            assert!(!name.contains("127.0.0.1"), "mirror name recorded: {name}");
        }
    }
}

/// A port on 127.0.0.1 where nothing listens: a socket is bound to it (so
/// no one else gets it) but never listens, so connections are refused.
struct DeadPort {
    _socket: OwnedFd,
    port: u16,
}

impl DeadPort {
    fn new() -> DeadPort {
        use rustix::net::{AddressFamily, SocketType};
        let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        rustix::net::bind(&fd, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = SocketAddrV4::try_from(rustix::net::getsockname(&fd).unwrap()).unwrap();
        DeadPort {
            _socket: fd,
            port: addr.port(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// How a [`Stub`] mirror misbehaves.
#[derive(Clone, Copy, Debug)]
enum Misbehave {
    /// Answers every request with this status and a distribution error body.
    Status(u16),
    /// Reads the request and closes the connection without a word.
    Close,
    /// Answers 401 with a basic-auth challenge, like a registry behind
    /// htpasswd.
    Unauthorized,
}

/// A tiny HTTP server standing in for a broken mirror; records the request
/// heads (request line and headers) it gets.
struct Stub {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stub {
    fn start(how: Misbehave) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => Stub::serve(stream, how, &r),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Stub {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn serve(mut stream: std::net::TcpStream, how: Misbehave, requests: &Mutex<Vec<String>>) {
        use std::io::{Read, Write};
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        requests
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&head).into_owned());
        let (code, extra, body) = match how {
            Misbehave::Close => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            Misbehave::Status(404) => (
                404,
                "",
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
            Misbehave::Status(code) => (
                code,
                "",
                r#"{"errors":[{"code":"UNKNOWN","message":"the stub mirror is broken"}]}"#,
            ),
            Misbehave::Unauthorized => (
                401,
                "WWW-Authenticate: Basic realm=\"stub\"\r\n",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            ),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {code} Stub\r\nContent-Type: application/json\r\n{extra}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines.
    fn requests(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_owned())
            .collect()
    }

    /// Whole request heads.
    fn heads(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The `Authorization` header values in the requests after the first
    /// `skip` ones.
    fn authorizations_after(&self, skip: usize) -> Vec<String> {
        self.heads()
            .iter()
            .skip(skip)
            .flat_map(|h| {
                h.lines()
                    .filter_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_owned())
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What [`fill_mirror`] pushed: top digests (the index for `pause`).
struct Pushed {
    busybox: String,
    busybox_config: String,
    pause: String,
    /// The manifest for this machine's platform in the pause index.
    pause_manifest: String,
    app: String,
}

/// Another platform than this machine's, for a two-entry index.
fn other_platform() -> &'static str {
    if berth_image::pull::default_platform() == "linux/arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    }
}

/// Pushes the repositories a mirror of docker.io, registry.k8s.io and
/// gcr.io holds: `library/busybox:1` (the busybox fixture),
/// `pause:3.9` (an index over this platform and another, like the real
/// one) and `proj/app:v1`.
fn fill_mirror(registry: &Registry) -> Pushed {
    let busybox = busybox_image(Compression::Gzip)
        .unwrap()
        .cmd(&["sh"])
        .artifact()
        .unwrap();
    let busybox_config = busybox.images()[0].config.digest.clone();
    let platform = berth_image::pull::default_platform();
    let pause = multi_platform_index(&[&platform, other_platform()])
        .artifact()
        .unwrap();
    let pause_manifest = match &pause {
        Artifact::Index(i) => i.image_for(&platform).unwrap().manifest.digest.clone(),
        Artifact::Image(_) => unreachable!(),
    };
    Pushed {
        busybox: registry.push("library/busybox", "1", &busybox).unwrap(),
        busybox_config,
        pause: registry.push("pause", "3.9", &pause).unwrap(),
        pause_manifest,
        app: registry
            .push("proj/app", "v1", &small_image("app"))
            .unwrap(),
    }
}

fn error_text<T: std::fmt::Debug>(result: berth_image::Result<T>, what: &str) -> (Error, String) {
    let e = result.expect_err(what);
    let text = e.to_string();
    (e, text)
}

// ---------------------------------------------------------------------------
// 1. Mirrors from hosts.toml and from the inline option.

#[test]
fn hosts_toml_mirrors_serve_docker_io_registry_k8s_io_and_gcr_io_under_the_original_names() {
    let mirror = Registry::start().unwrap();
    let pushed = fill_mirror(&mirror);
    let quay = mirror
        .push("team/tool", "2.0", &small_image("quay"))
        .unwrap();
    let m = format!("http://{}", mirror.addr());
    let s = Setup::new("hosts-mirrors");
    // The forms people write: an explicit server, none (the default server),
    // a URL with /v2 and override_path, and _default for everything else.
    s.write_hosts(
        "docker.io",
        &format!(
            "server = \"https://registry-1.docker.io\"\n\n{}",
            mirror_table(&m)
        ),
    );
    s.write_hosts("registry.k8s.io", &mirror_table(&m));
    s.write_hosts(
        "gcr.io",
        &format!(
            "server = \"https://gcr.io\"\n\n[host.\"{m}/v2\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
        ),
    );
    s.write_hosts("_default", &mirror_table(&m));
    let store = s.store();

    let busybox = pull_anon(&store, "docker.io/library/busybox:1").unwrap();
    assert_eq!(busybox.id, pushed.busybox_config);
    assert_eq!(busybox.manifest_digest, pushed.busybox);
    assert_eq!(busybox.config.cmd, vec!["sh".to_owned()]);
    assert_recorded(&store, "docker.io/library/busybox:1", &pushed.busybox);
    // The short name is the same image.
    assert_eq!(store.status("busybox:1").unwrap().unwrap().id, busybox.id);

    let pause = pull_anon(&store, "registry.k8s.io/pause:3.9").unwrap();
    assert_eq!(pause.manifest_digest, pushed.pause_manifest);
    let recorded = assert_recorded(&store, "registry.k8s.io/pause:3.9", &pushed.pause);
    assert_eq!(recorded, pause);

    let app = pull_anon(&store, "gcr.io/proj/app:v1").unwrap();
    assert_eq!(app.manifest_digest, pushed.app);
    assert_recorded(&store, "gcr.io/proj/app:v1", &pushed.app);

    let tool = pull_anon(&store, "quay.io/team/tool:2.0").unwrap();
    assert_recorded(&store, "quay.io/team/tool:2.0", &tool.manifest_digest);
    assert_eq!(tool.manifest_digest, quay);

    assert_eq!(store.list().unwrap().len(), 4);
    assert_no_mirror_names(&store);
    for mirror_name in [
        format!("{}/pause:3.9", mirror.addr()),
        format!("{}/library/busybox:1", mirror.addr()),
    ] {
        assert_not_recorded(&store, &mirror_name);
    }
    // Digest references resolve through the mirror too.
    let by_digest = format!("registry.k8s.io/pause@{}", pushed.pause);
    let fresh = s.store();
    let p = pull_anon(&fresh, &by_digest).unwrap();
    assert_eq!(p.manifest_digest, pushed.pause_manifest);
    assert_eq!(p.repo_digests, vec![by_digest]);
}

#[test]
fn inline_mirrors_option_serves_the_same_names() {
    let mirror = Registry::start().unwrap();
    let pushed = fill_mirror(&mirror);
    let m = format!("http://{}", mirror.addr());
    let s = Setup::new("hosts-inline");
    let mut options = StoreOptions::default();
    for registry in ["docker.io", "registry.k8s.io", "gcr.io"] {
        options.mirrors.insert(registry.to_owned(), vec![m.clone()]);
    }
    let store = s.store_with(options);
    for (name, digest) in [
        ("docker.io/library/busybox:1", &pushed.busybox),
        ("registry.k8s.io/pause:3.9", &pushed.pause),
        ("gcr.io/proj/app:v1", &pushed.app),
    ] {
        pull_anon(&store, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_recorded(&store, name, digest);
    }
    assert_no_mirror_names(&store);

    // With a hosts dir that has no file for a registry, the inline mirrors
    // of that registry still apply.
    s.write_hosts("quay.io", &hosts_toml(&DeadPort::new().url(), &[]));
    let mut options = s.options();
    options
        .mirrors
        .insert("registry.k8s.io".into(), vec![m.clone()]);
    let store = s.store_with(options);
    pull_anon(&store, "registry.k8s.io/pause:3.9").unwrap();
    assert_recorded(&store, "registry.k8s.io/pause:3.9", &pushed.pause);
}

// ---------------------------------------------------------------------------
// 2. A dead or failing first mirror falls through to the next.

#[test]
fn a_dead_or_failing_first_mirror_falls_through_to_the_next_one() {
    let mirror = Registry::start().unwrap();
    let pushed = fill_mirror(&mirror);
    let good = format!("http://{}", mirror.addr());
    let server = DeadPort::new();
    let s = Setup::new("hosts-fallthrough");

    // Nothing listening.
    let dead = DeadPort::new();
    s.write_hosts(
        "registry.k8s.io",
        &hosts_toml(&server.url(), &[dead.url(), good.clone()]),
    );
    let store = s.store();
    pull_anon(&store, "registry.k8s.io/pause:3.9").unwrap();
    assert_recorded(&store, "registry.k8s.io/pause:3.9", &pushed.pause);

    // Answering 500, 404, or hanging up: each is tried first (with the
    // original registry in ?ns=) and then skipped.
    for (how, name, path) in [
        (
            Misbehave::Status(500),
            "registry.k8s.io/pause:3.9",
            "/v2/pause/manifests/3.9?ns=registry.k8s.io",
        ),
        (
            Misbehave::Status(404),
            "docker.io/library/busybox:1",
            "/v2/library/busybox/manifests/1?ns=docker.io",
        ),
        (
            Misbehave::Close,
            "gcr.io/proj/app:v1",
            "/v2/proj/app/manifests/v1?ns=gcr.io",
        ),
    ] {
        let stub = Stub::start(how);
        let registry = name.split('/').next().unwrap();
        s.write_hosts(
            registry,
            &hosts_toml(&server.url(), &[stub.url(), good.clone()]),
        );
        let store = s.store();
        let image = pull_anon(&store, name).unwrap_or_else(|e| panic!("{how:?}: {e}"));
        let top = match registry {
            "registry.k8s.io" => &pushed.pause,
            "docker.io" => &pushed.busybox,
            _ => &pushed.app,
        };
        assert_recorded(&store, name, top);
        assert_eq!(image.repo_tags, vec![name.to_owned()]);
        let requests = stub.requests();
        assert_eq!(
            requests.first().map(String::as_str),
            Some(format!("GET {path} HTTP/1.1").as_str()),
            "{how:?}: the broken mirror must be asked first: {requests:?}"
        );
    }

    // The inline option: the same order and fall-through.
    let dead = DeadPort::new();
    let mut options = StoreOptions::default();
    options
        .mirrors
        .insert("registry.k8s.io".into(), vec![dead.url(), good.clone()]);
    let store = s.store_with(options);
    pull_anon(&store, "registry.k8s.io/pause:3.9").unwrap();
    assert_recorded(&store, "registry.k8s.io/pause:3.9", &pushed.pause);

    // Every host failing: the error names each one, nothing is recorded.
    let stub = Stub::start(Misbehave::Status(500));
    let dead = DeadPort::new();
    s.write_hosts(
        "registry.k8s.io",
        &hosts_toml(&server.url(), &[stub.url(), dead.url()]),
    );
    let store = s.store();
    let (_, msg) = error_text(
        pull_anon(&store, "registry.k8s.io/pause:3.9"),
        "no host works",
    );
    for addr in [
        stub.addr.clone(),
        format!("127.0.0.1:{}", dead.port),
        format!("127.0.0.1:{}", server.port),
    ] {
        assert!(msg.contains(&addr), "{addr} missing from: {msg}");
    }
    assert!(msg.contains("500"), "{msg}");
    assert_not_recorded(&store, "registry.k8s.io/pause:3.9");
}

// ---------------------------------------------------------------------------
// 3. Basic auth: PullOptions and docker config.json.

fn basic(user: &str, password: &str) -> Auth {
    Auth::Basic {
        username: user.to_owned(),
        password: password.to_owned(),
    }
}

fn assert_unauthorized(msg: &str, addr: &str) {
    assert!(msg.contains("401"), "not an unauthorized error: {msg}");
    assert!(msg.contains(addr), "the host {addr} is not named: {msg}");
    assert!(
        !msg.contains(PASSWORD) && !msg.contains("wrong-password"),
        "a password leaks into the error: {msg}"
    );
}

#[test]
fn basic_auth_from_pull_options_is_sent_only_to_its_host() {
    let registry = Registry::start_with_basic_auth(USER, PASSWORD).unwrap();
    let image = small_image("private");
    let digest = registry.push("pause", "3.9", &image).unwrap();
    registry.push("team/app", "v1", &image).unwrap();
    let server = DeadPort::new();
    let addr = registry.addr().to_owned();
    let s = Setup::new("hosts-auth-opts");
    // As a mirror of registry.k8s.io, and as the server of a private registry.
    s.write_hosts(
        "registry.k8s.io",
        &hosts_toml(&server.url(), &[format!("http://{addr}")]),
    );
    s.write_hosts(
        "private.berth.test",
        &format!("server = \"http://{addr}\"\n"),
    );
    let cases = [
        ("registry.k8s.io/pause:3.9", None),
        ("registry.k8s.io/pause:3.9", Some(addr.clone())),
        ("private.berth.test/team/app:v1", None),
        ("private.berth.test/team/app:v1", Some(addr.clone())),
        (
            "private.berth.test/team/app:v1",
            Some("private.berth.test".to_owned()),
        ),
    ];
    for (name, auth_host) in cases {
        let store = s.store();
        let opts = PullOptions {
            auth: basic(USER, PASSWORD),
            auth_host: auth_host.clone(),
            ..Default::default()
        };
        pull(&store, name, &opts).unwrap_or_else(|e| panic!("{name} {auth_host:?}: {e}"));
        assert_recorded(&store, name, &digest);
    }

    // On the wire: a mirror that asks for basic auth gets the credentials
    // only when they are meant for it.
    let stub = Stub::start(Misbehave::Unauthorized);
    s.write_hosts("wire.berth.test", &hosts_toml(&server.url(), &[stub.url()]));
    let expected = format!(
        "Basic {}",
        support::http::base64(format!("{USER}:{PASSWORD}").as_bytes())
    );
    for (auth_host, sent) in [
        (None, true),
        (Some(stub.addr.clone()), true),
        // As containerd: the registry's name covers its server, not the
        // mirrors (credentials go only to the host they name).
        (Some("wire.berth.test".to_owned()), false),
        (Some("other.berth.test".to_owned()), false),
        (Some(addr.clone()), false),
    ] {
        let seen = stub.heads().len();
        let opts = PullOptions {
            auth: basic(USER, PASSWORD),
            auth_host: auth_host.clone(),
            ..Default::default()
        };
        error_text(
            pull(&s.store(), "wire.berth.test/team/app:v1", &opts),
            "the stub refuses everyone",
        );
        assert!(stub.heads().len() > seen, "the stub mirror was not asked");
        let auths = stub.authorizations_after(seen);
        if sent {
            assert!(
                auths.contains(&expected),
                "auth_host {auth_host:?}: the credentials must be sent: {auths:?}"
            );
        } else {
            assert!(
                auths.is_empty(),
                "auth_host {auth_host:?}: no credentials may be sent: {auths:?}"
            );
        }
    }

    for name in [
        "registry.k8s.io/pause:3.9",
        "private.berth.test/team/app:v1",
    ] {
        // Anonymous.
        let store = s.store();
        let (_, msg) = error_text(pull_anon(&store, name), "anonymous");
        assert_unauthorized(&msg, &addr);
        assert_not_recorded(&store, name);
        // Credentials for another host are not sent.
        let opts = PullOptions {
            auth: basic(USER, PASSWORD),
            auth_host: Some("other.berth.test".into()),
            ..Default::default()
        };
        let (_, msg) = error_text(pull(&store, name, &opts), "credentials of another host");
        assert_unauthorized(&msg, &addr);
        assert_not_recorded(&store, name);
        // A wrong password: refused, clearly.
        let opts = PullOptions {
            auth: basic(USER, "wrong-password"),
            ..Default::default()
        };
        let (_, msg) = error_text(pull(&store, name, &opts), "wrong password");
        assert_unauthorized(&msg, &addr);
        assert!(msg.contains("refused"), "{msg}");
        assert_not_recorded(&store, name);
    }
}

#[test]
fn basic_auth_from_a_docker_config_json() {
    let registry = Registry::start_with_basic_auth(USER, PASSWORD).unwrap();
    let image = small_image("private");
    let digest = registry.push("pause", "3.9", &image).unwrap();
    registry.push("team/app", "v1", &image).unwrap();
    let server = DeadPort::new();
    let addr = registry.addr().to_owned();
    let s = Setup::new("hosts-auth-config");
    s.write_hosts(
        "registry.k8s.io",
        &hosts_toml(&server.url(), &[format!("http://{addr}")]),
    );
    s.write_hosts(
        "private.berth.test",
        &format!("server = \"http://{addr}\"\n"),
    );
    let auth_b64 = support::http::base64(format!("{USER}:{PASSWORD}").as_bytes());
    let configs = [
        // Keyed by the host the request goes to, both entry forms.
        format!(r#"{{"auths":{{"{addr}":{{"auth":"{auth_b64}"}}}}}}"#),
        format!(r#"{{"auths":{{"{addr}":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#),
        // Other registries' entries do not get in the way.
        format!(
            r#"{{"auths":{{"quay.io":{{"auth":"dXNlcjpwYXNz"}},"http://{addr}":{{"auth":"{auth_b64}"}}}}}}"#
        ),
    ];
    for (i, json) in configs.iter().enumerate() {
        let config = s.docker_config(&format!("config-{i}.json"), json);
        for name in [
            "registry.k8s.io/pause:3.9",
            "private.berth.test/team/app:v1",
        ] {
            let store = s.store_with(StoreOptions {
                docker_config: Some(config.clone()),
                ..s.options()
            });
            pull_anon(&store, name).unwrap_or_else(|e| panic!("{json} {name}: {e}"));
            assert_recorded(&store, name, &digest);
        }
    }

    // A private registry's server found by the registry's own name (what
    // `docker login private.berth.test` writes).
    let by_name = s.docker_config(
        "by-name.json",
        &format!(r#"{{"auths":{{"private.berth.test":{{"auth":"{auth_b64}"}}}}}}"#),
    );
    let store = s.store_with(StoreOptions {
        docker_config: Some(by_name),
        ..s.options()
    });
    pull_anon(&store, "private.berth.test/team/app:v1").unwrap();
    assert_recorded(&store, "private.berth.test/team/app:v1", &digest);

    // PullOptions credentials for another host: the docker config applies.
    let good = s.docker_config(
        "good.json",
        &format!(r#"{{"auths":{{"{addr}":{{"auth":"{auth_b64}"}}}}}}"#),
    );
    let store = s.store_with(StoreOptions {
        docker_config: Some(good),
        ..s.options()
    });
    let opts = PullOptions {
        auth: basic(USER, "wrong-password"),
        auth_host: Some("other.berth.test".into()),
        ..Default::default()
    };
    pull(&store, "registry.k8s.io/pause:3.9", &opts).unwrap();
    assert_recorded(&store, "registry.k8s.io/pause:3.9", &digest);

    // A wrong password in the config: refused, clearly, nothing recorded.
    let wrong = s.docker_config(
        "wrong.json",
        &format!(r#"{{"auths":{{"{addr}":{{"username":"{USER}","password":"wrong-password"}}}}}}"#),
    );
    let store = s.store_with(StoreOptions {
        docker_config: Some(wrong),
        ..s.options()
    });
    for name in [
        "registry.k8s.io/pause:3.9",
        "private.berth.test/team/app:v1",
    ] {
        let (_, msg) = error_text(pull_anon(&store, name), "wrong password");
        assert_unauthorized(&msg, &addr);
        assert!(msg.contains("refused"), "{msg}");
        assert_not_recorded(&store, name);
    }

    // On the wire: each host gets its own entry and no other. A mirror in
    // front that asks for basic auth gets nothing when the config has no
    // entry for it, then its own entry when it has one; the registry behind
    // it gets its entry and the pull succeeds either way.
    let stub = Stub::start(Misbehave::Unauthorized);
    s.write_hosts(
        "registry.k8s.io",
        &hosts_toml(&server.url(), &[stub.url(), format!("http://{addr}")]),
    );
    let stub_b64 = support::http::base64(b"stub-user:stub-pass");
    for (i, stub_entry) in [None, Some(&stub_b64)].into_iter().enumerate() {
        let mut auths = format!(r#""{addr}":{{"auth":"{auth_b64}"}}"#);
        if let Some(b64) = stub_entry {
            auths.push_str(&format!(r#","{}":{{"auth":"{b64}"}}"#, stub.addr));
        }
        let config = s.docker_config(
            &format!("scoped-{i}.json"),
            &format!(r#"{{"auths":{{{auths}}}}}"#),
        );
        let store = s.store_with(StoreOptions {
            docker_config: Some(config),
            ..s.options()
        });
        let seen = stub.heads().len();
        pull_anon(&store, "registry.k8s.io/pause:3.9").unwrap();
        assert_recorded(&store, "registry.k8s.io/pause:3.9", &digest);
        assert!(stub.heads().len() > seen, "the stub mirror was not asked");
        let sent = stub.authorizations_after(seen);
        match stub_entry {
            None => assert!(sent.is_empty(), "another host's entry was sent: {sent:?}"),
            Some(b64) => assert!(
                !sent.is_empty() && sent.iter().all(|a| *a == format!("Basic {b64}")),
                "the mirror must get its own entry only: {sent:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// 4. TLS: a private CA, skip_verify, client certificates.

/// A plain registry holding `team/app:v1` and a TLS registry serving its
/// storage.
struct TlsWorld {
    tls: TlsRegistry,
    _plain: Registry,
    pki: Pki,
    digest: String,
    s: Setup,
}

const SECURE: &str = "secure.berth.test";
const SECURE_IMAGE: &str = "secure.berth.test/team/app:v1";

impl TlsWorld {
    fn start(label: &str, require_client_cert: bool) -> TlsWorld {
        let plain = Registry::start().unwrap();
        let digest = plain
            .push("team/app", "v1", &small_image("secure"))
            .unwrap();
        let pki = Pki::generate(label).unwrap();
        let tls = TlsRegistry::start(&plain.storage_dir(), &pki, require_client_cert).unwrap();
        TlsWorld {
            tls,
            _plain: plain,
            pki,
            digest,
            s: Setup::new(label),
        }
    }

    /// `certs.d/secure.berth.test/hosts.toml` with the TLS registry as the
    /// server and `settings` after it; returns the file's directory.
    fn server_file(&self, settings: &str) -> PathBuf {
        let file = self.s.write_hosts(
            SECURE,
            &format!("server = \"{}\"\n{settings}", self.tls.url()),
        );
        file.parent().unwrap().to_owned()
    }

    fn pull(&self) -> berth_image::Result<berth_image::Image> {
        pull_anon(&self.s.store(), SECURE_IMAGE)
    }

    fn assert_pulls(&self, what: &str) {
        let store = self.s.store();
        pull_anon(&store, SECURE_IMAGE).unwrap_or_else(|e| {
            panic!(
                "{what}: {e}\nregistry log:\n{}",
                tail(&self.tls.log_text(), 10)
            )
        });
        assert_recorded(&store, SECURE_IMAGE, &self.digest);
    }

    /// The pull fails, at the TLS handshake (the registry logs it).
    fn assert_fails(&self, what: &str) -> String {
        let before = self.handshake_errors();
        let (e, msg) = error_text(self.pull(), what);
        assert!(
            matches!(e, Error::Registry(_)),
            "{what}: unexpected error kind: {e:?}"
        );
        assert!(msg.contains(self.tls.addr()), "{what}: {msg}");
        self.assert_handshake_failed_since(before, what);
        msg
    }

    fn handshake_errors(&self) -> usize {
        self.tls.log_text().matches("TLS handshake error").count()
    }

    /// Go's server logs the handshake error a moment after the client hung
    /// up: give it a second.
    fn assert_handshake_failed_since(&self, before: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.handshake_errors() <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            self.handshake_errors() > before,
            "{what}: the registry saw no failed TLS handshake; its log:\n{}",
            tail(&self.tls.log_text(), 10)
        );
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn tls_registry_with_a_private_ca() {
    let w = TlsWorld::start("hosts-tls", false);
    let other = Pki::generate("untrusted").unwrap();

    // The system roots do not know the private CA.
    w.server_file("");
    w.assert_fails("no ca");
    // Nor does another CA.
    w.server_file(&format!("ca = \"{}\"\n", other.ca().display()));
    w.assert_fails("another CA");

    // An absolute path.
    w.server_file(&format!("ca = \"{}\"\n", w.pki.ca().display()));
    w.assert_pulls("absolute ca");
    // Relative to the registry's directory, as containerd resolves them.
    let dir = w.server_file("ca = \"ca.pem\"\n");
    std::fs::copy(w.pki.ca(), dir.join("ca.pem")).unwrap();
    w.assert_pulls("ca next to hosts.toml");
    let shared = w.s.hosts_dir().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::copy(w.pki.ca(), shared.join("root.pem")).unwrap();
    w.server_file("ca = \"../shared/root.pem\"\n");
    w.assert_pulls("ca in ../shared");
    // A list: the untrusted CA first, the right one second.
    std::fs::copy(other.ca(), dir.join("other.pem")).unwrap();
    w.server_file("ca = [\"other.pem\", \"ca.pem\"]\n");
    w.assert_pulls("a list of CAs");
    // skip_verify instead of a CA.
    w.server_file("skip_verify = true\n");
    w.assert_pulls("skip_verify");
    w.server_file("skip_verify = false\n");
    w.assert_fails("skip_verify = false");

    // The same settings on a mirror entry.
    let server = DeadPort::new();
    let mirror = |settings: &str| {
        w.s.write_hosts(
            "registry.k8s.io",
            &format!(
                "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{settings}",
                server.url(),
                w.tls.url()
            ),
        )
    };
    let file = mirror("");
    let store = w.s.store();
    let before = w.handshake_errors();
    let (_, msg) = error_text(
        pull_anon(&store, "registry.k8s.io/team/app:v1"),
        "mirror without ca",
    );
    assert!(msg.contains(w.tls.addr()), "{msg}");
    w.assert_handshake_failed_since(before, "mirror without ca");
    assert_not_recorded(&store, "registry.k8s.io/team/app:v1");
    std::fs::copy(w.pki.ca(), file.parent().unwrap().join("ca.pem")).unwrap();
    for settings in ["  ca = \"ca.pem\"\n", "  skip_verify = true\n"] {
        mirror(settings);
        let store = w.s.store();
        pull_anon(&store, "registry.k8s.io/team/app:v1")
            .unwrap_or_else(|e| panic!("mirror with {settings}: {e}"));
        assert_recorded(&store, "registry.k8s.io/team/app:v1", &w.digest);
    }
}

/// What the user needs to fix a TLS failure: the certificate problem. The
/// cause is in reqwest's error chain ("invalid peer certificate:
/// UnknownIssuer", "received fatal alert: BadCertificate") but
/// registry.rs's `http_error` prints only the top error.
#[test]
fn tls_failures_name_the_certificate_problem() {
    // The server's certificate is not trusted.
    let w = TlsWorld::start("hosts-tls-msg", false);
    w.server_file("");
    let msg = w.assert_fails("no ca");
    assert!(
        msg.to_lowercase().contains("certificate"),
        "the error should say the server's certificate is not trusted: {msg}"
    );
    // The registry wants a client certificate and got none.
    let w = TlsWorld::start("hosts-mtls-msg", true);
    w.server_file(&format!("ca = \"{}\"\n", w.pki.ca().display()));
    let msg = w.assert_fails("no client certificate");
    assert!(
        msg.to_lowercase().contains("certificate"),
        "the error should say a client certificate is required: {msg}"
    );
}

#[test]
fn tls_client_certificates() {
    let w = TlsWorld::start("hosts-mtls", true);
    let other = Pki::generate("stranger").unwrap();
    let ca = format!("ca = \"{}\"\n", w.pki.ca().display());

    // No client certificate: the handshake is refused.
    w.server_file(&ca);
    w.assert_fails("no client certificate");
    // One from a CA the registry does not trust.
    w.server_file(&format!(
        "{ca}client = [\"{}\", \"{}\"]\n",
        other.client_cert().display(),
        other.client_key().display()
    ));
    w.assert_fails("a stranger's client certificate");

    // [cert, key], relative to the registry's directory.
    let dir = w.server_file(&format!(
        "{ca}client = [\"client.pem\", \"client-key.pem\"]\n"
    ));
    std::fs::copy(w.pki.client_cert(), dir.join("client.pem")).unwrap();
    std::fs::copy(w.pki.client_key(), dir.join("client-key.pem")).unwrap();
    w.assert_pulls("client = [cert, key]");
    // One file with both.
    w.server_file(&format!(
        "{ca}client = \"{}\"\n",
        w.pki.client_combined().display()
    ));
    w.assert_pulls("client = combined pem");
    // [[cert, key]], absolute.
    w.server_file(&format!(
        "{ca}client = [[\"{}\", \"{}\"]]\n",
        w.pki.client_cert().display(),
        w.pki.client_key().display()
    ));
    w.assert_pulls("client = [[cert, key]]");
}

// ---------------------------------------------------------------------------
// 5. Edits apply to the next pull.

#[test]
fn hosts_toml_edits_apply_to_the_next_pull_without_reopening_the_store() {
    let a = Registry::start().unwrap();
    let b = Registry::start().unwrap();
    let from_a = a.push("pause", "3.9", &small_image("from A")).unwrap();
    let from_b = b.push("pause", "3.9", &small_image("from B")).unwrap();
    let server = DeadPort::new();
    let s = Setup::new("hosts-edits");
    // The store is opened before the hosts dir even exists.
    let later = s.dir.join("later.d");
    let store = s.store_with(StoreOptions {
        hosts_dir: Some(later.clone()),
        ..Default::default()
    });
    let write = |registry: &str, text: &str| {
        std::fs::create_dir_all(later.join(registry)).unwrap();
        std::fs::write(later.join(registry).join("hosts.toml"), text).unwrap();
    };
    let k8s = "registry.k8s.io/pause:3.9";

    write(
        "registry.k8s.io",
        &hosts_toml(&server.url(), &[format!("http://{}", a.addr())]),
    );
    let first = pull_anon(&store, k8s).unwrap();
    assert_recorded(&store, k8s, &from_a);

    // Another port: the next pull goes there.
    write(
        "registry.k8s.io",
        &hosts_toml(&server.url(), &[format!("http://{}", b.addr())]),
    );
    let second = pull_anon(&store, k8s).unwrap();
    assert_ne!(first.id, second.id);
    assert_recorded(&store, k8s, &from_b);

    // And back, with B gone: the mirror that worked last is not
    // remembered across pulls.
    write(
        "registry.k8s.io",
        &hosts_toml(&server.url(), &[format!("http://{}", a.addr())]),
    );
    drop(b);
    pull_anon(&store, k8s).unwrap();
    assert_recorded(&store, k8s, &from_a);
    // Pointing at nothing now fails...
    let dead = DeadPort::new();
    write("registry.k8s.io", &hosts_toml(&server.url(), &[dead.url()]));
    let (_, msg) = error_text(pull_anon(&store, k8s), "dead mirror");
    assert!(msg.contains(&format!("127.0.0.1:{}", dead.port)), "{msg}");
    // ...and a directory for another registry appears and is used.
    write(
        "gcr.io",
        &hosts_toml(&server.url(), &[format!("http://{}", a.addr())]),
    );
    let app = a.push("proj/app", "v1", &small_image("app")).unwrap();
    pull_anon(&store, "gcr.io/proj/app:v1").unwrap();
    assert_recorded(&store, "gcr.io/proj/app:v1", &app);
    // The image pulled before is still recorded under its name.
    assert_recorded(&store, k8s, &from_a);
}

// ---------------------------------------------------------------------------
// 6. Broken files fail their own registry, naming the file and the line.

#[test]
fn broken_hosts_files_fail_their_own_registry_naming_file_and_line() {
    let mirror = Registry::start().unwrap();
    let pushed = fill_mirror(&mirror);
    let m = format!("http://{}", mirror.addr());
    let server = DeadPort::new();
    let s = Setup::new("hosts-broken");
    s.write_hosts(
        "gcr.io",
        &hosts_toml(&server.url(), std::slice::from_ref(&m)),
    );
    let store = s.store();
    let good = |store: &Arc<ImageStore>| {
        pull_anon(store, "gcr.io/proj/app:v1").expect("the good registry must work");
        assert_recorded(store, "gcr.io/proj/app:v1", &pushed.app);
    };
    good(&store);

    let head = format!(
        "# a mirror for tests\nserver = \"{}\"\n\n[host.\"{m}\"]\n",
        server.url()
    );
    let missing_ca = s
        .hosts_dir()
        .join("ghcr.io/missing-ca.pem")
        .display()
        .to_string();
    // (registry, image, file text, line, words the message must contain)
    let cases: Vec<(&str, &str, String, usize, Vec<String>)> = vec![
        (
            "registry.k8s.io",
            "registry.k8s.io/pause:3.9",
            format!("{head}  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = yes\n"),
            6,
            vec![],
        ),
        (
            "docker.io",
            "docker.io/library/busybox:1",
            format!("{head}  capabilities = [\n    \"pull\",\n    \"fetch\",\n  ]\n"),
            7,
            vec!["fetch".into()],
        ),
        (
            "quay.io",
            "quay.io/proj/app:v1",
            format!(
                "{head}  capabilities = [\"pull\", \"resolve\"]\n  ca = \"/nonexistent/berth/ca.pem\"\n"
            ),
            6,
            vec!["/nonexistent/berth/ca.pem".into()],
        ),
        (
            "ghcr.io",
            "ghcr.io/proj/app:v1",
            format!("{head}  capabilities = [\"pull\", \"resolve\"]\n  ca = \"missing-ca.pem\"\n"),
            6,
            vec![missing_ca],
        ),
        (
            "typo.berth.test",
            "typo.berth.test/proj/app:v1",
            format!("{head}  capabilties = [\"pull\", \"resolve\"]\n"),
            5,
            vec!["capabilties".into()],
        ),
    ];
    let mut files = Vec::new();
    for (registry, _, text, _, _) in &cases {
        files.push(s.write_hosts(registry, text));
    }
    for ((registry, image, _, line, words), file) in cases.iter().zip(&files) {
        let started = Instant::now();
        let (e, msg) = error_text(pull_anon(&store, image), registry);
        assert!(
            matches!(e, Error::Config(_)),
            "{registry}: a configuration error expected: {e:?}"
        );
        let at = format!("{}:{line}", file.display());
        assert!(
            msg.contains(&at),
            "{registry}: the error must name {at}: {msg}"
        );
        for w in words {
            assert!(msg.contains(w.as_str()), "{registry}: {w} missing: {msg}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{registry}: a configuration error is not retried"
        );
        assert_not_recorded(&store, image);
        // The other registry, in the same store, is unaffected.
        good(&store);
        good(&s.store());
    }

    // Fixed, the file works on the next pull.
    s.write_hosts(
        "registry.k8s.io",
        &format!("{head}  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = false\n"),
    );
    pull_anon(&store, "registry.k8s.io/pause:3.9").unwrap();
    assert_recorded(&store, "registry.k8s.io/pause:3.9", &pushed.pause);
}

// ---------------------------------------------------------------------------
// 7. The same files with containerd 1.6's ctr.

/// A private containerd: own root, state, socket and namespace, CRI off.
/// Drop stops it and removes everything.
struct Containerd {
    daemon: Option<Child>,
    socket: PathBuf,
    namespace: String,
    runs: AtomicU32,
    dir: TempDir,
}

struct CtrOutput {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl CtrOutput {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl Containerd {
    fn start() -> Containerd {
        for tool in ["containerd", "ctr"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(found, "{tool} not found: apt-get install containerd");
        }
        let dir = TempDir::new("hosts-ctd").unwrap();
        let d = dir.path().display().to_string();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        support::tls::die_with_thread(&mut cmd);
        let daemon = cmd.spawn().expect("starting containerd");
        let mut ctd = Containerd {
            daemon: Some(daemon),
            socket: dir.join("c.sock"),
            namespace: format!("berth-hosts-{}", std::process::id()),
            runs: AtomicU32::new(0),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = ctd.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({status}): {}", ctd.log_tail());
            }
            if ctd.socket.exists() && ctd.ctr(&["version"], Duration::from_secs(5)).ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s: {}",
                ctd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ctd
    }

    fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default(),
            30,
        )
    }

    /// Runs `ctr --address <socket> -n <namespace> ARGS`, killed after
    /// `timeout`.
    fn ctr(&self, args: &[&str], timeout: Duration) -> CtrOutput {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.join(format!("ctr-{n}.out"));
        let err_path = self.dir.join(format!("ctr-{n}.err"));
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("running ctr");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        CtrOutput {
            status,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// The DIGEST column of `ctr images ls` for `name`.
    fn image_digest(&self, name: &str) -> Option<String> {
        let out = self.ctr(&["images", "ls"], Duration::from_secs(30));
        assert!(out.ok(), "ctr images ls: {}", out.stderr);
        out.stdout.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&name)).then(|| f.get(2).map(|d| d.to_string()))?
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // `dir` (root, state, socket, snapshots) goes next, mounts detached.
    }
}

#[test]
fn containerd_1_6_and_berth_pull_the_same_image_through_the_same_hosts_toml() {
    let mirror = Registry::start().unwrap();
    let pushed = fill_mirror(&mirror);
    let s = Setup::new("hosts-ctr");
    // As an operator writes them for containerd: http:// mirrors, no
    // --plain-http needed.
    let m = format!("http://{}", mirror.addr());
    s.write_hosts(
        "registry.k8s.io",
        &format!(
            "server = \"https://registry.k8s.io\"\n\n{}",
            mirror_table(&m)
        ),
    );
    s.write_hosts(
        "docker.io",
        &format!(
            "server = \"https://registry-1.docker.io\"\n\n{}",
            mirror_table(&m)
        ),
    );
    let hosts_dir = s.hosts_dir().display().to_string();
    let ctd = Containerd::start();
    let store = s.store();
    for (name, top, manifest, config) in [
        (
            "registry.k8s.io/pause:3.9",
            &pushed.pause,
            &pushed.pause_manifest,
            None,
        ),
        (
            "docker.io/library/busybox:1",
            &pushed.busybox,
            &pushed.busybox,
            Some(&pushed.busybox_config),
        ),
    ] {
        let out = ctd.ctr(
            &["images", "pull", "--hosts-dir", &hosts_dir, name],
            Duration::from_secs(120),
        );
        assert!(
            out.ok(),
            "ctr images pull {name} ({:?}):\n{}\n{}\ncontainerd: {}",
            out.status,
            out.stdout,
            out.stderr,
            ctd.log_tail()
        );
        let ctr_digest = ctd.image_digest(name).expect("ctr lists the image");
        assert_eq!(&ctr_digest, top, "containerd's digest for {name}");

        let image = pull_anon(&store, name).unwrap();
        let recorded = assert_recorded(&store, name, &ctr_digest);
        assert_eq!(&image.manifest_digest, manifest);
        if let Some(config) = config {
            assert_eq!(&image.id, config);
        }
        // containerd fetched the same platform manifest and config.
        let content = ctd.ctr(&["content", "ls", "-q"], Duration::from_secs(30));
        assert!(content.ok(), "{}", content.stderr);
        for digest in [&recorded.manifest_digest, &recorded.id] {
            assert!(
                content.stdout.lines().any(|l| l.trim() == digest.as_str()),
                "containerd's content store lacks {digest}: {}",
                content.stdout
            );
        }
    }
    drop(ctd);
}
