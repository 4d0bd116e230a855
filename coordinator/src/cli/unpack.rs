//! `coordinator unpack --to DIR|URL`: a snapshot in the `files` layout, from any layout:
//! every stored packument's exact bytes at `packuments/<key>.json` (each checked against
//! its SHA-256 on the way), and the index objects, `index/<partition>.jsonl`, as they are.
//! The checkpoint is only read; nothing is written to the snapshot's own store.

use std::process::ExitCode;

use alldocs_fetcher::store::{packument_path, Store};
use bytes::Bytes;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use crate::{
    cli::{
        read::{open, recorded_store, DbArg},
        snapshot,
    },
    run::{args::usage, preflight::check_store},
};

/// Objects written at once.
const WRITERS: usize = 16;

#[derive(Args, Debug)]
pub struct UnpackArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Where the files go: a directory (created if missing), file://PATH, gs://BUCKET/PREFIX
    /// or s3://BUCKET/PREFIX.
    #[arg(long)]
    pub to: String,
}

/// Writes the snapshot's packuments and index to `--to`; says how many.
pub async fn unpack(args: UnpackArgs) -> anyhow::Result<ExitCode> {
    check_store(&args.to)
        .await
        .map_err(|e| usage(e.replace("--store", "--to")))?;
    let target = Store::open(&args.to).map_err(|e| usage(format!("--to: {e}")))?;
    let conn = open(&args.db.db)?;
    let store = recorded_store(&conn)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(WRITERS * 4);
    let rt = tokio::runtime::Handle::current();
    let reader = tokio::task::spawn_blocking(move || {
        snapshot::each_stored(
            &conn,
            &store,
            &rt,
            snapshot::Order::Packs,
            |name, raw, _| {
                let item = (name.to_string(), Bytes::copy_from_slice(raw));
                Ok(tx.blocking_send(item).is_ok())
            },
        )
        .map(|()| store)
    });
    let written = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|(name, raw)| {
            let target = &target;
            async move {
                let len = raw.len() as u64;
                let path = packument_path(&name);
                target
                    .put_durable(&path, raw)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", target.uri(&path)))?;
                Ok::<_, anyhow::Error>(len)
            }
        })
        .buffer_unordered(WRITERS)
        .try_fold((0u64, 0u64), |(n, bytes), len| async move {
            Ok((n + 1, bytes + len))
        })
        .await;
    let store = reader.await??;
    let (packuments, bytes) = written?;
    let index = copy_index(&store, &target).await?;
    println!(
        "unpacked {packuments} packuments ({}) and {index} index objects to {}",
        bytesize::ByteSize(bytes),
        target.uri(&Path::from(""))
    );
    Ok(ExitCode::SUCCESS)
}

/// Copies every `index/` object of the snapshot's store.
async fn copy_index(from: &Store, to: &Store) -> anyhow::Result<u64> {
    let prefix = Path::from("index");
    let listed: Vec<_> = from
        .object_store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", from.uri(&prefix)))?;
    for meta in &listed {
        let bytes = from.get(&meta.location).await?;
        to.put_durable(&meta.location, bytes)
            .await
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", to.uri(&meta.location)))?;
    }
    Ok(listed.len() as u64)
}
