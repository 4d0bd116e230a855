//! HTTP to the origins: one pooled client, each lease paced on the run's grid, retries
//! with exponential backoff and jitter that honour `Retry-After`, redirects followed by
//! hand so a token goes only to URLs under its own host and path.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use reqwest::{header, StatusCode};
use url::Url;

use crate::{
    source::events::{ClientGone, EventSink},
    source::npmrc::Credentials,
    source::pace::{Limiter, Pace},
};

/// Redirects followed for one request before it fails.
pub const MAX_REDIRECTS: usize = 10;

/// Longest `Retry-After` honoured; a larger one is capped so a lease cannot stall for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Why a request did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status {
        url: String,
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    #[error("{url} served a body that is not valid JSON: {message}")]
    InvalidJson { url: String, message: String },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
    /// The origin answered in a way it must not (an `_all_docs` page that ignores
    /// `startkey`, skips rows, or is far too large): not asked again at once, but the work
    /// may be tried again by a new lease, since a cache or proxy may be having a bad moment.
    #[error("{url}: {message}")]
    Misbehaved { url: String, message: String },
    #[error("writing {uri} failed: {message}")]
    Store { uri: String, message: String },
    #[error(transparent)]
    InvalidName(#[from] crate::store::names::InvalidName),
    #[error("{url} served a document of more than {limit} bytes decoded; nothing is stored (raise --max-document-bytes if such a document is genuine)")]
    TooLarge { url: String, limit: u64 },
    #[error("{url} ignored the abbreviated Accept header (it answered Content-Type `{content_type}`, not application/vnd.npm.install-v1+json); nothing is stored: use --accept full with this registry")]
    NotAbbreviated { url: String, content_type: String },
    #[error("the client went away")]
    ClientGone,
}

impl From<ClientGone> for FetchError {
    fn from(_: ClientGone) -> Self {
        FetchError::ClientGone
    }
}

impl FetchError {
    /// Whether trying again (now or later) could help.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Transport { .. }
            | Self::InvalidJson { .. }
            | Self::Store { .. }
            | Self::Misbehaved { .. } => true,
            Self::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            Self::Protocol { .. }
            | Self::ClientGone
            | Self::InvalidName(_)
            | Self::TooLarge { .. }
            | Self::NotAbbreviated { .. } => false,
        }
    }

    /// Whether the same request should be sent again at once.
    fn retry_now(&self) -> bool {
        self.retryable() && !matches!(self, Self::Misbehaved { .. })
    }

    /// The HTTP status, when the failure was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn transport(url: &str, err: &reqwest::Error) -> Self {
        // reqwest's Display names the URL; describe the cause without it.
        let mut message = describe(err).to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self::Transport {
            url: redact(url),
            message,
        }
    }
}

/// What went wrong with a request, in words that name no URL (reqwest's own Display does).
fn describe(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "the response body broke off"
    } else {
        "transport error"
    }
}

/// A URL fit for logs: no user name or password.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// How a lease retries a request.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            base: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Request counters of one lease.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    /// Responses that were 429 or 503.
    pub throttled: AtomicU64,
}

/// One lease's view of the network: the shared client, its pace, retries, counters, and
/// where it reports that the origin throttles.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    credentials: Arc<Credentials>,
    limiter: Option<Arc<Limiter>>,
    policy: RetryPolicy,
    throttle_sink: Option<EventSink>,
    pub counters: Arc<Counters>,
}

/// Builds the process-wide client: pooled connections, gzip, HTTP/2 when offered; no
/// redirects of its own ([`Http::send`] follows them, choosing the token per hop).
pub fn build_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("alldocs/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .gzip(true)
        .build()
        .expect("the HTTP client's configuration is valid")
}

impl Http {
    pub fn new(
        client: reqwest::Client,
        credentials: Arc<Credentials>,
        pace: Pace,
        policy: RetryPolicy,
    ) -> Self {
        Self {
            client,
            credentials,
            limiter: Limiter::new(pace).map(Arc::new),
            policy,
            throttle_sink: None,
            counters: Arc::default(),
        }
    }

    /// Reports every 429 and 503 the origin answers to `sink` as a `Throttled` event.
    pub fn report_throttling_to(mut self, sink: EventSink) -> Self {
        self.throttle_sink = Some(sink);
        self
    }

