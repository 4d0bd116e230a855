//! **Part `web`: plain HTTP on the API's port.** `/metrics` for Prometheus ([`metrics`]),
//! the live status page at `/` and the JSON it polls, `/api/status` ([`status`]), all
//! behind the admin token when one is set ([`auth`]). The page's HTML, CSS and script are
//! built into the binary (`assets/`): it works with no network beyond this port.
//!
//! Uses: `api`, `fleet`, `checkpoint`.

pub mod auth;
pub mod metrics;
pub mod status;

use std::sync::{Arc, Mutex, Weak};

use alldocs_fetcher::serve::web::{fallback, metrics_response};
use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Form, Json, Router,
};
use prometheus_client::registry::Registry;

use crate::{
    api::CoordinatorService,
    fleet::{health::FetcherPool, rates::Stats},
    web::{
        auth::{Access, Gate},
        metrics::Live,
        status::{History, Setting},
    },
};

const PAGE: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// Everything the HTTP surface reads.
pub struct Web {
    service: CoordinatorService,
    pool: Arc<FetcherPool>,
    live: Arc<Live>,
    registry: Registry,
    history: History,
    gate: Gate,
    settings: Vec<Setting>,
}

impl Web {
    /// The surface of one job: its progress, fetchers, settings (shown as given: pass no
    /// secret) and admin token.
    pub fn new(
        service: CoordinatorService,
        pool: Arc<FetcherPool>,
        settings: Vec<Setting>,
        token: Option<&str>,
    ) -> Arc<Self> {
        let live = Arc::new(Live {
            counts: Mutex::default(),
            stats: service.stats.clone(),
            pool: pool.clone(),
        });
        let registry = metrics::registry(live.clone());
        let web = Arc::new(Self {
            service,
            pool,
            live,
            registry,
            history: History::default(),
            gate: Gate::new(token),
            settings,
        });
        tokio::spawn(sample(Arc::downgrade(&web)));
        web
    }

    fn stats(&self) -> &Stats {
        &self.service.stats
    }

    /// The routes, for the API's server to serve beside gRPC.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(page))
            .route(
                "/app.js",
                get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
            )
            .route("/app.css", get(|| asset(STYLE, "text/css; charset=utf-8")))
            .route("/login", post(login))
            .route("/logout", post(logout))
            .route("/api/status", get(api_status))
            .route("/metrics", get(scrape))
            .fallback(fallback)
            .with_state(self.clone())
    }
}

/// Samples the throughput every [`status::SAMPLE_EVERY`] while the surface is served.
async fn sample(web: Weak<Web>) {
    let mut tick = tokio::time::interval(status::SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let Some(web) = web.upgrade() else { return };
        web.history.sample(web.stats());
    }
}

/// Headers every answer carries: nothing is framed, sniffed or cached, and the page may
/// load only its own script and style.
fn guarded(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    guarded(response)
}

/// The login form, with a line saying why it is shown.
fn login_page(status: StatusCode, message: &str) -> Response {
    guarded((status, Html(LOGIN.replace("{{message}}", message))).into_response())
}

async fn page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match web.gate.check(&headers) {
        Access::Allowed => guarded(Html(PAGE).into_response()),
        Access::Missing => login_page(
            StatusCode::UNAUTHORIZED,
            "This coordinator is guarded by its admin token (ALLDOCS_ADMIN_TOKEN).",
        ),
        Access::Wrong => login_page(
            StatusCode::UNAUTHORIZED,
            "The token sent in the Authorization header is not this coordinator's.",
        ),
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !web.gate.guarded() {
        return guarded(Redirect::to("/").into_response());
    }
    match web.gate.login(&form.token, auth::over_https(&headers)) {
        Some(cookie) => {
            let mut response = Redirect::to("/").into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            guarded(response)
        }
        None => login_page(
            StatusCode::UNAUTHORIZED,
            "That is not this coordinator's admin token; try again.",
        ),
    }
}

async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&web.gate.logout(&headers)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    guarded(response)
}

/// 401 for a machine: what to send.
fn refused(access: Access) -> Response {
    let why = match access {
        Access::Wrong => "the token sent does not match this coordinator's ALLDOCS_ADMIN_TOKEN",
        _ => "this coordinator requires its admin token: send `Authorization: Bearer <token>` with the value of its ALLDOCS_ADMIN_TOKEN",
    };
    let mut response = (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"alldocs\""),
    );
    guarded(response)
}

fn failed(e: impl std::fmt::Display) -> Response {
    guarded(
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the checkpoint could not be read: {e}\n"),
        )
            .into_response(),
    )
}

async fn scrape(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match web.gate.check(&headers) {
        Access::Allowed => {}
        denied => return refused(denied),
    }
    match web.service.checkpoint.call(|db| db.counts()).await {
        Ok(counts) => *web.live.counts.lock().expect("counts") = counts,
        Err(e) => return failed(e),
    }
    guarded(metrics_response(&headers, &web.registry))
}

async fn api_status(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match web.gate.check(&headers) {
        Access::Allowed => {}
        denied => return refused(denied),
    }
    match status_of(&web).await {
        Ok(status) => guarded(Json(status).into_response()),
        Err(e) => failed(e),
    }
}

/// Assembles the status document.
async fn status_of(web: &Web) -> Result<status::Status, crate::checkpoint::CheckpointError> {
    let progress = web.service.progress().await?;
    let (grid, failures) = web
        .service
        .checkpoint
        .call(|db| Ok((db.list_partitions()?, db.list_failures(20, None)?)))
        .await?;
    let (packuments, mut partitions, rate, eta_seconds) = status::figures(&progress);
    partitions.pending = grid.iter().filter(|p| p.status == "pending").count() as u64;
    partitions.leased = grid.iter().filter(|p| p.status == "leased").count() as u64;
    let stats = web.stats();
    Ok(status::Status {
        state: status::state_name(progress.state),
        guarded: web.gate.guarded(),
        generated_at_unix_ms: alldocs_proto::now_unix_ms(),
        elapsed_seconds: progress.elapsed_ms as f64 / 1000.0,
        packuments,
        partitions,
        bytes_stored: progress.bytes_stored,
        rows_indexed: progress.rows_indexed,
        rate,
        eta_seconds,
        rate_limit_current: progress.rate_limit_current,
        leases_open: progress.leases_in_flight,
        history: web.history.points(),
        grid: grid
            .into_iter()
            .map(|p| status::Cell {
                name: p.name,
                status: p.status,
                rows: p.rows,
                attempts: p.attempts,
            })
            .collect(),
        fetchers: web
            .pool
            .views()
            .into_iter()
            .map(|v| status::Fetcher {
                name: alldocs_fetcher::source::http::redact(&v.name),
                healthy: v.healthy,
                failures: v.failures,
                resting_seconds: v.resting_for.map(|d| d.as_secs_f64()),
                last_error: v.last_error,
            })
            .collect(),
        failures: status::Failures {
            total: failures.total,
            failed: failures
                .failures
                .into_iter()
                .map(|f| status::Failure {
                    kind: f.kind,
                    name: f.name,
                    reason: f.reason,
                    attempts: f.attempts,
                })
                .collect(),
            recent: stats
                .recent_failures()
                .into_iter()
                .map(|f| status::Recent {
                    at_unix_ms: f.at_unix_ms,
                    name: f.name,
                    reason: f.reason,
                    retryable: f.retryable,
                })
                .collect(),
        },
        settings: web.settings.clone(),
    })
}
