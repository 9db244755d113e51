//! Work inside pods' network namespaces: a TCP socket for a port-forward
//! (a socket belongs to the namespace it was created in, wherever it is
//! used after) and the interface counters for metrics.
//!
//! setns moves only the calling thread: it enters the pod's namespace,
//! does the work (a few synchronous system calls, nothing else running on
//! the thread meanwhile) and returns to the host's at once. On the calling
//! thread, not a thread of its own: entering and leaving take about 4 µs
//! here, where handing a port-forward's socket to a sleeping thread and
//! back took a median 38 µs of every connection's first byte, and
//! ListPodSandboxMetrics spawned a thread per pod.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;

/// The host's network namespace, where every berthd thread lives.
pub struct HostNetns {
    host: File,
}

impl HostNetns {
    /// Pins the calling thread's namespace (berthd's start: the host's);
    /// `None` when it cannot be.
    pub fn pin() -> Option<HostNetns> {
        Some(HostNetns {
            host: File::open("/proc/thread-self/ns/net").ok()?,
        })
    }
}

/// Runs `work` in the network namespace `netns` (an open namespace file):
/// on the calling thread, which is back in the host's namespace before
/// this returns, when `host` is pinned; else on a thread of its own that
/// ends after it.
pub fn in_network_namespace<T: Send + 'static>(
    host: Option<&HostNetns>,
    netns: File,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let Some(host) = host else {
        return std::thread::spawn(move || -> io::Result<T> {
            enter(&netns)?;
            Ok(work())
        })
        .join()
        .map_err(|_| io::Error::other("the work in the pod's network namespace panicked"))?;
    };
    enter(&netns)?;
    // Back home even if `work` panics: the thread goes on serving others.
    let _back = ReturnTo(&host.host);
    Ok(work())
}

/// A non-blocking, close-on-exec IPv4 TCP socket in the calling thread's
/// network namespace.
pub fn tcp_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The interface counters (/proc/net/dev's text) of the network namespace
/// pinned at `netns`.
pub fn net_dev(host: Option<&HostNetns>, netns: &std::path::Path) -> Option<String> {
    let ns = File::open(netns).ok()?;
    // thread-self: /proc/self/net is the main thread's namespace.
    in_network_namespace(host, ns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .ok()?
    .ok()
}

/// (interface, its 16 counters) from /proc/net/dev text.
pub fn parse_net_dev(text: &str) -> Vec<(String, [u64; 16])> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let mut f = [0u64; 16];
            let mut n = 0;
            for (slot, v) in f.iter_mut().zip(rest.split_whitespace()) {
                *slot = v.parse().ok()?;
                n += 1;
            }
            (n == 16).then(|| (name.trim().to_owned(), f))
        })
        .collect()
}

fn enter(netns: &File) -> io::Result<()> {
    rustix::thread::move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))?;
    Ok(())
}

struct ReturnTo<'a>(&'a File);

impl Drop for ReturnTo<'_> {
    fn drop(&mut self) {
        if let Err(e) = enter(self.0) {
            // Every socket this thread made from now on would be the pod's:
            // a host-network pod's port-forward, a CNI plugin's netlink, a
            // registry's connection. No way back means no way on.
            tracing::error!("a thread cannot return to the host's network namespace: {e}");
            std::process::abort();
        }
    }
}
