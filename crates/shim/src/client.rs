//! The client side of the shim API (what berthd uses), and the shim's own
//! extra service `berth.shim.v1.Shim` (log reopening for rotation).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::Message;
use ttrpc::proto::{Codec, RequestInit, ResponseInit};
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

use crate::task::Service as TaskService;
use crate::{TASK_SERVICE_V2, TASK_SERVICE_V3};

pub const SHIM_SERVICE: &str = "berth.shim.v1.Shim";

struct ReopenLog(Arc<TaskService>);

#[async_trait]
impl MethodHandler for ReopenLog {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let r = <api::StateRequest as Codec>::decode(&req.payload)
            .map_err(|e| ttrpc::Error::Others(format!("decoding: {e}")))?;
        let res = match self.0.reopen_logs(&r.id) {
            Ok(()) => {
                let mut res =
                    ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::OK, String::new()));
                res.set_payload(Empty::new().write_to_bytes().unwrap_or_default());
                res
            }
            Err(ttrpc::Error::RpcStatus(s)) => ttrpc::Response::init_status(s),
            Err(e) => {
                ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::UNKNOWN, e.to_string()))
            }
        };
        Ok(res)
    }
}

/// Services the shim serves besides the task API.
pub fn extra_services(service: Arc<TaskService>) -> HashMap<String, Service> {
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    methods.insert("ReopenLog".into(), Box::new(ReopenLog(service)));
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

    pub async fn reopen_log(&self, id: &str) -> ttrpc::Result<()> {
        let mut req = api::StateRequest::new();
        req.id = id.to_owned();
        self.raw::<_, Empty>(SHIM_SERVICE, "ReopenLog", &req, 10_000_000_000)
            .await
            .map(drop)
    }
}
