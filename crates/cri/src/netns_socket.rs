//! TCP sockets made inside pods' network namespaces (port-forward). A
//! socket belongs to the namespace it was created in, wherever it is used
//! after: one long-lived thread enters a pod's namespace, creates the
//! socket and returns to the host's, so a port-forward connection costs a
//! message to that thread instead of a thread of its own; the connect
//! itself then runs on the async runtime.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Mutex;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;
use tokio::sync::oneshot;

type Request = (File, oneshot::Sender<io::Result<OwnedFd>>);

pub struct NetnsSockets {
    requests: Mutex<Option<mpsc::Sender<Request>>>,
}

impl NetnsSockets {
    /// Starts the thread; `None` when the host's namespace cannot be
    /// pinned (callers then make a thread per socket).
    pub fn start() -> Option<NetnsSockets> {
        let host = File::open("/proc/thread-self/ns/net").ok()?;
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("berth-netns-sockets".into())
            .spawn(move || {
                for (netns, reply) in rx {
                    let made = socket_in(&netns);
                    // Back home before anything else: a thread left in a pod's
                    // namespace must not make another socket.
                    if let Err(e) =
                        rustix::thread::move_into_link_name_space(host.as_fd(), Some(LinkNameSpaceType::Network))
                    {
                        tracing::error!("netns socket thread cannot return to the host's network namespace: {e}");
                        let _ = reply.send(Err(io::Error::from(e)));
                        return;
                    }
                    let _ = reply.send(made);
                }
            })
            .ok()?;
        Some(NetnsSockets {
            requests: Mutex::new(Some(tx)),
        })
    }

    /// A non-blocking, close-on-exec IPv4 TCP socket in the namespace
    /// `netns` (an open namespace file); `None` if the thread is gone.
    pub async fn socket(&self, netns: File) -> Option<io::Result<OwnedFd>> {
        let (reply, answer) = oneshot::channel();
        {
            let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            let tx = requests.as_ref()?;
            if tx.send((netns, reply)).is_err() {
                *requests = None;
                return None;
            }
        }
        answer.await.ok()
    }
}

fn socket_in(netns: &File) -> io::Result<OwnedFd> {
    rustix::thread::move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))?;
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?)
}
