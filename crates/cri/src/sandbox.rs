//! A pod's shared pieces, made without a pause process: network, IPC and
//! UTS namespaces created by a short-lived thread and pinned by bind mounts
//! under the pod's directory (with a user namespace of its own: created
//! with them by a short-lived process, so that they belong to it), its
//! /dev/shm, and its hostname, hosts and resolv.conf files.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use rustix::mount::{MountFlags, UnmountFlags};

use crate::error::{Error, Result};
use crate::store::PodNamespaces;

/// Which namespaces a pod gets of its own, and what to set inside them.
#[derive(Debug, Clone, Default)]
pub struct NamespaceRequest {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub hostname: String,
    pub sysctls: Vec<(String, String)>,
    /// A user namespace of its own (hostUsers: false): the host ids that
    /// container ids 0.. map to, for uids and gids.
    pub user: Option<UserMapping>,
}

/// A pod's user namespace: container ids `0..length` are host ids
/// `host_uid..` and `host_gid..` (the kubelet gives one range per pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserMapping {
    pub host_uid: u32,
    pub host_gid: u32,
    pub length: u32,
}

/// The sysctls a pod may set, and the namespace each needs (as runc
/// checks them): anything else would change the host.
fn sysctl_namespace(key: &str) -> Option<&'static str> {
    if key.starts_with("net.") {
        Some("net")
    } else if key.starts_with("fs.mqueue.")
        || key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
    {
        Some("ipc")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some("uts")
    } else {
        None
    }
}

pub fn check_sysctls(req: &NamespaceRequest) -> Result<()> {
    for (k, v) in &req.sysctls {
        if k.contains("..") || k.contains('/') || k.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "sysctl {k:?}: invalid name"
            )));
        }
        if v.contains('\n') {
            return Err(Error::InvalidArgument(format!(
                "sysctl {k}: invalid value {v:?}"
            )));
        }
        let ok = match sysctl_namespace(k) {
            Some("net") => req.net,
            Some("ipc") => req.ipc,
            Some("uts") => req.uts,
            _ => false,
        };
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "sysctl {k} is not allowed: it is not namespaced, or the pod shares that namespace with the host"
            )));
        }
    }
    Ok(())
}

fn pin(proc: &str, kind: &str, target: &Path) -> std::io::Result<()> {
    std::fs::write(target, b"")?;
    let source = format!("{proc}/ns/{kind}");
    rustix::mount::mount_bind(source.as_str(), target).map_err(std::io::Error::from)
}

fn setup_failed(message: String) -> Error {
    Error::Internal(format!("creating the pod's namespaces: {message}"))
}

/// Runs on a thread of its own: the namespaces it unshares are the
/// thread's alone, and die with it unless pinned.
fn make_namespaces(dir: &Path, req: &NamespaceRequest) -> Result<PodNamespaces> {
    let mut flags = rustix::thread::UnshareFlags::empty();
    if req.net {
        flags |= rustix::thread::UnshareFlags::NEWNET;
    }
    if req.ipc {
        flags |= rustix::thread::UnshareFlags::NEWIPC;
    }
    if req.uts {
        flags |= rustix::thread::UnshareFlags::NEWUTS;
    }
    // SAFETY: no FILES flag: the fd table stays shared with every thread.
    unsafe { rustix::thread::unshare_unsafe(flags) }
        .map_err(|e| setup_failed(format!("unshare: {e}")))?;
    configure_namespaces(req)?;
    pin_namespaces(dir, req, "/proc/thread-self")
}

/// Sets the hostname, brings up loopback and writes the sysctls in the
/// calling thread's namespaces.
fn configure_namespaces(req: &NamespaceRequest) -> Result<()> {
    if req.uts && !req.hostname.is_empty() {
        rustix::system::sethostname(req.hostname.as_bytes())
            .map_err(|e| setup_failed(format!("setting hostname {:?}: {e}", req.hostname)))?;
    }
    if req.net {
        berth_common::net::bring_up_loopback()
            .map_err(|e| setup_failed(format!("bringing up lo: {e}")))?;
    }
    for (k, v) in &req.sysctls {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        // The kernel refusing a value is the request's fault, as with runc.
        std::fs::write(&path, v)
            .map_err(|e| Error::InvalidArgument(format!("sysctl {k}={v}: {e}")))?;
    }
    Ok(())
}

