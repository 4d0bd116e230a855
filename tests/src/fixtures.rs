//! The real packuments shipped in `tests/fixtures/packuments-dev.tar.zst` (45 documents
//! fetched from npm's registry; see that folder's README), plus made-up edge names.

use std::{io::Read, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

/// One fixture document: the package name and its JSON.
pub struct Fixture {
    pub name: String,
    pub doc: Value,
}

/// Unpacks every fixture, with its name decoded from `<encodeURIComponent(name)>.json`.
pub fn packuments() -> Result<Vec<Fixture>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/packuments-dev.tar.zst");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = tar::Archive::new(zstd::Decoder::new(file)?);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let file_name = entry
            .path()?
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string);
        let Some(stem) = file_name.as_deref().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let name = percent_encoding::percent_decode_str(stem)
            .decode_utf8()?
            .into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        let doc: Value = serde_json::from_str(&text).with_context(|| format!("parsing {name}"))?;
        out.push(Fixture { name, doc });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Fixture documents ready for a CouchDB `_bulk_docs`: `_id` set to the package name,
/// `_rev` dropped so the server assigns one, as npm's registry does.
pub fn as_couch_docs(fixtures: &[Fixture]) -> Vec<Value> {
    fixtures
        .iter()
        .map(|f| {
            let mut doc = f.doc.clone();
            let obj = doc.as_object_mut().expect("packuments are objects");
            obj.remove("_rev");
            obj.insert("_id".into(), Value::String(f.name.clone()));
            doc
        })
        .collect()
}

/// Made-up names chosen to sit on, before and after partition pivots: digits, scopes,
/// uppercase legacy names, a name equal to a scope (`@types`, stored as `%40types.json`:
/// see `names`), and one after all lowercase.
pub const EDGE_NAMES: &[&str] = &[
    "0-first-digit",
    "9lives",
    "@aaa/first-scope",
    "@types",
    "@zzz/last-scope",
    "A",
    "AZ-upper",
    "Zeta",
    "a",
    "b-edge",
    "left-pad-2",
    "zzz-last",
    "~tilde-after-lowercase",
];

/// A small made-up packument for names at partition edges.
pub fn tiny_doc(name: &str) -> Value {
    serde_json::json!({
        "_id": name,
        "name": name,
        "dist-tags": { "latest": "1.0.0" },
        "versions": { "1.0.0": { "name": name, "version": "1.0.0" } },
    })
}
