//! berthd's own metrics, in Prometheus text format on `[metrics] address`
//! (`GET /metrics`; no listener without it):
//!
//! - `grpc_server_started_total`, `grpc_server_handled_total` (by
//!   `grpc_code`) and `grpc_server_handling_seconds` for every CRI and
//!   berth RPC, under go-grpc-prometheus' names and labels (what
//!   containerd serves), counted by one tower layer around the services;
//! - `berthd_pod_sandboxes` and `berthd_containers` by state, read from
//!   the records at each scrape;
//! - `berthd_image_pull_bytes_total`: bytes received from registries.
//!
//! A handler's code is the `grpc-status` of its response headers, where
//! tonic puts a failed call's status; a stream that fails after its first
//! message counts as OK, and its latency is the time to its first headers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::config::MetricsConfig;
use crate::error::{Error, Result};
use crate::service::Cri;
use crate::store::{ContainerState, PodState};

/// Latency buckets, seconds: from a status call to a slow pull.
const BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rpc {
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcResult {
    grpc_service: String,
    grpc_method: String,
    grpc_code: String,
}

impl Rpc {
    fn unknown() -> Rpc {
        Rpc {
            grpc_service: "unknown".into(),
            grpc_method: "unknown".into(),
        }
    }

    /// From a gRPC path, `/runtime.v1.RuntimeService/ListContainers`;
    /// None for anything else (counted as `unknown`: no label made of
    /// arbitrary text).
    fn of(path: &str) -> Option<Rpc> {
        let name = |s: &str| {
            (!s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_'))
            .then(|| s.to_owned())
        };
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        Some(Rpc {
            grpc_service: name(service)?,
            grpc_method: name(method)?,
        })
    }
}

/// Distinct RPCs labelled by name; calls to any further path count as
/// `unknown` (CRI and berth's API have about 60 methods: only a client
/// making up method names gets there, and it must not grow the families
/// without bound).
const MAX_RPCS: usize = 256;

/// One RPC's series, looked up once per gRPC path: a call then counts
/// without building label sets or hashing them into the families (it did
/// both, with five small allocations, on every call).
struct RpcMetrics {
    rpc: Rpc,
    started: Counter,
    handling: Histogram,
    handled_ok: Counter,
}

/// gRPC code names as grpc-go spells them (go-grpc-prometheus' labels).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The status of a response: its `grpc-status` header (a failed call's,
/// trailers-only), else OK.
fn response_code(headers: &tonic::codegen::http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// The registry and the RPC metrics the layer updates.
pub struct Metrics {
    registry: Registry,
    started: Family<Rpc, Counter>,
    handled: Family<RpcResult, Counter>,
    handling: Family<Rpc, Histogram>,
    by_path: RwLock<HashMap<Box<str>, Arc<RpcMetrics>>>,
    /// Made on first use: no `unknown` series until a call needs one.
    unknown: OnceLock<Arc<RpcMetrics>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The registry; pod, container and pull metrics come from `cri` while
    /// it lives.
    pub fn new(cri: Weak<Cri>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let started = Family::<Rpc, Counter>::default();
        let handled = Family::<RpcResult, Counter>::default();
        let handling = Family::<Rpc, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            handled.clone(),
        );
        registry.register_with_unit(
            "grpc_server_handling",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            Unit::Seconds,
            handling.clone(),
        );
        registry.register_collector(Box::new(RecordsCollector { cri }));
        Arc::new(Metrics {
            registry,
            started,
            handled,
            handling,
            by_path: RwLock::new(HashMap::new()),
            unknown: OnceLock::new(),
        })
    }

    /// The exposition text of every metric.
    pub fn encode(&self) -> std::result::Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The series of the RPC at gRPC `path`.
    fn rpc(&self, path: &str) -> Arc<RpcMetrics> {
        let by_path = self.by_path.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = by_path.get(path) {
            return Arc::clone(m);
        }
        drop(by_path);
        let Some(rpc) = Rpc::of(path) else {
            return self.unknown();
        };
        let mut by_path = self.by_path.write().unwrap_or_else(PoisonError::into_inner);
        if by_path.len() >= MAX_RPCS && !by_path.contains_key(path) {
            return self.unknown();
        }
        let m = by_path
            .entry(path.into())
            .or_insert_with(|| Arc::new(self.series(rpc)));
        Arc::clone(m)
    }

    fn unknown(&self) -> Arc<RpcMetrics> {
        Arc::clone(
            self.unknown
                .get_or_init(|| Arc::new(self.series(Rpc::unknown()))),
        )
    }

    /// `rpc`'s series in the families (each metric is a handle on the one
    /// the family holds).
    fn series(&self, rpc: Rpc) -> RpcMetrics {
        let handled_ok = self
            .handled
            .get_or_create(&RpcResult {
                grpc_service: rpc.grpc_service.clone(),
                grpc_method: rpc.grpc_method.clone(),
                grpc_code: code_name(tonic::Code::Ok).to_owned(),
            })
            .clone();
        RpcMetrics {
            started: self.started.get_or_create(&rpc).clone(),
            handling: self.handling.get_or_create(&rpc).clone(),
            handled_ok,
            rpc,
        }
    }

    fn finish(&self, rpc: &RpcMetrics, code: tonic::Code, seconds: f64) {
        rpc.handling.observe(seconds);
        if code == tonic::Code::Ok {
            rpc.handled_ok.inc();
            return;
        }
        self.handled
            .get_or_create(&RpcResult {
                grpc_service: rpc.rpc.grpc_service.clone(),
                grpc_method: rpc.rpc.grpc_method.clone(),
                grpc_code: code_name(code).to_owned(),
            })
            .inc();
    }
}

/// What the records say at scrape time: pods and containers by state, and
/// the image store's downloaded bytes.
struct RecordsCollector {
    cri: Weak<Cri>,
}

impl std::fmt::Debug for RecordsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsCollector").finish_non_exhaustive()
    }
}

