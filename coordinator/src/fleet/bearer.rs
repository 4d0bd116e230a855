//! The `authorization: Bearer <token>` a client sends on gRPC calls: to fetchers (their
//! token, or a Google ID token) and to a coordinator's API (its admin token).

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
    Request, Status,
};

/// `Bearer <token>` as a header value marked sensitive (never indexed by HPACK, hidden
/// from `Debug`). Fails only for a token that is not visible ASCII.
pub fn bearer(token: &str) -> Result<MetadataValue<Ascii>, String> {
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token holds characters a header cannot carry (only visible ASCII)")?;
    value.set_sensitive(true);
    Ok(value)
}

/// Client side: adds `authorization: Bearer <token>` to every call, if a token is set.
#[derive(Clone, Default)]
pub struct SendBearer(pub Option<MetadataValue<Ascii>>);

impl Interceptor for SendBearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_value_is_sensitive() {
        let v = bearer("abc").unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "Bearer abc");
        assert!(!format!("{v:?}").contains("abc"));
        assert!(bearer("a\nb").is_err());
    }
}
