//! glibc malloc tuning for berth's long-lived daemons.
//!
//! glibc gives every thread that allocates under contention an arena of its
//! own (up to 8 per core) and keeps freed memory in them: berthd, whose
//! tokio workers and blocking threads handle pods that come and go, ended a
//! churn of a hundred pods with its RSS 13% above where it started with the
//! same (zero) pods, all of it free memory held in arenas (bench/soak; with
//! one arena it was 7%).

/// Caps the number of malloc arenas (glibc's `M_ARENA_MAX`).
pub fn limit_arenas(arenas: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator; called before
    // the daemon starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = arenas;
}

/// Returns the free memory of every arena to the kernel (`malloc_trim`).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages; it takes the arenas'
    // locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}
