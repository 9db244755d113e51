//! berth-shim-client: the client side of the shim API, what berthd uses
//! (and berth's shim tests): containerd's task API as typed calls, which
//! speak `containerd.task.v3.Task` and fall back to `v2` for shims that
//! only know that name, as containerd 2 does; and the shim's own service
//! `berth.shim.v1.Shim`. It links no runtime code: berthd depends on this
//! crate, never on the shim itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use berth_api::shim::v1 as proto;
use containerd_shim_protos::protobuf::Message;
use ttrpc::proto::RequestInit;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;

/// containerd's task service, as containerd 1.x names it.
pub const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
/// containerd's task service, as containerd 2 names it.
pub const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";

/// The type URL of berth's own runtime options in a Create request (JSON:
/// containerd's runc options plus global flags for the runtime binary).
pub const BERTH_OPTIONS_TYPE: &str = "berth.shim.v1.RuntimeOptions";

/// The stdio URI (in CreateTaskRequest) of a stream that passes through
/// the shim for attach sessions only: an output no log keeps, or a stdin
/// held open for attach sessions to feed.
pub const ATTACH_URI: &str = "attach://";

pub use berth_api::shim::v1::{AttachRequest, ProcessRef, ProcessReport};

pub const SHIM_SERVICE: &str = proto::SERVICE;

/// A connection to a shim. Speaks `containerd.task.v3.Task` and falls
/// back to `v2` for shims that only know that name, as containerd 2 does.
#[derive(Clone)]
pub struct ShimClient {
    client: ttrpc::r#async::Client,
    v2: Arc<AtomicBool>,
}

fn is_unknown_service(e: &ttrpc::Error) -> bool {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            s.code() == ttrpc::Code::NOT_FOUND
                && (s.message().contains("not supported")
                    || s.message().contains("unknown service"))
        }
        _ => false,
    }
}

fn encoding(e: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::Others(format!("encoding: {e}"))
}

fn decoding(e: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::Others(format!("decoding: {e}"))
}

impl ShimClient {
    pub async fn connect(address: &str) -> ttrpc::Result<ShimClient> {
        let addr = if address.starts_with("unix://") {
            address.to_owned()
        } else {
            format!("unix://{address}")
        };
        Ok(ShimClient {
            client: ttrpc::r#async::Client::connect(&addr).await?,
            v2: Arc::new(AtomicBool::new(false)),
        })
    }

    /// One request: its payload out, the reply's payload back.
    async fn request(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout_ns: i64,
    ) -> ttrpc::Result<Vec<u8>> {
        let mut creq = ttrpc::Request::init_request(
            service.to_owned(),
            method.to_owned(),
            timeout_ns,
            Vec::new(),
        );
        creq.set_payload(payload);
        Ok(self.client.request(creq).await?.payload)
    }

    async fn raw<Req: Message, Resp: Message>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        timeout_ns: i64,
    ) -> ttrpc::Result<Resp> {
        let payload = req.write_to_bytes().map_err(encoding)?;
        let res = self.request(service, method, payload, timeout_ns).await?;
        Resp::parse_from_bytes(&res).map_err(decoding)
    }

    /// Calls a task method (timeout in ns; 0 for none).
    /// Any task method by name, for methods without a typed call above.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
        timeout_ns: i64,
    ) -> ttrpc::Result<Resp> {
        if !self.v2.load(Ordering::Relaxed) {
            match self.raw(TASK_SERVICE_V3, method, req, timeout_ns).await {
                Err(e) if is_unknown_service(&e) => self.v2.store(true, Ordering::Relaxed),
                other => return other,
            }
        }
        self.raw(TASK_SERVICE_V2, method, req, timeout_ns).await
    }
}

/// One typed method per task RPC berthd makes; the method names live in
/// this table only.
macro_rules! task_calls {
    ($($name:ident => $method:literal: $req:ty => $resp:ty;)*) => {
        impl ShimClient {
            $(
                #[doc = concat!("`", $method, "` of the task service.")]
                pub async fn $name(&self, req: &$req, timeout_ns: i64) -> ttrpc::Result<$resp> {
                    self.call($method, req, timeout_ns).await
                }
            )*
        }
    };
}

