//! Connections to a CRI runtime: the endpoint grammar crictl accepts, a
//! unix-socket connector for tonic, per-call timeouts, debug tracing of
//! requests and responses, and gRPC errors printed the way Go prints them.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_api::v1::images_client::ImagesClient;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where a CRI server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    /// `tcp://host:port`, spoken as plain-text HTTP/2.
    Tcp(String),
}

/// Parses an endpoint as crictl does: `unix:///path`, a bare absolute path
/// (taken as a unix socket), or `tcp://host:port`.
pub fn parse_endpoint(endpoint: &str) -> Result<Address> {
    if let Some(rest) = endpoint.strip_prefix("unix://") {
        if rest.is_empty() {
            bail!("endpoint {endpoint:?} names no socket");
        }
        return Ok(Address::Unix(PathBuf::from(rest)));
    }
    if let Some(rest) = endpoint.strip_prefix("unix:") {
        if !rest.is_empty() {
            return Ok(Address::Unix(PathBuf::from(rest)));
        }
    }
    if let Some(rest) = endpoint.strip_prefix("tcp://") {
        if rest.is_empty() {
            bail!("endpoint {endpoint:?} names no address");
        }
        return Ok(Address::Tcp(rest.to_owned()));
    }
    if endpoint.starts_with('/') {
        return Ok(Address::Unix(PathBuf::from(endpoint)));
    }
    bail!(
        "protocol not supported in endpoint {endpoint:?}: use unix:///path/to/socket or tcp://host:port"
    )
}

/// Opens a channel to `endpoint`, waiting at most `timeout` for it.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel> {
    let address = parse_endpoint(endpoint)?;
    let what = || format!("connect to endpoint {endpoint:?}");
    let channel = match address {
        Address::Unix(path) => {
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                            std::io::Error::new(
                                e.kind(),
                                format!("dial unix {}: {e}", path.display()),
                            )
                        })?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        }
        Address::Tcp(hostport) => {
            Endpoint::from_shared(format!("http://{hostport}"))
                .with_context(what)?
                .connect_timeout(timeout)
                .connect()
                .await
        }
    };
    channel
        .map_err(|e| anyhow::Error::new(ErrorChain(Box::new(e))))
        .with_context(what)
}

/// A transport error shown with its causes (tonic's own Display is only
/// "transport error").
#[derive(Debug)]
struct ErrorChain(Box<dyn std::error::Error + Send + Sync>);

impl fmt::Display for ErrorChain {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // The innermost cause says what happened ("dial unix ...: No such
        // file or directory"); the outer ones only say "transport error".
        let mut last: &dyn std::error::Error = &*self.0;
        while let Some(next) = last.source() {
            last = next;
        }
        write!(f, "{last}")
    }
}

impl std::error::Error for ErrorChain {}

/// A gRPC error, printed as Go's status package does:
/// `rpc error: code = NotFound desc = ...`.
#[derive(Debug)]
pub struct RpcError(pub tonic::Status);

impl RpcError {
    pub fn code(&self) -> tonic::Code {
        self.0.code()
    }
}

/// Go's names of the gRPC codes.
pub fn code_name(code: tonic::Code) -> &'static str {
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

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "rpc error: code = {} desc = {}",
            code_name(self.0.code()),
            self.0.message()
        )
    }
}

impl std::error::Error for RpcError {}

/// Prints a debug line to stderr, logrus style.
pub fn debug_line(msg: impl fmt::Display) {
    eprintln!("DEBU[0000] {msg}");
}

/// The connections of one berthctl run, opened on first use.
pub struct Clients {
    pub runtime_endpoint: String,
    pub image_endpoint: String,
    /// Connection timeout and the default deadline of each call.
    pub timeout: Duration,
    pub debug: bool,
    runtime: Option<RuntimeServiceClient<Channel>>,
    /// The image endpoint's connection: CRI's ImageService and berth's own
    /// Images service are both spoken over it.
    image_channel: Option<Channel>,
}

/// Messages of any size the server sends (images lists can be large).
const MAX_MESSAGE: usize = 64 << 20;

