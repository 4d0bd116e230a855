//! `coordinator verify` as a user meets it, on real snapshots of the registry simulator:
//! a sound snapshot exits 0; a flipped byte, a truncated object, a deleted object and a
//! deleted pack are each caught with the name (exit 4), in both layouts; `--sample` asks
//! the registry and names what is stale there (exit 5).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use alldocs_fetcher::store::pack;
use alldocs_tests::{
    coord::{checkpoint_statuses, job_args, pack_files},
    procs::{args, run},
    recording::RecordingOrigin,
    sim::{SimConfig, SimServer},
};
use serde_json::Value;

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

fn sim_config(generation: u64) -> SimConfig {
    SimConfig {
        packages: 300,
        mean_bytes: 1500,
        generation,
        ..Default::default()
    }
}

fn snapshot(dir: &Path, sim: &SimServer, extra: &[&str]) -> anyhow::Result<()> {
    let mut opts = vec!["--pivots", "@,a,m", "--lease-size", "25"];
    opts.extend_from_slice(extra);
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir, &sim.url(), &opts),
        &[],
    )?;
    anyhow::ensure!(code == 0, "run: {out}{err}");
    Ok(())
}

/// `coordinator verify --db <dir's>` plus `extra`: (exit code, stdout, stderr).
fn verify(dir: &Path, extra: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let db = dir.join("alldocs.sqlite").display().to_string();
    let mut a = vec!["verify", "--db", &db];
    a.extend_from_slice(extra);
    run(&coordinator(), &args(&a), &[])
}

/// `verify --format json`: its exit code and its report.
fn verify_json(dir: &Path, extra: &[&str]) -> anyhow::Result<(i32, Value)> {
    let mut a = vec!["--format", "json", "--max-listed", "1000"];
    a.extend_from_slice(extra);
    let (code, out, err) = verify(dir, &a)?;
    let report = serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out}{err}"))?;
    Ok((code, report))
}

/// The names listed in a report, by kind.
fn listed(report: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in report["listed"].as_array().unwrap() {
        let kind = f["kind"].as_str().unwrap().to_string();
        out.entry(kind)
            .or_default()
            .insert(f["name"].as_str().unwrap().into());
    }
    out
}

fn stored(dir: &Path) -> Vec<String> {
    let statuses = checkpoint_statuses(&dir.join("alldocs.sqlite"));
    (statuses.into_iter())
        .filter(|(_, s)| s == "stored")
        .map(|(n, _)| n)
        .collect()
}

/// A pack's trailer entries.
fn entries(pack_file: &Path) -> Vec<pack::Entry> {
    let b = std::fs::read(pack_file).unwrap();
    let footer = b.len() - pack::FOOTER_BYTES as usize;
    let len = pack::footer_len(&b[footer..], "p").unwrap() as usize;
    pack::parse_trailer(&b[footer - len..footer], "p")
        .unwrap()
        .entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_every_damaged_truncated_or_missing_packed_package() -> anyhow::Result<()> {
    let sim = SimServer::start("127.0.0.1:0".parse()?, sim_config(0)).await?;
    let dir = tempfile::tempdir()?;
    snapshot(dir.path(), &sim, &[])?;
    let names = stored(dir.path());
    let (code, out, err) = verify(dir.path(), &[])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("verified {} stored packages", names.len())),
        "{out}"
    );
    assert!(out.contains("all sound"), "{out}");
    let (_, report) = verify_json(dir.path(), &[])?;
    let packs = pack_files(&dir.path().join("data"));
    assert!(packs.len() >= 3, "{packs:?}");
    assert_eq!(report["packs"], packs.len() as u64);
    assert_eq!(report["files"], 0);

    let damage = damage_three_packs(&packs)?;

    let (code, report) = verify_json(dir.path(), &[])?;
    assert_eq!(code, 4, "{report}");
    let found = listed(&report);
    let bad_frame: BTreeSet<String> = ["digest", "damaged"]
        .iter()
        .flat_map(|k| found.get(*k).cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        bad_frame,
        BTreeSet::from([damage.flipped.clone()]),
        "{report}"
    );
    assert_eq!(found["truncated"], damage.past_half, "{report}");
    assert_eq!(found["missing"], damage.lost, "{report}");
    assert_eq!(report["packages"], names.len() as u64);
    assert_eq!(report["unlisted"], 0);
    export_stops_at_the_damage(dir.path(), &found, &damage)?;
    listing_is_bounded(dir.path(), &damage)
}

