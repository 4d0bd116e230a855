//! What every alldocs gRPC server carries besides its own service: health and server
//! reflection (v1 and v1alpha), so `grpcurl` works with no `.proto` file at hand.

use std::{future::Future, net::SocketAddr};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{server::NamedService, transport::Server};

use alldocs_proto::v1::fetcher_server::FetcherServer;

use crate::service::FetchService;

/// Reflection services (v1, v1alpha) describing alldocs.v1 and grpc.health.v1.
pub fn reflection() -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(alldocs_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(alldocs_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    (v1, v1alpha)
}

/// A health service reporting `service` (and the server as a whole) as serving.
pub async fn health<S: NamedService>(
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_serving::<S>().await;
    service
}

/// Binds `addr`, saying what to do if it cannot.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr}: {e}; choose another address with --listen")
    })
}

/// The largest `Lease` a fetcher accepts: the coordinator's largest lease (10,000 items of
/// names up to 214 bytes and revisions up to 256, about 5 MB encoded) fits with room.
pub const MAX_LEASE_BYTES: usize = 16 << 20;

/// Serves the Fetcher with health and reflection until `shutdown` resolves; running
/// leases are then told to stop and their streams end cleanly.
pub async fn serve_fetcher(
    listener: TcpListener,
    service: FetchService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (refl_v1, refl_v1alpha) = reflection();
    let health = health::<FetcherServer<FetchService>>().await;
    let stopper = service.clone();
    Server::builder()
        .add_service(health)
        .add_service(refl_v1)
        .add_service(refl_v1alpha)
        .add_service(FetcherServer::new(service).max_decoding_message_size(MAX_LEASE_BYTES))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            stopper.stop();
        })
        .await?;
    Ok(())
}
