//! The gRPC face of the runtime: CRI v1 RuntimeService and ImageService.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::service::Cri;

pub const RUNTIME_NAME: &str = "berth";
pub const CRI_VERSION: &str = "v1";

/// Shared by both services.
#[derive(Clone)]
pub struct Server(pub Arc<Cri>);

type R<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> R<T> {
    Ok(Response::new(t))
}

/// Runs an operation to its end even when the client goes away (tonic
/// drops a handler's future on disconnect, which would leave a half-made
/// pod or container behind). Failures are logged: kubelet retries, and the
/// daemon log is where an operator looks.
async fn complete<T: Send + 'static>(
    what: &'static str,
    op: impl std::future::Future<Output = crate::Result<T>> + Send + 'static,
) -> Result<T, Status> {
    let r = tokio::spawn(op)
        .await
        .map_err(|e| Status::internal(format!("{what}: {e}")))?;
    r.map_err(|e| {
        tracing::warn!("{what}: {e}");
        e.into()
    })
}

/// Like [`complete`] for creations: when the client is gone by the time
/// the object exists, nobody will ever learn its id, so it is removed
/// again (as containerd rolls back a cancelled creation).
async fn create<F, U>(what: &'static str, op: F, undo: U) -> Result<String, Status>
where
    F: std::future::Future<Output = crate::Result<String>> + Send + 'static,
    U: FnOnce(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Err(Ok(id)) = tx.send(op.await) {
            tracing::warn!("{what}: the client went away; removing {id}");
            undo(id).await;
        }
    });
    let r = rx
        .await
        .map_err(|e| Status::internal(format!("{what}: {e}")))?;
    r.map_err(|e| {
        tracing::warn!("{what}: {e}");
        e.into()
    })
}

/// The "kubelet runtime API" version of VersionResponse.version: a
/// constant of CRI (containerd and CRI-O answer the same), not berth's.
const KUBELET_API_VERSION: &str = "0.1.0";

#[tonic::async_trait]
impl RuntimeService for Server {
    async fn version(&self, _r: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        ok(cri::VersionResponse {
            version: KUBELET_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_VERSION.into(),
        })
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        let (cri, undo) = (Arc::clone(&self.0), Arc::clone(&self.0));
        let req = r.into_inner();
        let id = create(
            "RunPodSandbox",
            async move { cri.run_pod_sandbox(req).await },
            move |id| {
                Box::pin(async move {
                    let _ = undo.remove_pod_sandbox(&id).await;
                })
            },
        )
        .await?;
        ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        self.0
            .stop_pod_sandbox(&r.into_inner().pod_sandbox_id)
            .await?;
        ok(cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        self.0
            .remove_pod_sandbox(&r.into_inner().pod_sandbox_id)
            .await?;
        ok(cri::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        let r = r.into_inner();
        ok(self.0.pod_sandbox_status(&r.pod_sandbox_id, r.verbose)?)
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        ok(cri::ListPodSandboxResponse {
            items: Vec::new(),
            encoded: self.0.list_pod_sandbox(r.into_inner().filter),
        })
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        let (cri, undo) = (Arc::clone(&self.0), Arc::clone(&self.0));
        let req = r.into_inner();
        let id = create(
            "CreateContainer",
            async move { cri.create_container(req).await },
            move |id| {
                Box::pin(async move {
                    let _ = undo.remove_container(&id).await;
                })
            },
        )
        .await?;
        ok(cri::CreateContainerResponse { container_id: id })
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        let cri = Arc::clone(&self.0);
        let id = r.into_inner().container_id;
        complete(
            "StartContainer",
            async move { cri.start_container(&id).await },
        )
        .await?;
        ok(cri::StartContainerResponse {})
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        let cri = Arc::clone(&self.0);
        let r = r.into_inner();
        complete("StopContainer", async move {
            cri.stop_container(&r.container_id, r.timeout).await
        })
        .await?;
        ok(cri::StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        self.0
            .remove_container(&r.into_inner().container_id)
            .await?;
        ok(cri::RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        ok(cri::ListContainersResponse {
            containers: Vec::new(),
            encoded: self.0.list_containers(r.into_inner().filter),
        })
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        let r = r.into_inner();
        ok(self.0.container_status(&r.container_id, r.verbose)?)
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        let cri = Arc::clone(&self.0);
        let req = r.into_inner();
        complete("UpdateContainerResources", async move {
            cri.update_container_resources(req).await
        })
        .await?;
        ok(cri::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        self.0
            .reopen_container_log(&r.into_inner().container_id)
            .await?;
        ok(cri::ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        let cri = Arc::clone(&self.0);
        let req = r.into_inner();
        ok(complete("ExecSync", async move { cri.exec_sync(req).await }).await?)
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        let url = self.0.exec_url(r.into_inner())?;
        ok(cri::ExecResponse { url })
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        let url = self.0.attach_url(r.into_inner())?;
        ok(cri::AttachResponse { url })
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        let url = self.0.port_forward_url(r.into_inner())?;
        ok(cri::PortForwardResponse { url })
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        let stats = self.0.container_stats(&r.into_inner().container_id).await?;
        ok(cri::ContainerStatsResponse { stats: Some(stats) })
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        ok(cri::ListContainerStatsResponse {
            stats: self.0.list_container_stats(r.into_inner().filter).await,
        })
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        let stats = self
            .0
            .pod_sandbox_stats(&r.into_inner().pod_sandbox_id)
            .await?;
        ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        ok(cri::ListPodSandboxStatsResponse {
            stats: self.0.list_pod_sandbox_stats(r.into_inner().filter).await,
        })
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        if let Some(cidr) = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .filter(|c| !c.is_empty())
        {
            tracing::info!(pod_cidr = %cidr, "runtime config updated");
        }
        ok(cri::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            match self.0.network.ready().await {
                Ok(list) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: true,
                    reason: String::new(),
                    message: format!("CNI network {:?} from {}", list.name, list.file.display()),
                },
                Err(why) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: false,
                    reason: "NetworkPluginNotReady".into(),
                    message: match why {
                        crate::network::NotReady::PluginNotReady(e) => {
                            format!("cni plugin not ready: {e}")
                        }
                        why => format!("cni config not loaded: {why}"),
                    },
                },
            },
        ];
        let mut info = HashMap::new();
        if r.into_inner().verbose {
            info.insert(
                "config".to_owned(),
                serde_json::to_string(&self.0.config).unwrap_or_default(),
            );
        }
        let runtime_handlers = self
            .0
            .config
            .handler_names()
            .into_iter()
            .map(|name| {
                let handler = self.0.config.handler(&name);
                let recursive_read_only_mounts = handler
                    .as_ref()
                    .is_some_and(|h| h.supports_recursive_read_only());
                let user_namespaces = handler
                    .as_ref()
                    .is_some_and(|h| self.0.supports_user_namespaces(h));
                cri::RuntimeHandler {
                    name,
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts,
                        user_namespaces,
                    }),
                }
            })
            .collect();
        ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        })
    }

    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        // KEP-2008 needs CRIU, and the CRIU this node's distribution ships
        // cannot dump processes on its kernel: refused rather than tried.
        Err(Status::unimplemented(
            "CheckpointContainer is not supported: container checkpoint/restore needs CRIU, which berthd does not use yet",
        ))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send + 'static>>;

    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        let rx = self.0.events.subscribe();
        let stream = BroadcastStream::new(rx).filter_map(|e| match e {
            Ok(ev) => Some(Ok(ev)),
            // A slow reader missed events: kubelet relists on its own.
            Err(_) => None,
        });
        ok(Box::pin(stream))
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        ok(cri::ListMetricDescriptorsResponse {
            descriptors: self.0.metric_descriptors(),
        })
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        ok(cri::ListPodSandboxMetricsResponse {
            pod_metrics: self.0.list_pod_sandbox_metrics().await,
        })
    }

    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        let driver = if self.0.config.cgroup_driver == "systemd" {
            cri::CgroupDriver::Systemd
        } else {
            cri::CgroupDriver::Cgroupfs
        };
        ok(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        })
    }
}

