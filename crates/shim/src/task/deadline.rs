//! Time limits of execs (probes): the shim kills an exec that outlives its
//! limit and remembers that it did.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::types::task::Status;

use super::process::{no_exec, Proc, ENDING_NONE, ENDING_TIMED_OUT};
use super::Service;
use crate::error::{Result, ShimError};

impl Service {
    /// Gives an exec a time limit: from its start, or from now if it runs.
    pub fn set_exec_timeout(&self, id: &str, exec_id: &str, limit: Duration) -> Result<()> {
        let mut inner = self.lock();
        let p = inner
            .container_mut(id)?
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| no_exec(id, exec_id))?;
        if p.exited().is_some() {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {exec_id} of {id} has exited"
            )));
        }
        p.timeout = Some(limit);
        if p.status == Status::RUNNING {
            let backend = Arc::clone(&inner.container(id)?.backend);
            let p = inner.process(id, exec_id)?.1;
            arm_deadline(id, exec_id, limit, p, backend);
        }
        Ok(())
    }
}

/// Kills an exec (started: `p.pid` is set) with SIGKILL when its limit
/// expires before it exits.
pub(super) fn arm_deadline(
    id: &str,
    exec_id: &str,
    limit: Duration,
    p: &Proc,
    backend: Arc<crate::backend::Backend>,
) {
    let pid = p.pid;
    let mut exited = p.exit.subscribe();
    let ending = Arc::clone(&p.ending);
    let what = format!("exec {exec_id} of {id}");
    let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
    tokio::spawn(async move {
        let wait_exit = async {
            while exited.borrow_and_update().is_none() {
                if exited.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(limit, wait_exit).await.is_ok() {
            return;
        }
        // Not if the process was reaped meanwhile: its pid may be reused.
        if ending
            .compare_exchange(
                ENDING_NONE,
                ENDING_TIMED_OUT,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return;
        }
        log::info!("{what} exceeded its time limit of {limit:?}: killing pid {pid}");
        // Blocking for a VM's exec (the agent's answer): not on this thread.
        let _ = tokio::task::spawn_blocking(move || backend.kill_exec(&id, &exec_id, pid, 9)).await;
    });
}
