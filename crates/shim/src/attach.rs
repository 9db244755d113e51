//! Attach sessions (CRI Attach): a container's output copied to every
//! attached client besides its log, and the clients' input written to the
//! container's stdin.
//!
//! The log must never wait for a client: output goes to each session
//! through a bounded queue, and a session that falls that far behind is
//! dropped (its FIFO closed: the client sees the end of the stream) rather
//! than slowing the container or losing log lines.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// Chunks (of up to 32 KiB) a session may lag behind: 4 MiB.
const SESSION_BACKLOG: usize = 128;

/// Why a session cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("the process's output has ended")]
    Ended,
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

fn open_fifo_writer(path: &str) -> Result<pipe::Sender, AttachError> {
    pipe::OpenOptions::new()
        .open_sender(Path::new(path))
        .map_err(|source| AttachError::Open {
            path: path.to_owned(),
            source,
        })
}

struct Subscriber {
    session: String,
    queue: mpsc::Sender<Vec<u8>>,
}

#[derive(Default)]
struct TapState {
    ended: bool,
    subscribers: Vec<Subscriber>,
}

/// One output stream of a process, as the attached sessions receive it.
#[derive(Default)]
pub struct Tap {
    state: Mutex<TapState>,
}

impl Tap {
    fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Output the process wrote: queued for every session.
    pub fn send(&self, data: &[u8]) {
        let mut state = self.lock();
        if state.subscribers.is_empty() {
            return;
        }
        state
            .subscribers
            .retain(|s| match s.queue.try_send(data.to_vec()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    log::warn!(
                        "attach session {}: the client fell behind; detached",
                        s.session
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }

    /// The process's output ended: every session's FIFO is closed once
    /// its queue is written.
    pub fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        state.subscribers.clear();
    }

    /// Copies the output, from now on, into the FIFO at `path` (whose
    /// reader is open).
    pub fn subscribe(&self, session: &str, path: &str) -> Result<(), AttachError> {
        if self.lock().ended {
            return Err(AttachError::Ended);
        }
        let mut fifo = open_fifo_writer(path)?;
        let (queue, mut chunks) = mpsc::channel::<Vec<u8>>(SESSION_BACKLOG);
        let mut state = self.lock();
        if state.ended {
            return Err(AttachError::Ended);
        }
        state.subscribers.push(Subscriber {
            session: session.to_owned(),
            queue,
        });
        tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                // The reader went away: the session is over.
                if fifo.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    pub fn unsubscribe(&self, session: &str) {
        self.lock().subscribers.retain(|s| s.session != session);
    }
}

/// The writing end of a process's stdin when it was created for attach
/// sessions (`attach://`): shared by every session, closed by CloseIO.
pub struct AttachableStdin {
    writer: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// A terminal's input ends with ^D, not with a close: the master stays
    /// open for the output.
    terminal: bool,
    sessions: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
}

impl AttachableStdin {
    /// `fd`: the pipe's write end, or a duplicate of a terminal's master.
    pub fn new(fd: OwnedFd, terminal: bool) -> std::io::Result<Arc<AttachableStdin>> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        let writer = pipe::Sender::from_owned_fd_unchecked(fd)?;
        Ok(Arc::new(AttachableStdin {
            writer: tokio::sync::Mutex::new(Some(writer)),
            terminal,
            sessions: Mutex::new(Vec::new()),
        }))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Vec<(String, tokio::task::JoinHandle<()>)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what comes from the FIFO at `path` (whose writer is open)
    /// into the process's stdin until the FIFO's writer closes it.
    pub fn subscribe(self: &Arc<Self>, session: &str, path: &str) -> Result<(), AttachError> {
        let mut fifo = pipe::OpenOptions::new()
            .open_receiver(Path::new(path))
            .map_err(|source| AttachError::Open {
                path: path.to_owned(),
                source,
            })?;
        let stdin = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match fifo.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut writer = stdin.writer.lock().await;
                let Some(w) = writer.as_mut() else { return };
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut sessions = self.sessions();
        sessions.retain(|(_, t)| !t.is_finished());
        sessions.push((session.to_owned(), task));
        Ok(())
    }

    /// Ends a session: what its client wrote before it went still goes in.
    pub fn unsubscribe(&self, session: &str) {
        let mut sessions = self.sessions();
        let (leaving, staying): (Vec<_>, Vec<_>) =
            sessions.drain(..).partition(|(s, _)| s == session);
        *sessions = staying;
        drop(sessions);
        for (_, task) in leaving {
            tokio::spawn(drain(task));
        }
    }

    /// The process sees the end of its input: once what the sessions'
    /// clients wrote before they went has gone in.
    pub fn close(self: &Arc<Self>) {
        let sessions: Vec<_> = self.sessions().drain(..).map(|(_, t)| t).collect();
        let stdin = Arc::clone(self);
        tokio::spawn(async move {
            for task in sessions {
                drain(task).await;
            }
            let mut writer = stdin.writer.lock().await;
            if stdin.terminal {
                if let Some(w) = writer.as_mut() {
                    let _ = w.write_all(b"\x04").await;
                }
            }
            *writer = None;
        });
    }
}

/// Lets a session's task put in what its FIFO still holds (the task ends
/// at the FIFO's EOF, once the client's writer is closed), for at most a
/// second; aborting it at once lost input written just before a detach or
/// CloseIO.
async fn drain(task: tokio::task::JoinHandle<()>) {
    let abort = task.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(1), task)
        .await
        .is_err()
    {
        abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(test: &str) -> Scratch {
            let p =
                std::env::temp_dir().join(format!("berth-attach-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fifo(dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        p.display().to_string()
    }

    #[tokio::test]
    async fn every_session_gets_the_output_until_it_ends() {
        let dir = Scratch::new("fanout");
        let tap = Tap::default();
        let (a, b) = (fifo(dir.path(), "a"), fifo(dir.path(), "b"));
        let mut ra = pipe::OpenOptions::new().open_receiver(&a).unwrap();
        let mut rb = pipe::OpenOptions::new().open_receiver(&b).unwrap();
        tap.subscribe("a", &a).unwrap();
        tap.subscribe("b", &b).unwrap();
        tap.send(b"one ");
        tap.unsubscribe("b");
        tap.send(b"two");
        tap.end();
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        ra.read_to_end(&mut got_a).await.unwrap();
        rb.read_to_end(&mut got_b).await.unwrap();
        assert_eq!(got_a, b"one two");
        assert_eq!(got_b, b"one ");
        assert!(matches!(tap.subscribe("c", &a), Err(AttachError::Ended)));
    }

    #[tokio::test]
    async fn a_session_that_falls_behind_is_dropped_not_waited_for() {
        let dir = Scratch::new("behind");
        let tap = Tap::default();
        let a = fifo(dir.path(), "a");
        // A reader that never reads: the pipe and then the queue fill.
        let _ra = pipe::OpenOptions::new().open_receiver(&a).unwrap();
        tap.subscribe("a", &a).unwrap();
        let chunk = vec![b'x'; 32 * 1024];
        for _ in 0..(SESSION_BACKLOG * 2 + 64) {
            tap.send(&chunk);
            tokio::task::yield_now().await;
        }
        assert!(tap.lock().subscribers.is_empty());
    }
}
