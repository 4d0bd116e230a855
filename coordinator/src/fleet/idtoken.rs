//! Google-signed ID tokens for calling fetchers behind Cloud Run's IAM check: minted by the
//! metadata server or from a service-account key, cached per audience, refreshed early.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use serde::Deserialize;
use tokio::sync::Mutex;

/// A token is replaced this long before its `exp`.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The metadata server when `GCE_METADATA_HOST` is not set.
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// How long one request to the metadata server or a token endpoint may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no ID token could be had. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("--fetcher-auth google: cannot get an ID token from the metadata server at GCE_METADATA_HOST={host} ({reason}). Run the coordinator on Google Cloud, point GCE_METADATA_HOST at a metadata server, or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file")]
    Metadata { host: String, reason: String },
    #[error("--fetcher-auth google: GOOGLE_APPLICATION_CREDENTIALS={path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("--fetcher-auth google: the token endpoint {token_uri} of the key GOOGLE_APPLICATION_CREDENTIALS={path} gave no ID token ({reason}); check that the key is valid and its service account enabled")]
    Exchange {
        path: String,
        token_uri: String,
        reason: String,
    },
    #[error("--fetcher-auth google: {from} returned something that is not an ID token ({reason})")]
    Malformed { from: String, reason: String },
}

/// The fields of a service-account key file that signing needs.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    client_email: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    private_key_id: String,
    #[serde(default)]
    token_uri: String,
}

/// A parsed service-account key.
struct ServiceAccount {
    path: String,
    email: String,
    key_id: String,
    token_uri: String,
    key: jsonwebtoken::EncodingKey,
}

/// Where tokens come from.
enum Source {
    Metadata { host: String },
    Key(Box<ServiceAccount>),
}

/// A token and when it expires (Unix seconds).
struct Cached {
    token: String,
    exp: u64,
}

/// Mints and caches ID tokens, one per audience.
pub struct IdTokens {
    source: Source,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
}

impl IdTokens {
    /// Application Default Credentials, as Google's libraries read them: a key file named by
    /// `GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server at `GCE_METADATA_HOST`
    /// (default `metadata.google.internal`).
    pub fn from_env() -> Result<Self, IdTokenError> {
        let source = match std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
            Ok(path) if !path.is_empty() => Source::Key(Box::new(ServiceAccount::read(path)?)),
            _ => Source::Metadata {
                host: std::env::var("GCE_METADATA_HOST")
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_string()),
            },
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| IdTokenError::Metadata {
                host: String::new(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            source,
            http,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Where tokens come from, for logs.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Metadata { host } => format!("the metadata server at {host}"),
            Source::Key(sa) => format!("the service-account key {} ({})", sa.path, sa.email),
        }
    }

