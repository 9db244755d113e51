//! Leases: what pulls under way hold against gc. A pull writes blobs and
//! unpacks chains before any image record names them; gc (an image
//! removal beside the pull) must not take them from under it, as
//! containerd's leases keep them (bench/soak found a pull beside a
//! RemoveImage of the same image losing its blobs).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Blob digests and chain ids held, with how many pulls hold each.
#[derive(Default)]
pub(crate) struct Leases(Mutex<HashMap<String, usize>>);

/// What one pull holds until it is dropped.
pub(crate) struct Lease<'a> {
    leases: &'a Leases,
    keys: Vec<String>,
}

impl Leases {
    pub(crate) fn lease(&self) -> Lease<'_> {
        Lease {
            leases: self,
            keys: Vec::new(),
        }
    }

    /// Runs `remove` unless some pull holds `key`, with new holds waiting
    /// until it is done: gc decides from a snapshot of the holds, and a
    /// pull that holds a key after it must find the key's blob or snapshot
    /// either still there or already gone (and fetch it again), never taken
    /// away after it looked. Returns whether `remove` ran.
    pub(crate) fn remove_unheld<E>(
        &self,
        key: &str,
        remove: impl FnOnce() -> Result<(), E>,
    ) -> Result<bool, E> {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains_key(key) {
            return Ok(false);
        }
        remove()?;
        Ok(true)
    }

    /// Every key some pull holds now.
    pub(crate) fn held(&self) -> BTreeSet<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

impl Lease<'_> {
    /// Holds a blob digest or a chain id, before the pull writes or
    /// relies on it.
    pub(crate) fn hold(&mut self, key: &str) {
        let mut held = self.leases.0.lock().unwrap_or_else(|e| e.into_inner());
        *held.entry(key.to_owned()).or_default() += 1;
        self.keys.push(key.to_owned());
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut held = self.leases.0.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = held.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    held.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_taken_after_gc_looked_still_keeps_its_key() {
        let leases = Leases::default();
        // gc reads the holds: none yet.
        assert!(leases.held().is_empty());
        // A pull holds a blob it then finds present.
        let mut lease = leases.lease();
        lease.hold("sha256:a");
        // gc's removal sees the hold and leaves the blob.
        let mut removed = false;
        let ran = leases
            .remove_unheld("sha256:a", || {
                removed = true;
                Ok::<(), ()>(())
            })
            .unwrap();
        assert!(!ran && !removed);
        drop(lease);
        assert!(leases
            .remove_unheld("sha256:a", || Ok::<(), ()>(()))
            .unwrap());
    }
}
