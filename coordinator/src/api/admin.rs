//! The admin token that guards the coordinator's own API: read from `ALLDOCS_ADMIN_TOKEN`,
//! required beyond loopback, checked in constant time on every call.

use std::{net::SocketAddr, sync::Arc};

use subtle::ConstantTimeEq;
use tonic::{service::Interceptor, Request, Status};

/// The variable holding the admin token, on the coordinator and on its clients.
pub const ADMIN_TOKEN_ENV: &str = "ALLDOCS_ADMIN_TOKEN";

/// The admin token from the environment, if set and not empty.
pub fn admin_token() -> Option<String> {
    std::env::var(ADMIN_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
}

/// Checks that a `--listen` address beyond loopback comes with an admin token.
pub fn check_listen(listen: SocketAddr, token: Option<&str>) -> Result<(), String> {
    if listen.ip().is_loopback() || token.is_some() {
        return Ok(());
    }
    Err(format!(
        "--listen {listen} is reachable from other machines, and anyone there could steer the run (RetryFailed) or read it: set {ADMIN_TOKEN_ENV} to a secret (clients such as `coordinator status` send it from the same variable), or listen on 127.0.0.1"
    ))
}

/// Server side: every call must carry `authorization: Bearer <token>`, else
/// `UNAUTHENTICATED`. With no token configured, every call passes.
#[derive(Clone, Default)]
pub struct AdminGuard {
    token: Option<Arc<[u8]>>,
}

impl AdminGuard {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.as_bytes())),
        }
    }
}

impl Interceptor for AdminGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let Some(sent) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(format!(
                "this coordinator requires its admin token: send `authorization: Bearer <token>` with the value of its {ADMIN_TOKEN_ENV} (`coordinator status` sends {ADMIN_TOKEN_ENV} from its environment)"
            )));
        };
        let presented = sent.as_bytes().strip_prefix(b"Bearer ").unwrap_or_default();
        if bool::from(presented.ct_eq(expected)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(format!(
                "the admin token sent does not match this coordinator's {ADMIN_TOKEN_ENV}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(guard: &mut AdminGuard, header: Option<&str>) -> Result<(), Status> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        guard.call(request).map(|_| ())
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let mut guard = AdminGuard::new(Some("s3cret"));
        assert!(call(&mut guard, Some("Bearer s3cret")).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let status = call(&mut guard, wrong).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{wrong:?}");
            assert!(status.message().contains(ADMIN_TOKEN_ENV));
            assert!(!status.message().contains("s3cret"), "{status:?}");
        }
        assert!(call(&mut AdminGuard::new(None), None).is_ok());
    }

    #[test]
    fn listening_beyond_loopback_needs_a_token() {
        for open in ["127.0.0.1:1", "127.8.0.1:1", "[::1]:1"] {
            assert!(check_listen(open.parse().unwrap(), None).is_ok(), "{open}");
        }
        for wide in ["0.0.0.0:1", "[::]:1", "10.0.0.5:1"] {
            let err = check_listen(wide.parse().unwrap(), None).unwrap_err();
            assert!(err.contains(ADMIN_TOKEN_ENV), "{err}");
            assert!(check_listen(wide.parse().unwrap(), Some("t")).is_ok());
        }
    }
}
