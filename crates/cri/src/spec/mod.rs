//! The OCI spec of a container, from its CRI config, its pod and its image,
//! as containerd's CRI plugin builds it (what a kubelet expects), and the
//! pause container's.
//!
//! Specs are built as oci-spec's typed `runtime::Spec`, the type
//! berth-runtime reads back, one concern per module: `process` (command,
//! environment, user), `mounts`, `namespaces`, `devices`, `resources`
//! (cgroup, OOM score), `security` (capabilities, seccomp, AppArmor,
//! SELinux, masked paths) and `sandbox` (the pause container).
//! berthd serializes the typed spec only to write config.json.
//!
//! oci-spec's `Default` for `Spec`, `Process`, `Linux`, `Root` and
//! `LinuxCapabilities` is an example container (hostname "youki", `sh`,
//! RLIMIT_NOFILE, default namespaces, mounts and masked paths), and its
//! builders fill unset fields from it: berth sets every field of these
//! types itself (`bare_spec`, `bare_linux`, `process::bare_process`), so
//! that config.json holds what berth means and nothing else.
//!
//! Everything berth writes fits oci-spec 0.10's types, so no part of the
//! spec is kept as raw JSON. The few places where the types are narrower
//! than the OCI text say so where they are built: capability lists are
//! sets (order not kept, repeats merged), a capability oci-spec does not
//! know is an error, and hugepage limits are i64 (saturating).

mod devices;
mod mounts;
mod namespaces;
mod process;
mod resources;
mod sandbox;
mod security;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{Linux, Root, Spec};

use crate::error::{Error, Result};
use crate::store::PodRecord;

pub use namespaces::{pod_namespace_options, pod_privileged, pod_user_mapping};
pub use process::{environment, process_args, DEFAULT_PATH};
pub use resources::oci_resources;
pub use sandbox::{pause_spec, size_vm_sandbox};
pub use security::{all_caps, capabilities, DEFAULT_CAPS, DEFAULT_MASKED, DEFAULT_READONLY};

/// The OCI version berth's specs declare.
const OCI_VERSION: &str = "1.0.2";

fn clean_container_path(p: &str, what: &str) -> Result<String> {
    if !p.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "{what} {p:?} is not an absolute path"
        )));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(Error::InvalidArgument(format!(
                    "{what} {p:?} contains \"..\""
                )));
            }
            _ => {}
        }
    }
    Ok(out.display().to_string())
}

/// A spec with its version only (see the module's note on defaults).
fn bare_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.into())
        .set_root(None)
        .set_mounts(None)
        .set_process(None)
        .set_hostname(None)
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(None)
        .set_linux(None)
        .set_solaris(None)
        .set_windows(None)
        .set_vm(None)
        .set_zos(None);
    spec
}

/// An empty `linux` (see the module's note on defaults).
fn bare_linux() -> Linux {
    let mut linux = Linux::default();
    linux
        .set_net_devices(None)
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl(None)
        .set_resources(None)
        .set_cgroups_path(None)
        .set_namespaces(None)
        .set_devices(None)
        .set_seccomp(None)
        .set_rootfs_propagation(None)
        .set_masked_paths(None)
        .set_readonly_paths(None)
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_memory_policy(None)
        .set_personality(None)
        .set_time_offsets(None);
    linux
}

fn root(path: &Path, readonly: bool) -> Root {
    let mut root = Root::default();
    root.set_path(path.to_path_buf())
        .set_readonly(Some(readonly));
    root
}

/// What a container spec is made from.
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub pod: &'a PodRecord,
    pub config: &'a cri::ContainerConfig,
    pub image: &'a berth_image::ImageConfig,
    pub image_name: &'a str,
    /// The mounted rootfs.
    pub rootfs: &'a Path,
    /// Raise negative oom_score_adj to this (no CAP_SYS_RESOURCE).
    pub oom_score_adj_floor: Option<i64>,
    /// The init pid of the target container (NamespaceMode TARGET).
    pub target_pid: Option<u32>,
    /// The host directory behind each image volume, by index in
    /// `config.mounts` (mounted read-only; its sub path resolved).
    pub image_volumes: &'a HashMap<usize, std::path::PathBuf>,
}