/// Pins the namespaces of `proc` (a /proc/<task> directory) the request
/// asked for under the pod's directory.
fn pin_namespaces(dir: &Path, req: &NamespaceRequest, proc: &str) -> Result<PodNamespaces> {
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir)
        .map_err(|e| setup_failed(format!("{}: {e}", ns_dir.display())))?;
    let mut pinned = PodNamespaces::default();
    for (want, kind, slot) in [
        (req.user.is_some(), "user", &mut pinned.user),
        (req.net, "net", &mut pinned.net),
        (req.ipc, "ipc", &mut pinned.ipc),
        (req.uts, "uts", &mut pinned.uts),
    ] {
        if want {
            let target = ns_dir.join(kind);
            pin(proc, kind, &target)
                .map_err(|e| setup_failed(format!("pinning the {kind} namespace: {e}")))?;
            *slot = Some(target);
        }
    }
    Ok(pinned)
}

/// The namespaces of a pod with a user namespace of its own. A thread of
/// a multi-threaded process cannot unshare a user namespace, so a
/// short-lived process (`holder`: berth-pause) unshares it together with
/// the others, which then belong to it: the pod's root can administer its
/// network. Its maps are written and everything is pinned from here; a
/// thread then joins the new network, UTS and IPC namespaces (allowed to
/// the host's root, an ancestor of their owner) to configure them.
fn make_user_namespaces(
    dir: &Path,
    req: &NamespaceRequest,
    user: UserMapping,
    holder: &Path,
) -> Result<PodNamespaces> {
    let mut flags = libc::CLONE_NEWUSER;
    for (want, flag) in [
        (req.net, libc::CLONE_NEWNET),
        (req.ipc, libc::CLONE_NEWIPC),
        (req.uts, libc::CLONE_NEWUTS),
    ] {
        if want {
            flags |= flag;
        }
    }
    let mut child = spawn_holder(holder, flags)?;
    let proc = format!("/proc/{}", child.id());
    let result = (|| {
        for (file, host) in [("uid_map", user.host_uid), ("gid_map", user.host_gid)] {
            std::fs::write(
                format!("{proc}/{file}"),
                format!("0 {host} {}\n", user.length),
            )
            .map_err(|e| setup_failed(format!("writing {file}: {e}")))?;
        }
        let pinned = pin_namespaces(dir, req, &proc)?;
        let joined: Vec<(std::fs::File, rustix::thread::LinkNameSpaceType)> = [
            (&pinned.net, rustix::thread::LinkNameSpaceType::Network),
            (
                &pinned.uts,
                rustix::thread::LinkNameSpaceType::HostNameAndNISDomainName,
            ),
            (
                &pinned.ipc,
                rustix::thread::LinkNameSpaceType::InterProcessCommunication,
            ),
        ]
        .into_iter()
        .filter_map(|(p, kind)| p.as_ref().map(|p| (p, kind)))
        .map(|(p, kind)| {
            std::fs::File::open(p)
                .map(|f| (f, kind))
                .map_err(|e| setup_failed(format!("opening {}: {e}", p.display())))
        })
        .collect::<Result<_>>()?;
        let req = req.clone();
        // A thread of its own: setns changes only the calling thread, and
        // this one ends right after.
        std::thread::Builder::new()
            .name("berth-podns".into())
            .spawn(move || -> Result<()> {
                for (f, kind) in &joined {
                    rustix::thread::move_into_link_name_space(f.as_fd(), Some(*kind)).map_err(
                        |e| setup_failed(format!("joining the pod's {kind:?} namespace: {e}")),
                    )?;
                }
                configure_namespaces(&req)
            })
            .map_err(|e| Error::internal("starting the namespace thread", e))?
            .join()
            .map_err(|_| Error::Internal("the namespace thread panicked".into()))??;
        Ok(pinned)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Starts `holder` (berth-pause) in new namespaces (`flags`, with
/// CLONE_NEWUSER): the caller writes its maps, pins what it needs, then
/// kills it.
fn spawn_holder(holder: &Path, flags: libc::c_int) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(holder);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec the child only calls unshare(2), which
    // is async-signal-safe, and reads errno.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(flags) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.spawn()
        .map_err(|e| setup_failed(format!("starting the user namespace holder: {e}")))
}

/// A throwaway user namespace mapping container 0 to host `host_id` (one
/// id), held by the returned fd: made by `holder`, which is then ended.
fn scratch_user_namespace(holder: &Path, host_id: u32) -> Result<OwnedFd> {
    let mut child = spawn_holder(holder, libc::CLONE_NEWUSER)?;
    let proc = format!("/proc/{}", child.id());
    let result = (|| {
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("{proc}/{file}"), format!("0 {host_id} 1\n"))
                .map_err(|e| setup_failed(format!("writing {file}: {e}")))?;
        }
        std::fs::File::open(format!("{proc}/ns/user"))
            .map(OwnedFd::from)
            .map_err(|e| setup_failed(format!("opening the user namespace: {e}")))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Whether a container rootfs (an overlay on the filesystem of `scratch`)
/// can be built on id-mapped layers here, tried for real once: a probe
/// overlay is mounted under `scratch` and removed. The error says what
/// failed.
pub fn probe_idmapped_rootfs(scratch: &Path, holder: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(scratch);
    let layers = scratch.join("layers");
    let dirs = ["lower", "upper", "work"].map(|d| layers.join(d));
    let merged = scratch.join("merged");
    for d in dirs.iter().chain([&merged]) {
        std::fs::create_dir_all(d).map_err(|e| Error::internal(d.display(), e))?;
    }
    let result = (|| {
        let userns = scratch_user_namespace(holder, 65534)?;
        let m = berth_image::RootfsMount {
            lowerdirs: vec![dirs[0].clone()],
            upperdir: dirs[1].clone(),
            workdir: dirs[2].clone(),
        };
        berth_image::mount_overlay_idmapped(
            &m,
            &merged,
            userns.as_fd(),
            (65534, 65534),
            &scratch.join("mapped"),
        )
        .map_err(|e| setup_failed(format!("an overlay on id-mapped layers: {e}")))?;
        let written = std::fs::write(merged.join("probe"), b"")
            .map_err(|e| setup_failed(format!("writing to an overlay on id-mapped layers: {e}")));
        let _ = rustix::mount::unmount(&merged, UnmountFlags::DETACH);
        written
    })();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// Opens a pod's pinned user namespace file.
pub fn open_user_namespace(userns: &Path) -> Result<std::fs::File> {
    std::fs::File::open(userns)
        .map_err(|e| Error::internal(format!("opening {}", userns.display()), e))
}

/// Creates and pins the namespaces a pod asks for. `holder`: a program
/// that waits for a signal (berth-pause), run briefly for a user namespace.
pub fn create_namespaces(
    dir: &Path,
    req: &NamespaceRequest,
    holder: &Path,
) -> Result<PodNamespaces> {
    check_sysctls(req)?;
    if let Some(user) = req.user {
        let result = make_user_namespaces(dir, req, user, holder);
        if result.is_err() {
            release_namespaces(dir);
        }
        return result;
    }
    if !(req.net || req.ipc || req.uts) {
        return Ok(PodNamespaces::default());
    }
    let dir_owned = dir.to_owned();
    let req_owned = req.clone();
    let result = std::thread::Builder::new()
        .name("berth-podns".into())
        .spawn(move || make_namespaces(&dir_owned, &req_owned))
        .map_err(|e| Error::internal("starting the namespace thread", e))?
        .join()
        .map_err(|_| Error::Internal("the namespace thread panicked".into()))?;
    if result.is_err() {
        release_namespaces(dir);
    }
    result
}

/// Unpins whatever namespaces a pod directory holds. Idempotent.
pub fn release_namespaces(dir: &Path) {
    for kind in ["net", "ipc", "uts", "user"] {
        let p = dir.join("ns").join(kind);
        while rustix::mount::unmount(&p, UnmountFlags::DETACH).is_ok() {}
        let _ = std::fs::remove_file(&p);
    }
    let _ = std::fs::remove_dir(dir.join("ns"));
}

/// The pod's /dev/shm: a tmpfs of its own unless it shares the host's IPC.
pub fn mount_shm(dir: &Path, size: u64) -> Result<PathBuf> {
    let shm = dir.join("shm");
    std::fs::create_dir_all(&shm).map_err(|e| Error::internal(shm.display(), e))?;
    let data = CString::new(format!("mode=1777,size={size}")).expect("no NUL");
    rustix::mount::mount(
        "shm",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(data.as_c_str()),
    )
    .map_err(|e| Error::internal(format!("mounting the pod's shm at {}", shm.display()), e))?;
    Ok(shm)
}

pub fn unmount_shm(dir: &Path) {
    let shm = dir.join("shm");
    while rustix::mount::unmount(&shm, UnmountFlags::DETACH).is_ok() {}
    let _ = std::fs::remove_dir(&shm);
}

/// resolv.conf from the pod's DNS config, else the host's.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<String> {
    let Some(dns) =
        dns.filter(|d| !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()))
    else {
        return Ok(std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    };
    let mut out = String::new();
    for field in dns.servers.iter().chain(&dns.searches).chain(&dns.options) {
        if field.contains('\n') || field.contains(char::is_whitespace) {
            return Err(Error::InvalidArgument(format!(
                "dns_config: invalid entry {field:?}"
            )));
        }
    }
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

/// /etc/hosts: the host's for host-network pods, else localhost entries.
pub fn hosts_file(host_network: bool) -> String {
    if host_network {
        if let Ok(h) = std::fs::read_to_string("/etc/hosts") {
            return h;
        }
    }
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".to_owned()
}

/// A valid RFC 1123 hostname (what sethostname and kubelet accept).
pub fn check_hostname(h: &str) -> Result<()> {
    let ok = h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "hostname {h:?} is not a valid DNS name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_need_their_namespace() {
        let mut req = NamespaceRequest {
            net: true,
            ipc: false,
            uts: true,
            ..Default::default()
        };
        req.sysctls = vec![("net.ipv4.ip_unprivileged_port_start".into(), "0".into())];
        check_sysctls(&req).unwrap();
        req.sysctls = vec![("kernel.shmmax".into(), "1".into())];
        assert!(check_sysctls(&req).is_err(), "host IPC");
        req.sysctls = vec![("vm.swappiness".into(), "1".into())];
        assert!(check_sysctls(&req).is_err(), "not namespaced");
        req.sysctls = vec![("net/../../x".into(), "1".into())];
        assert!(check_sysctls(&req).is_err());
    }

    /// A pod user namespace owns the pod's network, IPC and UTS
    /// The probe behind user-namespaced pods succeeds on this machine's
    /// kernel (6.x overlayfs can be id-mapped) and leaves nothing mounted.
    /// Needs root.
    #[test]
    fn a_rootfs_overlay_can_be_id_mapped_here() {
        let dir = std::env::temp_dir().join(format!("berth-idmap-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let holder = dir.join("holder");
        std::fs::write(&holder, crate::service::PAUSE).unwrap();
        std::fs::set_permissions(&holder, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let scratch = dir.join("scratch");
        probe_idmapped_rootfs(&scratch, &holder).unwrap();
        assert!(!scratch.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&*scratch.to_string_lossy()), "{mounts}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// namespaces, maps container root to the given host range, and the
    /// hostname and sysctls are set in them. Needs root.
    #[test]
    fn namespaces_owned_by_a_pod_user_namespace() {
        let dir = std::env::temp_dir().join(format!("berth-podns-user-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let holder = dir.join("holder");
        std::fs::write(&holder, crate::service::PAUSE).unwrap();
        std::fs::set_permissions(&holder, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let req = NamespaceRequest {
            net: true,
            ipc: true,
            uts: true,
            hostname: "userns-pod".into(),
            sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "80".into())],
            user: Some(UserMapping {
                host_uid: 3_100_000,
                host_gid: 3_200_000,
                length: 65536,
            }),
        };
        let ns = create_namespaces(&dir, &req, &holder).unwrap();
        let user = ns.user.clone().unwrap();
        // Enter them in a child and look: nsenter reads the maps and names.
        let out = std::process::Command::new("nsenter")
            .arg(format!("--user={}", user.display()))
            .arg(format!("--net={}", ns.net.as_ref().unwrap().display()))
            .arg(format!("--uts={}", ns.uts.as_ref().unwrap().display()))
            .args([
                "sh",
                "-c",
                "cat /proc/self/uid_map /proc/self/gid_map; hostname; \
                 cat /proc/sys/net/ipv4/ip_unprivileged_port_start; ip -o link show lo",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        release_namespaces(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            &words[..6],
            ["0", "3100000", "65536", "0", "3200000", "65536"],
            "{text}"
        );
        assert!(text.contains("userns-pod\n80\n"), "{text}");
        assert!(
            text.contains("UP") || text.contains("UNKNOWN"),
            "lo is down: {text}"
        );
        assert!(!dir.exists());
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        let bad = cri::DnsConfig {
            servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
            ..Default::default()
        };
        assert!(resolv_conf(Some(&bad)).is_err());
    }

    #[test]
    fn hostnames() {
        check_hostname("web-0.example").unwrap();
        assert!(check_hostname("-bad").is_err());
        assert!(check_hostname("a_b").is_err());
        assert!(check_hostname("").is_err());
    }
}
