//! The packed layout end to end, as a user meets it: `unpack` writes what a `files` run
//! stores (and `zstd -dc` reads a pack), a damaged pack is reported with the name and the pack (never as good bytes),
//! a snapshot keeps its layout, and compaction stopped between any two of its steps
//! leaves every stored package readable, the next compaction finishing the job.

use std::{collections::BTreeMap, path::Path};

use alldocs_coordinator::cli::{
    compact::{self, CompactArgs, Step},
    read::DbArg,
};
use alldocs_tests::{
    coord::{checkpoint_dump, job_args, pack_files, stored_files, unpack_file},
    procs::{args, run},
    sim::{SimConfig, SimServer},
};

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

fn sim_config(generation: u64) -> SimConfig {
    SimConfig {
        packages: 400,
        mean_bytes: 1500,
        generation,
        ..Default::default()
    }
}

/// `coordinator run` in `dir` against `sim`, with `extra` options; its stdout.
fn snapshot(dir: &Path, sim: &SimServer, extra: &[&str]) -> anyhow::Result<String> {
    let mut opts = vec!["--pivots", "@,a,m", "--lease-size", "25"];
    opts.extend_from_slice(extra);
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir, &sim.url(), &opts),
        &[],
    )?;
    anyhow::ensure!(code == 0, "run: {out}{err}");
    Ok(out)
}

fn db(dir: &Path) -> String {
    dir.join("alldocs.sqlite").display().to_string()
}

/// `coordinator CMD --db <dir's>` plus `extra`: (exit code, stdout, stderr).
fn command(cmd: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let db = db(dir);
    let mut a = vec![cmd, "--db", &db];
    a.extend_from_slice(extra);
    run(&coordinator(), &args(&a), &[])
}