    /// A token for `audience`: the cached one unless it expires within
    /// [`REFRESH_BEFORE`]. One caller mints at a time, so many leases cost one request.
    pub async fn token(&self, audience: &str) -> Result<String, IdTokenError> {
        let mut cache = self.cache.lock().await;
        let now = unix_now();
        if let Some(c) = cache.get(audience) {
            if now + REFRESH_BEFORE.as_secs() < c.exp {
                return Ok(c.token.clone());
            }
        }
        match self.mint(audience).await {
            Ok((token, exp)) => {
                tracing::debug!(audience, exp, source = %self.describe(), "new ID token");
                cache.insert(audience.to_string(), Cached { token, exp });
                Ok(cache[audience].token.clone())
            }
            // A refresh that failed while the old token is still good: use that.
            Err(e) => match cache.get(audience).filter(|c| now < c.exp) {
                Some(c) => {
                    tracing::warn!(audience, error = %e, "could not refresh the ID token; using the current one until it expires");
                    Ok(c.token.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Forgets the token for `audience` (a fetcher refused it), so the next call mints one.
    pub async fn invalidate(&self, audience: &str) {
        self.cache.lock().await.remove(audience);
    }

    /// A new token and its expiry.
    async fn mint(&self, audience: &str) -> Result<(String, u64), IdTokenError> {
        let (token, from) = match &self.source {
            Source::Metadata { host } => (
                self.ask_metadata(host, audience).await?,
                format!("the metadata server at {host}"),
            ),
            Source::Key(sa) => (
                sa.exchange(&self.http, audience).await?,
                sa.token_uri.clone(),
            ),
        };
        let exp = expiry(&token).map_err(|reason| IdTokenError::Malformed { from, reason })?;
        Ok((token, exp))
    }

    async fn ask_metadata(&self, host: &str, audience: &str) -> Result<String, IdTokenError> {
        let fail = |reason: String| IdTokenError::Metadata {
            host: host.to_string(),
            reason,
        };
        let url =
            format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/identity");
        let response = self
            .http
            .get(&url)
            .query(&[("audience", audience), ("format", "full")])
            .header("Metadata-Flavor", "Google")
            .send();
        Ok(answer_body(response, fail).await?.trim().to_string())
    }
}

impl ServiceAccount {
    fn read(path: String) -> Result<Self, IdTokenError> {
        let fail = |reason: String| IdTokenError::KeyFile {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(PathBuf::from(&path))
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
        let file: KeyFile = serde_json::from_str(&text)
            .map_err(|e| fail(format!("not a Google credentials JSON file: {e}")))?;
        if file.kind != "service_account" {
            return Err(fail(format!(
                "it holds `{}` credentials; ID tokens for a fetcher's URL need a service-account key (`\"type\": \"service_account\"`), or the metadata server (unset GOOGLE_APPLICATION_CREDENTIALS on Google Cloud)",
                file.kind
            )));
        }
        if file.client_email.is_empty() || file.token_uri.is_empty() {
            return Err(fail("it lacks client_email or token_uri".into()));
        }
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(file.private_key.as_bytes())
            .map_err(|e| fail(format!("its private_key is not an RSA key in PEM ({e})")))?;
        Ok(Self {
            path: path.clone(),
            email: file.client_email,
            key_id: file.private_key_id,
            token_uri: file.token_uri,
            key,
        })
    }

    /// Google's documented flow: a JWT signed with the key (RS256) carrying
    /// `target_audience`, exchanged at the key's `token_uri` for an `id_token`.
    async fn exchange(
        &self,
        http: &reqwest::Client,
        audience: &str,
    ) -> Result<String, IdTokenError> {
        let fail = |reason: String| IdTokenError::Exchange {
            path: self.path.clone(),
            token_uri: self.token_uri.clone(),
            reason,
        };
        let now = unix_now();
        let claims = serde_json::json!({
            "iss": self.email,
            "sub": self.email,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
            "target_audience": audience,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = (!self.key_id.is_empty()).then(|| self.key_id.clone());
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| fail(format!("signing failed: {e}")))?;
        let response = http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send();
        let body = answer_body(response, fail).await?;
        #[derive(Deserialize)]
        struct Answer {
            id_token: Option<String>,
        }
        serde_json::from_str::<Answer>(&body)
            .ok()
            .and_then(|a| a.id_token)
            .ok_or_else(|| fail("the answer has no id_token".into()))
    }
}

/// The body of a token request's answer; a failed request or a non-success status is
/// `fail(reason)`.
async fn answer_body<E>(
    sent: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    fail: impl Fn(String) -> E,
) -> Result<String, E> {
    let response = sent.await.map_err(|e| fail(error_chain(&e)))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| fail(error_chain(&e)))?;
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}: {}", excerpt(&body))));
    }
    Ok(body)
}

/// The `exp` claim (Unix seconds) of a JWT, read without checking its signature (the
/// fetcher's side checks it; the coordinator only needs to know when to refresh).
pub fn expiry(token: &str) -> Result<u64, String> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT: it does not have three dot-separated parts".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("its payload is not base64url: {e}"))?;
    #[derive(Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    serde_json::from_slice::<Claims>(&bytes)
        .map_err(|e| format!("its payload is not JSON: {e}"))?
        .exp
        .ok_or_else(|| "its payload has no exp".into())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An error with its causes, for a connection that failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The start of an error body, on one line.
fn excerpt(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            enc.encode(r#"{"alg":"RS256"}"#),
            enc.encode(payload)
        )
    }

    #[test]
    fn expiry_is_read_from_the_payload() {
        assert_eq!(
            expiry(&jwt(r#"{"exp":1700000000,"aud":"x"}"#)),
            Ok(1_700_000_000)
        );
        assert!(expiry(&jwt(r#"{"aud":"x"}"#))
            .unwrap_err()
            .contains("no exp"));
        assert!(expiry("opaque-token").unwrap_err().contains("not a JWT"));
        assert!(expiry("a.!!!.c").unwrap_err().contains("base64url"));
    }

    #[test]
    fn error_bodies_are_cut_short() {
        let long = "x".repeat(500);
        assert_eq!(excerpt(&long).chars().count(), 201);
        assert_eq!(excerpt("a\n  b"), "a b");
    }
}
