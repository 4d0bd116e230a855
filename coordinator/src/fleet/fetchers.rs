//! The fetchers a coordinator leases to: in-process (the default) or remote over gRPC,
//! both through the `alldocs.v1.Fetcher` service trait; a remote URL is a fleet reached
//! over several connections, each call carrying the coordinator's identity.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use alldocs_fetcher::FetchService;
use alldocs_proto::v1::{
    fetcher_client::FetcherClient, fetcher_server::Fetcher, FetchEvent, Lease,
};
use futures::{stream::BoxStream, StreamExt};
use tonic::{
    transport::{Channel, ClientTlsConfig, Endpoint},
    Code, Request, Status,
};

use crate::fleet::{bearer::bearer, idtoken::IdTokens};

/// How the coordinator proves who it is to remote fetchers.
#[derive(Clone)]
pub enum Auth {
    None,
    /// `ALLDOCS_FETCHER_TOKEN`, sent as a bearer token.
    Token(Arc<str>),
    /// Google-signed ID tokens whose audience is the fetcher's URL.
    Google(Arc<IdTokens>),
}

impl Auth {
    /// The mode's name, as `--fetcher-auth` spells it.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Token(_) => "token",
            Self::Google(_) => "google",
        }
    }
}

/// How remote fetchers are reached.
#[derive(Clone)]
pub struct RemoteOptions {
    /// HTTP/2 connections per URL; leases go round robin over them.
    pub connections: usize,
    pub auth: Auth,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            connections: 4,
            auth: Auth::None,
        }
    }
}

/// A remote fetcher URL: one or more connections to it, and how to authenticate.
pub struct Remote {
    url: String,
    /// The ID-token audience: the URL's scheme, host and port, no trailing slash.
    audience: String,
    clients: Vec<FetcherClient<Channel>>,
    next: AtomicUsize,
    auth: Auth,
}

/// One place leases can go.
#[derive(Clone)]
pub enum FetcherHandle {
    /// Runs in this process, called through the same trait the gRPC server serves.
    Local(FetchService),
    Remote(Arc<Remote>),
}

/// A lease's event stream.
type Events = BoxStream<'static, Result<FetchEvent, Status>>;

impl FetcherHandle {
    /// A remote fetcher at `url` with the default options (4 connections, no auth).
    pub fn remote(url: &str) -> anyhow::Result<Self> {
        Self::remote_with(url, &RemoteOptions::default())
    }

    /// A remote fetcher at `url` (`http://host:port`, or `https://…` such as a Cloud Run
    /// service). Connects lazily, so a fetcher that is still starting is no error.
    pub fn remote_with(url: &str, options: &RemoteOptions) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                anyhow::anyhow!("--fetcher `{url}` must be an http:// or https:// URL such as http://HOST:PORT or https://HOST")
            })?;
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| {
                anyhow::anyhow!(
                    "--fetcher `{url}` is not a URL ({e}); give http://HOST:PORT or https://HOST"
                )
            })?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if parsed.scheme() == "https" {
            endpoint = with_tls(endpoint, url)?;
        } else if !matches!(options.auth, Auth::None) && !is_loopback(&parsed) {
            tracing::warn!(fetcher = %url, "credentials go to this fetcher over plain http; anyone on the way can read them: use https://");
        }
        // Each lazily connected channel is its own HTTP/2 connection.
        let clients = (0..options.connections.max(1))
            .map(|_| {
                FetcherClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20)
            })
            .collect();
        Ok(Self::Remote(Arc::new(Remote {
            url: url.to_string(),
            audience: parsed.origin().ascii_serialization(),
            clients,
            next: AtomicUsize::new(0),
            auth: options.auth.clone(),
        })))
    }

    /// A name for logs and the lease table.
    pub fn name(&self) -> &str {
        match self {
            Self::Local(_) => "in-process",
            Self::Remote(r) => &r.url,
        }
    }

    /// How this fetcher is authenticated to (`in-process` needs nothing).
    pub fn auth_mode(&self) -> &'static str {
        match self {
            Self::Local(_) => "in-process",
            Self::Remote(r) => r.auth.mode(),
        }
    }

    /// The ID-token audience of a remote fetcher.
    pub fn audience(&self) -> Option<&str> {
        match self {
            Self::Local(_) => None,
            Self::Remote(r) => Some(&r.audience),
        }
    }

    /// Makes sure a credential can be had before any lease is sent (an ID token is minted
    /// and cached now), so a misconfiguration stops the run at its start.
    pub async fn authenticate(&self) -> anyhow::Result<()> {
        if let Self::Remote(r) = self {
            if let Auth::Google(tokens) = &r.auth {
                tokens.token(&r.audience).await?;
                tracing::info!(fetcher = %r.url, audience = %r.audience, source = %tokens.describe(), "ID token for the fetcher ready");
            }
        }
        Ok(())
    }

    /// Starts a lease and returns its events. A remote fetcher's refusal arrives as the
    /// error here, whether it came as the call's answer or as its stream's first item.
    pub async fn fetch(&self, lease: Lease) -> Result<Events, Status> {
        match self {
            Self::Local(service) => {
                let response = Fetcher::fetch(service, Request::new(lease)).await?;
                Ok(response.into_inner().boxed())
            }
            Self::Remote(remote) => remote.fetch(lease).await,
        }
    }
}

