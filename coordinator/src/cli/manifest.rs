//! One version's manifest as its `versions.parquet` row and `dependencies.parquet` rows
//! (see [`super::rows`]).

use serde::Deserialize;
use serde_json::Value;

use super::rows::{Dependency, Rows, Version};

/// The fields of a version's manifest the tables use; the rest is skipped.
#[derive(Deserialize)]
pub struct Manifest {
    deprecated: Option<Value>,
    license: Option<Value>,
    dist: Option<Value>,
    scripts: Option<Value>,
    #[serde(rename = "hasInstallScript")]
    has_install_script: Option<Value>,
    engines: Option<Value>,
    #[serde(rename = "_npmUser")]
    npm_user: Option<Value>,
    dependencies: Option<Value>,
    #[serde(rename = "devDependencies")]
    dev_dependencies: Option<Value>,
    #[serde(rename = "peerDependencies")]
    peer_dependencies: Option<Value>,
    #[serde(rename = "optionalDependencies")]
    optional_dependencies: Option<Value>,
    #[serde(rename = "bundleDependencies")]
    bundle_dependencies: Option<Value>,
    #[serde(rename = "bundledDependencies")]
    bundled_dependencies: Option<Value>,
}

/// The lifecycle scripts npm runs on install.
const INSTALL_SCRIPTS: [&str; 3] = ["preinstall", "install", "postinstall"];

impl Rows {
    /// Fills `row` from its manifest and adds its dependencies.
    pub(super) fn manifest(&mut self, row: &mut Version, m: Manifest) {
        let v = Some(row.version.as_str());
        row.deprecated = match m.deprecated {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.wrong_type(v, "deprecated", &other);
                Some(other.to_string())
            }
        };
        row.license = self.license(v, m.license);
        if let Some(dist) = m.dist {
            let mut text = |field: &str| {
                let value = dist.get(field).cloned();
                self.string_in(v, &format!("dist.{field}"), value)
            };
            row.tarball = text("tarball");
            row.integrity = text("integrity");
            row.shasum = text("shasum");
            row.unpacked_size = self.count(v, "dist.unpackedSize", dist.get("unpackedSize"));
            row.file_count = self.count(v, "dist.fileCount", dist.get("fileCount"));
        }
        let scripts = m.scripts.as_ref().and_then(Value::as_object);
        row.install_scripts = m.has_install_script == Some(Value::Bool(true))
            || scripts.is_some_and(|s| {
                INSTALL_SCRIPTS
                    .iter()
                    .any(|k| s.get(*k).is_some_and(|c| !c.is_null()))
            });
        row.engines = match m.engines {
            None | Some(Value::Null) => None,
            Some(e @ Value::Object(_)) => Some(e.to_string()),
            Some(other) => {
                self.wrong_type(v, "engines", &other);
                None
            }
        };
        row.npm_user = match m.npm_user {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => o.get("name").and_then(Value::as_str).map(str::to_string),
            Some(other) => {
                self.wrong_type(v, "_npmUser", &other);
                None
            }
        };
        let version = row.version.as_str();
        let declared = m.dependencies.clone();
        for (kind, value) in [
            ("dependencies", m.dependencies),
            ("devDependencies", m.dev_dependencies),
            ("peerDependencies", m.peer_dependencies),
            ("optionalDependencies", m.optional_dependencies),
        ] {
            self.dependencies_of(version, kind, value);
        }
        let bundled = m.bundle_dependencies.or(m.bundled_dependencies);
        self.bundled(version, bundled, declared);
    }

    /// A non-negative integer field; another value is null and a problem.
    fn count(&mut self, v: Option<&str>, field: &str, value: Option<&Value>) -> Option<i64> {
        match value? {
            Value::Null => None,
            Value::Number(n) if n.as_i64().is_some_and(|n| n >= 0) => n.as_i64(),
            other => {
                self.wrong_type(v, field, other);
                None
            }
        }
    }

    /// One map of dependencies. An object is `name: range`, a range that is not a string
    /// kept as its JSON (kind `range_not_string`); a list of names (old manifests) is one
    /// row per name with a null range (kind `dependencies_list`); a string gives no rows
    /// (kind `dependencies_string`).
    fn dependencies_of(&mut self, version: &str, kind: &'static str, value: Option<Value>) {
        let v = Some(version);
        match value {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (dependency, range) in map {
                    let range = match range {
                        Value::String(s) => s,
                        other => {
                            let field = format!("{kind}.{dependency}");
                            self.problem(v, &field, "range_not_string", other.to_string());
                            other.to_string()
                        }
                    };
                    self.push_dependency(version, kind, dependency, Some(range));
                }
            }
            Some(Value::Array(items)) => {
                self.problem(
                    v,
                    kind,
                    "dependencies_list",
                    Value::Array(items.clone()).to_string(),
                );
                for item in items {
                    match item {
                        Value::String(name) => self.push_dependency(version, kind, name, None),
                        other => self.wrong_type(v, kind, &other),
                    }
                }
            }
            Some(Value::String(s)) => self.problem(v, kind, "dependencies_string", s),
            Some(other) => self.wrong_type(v, kind, &other),
        }
    }

    /// `bundleDependencies` (or `bundledDependencies`): a list of names, each a row with a
    /// null range; `true` bundles every one of `dependencies`; `false` none.
    fn bundled(&mut self, version: &str, value: Option<Value>, declared: Option<Value>) {
        const KIND: &str = "bundleDependencies";
        match value {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                let names = declared.as_ref().and_then(Value::as_object);
                for name in names.into_iter().flat_map(|m| m.keys()) {
                    self.push_dependency(version, KIND, name.clone(), None);
                }
            }
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(name) => self.push_dependency(version, KIND, name, None),
                        other => self.wrong_type(Some(version), KIND, &other),
                    }
                }
            }
            Some(other) => self.wrong_type(Some(version), KIND, &other),
        }
    }

    fn push_dependency(
        &mut self,
        version: &str,
        kind: &'static str,
        dependency: String,
        range: Option<String>,
    ) {
        self.dependencies.push(Dependency {
            version: version.to_string(),
            kind,
            dependency,
            range,
        });
    }
}
