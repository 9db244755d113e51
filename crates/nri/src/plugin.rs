//! One connected plugin: its multiplexed connection, the `Runtime` service
//! berthd serves it, the `Plugin` client berthd calls it with, and its
//! registration and configuration.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use ttrpc::r#async::transport::{Listener, Socket};

use crate::error::{NriError, Result};
use crate::mux::{Mux, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use crate::proto::nri as pb;
use crate::proto::nri_ttrpc as rpc;
use crate::types::ContainerUpdate;
use crate::Inner;

/// The events berthd relays (UNKNOWN + 1 ..= POST_UPDATE_POD_SANDBOX); a
/// plugin subscribing to nothing gets these.
pub(crate) const RELAYED_EVENTS: i32 = (1 << (pb::Event::POST_UPDATE_POD_SANDBOX as i32)) - 1;
/// Every event NRI defines (below LAST).
const VALID_EVENTS: i32 = (1 << (pb::Event::LAST as i32 - 1)) - 1;

/// The bit of `event` in a subscription mask.
pub(crate) fn event_bit(event: pb::Event) -> i32 {
    1 << (event as i32 - 1)
}

/// Checks a plugin name as containerd/nri does: not empty, `[a-zA-Z0-9_.+-]`.
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty plugin name".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.+".contains(*c)))
    {
        Some(c) => Err(format!("plugin name {name:?} has invalid character {c:?}")),
        None => Ok(()),
    }
}

/// Checks a plugin index: two decimal digits.
pub(crate) fn check_index(idx: &str) -> std::result::Result<(), String> {
    if idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("invalid plugin index {idx:?}, must be 2 digits"))
    }
}

/// A registered and configured plugin.
pub(crate) struct PluginConn {
    /// "<index>-<name>", as NRI names plugins.
    pub(crate) name: String,
    pub(crate) index: String,
    pub(crate) events: i32,
    pub(crate) client: rpc::PluginClient,
    timeout: Duration,
    mux: Mux,
    server: Mutex<Option<ttrpc::r#async::Server>>,
    closed: AtomicBool,
}

impl PluginConn {
    pub(crate) fn subscribed(&self, event: pb::Event) -> bool {
        self.events & event_bit(event) != 0
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.mux.is_closed()
    }

    /// Disconnects the plugin.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.mux.close();
        // Dropping the server ends its connection task.
        drop(self.server.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// A ttrpc context carrying the request timeout to the plugin.
    pub(crate) fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.timeout.as_nanos().min(i64::MAX as u128) as i64)
    }

    /// Runs one request to the plugin. An answer that is an error fails
    /// the request; a plugin that does not answer in time, or whose
    /// connection broke, is disconnected and skipped (`Ok(None)`), as
    /// containerd does.
    pub(crate) async fn call<T>(
        &self,
        request: &'static str,
        call: impl Future<Output = ttrpc::Result<T>>,
    ) -> Result<Option<T>> {
        let outcome = tokio::time::timeout(self.timeout, call).await;
        let err = match outcome {
            Ok(Ok(v)) => return Ok(Some(v)),
            Ok(Err(e)) => e,
            Err(_) => ttrpc::Error::Others("Request deadline elapsed".into()),
        };
        match &err {
            ttrpc::Error::RpcStatus(s) if s.code() != ttrpc::Code::DEADLINE_EXCEEDED => {
                Err(NriError::Plugin {
                    plugin: self.name.clone(),
                    request,
                    message: s.message().to_string(),
                })
            }
            _ => {
                tracing::warn!(
                    "nri: disconnecting plugin {}: {request} got no answer within {:?} ({err})",
                    self.name,
                    self.timeout
                );
                self.close();
                Ok(None)
            }
        }
    }
}

/// What the plugin sent in RegisterPlugin: (name, index) or why it is
/// refused.
type Registration = std::result::Result<(String, String), String>;

/// The `Runtime` service berthd serves one plugin.
struct RuntimeService {
    registered: Mutex<Option<oneshot::Sender<Registration>>>,
    name: Mutex<String>,
    nri: Weak<Inner>,
}

#[async_trait::async_trait]
impl rpc::Runtime for RuntimeService {
    async fn register_plugin(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pb::RegisterPluginRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let checked = check_name(&req.plugin_name).and_then(|()| check_index(&req.plugin_idx));
        let tx = self
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(tx) = tx else {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::FAILED_PRECONDITION,
                "plugin already registered",
            )));
        };
        match checked {
            Ok(()) => {
                *self.name.lock().unwrap_or_else(|e| e.into_inner()) =
                    format!("{}-{}", req.plugin_idx, req.plugin_name);
                let _ = tx.send(Ok((req.plugin_name, req.plugin_idx)));
                Ok(pb::Empty::new())
            }
            Err(why) => {
                let _ = tx.send(Err(why.clone()));
                Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    why,
                )))
            }
        }
    }

    async fn update_containers(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pb::UpdateContainersRequest,
    ) -> ttrpc::Result<pb::UpdateContainersResponse> {
        let name = self.name.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(nri) = self.nri.upgrade() else {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::UNAVAILABLE,
                "NRI is shutting down",
            )));
        };
        if !req.evict.is_empty() {
            tracing::warn!(
                "nri: plugin {name} asked to evict {} containers; berth does not evict",
                req.evict.len()
            );
        }
        let mut collected = crate::adjust::Collector::for_updates();
        collected.update(&name, &req.update).map_err(|e| {
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INVALID_ARGUMENT,
                e.to_string(),
            ))
        })?;
        tracing::info!(
            "nri: plugin {name} asked to update {} containers",
            req.update.len()
        );
        let failed = nri.domain.update_containers(collected.into_updates()).await;
        Ok(pb::UpdateContainersResponse {
            failed: failed.iter().map(pb::ContainerUpdate::from).collect(),
            ..Default::default()
        })
    }
}

