//! What `coordinator verify` found: a count by kind, the first names with what is
//! wrong with each, and the summary it prints.

use std::{collections::BTreeMap, process::ExitCode};

use serde::Serialize;

use super::verify::{DAMAGED, STALE};

/// One thing wrong with one name.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub name: String,
    pub kind: &'static str,
    pub detail: String,
}

/// What verify found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub packages: u64,
    /// Raw bytes whose SHA-256 was computed.
    pub bytes_hashed: u64,
    pub packs: u64,
    pub files: u64,
    /// Stored before digests were recorded: only their length is checked.
    pub without_digest: u64,
    /// Storage findings by kind (`missing`, `truncated`, `damaged`, `digest`, `length`,
    /// `unreadable`).
    pub problems: BTreeMap<&'static str, u64>,
    pub sampled: u64,
    /// Sample findings by kind (`stale`, `gone`, `unanswered`).
    pub sample_problems: BTreeMap<&'static str, u64>,
    pub listed: Vec<Finding>,
    pub unlisted: u64,
    pub seconds: f64,
    #[serde(skip)]
    pub max_listed: usize,
}

impl Report {
    pub fn note(&mut self, name: &str, kind: &'static str, detail: String, sample: bool) {
        let counts = if sample {
            &mut self.sample_problems
        } else {
            &mut self.problems
        };
        *counts.entry(kind).or_default() += 1;
        if self.listed.len() < self.max_listed {
            let name = name.to_string();
            self.listed.push(Finding { name, kind, detail });
        } else {
            self.unlisted += 1;
        }
    }

    pub fn code(&self) -> ExitCode {
        if !self.problems.is_empty() {
            ExitCode::from(DAMAGED)
        } else if !self.sample_problems.is_empty() {
            ExitCode::from(STALE)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// The summary line, then one line per listed finding.
pub fn text(r: &Report) -> String {
    let kinds = |m: &BTreeMap<&str, u64>| {
        let all: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        all.join(", ")
    };
    let mut out = format!(
        "verified {} stored packages ({} hashed) in {} packs and {} files in {:.1}s: ",
        r.packages,
        bytesize::ByteSize(r.bytes_hashed),
        r.packs,
        r.files,
        r.seconds
    );
    let wrong: u64 = r.problems.values().sum();
    if wrong == 0 {
        out.push_str("all sound");
    } else {
        out.push_str(&format!(
            "{wrong} damaged or missing ({})",
            kinds(&r.problems)
        ));
    }
    if r.without_digest > 0 {
        out.push_str(&format!(
            "; {} without a recorded SHA-256 (length checked only)",
            r.without_digest
        ));
    }
    if r.sampled > 0 {
        let off: u64 = r.sample_problems.values().sum();
        out.push_str(&format!(
            "; sampled {} names from the registry: ",
            r.sampled
        ));
        if off == 0 {
            out.push_str("all current");
        } else {
            out.push_str(&format!(
                "{off} not current ({})",
                kinds(&r.sample_problems)
            ));
        }
    }
    out.push('\n');
    for f in &r.listed {
        out.push_str(&format!("{}\t{}\t{}\n", f.name, f.kind, f.detail));
    }
    if r.unlisted > 0 {
        out.push_str(&format!(
            "… and {} more (raise --max-listed to see them)\n",
            r.unlisted
        ));
    }
    out
}
