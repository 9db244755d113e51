//! TCP sockets made inside pods' network namespaces (port-forward). A
//! socket belongs to the namespace it was created in, wherever it is used
//! after: the calling thread enters the pod's namespace, creates the
//! socket and returns to the host's at once, with nothing else running on
//! it meanwhile; the connect itself then runs on the async runtime.
//!
//! In the caller's thread, not a thread of its own: the three system calls
//! take about 4 µs here, where handing them to a sleeping thread and back
//! took a median 38 µs of every port-forward connection's first byte.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;

pub struct NetnsSockets {
    /// The host's network namespace, where every berthd thread lives.
    host: File,
}

impl NetnsSockets {
    /// Pins the host's namespace (that of the calling thread); `None` when
    /// it cannot be (callers then make a thread per socket).
    pub fn start() -> Option<NetnsSockets> {
        Some(NetnsSockets {
            host: File::open("/proc/thread-self/ns/net").ok()?,
        })
    }

    /// A non-blocking, close-on-exec IPv4 TCP socket in the namespace
    /// `netns` (an open namespace file).
    pub fn socket(&self, netns: &File) -> io::Result<OwnedFd> {
        rustix::thread::move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))?;
        let made = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        );
        if let Err(e) = rustix::thread::move_into_link_name_space(
            self.host.as_fd(),
            Some(LinkNameSpaceType::Network),
        ) {
            // Every socket this thread made from now on would be the pod's:
            // a host-network pod's port-forward, a CNI plugin's netlink, a
            // registry's connection. No way back means no way on.
            tracing::error!("a thread cannot return to the host's network namespace: {e}");
            std::process::abort();
        }
        Ok(made?)
    }
}
