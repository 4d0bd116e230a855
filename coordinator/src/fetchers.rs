//! The fetchers a coordinator leases to: in-process (the default) or remote over gRPC,
//! both through the `alldocs.v1.Fetcher` service trait.

use std::time::Duration;

use alldocs_fetcher::FetchService;
use alldocs_proto::v1::{
    fetcher_client::FetcherClient, fetcher_server::Fetcher, FetchEvent, Lease,
};
use futures::{stream::BoxStream, StreamExt};
use tonic::{
    transport::{Channel, ClientTlsConfig, Endpoint},
    Request, Status,
};

/// One place leases can go.
#[derive(Clone)]
pub enum FetcherHandle {
    /// Runs in this process, called through the same trait the gRPC server serves.
    Local(FetchService),
    Remote {
        url: String,
        client: FetcherClient<Channel>,
    },
}

impl FetcherHandle {
    /// A remote fetcher at `url` (`http://host:port`, or `https://…` such as a Cloud Run
    /// service). Connects lazily, so a fetcher that is still starting is no error.
    pub fn remote(url: &str) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| {
                anyhow::anyhow!(
                    "--fetcher `{url}` is not a URL ({e}); give http://HOST:PORT or https://HOST"
                )
            })?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_webpki_roots())
                .map_err(|e| anyhow::anyhow!("TLS for --fetcher {url}: {e}"))?;
        } else if !url.starts_with("http://") {
            anyhow::bail!("--fetcher `{url}` must start with http:// or https://");
        }
        let client =
            FetcherClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20);
        Ok(Self::Remote {
            url: url.to_string(),
            client,
        })
    }

    /// A name for logs and the lease table.
    pub fn name(&self) -> &str {
        match self {
            Self::Local(_) => "in-process",
            Self::Remote { url, .. } => url,
        }
    }

    /// Starts a lease and returns its events.
    pub async fn fetch(
        &self,
        lease: Lease,
    ) -> Result<BoxStream<'static, Result<FetchEvent, Status>>, Status> {
        match self {
            Self::Local(service) => {
                let response = Fetcher::fetch(service, Request::new(lease)).await?;
                Ok(response.into_inner().boxed())
            }
            Self::Remote { client, .. } => {
                let response = client.clone().fetch(lease).await?;
                Ok(response.into_inner().boxed())
            }
        }
    }
}
