//! Key-space arithmetic: half-open partitions in raw byte order and their stable names.

/// One half-open range `[start, end)` of the key space, with its stable name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub start: Option<String>,
    pub end: Option<String>,
}

/// The partitions sorted pivots cut the key space into (pivots + 1 of them): the first
/// without a start, the last without an end, each pivot the end of one and the start of
/// the next.
pub fn partitions<S: AsRef<str>>(pivots: &[S]) -> Vec<Partition> {
    let mut bounds: Vec<Option<&str>> = Vec::with_capacity(pivots.len() + 2);
    bounds.push(None);
    bounds.extend(pivots.iter().map(|p| Some(p.as_ref())));
    bounds.push(None);
    bounds
        .windows(2)
        .map(|w| Partition {
            name: partition_name(w[0], w[1]),
            start: w[0].map(str::to_string),
            end: w[1].map(str::to_string),
        })
        .collect()
}

/// Whether `key` lies in the half-open range `[start, end)`, comparing raw bytes as
/// `_all_docs` orders them. An absent bound is the edge of the key space.
pub fn in_range(key: &str, start: Option<&str>, end: Option<&str>) -> bool {
    start.is_none_or(|s| key.as_bytes() >= s.as_bytes())
        && end.is_none_or(|e| key.as_bytes() < e.as_bytes())
}

/// The stable name of the partition `[start, end)`: each bound escaped, joined by `+`,
/// an open bound left empty. Bytes outside `[a-z0-9.-]` are written `_XX` (hex), so
/// names are unambiguous, safe in every object store and on case-insensitive disks:
/// `[None, "a")` → `+a`, `["@types/", "B")` → `_40types_2F+_42`, `["x", None)` → `x+`.
pub fn partition_name(start: Option<&str>, end: Option<&str>) -> String {
    format!(
        "{}+{}",
        escape(start.unwrap_or("")),
        escape(end.unwrap_or(""))
    )
}

fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_half_open_in_byte_order() {
        assert!(in_range("a", Some("a"), Some("b")));
        assert!(!in_range("b", Some("a"), Some("b")));
        assert!(in_range("@types/node", None, Some("A")));
        assert!(!in_range("Zed", Some("a"), None));
        assert!(in_range("zzz", Some("a"), None));
        assert!(in_range("", None, None));
    }

    #[test]
    fn partition_names_are_distinct_and_safe() {
        assert_eq!(partition_name(None, Some("a")), "+a");
        assert_eq!(
            partition_name(Some("@types/"), Some("B")),
            "_40types_2F+_42"
        );
        assert_eq!(partition_name(Some("x"), None), "x+");
        // Case and separators cannot collide.
        assert_ne!(
            partition_name(Some("a"), None),
            partition_name(Some("A"), None)
        );
        assert_ne!(
            partition_name(Some("a+b"), None),
            partition_name(Some("a"), Some("b"))
        );
        let odd = partition_name(Some("~é*?"), Some("%"));
        assert!(odd
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)));
    }
}
