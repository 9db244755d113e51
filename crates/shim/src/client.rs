//! The client side of the shim API (what berthd uses), and the shim's own
//! extra service `berth.shim.v1.Shim` (log reopening for rotation).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::Message;
use serde::{Deserialize, Serialize};
use ttrpc::proto::{Codec, RequestInit, ResponseInit};
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

use crate::task::{ProcessReport, Service as TaskService};
use crate::{TASK_SERVICE_V2, TASK_SERVICE_V3};

pub const SHIM_SERVICE: &str = "berth.shim.v1.Shim";

fn ok_response(payload: Vec<u8>) -> ttrpc::Response {
    let mut res = ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::OK, String::new()));
    res.set_payload(payload);
    res
}

fn error_response(e: ttrpc::Error) -> ttrpc::Response {
    match e {
        ttrpc::Error::RpcStatus(s) => ttrpc::Response::init_status(s),
        e => ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::UNKNOWN, e.to_string())),
    }
}

fn bad_request(e: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::INVALID_ARGUMENT,
        format!("decoding the request: {e}"),
    ))
}

struct ReopenLog(Arc<TaskService>);

#[async_trait]
impl MethodHandler for ReopenLog {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let result = <api::StateRequest as Codec>::decode(&req.payload)
            .map_err(bad_request)
            .and_then(|r| self.0.reopen_logs(&r.id));
        Ok(match result {
            Ok(()) => ok_response(Empty::new().write_to_bytes().unwrap_or_default()),
            Err(e) => error_response(e),
        })
    }
}

/// Which process an extension call is about (JSON, like its replies:
/// these calls are berth's own, not containerd's protobuf API).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessRef {
    pub id: String,
    #[serde(default)]
    pub exec_id: String,
    /// SetExecTimeout only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

struct SetExecTimeout(Arc<TaskService>);

#[async_trait]
impl MethodHandler for SetExecTimeout {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let result = serde_json::from_slice::<ProcessRef>(&req.payload)
            .map_err(bad_request)
            .and_then(|r| {
                let ms = r
                    .timeout_ms
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| bad_request("timeout_ms must be a positive number"))?;
                self.0
                    .set_exec_timeout(&r.id, &r.exec_id, Duration::from_millis(ms))
            });
        Ok(match result {
            Ok(()) => ok_response(b"{}".to_vec()),
            Err(e) => error_response(e),
        })
    }
}

struct Report(Arc<TaskService>);

#[async_trait]
impl MethodHandler for Report {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let result = serde_json::from_slice::<ProcessRef>(&req.payload)
            .map_err(bad_request)
            .and_then(|r| self.0.report(&r.id, &r.exec_id));
        Ok(match result {
            Ok(report) => ok_response(serde_json::to_vec(&report).unwrap_or_default()),
            Err(e) => error_response(e),
        })
    }
}

/// Services the shim serves besides the task API.
pub fn extra_services(service: Arc<TaskService>) -> HashMap<String, Service> {
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    methods.insert(
        "ReopenLog".into(),
        Box::new(ReopenLog(Arc::clone(&service))),
    );
    methods.insert(
        "SetExecTimeout".into(),
        Box::new(SetExecTimeout(Arc::clone(&service))),
    );
    methods.insert("Report".into(), Box::new(Report(service)));
    let mut map = HashMap::new();
    map.insert(
        SHIM_SERVICE.to_owned(),
        Service {
            methods,
            streams: HashMap::new(),
        },
    );
    map
}

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

    async fn raw<Req: Message, Resp: Message>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        timeout_ns: i64,
    ) -> ttrpc::Result<Resp> {
        let payload = req
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(format!("encoding: {e}")))?;
        let mut creq = ttrpc::Request::init_request(
            service.to_owned(),
            method.to_owned(),
            timeout_ns,
            Vec::new(),
        );
        creq.set_payload(payload);
        let res = self.client.request(creq).await?;
        Resp::parse_from_bytes(&res.payload)
            .map_err(|e| ttrpc::Error::Others(format!("decoding: {e}")))
    }

    /// Calls a task method (timeout in ns; 0 for none).
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

    async fn raw_json<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        let payload =
            serde_json::to_vec(req).map_err(|e| ttrpc::Error::Others(format!("encoding: {e}")))?;
        let mut creq = ttrpc::Request::init_request(
            SHIM_SERVICE.to_owned(),
            method.to_owned(),
            10_000_000_000,
            Vec::new(),
        );
        creq.set_payload(payload);
        let res = self.client.request(creq).await?;
        serde_json::from_slice(&res.payload)
            .map_err(|e| ttrpc::Error::Others(format!("decoding: {e}")))
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
        self.raw_json::<_, serde_json::Value>("SetExecTimeout", &req)
            .await
            .map(drop)
    }

    /// A process's status, exit, and whether an OOM or a time limit ended it.
    pub async fn report(&self, id: &str, exec_id: &str) -> ttrpc::Result<ProcessReport> {
        let req = ProcessRef {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            timeout_ms: None,
        };
        self.raw_json("Report", &req).await
    }

    pub async fn reopen_log(&self, id: &str) -> ttrpc::Result<()> {
        let mut req = api::StateRequest::new();
        req.id = id.to_owned();
        self.raw::<_, Empty>(SHIM_SERVICE, "ReopenLog", &req, 10_000_000_000)
            .await
            .map(drop)
    }
}
