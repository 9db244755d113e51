//! The container's process: arguments, environment, working directory,
//! user, capabilities, OOM score and LSM labels.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{Process, User};

use super::{clean_container_path, resources, security, SpecInput};
use crate::error::{Error, Result};
use crate::user::{ResolvedUser, UserDb};

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments, as kubelet expects runtimes to merge them:
/// command replaces the entrypoint (and then the image's cmd is dropped),
/// args replace cmd.
pub fn process_args(
    config: &cri::ContainerConfig,
    image: &berth_image::ImageConfig,
) -> Result<Vec<String>> {
    let mut args = Vec::new();
    if !config.command.is_empty() {
        args.extend(config.command.iter().cloned());
        args.extend(config.args.iter().cloned());
    } else {
        args.extend(image.entrypoint.iter().cloned());
        if !config.args.is_empty() {
            args.extend(config.args.iter().cloned());
        } else {
            args.extend(image.cmd.iter().cloned());
        }
    }
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "no command: neither the container config nor the image gives one".into(),
        ));
    }
    Ok(args)
}

/// The environment: image first, then HOSTNAME, then the request (later
/// keys replace earlier ones, order of first appearance kept).
pub fn environment(image_env: &[String], hostname: &str, envs: &[cri::KeyValue]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut put = |k: &str, v: &str| {
        if !values.contains_key(k) {
            order.push(k.to_owned());
        }
        values.insert(k.to_owned(), v.to_owned());
    };
    let mut has_path = false;
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        has_path |= k == "PATH";
        put(k, v);
    }
    if !has_path {
        put("PATH", DEFAULT_PATH.trim_start_matches("PATH="));
    }
    if !hostname.is_empty() {
        put("HOSTNAME", hostname);
    }
    for kv in envs {
        put(&kv.key, &kv.value);
    }
    order
        .into_iter()
        .map(|k| {
            let v = &values[&k];
            format!("{k}={v}")
        })
        .collect()
}

/// The working directory: the request's (an absolute path without ".."),
/// else the image's, else "/".
fn working_dir(config: &cri::ContainerConfig, image: &berth_image::ImageConfig) -> Result<String> {
    if !config.working_dir.is_empty() {
        return clean_container_path(&config.working_dir, "working_dir");
    }
    Ok(image
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into()))
}

/// The user the process runs as: the security context's uid, gid or user
/// name, else the image's USER, looked up in the rootfs' /etc/passwd and
/// /etc/group.
fn resolve_user(
    input: &SpecInput,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<ResolvedUser> {
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(Error::InvalidArgument(
            "run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }
    let users = UserDb::open(input.rootfs)?;
    let merge_groups = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Merge as i32;
    users.resolve(
        sc.run_as_user.as_ref().map(|v| v.value),
        sc.run_as_group.as_ref().map(|v| v.value),
        &sc.run_as_username,
        input.image.user.as_deref().unwrap_or(""),
        &sc.supplemental_groups,
        merge_groups,
    )
}

/// The OCI user (additionalGids always present, possibly empty).
pub(super) fn oci_user(uid: u32, gid: u32, additional_gids: Option<Vec<u32>>) -> User {
    let mut user = User::default();
    user.set_uid(uid)
        .set_gid(gid)
        .set_umask(None)
        .set_additional_gids(additional_gids)
        .set_username(None);
    user
}

/// A process with every field berth emits given here: oci-spec's
/// `Process::default()` is an example shell (args ["sh"], TERM,
/// RLIMIT_NOFILE 1024, capabilities), none of which berth wants.
pub(super) fn bare_process(user: User, args: Vec<String>, env: Vec<String>, cwd: &str) -> Process {
    let mut p = Process::default();
    p.set_terminal(None)
        .set_console_size(None)
        .set_user(user)
        .set_args(Some(args))
        .set_command_line(None)
        .set_env(Some(env))
        .set_cwd(cwd.into())
        .set_capabilities(None)
        .set_rlimits(None)
        .set_no_new_privileges(None)
        .set_apparmor_profile(None)
        .set_oom_score_adj(None)
        .set_selinux_label(None)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);
    p
}

/// The container's process, and what the rest of the spec needs from it.
pub(super) struct ContainerProcess {
    pub process: Process,
    pub user: ResolvedUser,
    /// The capability set (bounding, effective and permitted), which the
    /// RuntimeDefault seccomp profile follows.
    pub caps: Vec<String>,
}

/// Builds `process`, checking in this order: command, working directory,
/// user, capabilities (ambient ones included), OOM score, AppArmor.
pub(super) fn container_process(
    input: &SpecInput,
    sc: &cri::LinuxContainerSecurityContext,
    resources: &cri::LinuxContainerResources,
) -> Result<ContainerProcess> {
    let config = input.config;
    let privileged = sc.privileged;
    let args = process_args(config, input.image)?;
    let env = environment(&input.image.env, &input.pod.config.hostname, &config.envs);
    let cwd = working_dir(config, input.image)?;
    let user = resolve_user(input, sc)?;
    let caps = security::capabilities(sc.capabilities.as_ref(), privileged)?;
    let ambient = security::ambient_capabilities(sc.capabilities.as_ref(), &caps)?;
    let oom = resources::oom_score_adj(resources, input.oom_score_adj_floor)?;
    let apparmor = security::apparmor(sc, privileged, security::apparmor_enabled())?;

    let oci_user = oci_user(user.uid, user.gid, Some(user.additional_gids.clone()));
    let mut process = bare_process(oci_user, args, env, &cwd);
    process
        .set_terminal(Some(config.tty))
        .set_capabilities(Some(security::linux_capabilities(
            &caps,
            Some(&[]),
            Some(ambient.as_slice()),
        )?))
        .set_no_new_privileges(Some(sc.no_new_privs))
        .set_oom_score_adj(Some(oom))
        .set_apparmor_profile(apparmor)
        .set_selinux_label(security::selinux_label(sc, security::selinux_enabled()));
    Ok(ContainerProcess {
        process,
        user,
        caps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entry: &[&str], cmd: &[&str]) -> berth_image::ImageConfig {
        berth_image::ImageConfig {
            entrypoint: entry.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        }
    }

    fn cfg(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn kubelet_argument_merging() {
        let img = image(&["/entry"], &["default"]);
        assert_eq!(
            process_args(&cfg(&[], &[]), &img).unwrap(),
            ["/entry", "default"]
        );
        assert_eq!(
            process_args(&cfg(&[], &["x"]), &img).unwrap(),
            ["/entry", "x"]
        );
        assert_eq!(process_args(&cfg(&["/cmd"], &[]), &img).unwrap(), ["/cmd"]);
        assert_eq!(
            process_args(&cfg(&["/cmd"], &["y"]), &img).unwrap(),
            ["/cmd", "y"]
        );
        assert!(process_args(&cfg(&[], &[]), &image(&[], &[])).is_err());
    }

    #[test]
    fn env_order_and_override() {
        let env = environment(
            &["PATH=/bin".into(), "A=image".into()],
            "web",
            &[
                cri::KeyValue {
                    key: "A".into(),
                    value: "pod".into(),
                },
                cri::KeyValue {
                    key: "B".into(),
                    value: "x=y".into(),
                },
            ],
        );
        assert_eq!(env, ["PATH=/bin", "A=pod", "HOSTNAME=web", "B=x=y"]);
        let env = environment(&[], "", &[]);
        assert_eq!(env, [DEFAULT_PATH]);
    }
}
