//! A private berthd for a test: its own root, state and socket under /tmp,
//! a CRI client on its socket, and a Drop that removes every pod,
//! container, shim, mount and cgroup it made. Images come from a real
//! registry (Debian's docker-registry) on 127.0.0.1.
//!
//! Besides: berthd under a wrapper command (a private mount namespace for
//! crun), kill/spawn for crash tests, CRI call helpers that panic with
//! berthd's log, `leftovers()` naming what is left (processes with their
//! command lines, cgroups with theirs, mounts as berthd sees them), and
//! small helpers for security contexts, resources and cgroup files.
//!
//! The CRI call helpers are in `calls.rs`; generic helpers live in
//! berth-testkit.

// Each test binary uses a different subset of these helpers and re-exports.
#![allow(dead_code, unused_imports)]

mod calls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub use berth_testkit::cgroups::{cgroup_dirs, remove_cgroup_tree};
use berth_testkit::containerd::cri::unix_channel;
/// The registry and images of berth-image's tests.
pub use berth_testkit::images as support;
use berth_testkit::mounts::unmount_under;
pub use berth_testkit::names::unique;
/// The live processes' pids.
pub use berth_testkit::procs::pids_mentioning as processes_mentioning;
pub use berth_testkit::procs::{alive, cmdline, parent, wait_for_exec};
use berth_testkit::procs::{kill_processes_mentioning, terminate};

pub const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

