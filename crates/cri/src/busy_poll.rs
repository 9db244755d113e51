//! Polling the CRI connections for a moment after a call instead of
//! sleeping at once (`[grpc] busy_poll_us`).
//!
//! kubelet makes its calls in bursts, one after another: PLEG's relist, the
//! status of each pod that changed, the stats loop. Between two calls of a
//! burst, berthd's threads have nothing to do and sleep; the next request
//! then costs a wake-up, the largest part of a cheap call's latency on an
//! idle host (a halted CPU woken by an interrupt, slower still on a virtual
//! CPU). Go's scheduler, under containerd, spins for a while before a
//! thread parks, and so avoids it. Here a runtime thread about to sleep
//! within the budget of a call polls the CRI connections (one thread at a
//! time, yielding the CPU between polls) until a request comes or the
//! budget has passed since the last call. A daemon no call reaches sleeps at
//! once: an idle node costs nothing.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::event::epoll;

/// The budget, the connections to poll and the last call's time.
pub struct BusyPoll {
    /// 0: never poll.
    budget_ns: AtomicU64,
    /// Every CRI connection, level-triggered for input: a closed connection
    /// leaves it by itself.
    epoll: OnceLock<Option<OwnedFd>>,
    /// When a connection last moved data (ns since `EPOCH`; 0: never).
    last_ns: AtomicU64,
    /// A thread is polling: one is enough, and the others must leave the
    /// CPUs to the client.
    polling: AtomicBool,
}

/// The process's, for the CRI server's connections and berthd's runtime.
pub static CRI: BusyPoll = BusyPoll::new();

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl BusyPoll {
    pub const fn new() -> BusyPoll {
        BusyPoll {
            budget_ns: AtomicU64::new(0),
            epoll: OnceLock::new(),
            last_ns: AtomicU64::new(0),
            polling: AtomicBool::new(false),
        }
    }

    /// Sets the budget (zero: never poll).
    pub fn set_budget(&self, budget: Duration) {
        let ns = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        self.budget_ns.store(ns, Ordering::Relaxed);
    }

    fn enabled(&self) -> bool {
        self.budget_ns.load(Ordering::Relaxed) != 0
    }

    /// Adds a connection to those polled (nothing when polling is off).
    pub fn watch(&self, connection: impl AsFd) {
        if !self.enabled() {
            return;
        }
        let epoll = self
            .epoll
            .get_or_init(|| epoll::create(epoll::CreateFlags::CLOEXEC).ok());
        if let Some(epoll) = epoll {
            // Without it, this connection only misses the polling.
            let _ = epoll::add(
                epoll,
                connection,
                epoll::EventData::new_u64(0),
                epoll::EventFlags::IN,
            );
        }
    }

    /// A connection moved data: a call is under way or just answered.
    pub fn moved(&self) {
        if self.enabled() {
            self.last_ns.store(now_ns().max(1), Ordering::Relaxed);
        }
    }

    /// What a runtime thread calls before it sleeps: within the budget
    /// since data last moved, polls the connections until one has input
    /// or the budget has passed; returns at once otherwise.
    pub fn before_sleep(&self) {
        let budget = self.budget_ns.load(Ordering::Relaxed);
        if budget == 0 {
            return;
        }
        let Some(Some(epoll)) = self.epoll.get() else {
            return;
        };
        let within_budget = || match self.last_ns.load(Ordering::Relaxed) {
            0 => false,
            last => now_ns().saturating_sub(last) < budget,
        };
        if !within_budget() || self.polling.swap(true, Ordering::Acquire) {
            return;
        }
        let no_wait = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 1];
        // Until input (the thread goes on to the runtime, which finds it
        // without sleeping), an error, or the end of the budget.
        while let Ok(([], _)) = epoll::wait(epoll, &mut events, Some(&no_wait)) {
            if !within_budget() {
                break;
            }
            // The client, or whatever else waits for this CPU, runs first.
            std::thread::yield_now();
        }
        self.polling.store(false, Ordering::Release);
    }
}

impl Default for BusyPoll {
    fn default() -> Self {
        BusyPoll::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use std::os::unix::net::UnixStream;

    /// A poller watching one end of a pair; both ends.
    fn polled(budget: Duration) -> (BusyPoll, UnixStream, UnixStream) {
        let poll = BusyPoll::new();
        poll.set_budget(budget);
        let (ours, theirs) = UnixStream::pair().unwrap();
        poll.watch(&ours);
        (poll, ours, theirs)
    }

    #[test]
    fn polls_until_the_budget_after_a_call_and_not_without_one() {
        let budget = Duration::from_millis(30);
        let (poll, _ours, _peer) = polled(budget);
        // No data moved yet: sleep at once.
        let t = Instant::now();
        poll.before_sleep();
        assert!(t.elapsed() < budget / 2, "{:?}", t.elapsed());
        // Just after a call: polls for the budget.
        poll.moved();
        let t = Instant::now();
        poll.before_sleep();
        assert!(t.elapsed() >= budget / 2, "{:?}", t.elapsed());
        // Once the budget has passed since the call: at once again.
        let t = Instant::now();
        poll.before_sleep();
        assert!(t.elapsed() < budget / 2, "{:?}", t.elapsed());
    }

    #[test]
    fn a_request_ends_the_polling() {
        let (poll, _ours, mut peer) = polled(Duration::from_secs(20));
        poll.moved();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            peer.write_all(b"request").unwrap();
            peer
        });
        let t = Instant::now();
        poll.before_sleep();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(
            t.elapsed() >= Duration::from_millis(15),
            "{:?}",
            t.elapsed()
        );
        drop(writer.join());
    }

    #[test]
    fn one_thread_polls_at_a_time_and_off_means_never() {
        let (poll, _ours, _peer) = polled(Duration::from_secs(20));
        poll.moved();
        poll.polling.store(true, Ordering::Relaxed);
        let t = Instant::now();
        poll.before_sleep();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        poll.polling.store(false, Ordering::Relaxed);
        poll.set_budget(Duration::ZERO);
        poll.moved();
        let t = Instant::now();
        poll.before_sleep();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
}
