//! One packument as the rows of the Parquet tables `export --format parquet` writes, and
//! what was odd in it. Parsed borrowing from the stored bytes: only the fields a table
//! has are read, everything else (a `readme` of megabytes, `users`) is skipped unallocated,
//! and each version's manifest is parsed on its own from its raw JSON. A field of an
//! unexpected form becomes null (or its documented normal form) and a [`Problem`], never
//! an error: one odd packument never stops an export.

use std::{borrow::Cow, collections::BTreeMap};

use serde::Deserialize;
use serde_json::{value::RawValue, Value};

use super::manifest::Manifest;

/// One package's rows.
#[derive(Debug, Default)]
pub struct Rows {
    pub package: Package,
    pub versions: Vec<Version>,
    pub dependencies: Vec<Dependency>,
    pub maintainers: Vec<Maintainer>,
    pub dist_tags: Vec<(String, String)>,
    pub problems: Vec<Problem>,
}

/// A row of `packages.parquet`.
#[derive(Debug, Default)]
pub struct Package {
    pub rev: Option<String>,
    /// `time.created` and `time.modified`, in milliseconds since the Unix epoch.
    pub created: Option<i64>,
    pub modified: Option<i64>,
    pub latest: Option<String>,
    pub description: Option<String>,
    pub license: Option<String>,
    pub repository: Option<String>,
    pub homepage: Option<String>,
    pub versions: i32,
    pub maintainers: Vec<String>,
}

/// A row of `versions.parquet`.
#[derive(Debug, Default)]
pub struct Version {
    pub version: String,
    pub published: Option<i64>,
    pub deprecated: Option<String>,
    pub license: Option<String>,
    pub tarball: Option<String>,
    pub integrity: Option<String>,
    pub shasum: Option<String>,
    pub unpacked_size: Option<i64>,
    pub file_count: Option<i64>,
    pub install_scripts: bool,
    pub engines: Option<String>,
    pub npm_user: Option<String>,
}

/// A row of `dependencies.parquet`.
#[derive(Debug)]
pub struct Dependency {
    pub version: String,
    pub kind: &'static str,
    pub dependency: String,
    pub range: Option<String>,
}

/// A row of `maintainers.parquet`.
#[derive(Debug)]
pub struct Maintainer {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A row of `problems.parquet`: what was odd, in which field of which version.
#[derive(Debug)]
pub struct Problem {
    pub version: Option<String>,
    pub field: Cow<'static, str>,
    pub kind: &'static str,
    pub detail: String,
}

/// The fields of a packument the tables use; the rest is skipped.
#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(rename = "_rev", borrow)]
    rev: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(rename = "dist-tags", borrow)]
    dist_tags: Option<&'a RawValue>,
    description: Option<Value>,
    license: Option<Value>,
    repository: Option<Value>,
    homepage: Option<Value>,
    maintainers: Option<Value>,
    #[serde(borrow)]
    versions: Option<&'a RawValue>,
}

/// The longest stretch of an odd value quoted in a problem's detail.
const DETAIL_BYTES: usize = 200;

impl Rows {
    /// The rows of the stored packument `bytes`.
    pub fn of(bytes: &[u8]) -> Rows {
        let mut rows = Rows::default();
        let doc: Doc = match serde_json::from_slice(bytes) {
            Ok(doc) => doc,
            Err(e) => {
                let kind = if e.is_data() {
                    "not_a_packument"
                } else {
                    "not_json"
                };
                rows.problem(None, "", kind, e.to_string());
                return rows;
            }
        };
        let times = rows.times(doc.time);
        let p = &mut rows.package;
        p.rev = doc
            .rev
            .and_then(|r| serde_json::from_str::<String>(r.get()).ok());
        p.created = times.get("created").copied().flatten();
        p.modified = times.get("modified").copied().flatten();
        rows.package.description = rows.string("description", doc.description);
        rows.package.homepage = rows.string("homepage", doc.homepage);
        rows.package.license = rows.license(None, doc.license);
        rows.package.repository = rows.repository(doc.repository);
        rows.dist_tags(doc.dist_tags);
        rows.package.latest = (rows.dist_tags.iter())
            .find(|(tag, _)| tag == "latest")
            .map(|(_, v)| v.clone());
        rows.maintainers(doc.maintainers);
        rows.versions(doc.versions, &times);
        rows
    }