impl Collector for RecordsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let Some(cri) = self.cri.upgrade() else {
            return Ok(());
        };
        let mut pods = [("ready", 0i64), ("notready", 0)];
        for p in cri.store.pods() {
            let i = usize::from(p.state != PodState::Ready);
            pods[i].1 += 1;
        }
        let mut containers = [
            ("created", 0i64),
            ("running", 0),
            ("exited", 0),
            ("unknown", 0),
        ];
        for c in cri.store.containers() {
            let i = match c.state {
                ContainerState::Created => 0,
                ContainerState::Running => 1,
                ContainerState::Exited => 2,
                ContainerState::Unknown => 3,
            };
            containers[i].1 += 1;
        }
        for (name, help, counts) in [
            (
                "berthd_pod_sandboxes",
                "Pod sandboxes berthd knows, by state",
                &pods[..],
            ),
            (
                "berthd_containers",
                "Containers berthd knows, by state",
                &containers[..],
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (state, n) in counts {
                let labels = [("state", *state)];
                ConstGauge::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        let pulled = ConstCounter::new(cri.images.downloaded_bytes());
        pulled.encode(encoder.encode_descriptor(
            "berthd_image_pull",
            "Bytes of image blobs received from registries",
            Some(&Unit::Bytes),
            pulled.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Counts every request of the services it wraps.
#[derive(Clone)]
pub struct GrpcMetricsLayer(Arc<Metrics>);

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> GrpcMetricsLayer {
        GrpcMetricsLayer(metrics)
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type Http<B> = tonic::codegen::http::Request<B>;
type HttpResponse<B> = tonic::codegen::http::Response<B>;

impl<S, B, R> tower::Service<Http<B>> for GrpcMetricsService<S>
where
    S: tower::Service<Http<B>, Response = HttpResponse<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Http<B>) -> Self::Future {
        let rpc = self.metrics.rpc(req.uri().path());
        rpc.started.inc();
        let began = Instant::now();
        let response = self.inner.call(req);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let r = response.await;
            let code = match &r {
                Ok(resp) => response_code(resp.headers()),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.finish(&rpc, code, began.elapsed().as_secs_f64());
            r
        })
    }
}

/// The HTTP listener; it stops when dropped.
pub struct Endpoint {
    task: tokio::task::JoinHandle<()>,
    address: SocketAddr,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    /// Binds `[metrics] address` and serves `/metrics`; None when unset.
    pub async fn start(config: &MetricsConfig, metrics: Arc<Metrics>) -> Result<Option<Endpoint>> {
        let Some(address) = config.socket_addr()? else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| Error::Config(format!("metrics.address {address}: {e}")))?;
        let address = listener.local_addr().unwrap_or(address);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    // Out of descriptors, say: try again shortly.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let metrics = Arc::clone(&metrics);
                        async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        tracing::info!(%address, "serving metrics on /metrics");
        Ok(Some(Endpoint { task, address }))
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are on /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match metrics.encode() {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r
        }
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding metrics: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_labels_come_from_grpc_paths_only() {
        let r = Rpc::of("/runtime.v1.RuntimeService/ListContainers").unwrap();
        assert_eq!(r.grpc_service, "runtime.v1.RuntimeService");
        assert_eq!(r.grpc_method, "ListContainers");
        for bad in ["", "/", "/x", "/a/", "//b", "/a/b c", "/a/{x}"] {
            let r = Rpc::of(bad).unwrap_or_else(Rpc::unknown);
            assert_eq!(
                (r.grpc_service.as_str(), r.grpc_method.as_str()),
                ("unknown", "unknown"),
                "{bad}"
            );
        }
    }

    #[test]
    fn counts_requests_errors_and_latency_in_prometheus_text() {
        let m = Metrics::new(Weak::new());
        for code in [
            tonic::Code::Ok,
            tonic::Code::NotFound,
            tonic::Code::NotFound,
        ] {
            let rpc = m.rpc("/runtime.v1.RuntimeService/ContainerStatus");
            rpc.started.inc();
            m.finish(&rpc, code, 0.003);
        }
        let text = m.encode().unwrap();
        let labels = r#"grpc_service="runtime.v1.RuntimeService",grpc_method="ContainerStatus""#;
        for line in [
            "# HELP grpc_server_started_total Total number of RPCs started on the server."
                .to_owned(),
            "# TYPE grpc_server_started_total counter".to_owned(),
            format!("grpc_server_started_total{{{labels}}} 3"),
            format!(r#"grpc_server_handled_total{{{labels},grpc_code="NotFound"}} 2"#),
            format!(r#"grpc_server_handled_total{{{labels},grpc_code="OK"}} 1"#),
            "# TYPE grpc_server_handling_seconds histogram".to_owned(),
            format!(r#"grpc_server_handling_seconds_bucket{{{labels},le="0.005"}} 3"#),
            format!(r#"grpc_server_handling_seconds_bucket{{{labels},le="0.0025"}} 0"#),
            format!("grpc_server_handling_seconds_count{{{labels}}} 3"),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    /// Every call of an RPC counts in the same series; made-up paths past
    /// the bound count as `unknown`, and so do malformed ones.
    #[test]
    fn rpcs_share_their_series_and_made_up_ones_are_bounded() {
        let m = Metrics::new(Weak::new());
        let status = "/runtime.v1.RuntimeService/PodSandboxStatus";
        assert!(Arc::ptr_eq(&m.rpc(status), &m.rpc(status)));
        for i in 0..MAX_RPCS + 50 {
            m.rpc(&format!("/made.up/Method{i}")).started.inc();
        }
        m.rpc("/not a path").started.inc();
        assert_eq!(m.by_path.read().unwrap().len(), MAX_RPCS);
        m.rpc(status).started.inc();
        let text = m.encode().unwrap();
        let count = |labels: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("grpc_server_started_total{{{labels}}} ")))
                .map(|v| v.parse::<u64>().unwrap())
        };
        assert_eq!(
            count(r#"grpc_service="runtime.v1.RuntimeService",grpc_method="PodSandboxStatus""#),
            Some(1),
            "{text}"
        );
        // One labelled RPC was the status call's: 255 made-up ones fit.
        assert_eq!(
            count(r#"grpc_service="unknown",grpc_method="unknown""#),
            Some(50 + 1 + 1),
            "{text}"
        );
        assert!(text.contains(r#"grpc_method="Method254""#));
        assert!(!text.contains(r#"grpc_method="Method255""#));
    }

    #[test]
    fn codes_by_header_with_grpc_go_names() {
        let mut h = tonic::codegen::http::HeaderMap::new();
        assert_eq!(code_name(response_code(&h)), "OK");
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(code_name(response_code(&h)), "NotFound");
        h.insert("grpc-status", "1".parse().unwrap());
        assert_eq!(code_name(response_code(&h)), "Canceled");
    }
}
