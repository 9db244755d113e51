//! A process's stdio after it started: terminal size, stdin's end, CRI
//! log rotation, and attach sessions.

use berth_api::shim::v1::AttachRequest;
use containerd_shim_protos::api;

use std::sync::Arc;

use super::Service;
use crate::error::{Context, Result, ShimError};

impl Service {
    pub(super) fn resize_pty(&self, req: &api::ResizePtyRequest) -> Result<()> {
        let backend = {
            let inner = self.lock();
            let (_, p) = inner.process(&req.id, &req.exec_id)?;
            p.io.resize(req.width, req.height)
                .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
            Arc::clone(&inner.container(&req.id)?.backend)
        };
        backend.resize_guest_terminal(&req.id, &req.exec_id, req.width, req.height)
    }

    pub(super) fn close_io(&self, req: &api::CloseIORequest) -> Result<()> {
        let mut inner = self.lock();
        let p = inner.process_mut(&req.id, &req.exec_id)?;
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(())
    }

    /// Reopens a container's CRI log files (log rotation).
    pub fn reopen_logs(&self, id: &str) -> Result<()> {
        let inner = self.lock();
        for log in &inner.container(id)?.init.io.logs {
            log.reopen()
                .context(|| format!("reopening the log of {id}"))?;
        }
        Ok(())
    }
}

impl Service {
    /// Attaches a client's FIFOs to a container's init process (CRI Attach).
    pub fn attach(&self, req: &AttachRequest) -> Result<()> {
        if req.session.is_empty() {
            return Err(ShimError::InvalidArgument(
                "attach: the session has no name".into(),
            ));
        }
        let inner = self.lock();
        let (_, p) = inner.process(&req.id, "")?;
        if p.exited().is_some() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} has exited",
                req.id
            )));
        }
        let not_relayed = |what: &str| {
            ShimError::FailedPrecondition(format!(
                "container {}: its {what} does not pass through the shim, so it cannot be attached",
                req.id
            ))
        };
        // Check everything before attaching anything.
        let outputs = [
            (&req.stdout, &p.io.stdout_tap, "stdout"),
            (&req.stderr, &p.io.stderr_tap, "stderr"),
        ];
        for (path, tap, name) in &outputs {
            if !path.is_empty() && tap.is_none() {
                return Err(not_relayed(name));
            }
        }
        if !req.stdin.is_empty() && p.io.attachable_stdin.is_none() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {}: it was not created with stdin open for attach, or its stdin was closed",
                req.id
            )));
        }
        let attached = (|| {
            for (path, tap, _) in &outputs {
                if let (false, Some(tap)) = (path.is_empty(), tap) {
                    tap.subscribe(&req.session, path)?;
                }
            }
            if let (false, Some(stdin)) = (req.stdin.is_empty(), &p.io.attachable_stdin) {
                stdin.subscribe(&req.session, &req.stdin)?;
            }
            Ok(())
        })();
        attached.map_err(|e: crate::attach::AttachError| {
            detach_process(p, &req.session);
            match e {
                crate::attach::AttachError::Ended => {
                    ShimError::FailedPrecondition(format!("container {}: {e}", req.id))
                }
                e => ShimError::InvalidArgument(format!("attach to {}: {e}", req.id)),
            }
        })
    }

    /// Ends an attach session: its FIFOs are closed.
    pub fn detach(&self, req: &AttachRequest) -> Result<()> {
        let inner = self.lock();
        let (_, p) = inner.process(&req.id, "")?;
        detach_process(p, &req.session);
        Ok(())
    }
}

fn detach_process(p: &super::process::Proc, session: &str) {
    for tap in [&p.io.stdout_tap, &p.io.stderr_tap].into_iter().flatten() {
        tap.unsubscribe(session);
    }
    if let Some(stdin) = &p.io.attachable_stdin {
        stdin.unsubscribe(session);
    }
}
