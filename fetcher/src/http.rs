//! HTTP to the origins: one pooled client, a GCRA rate limit per lease, retries with
//! exponential backoff and jitter that honour `Retry-After`, and tokens only for their host.

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{header, RequestBuilder, StatusCode};

use crate::npmrc::Credentials;

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
    #[error("the client went away")]
    ClientGone,
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
            Self::Protocol { .. } | Self::ClientGone => false,
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

    pub(crate) fn transport(url: &str, err: &reqwest::Error) -> Self {
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
}

/// One lease's view of the network: the shared client, its rate limit, retries, counters.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    credentials: Arc<Credentials>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    policy: RetryPolicy,
    pub counters: Arc<Counters>,
}

/// Builds the process-wide client: pooled connections, gzip, HTTP/2 when offered.
pub fn build_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("alldocs/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .gzip(true)
        .build()
        .expect("the HTTP client's configuration is valid")
}

impl Http {
    /// `rate` is requests per second for this lease (0 = unlimited); `burst` how many may
    /// start at once.
    pub fn new(
        client: reqwest::Client,
        credentials: Arc<Credentials>,
        rate: f64,
        burst: u32,
        policy: RetryPolicy,
    ) -> Self {
        let limiter = (rate > 0.0 && rate.is_finite()).then(|| {
            let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
            let burst = NonZeroU32::new(burst.max(1)).expect("burst is at least 1");
            let quota = Quota::with_period(period)
                .expect("period is positive")
                .allow_burst(burst);
            Arc::new(RateLimiter::direct(quota))
        });
        Self {
            client,
            credentials,
            limiter,
            policy,
            counters: Arc::default(),
        }
    }

    /// A GET with the token for its host (if any) and npm's replication opt-in header.
    pub fn get(&self, url: &str) -> RequestBuilder {
        let mut req = self
            .client
            .get(url)
            .header("npm-replication-opt-in", "true");
        if let Some(token) = self.credentials.token_for(url) {
            req = req.bearer_auth(token.expose());
        }
        req
    }

    /// Waits for this lease's rate limit, then counts the request.
    pub async fn admit(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
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
                tracing::debug!(%what, error = %err, ?delay, "retrying");
            })
            .await
    }
}

/// Turns a non-success status into an error, with `Retry-After` (seconds or HTTP date).
pub fn status_error(url: &str, resp: &reqwest::Response) -> FetchError {
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    FetchError::Status {
        url: redact(url),
        status: resp.status(),
        retry_after,
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

    #[test]
    fn redacted_urls_carry_no_credentials() {
        assert_eq!(
            redact("https://user:pw@registry.example/x"),
            "https://registry.example/x"
        );
    }
}
