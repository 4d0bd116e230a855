//! Reading `/metrics` in tests: a sample's value in the Prometheus text format, and
//! `promtool check metrics` (Debian's prometheus package, which `.ci/run` installs).

use std::{io::Write, path::PathBuf, process::Stdio};

/// A tool of Debian's prometheus package.
pub fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} not found: install Debian's prometheus package (`apt-get install prometheus`, as .ci/run does)",
        path.display()
    );
    path
}

/// The value of the one sample named `name` (labels as written), if there is one.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Fails unless `promtool check metrics` finds nothing wrong in `text`.
pub fn promtool_accepts(text: &str) {
    let mut check = std::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
