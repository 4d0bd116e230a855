//! `coordinator status`: progress (and the first failures) from a running coordinator.

use std::process::ExitCode;

use alldocs_proto::v1::{
    coordinator_client::CoordinatorClient, GetProgressRequest, ListFailuresRequest,
};

use crate::{cli::StatusArgs, display};

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let url = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let mut client = CoordinatorClient::connect(url.clone()).await.map_err(|e| {
        anyhow::anyhow!("cannot reach a coordinator at {url}: {e}; is `coordinator serve` running there? Pass --addr HOST:PORT")
    })?;
    let progress = client
        .get_progress(GetProgressRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("GetProgress from {url} failed: {}", s.message()))?
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
            .map_err(|s| anyhow::anyhow!("ListFailures from {url} failed: {}", s.message()))?
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
