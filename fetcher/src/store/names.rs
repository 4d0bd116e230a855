//! Package names: which ones npm could publish, and the one-to-one name → object-key mapping.
//!
//! A packument is stored at `packuments/<key>.json`, where `<key>` is the name with exactly
//! these bytes percent-encoded (as `%XX`, uppercase hex), and every other byte kept:
//!
//! * `%` itself, so an encoded byte can never be confused with a literal `%XX` in a name;
//! * control characters (U+0000–U+001F, U+007F; names holding them are refused anyway);
//! * every `/`, except the first `/` of a scoped name `@scope/name`, which becomes the one
//!   directory level: `@types/node` → `@types/node`, `a/b` → `a%2Fb`, `@s/a/b` → `@s/a%2Fb`;
//! * a leading `@` of a name that is not scoped (`@x` → `%40x`), so that every top-level
//!   entry starting with `@` is a scope directory and never also a file.
//!
//! So ordinary names keep the layout they always had (`react`, `@types/node`, `JSONStream`,
//! `~x`, `a*b!`), and [`decode_key`] inverts [`encode_key`] exactly: no two names share a
//! key. No key has an empty, `.` or `..` segment or a leading `/`: the file segment always
//! ends in `.json`, and a scope segment always starts with `@` and has more after it.

use std::fmt::Write as _;

/// npm's limit on a package name's length, in bytes (all names npm accepts today are ASCII).
pub const MAX_NAME_BYTES: usize = 214;

/// A name npm could never have published; it is refused before any request is made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a valid npm package name: {why}; it is not fetched")]
pub struct InvalidName {
    /// The name as it can be printed (control characters escaped).
    pub shown: String,
    pub why: &'static str,
}

/// Checks that npm could have published `name`: not empty, not `.` or `..`, at most
/// [`MAX_NAME_BYTES`] bytes, no control characters, and a scoped name (`@scope/…`) with
/// both a scope and a package part.
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are path segments, not names")
    } else if name.len() > MAX_NAME_BYTES {
        Some("it is longer than 214 bytes")
    } else if name.chars().any(char::is_control) {
        Some("it contains control characters")
    } else if let Some(rest) = name.strip_prefix('@').filter(|r| r.contains('/')) {
        let (scope, package) = rest.split_once('/').expect("checked above");
        if scope.is_empty() {
            Some("its scope is empty (`@/…`)")
        } else if package.is_empty() {
            Some("it has a scope but no package part (`@scope/`)")
        } else {
            None
        }
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(InvalidName {
            shown: format!("{name:?}"),
            why,
        }),
    }
}

/// The object key of a name, below `packuments/` and without `.json` (see the module
/// docs). Defined for every string, valid or not, and one-to-one.
pub fn encode_key(name: &str) -> String {
    match scoped(name) {
        Some((scope, package)) => format!("@{}/{}", escape(scope), escape(package)),
        None => match name.strip_prefix('@') {
            Some(rest) => format!("%40{}", escape(rest)),
            None => escape(name),
        },
    }
}

/// The name a key was made from; `None` for a string [`encode_key`] never returns.
pub fn decode_key(key: &str) -> Option<String> {
    let name = match key.split_once('/') {
        Some((scope, package)) => {
            let scope = scope.strip_prefix('@')?;
            format!("@{}/{}", unescape(scope)?, unescape(package)?)
        }
        None => unescape(key)?,
    };
    (encode_key(&name) == key).then_some(name)
}

/// `@scope/name` split at its first `/` (the scope without its `@`).
fn scoped(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix('@')?.split_once('/')
}

fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        if c == '%' || c == '/' || c.is_ascii_control() {
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(part: &str) -> Option<String> {
    let bytes = percent_encoding::percent_decode_str(part).collect::<Vec<u8>>();
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The pairs that shared one object before the mapping was made one-to-one.
    const PAIRS: &[(&str, &str)] = &[
        ("nul\u{0}name", "nul%00name"),
        ("new\nline", "new%0Aline"),
        ("a/../x", "a/%2E%2E/x"),
        ("/abs/path", "abs/path"),
        ("b//c", "b/c"),
        ("@s/a/b", "@s/a%2Fb"),
        ("@x", "%40x"),
        ("%", "%25"),
    ];

    #[test]
    fn ordinary_names_keep_their_layout() {
        for (name, key) in [
            ("react", "react"),
            ("@types/node", "@types/node"),
            ("JSONStream", "JSONStream"),
            ("~x", "~x"),
            ("a*b!", "a*b!"),
            ("café", "café"),
        ] {
            assert_eq!(encode_key(name), key);
        }
    }

    /// Names built from an alphabet of every troublesome byte, all strings up to length
    /// 4, plus the known pairs: every key distinct, well-formed, and decoded back.
    #[test]
    fn every_name_gets_its_own_well_formed_key() {
        let alphabet = ["a", "A", "@", "/", ".", "%", "2", "F", "\0", "\n", "é", "#"];
        let mut names = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            frontier = frontier
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            names.extend(frontier.iter().cloned());
        }
        names.extend(
            PAIRS
                .iter()
                .flat_map(|(a, b)| [a.to_string(), b.to_string()]),
        );
        let mut seen: HashMap<String, String> = HashMap::new();
        for name in names {
            let key = encode_key(&name);
            let full = format!("packuments/{key}.json");
            assert!(!full.starts_with('/'), "{name:?} → {full}");
            for seg in full.split('/') {
                assert!(!matches!(seg, "" | "." | ".."), "{name:?} → {full}");
                assert!(!seg.chars().any(|c| c.is_ascii_control()), "{name:?}");
            }
            assert!(object_store::path::Path::parse(&full).is_ok(), "{full}");
            assert_eq!(decode_key(&key).as_deref(), Some(&name[..]), "{key}");
            if let Some(other) = seen.insert(key.clone(), name.clone()) {
                assert_eq!(other, name, "two names share the key {key}");
            }
        }
        assert!(seen.len() > 20_000, "{} names", seen.len());
        for (a, b) in PAIRS {
            assert_ne!(encode_key(a), encode_key(b), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn names_npm_could_never_publish_are_refused_with_the_reason() {
        for (name, says) in [
            ("", "empty"),
            (".", "`.` and `..`"),
            ("..", "`.` and `..`"),
            ("nul\u{0}name", "control characters"),
            ("new\nline", "control characters"),
            ("@scope/", "no package part"),
            ("@/x", "scope is empty"),
        ] {
            let err = check_name(name).expect_err(name).to_string();
            assert!(err.contains("not a valid npm package name"), "{err}");
            assert!(err.contains(says), "{name:?}: {err}");
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(check_name(&long).unwrap_err().to_string().contains("214"));
        for ok in [
            "react",
            "@types/node",
            "JSONStream",
            "~x",
            "a/../x",
            "@x",
            "...",
            &"x".repeat(MAX_NAME_BYTES),
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn strings_that_are_no_key_decode_to_nothing() {
        for key in ["a/b", "%4", "%ZZ", "x%2f", "@a%2Fb", "%FF"] {
            assert_eq!(decode_key(key), None, "{key}");
        }
    }
}
