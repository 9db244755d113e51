//! The shim is its containers' subreaper: every process that ends under
//! it is reaped here and its status handed to the task service.

use rustix::process::{WaitOptions, WaitStatus};

/// Exit status as containerd reports it: the code, or 128 + the signal.
pub fn exit_code(status: WaitStatus) -> u32 {
    if let Some(code) = status.exit_status() {
        code as u32
    } else if let Some(sig) = status.terminating_signal() {
        128 + sig as u32
    } else {
        255
    }
}

/// Reaps everything that has exited; calls `on_exit(pid, status)` for each.
pub fn reap_all(mut on_exit: impl FnMut(i32, u32)) {
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => on_exit(pid.as_raw_nonzero().get(), exit_code(status)),
            Ok(None) | Err(_) => return,
        }
    }
}
