//! berth-cri: the CRI v1 runtime berthd serves. It composes the image
//! store (images, rootfs snapshots), the shims (containers, stdio, logs,
//! exits) and its own records (pods, containers), which survive restarts.

pub mod busy_poll;
pub mod config;
mod cri_conn;
pub mod error;
pub mod grpc;
pub mod images;
mod netns;
pub mod network;
mod nri;
pub mod prometheus;
pub mod pull_progress;
pub mod sandbox;
pub mod service;
pub mod shims;
pub mod spec;
pub mod store;
pub mod streaming;
pub mod user;
pub mod util;

use std::sync::Arc;

pub use config::Config;
pub use error::{Error, Result};
pub use service::Cri;

/// Marks every descriptor above stdio close-on-exec, so none berthd
/// inherited reaches the shims and runtimes it starts.
pub fn mark_inherited_fds_cloexec() -> std::io::Result<()> {
    berth_common::fd::mark_inherited_fds_cloexec(0)
}

/// Serves CRI on the configured unix socket until `shutdown` resolves.
pub async fn serve(
    cri: Arc<Cri>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    // Listening before the CRI socket is: whoever sees berthd up can scrape.
    let metrics = prometheus::Metrics::new(Arc::downgrade(&cri));
    let _endpoint = prometheus::Endpoint::start(&cri.config.metrics, Arc::clone(&metrics)).await?;
    let socket = cri.config.socket.clone();
    let listener = berth_common::socket::bind_unix_private(&socket)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .map_err(|e| Error::internal(format!("binding {}", socket.display()), e))?;
    let server = grpc::Server(Arc::clone(&cri));
    tracing::info!(socket = %socket.display(), "serving CRI");
    let result = tonic::transport::Server::builder()
        .layer(prometheus::GrpcMetricsLayer::new(metrics))
        .add_service(
            k8s_cri::v1::runtime_service_server::RuntimeServiceServer::new(server.clone())
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(berth_api::v1::images_server::ImagesServer::new(
            server.clone(),
        ))
        .add_service(
            k8s_cri::v1::image_service_server::ImageServiceServer::new(server)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(
            {
                use tokio_stream::StreamExt;
                tokio_stream::wrappers::UnixListenerStream::new(listener)
                    .map(|accepted| accepted.and_then(cri_conn::CriConnection::new))
            },
            shutdown,
        )
        .await
        .map_err(|e| Error::internal("serving", e));
    let _ = std::fs::remove_file(&socket);
    cri.shutdown_nri().await;
    result
}
