//! Debian's Chromium, headless, as a test's browser: the page's DOM after its scripts ran
//! (and polled) for a while, and screenshots. Started with the flags this machine's closed
//! network needs and a new empty profile each time.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Where Chromium is: `$CHROMIUM`, else Debian's `/usr/bin/chromium` (`.ci/run` installs it).
pub fn chromium() -> Result<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    if !path.exists() {
        bail!(
            "{} not found: install Debian's chromium (`apt-get install chromium`, as .ci/run does) or set CHROMIUM",
            path.display()
        );
    }
    Ok(path)
}

fn headless(profile: &Path, budget_ms: u32) -> Result<Command> {
    let mut cmd = Command::new(chromium()?);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    // Virtual time: the page's timers run, and it waits while fetches are pending.
    .arg(format!("--virtual-time-budget={budget_ms}"));
    Ok(cmd)
}

/// The DOM of `url` once its scripts have run for `budget_ms` of virtual time.
pub fn dom(url: &str, budget_ms: u32) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let out = headless(profile.path(), budget_ms)?
        .arg("--dump-dom")
        .arg(url)
        .output()
        .context("starting chromium")?;
    if !out.status.success() {
        bail!(
            "chromium --dump-dom {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A screenshot of `url` at `width`×`height` into `png`, after `budget_ms`.
pub fn screenshot(url: &str, width: u32, height: u32, budget_ms: u32, png: &Path) -> Result<()> {
    let profile = tempfile::tempdir()?;
    let out = headless(profile.path(), budget_ms)?
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .context("starting chromium")?;
    if !out.status.success() || !png.exists() {
        bail!(
            "chromium --screenshot {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The text of the element with `id` in a dumped DOM (its first text run).
pub fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].to_string())
}

/// The value of `data-NAME` on the page's body.
pub fn body_data(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let key = format!("data-{name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(tag[at..at + tag[at..].find('"')?].to_string())
}