/// berthd started with `config` as its berth.toml must refuse to start;
/// what it printed on stderr.
pub fn berthd_refusing(config: &str) -> String {
    let dir = std::env::temp_dir().join(unique("berthd-refusing"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("berth.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(BERTHD)
        .arg("--config")
        .arg(&path)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "berthd started with {config:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An id in the form of a pod's or a container's that nothing has.
pub const UNKNOWN: &str = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";

/// A label (or annotation) map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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

/// The shared registry's directory, removed when the test process exits
/// (statics are never dropped).
static REGISTRY_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

extern "C" fn remove_registry_dir() {
    if let Some(dir) = REGISTRY_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn images() -> &'static TestImages {
    IMAGES.get_or_init(|| {
        let registry = support::Registry::start().expect("starting docker-registry");
        if let Some(dir) = registry.storage_dir().parent() {
            let _ = REGISTRY_DIR.set(dir.to_path_buf());
            // SAFETY: registers a plain function with no preconditions.
            unsafe { libc::atexit(remove_registry_dir) };
        }
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

static ENTRY: OnceLock<String> = OnceLock::new();

/// A second image in the shared registry: busybox with an entrypoint, a
/// cmd, env, a working directory and a stop signal of its own.
pub fn entry_image() -> &'static str {
    ENTRY.get_or_init(|| {
        let images = images();
        let image = support::busybox_image(support::Compression::Gzip)
            .expect("building the entry image")
            .entrypoint(&["/bin/echo", "entry"])
            .cmd(&["from-cmd"])
            .env("FROM_IMAGE=image")
            .env("OVERRIDE=image")
            .working_dir("/usr/share")
            .stop_signal("SIGUSR1")
            .build()
            .expect("building the entry image");
        images
            .registry
            .push("test/entry", "1", &image.into())
            .expect("pushing the entry image");
        images.registry.reference("test/entry", "1")
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
    /// A command berthd runs under (`unshare ... sh -c '...; exec "$0" "$@"'`).
    pub wrapper: Vec<String>,
}

impl Berthd {
    pub fn start(name: &str) -> Berthd {
        Berthd::start_with(name, "")
    }

    /// Starts berthd with extra berth.toml text.
    pub fn start_with(name: &str, extra_config: &str) -> Berthd {
        Berthd::start_wrapped(name, extra_config, &[])
    }

    /// Starts berthd under a wrapper command, which must end by exec'ing
    /// its arguments (berthd's path and flags follow the wrapper's words).
    pub fn start_wrapped(name: &str, extra_config: &str, wrapper: &[&str]) -> Berthd {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "berthd tests run real pods and need root");
        shim_binary();
        let name = unique(name);
        let dir = PathBuf::from("/tmp").join(format!("bd-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("berth.toml");
        // BERTH_TEST_RUNTIME_HANDLER=vm: pods without a handler of their
        // own run in VMs (the CRI tests that apply, again for that class).
        let extra_config = match std::env::var("BERTH_TEST_RUNTIME_HANDLER").as_deref() {
            Ok("vm") if !extra_config.contains("default_runtime") => format!(
                "default_runtime = \"vm\"\n{extra_config}\n[runtimes.vm]\nruntime_type = \"io.containerd.berth-vm.v2\"\n"
            ),
            _ => extra_config.to_owned(),
        };
        let extra_config = extra_config.as_str();
        // Pods get loopback only unless a test brings its own [cni]: the
        // host's /etc/cni/net.d is not the tests' business.
        let extra_config = if extra_config.contains("[cni]") {
            extra_config.to_owned()
        } else {
            format!(
                "{extra_config}\n[cni]\nconf_dir = \"{}\"\n",
                dir.join("net.d").display()
            )
        };
        std::fs::write(&config, extra_config).unwrap();
        let mut d = Berthd {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("state/berth.sock"),
            log: dir.join("berthd.log"),
            config,
            child: None,
            cgroup_parent: format!("/berthd-test-{name}"),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        d.spawn();
        d
    }

    /// berthd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// PodSandboxStats of `pod`, which must succeed.
    pub async fn pod_stats(&self, pod: &str) -> cri::PodSandboxStats {
        self.runtime()
            .await
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("PodSandboxStats: {e:?}\n{}", self.log_tail()))
            .into_inner()
            .stats
            .unwrap()
    }

    /// ContainerStats of `container`, which must succeed.
    pub async fn container_stats(&self, container: &str) -> cri::ContainerStats {
        self.runtime()
            .await
            .container_stats(cri::ContainerStatsRequest {
                container_id: container.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStats: {e:?}\n{}", self.log_tail()))
            .into_inner()
            .stats
            .unwrap()
    }

    /// berthd's threads whose network namespace is not this test's (the
    /// host's), as `tid -> namespace`: a thread that entered a pod's to
    /// make a socket or read counters must have come back.
    pub fn threads_outside_the_host_network_namespace(&self) -> Vec<String> {
        let pid = self.pid().expect("berthd runs");
        let host = std::fs::read_link("/proc/self/ns/net").unwrap();
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| {
                let ns = std::fs::read_link(t.path().join("ns/net")).ok()?;
                (ns != host)
                    .then(|| format!("{} -> {}", t.file_name().to_string_lossy(), ns.display()))
            })
            .collect()
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BERTHD);
                c
            }
            None => Command::new(BERTHD),
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .args([
                "--log-level",
                "debug,h2=info,hyper=info,tower=info,tonic=info",
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting berthd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Connectable, not merely there: a killed berthd leaves its socket.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
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
            terminate(&mut c, Duration::from_secs(10));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn channel(&self) -> Channel {
        unix_channel(&self.socket)
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
        self.pull(&images().busybox).await
    }

    /// Pulls an image (anonymously); returns its image_ref.
    pub async fn pull(&self, image: &str) -> String {
        let mut client = self.image_client().await;
        client
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_owned(),
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
        // Mounts as berthd sees them (it may run in a mount namespace of
        // its own), else as this process does.
        let mountinfo = self
            .pid()
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/mountinfo")).ok())
            .unwrap_or_else(|| std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        for l in mountinfo.lines() {
            if let Some(p) = l.split(' ').nth(4) {
                if p.starts_with(self.dir.to_str().unwrap()) {
                    left.push(format!("mount {p}"));
                }
            }
        }
        for pid in processes_mentioning(self.socket.to_str().unwrap()) {
            left.push(format!("process {pid} ({})", cmdline(pid)));
        }
        for d in cgroup_dirs(&self.cgroup_parent) {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let procs: Vec<String> = std::fs::read_to_string(e.path().join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|p| p.trim().parse::<i32>().ok())
                        .map(|p| format!("{p} ({})", cmdline(p)))
                        .collect();
                    left.push(format!("cgroup {} holding {procs:?}", e.path().display()));
                }
            }
        }
        left
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for dir in [self.state.join("containers"), self.state.join("pods")] {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    for log in [e.path().join("log"), e.path().join("pause/log")] {
                        if let Ok(t) = std::fs::read_to_string(&log) {
                            if !t.trim().is_empty() {
                                eprintln!("--- {} ---\n{t}", log.display());
                            }
                        }
                    }
                }
            }
        }
        self.stop();
        // The shims this test's berthd started name its socket.
        kill_processes_mentioning(self.socket.to_str().unwrap());
        // A VM pod's QEMU outlives a killed shim: the vm shim's `delete`
        // ends it, as berthd and containerd do after a dead shim.
        let vm_shim = Path::new(BERTHD).with_file_name("containerd-shim-berth-vm-v2");
        for e in std::fs::read_dir(self.state.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let bundle = e.path().join("pause");
            if vm_shim.is_file() && bundle.join("config.json").is_file() {
                let _ = Command::new(&vm_shim)
                    .args(["-namespace", "k8s.io", "-address", "/dev/null", "-id"])
                    .arg(e.file_name())
                    .arg("-bundle")
                    .arg(&bundle)
                    .arg("delete")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        remove_cgroup_tree(&self.cgroup_parent);
        forget_oci_runtime_state(&self.dir);
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
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

/// Deletes the runc/crun state of containers whose bundle lies under `dir`
/// (containers a failed test left in those runtimes' shared roots).
pub fn forget_oci_runtime_state(dir: &Path) {
    for bin in ["runc", "crun", "runsc"] {
        let root = format!("/run/containerd/{bin}/k8s.io");
        if !Path::new(&root).is_dir() {
            continue;
        }
        let Ok(out) = Command::new(bin)
            .args(["--root", &root, "list", "--format", "json"])
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for c in list.as_array().into_iter().flatten() {
            let bundle = c["bundle"].as_str().unwrap_or_default();
            if bundle.starts_with(dir.to_str().unwrap()) {
                let id = c["id"].as_str().unwrap_or_default();
                let _ = Command::new(bin)
                    .args(["--root", &root, "delete", "--force", id])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

pub type Runtime = RuntimeServiceClient<Channel>;

/// The container's security context, made if absent.
pub fn sc(cfg: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The container's resources, made if absent.
pub fn res(cfg: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerResources {
    cfg.linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}

/// The pod's security context.
pub fn pod_sc(cfg: &mut cri::PodSandboxConfig) -> &mut cri::LinuxSandboxSecurityContext {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The pod's namespace options.
pub fn pod_ns(cfg: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    pod_sc(cfg)
        .namespace_options
        .get_or_insert_with(Default::default)
}

/// A cgroup v1 file of `controller` at `rel` (a cgroups path).
pub fn cgroup_file(controller: &str, rel: &str, file: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(rel.trim_start_matches('/'))
        .join(file)
}

pub fn read_trim(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// Runs a host command; returns (success, stdout, stderr).
pub fn host(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn state_name(s: i32) -> &'static str {
    match cri::ContainerState::try_from(s) {
        Ok(cri::ContainerState::ContainerCreated) => "created",
        Ok(cri::ContainerState::ContainerRunning) => "running",
        Ok(cri::ContainerState::ContainerExited) => "exited",
        _ => "unknown",
    }
}

pub fn exited(s: &cri::ContainerStatus) -> bool {
    s.state == cri::ContainerState::ContainerExited as i32
}

/// Whether pods without a handler of their own run in VMs in this run
/// (BERTH_TEST_RUNTIME_HANDLER=vm): what a VM cannot show from the host
/// (the container's host cgroup, its host pid) is not checked then.
pub fn default_pods_in_vms() -> bool {
    std::env::var("BERTH_TEST_RUNTIME_HANDLER").as_deref() == Ok("vm")
}

/// Waits until `f` holds, polling.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
