//! The product crates stay readable: no function in `proto`, `fetcher` or `coordinator`
//! (tests included) runs over 80 lines, counted from its signature to its closing brace.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

const LIMIT: usize = 80;

/// Every `fn` (free, in an impl, in a trait) with its first and last line.
struct Functions<'a> {
    file: &'a Path,
    found: Vec<(String, usize)>,
}

impl Functions<'_> {
    fn note(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let lines = span.end().line - span.start().line + 1;
        self.found.push((
            format!("{}:{} {name}", self.file.display(), span.start().line),
            lines,
        ));
    }
}

impl<'ast> Visit<'ast> for Functions<'_> {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.note(&f.sig.ident, syn::spanned::Spanned::span(f));
        syn::visit::visit_item_fn(self, f);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.note(&f.sig.ident, syn::spanned::Spanned::span(f));
        syn::visit::visit_impl_item_fn(self, f);
    }
    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if f.default.is_some() {
            self.note(&f.sig.ident, syn::spanned::Spanned::span(f));
        }
        syn::visit::visit_trait_item_fn(self, f);
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

#[test]
fn no_function_in_the_product_crates_is_over_80_lines() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in ["proto", "fetcher", "coordinator"] {
        rust_files(&workspace.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 20, "found the sources: {files:?}");
    let mut all = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let relative = file.strip_prefix(workspace).unwrap();
        let mut v = Functions {
            file: relative,
            found: Vec::new(),
        };
        v.visit_file(&ast);
        all.extend(v.found);
    }
    assert!(all.len() > 200, "found the functions: {}", all.len());
    let long: Vec<_> = all.iter().filter(|(_, n)| *n > LIMIT).collect();
    assert!(long.is_empty(), "functions over {LIMIT} lines: {long:?}");
}