/// What [`damage_three_packs`] did: the package whose frame has a flipped byte, those lying
/// past the half of a pack cut off, those of a pack deleted, and those two packs' names.
struct Damage {
    flipped: String,
    past_half: BTreeSet<String>,
    lost: BTreeSet<String>,
    packs: [String; 2],
}

/// A flipped byte in the second frame of one pack; half of another cut off; a third gone.
fn damage_three_packs(packs: &[std::path::PathBuf]) -> anyhow::Result<Damage> {
    let (flipped, cut, gone) = (&packs[0], &packs[1], &packs[2]);
    let second = &entries(flipped)[1];
    let mut bytes = std::fs::read(flipped)?;
    bytes[(second.offset + second.length / 2) as usize] ^= 0x20;
    std::fs::write(flipped, &bytes)?;
    let cut_bytes = std::fs::read(cut)?;
    let half = cut_bytes.len() as u64 / 2;
    let past_half: BTreeSet<String> = (entries(cut).into_iter())
        .filter(|e| e.offset + e.length > half)
        .map(|e| e.name)
        .collect();
    std::fs::write(cut, &cut_bytes[..half as usize])?;
    let lost: BTreeSet<String> = entries(gone).into_iter().map(|e| e.name).collect();
    std::fs::remove_file(gone)?;
    Ok(Damage {
        flipped: second.name.clone(),
        past_half,
        lost,
        packs: [cut, gone].map(|p| p.file_name().unwrap().to_string_lossy().into_owned()),
    })
}

/// An export reads every package too: it stops at the first damaged one, naming it (by
/// packs, the first damaged thing met: a package, or a pack it cannot read whole), and
/// leaves no partial file behind.
fn export_stops_at_the_damage(
    dir: &Path,
    found: &BTreeMap<String, BTreeSet<String>>,
    damage: &Damage,
) -> anyhow::Result<()> {
    let out_dir = dir.join("tables");
    let db = dir.join("alldocs.sqlite").display().to_string();
    let (code, _, err) = run(
        &coordinator(),
        &args(&[
            "export",
            "--db",
            &db,
            "--format",
            "parquet",
            "--out",
            out_dir.to_str().unwrap(),
        ]),
        &[],
    )?;
    assert_eq!(code, 1, "{err}");
    assert!(
        found.values().flatten().any(|n| err.contains(n.as_str()))
            || damage.packs.iter().any(|p| err.contains(p.as_str())),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&out_dir)?.count(),
        0,
        "no file left in {out_dir:?}"
    );
    Ok(())
}

