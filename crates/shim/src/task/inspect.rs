//! What the client asks about processes: state, pids, exit, stats, and
//! berth's own report (OOM and time-limit kills).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::types::task::{ProcessInfo, Status};

use super::process::ENDING_TIMED_OUT;
use super::{ProcessReport, Service};
use crate::error::{Result, ShimError};
use crate::events::timestamp;

impl Service {
    pub(super) fn state(&self, req: &api::StateRequest) -> Result<api::StateResponse> {
        let (pid, st, stdio, exit, bundle) = self.process_status(&req.id, &req.exec_id)?;
        let mut r = api::StateResponse::new();
        r.id = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        r.bundle = bundle.display().to_string();
        r.pid = pid as u32;
        r.status = st.into();
        r.stdin = stdio.stdin;
        r.stdout = stdio.stdout;
        r.stderr = stdio.stderr;
        r.terminal = stdio.terminal;
        r.exec_id = req.exec_id.clone();
        if let Some(e) = exit {
            r.status = Status::STOPPED.into();
            r.exit_status = e.status;
            r.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(r)
    }

    pub(super) fn pids(&self, req: &api::PidsRequest) -> Result<api::PidsResponse> {
        let backend = self.backend(&req.id)?;
        let pids = backend.pids(&req.id)?;
        let execs: HashMap<i32, String> = {
            let inner = self.lock();
            inner
                .containers
                .get(&req.id)
                .map(|c| c.execs.iter().map(|(k, p)| (p.pid, k.clone())).collect())
                .unwrap_or_default()
        };
        let mut r = api::PidsResponse::new();
        for pid in pids {
            let mut info = ProcessInfo::new();
            info.pid = pid as u32;
            if let Some(exec_id) = execs.get(&pid) {
                let mut d = ProcessDetails::new();
                d.exec_id = exec_id.clone();
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".into();
                any.value = d.write_to_bytes().unwrap_or_default();
                info.info = MessageField::some(any);
            }
            r.processes.push(info);
        }
        Ok(r)
    }

    /// Resolves when the process exits.
    pub(super) async fn wait(&self, req: &api::WaitRequest) -> Result<api::WaitResponse> {
        let mut rx = {
            let inner = self.lock();
            let (_, p) = inner.process(&req.id, &req.exec_id)?;
            p.exit.subscribe()
        };
        let exit = loop {
            if let Some(e) = *rx.borrow() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(ShimError::Other("the process record was removed".into()));
            }
        };
        let mut r = api::WaitResponse::new();
        r.exit_status = exit.status;
        r.exited_at = MessageField::some(timestamp(exit.at));
        Ok(r)
    }

    pub(super) fn stats(&self, req: &api::StatsRequest) -> Result<api::StatsResponse> {
        let (pid, backend, cache) = {
            let inner = self.lock();
            let c = inner.container(&req.id)?;
            (c.init.pid, Arc::clone(&c.backend), Arc::clone(&c.stats))
        };
        let stats = {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            backend.stats(&req.id, pid, &mut cache)?
        };
        let mut r = api::StatsResponse::new();
        r.stats = MessageField::some(crate::metrics::to_any(&stats));
        Ok(r)
    }

    pub(super) fn connect(&self, req: &api::ConnectRequest) -> api::ConnectResponse {
        let pid = self
            .lock()
            .containers
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = pid as u32;
        r.version = env!("CARGO_PKG_VERSION").into();
        r
    }

    /// What the task API's State cannot say: OOM and time-limit kills.
    pub fn report(&self, id: &str, exec_id: &str) -> Result<ProcessReport> {
        let inner = self.lock();
        let (c, p) = inner.process(id, exec_id)?;
        let exit = p.exited();
        let status = if exit.is_some() {
            Status::STOPPED
        } else {
            p.status
        };
        Ok(ProcessReport {
            pid: p.pid,
            status: format!("{status:?}").to_lowercase(),
            exit_status: exit.map(|e| e.status),
            exited_at: exit.map(|e| crate::crilog::rfc3339_nano(e.at)),
            oom_killed: c.oom_killed.load(Ordering::Relaxed),
            timed_out: p.ending.load(Ordering::Relaxed) == ENDING_TIMED_OUT,
        })
    }
}