#[tonic::async_trait]
impl ImageService for Server {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> R<cri::ListImagesResponse> {
        ok(cri::ListImagesResponse {
            images: self.0.list_images(r.into_inner().filter).await?,
        })
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        let r = r.into_inner();
        ok(self.0.image_status(r.image, r.verbose).await?)
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        let cri = Arc::clone(&self.0);
        let req = r.into_inner();
        let image_ref = complete("PullImage", async move { cri.pull_image(req).await }).await?;
        ok(cri::PullImageResponse { image_ref })
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        let cri = Arc::clone(&self.0);
        let image = r.into_inner().image;
        complete("RemoveImage", async move { cri.remove_image(image).await }).await?;
        ok(cri::RemoveImageResponse {})
    }

    async fn image_fs_info(
        &self,
        _r: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        ok(self.0.image_fs_info().await?)
    }
}

type PullProgressStream =
    Pin<Box<dyn Stream<Item = Result<berth_api::v1::PullProgress, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl berth_api::v1::images_server::Images for Server {
    type WatchPullStream = PullProgressStream;

    async fn watch_pull(
        &self,
        r: Request<berth_api::v1::WatchPullRequest>,
    ) -> R<Self::WatchPullStream> {
        let image = r.into_inner().image;
        let key = berth_image::Reference::parse(&image)
            .map_err(|e| Status::invalid_argument(format!("WatchPull: {e}")))?
            .full();
        let rx = self.0.pulls.watch(&key);
        // Ends after the message that says the pull finished, or when the
        // pull's channel goes away.
        let stream = futures_util::stream::unfold(Some(rx), move |rx| {
            let key = key.clone();
            async move {
                let mut rx = rx?;
                loop {
                    rx.changed().await.ok()?;
                    let s = rx.borrow_and_update().clone();
                    if !s.started {
                        continue;
                    }
                    let msg = berth_api::v1::PullProgress {
                        image: key,
                        layers: s
                            .layers
                            .into_iter()
                            .map(|(digest, done, total)| berth_api::v1::LayerProgress {
                                digest,
                                done,
                                total,
                            })
                            .collect(),
                        finished: s.finished,
                    };
                    let next = (!s.finished).then_some(rx);
                    return Some((Ok(msg), next));
                }
            }
        });
        ok(Box::pin(stream))
    }
}
