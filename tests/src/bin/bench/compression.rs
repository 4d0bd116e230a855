//! `bench --compression`: what packs cost in bytes. Each packument compressed as its own
//! frame exactly as a pack stores it (`store::pack::compress`), over the 45 real fixture
//! packuments and over simulated ones of a given mean size; and the same with a zstd
//! dictionary trained on other packuments of the same kind (the first half trains, the
//! second half is measured, so no document is compressed with a dictionary made from
//! itself), to see whether a dictionary would pay.

use std::time::Instant;

use alldocs_fetcher::store::pack;
use alldocs_tests::{
    fixtures,
    sim::{Registry, SimConfig},
};
use anyhow::Result;

/// One set of documents' figures.
#[derive(Debug, serde::Serialize)]
pub struct Ratio {
    pub set: String,
    pub documents: usize,
    pub raw_bytes: u64,
    /// As packs store them: every document its own frame.
    pub frame_bytes: u64,
    pub ratio: f64,
    /// Compression throughput, raw MB/s, one thread.
    pub mb_per_s: f64,
    /// The second half compressed without, then with a dictionary trained on the first.
    pub held_out_ratio: f64,
    pub held_out_ratio_with_dictionary: f64,
    pub dictionary_bytes: usize,
}

/// The dictionary size tried (zstd's default for `--train`).
const DICTIONARY_BYTES: usize = 112_640;

pub fn run(mean_bytes: usize, simulated: usize) -> Result<Vec<Ratio>> {
    let real: Vec<Vec<u8>> = fixtures::packuments()?
        .into_iter()
        .map(|f| serde_json::to_vec(&f.doc).expect("a fixture serializes"))
        .collect();
    let registry = Registry::new(&SimConfig {
        packages: simulated,
        mean_bytes,
        ..Default::default()
    });
    let sim: Vec<Vec<u8>> = registry
        .names()
        .filter_map(|n| registry.document(n, false))
        .collect();
    Ok(vec![
        ratio("real fixtures", &real)?,
        ratio(&format!("simulated, mean {mean_bytes} B"), &sim)?,
    ])
}

fn ratio(set: &str, docs: &[Vec<u8>]) -> Result<Ratio> {
    let raw: u64 = docs.iter().map(|d| d.len() as u64).sum();
    let started = Instant::now();
    let mut framed = 0u64;
    for d in docs {
        framed += pack::compress(d)?.len() as u64;
    }
    let took = started.elapsed().as_secs_f64();
    let (train, test) = docs.split_at(docs.len() / 2);
    let test_raw: u64 = test.iter().map(|d| d.len() as u64).sum();
    let mut plain = 0u64;
    for d in test {
        plain += pack::compress(d)?.len() as u64;
    }
    let dictionary = zstd::dict::from_samples(train, DICTIONARY_BYTES)?;
    let mut with = zstd::bulk::Compressor::with_dictionary(pack::LEVEL, &dictionary)?;
    let mut dict_bytes = 0u64;
    for d in test {
        dict_bytes += with.compress(d)?.len() as u64;
    }
    Ok(Ratio {
        set: set.to_string(),
        documents: docs.len(),
        raw_bytes: raw,
        frame_bytes: framed,
        ratio: framed as f64 / raw.max(1) as f64,
        mb_per_s: raw as f64 / 1e6 / took.max(1e-9),
        held_out_ratio: plain as f64 / test_raw.max(1) as f64,
        held_out_ratio_with_dictionary: (dict_bytes + dictionary.len() as u64) as f64
            / test_raw.max(1) as f64,
        dictionary_bytes: dictionary.len(),
    })
}

/// The figures as a table.
pub fn table(ratios: &[Ratio]) -> String {
    let mut out = String::from(
        "set                          docs     raw MB  framed MB  ratio  MB/s   held-out: plain  with dictionary (its bytes counted)\n",
    );
    for r in ratios {
        out.push_str(&format!(
            "{:<26} {:>7} {:>10.2} {:>10.2} {:>6.3} {:>5.0} {:>17.3} {:>16.3} ({} B dictionary)\n",
            r.set,
            r.documents,
            r.raw_bytes as f64 / 1e6,
            r.frame_bytes as f64 / 1e6,
            r.ratio,
            r.mb_per_s,
            r.held_out_ratio,
            r.held_out_ratio_with_dictionary,
            r.dictionary_bytes
        ));
    }
    out
}
