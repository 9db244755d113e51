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

use std::cell::{Cell, RefCell};
use std::rc::Rc;
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

struct Activity {
    budget: Duration,
    last: Cell<Instant>,
    /// Until when a client handed a URL is waited for.
    expected_client: Cell<Option<Instant>>,
    polling: Cell<bool>,
    moved: Notify,
}

thread_local! {
    static ACTIVITY: RefCell<Option<Rc<Activity>>> = const { RefCell::new(None) };
}

/// Makes the calling thread (the streaming server's) poll for `budget`
/// after data moved; the returned future does the polling and must run on
/// this thread's runtime for as long as the server. `None` when `budget`
/// is zero: the thread sleeps whenever it has nothing to do.
pub(crate) fn busy_poll_on_this_thread(
    budget: Duration,
) -> Option<impl std::future::Future<Output = ()>> {
    if budget.is_zero() {
        return None;
    }
    let activity = Rc::new(Activity {
        budget,
        last: Cell::new(Instant::now()),
        expected_client: Cell::new(None),
        polling: Cell::new(false),
        moved: Notify::new(),
    });
    ACTIVITY.with(|a| *a.borrow_mut() = Some(Rc::clone(&activity)));
    Some(async move {
        loop {
            activity.moved.notified().await;
            activity.polling.set(true);
            let mut polls = 0u32;
            while activity.last.get().elapsed() < activity.budget
                || activity
                    .expected_client
                    .get()
                    .is_some_and(|until| Instant::now() < until)
            {
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
            activity.polling.set(false);
        }
    })
}

/// Data moved: keep polling for the budget from now.
pub(crate) fn moved() {
    ACTIVITY.with(|a| {
        if let Some(a) = &*a.borrow() {
            a.last.set(Instant::now());
            if !a.polling.get() {
                a.moved.notify_one();
            }
        }
    });
}

/// A client was handed a URL: poll until it comes, for
/// [`EXPECTED_CLIENT_WINDOW`] at most.
pub(crate) fn client_expected() {
    ACTIVITY.with(|a| {
        if let Some(a) = &*a.borrow() {
            a.expected_client
                .set(Some(Instant::now() + EXPECTED_CLIENT_WINDOW));
            if !a.polling.get() {
                a.moved.notify_one();
            }
        }
    });
}

/// A client with a URL came: the ordinary budget applies again.
pub(crate) fn client_came() {
    ACTIVITY.with(|a| {
        if let Some(a) = &*a.borrow() {
            a.expected_client.set(None);
        }
    });
    moved();
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
