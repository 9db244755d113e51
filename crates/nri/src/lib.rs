//! The runtime side of containerd's Node Resource Interface (NRI), so that
//! unmodified NRI plugins (written with containerd/nri's Go stub, v0.6 on)
//! can hook into berthd.
//!
//! Plugins connect to a unix socket (default [`DEFAULT_SOCKET_PATH`],
//! root-only from the moment it exists). Each connection is split by NRI's
//! multiplexer ([`mux`]) into two ttrpc connections: on one the plugin
//! serves `nri.pkg.api.v1alpha1.Plugin` and berthd calls it; on the other
//! berthd serves `nri.pkg.api.v1alpha1.Runtime` (RegisterPlugin,
//! UpdateContainers). A plugin registers (name and two-digit index), is
//! configured (it answers with the events it subscribes to), is
//! synchronized with the pods and containers that exist (from
//! [`Domain::list_pods_and_containers`]), then receives the events it
//! subscribed to, one at a time, in plugin index order.
//!
//! How berthd uses it: [`Nri::start`] once with its [`NriConfig`] and a
//! [`Domain`]; then, from the CRI service, the `Nri` method named after
//! each lifecycle step, with the pod and container as plain
//! [`PodSandbox`]/[`Container`] values. [`Nri::create_container`] returns
//! the combined [`ContainerAdjustment`] to apply to the container's spec;
//! [`Nri::update_container`] the resources to apply. An error means a
//! plugin refused (or plugins conflicted): the CRI request fails and the
//! caller cleans up. When NRI is disabled (the default) nothing listens and
//! every method returns at once with nothing to do.
//!
//! Updates plugins ask for *other* containers (in any answer, or
//! unsolicited through `UpdateContainers`) go to
//! [`Domain::update_containers`].

pub mod mux;
pub mod proto;

mod adjust;
mod error;
mod plugin;
mod spec;
mod types;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protobuf::MessageField;

pub use error::{NriError, Result};
pub use spec::{container_from_spec, resources_from_oci};
pub use types::*;

use plugin::PluginConn;
use proto::nri as pb;

