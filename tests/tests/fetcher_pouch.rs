//! The fetcher against an independent CouchDB-API server (pouchdb-server) holding npm's
//! real packuments plus names at partition edges, over a real gRPC socket.

use std::collections::HashSet;

use alldocs_fetcher::{source::npmrc::Credentials, store::Store};
use alldocs_proto::v1::fetch_event::Event;
use alldocs_tests::{
    fixtures,
    pouch::PouchServer,
    support::{
        all_docs_unpaged, fetch_all, index_lease, packument_lease, parse_index, rows_of,
        FetcherServer,
    },
};

use fixtures::EDGE_NAMES;

async fn loaded_peer() -> anyhow::Result<(PouchServer, Vec<(String, String)>)> {
    let peer = PouchServer::start().await?;
    let fx = fixtures::packuments()?;
    assert_eq!(fx.len(), 45, "all fixture packuments unpack");
    let mut docs = fixtures::as_couch_docs(&fx);
    docs.extend(EDGE_NAMES.iter().map(|n| fixtures::tiny_doc(n)));
    peer.load(docs).await?;
    let truth = all_docs_unpaged(&peer.db_url()).await?;
    assert_eq!(truth.len(), 45 + EDGE_NAMES.len());
    Ok((peer, truth))
}

/// Partitions from pivots: pivots equal to existing ids (`@types`, `A`, `a`, `left-pad`),
/// an empty partition (`b0`..`b1`), open first and last partitions.
fn partitions() -> Vec<(Option<String>, Option<String>)> {
    let pivots = [
        "1", "@types", "A", "a", "b0", "b1", "left-pad", "react", "zzz-last",
    ];
    alldocs_fetcher::store::keys::partitions(&pivots)
        .into_iter()
        .map(|p| (p.start, p.end))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_union_equals_all_docs_for_every_page_size() -> anyhow::Result<()> {
    let (peer, truth) = loaded_peer().await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let mut client = fetcher.client().await?;

    for page_size in [1u32, 7, 0] {
        let dir = tempfile::tempdir()?;
        let store_url = dir.path().to_str().unwrap().to_string();
        let mut union = Vec::new();
        let mut empty_partitions = 0;
        for (start, end) in partitions() {
            let lease = index_lease(
                &peer.db_url(),
                &store_url,
                start.as_deref(),
                end.as_deref(),
                page_size,
            );
            let events = fetch_all(&mut client, lease).await?;
            let rows = rows_of(&events);
            let done = events
                .iter()
                .find_map(|e| match e {
                    Event::IndexDone(d) => Some(d.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("partition {start:?}..{end:?} finished: {events:?}"));
            assert_eq!(done.rows as usize, rows.len());
            // The stored index holds exactly the streamed rows.
            let name =
                alldocs_fetcher::store::keys::partition_name(start.as_deref(), end.as_deref());
            let stored = std::fs::read(dir.path().join(format!("index/{name}.jsonl")))?;
            assert_eq!(parse_index(&stored)?, rows, "index/{name}.jsonl");
            assert!(
                done.uri.starts_with("file:///")
                    && done.uri.ends_with(&format!("index/{name}.jsonl"))
            );
            if rows.is_empty() {
                empty_partitions += 1;
            }
            for (id, _) in &rows {
                assert!(
                    alldocs_fetcher::store::keys::in_range(id, start.as_deref(), end.as_deref()),
                    "{id} outside {start:?}..{end:?}"
                );
            }
            union.extend(rows);
        }
        assert_eq!(
            union, truth,
            "page size {page_size}: the union of partitions is _all_docs, in order"
        );
        let ids: HashSet<_> = union.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), union.len(), "each id once");
        assert!(
            empty_partitions >= 1,
            "the b0..b1 partition is empty and still completes"
        );
    }
    fetcher.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packuments_are_stored_byte_for_byte_and_404s_are_missing() -> anyhow::Result<()> {
    let (peer, truth) = loaded_peer().await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let mut client = fetcher.client().await?;
    let dir = tempfile::tempdir()?;
    let store_url = dir.path().to_str().unwrap().to_string();

    let mut items = truth.clone();
    items.push(("does-not-exist".into(), "1-0".into()));
    items.push(("@nope/absent".into(), "1-0".into()));
    let events = fetch_all(
        &mut client,
        packument_lease(&peer.db_url(), &store_url, &items),
    )
    .await?;

    let mut stored = 0;
    let mut missing = Vec::new();
    let http = reqwest::Client::new();
    let store = Store::open(&store_url)?;
    for event in &events {
        match event {
            Event::Stored(s) => {
                stored += 1;
                // What the registry serves for this name, fetched independently.
                let encoded = s.name.replace('/', "%2f");
                let served = http
                    .get(format!("{}/{}", peer.db_url(), encoded))
                    .header("accept", "application/json")
                    .send()
                    .await?
                    .bytes()
                    .await?;
                let key = alldocs_fetcher::store::packument_path(&s.name);
                let on_disk = std::fs::read(dir.path().join(key.as_ref()))?;
                assert_eq!(
                    on_disk.len(),
                    served.len(),
                    "{} stored byte-for-byte",
                    s.name
                );
                assert!(on_disk == served, "{} stored byte-for-byte", s.name);
                assert_eq!(s.bytes as usize, served.len());
                let truth_rev = &truth.iter().find(|(id, _)| id == &s.name).unwrap().1;
                assert_eq!(&s.rev, truth_rev);
                assert_eq!(&s.doc_rev, truth_rev, "the document's own _rev is reported");
                assert_eq!(
                    s.uri,
                    store.uri(&alldocs_fetcher::store::packument_path(&s.name))
                );
            }
            Event::Missing(m) => missing.push((m.name.clone(), m.http_status)),
            Event::Failed(f) => panic!("unexpected failure: {f:?}"),
            _ => {}
        }
    }
    assert_eq!(stored, truth.len());
    missing.sort();
    assert_eq!(
        missing,
        vec![
            ("@nope/absent".to_string(), 404),
            ("does-not-exist".to_string(), 404)
        ]
    );
    // Scoped names nest under their scope; typescript is large enough to take the
    // streaming path (validated while it is written in parts), and is whole.
    assert!(dir.path().join("packuments/@types/node.json").is_file());
    let ts = std::fs::metadata(dir.path().join("packuments/typescript.json"))?.len();
    assert!(
        ts > alldocs_fetcher::source::packument::SPILL_BYTES as u64,
        "typescript is {ts} bytes"
    );
    let Some(Event::Summary(summary)) = events.last() else {
        panic!("the stream ends with a summary: {:?}", events.last());
    };
    assert_eq!(
        (
            summary.stored,
            summary.missing,
            summary.failed,
            summary.unfinished
        ),
        (truth.len() as u64, 2, 0, 0)
    );
    fetcher.shutdown().await
}

/// The legitimate case the paging checks must let through, against the reference
/// CouchDB-API server: the row a page was asked from was deleted since the page before, so
/// the page begins after it. PouchDB's `offset` is `skip` (0 here), not CouchDB's count of
/// rows before the page, so it is not taken as a jump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startkey_row_deleted_between_pages_is_paged_past() -> anyhow::Result<()> {
    use alldocs_fetcher::{source::all_docs, source::pager};
    let peer = PouchServer::start().await?;
    let names: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    let revs = peer
        .load(names.iter().map(|n| fixtures::tiny_doc(n)).collect())
        .await?;
    let http = reqwest::Client::new();
    let mut pager = pager::Pager::new(None, None, 4);
    let (mut got, mut second_page) = (Vec::new(), None);
    for page in 1.. {
        assert!(page < 10, "paging does not end");
        let req = pager.request();
        let url = pager::page_url(&peer.db_url(), req.startkey, req.endkey, req.limit);
        let body = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let parsed = all_docs::parse(&body[..], req.limit)?;
        if page == 2 {
            second_page = Some((parsed.offset, parsed.rows[0].name().map(str::to_owned)));
        }
        let paged = pager.step(parsed)?;
        got.extend(paged.rows.into_iter().map(|r| r.id));
        if page == 1 {
            // Delete the row page 2 will be asked from.
            let (id, rev) = revs.iter().find(|(id, _)| id == "p03").unwrap();
            http.delete(format!("{}/{id}?rev={rev}", peer.db_url()))
                .send()
                .await?
                .error_for_status()?;
        }
        if paged.step == pager::Step::Done {
            break;
        }
    }
    assert_eq!(
        second_page,
        Some((Some(0), Some("p04".to_string()))),
        "page 2 began after the deleted startkey, at PouchDB's offset 0"
    );
    assert_eq!(
        got, names,
        "every name once (p03 was listed before it went)"
    );
    Ok(())
}
