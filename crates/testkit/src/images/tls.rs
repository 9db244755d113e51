//! HTTPS for registry tests: a throwaway PKI made with the `openssl` CLI
//! (a CA, a server certificate for 127.0.0.1, a client certificate) and a
//! Debian `docker-registry` serving an existing storage directory over TLS,
//! optionally demanding client certificates (`http.tls.clientcas`).
//!
//! Fill the storage with a plain [`Registry`](super::Registry) (the support
//! HTTP client cannot speak TLS) and serve its
//! [`storage_dir`](super::Registry::storage_dir) from a [`TlsRegistry`]:
//! both processes may run at once, the TLS one only reads.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use super::registry::die_with_thread;
use super::registry::REGISTRY_BIN;
use super::tempdir::TempDir;

// Adds what was being attempted to error messages.
use super::Context;

/// Runs `openssl` with `args` in `dir`; the error carries its stderr.
fn openssl(dir: &Path, args: &[&str]) -> io::Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    let what = format!("openssl {}", args.join(" "));
    super::tool_stdout(&mut cmd, &what, "openssl").map(drop)
}

/// A random serial number, so two PKIs never issue look-alike certificates.
fn serial() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "0x{:x}{:04x}",
        nanos ^ u64::from(std::process::id()),
        N.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

/// A CA (EC P-256, v3, `CA:TRUE`) with one server certificate for
/// `IP:127.0.0.1, DNS:localhost` and one client certificate
/// (`extendedKeyUsage=clientAuth`), all PEM files in their own directory,
/// removed on drop. Keys are PKCS#8 (`BEGIN PRIVATE KEY`).
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Generates everything; `name` goes into the CA's common name.
    pub fn generate(name: &str) -> io::Result<Pki> {
        let dir = TempDir::new("pki")?;
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let ca_subject = format!("/CN=berth test CA {name}");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &ca_subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &args)?;
        let leaf = |stem: &str, subject: &str, ext: &str| -> io::Result<()> {
            let key = format!("{stem}-key.pem");
            let csr = format!("{stem}.csr");
            let cert = format!("{stem}.pem");
            let extfile = format!("{stem}.ext");
            fs::write(d.join(&extfile), ext).context(|| format!("writing {extfile}"))?;
            let mut args = vec!["req", "-new"];
            args.extend(ec);
            args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", subject]);
            openssl(d, &args)?;
            let serial = serial();
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca-key.pem",
                    "-set_serial",
                    &serial,
                    "-days",
                    "2",
                    "-out",
                    &cert,
                    "-extfile",
                    &extfile,
                ],
            )
        };
        leaf(
            "server",
            "/CN=127.0.0.1",
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        leaf(
            "client",
            &format!("/CN=berth test client {name}"),
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        // Certificate and key in one file, the other form hosts.toml takes.
        let mut combined = fs::read(d.join("client.pem")).context(|| "client.pem".into())?;
        combined.extend(fs::read(d.join("client-key.pem")).context(|| "client-key.pem".into())?);
        fs::write(d.join("client-combined.pem"), combined)
            .context(|| "writing client-combined.pem".into())?;
        Ok(Pki { dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (what a client must trust).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    /// The client certificate followed by its key, in one PEM file.
    pub fn client_combined(&self) -> PathBuf {
        self.dir.join("client-combined.pem")
    }
}

/// A docker-registry on `https://127.0.0.1:PORT` serving `storage` with the
/// server certificate of a [`Pki`]. Dropping it kills the process.
///
/// The process gets SIGKILL when the thread that started it ends, so a test
/// killed before `Drop` leaves nothing behind; keep it in the test's own
/// thread (not in a `static`).
pub struct TlsRegistry {
    addr: String,
    child: Child,
    // Declared last: removed after the process is gone (Drop kills it first).
    dir: TempDir,
}

impl std::fmt::Debug for TlsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRegistry")
            .field("addr", &self.addr)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl TlsRegistry {
    /// Serves `storage` over TLS; with `require_client_cert`, every
    /// connection must present a certificate issued by `pki`'s CA.
    pub fn start(storage: &Path, pki: &Pki, require_client_cert: bool) -> io::Result<TlsRegistry> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(super::err(format!(
                "{REGISTRY_BIN} not found: apt-get install docker-registry"
            )));
        }
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = TempDir::new("tls-registry")?;
        let config = dir.join("config.yml");
        let log = dir.join("registry.log");
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let mut last = String::new();
        // Retries only cover losing the port between probing and binding.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context(|| "finding a free port".into())?
                .port();
            let marker = format!(
                "tls-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            );
            let mut yaml = format!(
                "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: \"{marker}\"
  headers:
    X-Berth-Test-Registry: [\"{marker}\"]
  tls:
    certificate: {cert}
    key: {key}
",
                storage = q(storage),
                cert = q(&pki.server_cert()),
                key = q(&pki.server_key()),
            );
            if require_client_cert {
                yaml.push_str(&format!("    clientcas:\n      - {}\n", q(&pki.ca())));
            }
            fs::write(&config, yaml).context(|| format!("writing {}", config.display()))?;
            let out = fs::File::create(&log).context(|| format!("creating {}", log.display()))?;
            let err = out.try_clone().context(|| "dup of the log".into())?;
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            die_with_thread(&mut cmd);
            let child = cmd.spawn().context(|| format!("starting {REGISTRY_BIN}"))?;
            let mut child = child;
            let addr = format!("127.0.0.1:{port}");
            match wait_ready(&mut child, &addr, &log, &marker, pki, require_client_cert) {
                Ok(()) => return Ok(TlsRegistry { addr, child, dir }),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if !why.contains("address already in use") {
                        return Err(super::err(why));
                    }
                    last = why;
                }
            }
        }
        Err(super::err(format!(
            "the TLS registry did not start after 5 attempts; last: {last}"
        )))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry's log (TLS handshake errors land here).
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET /v2/` over TLS until our own instance answers 200.
fn wait_ready(
    child: &mut Child,
    addr: &str,
    log: &Path,
    marker: &str,
    pki: &Pki,
    client_cert: bool,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a tokio runtime for the probe: {e}"))?;
    let mut builder = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2));
    if client_cert {
        let pem = fs::read(pki.client_combined()).map_err(|e| e.to_string())?;
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| e.to_string())?;
        builder = builder.identity(id);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let url = format!("https://{}/v2/", addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "docker-registry (TLS) exited with {status}; log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            ));
        }
        let answer = rt.block_on(async {
            let r = client.get(&url).send().await.ok()?;
            let ours = r
                .headers()
                .get("x-berth-test-registry")
                .and_then(|v| v.to_str().ok())
                == Some(marker);
            Some((ours, r.status().as_u16()))
        });
        match answer {
            Some((true, 200)) => return Ok(()),
            Some((true, status)) => {
                return Err(format!(
                    "GET {url} answered {status}; log:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                ));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no answer on {url} within 30s; log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
