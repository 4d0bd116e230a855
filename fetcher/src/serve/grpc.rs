//! What every alldocs gRPC server carries besides its own service: health and server
//! reflection (v1 and v1alpha), so `grpcurl` works with no `.proto` file at hand.

use std::{future::Future, net::SocketAddr};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{server::NamedService, service::interceptor::InterceptedService, transport::Server};

use alldocs_proto::v1::fetcher_server::FetcherServer;

use crate::{serve::auth::BearerAuth, serve::service::FetchService};

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

/// The largest `Lease` a fetcher accepts by default: the coordinator's largest lease
/// (10,000 items of names up to 214 bytes and revisions up to 256, about 5 MB encoded)
/// fits with room.
pub const MAX_LEASE_BYTES: usize = 16 << 20;

/// Encoded bytes one packument item of a lease may take: a 214-byte name, a 256-byte
/// revision, their tags and lengths, with room.
const ITEM_BYTES: usize = 512;

/// The message limit for leases of up to `max_items` packuments of the longest names:
/// [`MAX_LEASE_BYTES`], or more when `--max-lease-items` asks for larger leases.
pub fn max_lease_bytes(max_items: usize) -> usize {
    MAX_LEASE_BYTES.max(
        max_items
            .saturating_mul(ITEM_BYTES)
            .saturating_add(64 << 10),
    )
}

/// How a Fetcher server admits calls: who may call `Fetch`, and how large a lease may be.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub auth: BearerAuth,
    pub max_lease_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            auth: BearerAuth::open(),
            max_lease_bytes: MAX_LEASE_BYTES,
        }
    }
}

/// Serves the Fetcher with health and reflection until `shutdown` resolves; running
/// leases are then told to stop and their streams end cleanly.
pub async fn serve_fetcher(
    listener: TcpListener,
    service: FetchService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_fetcher_with(listener, service, ServeOptions::default(), shutdown).await
}

/// [`serve_fetcher`] with `options`: the bearer token is checked on `Fetch` only; health,
/// reflection and `GET /metrics` stay open, so load balancers, `grpcurl list` and a
/// scraper need no token.
pub async fn serve_fetcher_with(
    listener: TcpListener,
    service: FetchService,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (refl_v1, refl_v1alpha) = reflection();
    let health = health::<FetcherServer<FetchService>>().await;
    let stopper = service.clone();
    let fetcher = FetcherServer::new(service).max_decoding_message_size(options.max_lease_bytes);
    Server::builder()
        .accept_http1(true)
        .add_routes(super::web::fetcher_router().into())
        .add_service(health)
        .add_service(refl_v1)
        .add_service(refl_v1alpha)
        .add_service(InterceptedService::new(fetcher, options.auth))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            stopper.stop();
        })
        .await?;
    Ok(())
}
