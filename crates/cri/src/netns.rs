//! Work inside pods' network namespaces: a TCP socket for a port-forward
//! (a socket belongs to the namespace it was created in, wherever it is
//! used after), its connection, and the interface counters for metrics.
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

/// Connects the non-blocking TCP socket `fd` to `addr`. On a loopback
/// the handshake runs within connect(2) (or the refusal comes back in it),
/// though the call still says "in progress": one poll(2) of the socket
/// then finds it done, where waiting for the runtime's next look at its
/// sockets took longer, with the other tasks queued before it on the
/// streaming thread. A connection that is not done yet is waited for.
pub async fn connect_tcp(
    fd: OwnedFd,
    addr: std::net::SocketAddr,
) -> io::Result<tokio::net::TcpStream> {
    match rustix::net::connect(&fd, &addr) {
        Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
    let done = {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&stream, PollFlags::OUT)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&now))? == 1
    };
    if !done {
        stream.writable().await?;
    }
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{connect_tcp, tcp_socket};

    #[tokio::test]
    async fn a_loopback_connection_is_made_and_carries_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = connect_tcp(tcp_socket().unwrap(), addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_refused() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is closed: nothing listens there now.
        let e = connect_tcp(tcp_socket().unwrap(), addr).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }

    /// A connection the peer has not taken yet (its accept queue is full,
    /// so the handshake waits for the SYN's retransmission) is not
    /// reported as made: it is waited for, and made once the peer makes
    /// room.
    #[tokio::test]
    async fn a_connection_not_done_at_once_is_waited_for() {
        use rustix::net::{bind, listen, socket_with, AddressFamily, SocketFlags, SocketType};
        let listener = socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        bind(&listener, &std::net::SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        listen(&listener, 0).unwrap();
        let listener = std::net::TcpListener::from(listener);
        let addr = listener.local_addr().unwrap();
        // Fill the accept queue: the connections it holds are made.
        let mut queued = Vec::new();
        let pending = loop {
            assert!(queued.len() < 16, "the accept queue never filled");
            let mut connecting = Box::pin(connect_tcp(tcp_socket().unwrap(), addr));
            match tokio::time::timeout(Duration::from_millis(200), &mut connecting).await {
                Ok(made) => queued.push(made.unwrap()),
                Err(_) => break connecting,
            }
        };
        // Room in the queue: the SYN's retransmission (after 1 s) is taken.
        listener.set_nonblocking(true).unwrap();
        let _taken: Vec<_> = std::iter::from_fn(|| listener.accept().ok()).collect();
        let made = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .expect("the connection was never made")
            .unwrap();
        assert_eq!(made.peer_addr().unwrap(), addr);
    }
}