/// A container's typed spec, and the user it runs as.
pub struct ContainerSpec {
    pub spec: Spec,
    pub user: (u32, u32, Vec<u32>),
}

/// The container's annotations: the request's (but berth's own, which
/// steer the runtime and only berthd sets), then the CRI ones containerd
/// sets.
fn annotations(input: &SpecInput) -> HashMap<String, String> {
    let pod = input.pod;
    let meta = input.config.metadata.clone().unwrap_or_default();
    let pod_meta = pod.config.metadata.clone().unwrap_or_default();
    let mut annotations: HashMap<String, String> = input
        .config
        .annotations
        .iter()
        .filter(|(k, _)| !k.starts_with("io.github.berth."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", pod.id.as_str()),
        ("io.kubernetes.cri.sandbox-name", pod_meta.name.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            pod_meta.namespace.as_str(),
        ),
        ("io.kubernetes.cri.sandbox-uid", pod_meta.uid.as_str()),
        ("io.kubernetes.cri.container-name", meta.name.as_str()),
        ("io.kubernetes.cri.image-name", input.image_name),
    ] {
        annotations.insert(k.into(), v.into());
    }
    annotations
}

/// Builds the typed spec of a container. Requests are checked in the
/// order: privilege, user namespace, process, mounts (whose missing
/// sources are created), namespaces, devices, seccomp.
pub fn container_oci_spec(input: &SpecInput) -> Result<ContainerSpec> {
    let config = input.config;
    let pod = input.pod;
    let linux_config = config.linux.clone().unwrap_or_default();
    let sc = linux_config.security_context.clone().unwrap_or_default();
    let cri_resources = linux_config.resources.clone().unwrap_or_default();
    let privileged = sc.privileged;
    if privileged && !pod_privileged(&pod.config) {
        return Err(Error::InvalidArgument(
            "a privileged container needs a privileged pod sandbox".into(),
        ));
    }
    let ns = sc.namespace_options.clone().unwrap_or_default();
    // A container shares its pod's user namespace, as the kubelet asks.
    if namespaces::pod_user_mapping(&ns)?
        != namespaces::pod_user_mapping(&pod_namespace_options(&pod.config))?
    {
        return Err(Error::InvalidArgument(
            "the container's user namespace options differ from its pod's".into(),
        ));
    }

    let process = process::container_process(input, &sc, &cri_resources)?;
    let mounts = mounts::container_mounts(
        pod,
        config,
        privileged,
        sc.readonly_rootfs,
        input.image_volumes,
    )?;
    let namespaces = namespaces::container_namespaces(
        pod,
        &ns,
        input.target_pid,
        privileged,
        namespaces::cgroup2_unified(),
    )?;
    let (devices, device_rules) = devices::container_devices(config, privileged)?;
    let seccomp = security::seccomp(&sc, privileged, &process.caps)?;
    let (masked, readonly) = security::masked_and_readonly_paths(&sc);

    let mut linux = bare_linux();
    linux
        .set_resources(Some(resources::container_resources(
            &cri_resources,
            device_rules,
        )))
        .set_cgroups_path(Some(resources::cgroups_path(pod, input.id).into()))
        .set_namespaces(Some(namespaces))
        .set_devices(Some(devices))
        .set_rootfs_propagation(Some(mounts::rootfs_propagation(&config.mounts).into()))
        .set_masked_paths(masked)
        .set_readonly_paths(readonly)
        .set_seccomp(seccomp);
    if let Some(user) = namespaces::pod_user_mapping(&pod_namespace_options(&pod.config))? {
        let (uids, gids) = namespaces::container_id_mappings(&user);
        linux
            .set_uid_mappings(Some(uids))
            .set_gid_mappings(Some(gids));
    }

    let mut spec = bare_spec();
    spec.set_process(Some(process.process))
        .set_root(Some(root(input.rootfs, sc.readonly_rootfs)))
        .set_mounts(Some(mounts))
        .set_annotations(Some(annotations(input)))
        .set_linux(Some(linux));
    let user = process.user;
    Ok(ContainerSpec {
        spec,
        user: (user.uid, user.gid, user.additional_gids),
    })
}

#[cfg(test)]
mod tests;
