//! The progress of running image pulls, for berth.v1.Images/WatchPull.
//!
//! CRI's PullImage answers only at the end; a client that wants to show
//! progress watches the same image here while its PullImage runs. Pulls
//! publish per-layer byte counts into a watch channel per image; watchers
//! that come first wait for the pull to start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_image::Progress;
use tokio::sync::watch;

/// At most this often while bytes arrive (plus at each layer's end).
const INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// (digest, done, total) in manifest order.
    pub layers: Vec<(String, u64, u64)>,
    pub started: bool,
    pub finished: bool,
}

struct Entry {
    tx: watch::Sender<Snapshot>,
    pullers: usize,
}

#[derive(Default)]
pub struct Board {
    pulls: Mutex<HashMap<String, Entry>>,
}

/// A running pull's handle: marks the pull finished when dropped (whether it
/// succeeded, failed or was cancelled), even if some of its download tasks
/// still hold the reporter.
pub struct Publisher {
    board: Arc<Board>,
    key: String,
    reporter: Arc<Reporter>,
}

/// Takes the image store's progress callbacks.
pub struct Reporter {
    tx: watch::Sender<Snapshot>,
    last: Mutex<Instant>,
}

impl Board {
    fn entry(&self, key: &str, puller: bool) -> watch::Sender<Snapshot> {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        // Entries that only watchers made, and whose watchers left.
        pulls.retain(|_, e| e.pullers > 0 || e.tx.receiver_count() > 0);
        let entry = pulls.entry(key.to_string()).or_insert_with(|| Entry {
            tx: watch::Sender::new(Snapshot::default()),
            pullers: 0,
        });
        if puller {
            entry.pullers += 1;
        }
        entry.tx.clone()
    }

    /// Starts publishing a pull of `key` (a normalised reference).
    pub fn start(self: &Arc<Self>, key: &str) -> Publisher {
        let tx = self.entry(key, true);
        tx.send_modify(|s| {
            // A second concurrent pull of the same image shares the snapshot.
            if !s.started || s.finished {
                *s = Snapshot {
                    started: true,
                    ..Snapshot::default()
                };
            }
        });
        Publisher {
            board: Arc::clone(self),
            key: key.to_string(),
            reporter: Arc::new(Reporter {
                tx,
                last: Mutex::new(Instant::now()),
            }),
        }
    }

    /// A receiver of `key`'s snapshots; its first value is already the
    /// current one if a pull runs.
    pub fn watch(&self, key: &str) -> watch::Receiver<Snapshot> {
        let mut rx = self.entry(key, false).subscribe();
        if rx.borrow().started {
            rx.mark_changed();
        }
        rx
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pulls.lock().unwrap().len()
    }
}

impl Publisher {
    pub fn reporter(&self) -> Arc<Reporter> {
        Arc::clone(&self.reporter)
    }

    #[cfg(test)]
    fn report(&self, p: &Progress) {
        self.reporter.report(p)
    }
}

impl Reporter {
    pub fn report(&self, p: &Progress) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.elapsed() >= INTERVAL;
        let notified = self.tx.send_if_modified(|s| {
            let (new, layer_done) = match s.layers.iter_mut().find(|l| l.0 == p.digest) {
                Some(l) => {
                    let was_done = l.1 >= l.2 && l.2 > 0;
                    l.1 = p.done;
                    l.2 = p.total;
                    (false, !was_done && p.done >= p.total)
                }
                None => {
                    s.layers.push((p.digest.clone(), p.done, p.total));
                    (true, false)
                }
            };
            // Layers are announced together at the start: tell watchers once
            // the burst is over (by time), not for each one.
            due || layer_done || (new && s.layers.len() == 1)
        });
        if notified {
            *last = Instant::now();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let mut pulls = self.board.pulls.lock().unwrap_or_else(|e| e.into_inner());
        let last = match pulls.get_mut(&self.key) {
            Some(e) => {
                e.pullers = e.pullers.saturating_sub(1);
                e.pullers == 0
            }
            None => true,
        };
        if last {
            pulls.remove(&self.key);
            drop(pulls);
            self.reporter.tx.send_modify(|s| s.finished = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(d: &str, done: u64, total: u64) -> Progress {
        Progress {
            digest: d.into(),
            done,
            total,
        }
    }

    #[tokio::test]
    async fn a_watcher_before_the_pull_sees_it_from_start_to_end() {
        let board = Arc::new(Board::default());
        let mut rx = board.watch("docker.io/library/busybox:latest");
        assert!(!rx.has_changed().unwrap());
        let p = board.start("docker.io/library/busybox:latest");
        rx.changed().await.unwrap();
        assert!(rx.borrow_and_update().started);
        p.report(&progress("a", 0, 10));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().layers, vec![("a".into(), 0, 10)]);
        p.report(&progress("a", 10, 10));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().layers, vec![("a".into(), 10, 10)]);
        drop(p);
        rx.changed().await.unwrap();
        assert!(rx.borrow_and_update().finished);
        assert_eq!(board.len(), 0);
    }

    #[tokio::test]
    async fn a_late_watcher_gets_the_current_state_and_updates_are_throttled() {
        let board = Arc::new(Board::default());
        let p = board.start("x");
        p.report(&progress("a", 0, 100));
        p.report(&progress("b", 0, 100));
        p.report(&progress("a", 5, 100));
        let mut rx = board.watch("x");
        assert!(rx.has_changed().unwrap());
        let s = rx.borrow_and_update().clone();
        assert_eq!(s.layers, vec![("a".into(), 5, 100), ("b".into(), 0, 100)]);
        // Within the interval, a partial update is stored but not announced.
        p.report(&progress("a", 6, 100));
        assert!(!rx.has_changed().unwrap());
        tokio::time::sleep(INTERVAL).await;
        p.report(&progress("a", 7, 100));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().layers[0].1, 7);
    }

    #[tokio::test]
    async fn watchers_that_leave_without_a_pull_leave_nothing() {
        let board = Arc::new(Board::default());
        for i in 0..10 {
            drop(board.watch(&format!("img{i}")));
        }
        let _p = board.start("other");
        assert_eq!(board.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_pulls_of_one_image_finish_with_the_last() {
        let board = Arc::new(Board::default());
        let a = board.start("x");
        let b = board.start("x");
        let mut rx = board.watch("x");
        rx.borrow_and_update();
        drop(a);
        assert!(!rx.borrow().finished);
        drop(b);
        assert!(rx.borrow().finished);
    }
}
