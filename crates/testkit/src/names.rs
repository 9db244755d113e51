//! Names unique to this test process, and locks that serialize the tests
//! of one binary around a shared host resource.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The next number of this process's counter (never the same twice).
pub(crate) fn next() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A name unique to this test process and call: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next())
}

/// Locks `m`, ignoring poisoning (a failed test must not fail the others).
pub fn lock(m: &'static Mutex<()>) -> MutexGuard<'static, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
