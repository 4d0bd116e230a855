//! Lists given on the command line (`--pivots`, `--names`): `a,b,c`, or `@FILE` holding a
//! JSON array of strings or one entry per line (blank lines and `#` comments skipped). An
//! argument with a comma is always a list, so `@,A,a` is three entries, not a file.

/// Why a list file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a JSON array of strings: {reason}")]
    Json { path: String, reason: String },
}

/// The entries of a list argument, as written (lines keep their leading spaces; trailing
/// ones are dropped).
pub fn entries(arg: &str) -> Result<Vec<String>, ListError> {
    let Some(path) = arg.strip_prefix('@').filter(|_| !arg.contains(',')) else {
        return Ok(arg.split(',').map(str::to_string).collect());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ListError::Read {
        path: path.to_string(),
        source,
    })?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text).map_err(|e| ListError::Json {
            path: path.to_string(),
            reason: e.to_string(),
        });
    }
    Ok(text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect())
}