/// Where plugins connect unless configured otherwise (as containerd).
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/nri/nri.sock";
/// How long a plugin has to register after connecting (as containerd).
pub const DEFAULT_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a plugin has to answer one request (containerd's
/// `plugin_request_timeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// NRI's settings.
#[derive(Debug, Clone)]
pub struct NriConfig {
    /// Off by default: nothing listens and every call is a no-op.
    pub enable: bool,
    pub socket_path: PathBuf,
    pub plugin_registration_timeout: Duration,
    /// A plugin that does not answer within it is disconnected.
    pub plugin_request_timeout: Duration,
    /// Told to plugins in Configure.
    pub runtime_name: String,
    pub runtime_version: String,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: false,
            socket_path: PathBuf::from(DEFAULT_SOCKET_PATH),
            plugin_registration_timeout: DEFAULT_REGISTRATION_TIMEOUT,
            plugin_request_timeout: DEFAULT_REQUEST_TIMEOUT,
            runtime_name: "berth".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// What NRI needs from the runtime. Its methods must not call back into
/// [`Nri`]: they may run while NRI holds its plugin list.
#[async_trait::async_trait]
pub trait Domain: Send + Sync + 'static {
    /// The pods and containers that exist now, to synchronize a plugin that
    /// just connected.
    async fn list_pods_and_containers(&self) -> (Vec<PodSandbox>, Vec<Container>);

    /// Applies resource updates plugins asked for existing containers and
    /// returns those that failed.
    async fn update_containers(&self, updates: Vec<ContainerUpdate>) -> Vec<ContainerUpdate>;
}

struct Inner {
    config: NriConfig,
    domain: Arc<dyn Domain>,
    /// Connected plugins in invocation order; held for the whole of each
    /// event so events reach plugins one at a time, in order.
    plugins: tokio::sync::Mutex<Vec<Arc<PluginConn>>>,
    accept: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// berthd's NRI: the plugin socket and the plugins connected to it.
pub struct Nri {
    inner: Option<Arc<Inner>>,
}

impl Nri {
    /// NRI switched off: every method is a no-op.
    pub fn disabled() -> Arc<Nri> {
        Arc::new(Nri { inner: None })
    }

    /// Starts NRI as configured: when enabled, listens on the socket
    /// (replacing a stale one) and accepts plugins from then on. Must run
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start(config: NriConfig, domain: Arc<dyn Domain>) -> Result<Arc<Nri>> {
        if !config.enable {
            return Ok(Nri::disabled());
        }
        let path = config.socket_path.clone();
        let listen_err = |source| NriError::Listen {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = berth_common::socket::bind_unix_private(&path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(listen_err)?;
        let inner = Arc::new(Inner {
            config,
            domain,
            plugins: tokio::sync::Mutex::new(Vec::new()),
            accept: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("nri: accepting a plugin connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(inner) = weak.upgrade() else { break };
                tokio::spawn(async move { add_plugin(inner, stream).await });
            }
        });
        *inner.accept.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        tracing::info!(
            "nri: listening for plugins on {}",
            inner.config.socket_path.display()
        );
        Ok(Arc::new(Nri { inner: Some(inner) }))
    }

    /// Whether NRI is on.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The connected and synchronized plugins ("<index>-<name>"), in the
    /// order they are called.
    pub async fn plugins(&self) -> Vec<String> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let plugins = inner.plugins.lock().await;
        plugins
            .iter()
            .filter(|p| !p.is_closed())
            .map(|p| p.name.clone())
            .collect()
    }

    /// Tells plugins the runtime is going down, disconnects them, stops
    /// listening and removes the socket.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else { return };
        if let Some(task) = inner
            .accept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        let mut plugins = inner.plugins.lock().await;
        for p in plugins.drain(..) {
            if !p.is_closed() {
                let _ = p
                    .call("Shutdown", p.client.shutdown(p.ctx(), &pb::Empty::new()))
                    .await;
            }
            p.close();
        }
        let _ = std::fs::remove_file(&inner.config.socket_path);
    }

    /// A pod was started (RunPodSandbox, after its sandbox runs).
    ///
    /// # Errors
    /// A plugin failed the event.
    pub async fn run_pod_sandbox(&self, pod: &PodSandbox) -> Result<()> {
        self.state_change(pb::Event::RUN_POD_SANDBOX, "RunPodSandbox", pod, None)
            .await
    }

    /// A pod is being stopped (StopPodSandbox, after its containers stopped).
    ///
    /// # Errors
    /// A plugin failed the event.
    pub async fn stop_pod_sandbox(&self, pod: &PodSandbox) -> Result<()> {
        self.state_change(pb::Event::STOP_POD_SANDBOX, "StopPodSandbox", pod, None)
            .await
    }

    /// A pod was removed.
    ///
    /// # Errors
    /// A plugin failed the event.
    pub async fn remove_pod_sandbox(&self, pod: &PodSandbox) -> Result<()> {
        self.state_change(pb::Event::REMOVE_POD_SANDBOX, "RemovePodSandbox", pod, None)
            .await
    }

    /// A pod's resources change (sent only to plugins that subscribed to
    /// UPDATE_POD_SANDBOX; NRI v0.9+ plugins).
    ///
    /// # Errors
    /// A plugin failed the request.
    pub async fn update_pod_sandbox(
        &self,
        pod: &PodSandbox,
        overhead: Option<&LinuxResources>,
        resources: Option<&LinuxResources>,
    ) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let req = pb::UpdatePodSandboxRequest {
            pod: MessageField::some(pod.into()),
            overhead_linux_resources: overhead.map(pb::LinuxResources::from).into(),
            linux_resources: resources.map(pb::LinuxResources::from).into(),
            ..Default::default()
        };
        let plugins = inner.live_plugins().await;
        for p in subscribed(&plugins, pb::Event::UPDATE_POD_SANDBOX) {
            match p
                .call(
                    "UpdatePodSandbox",
                    p.client.update_pod_sandbox(p.ctx(), &req),
                )
                .await
            {
                Err(NriError::Plugin { message, .. }) if message.contains("not supported") => {}
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// A container is about to be created: plugins, in index order, may
    /// adjust it. Returns their combined adjustment, to apply to the
    /// container's spec; updates they ask for other containers go to
    /// [`Domain::update_containers`].
    ///
    /// # Errors
    /// A plugin failed the request, two plugins set the same thing, or a
    /// plugin asked for a change berth cannot apply.
    pub async fn create_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> Result<ContainerAdjustment> {
        let Some(inner) = &self.inner else {
            return Ok(ContainerAdjustment::default());
        };
        let pod = pb::PodSandbox::from(pod);
        let mut collected = adjust::Collector::for_create(container.into());
        {
            let plugins = inner.live_plugins().await;
            for p in subscribed(&plugins, pb::Event::CREATE_CONTAINER) {
                let req = pb::CreateContainerRequest {
                    pod: MessageField::some(pod.clone()),
                    container: collected.container.clone().into(),
                    ..Default::default()
                };
                let Some(rsp) = p
                    .call("CreateContainer", p.client.create_container(p.ctx(), &req))
                    .await?
                else {
                    continue;
                };
                if let Some(adj) = rsp.adjust.as_ref() {
                    collected.adjust(&p.name, adj)?;
                }
                collected.update(&p.name, &rsp.update)?;
                if !rsp.evict.is_empty() {
                    tracing::warn!(
                        "nri: plugin {} asked to evict {} containers; berth does not evict",
                        p.name,
                        rsp.evict.len()
                    );
                }
            }
        }
        let adjustment = std::mem::take(&mut collected.adjust);
        inner.apply_updates(collected.into_updates()).await;
        Ok(adjustment)
    }

    /// A container was created.
    ///
    /// # Errors
    /// A plugin failed the event.
    pub async fn post_create_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> Result<()> {
        self.state_change(
            pb::Event::POST_CREATE_CONTAINER,
            "PostCreateContainer",
            pod,
            Some(container),
        )
        .await
    }

    /// A container is about to be started.
    ///
    /// # Errors
    /// A plugin failed the event.
    pub async fn start_container(&self, pod: &PodSandbox, container: &Container) -> Result<()> {
        self.state_change(
            pb::Event::START_CONTAINER,
            "StartContainer",
            pod,
            Some(container),
        )
        .await
    }

    /// A container was started.
    ///
    /// # Errors
    /// A plugin failed the event.
    pub async fn post_start_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> Result<()> {
        self.state_change(
            pb::Event::POST_START_CONTAINER,
            "PostStartContainer",
            pod,
            Some(container),
        )
        .await
    }

    /// A container's resources are about to change to `resources`: plugins
    /// may change them further. Returns the resources to apply (those asked
    /// for, with what plugins changed); updates they ask for other
    /// containers go to [`Domain::update_containers`].
    ///
    /// # Errors
    /// A plugin failed the request, or two plugins set the same thing.
    pub async fn update_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
        resources: &LinuxResources,
    ) -> Result<LinuxResources> {
        let Some(inner) = &self.inner else {
            return Ok(resources.clone());
        };
        let mut collected = adjust::Collector::for_update(&container.id, resources.clone());
        {
            let plugins = inner.live_plugins().await;
            let pod = pb::PodSandbox::from(pod);
            let ctr = pb::Container::from(container);
            for p in subscribed(&plugins, pb::Event::UPDATE_CONTAINER) {
                let req = pb::UpdateContainerRequest {
                    pod: MessageField::some(pod.clone()),
                    container: MessageField::some(ctr.clone()),
                    linux_resources: collected
                        .target_resources()
                        .map(pb::LinuxResources::from)
                        .into(),
                    ..Default::default()
                };
                let Some(rsp) = p
                    .call("UpdateContainer", p.client.update_container(p.ctx(), &req))
                    .await?
                else {
                    continue;
                };
                collected.update(&p.name, &rsp.update)?;
                if !rsp.evict.is_empty() {
                    tracing::warn!(
                        "nri: plugin {} asked to evict {} containers; berth does not evict",
                        p.name,
                        rsp.evict.len()
                    );
                }
            }
        }
        let result = collected
            .target_resources()
            .cloned()
            .unwrap_or_else(|| resources.clone());
        inner.apply_updates(collected.into_updates()).await;
        Ok(result)
    }

    /// A container's resources were changed.
    ///
    /// # Errors
    /// A plugin failed the event.
    pub async fn post_update_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> Result<()> {
        self.state_change(
            pb::Event::POST_UPDATE_CONTAINER,
            "PostUpdateContainer",
            pod,
            Some(container),
        )
        .await
    }

    /// A container is being stopped (or was found stopped). Updates plugins
    /// ask for other containers go to [`Domain::update_containers`].
    ///
    /// # Errors
    /// A plugin failed the request.
    pub async fn stop_container(&self, pod: &PodSandbox, container: &Container) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut collected = adjust::Collector::for_updates();
        {
            let plugins = inner.live_plugins().await;
            let req = pb::StopContainerRequest {
                pod: MessageField::some(pod.into()),
                container: MessageField::some(container.into()),
                ..Default::default()
            };
            for p in subscribed(&plugins, pb::Event::STOP_CONTAINER) {
                let Some(rsp) = p
                    .call("StopContainer", p.client.stop_container(p.ctx(), &req))
                    .await?
                else {
                    continue;
                };
                collected.update(&p.name, &rsp.update)?;
            }
        }
        inner.apply_updates(collected.into_updates()).await;
        Ok(())
    }

    /// A container was removed.
    ///
    /// # Errors
    /// A plugin failed the event.
    pub async fn remove_container(&self, pod: &PodSandbox, container: &Container) -> Result<()> {
        self.state_change(
            pb::Event::REMOVE_CONTAINER,
            "RemoveContainer",
            pod,
            Some(container),
        )
        .await
    }

    /// Relays an event without an answer of its own as StateChange.
    async fn state_change(
        &self,
        event: pb::Event,
        request: &'static str,
        pod: &PodSandbox,
        container: Option<&Container>,
    ) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let plugins = inner.live_plugins().await;
        let subscribed = subscribed(&plugins, event);
        if subscribed.is_empty() {
            return Ok(());
        }
        let req = pb::StateChangeEvent {
            event: event.into(),
            pod: MessageField::some(pod.into()),
            container: container.map(pb::Container::from).into(),
            ..Default::default()
        };
        for p in subscribed {
            p.call(request, p.client.state_change(p.ctx(), &req))
                .await?;
        }
        Ok(())
    }
}

/// The plugins subscribed to `event`, in invocation order. Collected
/// rather than a lazy `filter`: an iterator holding a closure across the
/// calls' awaits makes these futures `Send` only for some lifetimes, and
/// the daemon awaits them inside spawned tasks, which need `Send` for all.
fn subscribed(plugins: &[Arc<PluginConn>], event: pb::Event) -> Vec<Arc<PluginConn>> {
    plugins
        .iter()
        .filter(|p| p.subscribed(event))
        .cloned()
        .collect()
}

impl Inner {
    /// Locks the plugin list, dropping disconnected plugins.
    async fn live_plugins(&self) -> tokio::sync::MutexGuard<'_, Vec<Arc<PluginConn>>> {
        let mut plugins = self.plugins.lock().await;
        plugins.retain(|p| {
            let live = !p.is_closed();
            if !live {
                tracing::info!("nri: plugin {} disconnected", p.name);
                p.close();
            }
            live
        });
        plugins
    }

    async fn apply_updates(&self, updates: Vec<ContainerUpdate>) {
        if updates.is_empty() {
            return;
        }
        for failed in self.domain.update_containers(updates).await {
            if !failed.ignore_failure {
                tracing::warn!(
                    "nri: updating container {} as plugins asked failed",
                    failed.container_id
                );
            }
        }
    }
}

/// Registers, configures and synchronizes a plugin that connected.
async fn add_plugin(inner: Arc<Inner>, stream: tokio::net::UnixStream) {
    let plugin = match plugin::connect(stream, &inner).await {
        Ok(p) => Arc::new(p),
        Err(why) => {
            tracing::warn!("nri: plugin connection refused: {why}");
            return;
        }
    };
    let updates = {
        // Holding the list keeps events out until the plugin has seen the
        // state they follow.
        let mut plugins = inner.live_plugins().await;
        let (pods, containers) = inner.domain.list_pods_and_containers().await;
        match plugin::synchronize(&plugin, &pods, &containers).await {
            Ok(Some(updates)) => {
                let at = plugins
                    .iter()
                    .position(|p| p.index > plugin.index)
                    .unwrap_or(plugins.len());
                plugins.insert(at, plugin.clone());
                let order: Vec<_> = plugins.iter().map(|p| p.name.as_str()).collect();
                tracing::info!(
                    "nri: plugin {} synchronized; invocation order {order:?}",
                    plugin.name
                );
                updates
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("nri: synchronizing plugin {}: {e}", plugin.name);
                plugin.close();
                return;
            }
        }
    };
    inner.apply_updates(updates).await;
}