task_calls! {
    create => "Create": api::CreateTaskRequest => api::CreateTaskResponse;
    start => "Start": api::StartRequest => api::StartResponse;
    kill => "Kill": api::KillRequest => Empty;
    wait => "Wait": api::WaitRequest => api::WaitResponse;
    delete => "Delete": api::DeleteRequest => api::DeleteResponse;
    state => "State": api::StateRequest => api::StateResponse;
    exec => "Exec": api::ExecProcessRequest => Empty;
    update => "Update": api::UpdateTaskRequest => Empty;
    stats => "Stats": api::StatsRequest => api::StatsResponse;
    pids => "Pids": api::PidsRequest => api::PidsResponse;
    pause => "Pause": api::PauseRequest => Empty;
    resume => "Resume": api::ResumeRequest => Empty;
    resize_pty => "ResizePty": api::ResizePtyRequest => Empty;
    close_io => "CloseIO": api::CloseIORequest => Empty;
    connect_task => "Connect": api::ConnectRequest => api::ConnectResponse;
    shutdown => "Shutdown": api::ShutdownRequest => Empty;
}

impl ShimClient {
    /// Calls a method of berth's own service (10 s at most).
    async fn extension<Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &impl prost::Message,
    ) -> ttrpc::Result<Resp> {
        let payload = prost::Message::encode_to_vec(req);
        let res = self
            .request(SHIM_SERVICE, method, payload, 10_000_000_000)
            .await?;
        Resp::decode(res.as_slice()).map_err(decoding)
    }

    /// As [`Self::extension`], for a shim started by an older berthd
    /// (shims outlive berthd across upgrades): those read and answer JSON
    /// and refuse protobuf with INVALID_ARGUMENT "decoding the request".
    async fn extension_compat<Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &ProcessRef,
        from_json: impl FnOnce(serde_json::Value) -> Option<Resp>,
    ) -> ttrpc::Result<Resp> {
        match self.extension(method, req).await {
            Err(ttrpc::Error::RpcStatus(s))
                if s.code() == ttrpc::Code::INVALID_ARGUMENT
                    && s.message().starts_with("decoding the request") =>
            {
                let mut json = serde_json::json!({"id": req.id, "exec_id": req.exec_id});
                if let Some(ms) = req.timeout_ms {
                    json["timeout_ms"] = ms.into();
                }
                let res = self
                    .request(
                        SHIM_SERVICE,
                        method,
                        json.to_string().into_bytes(),
                        10_000_000_000,
                    )
                    .await?;
                serde_json::from_slice(&res)
                    .ok()
                    .and_then(from_json)
                    .ok_or_else(|| decoding("the older shim's JSON answer"))
            }
            other => other,
        }
    }

    /// Gives an exec a time limit (probes): the shim kills it with SIGKILL
    /// when the limit expires, counted from its start (or from now if it
    /// already runs), and [`ShimClient::report`] then says `timed_out`.
    pub async fn set_exec_timeout(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> ttrpc::Result<()> {
        let req = ProcessRef {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            timeout_ms: Some(timeout.as_millis().max(1) as u64),
        };
        self.extension_compat(proto::SET_EXEC_TIMEOUT, &req, |_| Some(()))
            .await
    }

    /// A process's status, exit, and whether an OOM or a time limit ended it.
    pub async fn report(&self, id: &str, exec_id: &str) -> ttrpc::Result<ProcessReport> {
        let req = ProcessRef {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            timeout_ms: None,
        };
        self.extension_compat(proto::REPORT, &req, |v| {
            Some(ProcessReport {
                pid: v["pid"].as_i64()? as i32,
                status: v["status"].as_str()?.to_owned(),
                exit_status: v["exit_status"].as_u64().map(|c| c as u32),
                exited_at: v["exited_at"].as_str().map(str::to_owned),
                oom_killed: v["oom_killed"].as_bool().unwrap_or(false),
                timed_out: v["timed_out"].as_bool().unwrap_or(false),
            })
        })
        .await
    }

    /// Reopens a container's CRI log files (after the kubelet rotated them).
    pub async fn reopen_log(&self, id: &str) -> ttrpc::Result<()> {
        let req = ProcessRef {
            id: id.to_owned(),
            ..ProcessRef::default()
        };
        self.extension::<()>(proto::REOPEN_LOG, &req).await
    }
    /// Attaches FIFOs to a container's init process (CRI Attach): see
    /// `Attach` in berth.shim.v1. Shims older than attach answer
    /// NOT_FOUND or UNIMPLEMENTED for the method.
    pub async fn attach(&self, req: &AttachRequest) -> ttrpc::Result<()> {
        self.extension::<()>(proto::ATTACH, req).await
    }

    /// Ends an attach session.
    pub async fn detach(&self, id: &str, session: &str) -> ttrpc::Result<()> {
        let req = AttachRequest {
            id: id.to_owned(),
            session: session.to_owned(),
            ..AttachRequest::default()
        };
        self.extension::<()>(proto::DETACH, &req).await
    }
}
