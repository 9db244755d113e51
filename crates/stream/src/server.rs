//! The HTTP side: single-use URLs, routing and the protocol upgrade.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full as FullBody;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::backend::{AttachRequest, Backend, ExecRequest, PortForwardRequest};
use crate::idle::IdleTimeout;
use crate::relay::BusyPoll;
use crate::token::{Full, TokenCache};
use crate::{spdy, websocket, Operation};

/// How long a URL stays valid, and how many may wait (the kubelet's own
/// streaming server uses the same bounds).
const TOKEN_TTL: Duration = Duration::from_secs(60);
const MAX_IN_FLIGHT: usize = 1000;

/// Where the server listens, and how long it waits for its clients.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind; port 0 picks a free one.
    pub address: SocketAddr,
    /// PEM certificate chain and private key: serve https.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// How long the streaming thread keeps polling its sockets after data
    /// moved before it sleeps (zero: it sleeps at once); see `relay`.
    pub busy_poll: Duration,
    /// An upgraded connection with no byte either way for this long is
    /// closed (None: never); see `idle`.
    pub idle_timeout: Option<Duration>,
    /// How long a client has, after the upgrade, to open the streams it
    /// asked for: an exec's channels, a port-forward's second stream of a
    /// pair.
    pub stream_creation_timeout: Duration,
    /// How long a new connection has to finish its TLS handshake and send
    /// its request's head.
    pub request_timeout: Duration,
}

