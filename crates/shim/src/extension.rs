//! The shim's own service `berth.shim.v1.Shim`
//! (crates/api/proto/berth/shim/v1/shim.proto), served over ttrpc beside
//! the task API: log reopening for rotation, exec time limits, reports
//! of how a process ended, and attach sessions. Payloads are the prost messages of
//! `berth_api::shim::v1`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_api::shim::v1 as proto;
use prost::Message;
use ttrpc::proto::ResponseInit;
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

use crate::error::ShimError;
use crate::task::Service as TaskService;

/// What a method does with its request's payload: the reply's payload.
type Call = fn(&TaskService, &[u8]) -> Result<Vec<u8>, ShimError>;

/// One method of the service, as the ttrpc server runs it.
struct Method {
    service: Arc<TaskService>,
    call: Call,
}

#[async_trait]
impl MethodHandler for Method {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        Ok(match (self.call)(&self.service, &req.payload) {
            Ok(payload) => {
                let ok = ttrpc::get_status(ttrpc::Code::OK, String::new());
                let mut res = ttrpc::Response::init_status(ok);
                res.set_payload(payload);
                res
            }
            Err(e) => ttrpc::Response::init_status(e.to_status()),
        })
    }
}

fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, ShimError> {
    M::decode(payload).map_err(|e| ShimError::InvalidArgument(format!("decoding the request: {e}")))
}

/// An empty reply (google.protobuf.Empty).
fn empty() -> Vec<u8> {
    Vec::new()
}

fn reopen_log(svc: &TaskService, payload: &[u8]) -> Result<Vec<u8>, ShimError> {
    let r: proto::ProcessRef = decode(payload)?;
    svc.reopen_logs(&r.id)?;
    Ok(empty())
}

fn set_exec_timeout(svc: &TaskService, payload: &[u8]) -> Result<Vec<u8>, ShimError> {
    let r: proto::ProcessRef = decode(payload)?;
    let ms = r.timeout_ms.filter(|ms| *ms > 0).ok_or_else(|| {
        ShimError::InvalidArgument(
            "decoding the request: timeout_ms must be a positive number".into(),
        )
    })?;
    svc.set_exec_timeout(&r.id, &r.exec_id, Duration::from_millis(ms))?;
    Ok(empty())
}

fn report(svc: &TaskService, payload: &[u8]) -> Result<Vec<u8>, ShimError> {
    let r: proto::ProcessRef = decode(payload)?;
    Ok(svc.report(&r.id, &r.exec_id)?.encode_to_vec())
}

fn attach(svc: &TaskService, payload: &[u8]) -> Result<Vec<u8>, ShimError> {
    svc.attach(&decode(payload)?)?;
    Ok(empty())
}

fn detach(svc: &TaskService, payload: &[u8]) -> Result<Vec<u8>, ShimError> {
    svc.detach(&decode(payload)?)?;
    Ok(empty())
}

/// Services the shim serves besides the task API.
pub fn extra_services(service: Arc<TaskService>) -> HashMap<String, Service> {
    let calls: [(&str, Call); 5] = [
        (proto::REOPEN_LOG, reopen_log),
        (proto::SET_EXEC_TIMEOUT, set_exec_timeout),
        (proto::REPORT, report),
        (proto::ATTACH, attach),
        (proto::DETACH, detach),
    ];
    let methods = calls
        .into_iter()
        .map(|(name, call)| {
            let method = Method {
                service: Arc::clone(&service),
                call,
            };
            let method: Box<dyn MethodHandler + Send + Sync> = Box::new(method);
            (name.to_owned(), method)
        })
        .collect();
    HashMap::from([(
        proto::SERVICE.to_owned(),
        Service {
            methods,
            streams: HashMap::new(),
        },
    )])
}
