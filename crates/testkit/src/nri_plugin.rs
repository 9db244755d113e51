//! A small NRI plugin for tests (feature `nri`): berth-nri's own tests and
//! berthd's, which run it against the daemon's NRI socket. It is written
//! against the same proto as berth-nri but with its own multiplexer (plugin
//! side), so the framing is checked from both ends: it connects to the
//! socket, multiplexes, serves the `Plugin` service on connection 1,
//! registers over connection 2, subscribes to the events it is given and
//! records what it receives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_nri::proto::nri as pb;
use berth_nri::proto::nri_ttrpc as rpc;
use protobuf::MessageField;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use ttrpc::r#async::transport::{Listener, Socket};

/// NRI's events, for [`mask`].
pub use berth_nri::proto::nri::Event;

/// What the plugin does when asked to adjust a container being created.
#[derive(Clone)]
pub enum OnCreate {
    /// Nothing.
    Nothing,
    /// Sets these env variables and adds a mount of `source` at `dest`.
    Inject {
        env: Vec<(String, String)>,
        mount: Option<(String, String)>,
    },
    /// Answers with an error.
    Fail(String),
    /// Never answers.
    Hang,
    /// Asks to update another container's CPU shares.
    UpdateOther { id: String, shares: u64 },
}

/// A running test plugin.
pub struct TestPlugin {
    pub events: Arc<Mutex<Vec<String>>>,
    on_create: Arc<Mutex<OnCreate>>,
    pub runtime: rpc::RuntimeClient,
    closed: watch::Receiver<bool>,
    _server: ttrpc::r#async::Server,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestPlugin {
    /// What the plugin received so far, one line an event.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// Changes what the plugin does at CreateContainer from now on.
    pub fn set_on_create(&self, on_create: OnCreate) {
        *self.on_create.lock().unwrap() = on_create;
    }

    /// Whether the runtime closed the connection.
    pub fn disconnected(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the runtime closes the connection.
    pub async fn wait_disconnected(&self, within: Duration) -> bool {
        let mut rx = self.closed.clone();
        let done = tokio::time::timeout(within, rx.wait_for(|c| *c)).await;
        matches!(done, Ok(Ok(_)))
    }
}

impl Drop for TestPlugin {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Service {
    subscribe: i32,
    on_create: Arc<Mutex<OnCreate>>,
    events: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn record(&self, line: String) {
        self.events.lock().unwrap().push(line);
    }
}

fn status(msg: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::UNKNOWN, msg))
}

