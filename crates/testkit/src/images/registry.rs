//! A throwaway Debian `docker-registry` (distribution 2.8) on 127.0.0.1.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::RegistryClient;
use super::oci::Artifact;
use super::tempdir::TempDir;

// Adds what was being attempted to error messages.
use super::Context;

/// Where Debian installs the registry (package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long to wait for `GET /v2/` to answer; the registry is up in well
/// under a second, but CI machines can be loaded.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry with its own port, storage directory and log file.
/// Dropping it kills the process and removes the directory.
///
/// Each instance answers with a unique `X-Berth-Test-Registry` header, which
/// is how startup tells its own registry from another test's that happened to
/// grab the same port between our probe and its bind (it then retries on a
/// new port).
pub struct Registry {
    addr: String,
    credentials: Option<(String, String)>,
    pid: u32,
    /// Dropping the sender tells the keeper thread to kill the registry.
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
    // Declared last: removed after the process is gone.
    dir: TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("pid", &self.pid)
            .field("dir", &self.dir.path())
            .field("auth", &self.credentials.is_some())
            .finish()
    }
}

impl Registry {
    /// An anonymous registry: anyone may push and pull.
    pub fn start() -> io::Result<Registry> {
        Registry::start_inner(None)
    }

    /// A registry that answers 401 to every request without these basic-auth
    /// credentials. Needs `htpasswd` (Debian package `apache2-utils`) to make
    /// the bcrypt entry the registry insists on.
    pub fn start_with_basic_auth(user: &str, password: &str) -> io::Result<Registry> {
        if user.contains(':') || user.is_empty() {
            return Err(super::err(format!("invalid htpasswd user name {user:?}")));
        }
        Registry::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> io::Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(super::err(format!(
                "{REGISTRY_BIN} not found: apt-get install docker-registry"
            )));
        }
        let dir = TempDir::new("registry")?;
        let htpasswd = match &credentials {
            Some((user, password)) => {
                let path = dir.join("htpasswd");
                fs::write(&path, htpasswd_line(user, password)?)
                    .context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let mut last_failure = String::new();
        // Retries only cover losing the port to someone else between picking
        // it and the registry binding it.
        for _attempt in 0..5 {
            let port = free_port()?;
            let token = unique_token();
            let config = dir.join("config.yml");
            fs::write(
                &config,
                config_yaml(dir.path(), port, &token, htpasswd.as_deref()),
            )
            .context(|| format!("writing {}", config.display()))?;
            let log = dir.join("registry.log");
            let (pid, stop, keeper, exited) = spawn_kept(&config, &log)?;
            let addr = format!("127.0.0.1:{port}");
            match wait_ready(&addr, &token, credentials.is_some(), &exited, &log) {
                Ok(()) => {
                    return Ok(Registry {
                        addr,
                        credentials,
                        pid,
                        stop: Some(stop),
                        keeper: Some(keeper),
                        dir,
                    });
                }
                Err(why) => {
                    stop_kept(stop, keeper);
                    // Anything but a lost port (a bad config, a wedged
                    // registry) would fail the same way again.
                    if !why.contains("address already in use") {
                        return Err(super::err(why));
                    }
                    last_failure = why;
                    let _ = fs::remove_dir_all(dir.join("storage"));
                }
            }
        }
        Err(super::err(format!(
            "docker-registry did not start after 5 attempts; last: {last_failure}"
        )))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `127.0.0.1:PORT/<repo>:<tag>`, the form image references use.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    /// The basic-auth user and password, if the registry requires them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A client that authenticates when the registry requires it.
    pub fn client(&self) -> RegistryClient {
        let client = RegistryClient::new(self.addr.clone());
        match &self.credentials {
            Some((u, p)) => client.with_basic_auth(u, p),
            None => client,
        }
    }

    /// A client that never sends credentials.
    pub fn anonymous_client(&self) -> RegistryClient {
        RegistryClient::new(self.addr.clone())
    }

    /// Pushes an image or index as `<repo>:<tag>` (with the registry's
    /// credentials, if any); returns the digest of the tagged manifest.
    pub fn push(&self, repo: &str, tag: &str, artifact: &Artifact) -> io::Result<String> {
        artifact.push(&self.client(), repo, tag)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The filesystem driver's root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The registry's own log (stdout and stderr), for failure messages.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let (Some(stop), Some(keeper)) = (self.stop.take(), self.keeper.take()) {
            stop_kept(stop, keeper);
        }
        // `dir` is dropped (removed) after this, with the process already reaped.
    }
}

/// Polls `GET /v2/` until our own instance answers; an error says what went
/// wrong, including the registry's log.
fn wait_ready(
    addr: &str,
    token: &str,
    auth: bool,
    exited: &Mutex<Option<ExitStatus>>,
    log: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    // Short: a stranger on our port might accept and never answer.
    let client = RegistryClient::new(addr).with_timeout(Duration::from_secs(2));
    let expected = if auth { 401 } else { 200 };
    let log_text = || fs::read_to_string(log).unwrap_or_default();
    loop {
        let status = exited.lock().map(|s| *s).unwrap_or(None);
        if let Some(status) = status {
            return Err(format!(
                "docker-registry exited with {status} before answering on {addr}; log:\n{}",
                log_text()
            ));
        }
        match client.get("/v2/", &[]) {
            Ok(r) if r.header("x-berth-test-registry") == Some(token) => {
                if r.status == expected {
                    return Ok(());
                }
                return Err(format!(
                    "GET /v2/ answered {} instead of {expected}: {}",
                    r.status,
                    r.body_text()
                ));
            }
            // Nothing listening yet, or someone else's server on our port:
            // ours will then fail to bind and exit, which the check above
            // turns into a retry.
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no answer on {addr} within {STARTUP_TIMEOUT:?}; log:\n{}",
                log_text()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Kills a kept registry and waits until it is reaped.
fn stop_kept(stop: mpsc::Sender<()>, keeper: JoinHandle<()>) {
    drop(stop);
    if keeper.join().is_err() {
        eprintln!("warning: the registry keeper thread panicked");
    }
}

type Kept = (
    u32,
    mpsc::Sender<()>,
    JoinHandle<()>,
    Arc<Mutex<Option<ExitStatus>>>,
);

/// Spawns the registry from a dedicated thread that owns it until told to
/// stop.
///
/// Why a thread: the child gets `PR_SET_PDEATHSIG(SIGKILL)`, which fires when
/// the *thread* that forked it ends. Forking from the test's own thread would
/// kill a registry kept in a `static` as soon as the first test using it
/// returned; forking from a thread that lives exactly as long as the
/// `Registry` makes the signal mean "the test process died without running
/// Drop" (panic=abort, SIGKILL by a CI timeout), so no registry outlives it.
fn spawn_kept(config: &Path, log: &Path) -> io::Result<Kept> {
    let log_out = fs::File::create(log).context(|| format!("creating {}", log.display()))?;
    let log_err = log_out
        .try_clone()
        .context(|| format!("duplicating {}", log.display()))?;
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_out)
        .stderr(log_err);
    die_with_thread(&mut cmd);

    let (started_tx, started_rx) = mpsc::channel::<io::Result<u32>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let exited = Arc::new(Mutex::new(None));
    let exited_keeper = Arc::clone(&exited);
    let keeper = std::thread::Builder::new()
        .name("registry-keeper".into())
        .spawn(move || {
            let mut child: Child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let _ = started_tx.send(Ok(child.id()));
            loop {
                match stop_rx.recv_timeout(Duration::from_millis(50)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Ok(Some(status)) = child.try_wait() {
                            if let Ok(mut slot) = exited_keeper.lock() {
                                *slot = Some(status);
                            }
                            return;
                        }
                    }
                    // Stop requested, or the Registry was dropped.
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                }
            }
        })
        .context(|| "spawning the registry keeper thread".into())?;
    let pid = started_rx
        .recv()
        .map_err(|_| super::err("the registry keeper thread died before starting it"))?
        .context(|| format!("starting {REGISTRY_BIN}"))?;
    Ok((pid, stop_tx, keeper, exited))
}

/// SIGKILL for the child when the thread that spawned it ends (not the
/// process: the registry is kept by a thread of its own).
pub fn die_with_thread(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A port the kernel just handed out; the registry binds it a moment later.
fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context(|| "binding 127.0.0.1:0 to find a free port".into())?;
    Ok(listener
        .local_addr()
        .context(|| "reading the probe listener's address".into())?
        .port())
}

fn unique_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One bcrypt htpasswd line. distribution's htpasswd controller accepts only
/// bcrypt, which std cannot compute, hence the external tool (cost 4, the
/// minimum, keeps auth checks fast).
fn htpasswd_line(user: &str, password: &str) -> io::Result<String> {
    let mut cmd = Command::new("htpasswd");
    cmd.args(["-nbB", "-C", "4", user, password]);
    let out = super::tool_stdout(&mut cmd, "htpasswd", "apache2-utils")?;
    let text = String::from_utf8(out).context(|| "htpasswd output".into())?;
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    if !line.starts_with(&format!("{user}:$2")) {
        return Err(super::err(format!("unexpected htpasswd output {text:?}")));
    }
    Ok(line + "\n")
}

fn yaml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The registry configuration: filesystem storage in our directory, logs at
/// warn level (they go to registry.log anyway), no background upload purging
/// (it would only add noise and work), and our identifying header.
fn config_yaml(dir: &Path, port: u16, token: &str, htpasswd: Option<&Path>) -> String {
    let storage = dir.join("storage");
    let mut yaml = format!(
        "version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {token}
  headers:
    X-Berth-Test-Registry: [{token_q}]
",
        storage = yaml_quote(&storage.to_string_lossy()),
        token = yaml_quote(token),
        token_q = yaml_quote(token),
    );
    if let Some(path) = htpasswd {
        yaml.push_str(&format!(
            "auth:
  htpasswd:
    realm: berth-test
    path: {}
",
            yaml_quote(&path.to_string_lossy())
        ));
    }
    yaml
}