/// Every file under `root`, by its path relative to it.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpack_writes_exactly_what_a_files_run_stores() -> anyhow::Result<()> {
    let sim = SimServer::start("127.0.0.1:0".parse()?, sim_config(0)).await?;
    let (packed, files) = (tempfile::tempdir()?, tempfile::tempdir()?);
    snapshot(packed.path(), &sim, &[])?;
    snapshot(files.path(), &sim, &["--layout", "files"])?;
    assert!(
        !pack_files(&packed.path().join("data")).is_empty(),
        "packs by default"
    );

    let to = packed.path().join("unpacked");
    let (code, out, err) = command("unpack", packed.path(), &["--to", to.to_str().unwrap()])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unpacked 400 packuments"), "{out}");
    let unpacked = tree(&to);
    let expected = tree(&files.path().join("data"));
    assert_eq!(unpacked.len(), expected.len(), "the same objects");
    for (path, bytes) in &expected {
        assert!(unpacked.get(path) == Some(bytes), "{path} is the same");
    }
    let registry = sim.registry();
    for name in registry.names().step_by(41) {
        let key = alldocs_fetcher::store::names::encode_key(name);
        assert_eq!(
            unpacked.get(&format!("packuments/{key}.json")).cloned(),
            registry.document(name, false),
            "{name}"
        );
    }

    // A pack is a plain zstd stream (its trailer is a skippable frame): the zstd tool
    // prints its packuments, as the registry served them, one after another.
    for pack in pack_files(&packed.path().join("data")) {
        let out = std::process::Command::new("zstd")
            .arg("-dc")
            .arg(&pack)
            .output()
            .map_err(|e| anyhow::anyhow!("running zstd (Debian's zstd package): {e}"))?;
        assert!(out.status.success(), "zstd -dc {}: {out:?}", pack.display());
        let names: Vec<String> = unpack_file(&pack).into_iter().map(|(n, _)| n).collect();
        let served: Vec<u8> = names
            .iter()
            .flat_map(|n| registry.document(n, false).expect("a served document"))
            .collect();
        assert!(!names.is_empty(), "{}", pack.display());
        assert!(out.stdout == served, "zstd -dc {}", pack.display());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pack_is_reported_with_the_name_and_the_pack_never_as_good_bytes(
) -> anyhow::Result<()> {
    let sim = SimServer::start("127.0.0.1:0".parse()?, sim_config(0)).await?;
    let dir = tempfile::tempdir()?;
    snapshot(dir.path(), &sim, &[])?;
    let packs = pack_files(&dir.path().join("data"));
    let (damaged, other) = (&packs[0], &packs[1]);
    let entries = unpack_file(damaged);
    assert!(entries.len() >= 2, "a pack of several packuments");
    let pack_name = damaged.file_name().unwrap().to_string_lossy().into_owned();

    // A flipped byte inside the second packument's frame: that one is refused, naming it
    // and its pack; the first, in the same pack, still reads.
    let bytes = std::fs::read(damaged)?;
    let trailer_of = |b: &[u8]| {
        use alldocs_fetcher::store::pack;
        let footer = b.len() - pack::FOOTER_BYTES as usize;
        let len = pack::footer_len(&b[footer..], "p").unwrap() as usize;
        pack::parse_trailer(&b[footer - len..footer], "p").unwrap()
    };
    let trailer = trailer_of(&bytes);
    let (first, second) = (&trailer.entries[0], &trailer.entries[1]);
    let mut flipped = bytes.clone();
    flipped[(second.offset + second.length / 2) as usize] ^= 0x20;
    std::fs::write(damaged, &flipped)?;
    let (code, _, err) = command("show", dir.path(), &[&second.name])?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&second.name) && err.contains(&pack_name),
        "{err}"
    );
    let (code, shown, err) = command("show", dir.path(), &[&first.name])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        Some(shown.into_bytes()),
        sim.registry().document(&first.name, false)
    );
    let (code, _, err) = command("export", dir.path(), &[])?;
    assert_eq!(code, 1, "export stops at the damaged packument: {err}");
    assert!(
        err.contains(&second.name) && err.contains(&pack_name),
        "{err}"
    );

    // A pack cut short: its trailer is gone; reading it whole is refused, naming it,
    // while each packument, read alone and checked against its digest, still reads.
    std::fs::write(damaged, &bytes[..bytes.len() - 10])?;
    let (code, _, err) = command("export", dir.path(), &[])?;
    assert_eq!(
        code, 0,
        "every frame is whole and matches its digest: {err}"
    );
    let (code, _, err) = command("export", dir.path(), &["--order", "packs"])?;
    assert_eq!(code, 1);
    assert!(
        err.contains(&pack_name) && err.contains("truncated"),
        "{err}"
    );

    // A pack that is gone: every packument in it says where it was.
    std::fs::write(damaged, &bytes)?;
    let lost = unpack_file(other)[0].0.clone();
    std::fs::remove_file(other)?;
    let (code, _, err) = command("show", dir.path(), &[&lost])?;
    assert_eq!(code, 1);
    let other_name = other.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.contains(lost.as_str()) && err.contains(&other_name),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_keeps_its_layout_and_another_is_refused_untouched() -> anyhow::Result<()> {
    let sim = SimServer::start("127.0.0.1:0".parse()?, sim_config(0)).await?;
    let dir = tempfile::tempdir()?;
    snapshot(dir.path(), &sim, &[])?;
    let before = checkpoint_dump(&dir.path().join("alldocs.sqlite"));
    let opts = ["--pivots", "@,a,m", "--layout", "files"];
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("`packs` layout")
            && err.contains("--layout files")
            && err.contains("new --db"),
        "{err}"
    );
    assert_eq!(checkpoint_dump(&dir.path().join("alldocs.sqlite")), before);
    // Without --layout, or with its own, the snapshot carries on.
    snapshot(dir.path(), &sim, &["--layout", "packs"])?;
    Ok(())
}

