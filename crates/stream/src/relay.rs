//! Relaying a connection's bytes, and polling the streaming thread's
//! sockets for a moment after data moved instead of sleeping at once.
//!
//! A port-forward relay sits between two peers that talk in turns: the
//! client writes a request, the pod answers, the client asks again. If the
//! streaming thread sleeps between the two, each turn costs it a wake-up,
//! the largest part of what a relay adds to a round trip on an idle host
//! (a halted CPU woken by an interrupt, slower still on a virtual CPU). So
//! after data moved, the thread keeps polling its sockets, without
//! sleeping, for at most a budget (`[stream] busy_poll_us`), as Go's
//! scheduler spins before it parks and as the kernel's socket busy polling
//! does. A thread with nothing moving sleeps as before: an idle stream
//! costs nothing.
//!
//! The same holds for a client that was just handed a URL: the kubelet
//! connects to it right after the Exec, Attach or PortForward call
//! returns, so from the moment the URL is issued the thread polls (for
//! [`EXPECTED_CLIENT_WINDOW`] at most, less once the client is there)
//! instead of sleeping until the client's connection wakes it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Polls between two yields of the CPU to whatever else waits for it: a
/// poll takes well under a microsecond.
const POLLS_PER_YIELD: u32 = 8;

/// How long the thread polls for a client that was handed a URL: its
/// connection comes within a few hundred microseconds of the call's
/// answer, unless it is not coming at all.
pub(crate) const EXPECTED_CLIENT_WINDOW: Duration = Duration::from_millis(1);

/// The streaming thread's polling: when data last moved there, and until
/// when a client handed a URL is waited for. The server holds it too: it
/// hands out URLs from the CRI server's threads.
pub(crate) struct BusyPoll {
    /// How long to poll after data moved (ns).
    budget_ns: u64,
    /// What the times below count from.
    epoch: Instant,
    /// When data last moved (ns since `epoch`).
    last_ns: AtomicU64,
    /// Until when a client handed a URL is waited for (ns since `epoch`;
    /// 0: no client is).
    expected_client_ns: AtomicU64,
    /// The thread polls now: data moving on it need not wake the poller.
    polling: AtomicBool,
    wake: Notify,
}

thread_local! {
    static THIS_THREAD: RefCell<Option<Arc<BusyPoll>>> = const { RefCell::new(None) };
}

impl BusyPoll {
    /// Polling for `budget` after data moved; `None` when `budget` is zero:
    /// the thread sleeps whenever it has nothing to do.
    pub(crate) fn new(budget: Duration) -> Option<Arc<BusyPoll>> {
        if budget.is_zero() {
            return None;
        }
        Some(Arc::new(BusyPoll {
            budget_ns: nanos(budget),
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            expected_client_ns: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            wake: Notify::new(),
        }))
    }

    /// Makes the calling thread the one that polls: the streaming server's,
    /// whose runtime must run [`BusyPoll::run`] for as long as the server.
    pub(crate) fn on_this_thread(self: &Arc<Self>) {
        THIS_THREAD.with(|t| *t.borrow_mut() = Some(Arc::clone(self)));
    }

    fn now_ns(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// Whether to keep polling: data moved within the budget, or a client
    /// handed a URL has not come yet and may still.
    fn busy(&self) -> bool {
        let now = self.now_ns();
        now.saturating_sub(self.last_ns.load(Ordering::Relaxed)) < self.budget_ns
            || now < self.expected_client_ns.load(Ordering::Relaxed)
    }

    /// The poller: sleeps until woken, then polls while [`Self::busy`].
    pub(crate) async fn run(&self) {
        loop {
            self.wake.notified().await;
            self.polling.store(true, Ordering::Relaxed);
            let mut polls = 0u32;
            while self.busy() {
                // A process waiting for this CPU (the pod's, the client)
                // gets it within a few polls: the poll must not delay the
                // answer it waits for. Not at every poll: the data this
                // poll finds would wait for the yield, about a microsecond
                // of each turn.
                polls = polls.wrapping_add(1);
                if polls % POLLS_PER_YIELD == 0 {
                    std::thread::yield_now();
                }
                // Back to the runtime, which polls its sockets without
                // sleeping while a task is ready to run.
                tokio::task::yield_now().await;
            }
            self.polling.store(false, Ordering::Relaxed);
        }
    }

    /// A client was handed a URL (on any thread): poll until it comes, for
    /// [`EXPECTED_CLIENT_WINDOW`] at most. The poller is woken whether or
    /// not it polls now: a wake-up it does not need costs it one look at
    /// the clock, one it misses costs the client a sleeping thread.
    pub(crate) fn client_expected(&self) {
        self.expected_client_ns.store(
            self.now_ns().saturating_add(nanos(EXPECTED_CLIENT_WINDOW)),
            Ordering::Relaxed,
        );
        self.wake.notify_one();
    }

    /// Data moved on the streaming thread.
    fn moved(&self) {
        self.last_ns.store(self.now_ns(), Ordering::Relaxed);
        if !self.polling.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Data moved: keep polling for the budget from now.
pub(crate) fn moved() {
    THIS_THREAD.with(|t| {
        if let Some(poll) = &*t.borrow() {
            poll.moved();
        }
    });
}

/// A client with a URL came: the ordinary budget applies again.
pub(crate) fn client_came() {
    THIS_THREAD.with(|t| {
        if let Some(poll) = &*t.borrow() {
            poll.expected_client_ns.store(0, Ordering::Relaxed);
            poll.moved();
        }
    });
}

/// Copies `from` to `to` until `from` ends, marking each write as data
/// moved.
pub(crate) async fn copy<R, W>(from: &mut R, to: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 << 10];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        moved();
    }
}
