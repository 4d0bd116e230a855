//! Who may call `Fetch`: with `ALLDOCS_FETCHER_TOKEN` set, only callers that send it as
//! `authorization: Bearer <token>`, compared in constant time.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{service::Interceptor, Request, Status};

use crate::source::npmrc::Secret;

/// The environment variable holding the token every `Fetch` must carry.
pub const TOKEN_ENV: &str = "ALLDOCS_FETCHER_TOKEN";

/// A tonic interceptor for the Fetcher service: open, or requiring one bearer token.
#[derive(Clone, Debug, Default)]
pub struct BearerAuth {
    token: Option<Arc<Secret>>,
}

impl BearerAuth {
    /// Every call is let through (loopback, or a platform that authenticates callers).
    pub fn open() -> Self {
        Self::default()
    }

    /// Only calls carrying `authorization: Bearer <token>` are let through.
    pub fn token(token: Secret) -> Self {
        Self {
            token: Some(Arc::new(token)),
        }
    }

    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks one call's metadata; the token received is never echoed or logged.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let Some(value) = request.metadata().get("authorization") else {
            tracing::warn!(%peer, "a Fetch call without a bearer token was refused");
            return Err(Status::unauthenticated(format!(
                "this fetcher requires `authorization: Bearer <token>` on every Fetch: set {TOKEN_ENV} \
                 for the coordinator to the fetcher's token"
            )));
        };
        let presented = value
            .as_bytes()
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value.as_bytes()[7..].trim_ascii());
        let accepted = presented
            .map(|token| bool::from(token.ct_eq(expected.expose().as_bytes())))
            .unwrap_or(false);
        if accepted {
            return Ok(());
        }
        tracing::warn!(%peer, "a Fetch call with a wrong bearer token was refused");
        Err(Status::unauthenticated(format!(
            "this fetcher did not accept the bearer token: set {TOKEN_ENV} for the coordinator \
             to the same token as the fetcher's"
        )))
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn call(auth: &BearerAuth, header: Option<&str>) -> Result<(), Status> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        auth.check(&request)
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let auth = BearerAuth::token(Secret::new("s3cret-token"));
        assert!(call(&auth, Some("Bearer s3cret-token")).is_ok());
        assert!(call(&auth, Some("bearer s3cret-token")).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cret-tokem"),
            Some("Bearer s3cret"),
            Some("Bearer s3cret-token-and-more"),
            Some("Basic s3cret-token"),
            Some("s3cret-token"),
            Some("Bearer "),
        ] {
            let refused = call(&auth, wrong).unwrap_err();
            assert_eq!(refused.code(), Code::Unauthenticated, "{wrong:?}");
            assert!(refused.message().contains(TOKEN_ENV), "{refused:?}");
            assert!(!refused.message().contains("s3cret"), "{refused:?}");
        }
        assert!(call(&BearerAuth::open(), None).is_ok());
    }
}
