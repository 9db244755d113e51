//! A private berthd for a test: its own root, state and socket under /tmp,
//! a CRI client on its socket, and a Drop that removes every pod,
//! container, shim, mount and cgroup it made. Images come from a real
//! registry (Debian's docker-registry) on 127.0.0.1.

#![allow(dead_code)]

#[path = "../../../image/tests/support/mod.rs"]
pub mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The shim berthd starts: built beside berthd by `cargo build`.
pub fn shim_binary() -> PathBuf {
    let p = Path::new(BERTHD).with_file_name("containerd-shim-berth-v2");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        p.display()
    );
    p
}

/// One registry with the test image, shared by the tests of a binary.
pub struct TestImages {
    pub registry: support::Registry,
    pub busybox: String,
}

static IMAGES: OnceLock<TestImages> = OnceLock::new();

pub fn images() -> &'static TestImages {
    IMAGES.get_or_init(|| {
        let registry = support::Registry::start().expect("starting docker-registry");
        let image = support::busybox_image(support::Compression::Gzip)
            .expect("building the busybox image")
            .build()
            .expect("building the busybox image");
        registry
            .push("test/busybox", "1", &image.into())
            .expect("pushing the busybox image");
        let busybox = registry.reference("test/busybox", "1");
        TestImages { registry, busybox }
    })
}

pub struct Berthd {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// Cgroup parent of every pod of this daemon.
    pub cgroup_parent: String,
}

impl Berthd {
    pub fn start(name: &str) -> Berthd {
        Berthd::start_with(name, "")
    }

    /// Starts berthd with extra berth.toml text.
    pub fn start_with(name: &str, extra_config: &str) -> Berthd {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "berthd tests run real pods and need root"
        );
        shim_binary();
        let name = unique(name);
        let dir = PathBuf::from("/tmp").join(format!("bd-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("berth.toml");
        std::fs::write(&config, extra_config).unwrap();
        let mut d = Berthd {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("state/berth.sock"),
            log: dir.join("berthd.log"),
            config,
            child: None,
            cgroup_parent: format!("/berthd-test-{name}"),
            dir,
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BERTHD)
            .arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting berthd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "berthd exited ({status}) while starting:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not listen within 30 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) of our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn channel(&self) -> Channel {
        let socket = self.socket.clone();
        Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .expect("connecting to berthd")
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    pub async fn image_client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// A pod config: host network when `host_network`, else a namespace
    /// with loopback only.
    pub fn pod_config(&self, name: &str, host_network: bool) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "test".into(),
                uid: unique("uid"),
                attempt: 0,
            }),
            hostname: if host_network {
                String::new()
            } else {
                name.into()
            },
            log_directory: self.dir.join("logs").join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: if host_network {
                            cri::NamespaceMode::Node as i32
                        } else {
                            cri::NamespaceMode::Pod as i32
                        },
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn container_config(
        &self,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            ..Default::default()
        }
    }

    /// Pulls the test image.
    pub async fn pull_busybox(&self) -> String {
        let image = &images().busybox;
        let mut client = self.image_client().await;
        client
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pulling {image}: {e}\n{}", self.log_tail()))
            .into_inner()
            .image_ref
    }

    /// Polls ContainerStatus until `done` holds.
    pub async fn wait_container(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&cri::ContainerStatus) -> bool,
    ) -> cri::ContainerStatus {
        let mut client = self.runtime().await;
        let deadline = Instant::now() + timeout;
        loop {
            let s = client
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not reach the state in time: {s:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Everything of this daemon still on the host.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in mountinfo.lines() {
            if let Some(p) = l.split(' ').nth(4) {
                if p.starts_with(self.dir.to_str().unwrap()) {
                    left.push(format!("mount {p}"));
                }
            }
        }
        for pid in processes_mentioning(self.socket.to_str().unwrap()) {
            left.push(format!("process {pid}"));
        }
        for d in cgroup_dirs(&self.cgroup_parent) {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    left.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        left
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.stop();
        for pid in processes_mentioning(self.socket.to_str().unwrap()) {
            // SAFETY: plain kill(2) of a shim this test's berthd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        remove_cgroup_tree(&self.cgroup_parent);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(self.dir.to_str().unwrap()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = rustix::mount::unmount(p, rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&raw).contains(needle) && alive(pid as u32) {
            out.push(pid);
        }
    }
    out
}

pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut roots: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let fs = f.get(sep + 1)?;
            (*fs == "cgroup" || *fs == "cgroup2").then(|| PathBuf::from(f[4]))
        })
        .collect();
    roots.sort();
    roots.dedup();
    roots
        .into_iter()
        .map(|r| r.join(rel.trim_start_matches('/')))
        .filter(|d| d.is_dir())
        .collect()
}

pub fn remove_cgroup_tree(rel: &str) {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            }
        }
        out.push(d.to_path_buf());
    }
    let mut dirs = Vec::new();
    for top in cgroup_dirs(rel) {
        walk(&top, &mut dirs);
    }
    for d in &dirs {
        let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        for pid in std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: plain kill(2) of a process in the test's cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirs.iter().any(|d| d.exists()) && Instant::now() < deadline {
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses a CRI log file into (stream, tag, message) records.
pub fn cri_log_records(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let _ts = p.next();
            (
                p.next().unwrap_or_default().to_owned(),
                p.next().unwrap_or_default().to_owned(),
                p.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