/// The text: the summary line, then the names, bounded, the rest counted.
fn listing_is_bounded(dir: &Path, damage: &Damage) -> anyhow::Result<()> {
    let all = 1 + damage.past_half.len() + damage.lost.len();
    let (code, out, _) = verify(dir, &["--max-listed", "2"])?;
    assert_eq!(code, 4);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(&format!("{all} damaged or missing")),
        "{out}"
    );
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[3].contains(&format!("and {} more", all - 2)), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_every_damaged_truncated_or_missing_file() -> anyhow::Result<()> {
    let sim = SimServer::start("127.0.0.1:0".parse()?, sim_config(0)).await?;
    let dir = tempfile::tempdir()?;
    snapshot(dir.path(), &sim, &["--layout", "files"])?;
    let (code, out, err) = verify(dir.path(), &[])?;
    assert_eq!(code, 0, "{out}{err}");
    let plain: Vec<String> = (stored(dir.path()).into_iter())
        .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .take(3)
        .collect();
    let file = |n: &str| dir.path().join("data/packuments").join(format!("{n}.json"));
    let mut bytes = std::fs::read(file(&plain[0]))?;
    bytes[10] ^= 0x01;
    std::fs::write(file(&plain[0]), &bytes)?;
    let bytes = std::fs::read(file(&plain[1]))?;
    std::fs::write(file(&plain[1]), &bytes[..bytes.len() - 1])?;
    std::fs::remove_file(file(&plain[2]))?;
    let (code, report) = verify_json(dir.path(), &[])?;
    assert_eq!(code, 4, "{report}");
    let found = listed(&report);
    let one = |n: &String| BTreeSet::from([n.clone()]);
    assert_eq!(found["digest"], one(&plain[0]), "{report}");
    assert_eq!(found["truncated"], one(&plain[1]), "{report}");
    assert_eq!(found["missing"], one(&plain[2]), "{report}");
    assert_eq!(found.len(), 3, "{report}");
    assert_eq!(report["packs"], 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_sample_names_the_revisions_the_registry_has_moved_past() -> anyhow::Result<()> {
    let sim = SimServer::start("127.0.0.1:0".parse()?, sim_config(0)).await?;
    let dir = tempfile::tempdir()?;
    snapshot(dir.path(), &sim, &[])?;
    let names = stored(dir.path());
    // The registry the checkpoint records, unchanged: every sampled name is current.
    let (code, out, err) = verify(dir.path(), &["--sample", "20", "--rate-limit", "0"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("sampled 20 names from the registry: all current"),
        "{out}"
    );

    // Three generations later, some packages have new revisions.
    let later = SimServer::start("127.0.0.1:0".parse()?, sim_config(3)).await?;
    let moved: BTreeSet<String> = (names.iter())
        .filter(|n| sim.registry().rev(n) != later.registry().rev(n))
        .cloned()
        .collect();
    assert!(!moved.is_empty());
    let all = names.len().to_string();
    let extra = [
        "--sample",
        &all,
        "--registry",
        &later.url(),
        "--rate-limit",
        "0",
    ];
    let (code, report) = verify_json(dir.path(), &extra)?;
    assert_eq!(code, 5, "{report}");
    assert_eq!(report["sampled"], names.len() as u64);
    assert_eq!(listed(&report)["stale"], moved, "{report}");
    assert_eq!(listed(&report).len(), 1, "{report}");

    // --registry alone is refused.
    let (code, _, err) = verify(dir.path(), &["--registry", &later.url()])?;
    assert_eq!(code, 2);
    assert!(err.contains("give --sample N too"), "{err}");
    Ok(())
}

/// `--sample` asks with the token npm's configuration gives that registry (here the user's
/// `.npmrc`), as a run does, and the token shows in no output. The registry answers every
/// name with another revision, so each sampled name is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_sample_sends_the_registry_token_and_never_shows_it() -> anyhow::Result<()> {
    const NPM_TOKEN: &str = "npm-sample-secret-2718";
    let sim = SimServer::start("127.0.0.1:0".parse()?, sim_config(0)).await?;
    let dir = tempfile::tempdir()?;
    snapshot(dir.path(), &sim, &[])?;
    let registry = RecordingOrigin::start("127.0.0.1").await?;
    let port = registry.addr().port();
    let npmrc = dir.path().join("user.npmrc");
    std::fs::write(
        &npmrc,
        format!("//127.0.0.1:{port}/npm/:_authToken={NPM_TOKEN}\n"),
    )?;
    let db = dir.path().join("alldocs.sqlite").display().to_string();
    let url = format!("{}/npm/", registry.url());
    let a = [
        "verify",
        "--db",
        &db,
        "--sample",
        "5",
        "--registry",
        &url,
        "--rate-limit",
        "0",
    ];
    let envs = [
        ("npm_config_userconfig", npmrc.to_str().unwrap()),
        ("RUST_LOG", "debug"),
    ];
    let (code, out, err) = run(&coordinator(), &args(&a), &envs)?;
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.contains("sampled 5 names from the registry"), "{out}");
    let seen = registry.seen();
    assert_eq!(seen.len(), 5, "{seen:?}");
    for one in &seen {
        assert!(one.path.starts_with("/npm/"), "{one:?}");
        assert_eq!(
            one.authorization.as_deref(),
            Some(format!("Bearer {NPM_TOKEN}").as_str()),
            "{one:?}"
        );
    }
    assert!(
        !out.contains(NPM_TOKEN) && !err.contains(NPM_TOKEN),
        "the token leaked"
    );
    Ok(())
}