impl Default for Config {
    /// Loopback on a free port, no TLS, no busy polling, and the kubelet's
    /// streaming server's timeouts: 4 hours idle, 30 s to create streams,
    /// 30 s for a request's head.
    fn default() -> Self {
        Config {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            busy_poll: Duration::ZERO,
            idle_timeout: Some(Duration::from_secs(4 * 3600)),
            stream_creation_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// TCP keep-alive on accepted connections, as Go's servers (containerd's)
/// set it: a peer that vanished without closing is found within minutes,
/// long before any idle timeout.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_PROBES: u32 = 9;

fn set_keepalive(conn: &tokio::net::TcpStream) -> rustix::io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(conn, true)?;
    sockopt::set_tcp_keepidle(conn, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(conn, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(conn, KEEPALIVE_PROBES)
}

/// A TLS acceptor from PEM files; the error names the file at fault.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {e}", what.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, &e))?;
    if certs.is_empty() {
        return Err(invalid(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(cert, &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| invalid(key, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves one connection (plain or TLS) until its upgrade. A streaming
/// request has no body: the client has `request_timeout` to send it (and
/// any request before it that is refused), then the connection is closed.
async fn serve_connection<S>(server: Arc<Server>, io: S, request_timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let server = Arc::clone(&server);
        async move { Ok::<_, std::convert::Infallible>(server.handle(req)) }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if tokio::time::timeout(request_timeout, serving)
        .await
        .is_err()
    {
        tracing::debug!("streaming connection: no upgrade within {request_timeout:?}");
    }
}

/// Accepts connections until the server is dropped.
async fn accept_loop(
    listener: std::net::TcpListener,
    server: std::sync::Weak<Server>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    request_timeout: Duration,
    mut dropped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!("the streaming server's listener cannot be registered");
        return;
    };
    loop {
        let conn = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => conn,
                Err(_) => continue,
            },
            _ = &mut dropped => return,
        };
        // Frames are small and answer each other (SYN_STREAM, its
        // reply): Nagle would hold one back for the peer's delayed
        // ACK, 40 ms. Go's servers (containerd's) set it too.
        let _ = conn.set_nodelay(true);
        if let Err(e) = set_keepalive(&conn) {
            tracing::debug!("streaming connection: TCP keep-alive: {e}");
        }
        let Some(server) = server.upgrade() else {
            return;
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(request_timeout, acceptor.accept(conn)).await {
                        Ok(Ok(stream)) => serve_connection(server, stream, request_timeout).await,
                        Ok(Err(e)) => tracing::debug!("streaming TLS handshake: {e}"),
                        Err(_) => tracing::debug!(
                            "streaming TLS handshake: not done within {request_timeout:?}"
                        ),
                    }
                }
                None => serve_connection(server, conn, request_timeout).await,
            }
        });
    }
}

pub struct Server {
    pending: TokenCache<Operation>,
    base_url: String,
    backend: Arc<dyn Backend>,
    idle_timeout: Option<Duration>,
    stream_creation_timeout: Duration,
    /// The streaming thread's polling, told when a client is handed a URL
    /// (None: the thread does not busy-poll).
    busy_poll: Option<Arc<BusyPoll>>,
    /// Dropped with the server: the accept loop and its thread end.
    _accepting: tokio::sync::oneshot::Sender<()>,
}

type Body = FullBody<Bytes>;

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(FullBody::new(Bytes::from(text.into())));
    *r.status_mut() = status;
    r
}

impl Server {
    /// Binds and starts serving; the server lives as long as the
    /// returned handle's clones.
    pub async fn start(config: Config, backend: Arc<dyn Backend>) -> std::io::Result<Arc<Server>> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = std::net::TcpListener::bind(config.address)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (accepting, dropped) = tokio::sync::oneshot::channel();
        let busy_poll = BusyPoll::new(config.busy_poll);
        let server = Arc::new(Server {
            pending: TokenCache::new(TOKEN_TTL, MAX_IN_FLIGHT),
            base_url: format!("{scheme}://{local}"),
            backend,
            idle_timeout: config.idle_timeout,
            stream_creation_timeout: config.stream_creation_timeout,
            busy_poll: busy_poll.clone(),
            _accepting: accepting,
        });
        let weak = Arc::downgrade(&server);
        // A thread and a single-threaded runtime of their own: a connection's
        // tasks (HTTP, SPDY reader and writer, the relay to the pod) hand
        // each other every frame, and on a multi-threaded runtime each
        // socket wake-up may land on another worker (a futex wake and a
        // cache miss per hop, tens of microseconds of a round trip).
        let request_timeout = config.request_timeout;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("berth-stream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let accepting = accept_loop(listener, weak, tls, request_timeout, dropped);
                    match busy_poll {
                        Some(busy_poll) => {
                            busy_poll.on_this_thread();
                            tokio::select! {
                                () = accepting => {}
                                () = busy_poll.run() => {}
                            }
                        }
                        None => accepting.await,
                    }
                })
            })?;
        tracing::info!(url = %server.base_url, "streaming server listening");
        Ok(server)
    }

    /// `http://host:port` of the server.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn exec_url(&self, req: ExecRequest) -> Result<String, Full> {
        self.url("exec", Operation::Exec(req))
    }

    pub fn attach_url(&self, req: AttachRequest) -> Result<String, Full> {
        self.url("attach", Operation::Attach(req))
    }

    pub fn port_forward_url(&self, req: PortForwardRequest) -> Result<String, Full> {
        self.url("portforward", Operation::PortForward(req))
    }

    fn url(&self, kind: &str, op: Operation) -> Result<String, Full> {
        let token = self.pending.insert(op)?;
        if let Some(busy_poll) = &self.busy_poll {
            busy_poll.client_expected();
        }
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        // The client's next step (its streams, after the 101) follows at once.
        crate::relay::client_came();
        let path = req.uri().path().to_owned();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !matches!(kind, "exec" | "attach" | "portforward") {
            return plain(StatusCode::NOT_FOUND, "not found");
        }
        let Some(op) = self.pending.take(token) else {
            return plain(
                StatusCode::NOT_FOUND,
                "unknown, used or expired streaming token",
            );
        };
        let matches_kind = matches!(
            (&op, kind),
            (Operation::Exec(_), "exec")
                | (Operation::Attach(_), "attach")
                | (Operation::PortForward(_), "portforward")
        );
        if !matches_kind {
            return plain(StatusCode::NOT_FOUND, "the token is for another operation");
        }
        let upgrade = header(&req, UPGRADE.as_str()).to_ascii_lowercase();
        if upgrade.split(',').any(|u| u.trim() == "websocket") {
            return self.websocket(req, op);
        }
        if upgrade.split(',').any(|u| u.trim() == "spdy/3.1") {
            return self.spdy(req, op);
        }
        plain(
            StatusCode::BAD_REQUEST,
            "an upgrade to SPDY/3.1 or WebSocket is required",
        )
    }

    fn spdy(&self, req: Request<Incoming>, op: Operation) -> Response<Body> {
        let supported = match op {
            Operation::PortForward(_) => spdy::PORTFORWARD_PROTOCOLS,
            _ => spdy::REMOTECOMMAND_PROTOCOLS,
        };
        let offered = header(&req, "x-stream-protocol-version");
        let offered: Vec<&str> = offered
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let Some(protocol) = offered
            .iter()
            .find(|p| supported.contains(p))
            .map(|p| p.to_string())
        else {
            return plain(
                StatusCode::FORBIDDEN,
                format!(
                    "none of the offered stream protocols {offered:?} is supported (supported: {})",
                    supported.join(", ")
                ),
            );
        };
        let backend = Arc::clone(&self.backend);
        let chosen = protocol.clone();
        let creation = self.stream_creation_timeout;
        let upgrading = upgraded(req, self.idle_timeout, "SPDY");
        tokio::spawn(async move {
            let Some(io) = upgrading.await else { return };
            match op {
                Operation::PortForward(req) => spdy::portforward(io, req, creation, backend).await,
                op => spdy::remotecommand(io, &chosen, op, creation, backend).await,
            }
        });
        let mut r = plain(StatusCode::SWITCHING_PROTOCOLS, "");
        let h = r.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        if let Ok(v) = HeaderValue::from_str(&protocol) {
            h.insert("x-stream-protocol-version", v);
        }
        r
    }

    fn websocket(&self, req: Request<Incoming>, op: Operation) -> Response<Body> {
        let key = header(&req, "sec-websocket-key");
        if key.is_empty() {
            return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
        }
        let supported = match op {
            Operation::PortForward(_) => websocket::PORTFORWARD_PROTOCOLS,
            _ => websocket::REMOTECOMMAND_PROTOCOLS,
        };
        let offered = header(&req, "sec-websocket-protocol");
        let offered: Vec<&str> = offered
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let protocol = match offered.iter().find(|p| supported.contains(p)) {
            Some(p) => p.to_string(),
            None if offered.is_empty() => String::new(),
            None => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "none of the offered protocols {offered:?} is supported (supported: {})",
                        supported.join(", ")
                    ),
                )
            }
        };
        let ports = match &op {
            Operation::PortForward(pf) => {
                match forwarded_ports(req.uri().query().unwrap_or(""), &pf.ports) {
                    Ok(ports) => ports,
                    Err(e) => return plain(StatusCode::BAD_REQUEST, e),
                }
            }
            _ => Vec::new(),
        };
        let accept = derive_accept_key(key.as_bytes());
        let backend = Arc::clone(&self.backend);
        let chosen = protocol.clone();
        let upgrading = upgraded(req, self.idle_timeout, "websocket");
        tokio::spawn(async move {
            let Some(io) = upgrading.await else { return };
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            match op {
                Operation::PortForward(req) => {
                    websocket::portforward(ws, &chosen, req, ports, backend).await
                }
                op => websocket::remotecommand(ws, &chosen, op, backend).await,
            }
        });
        let mut r = plain(StatusCode::SWITCHING_PROTOCOLS, "");
        let h = r.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        if !protocol.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&protocol) {
                h.insert("sec-websocket-protocol", v);
            }
        }
        r
    }
}

