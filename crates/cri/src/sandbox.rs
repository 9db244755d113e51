//! A pod's shared pieces, made without a pause process: network, IPC and
//! UTS namespaces created by a short-lived thread and pinned by bind mounts
//! under the pod's directory, its /dev/shm, and its hostname, hosts and
//! resolv.conf files.

use std::ffi::CString;
use std::os::fd::AsRawFd;
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

fn bring_up_loopback() -> std::io::Result<()> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own, on a socket we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union's flags member is what SIOCGIFFLAGS filled.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pin(kind: &str, target: &Path) -> std::io::Result<()> {
    std::fs::write(target, b"")?;
    let source = format!("/proc/thread-self/ns/{kind}");
    rustix::mount::mount_bind(source.as_str(), target).map_err(std::io::Error::from)
}

/// Runs on a thread of its own: the namespaces it unshares are the
/// thread's alone, and die with it unless pinned.
fn make_namespaces(
    dir: &Path,
    req: &NamespaceRequest,
) -> std::result::Result<PodNamespaces, String> {
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
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| format!("unshare: {e}"))?;
    if req.uts && !req.hostname.is_empty() {
        rustix::system::sethostname(req.hostname.as_bytes())
            .map_err(|e| format!("setting hostname {:?}: {e}", req.hostname))?;
    }
    if req.net {
        bring_up_loopback().map_err(|e| format!("bringing up lo: {e}"))?;
    }
    for (k, v) in &req.sysctls {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v).map_err(|e| format!("sysctl {k}={v}: {e}"))?;
    }
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir).map_err(|e| format!("{}: {e}", ns_dir.display()))?;
    let mut pinned = PodNamespaces::default();
    for (want, kind, slot) in [
        (req.net, "net", &mut pinned.net),
        (req.ipc, "ipc", &mut pinned.ipc),
        (req.uts, "uts", &mut pinned.uts),
    ] {
        if want {
            let target = ns_dir.join(kind);
            pin(kind, &target).map_err(|e| format!("pinning the {kind} namespace: {e}"))?;
            *slot = Some(target);
        }
    }
    Ok(pinned)
}

/// Creates and pins the namespaces a pod asks for.
pub fn create_namespaces(dir: &Path, req: &NamespaceRequest) -> Result<PodNamespaces> {
    check_sysctls(req)?;
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
    match result {
        Ok(ns) => Ok(ns),
        Err(e) => {
            release_namespaces(dir);
            if e.starts_with("sysctl") {
                Err(Error::InvalidArgument(e))
            } else {
                Err(Error::Internal(format!(
                    "creating the pod's namespaces: {e}"
                )))
            }
        }
    }
}

/// Unpins whatever namespaces a pod directory holds. Idempotent.
pub fn release_namespaces(dir: &Path) {
    for kind in ["net", "ipc", "uts"] {
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
