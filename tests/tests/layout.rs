//! The product crates keep the shape their folders show. Each crate's `src/` holds a few
//! parts (a folder with a `mod.rs` each); a part may use only the parts its `mod.rs`
//! header names on its `//! Uses:` line, and the imports between parts never run in a
//! circle. Read from the sources with `syn`: every `use` tree and every path in the code
//! (a `crate::…` or a `super::…` that climbs out of the part), tests included.
//!
//! Also: no source file in those crates is over 400 lines, tests aside (a `#[cfg(test)]`
//! module at its end, or a file of tests such as `checkpoint/tests.rs`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use syn::visit::Visit;

const FILE_LIMIT: usize = 400;

/// One import of another part: the part used, and where.
#[derive(Clone, Debug)]
struct Import {
    to: String,
    at: String,
}

/// Finds, in one file, every path that names a part of the crate.
struct Imports<'a> {
    parts: &'a BTreeSet<String>,
    /// The module this code is in, from the crate root (`["checkpoint", "leases"]`).
    module: Vec<String>,
    file: String,
    found: Vec<Import>,
}

impl Imports<'_> {
    /// The part a path starting with `segments` names, if it names one.
    fn part_of(&self, segments: &[String]) -> Option<String> {
        let mut at: Vec<String> = match segments.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("super") | Some("self") => self.module.clone(),
            _ => return None,
        };
        let mut rest = segments;
        if rest[0] == "crate" {
            rest = &rest[1..];
        }
        for s in rest {
            match s.as_str() {
                "super" => {
                    at.pop();
                }
                "self" => {}
                name => {
                    at.push(name.to_string());
                    break;
                }
            }
        }
        at.first().filter(|p| self.parts.contains(*p)).cloned()
    }

    fn note(&mut self, segments: &[String], line: usize) {
        if let Some(to) = self.part_of(segments) {
            self.found.push(Import {
                to,
                at: format!("{}:{line}", self.file),
            });
        }
    }

    /// Every path a `use` tree spells out, each as its leading segments.
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, line: usize) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, line);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.note(prefix, line);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.note(prefix, line);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.note(prefix, line),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item, line);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Imports<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let line = syn::spanned::Spanned::span(u).start().line;
        self.use_tree(&mut Vec::new(), &u.tree, line);
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1 {
            let line = syn::spanned::Spanned::span(p).start().line;
            self.note(&segments, line);
        }
        syn::visit::visit_path(self, p);
    }
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The parts of a crate: the folders of its `src/` that have a `mod.rs`.
fn parts_of(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("mod.rs").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The module a file is, from the crate root: `checkpoint/mod.rs` → `["checkpoint"]`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut module: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if module
        .last()
        .is_some_and(|m| m == "mod" || m == "lib" || m == "main")
    {
        module.pop();
    }
    module
}

/// For each part, the parts it imports, with where.
fn imports_of(krate: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = workspace().join(krate).join("src");
    let parts = parts_of(&src);
    assert!(parts.len() >= 3, "{krate} has its parts: {parts:?}");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = module_of(relative);
        let Some(part) = module.first().filter(|p| parts.contains(*p)).cloned() else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut v = Imports {
            parts: &parts,
            module,
            file: format!("{krate}/src/{}", relative.display()),
            found: Vec::new(),
        };
        v.visit_file(&ast);
        let edges = graph.entry(part.clone()).or_default();
        for import in v.found.into_iter().filter(|i| i.to != part) {
            edges.entry(import.to).or_default().insert(import.at);
        }
    }
    graph
}

/// A circle in `graph`, as the parts along it (`a → b → a`), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

/// The parts a part's `mod.rs` says it may use (its `//! Uses:` line, names in backticks;
/// `no other part` for none).
fn declared_uses(krate: &str, part: &str) -> BTreeSet<String> {
    let path = workspace()
        .join(krate)
        .join("src")
        .join(part)
        .join("mod.rs");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("//! **Part `"),
        "{}: a part's mod.rs begins by saying what the part owns (`//! **Part `{part}`: …`)",
        path.display()
    );
    let line = text
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .find(|l| l.starts_with("//! Uses:"))
        .unwrap_or_else(|| {
            panic!(
                "{}: its header has no `//! Uses:` line naming the parts it may use",
                path.display()
            )
        });
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn join(places: &BTreeSet<String>) -> String {
    places.iter().cloned().collect::<Vec<_>>().join(", ")
}

fn check_crate(krate: &str) {
    let graph = imports_of(krate);
    let mut problems = Vec::new();
    for (part, edges) in &graph {
        let declared = declared_uses(krate, part);
        for (to, at) in edges {
            if !declared.contains(to) {
                problems.push(format!(
                    "{krate}: part `{part}` uses `{to}`, which its mod.rs does not allow (Uses: {declared:?}), at {}",
                    join(at)
                ));
            }
        }
    }
    let bare: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .map(|(p, e)| (p.clone(), e.keys().cloned().collect()))
        .collect();
    if let Some(cycle) = find_cycle(&bare) {
        let hops: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} → {} at {}", w[0], w[1], join(&graph[&w[0]][&w[1]])))
            .collect();
        problems.push(format!(
            "{krate}: an import cycle between parts: {} ({})",
            cycle.join(" → "),
            hops.join("; ")
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_coordinator_parts_import_only_downwards_and_as_declared() {
    check_crate("coordinator");
}

#[test]
fn the_fetcher_parts_import_only_downwards_and_as_declared() {
    check_crate("fetcher");
}

#[test]
fn a_cycle_is_found_and_named() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("cli", vec!["run"]),
        ("run", vec!["checkpoint"]),
        ("checkpoint", vec!["follow"]),
        ("follow", vec!["checkpoint", "plan"]),
        ("plan", vec![]),
    ]
    .into_iter()
    .map(|(p, e)| (p.to_string(), e.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "checkpoint".into(),
            "follow".into(),
            "checkpoint".into()
        ])
    );
    let mut acyclic = graph;
    acyclic.get_mut("follow").unwrap().remove("checkpoint");
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn a_super_path_that_climbs_out_of_its_part_is_an_import_of_the_part_it_reaches() {
    let parts: BTreeSet<String> = ["fleet", "checkpoint"].map(String::from).into();
    let v = Imports {
        parts: &parts,
        module: vec!["fleet".into(), "stream".into(), "tests".into()],
        file: String::new(),
        found: Vec::new(),
    };
    let path = |p: &str| p.split("::").map(String::from).collect::<Vec<_>>();
    assert_eq!(
        v.part_of(&path("super::super::super::checkpoint::Db")),
        Some("checkpoint".into())
    );
    assert_eq!(v.part_of(&path("super::Batch")), Some("fleet".into()));
    assert_eq!(
        v.part_of(&path("crate::checkpoint::Db")),
        Some("checkpoint".into())
    );
    assert_eq!(v.part_of(&path("std::sync::Arc")), None);
}

#[test]
fn no_source_file_of_the_product_crates_is_over_400_lines_tests_aside() {
    let mut files = Vec::new();
    for krate in ["proto", "fetcher", "coordinator"] {
        rust_files(&workspace().join(krate).join("src"), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let code = lines
                .windows(2)
                .position(|w| w[0] == "#[cfg(test)]" && w[1] == "mod tests {")
                .unwrap_or(lines.len());
            (code > FILE_LIMIT).then(|| format!("{} ({code} lines)", f.display()))
        })
        .collect();
    assert!(files.len() > 40, "found the sources: {}", files.len());
    assert!(long.is_empty(), "files over {FILE_LIMIT} lines: {long:?}");
}