/// The connection once the 101 has gone out, under the idle timeout;
/// None (logged) if the upgrade failed.
async fn upgraded(
    req: Request<Incoming>,
    idle_timeout: Option<Duration>,
    protocol: &'static str,
) -> Option<IdleTimeout<TokioIo<hyper::upgrade::Upgraded>>> {
    match hyper::upgrade::on(req).await {
        Ok(u) => Some(IdleTimeout::new(TokioIo::new(u), idle_timeout)),
        Err(e) => {
            tracing::debug!("{protocol} upgrade: {e}");
            None
        }
    }
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// The ports of a WebSocket port-forward, a data and an error channel
/// each: those of the URL's query (`port=N`, repeated or comma-separated,
/// as the kubelet reads them) or else those of the PortForward request. A
/// kubelet puts the ports of its own request into the PortForward request
/// and proxies the client's upgrade to the URL without its query, so a
/// server that read only the query would refuse every such port-forward;
/// containerd's reads only the request.
fn forwarded_ports(query: &str, requested: &[u16]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (_, value) in query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "port")
    {
        for v in value.split(',') {
            let port = v
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port {v:?} in the query"))?;
            ports.push(port);
        }
    }
    if ports.is_empty() {
        ports = requested.to_vec();
    }
    if ports.is_empty() {
        return Err(
            "no port to forward: neither the PortForward request nor the URL (?port=N) names one"
                .into(),
        );
    }
    // Two channels per port, numbered by one byte.
    if ports.len() > MAX_WEBSOCKET_PORTS {
        return Err(format!(
            "{} ports; a WebSocket port-forward carries at most {MAX_WEBSOCKET_PORTS}",
            ports.len()
        ));
    }
    Ok(ports)
}

const MAX_WEBSOCKET_PORTS: usize = 128;

#[cfg(test)]
mod tests {
    use super::forwarded_ports;

    #[test]
    fn ports_from_the_query_or_else_from_the_request() {
        assert_eq!(
            forwarded_ports("port=80&port=8080", &[]),
            Ok(vec![80, 8080])
        );
        assert_eq!(
            forwarded_ports("port=80,8080&port=9", &[]),
            Ok(vec![80, 8080, 9])
        );
        // A kubelet's proxy drops the client's query: the request's ports.
        assert_eq!(forwarded_ports("", &[8080, 9090]), Ok(vec![8080, 9090]));
        assert_eq!(forwarded_ports("ports=1", &[7]), Ok(vec![7]));
        assert_eq!(forwarded_ports("port=80", &[80, 81]), Ok(vec![80]));
        let none = forwarded_ports("", &[]).unwrap_err();
        assert!(none.contains("no port"), "{none}");
        for bad in ["port=0", "port=99999", "port=80,", "port=x"] {
            let e = forwarded_ports(bad, &[]).unwrap_err();
            assert!(e.contains("invalid port"), "{bad}: {e}");
        }
        let many: Vec<u16> = (1..=129).collect();
        assert!(forwarded_ports("", &many)
            .unwrap_err()
            .contains("at most 128"));
        assert_eq!(forwarded_ports("", &many[..128]).map(|p| p.len()), Ok(128));
    }
}
