//! What a person sees while a job runs: progress bars on a terminal, a progress line
//! every few seconds otherwise, and a summary at the end.

use std::{io::IsTerminal, time::Duration};

use alldocs_proto::v1::{Progress, RunState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api::CoordinatorService;

/// How progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, lines otherwise.
    #[default]
    Auto,
    Bars,
    Lines,
    None,
}

/// Shows progress until `stop` fires (or its sender is dropped); bars are then drawn one
/// last time at their final values.
pub async fn show(
    service: CoordinatorService,
    mode: ProgressMode,
    every: Duration,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let bars = match mode {
        ProgressMode::Auto => std::io::stderr().is_terminal(),
        ProgressMode::Bars => true,
        ProgressMode::Lines => false,
        ProgressMode::None => return,
    };
    if bars {
        show_bars(service, stop).await
    } else {
        show_lines(service, every, stop).await
    }
}

/// A progress line every `every`, and a last one when stopped (at the final values).
async fn show_lines(
    service: CoordinatorService,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = &mut stop => true,
        };
        if let Ok(p) = service.progress().await {
            log_line(&p);
        }
        if stopping {
            return;
        }
    }
}

fn log_line(p: &Progress) {
    tracing::info!(
        state = state_name(p.state),
        partitions = format!("{}/{}", p.partitions_done, p.partitions_total),
        rows = p.rows_indexed,
        packuments = format!(
            "{}/{}",
            p.packuments_done + p.packuments_missing + p.packuments_failed,
            p.packuments_total
        ),
        failed = p.packuments_failed + p.partitions_failed,
        per_second = format!("{:.1}", p.packuments_per_second),
        request_limit = request_limit(p.rate_limit_current),
        eta = eta(p.eta_seconds),
        "progress"
    );
}

async fn show_bars(service: CoordinatorService, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix:>11} [{bar:40}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let parts = multi.add(
        ProgressBar::new(0)
            .with_style(style.clone())
            .with_prefix("partitions"),
    );
    let docs = multi.add(
        ProgressBar::new(0)
            .with_style(style)
            .with_prefix("packuments"),
    );
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => false,
            _ = &mut stop => true,
        };
        if let Ok(p) = service.progress().await {
            parts.set_length(p.partitions_total);
            parts.set_position(p.partitions_done + p.partitions_failed);
            parts.set_message(format!(
                "{} rows indexed, {:.0} rows/s",
                p.rows_indexed, p.rows_per_second
            ));
            docs.set_length(p.packuments_total);
            docs.set_position(p.packuments_done + p.packuments_missing + p.packuments_failed);
            docs.set_message(format!(
                "{:.1}/s, {}/s, ETA {}, {} failed, request limit {}",
                p.packuments_per_second,
                human_bytes(p.bytes_per_second as u64),
                eta(p.eta_seconds),
                p.packuments_failed,
                request_limit(p.rate_limit_current)
            ));
        }
        if stopping {
            parts.finish();
            docs.finish();
            return;
        }
    }
}

pub fn state_name(state: i32) -> &'static str {
    match RunState::try_from(state).unwrap_or(RunState::Unspecified) {
        RunState::Unspecified => "unknown",
        RunState::Planning => "planning",
        RunState::Indexing => "indexing",
        RunState::Fetching => "fetching",
        RunState::Done => "done",
        RunState::Following => "following",
    }
}

pub fn eta(seconds: i64) -> String {
    if seconds < 0 {
        "unknown".into()
    } else {
        humantime::format_duration(Duration::from_secs(seconds as u64)).to_string()
    }
}

/// Bytes in SI units (`95.3 MB`), as the summary and bars show them.
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().si().to_string()
}

