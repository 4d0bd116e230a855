//! What a job serves on its port: the gRPC API behind the admin token, and beside it the
//! HTTP surface (`web`) with the run's settings as a person may see them.

use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    api::admin::{self, AdminGuard},
    api::CoordinatorService,
    fleet::lease::Settings,
    run::args::JobArgs,
    run::scheduler::Scheduler,
    web::{status::Setting, Web},
};

/// Serves the API, and the HTTP surface beside it, on `listener`.
pub async fn serve_api(
    args: &JobArgs,
    service: &CoordinatorService,
    scheduler: &Scheduler,
    listener: TcpListener,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let token = admin::admin_token();
    let web = Web::new(
        service.clone(),
        scheduler.fetchers.clone(),
        shown_settings(args, &scheduler.settings),
        token.as_deref(),
    );
    let guard = AdminGuard::new(token.as_deref());
    let server = crate::api::serve(service.clone(), guard, listener, web.router()).await;
    tokio::spawn(server)
}

/// The run's settings as the status page shows them: what was asked for, URLs without
/// credentials, no token.
fn shown_settings(args: &JobArgs, s: &Settings) -> Vec<Setting> {
    let origin = |name, url: &str| Setting::url(name, url);
    let mut shown = vec![
        Setting::new("checkpoint", args.db.display()),
        Setting::url("store", &s.store),
        Setting::new("layout", s.layout.as_str()),
        origin("registry", &s.registry),
        origin("replicate origin", &s.replicate_origin),
        Setting::new(
            "fetchers",
            match args.fetchers.len() {
                0 => "in-process".to_string(),
                n => format!("{n} remote"),
            },
        ),
        Setting::new(
            "rate limit",
            match s.rate_limit {
                r if r > 0.0 => format!("{r} requests/s"),
                _ => "none".to_string(),
            },
        ),
        Setting::new("leases in flight", s.max_in_flight),
        Setting::new("concurrency per lease", s.concurrency),
        Setting::new("lease size", s.lease_size),
        Setting::new(
            "lease duration",
            humantime::format_duration(s.lease_duration),
        ),
        Setting::new("page size", s.page_size),
        Setting::new("max retries", s.max_retries),
        Setting::new("max attempts", args.max_attempts),
    ];
    if args.follow {
        shown.push(Setting::new(
            "follow interval",
            humantime::format_duration(args.follow_interval),
        ));
    }
    shown
}
