//! The testkit's private containerd 1.6 with its CRI plugin
//! ([`CriContainerd`]), whose runtime handlers are containerd's own runc v2
//! shim (`io.containerd.runc.v2`) with `BinaryName` set: `berth` (the
//! binary cargo built) and `runc` (Debian's), each with its own state root;
//! a synchronous CRI client drives it. Here: the handlers, and the pod and
//! container configs of these tests (host network, the pods' cgroup
//! parent).

use std::path::PathBuf;

use berth_testkit::containerd::cri::{CriContainerd, CriSetup, Runtime};
use berth_testkit::tools::find_tool;
use k8s_cri::v1 as cri;

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The test image, a shell; `:pause` of the same repository is the pods'
/// sandbox process.
pub const BUSYBOX: &str = "localhost/berth-cri-test/busybox:latest";

/// The runtime handlers: (name, binary).
pub fn handlers() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("berth", PathBuf::from(BERTH)),
        (
            "runc",
            find_tool("runc", &["/usr/sbin/runc"]).expect("runc (Debian package runc)"),
        ),
    ]
}

/// The containerd of one test.
pub type Cri = CriContainerd;

/// What these tests add to the testkit's containerd: how it starts (the
/// handlers, the image names), and their pod and container configs.
pub trait CriTest {
    fn start() -> Cri;
    /// A pod on the host network, in the test's cgroup parent.
    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig;
    /// A busybox container running `command`, on the host network.
    fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig;
}

impl CriTest for Cri {
    fn start() -> Cri {
        CriSetup {
            prefix: "berth-cri",
            cgroup_prefix: "berth-cri-test",
            image_repo: BUSYBOX.strip_suffix(":latest").unwrap(),
            runtimes: handlers()
                .into_iter()
                .map(|(name, bin)| Runtime {
                    name,
                    binary: Some(bin),
                    root: format!("{name}-root"),
                })
                .collect(),
            default_runtime: Some("berth"),
            subdirs: &[],
            label: "containerd_cri",
        }
        .start()
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let uid = format!("uid-{name}");
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "berth-cri-test".into(),
                uid: uid.clone(),
                attempt: 0,
            }),
            log_directory: self
                .logs
                .join(format!("berth-cri-test_{name}_{uid}"))
                .display()
                .to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