/// Sets up a plugin's connection, waits for it to register and configures
/// it. It is not synchronized yet.
pub(crate) async fn connect(
    stream: tokio::net::UnixStream,
    nri: &Arc<Inner>,
) -> std::result::Result<PluginConn, String> {
    let cfg = &nri.config;
    let (mux, mut conns) = Mux::new(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
    let (Some(plugin_side), Some(runtime_side)) = (
        conns.remove(&PLUGIN_SERVICE_CONN),
        conns.remove(&RUNTIME_SERVICE_CONN),
    ) else {
        return Err("multiplexer lost a connection".into());
    };
    let client = rpc::PluginClient::new(ttrpc::r#async::Client::new(Socket::new(plugin_side)));

    let (tx, rx) = oneshot::channel();
    let service = Arc::new(RuntimeService {
        registered: Mutex::new(Some(tx)),
        name: Mutex::new("unregistered plugin".into()),
        nri: Arc::downgrade(nri),
    });
    let incoming =
        futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(runtime_side)));
    let mut server = ttrpc::r#async::Server::new()
        .register_service(rpc::create_runtime(service))
        .add_listener(Listener::new(incoming));
    server
        .start()
        .await
        .map_err(|e| format!("starting the Runtime service: {e}"))?;

    let registered = tokio::select! {
        r = tokio::time::timeout(cfg.plugin_registration_timeout, rx) => r,
        () = mux.closed() => return Err("connection closed before the plugin registered".into()),
    };
    let (base, index) = match registered {
        Err(_) => {
            return Err(format!(
                "no registration within {:?}",
                cfg.plugin_registration_timeout
            ))
        }
        Ok(Err(_)) => return Err("registration lost".into()),
        Ok(Ok(Err(why))) => {
            // Let the refusal reach the plugin before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), mux.closed()).await;
            return Err(format!("registration refused: {why}"));
        }
        Ok(Ok(Ok(reg))) => reg,
    };
    let mut plugin = PluginConn {
        name: format!("{index}-{base}"),
        index,
        events: 0,
        client,
        timeout: cfg.plugin_request_timeout,
        mux,
        server: Mutex::new(Some(server)),
        closed: AtomicBool::new(false),
    };

    let req = pb::ConfigureRequest {
        config: String::new(),
        runtime_name: cfg.runtime_name.clone(),
        runtime_version: cfg.runtime_version.clone(),
        registration_timeout: cfg.plugin_registration_timeout.as_millis() as i64,
        request_timeout: cfg.plugin_request_timeout.as_millis() as i64,
        ..Default::default()
    };
    let configured = plugin
        .call("Configure", plugin.client.configure(plugin.ctx(), &req))
        .await;
    let events = match configured {
        Ok(Some(rsp)) => rsp.events,
        Ok(None) => return Err(format!("plugin {} did not answer Configure", plugin.name)),
        Err(e) => return Err(e.to_string()),
    };
    let events = if events == 0 { RELAYED_EVENTS } else { events };
    if events & !VALID_EVENTS != 0 {
        plugin.close();
        return Err(format!(
            "plugin {} subscribed to invalid events 0x{:x}",
            plugin.name,
            events & !VALID_EVENTS
        ));
    }
    if events & event_bit(pb::Event::VALIDATE_CONTAINER_ADJUSTMENT) != 0 {
        plugin.close();
        return Err(format!(
            "plugin {} wants to validate container adjustments, which berth does not support",
            plugin.name
        ));
    }
    plugin.events = events;
    Ok(plugin)
}

/// Synchronizes a configured plugin with the runtime's pods and containers
/// and returns the updates it asked for.
pub(crate) async fn synchronize(
    plugin: &PluginConn,
    pods: &[crate::PodSandbox],
    containers: &[crate::Container],
) -> Result<Option<Vec<ContainerUpdate>>> {
    let req = pb::SynchronizeRequest {
        pods: pods.iter().map(pb::PodSandbox::from).collect(),
        containers: containers.iter().map(pb::Container::from).collect(),
        more: false,
        ..Default::default()
    };
    let Some(rsp) = plugin
        .call("Synchronize", plugin.client.synchronize(plugin.ctx(), &req))
        .await?
    else {
        return Ok(None);
    };
    let mut collected = crate::adjust::Collector::for_updates();
    collected.update(&plugin.name, &rsp.update)?;
    Ok(Some(collected.into_updates()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_masks_match_nri() {
        assert_eq!(event_bit(pb::Event::RUN_POD_SANDBOX), 1);
        assert_eq!(event_bit(pb::Event::CREATE_CONTAINER), 1 << 3);
        assert_eq!(VALID_EVENTS, 0x3fff);
        assert_eq!(RELAYED_EVENTS, 0x1fff);
    }

    #[test]
    fn names_and_indices_are_checked_as_nri_does() {
        assert!(check_name("my-plugin_1.0+x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_index("05").is_ok());
        assert!(check_index("5").is_err());
        assert!(check_index("x5").is_err());
    }
}
