//! `--names`: the list of packages a run fetches instead of the whole registry — a JSON
//! array (`["express", "lodash"]`), one name per line (`#` comments), or `a,b,c`; a
//! `name@range` is taken as the name, the range ignored.

use alldocs_fetcher::store::names::check_name;

use crate::plan::list::ListError;

/// Parses `--names` (`@FILE` or a comma-separated list) into distinct package names, in
/// the order given; refuses the whole list if any entry is not a package name.
pub fn parse_names(arg: &str) -> Result<Vec<String>, String> {
    let entries = crate::plan::list::entries(arg).map_err(|e| match e {
        ListError::Read { path, source } => format!(
            "--names: cannot read the list {path}: {source}; give @FILE with a JSON array or one name per line"
        ),
        ListError::Json { .. } => format!("--names: the list {e}"),
    })?;
    let mut names: Vec<String> = Vec::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in entries.iter().map(|e| e.trim()).enumerate() {
        let name = without_range(entry);
        check_name(name).map_err(|e| format!("--names: entry {} `{entry}`: {e}", i + 1))?;
        if seen.insert(name.to_string()) {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err("--names lists no package; give names as a,b,c or @FILE".into());
    }
    Ok(names)
}

/// `express@^4` → `express`, `@types/node@20` → `@types/node`; a name without a range
/// (scoped or not) is itself.
fn without_range(entry: &str) -> &str {
    match entry[1.min(entry.len())..].find('@') {
        Some(i) => &entry[..i + 1],
        None => entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_dropped_and_scopes_kept() {
        assert_eq!(without_range("express@^4.18"), "express");
        assert_eq!(without_range("@types/node@20"), "@types/node");
        assert_eq!(without_range("@types/node"), "@types/node");
        assert_eq!(without_range("left-pad"), "left-pad");
        assert_eq!(
            parse_names("react, lodash@4 ,react,@scope/x@1").unwrap(),
            vec!["react", "lodash", "@scope/x"]
        );
    }

    #[test]
    fn files_hold_a_json_array_or_lines_and_bad_entries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("packages.json");
        std::fs::write(&json, r#"["express", "lodash", "react"]"#).unwrap();
        assert_eq!(
            parse_names(&format!("@{}", json.display())).unwrap(),
            vec!["express", "lodash", "react"]
        );
        let lines = dir.path().join("packages.txt");
        std::fs::write(&lines, "# ours\nexpress@^4\n\n@types/node\n").unwrap();
        assert_eq!(
            parse_names(&format!("@{}", lines.display())).unwrap(),
            vec!["express", "@types/node"]
        );
        let err = parse_names("react,..,x").unwrap_err();
        assert!(err.contains("entry 2 `..`"), "{err}");
        let err = parse_names("@/nonexistent/list").unwrap_err();
        assert!(
            err.contains("cannot read the list /nonexistent/list"),
            "{err}"
        );
    }
}
