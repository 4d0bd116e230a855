//! `coordinator status`: progress (and the first failures) from a running coordinator.

use std::process::ExitCode;

use alldocs_proto::v1::{
    coordinator_client::CoordinatorClient, GetProgressRequest, ListFailuresRequest,
};
use tonic::{transport::Channel, Code, Status};

use crate::{
    api::admin::{self, ADMIN_TOKEN_ENV},
    cli::StatusArgs,
    fleet::bearer::{bearer, SendBearer},
    run::args::usage,
    run::display,
};

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let url = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let channel = Channel::from_shared(url.clone())
        .map_err(|e| usage(format!("--addr `{url}` is not an address ({e}); give HOST:PORT")))?
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot reach a coordinator at {url}: {e}; is `coordinator serve` running there? Pass --addr HOST:PORT")
        })?;
    let token = match admin::admin_token() {
        Some(t) => Some(bearer(&t).map_err(|e| usage(format!("{ADMIN_TOKEN_ENV}: {e}")))?),
        None => None,
    };
    let mut client = CoordinatorClient::with_interceptor(channel, SendBearer(token));
    let progress = client
        .get_progress(GetProgressRequest {})
        .await
        .map_err(|s| refused("GetProgress", &url, &s))?
        .into_inner();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&display::to_json(&progress))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", display::table(&progress));
    if progress.packuments_failed + progress.partitions_failed > 0 {
        let failures = client
            .list_failures(ListFailuresRequest {
                limit: 5,
                ..Default::default()
            })
            .await
            .map_err(|s| refused("ListFailures", &url, &s))?
            .into_inner();
        println!(
            "\nfailures ({} in all, first {}):",
            failures.total,
            failures.failures.len()
        );
        for f in failures.failures {
            println!("  {} {}: {}", f.kind, f.name, f.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A failed call; a refused admin token is the user's to fix (exit 2).
fn refused(call: &str, url: &str, status: &Status) -> anyhow::Error {
    if status.code() == Code::Unauthenticated {
        let sent = if admin::admin_token().is_some() {
            format!("the {ADMIN_TOKEN_ENV} set here is not the coordinator's")
        } else {
            format!("{ADMIN_TOKEN_ENV} is not set here")
        };
        return usage(format!(
            "the coordinator at {url} requires its admin token and {sent}: set {ADMIN_TOKEN_ENV} to the value the coordinator was started with ({})",
            status.message()
        ));
    }
    anyhow::anyhow!("{call} from {url} failed: {}", status.message())
}
