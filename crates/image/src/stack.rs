//! Unpacking an image's layers side by side. A layer's snapshot holds only
//! that layer's changes, so layers can be decompressed and written at the
//! same time; what depends on the layers below is rare (a directory the
//! tar does not carry, a hardlink to a lower file) and waits for them, and
//! a snapshot is recorded only after the one below it, so its parent
//! always exists.
//!
//! - [`LayerStack`]: one pull's layers: which are recorded (or failed),
//!   how many unpack at once, the bytes the image holds so far.
//! - [`Claims`]: chains being unpacked by any pull of the store, so two
//!   pulls sharing a layer unpack it once.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::{Error, Result};

#[derive(Clone, Copy, PartialEq, Eq)]
enum LayerState {
    Pending,
    Recorded,
    Failed,
}

struct State {
    layers: Vec<LayerState>,
    running: usize,
}

/// One pull's layers.
pub(crate) struct LayerStack {
    state: Mutex<State>,
    changed: Condvar,
    slots: usize,
    /// Bytes of file contents in the image's layers so far, for the
    /// per-image unpack limit (layers are charged as they are written, in
    /// whatever order they are).
    pub(crate) image_used: Arc<AtomicU64>,
}

impl LayerStack {
    /// `layers` layers, at most `slots` of them unpacking at once.
    pub(crate) fn new(layers: usize, slots: usize) -> LayerStack {
        LayerStack {
            state: Mutex::new(State {
                layers: vec![LayerState::Pending; layers],
                running: 0,
            }),
            changed: Condvar::new(),
            slots: slots.max(1),
            image_used: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the unpack of layer `index` in a slot; the layer is recorded
    /// if it returns Ok, failed otherwise (the layers above it then fail
    /// instead of waiting for it).
    pub(crate) fn run<T>(&self, index: usize, unpack: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut outcome = Outcome {
            stack: self,
            index,
            recorded: false,
        };
        self.take_slot();
        let result = unpack();
        self.give_slot();
        outcome.recorded = result.is_ok();
        result
    }

    /// Marks layer `index` failed: its unpack never ran (its download
    /// failed).
    pub(crate) fn fail(&self, index: usize) {
        self.finish(index, false);
    }

    /// Blocks until every layer below `index` is recorded, giving up the
    /// caller's slot meanwhile (a layer waiting for those below must not
    /// keep them from a slot); an error if one of them failed.
    pub(crate) fn wait_below(&self, index: usize) -> Result<()> {
        let mut st = self.lock();
        st.running -= 1;
        self.changed.notify_all();
        let outcome = loop {
            let below = &st.layers[..index.min(st.layers.len())];
            if below.contains(&LayerState::Failed) {
                break Err(Error::Registry(format!(
                    "layer {index} not recorded: a layer below it failed"
                )));
            }
            if below.iter().all(|s| *s == LayerState::Recorded) {
                break Ok(());
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(self.slot_in(st));
        outcome
    }

    fn take_slot(&self) {
        drop(self.slot_in(self.lock()));
    }

    /// Waits for a free slot and takes it.
    fn slot_in<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while st.running >= self.slots {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.running += 1;
        st
    }

    fn give_slot(&self) {
        self.lock().running -= 1;
        self.changed.notify_all();
    }

    fn finish(&self, index: usize, recorded: bool) {
        let mut st = self.lock();
        if let Some(s) = st.layers.get_mut(index) {
            *s = if recorded {
                LayerState::Recorded
            } else {
                LayerState::Failed
            };
        }
        drop(st);
        self.changed.notify_all();
    }
}

/// Marks its layer when dropped, even if the unpack panicked.
struct Outcome<'a> {
    stack: &'a LayerStack,
    index: usize,
    recorded: bool,
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        self.stack.finish(self.index, self.recorded);
    }
}

/// Chain ids being unpacked in the store.
#[derive(Default)]
pub(crate) struct Claims {
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

/// A chain this thread unpacks, until dropped.
pub(crate) struct Claim<'a> {
    claims: &'a Claims,
    chain: String,
}

impl Claims {
    /// Waits while another thread unpacks `chain`, then claims it. A chain
    /// waits only for chains below it, so claims cannot deadlock.
    pub(crate) fn claim(&self, chain: &str) -> Claim<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while busy.contains(chain) {
            busy = self
                .freed
                .wait(busy)
                .unwrap_or_else(PoisonError::into_inner);
        }
        busy.insert(chain.to_owned());
        Claim {
            claims: self,
            chain: chain.to_owned(),
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.chain);
        self.claims.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn an_upper_layer_waits_for_the_ones_below_without_holding_their_slot() {
        // One slot: layer 1 starts first and waits for layer 0, which
        // could not run if layer 1 kept the slot.
        let stack = Arc::new(LayerStack::new(2, 1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let upper = {
            let (stack, order) = (Arc::clone(&stack), Arc::clone(&order));
            std::thread::spawn(move || {
                stack.run(1, || {
                    stack.wait_below(1)?;
                    order.lock().unwrap().push(1);
                    Ok(())
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        stack
            .run(0, || {
                order.lock().unwrap().push(0);
                Ok(())
            })
            .unwrap();
        upper.join().unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), vec![0, 1]);
    }

    #[test]
    fn a_failed_layer_fails_the_ones_above_instead_of_hanging_them() {
        let stack = Arc::new(LayerStack::new(3, 2));
        let waiting = {
            let stack = Arc::clone(&stack);
            std::thread::spawn(move || stack.run(2, || stack.wait_below(2)))
        };
        stack.fail(0);
        let err = waiting.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("a layer below it failed"), "{err}");
    }

    #[test]
    fn a_chain_is_unpacked_by_one_thread_at_a_time() {
        let claims = Arc::new(Claims::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (claims, inside) = (Arc::clone(&claims), Arc::clone(&inside));
                std::thread::spawn(move || {
                    let _claim = claims.claim("sha256:c");
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                    std::thread::sleep(Duration::from_millis(5));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