    pub(super) fn problem(
        &mut self,
        version: Option<&str>,
        field: &str,
        kind: &'static str,
        detail: String,
    ) {
        let field = match field {
            "" => Cow::Borrowed(""),
            f => Cow::Owned(f.to_string()),
        };
        self.problems.push(Problem {
            version: version.map(str::to_string),
            field,
            kind,
            detail: clip(detail),
        });
    }

    pub(super) fn wrong_type(&mut self, version: Option<&str>, field: &str, value: &Value) {
        self.problem(version, field, "wrong_type", value.to_string());
    }

    /// A string field; another type is null and a problem.
    fn string(&mut self, field: &str, value: Option<Value>) -> Option<String> {
        self.string_in(None, field, value)
    }

    pub(super) fn string_in(
        &mut self,
        v: Option<&str>,
        field: &str,
        value: Option<Value>,
    ) -> Option<String> {
        match value? {
            Value::String(s) => Some(s),
            Value::Null => None,
            other => {
                self.wrong_type(v, field, &other);
                None
            }
        }
    }

    /// `time`: each key's RFC 3339 instant in milliseconds, `None` for one that is not.
    fn times(&mut self, time: Option<&RawValue>) -> BTreeMap<String, Option<i64>> {
        let Some(time) = time else {
            return BTreeMap::new();
        };
        let map: BTreeMap<String, Value> = match serde_json::from_str(time.get()) {
            Ok(map) => map,
            Err(_) => {
                self.problem(None, "time", "wrong_type", time.get().to_string());
                return BTreeMap::new();
            }
        };
        let mut out = BTreeMap::new();
        for (key, value) in map {
            let ms = value.as_str().and_then(instant_ms);
            if ms.is_none() {
                let field = format!("time.{key}");
                self.problem(None, &field, "bad_time", value.to_string());
            }
            out.insert(key, ms);
        }
        out
    }

    /// A `license`: a string as it is; `{"type": T}` is T; a list is its items' licences
    /// joined with ` OR `. The last two are problems of kind `license_object` and
    /// `license_list`; anything else is null and `wrong_type`.
    pub(super) fn license(&mut self, v: Option<&str>, value: Option<Value>) -> Option<String> {
        fn one(value: &Value) -> Option<&str> {
            match value {
                Value::String(s) => Some(s),
                Value::Object(o) => o.get("type").and_then(Value::as_str),
                _ => None,
            }
        }
        let value = value?;
        let (kind, license) = match &value {
            Value::Null => return None,
            Value::String(s) => return Some(s.clone()),
            Value::Object(_) => ("license_object", one(&value).map(str::to_string)),
            Value::Array(items) => {
                let all: Option<Vec<&str>> = items.iter().map(one).collect();
                ("license_list", all.map(|l| l.join(" OR ")))
            }
            _ => ("wrong_type", None),
        };
        let kind = if license.is_none() {
            "wrong_type"
        } else {
            kind
        };
        self.problem(v, "license", kind, value.to_string());
        license
    }

    /// A `repository`: its `url`; a string (npm's `user/repo` shorthand) as written, with
    /// a problem of kind `repository_string`.
    fn repository(&mut self, value: Option<Value>) -> Option<String> {
        match value? {
            Value::Null => None,
            Value::Object(o) if o.get("url").is_some_and(Value::is_string) => {
                o.get("url").and_then(Value::as_str).map(str::to_string)
            }
            Value::String(s) => {
                self.problem(None, "repository", "repository_string", s.clone());
                Some(s)
            }
            other => {
                self.wrong_type(None, "repository", &other);
                None
            }
        }
    }

    fn dist_tags(&mut self, tags: Option<&RawValue>) {
        let Some(tags) = tags else { return };
        match serde_json::from_str::<BTreeMap<String, Value>>(tags.get()) {
            Ok(tags) => {
                for (tag, version) in tags {
                    match version {
                        Value::String(v) => self.dist_tags.push((tag, v)),
                        other => self.wrong_type(None, &format!("dist-tags.{tag}"), &other),
                    }
                }
            }
            Err(_) => self.problem(None, "dist-tags", "wrong_type", tags.get().to_string()),
        }
    }