#[async_trait::async_trait]
impl rpc::Plugin for Service {
    async fn configure(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pb::ConfigureRequest,
    ) -> ttrpc::Result<pb::ConfigureResponse> {
        self.record(format!(
            "Configure runtime={} request_timeout={} registration_timeout={}",
            req.runtime_name, req.request_timeout, req.registration_timeout
        ));
        Ok(pb::ConfigureResponse {
            events: self.subscribe,
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pb::SynchronizeRequest,
    ) -> ttrpc::Result<pb::SynchronizeResponse> {
        let pods: Vec<_> = req.pods.iter().map(|p| p.id.clone()).collect();
        let ctrs: Vec<_> = req.containers.iter().map(|c| c.id.clone()).collect();
        self.record(format!("Synchronize pods={pods:?} containers={ctrs:?}"));
        Ok(pb::SynchronizeResponse::new())
    }

    async fn shutdown(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _: pb::Empty,
    ) -> ttrpc::Result<pb::Empty> {
        self.record("Shutdown".into());
        Ok(pb::Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pb::CreateContainerRequest,
    ) -> ttrpc::Result<pb::CreateContainerResponse> {
        self.record(format!(
            "CreateContainer {}/{} env={:?} mounts={:?}",
            req.pod.id,
            req.container.id,
            req.container.env,
            req.container
                .mounts
                .iter()
                .map(|m| m.destination.clone())
                .collect::<Vec<_>>()
        ));
        let mut rsp = pb::CreateContainerResponse::new();
        let on_create = self.on_create.lock().unwrap().clone();
        match &on_create {
            OnCreate::Nothing => {}
            OnCreate::Inject { env, mount } => {
                let mut adj = pb::ContainerAdjustment::new();
                adj.env = env
                    .iter()
                    .map(|(k, v)| pb::KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                        ..Default::default()
                    })
                    .collect();
                if let Some((source, dest)) = mount {
                    adj.mounts.push(pb::Mount {
                        destination: dest.clone(),
                        type_: "bind".into(),
                        source: source.clone(),
                        options: vec!["rbind".into(), "ro".into()],
                        ..Default::default()
                    });
                }
                rsp.adjust = MessageField::some(adj);
            }
            OnCreate::Fail(msg) => return Err(status(msg)),
            OnCreate::Hang => std::future::pending::<()>().await,
            OnCreate::UpdateOther { id, shares } => {
                let mut res = pb::LinuxResources::new();
                res.cpu.mut_or_insert_default().shares = MessageField::some(pb::OptionalUInt64 {
                    value: *shares,
                    ..Default::default()
                });
                rsp.update.push(pb::ContainerUpdate {
                    container_id: id.clone(),
                    linux: MessageField::some(pb::LinuxContainerUpdate {
                        resources: MessageField::some(res),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
        Ok(rsp)
    }

    async fn update_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pb::UpdateContainerRequest,
    ) -> ttrpc::Result<pb::UpdateContainerResponse> {
        let shares = req.linux_resources.cpu.shares.value;
        self.record(format!(
            "UpdateContainer {} shares={shares}",
            req.container.id
        ));
        // Doubles the CPU shares asked for.
        let mut res = pb::LinuxResources::new();
        res.cpu.mut_or_insert_default().shares = MessageField::some(pb::OptionalUInt64 {
            value: shares * 2,
            ..Default::default()
        });
        let mut rsp = pb::UpdateContainerResponse::new();
        rsp.update.push(pb::ContainerUpdate {
            container_id: req.container.id.clone(),
            linux: MessageField::some(pb::LinuxContainerUpdate {
                resources: MessageField::some(res),
                ..Default::default()
            }),
            ..Default::default()
        });
        Ok(rsp)
    }

    async fn stop_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pb::StopContainerRequest,
    ) -> ttrpc::Result<pb::StopContainerResponse> {
        self.record(format!("StopContainer {}", req.container.id));
        Ok(pb::StopContainerResponse::new())
    }

    async fn state_change(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pb::StateChangeEvent,
    ) -> ttrpc::Result<pb::Empty> {
        let event = req
            .event
            .enum_value()
            .map(|e| format!("{e:?}"))
            .unwrap_or_else(|n| format!("event {n}"));
        match req.container.as_ref() {
            Some(c) => self.record(format!("{event} {}/{}", req.pod.id, c.id)),
            None => self.record(format!("{event} {}", req.pod.id)),
        }
        Ok(pb::Empty::new())
    }
}

/// The plugin side of NRI's multiplexer: frames `[id u32 BE][len u32 BE]`.
fn multiplex(
    stream: tokio::net::UnixStream,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    watch::Receiver<bool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let (closed_tx, closed_rx) = watch::channel(false);
    let mut mine = HashMap::new();
    let mut handed = Vec::new();
    let mut tasks = Vec::new();
    for id in [1u32, 2u32] {
        let (ttrpc_end, pump_end) = tokio::io::duplex(1 << 20);
        handed.push(ttrpc_end);
        let (mut from_ttrpc, to_ttrpc) = tokio::io::split(pump_end);
        mine.insert(id, to_ttrpc);
        let wr = wr.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            while let Ok(n) = from_ttrpc.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut frame = id.to_be_bytes().to_vec();
                frame.extend((n as u32).to_be_bytes());
                frame.extend(&buf[..n]);
                if wr.lock().await.write_all(&frame).await.is_err() {
                    break;
                }
            }
        }));
    }
    tasks.push(tokio::spawn(async move {
        let mut header = [0u8; 8];
        while rd.read_exact(&mut header).await.is_ok() {
            let id = u32::from_be_bytes(header[..4].try_into().unwrap());
            let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                break;
            }
            if let Some(w) = mine.get_mut(&id) {
                if w.write_all(&payload).await.is_err() {
                    break;
                }
            }
        }
        let _ = closed_tx.send(true);
    }));
    let conn2 = handed.pop().unwrap();
    let conn1 = handed.pop().unwrap();
    (conn1, conn2, closed_rx, tasks)
}

/// Connects a plugin named `name` with index `idx` that subscribes to
/// `subscribe` (an NRI event mask) and registers it.
pub async fn connect(
    socket: &Path,
    idx: &str,
    name: &str,
    subscribe: i32,
    on_create: OnCreate,
) -> TestPlugin {
    try_connect(socket, idx, name, subscribe, on_create)
        .await
        .expect("registering the test plugin")
}

/// As [`connect`], returning RegisterPlugin's error.
pub async fn try_connect(
    socket: &Path,
    idx: &str,
    name: &str,
    subscribe: i32,
    on_create: OnCreate,
) -> Result<TestPlugin, ttrpc::Error> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connecting to the NRI socket");
    let (conn1, conn2, closed, tasks) = multiplex(stream);
    let events = Arc::new(Mutex::new(Vec::new()));
    let on_create = Arc::new(Mutex::new(on_create));
    let service = Arc::new(Service {
        subscribe,
        on_create: on_create.clone(),
        events: events.clone(),
    });
    let incoming = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(conn1)));
    let mut server = ttrpc::r#async::Server::new()
        .register_service(rpc::create_plugin(service))
        .add_listener(Listener::new(incoming));
    server.start().await.expect("serving the Plugin service");
    let runtime = rpc::RuntimeClient::new(ttrpc::r#async::Client::new(Socket::new(conn2)));
    let req = pb::RegisterPluginRequest {
        plugin_name: name.into(),
        plugin_idx: idx.into(),
        ..Default::default()
    };
    runtime
        .register_plugin(ttrpc::context::with_timeout(5_000_000_000), &req)
        .await?;
    Ok(TestPlugin {
        events,
        on_create,
        runtime,
        closed,
        _server: server,
        tasks,
    })
}

/// The NRI event mask of `events`.
pub fn mask(events: &[Event]) -> i32 {
    events.iter().fold(0, |m, e| m | 1 << (*e as i32 - 1))
}
