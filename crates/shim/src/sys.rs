//! The shim's only `unsafe`: registering a file descriptor with tokio.

use std::os::fd::AsRawFd;

use tokio::io::unix::AsyncFd;

/// Registers `inner`'s fd with the reactor.
pub fn async_fd<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor and the AsyncFd owns `inner`, so the
    // fd stays open and unchanged for as long as it is registered.
    unsafe { AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
}
