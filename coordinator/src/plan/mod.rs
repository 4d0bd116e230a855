//! **Part `plan`: the partition plan.** Pivots in raw byte order → half-open partitions
//! that cover the whole key space, the first without a start and the last without an end;
//! and the lists given on the command line (`--pivots`, `--names`).
//!
//! Uses: no other part.

pub mod list;
pub mod names;

pub use alldocs_fetcher::store::keys::{partitions, Partition};

use crate::plan::list::ListError;

/// Why pivots were refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("pivot #{index} `{pivot}` is not after the one before it, `{previous}`: pivots must be strictly increasing in raw byte order (uppercase before lowercase, `@` before uppercase) and each may appear once")]
    NotIncreasing {
        index: usize,
        pivot: String,
        previous: String,
    },
    #[error("pivot #{index} is empty: remove it (the first partition already starts at the beginning of the key space)")]
    Empty { index: usize },
    #[error("cannot read the pivot file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the pivot file {path} is not a JSON array of strings: {reason}")]
    Json { path: String, reason: String },
}

/// Parses `--pivots`: `a,b,c`, or `@FILE` with one pivot per line (blank lines and `#`
/// comments skipped) or a JSON array of strings. A list may itself start with the pivot
/// `@` (`@,A,a`): an argument with a comma is always a list. Validates the order.
pub fn parse_pivots(arg: &str) -> Result<Vec<String>, PlanError> {
    let pivots = crate::plan::list::entries(arg).map_err(|e| match e {
        ListError::Read { path, source } => PlanError::File {
            path,
            reason: format!("{source} (a single pivot starting with `@` must be written as a list with another pivot, or in a file)"),
        },
        ListError::Json { path, reason } => PlanError::Json { path, reason },
    })?;
    validate(&pivots)?;
    Ok(pivots)
}

/// Pivots must be non-empty and strictly increasing in raw byte order.
pub fn validate(pivots: &[String]) -> Result<(), PlanError> {
    for (i, p) in pivots.iter().enumerate() {
        if p.is_empty() {
            return Err(PlanError::Empty { index: i + 1 });
        }
        if i > 0 && p.as_bytes() <= pivots[i - 1].as_bytes() {
            return Err(PlanError::NotIncreasing {
                index: i + 1,
                pivot: p.clone(),
                previous: pivots[i - 1].clone(),
            });
        }
    }
    Ok(())
}

/// The partition of `plan` whose half-open range holds `name` (`""` if none does, which a
/// plan made by [`partitions`] rules out).
pub fn partition_of<'a>(plan: &'a [Partition], name: &str) -> &'a str {
    plan.iter()
        .find(|p| {
            alldocs_fetcher::store::keys::in_range(name, p.start.as_deref(), p.end.as_deref())
        })
        .map_or("", |p| p.name.as_str())
}

/// The built-in pivots: everything before digits, digits, `@` scopes (each initial
/// letter cut in four), uppercase legacy names, then lowercase names, each initial
/// letter cut in six where npm is dense. About 270 partitions of ~20,000 names each
/// for a registry of 5 M packages.
pub fn default_pivots() -> Vec<String> {
    let mut pivots = vec!["0".to_string(), "@".to_string()];
    for c in 'a'..='z' {
        for suffix in ["", "h", "n", "t"] {
            pivots.push(format!("@{c}{suffix}"));
        }
    }
    pivots.push("A".to_string());
    for c in 'a'..='z' {
        for suffix in ["", "e", "i", "n", "r", "u"] {
            pivots.push(format!("{c}{suffix}"));
        }
    }
    pivots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partitions_cover_the_key_space_with_open_ends() {
        let parts = partitions(&v(&["@", "a"]));
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].start.as_deref(), parts[0].end.as_deref()),
            (None, Some("@"))
        );
        assert_eq!(
            (parts[1].start.as_deref(), parts[1].end.as_deref()),
            (Some("@"), Some("a"))
        );
        assert_eq!(
            (parts[2].start.as_deref(), parts[2].end.as_deref()),
            (Some("a"), None)
        );
        assert_eq!(
            partitions::<String>(&[]).len(),
            1,
            "no pivots: one partition, the whole space"
        );
    }

    #[test]
    fn unsorted_or_duplicate_pivots_are_refused_by_name() {
        let err = parse_pivots("a,c,b").unwrap_err();
        assert!(
            matches!(&err, PlanError::NotIncreasing { pivot, .. } if pivot == "b"),
            "{err}"
        );
        let err = parse_pivots("a,b,b").unwrap_err().to_string();
        assert!(
            err.contains("`b`") && err.contains("strictly increasing"),
            "{err}"
        );
        // Byte order, not alphabetical: uppercase sorts before lowercase.
        assert!(parse_pivots("a,B").is_err());
        assert!(parse_pivots("@types/,B,a").is_ok());
        assert!(matches!(
            parse_pivots("a,,b"),
            Err(PlanError::Empty { index: 2 })
        ));
        // `@` is the scope boundary, a natural first pivot, not a file.
        assert_eq!(parse_pivots("@,A,a").unwrap(), v(&["@", "A", "a"]));
    }

    #[test]
    fn pivot_files_hold_lines_or_a_json_array() {
        let dir = tempfile::tempdir().unwrap();
        let lines = dir.path().join("pivots.txt");
        std::fs::write(&lines, "# scopes\n@\n\nA\na\n").unwrap();
        assert_eq!(
            parse_pivots(&format!("@{}", lines.display())).unwrap(),
            v(&["@", "A", "a"])
        );
        let json = dir.path().join("pivots.json");
        std::fs::write(&json, r#"["m", "n"]"#).unwrap();
        assert_eq!(
            parse_pivots(&format!("@{}", json.display())).unwrap(),
            v(&["m", "n"])
        );
        let missing = parse_pivots("@/nonexistent/pivots")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/pivots"), "{missing}");
    }

    #[test]
    fn default_pivots_are_valid_and_split_every_class_of_name() {
        let pivots = default_pivots();
        validate(&pivots).unwrap();
        let parts = partitions(&pivots);
        assert!(parts.len() > 200 && parts.len() < 400, "{}", parts.len());
        let home = |key: &str| {
            parts
                .iter()
                .filter(|p| {
                    alldocs_fetcher::store::keys::in_range(
                        key,
                        p.start.as_deref(),
                        p.end.as_deref(),
                    )
                })
                .count()
        };
        for key in [
            "-weird",
            "0x",
            "@types/node",
            "@zzz/x",
            "JSONStream",
            "_under",
            "react",
            "zod",
            "~x",
        ] {
            assert_eq!(home(key), 1, "{key} lies in exactly one partition");
        }
    }
}