/// The human table of `coordinator status` and the end-of-run summary.
pub fn table(p: &Progress) -> String {
    let rows = [
        ("state", state_name(p.state).to_string()),
        (
            "partitions",
            format!(
                "{} done, {} failed, of {}",
                p.partitions_done, p.partitions_failed, p.partitions_total
            ),
        ),
        ("rows indexed", p.rows_indexed.to_string()),
        (
            "packuments",
            format!(
                "{} stored, {} missing (404), {} failed, {} pending, {} leased, of {}",
                p.packuments_done,
                p.packuments_missing,
                p.packuments_failed,
                p.packuments_pending,
                p.packuments_leased,
                p.packuments_total
            ),
        ),
        (
            "fetched now",
            format!("{} this run", p.packuments_fetched_this_run),
        ),
        (
            "rev lag",
            format!(
                "{} stored documents carry another _rev than the index listed",
                p.packuments_rev_mismatch
            ),
        ),
        ("bytes stored", human_bytes(p.bytes_stored)),
        ("store", store_line(p)),
        (
            "rate",
            format!(
                "{:.1} packuments/s, {:.0} rows/s, {}/s",
                p.packuments_per_second,
                p.rows_per_second,
                human_bytes(p.bytes_per_second as u64)
            ),
        ),
        ("request limit", request_limit(p.rate_limit_current)),
        ("feed", feed(p)),
        ("leases", format!("{} in flight", p.leases_in_flight)),
        (
            "elapsed",
            humantime::format_duration(Duration::from_secs(p.elapsed_ms / 1000)).to_string(),
        ),
        ("eta", eta(p.eta_seconds)),
    ];
    rows.iter()
        .map(|(k, v)| format!("{k:>13}  {v}\n"))
        .collect()
}

/// How the snapshot is stored: `packs: 12 (3.1 MB), 2.9 MB live, 0.2 MB dead`, or
/// `files`; and how many stored packuments have no digest, if any.
pub fn store_line(p: &Progress) -> String {
    let mut line = if p.layout == "packs" || p.packs > 0 {
        format!(
            "{}: {} packs ({}), {} live, {} dead",
            if p.layout.is_empty() {
                "packs"
            } else {
                &p.layout
            },
            p.packs,
            human_bytes(p.pack_bytes),
            human_bytes(p.pack_bytes_live),
            human_bytes(p.pack_bytes_dead)
        )
    } else {
        format!(
            "{}: one object per packument",
            if p.layout.is_empty() {
                "files"
            } else {
                &p.layout
            }
        )
    };
    if p.packuments_without_digest > 0 {
        line.push_str(&format!(
            "; {} stored before digests were recorded (checked once fetched again)",
            p.packuments_without_digest
        ));
    }
    line
}

/// Where `serve --follow` is in the feed: `seq 120 of 125 (5 behind), 3 deleted`.
pub fn feed(p: &Progress) -> String {
    if p.feed_seq.is_empty() {
        return "not followed (serve --follow keeps the snapshot current)".into();
    }
    let lag = match p.feed_lag {
        0 => "caught up".to_string(),
        n if n > 0 => format!("{n} behind"),
        _ => "lag unknown".to_string(),
    };
    format!(
        "seq {} of {} ({lag}), {} deleted",
        p.feed_seq,
        if p.feed_head_seq.is_empty() {
            "?"
        } else {
            &p.feed_head_seq
        },
        p.packuments_deleted
    )
}

/// The request rate new leases get: `40.0/s`, or `none` without a limit.
pub fn request_limit(rate: f64) -> String {
    if rate > 0.0 {
        format!("{rate:.1}/s")
    } else {
        "none".to_string()
    }
}

/// `Progress` as JSON with the proto's field names (the state by its enum name).
pub fn to_json(p: &Progress) -> serde_json::Value {
    serde_json::to_value(p).expect("Progress serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_line_says_how_many_packuments_have_no_digest_after_a_migration() {
        let migrated = Progress {
            layout: "files".into(),
            packuments_without_digest: 3,
            ..Default::default()
        };
        assert_eq!(
            store_line(&migrated),
            "files: one object per packument; 3 stored before digests were recorded (checked once fetched again)"
        );
        let fresh = Progress {
            layout: "files".into(),
            ..Default::default()
        };
        assert_eq!(store_line(&fresh), "files: one object per packument");
    }
}
