//! The exit codes a script sees from the real `coordinator` binary: 0 for a finished
//! snapshot, 3 for one finished with items failed for good (e2e.rs, hostile_index.rs,
//! failures.rs), 130 and 143 for a run stopped by SIGINT or SIGTERM before it finished,
//! after saving; the same command afterwards carries on and finishes with 0.

use std::{path::PathBuf, process::Stdio};

use alldocs_tests::{
    coord::{checkpoint_statuses, job_args, wait_until},
    procs::{run, Listening},
    sim::{SimConfig, SimServer},
};

fn coordinator() -> PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

/// How many packages the checkpoint records as stored.
fn stored_in(db: &std::path::Path) -> u64 {
    checkpoint_statuses(db)
        .values()
        .filter(|s| *s == "stored")
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_sigint_or_sigterm_exits_130_or_143_and_the_same_command_finishes_it(
) -> anyhow::Result<()> {
    let cfg = SimConfig {
        packages: 300,
        mean_bytes: 400,
        ..Default::default()
    };
    let sim = SimServer::start("127.0.0.1:0".parse()?, cfg).await?;
    for (signal, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let dir = tempfile::tempdir()?;
        // Paced at 40 requests/s: about 8 s for the whole snapshot, stopped after the first.
        let slow = job_args("run", dir.path(), &sim.url(), &["--rate-limit", "40"]);
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut cmd = std::process::Command::new(coordinator());
        cmd.args(&slow).stdin(Stdio::null()).stderr(log);
        let job = Listening::start_command(cmd)?;
        let stored = wait_until(&job.url(), |p| p.packuments_done > 0)
            .await?
            .packuments_done;
        job.signal(signal)?;
        let (exit, _) = tokio::task::spawn_blocking(move || job.wait()).await??;
        let stderr = std::fs::read_to_string(dir.path().join("stderr.log"))?;
        assert_eq!(exit, code, "{name}: {stderr}");
        assert!(
            stderr.contains("interrupted: the checkpoint")
                && stderr.contains("run the same command again to carry on"),
            "{name}: {stderr}"
        );
        let done = stored_in(&dir.path().join("alldocs.sqlite"));
        assert!(
            done >= stored && done < 300,
            "{name}: {done} stored when stopped (at least the {stored} seen)"
        );
        // The same command, unpaced, carries on from the checkpoint and finishes.
        let fast = job_args("run", dir.path(), &sim.url(), &[]);
        let (exit, out, err) = run(&coordinator(), &fast, &[])?;
        assert_eq!(exit, 0, "{name}, rerun: {out}{err}");
        assert_eq!(stored_in(&dir.path().join("alldocs.sqlite")), 300, "{name}");
    }
    Ok(())
}