    /// `maintainers`: `{name, email}` objects; a string `Name <email>` is split, with a
    /// problem of kind `maintainer_string`.
    fn maintainers(&mut self, value: Option<Value>) {
        let items = match value {
            None | Some(Value::Null) => return,
            Some(Value::Array(items)) => items,
            Some(other) => return self.wrong_type(None, "maintainers", &other),
        };
        for item in items {
            let found = match &item {
                Value::Object(o) => Some(Maintainer {
                    name: o.get("name").and_then(Value::as_str).map(str::to_string),
                    email: o.get("email").and_then(Value::as_str).map(str::to_string),
                }),
                Value::String(s) => {
                    self.problem(None, "maintainers", "maintainer_string", s.clone());
                    Some(person_of(s))
                }
                other => {
                    self.wrong_type(None, "maintainers", other);
                    None
                }
            };
            if let Some(m) = found {
                self.package.maintainers.extend(m.name.clone());
                self.maintainers.push(m);
            }
        }
    }

    fn versions(&mut self, versions: Option<&RawValue>, times: &BTreeMap<String, Option<i64>>) {
        let Some(versions) = versions else { return };
        let map: BTreeMap<Cow<str>, &RawValue> = match serde_json::from_str(versions.get()) {
            Ok(map) => map,
            Err(_) => {
                let raw = versions.get().to_string();
                return self.problem(None, "versions", "wrong_type", raw);
            }
        };
        self.package.versions = map.len() as i32;
        for (version, raw) in map {
            let mut row = Version {
                version: version.to_string(),
                ..Default::default()
            };
            match times.get(version.as_ref()) {
                Some(ms) => row.published = *ms,
                None => self.problem(Some(&version), "time", "no_time", String::new()),
            }
            match serde_json::from_str::<Manifest>(raw.get()) {
                Ok(m) => self.manifest(&mut row, m),
                Err(e) => self.problem(Some(&version), "", "version_not_an_object", e.to_string()),
            }
            self.versions.push(row);
        }
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 instant: `…Z` or `…±HH:MM`, with or
/// without fractions of a second.
pub fn instant_ms(s: &str) -> Option<i64> {
    let (local, offset_s) = match s.strip_suffix('Z') {
        Some(local) => (local, 0),
        None => {
            let at = s.len().checked_sub(6)?;
            let (local, offset) = (s.get(..at)?, s.get(at..)?.as_bytes());
            let digit = |i: usize| (offset[i] as char).to_digit(10).map(i64::from);
            let (h, m) = (digit(1)? * 10 + digit(2)?, digit(4)? * 10 + digit(5)?);
            let sign = match (offset[0], offset[3]) {
                (b'+', b':') => 1,
                (b'-', b':') => -1,
                _ => return None,
            };
            (local, sign * (h * 3600 + m * 60))
        }
    };
    if !local.contains('T') {
        return None;
    }
    let t = humantime::parse_rfc3339_weak(local).ok()?;
    let since = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis())
        .ok()?
        .checked_sub(offset_s * 1000)
}

/// `Name <email> (url)` as a maintainer.
fn person_of(s: &str) -> Maintainer {
    let name = s.split(['<', '(']).next().unwrap_or("").trim();
    let email = s
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(email, _)| email.trim().to_string());
    Maintainer {
        name: (!name.is_empty()).then(|| name.to_string()),
        email,
    }
}

/// A detail cut to [`DETAIL_BYTES`], on a character boundary.
fn clip(mut s: String) -> String {
    if s.len() > DETAIL_BYTES {
        let mut end = DETAIL_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_in_utc_or_with_an_offset_are_milliseconds_and_others_none() {
        assert_eq!(instant_ms("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(
            instant_ms("2024-09-05T00:40:51.026000+00:00"),
            Some(1_725_496_851_026)
        );
        assert_eq!(instant_ms("1970-01-01T02:00:00+02:00"), Some(0));
        assert_eq!(instant_ms("1970-01-01T00:00:00-01:30"), Some(5_400_000));
        for bad in ["last tuesday", "2024-01-01", "2024-01-01T00:00:00+0200", ""] {
            assert_eq!(instant_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_document_that_is_not_json_or_not_an_object_is_one_problem() {
        for (bytes, kind) in [
            (&b"{\"name\":"[..], "not_json"),
            (b"[1,2]", "not_a_packument"),
        ] {
            let rows = Rows::of(bytes);
            assert_eq!(rows.problems.len(), 1);
            assert_eq!(rows.problems[0].kind, kind);
            assert!(rows.versions.is_empty());
        }
    }

    #[test]
    fn a_maintainer_string_is_split_into_name_and_email() {
        let m = person_of("Jane Doe <jane@registry.example> (https://registry.example/jane)");
        assert_eq!(m.name.as_deref(), Some("Jane Doe"));
        assert_eq!(m.email.as_deref(), Some("jane@registry.example"));
        assert_eq!(person_of("solo").email, None);
    }
}
