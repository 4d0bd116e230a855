//! Repeated rounds of the ceiling and the pipeline in one run (`--rounds N`): on a shared
//! virtual machine the speed of the whole machine drifts from one ten-second phase to the
//! next, so one pair of phases can put the ratio anywhere in a wide band. Alternating them
//! and taking the median of the rounds' ratios measures the pipeline against the ceiling
//! the machine had at that moment.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::json;

use crate::ceiling::{self, Ceiling};
use crate::{per_sec, secs, RunOutcome};
use alldocs_tests::sim::StatsSnapshot;

/// What one round measured: the ceiling (unless skipped) and then the pipeline.
#[derive(Clone, Debug)]
pub struct Round {
    pub ceiling_per_second: Option<f64>,
    pub ceiling_cpu_per_1000: Option<f64>,
    pub pipeline_per_second: f64,
    pub coordinator_cpu_per_1000: f64,
    pub checkpoint_cpu_per_1000: f64,
}

impl Round {
    pub fn new(ceiling: Option<&Ceiling>, run: &RunOutcome, stats: &StatsSnapshot) -> Self {
        let served = stats.packuments_served.max(1) as f64;
        Self {
            ceiling_per_second: ceiling.map(|c| per_sec(c.stored, c.wall)),
            ceiling_cpu_per_1000: ceiling.map(|c| secs(c.cpu) * 1000.0 / c.stored.max(1) as f64),
            pipeline_per_second: per_sec(stats.packuments_served, run.wall),
            coordinator_cpu_per_1000: secs(run.cpu) * 1000.0 / served,
            checkpoint_cpu_per_1000: secs(run.checkpoint_cpu) * 1000.0 / served,
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        self.ceiling_per_second
            .map(|c| self.pipeline_per_second / c)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "ceiling_packuments_per_second": self.ceiling_per_second,
            "ceiling_cpu_seconds_per_1000": self.ceiling_cpu_per_1000,
            "packuments_per_second": self.pipeline_per_second,
            "coordinator_cpu_seconds_per_1000": self.coordinator_cpu_per_1000,
            "coordinator_checkpoint_thread_cpu_seconds_per_1000": self.checkpoint_cpu_per_1000,
            "ratio_to_ceiling": self.ratio(),
        })
    }
}

/// The median of the values present (the mean of the middle two for an even count).
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Where one extra round runs, and how.
pub struct RoundSetup<'a> {
    pub sim_url: &'a str,
    pub names: &'a [String],
    pub in_flight: usize,
    pub with_ceiling: bool,
}

/// One extra round in `dir` (a fresh checkpoint and store; the ceiling's own directory):
/// the ceiling, then the pipeline run with `coordinator_args` (which point into `dir`).
/// `pipeline` runs the coordinator and returns its outcome and the simulator's counters
/// over the run.
pub async fn run_round<F, Fut>(setup: &RoundSetup<'_>, dir: &Path, pipeline: F) -> Result<Round>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(RunOutcome, StatsSnapshot)>>,
{
    std::fs::create_dir_all(dir)?;
    let ceiling = if setup.with_ceiling {
        crate::settle(dir).await;
        let names = setup.names.to_vec();
        Some(
            ceiling::run_bare_loop(
                setup.sim_url.to_string(),
                names,
                dir.join("bare"),
                setup.in_flight,
            )
            .await?,
        )
    } else {
        None
    };
    crate::settle(dir).await;
    let (run, stats) = pipeline().await?;
    if !run.status.success() {
        bail!(
            "a round's coordinator run failed ({}); its log: {}",
            crate::exit_code(run.status),
            run.log.display()
        );
    }
    Ok(Round::new(ceiling.as_ref(), &run, &stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_takes_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median([Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(
            median([Some(4.0), Some(1.0), Some(2.0), Some(9.0)]),
            Some(3.0)
        );
        assert_eq!(median([None, None]), None);
    }
}