impl Clients {
    pub fn new(
        runtime_endpoint: String,
        image_endpoint: Option<String>,
        timeout: Duration,
        debug: bool,
    ) -> Clients {
        let image_endpoint = image_endpoint
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| runtime_endpoint.clone());
        Clients {
            runtime_endpoint,
            image_endpoint,
            timeout,
            debug,
            runtime: None,
            image_channel: None,
        }
    }

    pub async fn runtime(&mut self) -> Result<RuntimeServiceClient<Channel>> {
        if self.runtime.is_none() {
            if self.debug {
                debug_line(format!(
                    "connecting to runtime endpoint {}",
                    self.runtime_endpoint
                ));
            }
            let channel = connect(&self.runtime_endpoint, self.timeout).await?;
            self.runtime = Some(
                RuntimeServiceClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            );
        }
        Ok(self.runtime.clone().expect("just connected"))
    }

    async fn image_channel(&mut self) -> Result<Channel> {
        if self.image_channel.is_none() {
            if self.debug {
                debug_line(format!(
                    "connecting to image endpoint {}",
                    self.image_endpoint
                ));
            }
            self.image_channel = Some(connect(&self.image_endpoint, self.timeout).await?);
        }
        Ok(self.image_channel.clone().expect("just connected"))
    }

    pub async fn image(&mut self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.image_channel().await?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// berth's pull progress service on the image endpoint (only berthd
    /// serves it; calls to other runtimes answer Unimplemented).
    pub async fn pull_progress(&mut self) -> Result<ImagesClient<Channel>> {
        Ok(ImagesClient::new(self.image_channel().await?))
    }

    /// One unary call named `name` with deadline `timeout` (None: no
    /// deadline), traced with `--debug`.
    pub async fn call<Req, Resp, Fut>(
        &self,
        name: &str,
        timeout: Option<Duration>,
        req: Req,
        f: impl FnOnce(tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, RpcError>
    where
        Req: fmt::Debug,
        Resp: fmt::Debug,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        if self.debug {
            debug_line(format!("{name}Request: {req:?}"));
        }
        let mut request = tonic::Request::new(req);
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, f(request)).await {
                Ok(r) => r,
                Err(_) => Err(tonic::Status::deadline_exceeded(
                    "context deadline exceeded",
                )),
            },
            None => f(request).await,
        };
        let result = result.map(tonic::Response::into_inner).map_err(RpcError);
        if self.debug {
            match &result {
                Ok(resp) => debug_line(format!("{name}Response: {resp:?}")),
                Err(e) => debug_line(format!("{name}Response: {e}")),
            }
        }
        result
    }

    /// The default deadline of a call.
    pub fn deadline(&self) -> Option<Duration> {
        Some(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///run/berth/berth.sock").unwrap(),
            Address::Unix("/run/berth/berth.sock".into())
        );
        assert_eq!(
            parse_endpoint("/run/containerd/containerd.sock").unwrap(),
            Address::Unix("/run/containerd/containerd.sock".into())
        );
        assert_eq!(
            parse_endpoint("unix:/tmp/x.sock").unwrap(),
            Address::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:1234").unwrap(),
            Address::Tcp("127.0.0.1:1234".into())
        );
        assert!(parse_endpoint("npipe:////./pipe/x").is_err());
        assert!(parse_endpoint("unix://").is_err());
        assert!(parse_endpoint("relative.sock").is_err());
    }

    #[test]
    fn rpc_errors_print_like_go() {
        let e = RpcError(tonic::Status::not_found("container \"x\" not found"));
        assert_eq!(
            e.to_string(),
            "rpc error: code = NotFound desc = container \"x\" not found"
        );
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
    }

    #[test]
    fn connecting_to_a_missing_socket_says_why() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(connect(
                "unix:///nonexistent/berthctl-test.sock",
                Duration::from_secs(2),
            ))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("/nonexistent/berthctl-test.sock") && msg.contains("No such file"),
            "{msg}"
        );
    }
}