    /// Waits for this lease's pace, then counts the request.
    pub async fn admit(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A GET of `url` with `accept`, following up to [`MAX_REDIRECTS`] redirects. Each hop
    /// waits for the pace and carries the token configured for its own URL (host, port and
    /// path prefix), if any; a redirect from https to http is refused.
    pub async fn send(&self, url: &str, accept: &str) -> Result<reqwest::Response, FetchError> {
        let mut current = Url::parse(url).map_err(|e| FetchError::Protocol {
            url: redact(url),
            message: format!("not a URL: {e}"),
        })?;
        for _ in 0..=MAX_REDIRECTS {
            self.admit().await;
            let mut req = self
                .client
                .get(current.clone())
                .header("npm-replication-opt-in", "true")
                .header(header::ACCEPT, accept);
            if let Some(token) = self.credentials.token_for(current.as_str()) {
                req = req.bearer_auth(token.expose());
            }
            let metrics = super::metrics::metrics();
            metrics.requests_in_flight.inc();
            let sent = req.send().await;
            metrics.requests_in_flight.dec();
            metrics.answered(sent.as_ref().ok().map(|r| r.status().as_u16()));
            let resp = sent.map_err(|e| FetchError::transport(current.as_str(), &e))?;
            self.note_throttling(&resp);
            match redirect_target(&current, &resp)? {
                Some(next) => current = next,
                None => return Ok(resp),
            }
        }
        Err(FetchError::Protocol {
            url: redact(url),
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    fn note_throttling(&self, resp: &reqwest::Response) {
        let status = resp.status();
        if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
            return;
        }
        self.counters.throttled.fetch_add(1, Ordering::Relaxed);
        super::metrics::metrics().throttled(status.as_u16());
        if let Some(sink) = &self.throttle_sink {
            let retry_after = retry_after_of(resp).unwrap_or_default();
            sink.try_throttled(u32::from(status.as_u16()), retry_after);
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retries are spent. Each call of
    /// `op` must call [`Http::admit`] before it sends.
    pub async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.base)
            .with_max_delay(self.policy.max_delay)
            .with_factor(2.0)
            .with_max_times(self.policy.max_retries as usize)
            .with_jitter();
        let counters = self.counters.clone();
        op.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(FetchError::retry_now)
            .adjust(|err: &FetchError, delay| match err.retry_after() {
                Some(after) => delay.map(|_| after.min(MAX_RETRY_AFTER)),
                None => delay,
            })
            .notify(|err: &FetchError, delay| {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                super::metrics::metrics().retries.inc();
                tracing::debug!(%what, error = %err, ?delay, "retrying");
            })
            .await
    }
}

/// Where a redirect response points, if it is one to follow (301, 302, 303, 307, 308
/// with a `Location`); an https → http redirect is an error.
fn redirect_target(current: &Url, resp: &reqwest::Response) -> Result<Option<Url>, FetchError> {
    let followed = [301, 302, 303, 307, 308];
    if !followed.contains(&resp.status().as_u16()) {
        return Ok(None);
    }
    let Some(location) = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    let protocol = |message: String| FetchError::Protocol {
        url: redact(current.as_str()),
        message,
    };
    let next = current
        .join(location)
        .map_err(|e| protocol(format!("redirect to an invalid Location: {e}")))?;
    match (current.scheme(), next.scheme()) {
        ("https", "https") | ("http", "http" | "https") => Ok(Some(next)),
        ("https", "http") => Err(protocol(format!(
            "redirect from https to http ({}) refused",
            redact(next.as_str())
        ))),
        (_, other) => Err(protocol(format!("redirect to a {other}: URL refused"))),
    }
}

/// The response's `Retry-After`, as a wait.
fn retry_after_of(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// The whole body of `resp`, or `None` as soon as it passes `limit` bytes (nothing more is
/// read): for answers the caller holds in memory, each with a bound of its own.
pub async fn body_within(
    resp: &mut reqwest::Response,
    url: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = (resp.chunk().await).map_err(|e| FetchError::transport(url, &e))? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Turns a non-success status into an error, with `Retry-After` (seconds or HTTP date).
pub fn status_error(url: &str, resp: &reqwest::Response) -> FetchError {
    FetchError::Status {
        url: redact(url),
        status: resp.status(),
        retry_after: retry_after_of(resp),
    }
}

/// `Retry-After` as a wait: delay-seconds, or an HTTP date (IMF-fixdate and the obsolete
/// forms, read by the `httpdate` crate; RFC 3339 also accepted). A past date means now.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = humantime::parse_rfc3339_weak(value)
        .ok()
        .or_else(|| httpdate::parse_http_date(value).ok())?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn retry_after_a_future_date_is_the_time_until_it() {
        let at = std::time::SystemTime::now() + Duration::from_secs(90);
        let wait = parse_retry_after(&httpdate::fmt_http_date(at)).expect("an HTTP date");
        // The date has whole seconds and a moment passes: 89 to 90 seconds.
        assert!(
            (Duration::from_secs(88)..=Duration::from_secs(90)).contains(&wait),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 UTC"), None);
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        let err = |status: u16| FetchError::Status {
            url: "u".into(),
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
        };
        assert!(err(429).retryable());
        assert!(err(503).retryable());
        assert!(!err(401).retryable());
        assert!(!err(400).retryable());
    }

    fn redirect(status: u16, location: &str) -> reqwest::Response {
        reqwest::Response::from(
            ::http::Response::builder()
                .status(status)
                .header("location", location)
                .body(Vec::<u8>::new())
                .unwrap(),
        )
    }

    #[test]
    fn redirects_are_followed_but_never_down_to_http() {
        let https = Url::parse("https://registry.example/npm/x").unwrap();
        let http = Url::parse("http://registry.example/npm/x").unwrap();
        let next = |from: &Url, status, to| redirect_target(from, &redirect(status, to));
        assert_eq!(
            next(&https, 302, "/other/x").unwrap().unwrap().as_str(),
            "https://registry.example/other/x"
        );
        assert!(next(&http, 301, "https://registry.example/x")
            .unwrap()
            .is_some());
        let refused = next(&https, 307, "http://registry.example/x").unwrap_err();
        assert!(refused.to_string().contains("https to http"), "{refused}");
        assert!(next(&https, 302, "ftp://registry.example/x").is_err());
        assert!(
            next(&https, 304, "/x").unwrap().is_none(),
            "304 is not a redirect"
        );
    }

    #[test]
    fn redacted_urls_carry_no_credentials() {
        assert_eq!(
            redact("https://user:pw@registry.example/x"),
            "https://registry.example/x"
        );
    }
}