/// A packed snapshot whose first packs hold dead copies: run, the registry moves on two
/// generations, run again each time.
async fn snapshot_with_dead_copies(dir: &Path) -> anyhow::Result<SimServer> {
    let mut sim = SimServer::start("127.0.0.1:0".parse()?, sim_config(0)).await?;
    let addr = sim.addr();
    snapshot(dir, &sim, &[])?;
    for generation in 1..=2 {
        sim.shutdown().await;
        sim = SimServer::start(addr, sim_config(generation)).await?;
        snapshot(dir, &sim, &[])?;
    }
    Ok(sim)
}

/// `coordinator export`, its lines sorted.
fn exported(dir: &Path) -> anyhow::Result<Vec<String>> {
    let (code, out, err) = command("export", dir, &[])?;
    anyhow::ensure!(code == 0, "export: {err}");
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_stopped_between_its_steps_leaves_every_package_readable() -> anyhow::Result<()>
{
    for stop_at in [Step::Written, Step::Committed, Step::Deleted] {
        let dir = tempfile::tempdir()?;
        let sim = snapshot_with_dead_copies(dir.path()).await?;
        let expected = exported(dir.path())?;
        assert_eq!(expected.len(), 400);
        let data = dir.path().join("data");
        let packs_before = pack_files(&data).len();
        let args = CompactArgs {
            db: DbArg {
                db: dir.path().join("alldocs.sqlite"),
            },
            threshold: 0.99,
        };
        // Stopped right after the step, as a crash there would stop it.
        let mut stop = |step| {
            if step == stop_at {
                panic!("stopped after {step:?}");
            }
        };
        let stopped = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(compact::run(
            &args, &mut stop,
        )))
        .await;
        assert!(stopped.is_err(), "{stop_at:?}: compaction was stopped");
        assert_eq!(exported(dir.path())?, expected, "{stop_at:?}: all readable");
        let on_disk = stored_files(&data);
        for name in sim.registry().names().step_by(29) {
            assert_eq!(
                on_disk.get(name).cloned(),
                sim.registry().document(name, false)
            );
        }

        // The next compaction finishes the job: fewer packs, nothing unreferenced.
        let (code, out, err) = command("compact", dir.path(), &["--threshold", "0.99"])?;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("compacted"), "{out}");
        assert_eq!(
            exported(dir.path())?,
            expected,
            "{stop_at:?}: after compacting"
        );
        let conn = rusqlite::Connection::open(dir.path().join("alldocs.sqlite"))?;
        let referenced: i64 = conn.query_row("SELECT COUNT(*) FROM packs", [], |r| r.get(0))?;
        let packs_after = pack_files(&data).len();
        assert_eq!(
            packs_after as i64, referenced,
            "{stop_at:?}: no unreferenced pack"
        );
        assert!(
            packs_after < packs_before,
            "{packs_after} of {packs_before}"
        );
    }
    Ok(())
}

/// Pack bytes not holding a package's current copy, from the checkpoint.
fn dead_bytes(dir: &Path) -> anyhow::Result<i64> {
    let conn = rusqlite::Connection::open(dir.join("alldocs.sqlite"))?;
    Ok(conn.query_row(
        "SELECT (SELECT COALESCE(SUM(bytes), 0) FROM packs)
              - (SELECT COALESCE(SUM(pack_length), 0) FROM packages WHERE pack IS NOT NULL)",
        [],
        |r| r.get(0),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_live_and_dead_pack_bytes_and_compaction_reclaims_the_dead(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = snapshot_with_dead_copies(dir.path()).await?;
    let out = snapshot(dir.path(), &sim, &[])?;
    let line = out
        .lines()
        .find(|l| l.contains("store  packs:"))
        .unwrap_or_default();
    assert!(line.contains(" live, ") && line.ends_with(" dead"), "{out}");
    let dead = dead_bytes(dir.path())?;
    let (code, _, err) = command("compact", dir.path(), &["--threshold", "0.99"])?;
    assert_eq!(code, 0, "{err}");
    let after = dead_bytes(dir.path())?;
    assert!(after < dead / 2, "dead bytes {dead} → {after}");
    Ok(())
}