impl Remote {
    /// Sends the lease on the next connection; with ID tokens, a refused token is
    /// replaced and the lease sent once more.
    async fn fetch(&self, lease: Lease) -> Result<Events, Status> {
        let Auth::Google(tokens) = &self.auth else {
            return self.send(lease).await;
        };
        match self.send(lease.clone()).await {
            Err(status) if status.code() == Code::Unauthenticated => {
                tracing::info!(fetcher = %self.url, "the fetcher refused the ID token; minting a new one and trying once more");
                tokens.invalidate(&self.audience).await;
                self.send(lease).await
            }
            result => result,
        }
    }

    async fn send(&self, lease: Lease) -> Result<Events, Status> {
        let mut request = Request::new(lease);
        if let Some(value) = self.credential().await? {
            request.metadata_mut().insert("authorization", value);
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut stream = self.clients[at].clone().fetch(request).await?.into_inner();
        // An HTTP-level refusal (Cloud Run's 401/403/429) surfaces as the first item.
        match stream.next().await {
            Some(Err(status)) => Err(status),
            first => Ok(futures::stream::iter(first).chain(stream).boxed()),
        }
    }

    /// The `authorization` value for a call, if this fetcher gets one.
    async fn credential(
        &self,
    ) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, Status> {
        let token = match &self.auth {
            Auth::None => return Ok(None),
            Auth::Token(token) => token.to_string(),
            // Not the fetcher's fault: the lease goes back uncounted, the URL rests.
            Auth::Google(tokens) => tokens
                .token(&self.audience)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?,
        };
        bearer(&token).map(Some).map_err(Status::unauthenticated)
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// TLS with the system's trust roots, or the bundled webpki roots where the system has
/// none.
fn with_tls(endpoint: Endpoint, url: &str) -> anyhow::Result<Endpoint> {
    match endpoint
        .clone()
        .tls_config(ClientTlsConfig::new().with_native_roots())
    {
        Ok(endpoint) => Ok(endpoint),
        Err(e) => {
            tracing::debug!(error = %e, "no usable system trust roots; using the bundled webpki roots");
            endpoint
                .tls_config(ClientTlsConfig::new().with_webpki_roots())
                .map_err(|e| anyhow::anyhow!("TLS for --fetcher {url}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_audience_is_the_service_url_and_bad_urls_name_the_flag() {
        for (url, audience) in [
            ("https://svc-abc.a.run.app", "https://svc-abc.a.run.app"),
            ("https://svc-abc.a.run.app/", "https://svc-abc.a.run.app"),
            ("https://svc.example:443", "https://svc.example"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ] {
            let handle = FetcherHandle::remote(url).expect(url);
            assert_eq!(handle.audience(), Some(audience), "{url}");
            assert_eq!(handle.name(), url);
        }
        for bad in ["127.0.0.1:8080", "ftp://x", "https://"] {
            let err = FetcherHandle::remote(bad).err().expect(bad).to_string();
            assert!(err.contains("--fetcher"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_url_gets_the_connections_asked_for() {
        let options = RemoteOptions {
            connections: 3,
            auth: Auth::Token("t".into()),
        };
        let FetcherHandle::Remote(remote) =
            FetcherHandle::remote_with("http://127.0.0.1:1", &options).unwrap()
        else {
            panic!("remote");
        };
        assert_eq!(remote.clients.len(), 3);
        assert_eq!(remote.auth.mode(), "token");
    }
}
