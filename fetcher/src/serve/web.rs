//! Plain HTTP beside gRPC on the same port: a request whose `content-type` is not gRPC's
//! is answered by an axum router (`/metrics` here; the coordinator adds its status page).
//! One port because Cloud Run serves one, and a scraper or a browser needs no other.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use prometheus_client::{encoding, registry::Registry};

/// The prefix of every alldocs metric.
pub const PREFIX: &str = "alldocs";

/// A registry with this process's origin and lease metrics.
pub fn fetcher_registry() -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    crate::source::metrics::metrics().register(&mut registry);
    registry
}

/// The metrics of `registry` in the format the scraper asks for: OpenMetrics text when
/// its `Accept` names it (Prometheus does), else the Prometheus text format 0.0.4 (what
/// `curl` and older tools read).
pub fn metrics_response(headers: &HeaderMap, registry: &Registry) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (
            encoding::text::encode(&mut body, registry),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            encoding::prometheus_text::encode(&mut body, registry),
            encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    if let Err(e) = encoded {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode the metrics: {e}"),
        )
            .into_response();
    }
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// What a path nobody serves answers: gRPC's UNIMPLEMENTED to a gRPC call (as tonic
/// would), a plain 404 to anything else.
pub async fn fallback(headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("no such service or method").into_http();
    }
    (
        StatusCode::NOT_FOUND,
        "not found: this port answers gRPC, GET /metrics and, on a coordinator, its status page at /\n",
    )
        .into_response()
}

/// The fetcher's HTTP routes: `GET /metrics`, open like health (counts only, no names).
pub fn fetcher_router() -> axum::Router {
    let registry = std::sync::Arc::new(fetcher_registry());
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| {
                let registry = registry.clone();
                async move { metrics_response(&headers, &registry) }
            }),
        )
        .fallback(fallback)
}
