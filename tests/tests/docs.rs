//! The documentation and the binaries say the same: every `--flag` and `ALLDOCS_*`
//! variable that README.md and docs/ name exists in some binary's `--help` (or is another
//! tool's, listed below with its tool), and every option each binary's `--help` shows is
//! documented somewhere in README.md or docs/. Also: every relative link in them resolves.
//!
//! The `--help` texts are the ones the binaries print: clap renders them from the same
//! `Command` for `coordinator` and `fetcher` (every subcommand), and `bench` and
//! `registry-sim` are run with `--help`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use clap::CommandFactory;

/// Flags of other tools that the docs show in commands to type, by tool.
const OTHER_TOOLS: &[(&str, &[&str])] = &[
    ("cargo", &["--workspace", "--bin", "--skip"]),
    ("npm", &["--ignore-scripts"]),
    (
        "gcloud",
        &[
            "--region",
            "--member",
            "--role",
            "--project",
            "--location",
            "--repository-format",
            "--config",
            "--substitutions",
            "--data-file",
            "--display-name",
            "--uniform-bucket-level-access",
            "--title",
            "--permissions",
        ],
    ),
    (
        "podman and docker",
        &[
            "--build-context",
            "--rm",
            "--network",
            "--runtime",
            "--ulimit",
        ],
    ),
    ("deploy/cloudrun/build-local.sh", &["--binary", "--tag"]),
    ("debootstrap", &["--variant"]),
    ("apt-get", &["--no-install-recommends"]),
    ("git", &["--short"]),
    ("perf", &["--call-graph"]),
];

/// `ALLDOCS_*` variables read by something other than the binaries, and where.
const OTHER_VARIABLES: &[(&str, &str)] =
    &[("ALLDOCS_BASE_IMAGE", "deploy/cloudrun/build-local.sh")];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `--help` of a clap command and of each of its subcommands, by their names.
fn clap_helps(mut command: clap::Command, into: &mut BTreeMap<String, String>) {
    command.build();
    let name = command
        .get_bin_name()
        .unwrap_or(command.get_name())
        .to_string();
    into.insert(name, command.clone().render_long_help().to_string());
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        clap_helps(sub.clone(), into);
    }
}

fn run_help(bin: &str) -> String {
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{bin} --help: {e}"));
    assert!(out.status.success(), "{bin} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

fn helps() -> BTreeMap<String, String> {
    let mut helps = BTreeMap::new();
    clap_helps(alldocs_coordinator::cli::Cli::command(), &mut helps);
    clap_helps(alldocs_fetcher::serve::options::Cli::command(), &mut helps);
    helps.insert("bench".into(), run_help(env!("CARGO_BIN_EXE_bench")));
    helps.insert(
        "registry-sim".into(),
        run_help(env!("CARGO_BIN_EXE_registry-sim")),
    );
    assert!(
        helps.len() >= 10,
        "every command's help: {:?}",
        helps.keys()
    );
    helps
}

/// The options a help text defines: flags at the start of an option line, and the
/// variables of its `[env: …]` notes.
fn options_of(help: &str) -> BTreeSet<String> {
    let mut options = BTreeSet::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let trimmed = trimmed
            .strip_prefix("-h, ")
            .or_else(|| trimmed.strip_prefix("-V, "))
            .unwrap_or(trimmed);
        if line.starts_with(' ') && trimmed.starts_with("--") {
            options.extend(flags_in(trimmed).into_iter().take(1));
        }
        for (at, _) in line.match_indices("[env: ") {
            let name: String = line[at + 6..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            options.insert(name);
        }
    }
    options.remove("--help");
    options.remove("--version");
    options
}

/// Every `--flag` in a text (a `--` not inside a word, then a lowercase letter).
fn flags_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for (at, _) in text.match_indices("--") {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            continue;
        }
        let name: String = text[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if name.starts_with(|c: char| c.is_ascii_lowercase()) {
            found.push(format!("--{}", name.trim_end_matches('-')));
        }
    }
    found
}

/// Every `ALLDOCS_*` name in a text.
fn variables_in(text: &str) -> Vec<String> {
    text.match_indices("ALLDOCS_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
                .trim_end_matches('_')
                .to_string()
        })
        .filter(|name| name.len() > "ALLDOCS_".len())
        .collect()
}

/// README.md and every Markdown file under docs/, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let root = workspace();
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 5, "README.md and docs/: {files:?}");
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect()
}

/// Whether `text` names `option` as a whole word (`--db`, not `--db-path`).
fn names(text: &str, option: &str) -> bool {
    text.match_indices(option).any(|(at, _)| {
        let after = text[at + option.len()..].chars().next();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn every_flag_and_variable_the_docs_name_exists_in_a_binary() {
    let helps = helps();
    let all_help: String = helps.values().cloned().collect();
    let mut known: BTreeSet<String> = helps.values().flat_map(|h| options_of(h)).collect();
    known.extend(["--help".to_string(), "--version".to_string()]);
    let other: BTreeSet<&str> = OTHER_TOOLS
        .iter()
        .flat_map(|(_, f)| f.iter().copied())
        .collect();
    let mut unknown = Vec::new();
    for (file, text) in documents() {
        let shown = file
            .strip_prefix(workspace())
            .unwrap()
            .display()
            .to_string();
        for flag in flags_in(&text) {
            if !known.contains(&flag) && !other.contains(flag.as_str()) {
                unknown.push(format!("{shown}: {flag}"));
            }
        }
        for var in variables_in(&text) {
            let elsewhere = OTHER_VARIABLES.iter().find(|(v, _)| *v == var);
            let read = match elsewhere {
                Some((_, script)) => std::fs::read_to_string(workspace().join(script))
                    .unwrap()
                    .contains(&var),
                None => names(&all_help, &var),
            };
            if !read {
                unknown.push(format!("{shown}: {var}"));
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "named in the docs but in no binary's --help (nor another tool's): {unknown:#?}"
    );
}

#[test]
fn every_option_of_every_binary_is_documented() {
    let docs: String = documents().into_iter().map(|(_, t)| t).collect();
    let mut missing = Vec::new();
    for (command, help) in helps() {
        let options = options_of(&help);
        for option in &options {
            if !names(&docs, option) {
                missing.push(format!("{command}: {option}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "options in --help that README.md and docs/ never mention: {missing:#?}"
    );
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for (file, text) in documents() {
        let dir = file.parent().unwrap();
        for (at, _) in text.match_indices("](") {
            let target: String = text[at + 2..].chars().take_while(|c| *c != ')').collect();
            if target.contains("://") || target.starts_with("mailto:") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            if !dir.join(path).exists() {
                broken.push(format!("{}: {target}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing: {broken:#?}");
}

#[test]
fn the_scanners_find_what_a_reader_sees() {
    assert_eq!(
        flags_in("run `coordinator run --db x --index-only`, not a--b or ---"),
        ["--db", "--index-only"]
    );
    assert_eq!(
        variables_in("set ALLDOCS_DB and `ALLDOCS_FETCHER_TOKEN`, not ALLDOCS_*"),
        ["ALLDOCS_DB", "ALLDOCS_FETCHER_TOKEN"]
    );
    let help = "Options:\n      --db <DB>\n          The checkpoint\n          [env: ALLDOCS_DB=]\n  -h, --help\n";
    assert_eq!(
        options_of(help),
        ["--db", "ALLDOCS_DB"].map(String::from).into()
    );
    assert!(names("the --db option", "--db") && !names("--db-path", "--db"));
}
