//! The task service: containerd's shim v2 API over this shim's containers.
//!
//! [`Service`] holds the containers and their processes and does the work,
//! in modules by concern; [`TaskHandler`] is its ttrpc face, where every
//! [`ShimError`](crate::error::ShimError) becomes a ttrpc status (one
//! conversion, by kind).
//!
//! - `process`: what is held per container and process, and lookups;
//! - `lifecycle`: create, start, exec, kill, pause, resume, update, delete;
//! - `inspect`: state, pids, wait, stats, connect, and berth's report;
//! - `io`: terminal size, stdin's end, log reopening;
//! - `exits`: reaped exits, runtime-reported exits, OOM kills;
//! - `deadline`: time limits of execs;
//! - `options`, `backend_choice`, `rootfs`: reading a Create request.

mod backend_choice;
mod deadline;
mod exits;
mod inspect;
mod io;
mod lifecycle;
mod options;
mod process;
mod rootfs;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::types::task::Status;
use ttrpc::r#async::TtrpcContext;

pub use berth_api::shim::v1::ProcessReport;
pub use options::BERTH_OPTIONS_TYPE;
pub use process::Exit;

use crate::backend::Backend;
use crate::error::Result;
use crate::events::Publisher;
use crate::stdio::StdioSpec;
use process::Inner;

pub struct Service {
    inner: Mutex<Inner>,
    publisher: Publisher,
    namespace: String,
    /// State root of the in-process runtime.
    state_root: PathBuf,
    shutdown: tokio::sync::Notify,
    /// The `vm` runtime class: every container runs in the pod's VM, booted
    /// by the first Create (None: not that class).
    vm_pod: Option<Mutex<Option<Arc<crate::vm::VmPod>>>>,
}

impl Service {
    pub fn new(publisher: Publisher, namespace: String, state_root: PathBuf) -> Arc<Service> {
        Self::new_for(publisher, namespace, state_root, crate::Class::Berth)
    }

    pub fn new_for(
        publisher: Publisher,
        namespace: String,
        state_root: PathBuf,
        class: crate::Class,
    ) -> Arc<Service> {
        Arc::new(Service {
            inner: Mutex::new(Inner::default()),
            publisher,
            namespace,
            state_root,
            shutdown: tokio::sync::Notify::new(),
            vm_pod: (class == crate::Class::Vm).then(|| Mutex::new(None)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the client asked the shim to go and nothing is left.
    pub async fn wait_shutdown(&self) {
        self.shutdown.notified().await
    }

    pub fn is_empty(&self) -> bool {
        self.lock().containers.is_empty()
    }

    fn backend(&self, id: &str) -> Result<Arc<Backend>> {
        Ok(Arc::clone(&self.lock().container(id)?.backend))
    }

    /// A process's pid, status, stdio, exit and its container's bundle.
    fn process_status(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(i32, Status, StdioSpec, Option<Exit>, PathBuf)> {
        let inner = self.lock();
        let (c, p) = inner.process(id, exec_id)?;
        Ok((
            p.pid,
            p.status,
            p.stdio.clone(),
            p.exited(),
            c.bundle.clone(),
        ))
    }
}

/// The ttrpc face of a [`Service`] (its methods need the `Arc`): each
/// method delegates, and `?` turns the shim's errors into statuses.
pub struct TaskHandler(pub Arc<Service>);

type RpcResult<T> = ttrpc::Result<T>;

#[async_trait]
impl Task for TaskHandler {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> RpcResult<api::StateResponse> {
        Ok(self.0.state(&req)?)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> RpcResult<api::CreateTaskResponse> {
        Ok(self.0.create(&req)?)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> RpcResult<api::StartResponse> {
        Ok(self.0.start(&req)?)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> RpcResult<api::DeleteResponse> {
        Ok(self.0.delete(&req)?)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> RpcResult<api::PidsResponse> {
        Ok(self.0.pids(&req)?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> RpcResult<Empty> {
        self.0.set_paused(&req.id, true)?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> RpcResult<Empty> {
        self.0.set_paused(&req.id, false)?;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> RpcResult<Empty> {
        self.0.kill(&req)?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> RpcResult<Empty> {
        self.0.exec(&req)?;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> RpcResult<Empty> {
        self.0.resize_pty(&req)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> RpcResult<Empty> {
        self.0.close_io(&req)?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> RpcResult<Empty> {
        self.0.update(&req)?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> RpcResult<api::WaitResponse> {
        Ok(self.0.wait(&req).await?)
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> RpcResult<api::StatsResponse> {
        Ok(self.0.stats(&req)?)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> RpcResult<api::ConnectResponse> {
        Ok(self.0.connect(&req))
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> RpcResult<Empty> {
        if self.0.is_empty() {
            self.0.shutdown.notify_one();
        }
        Ok(Empty::new())
    }
}
