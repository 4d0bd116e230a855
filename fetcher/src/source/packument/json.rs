//! Checking that a body is exactly one JSON object, and reading its top-level `_rev`,
//! without keeping anything else of it: from bytes in memory, or from chunks streamed
//! from async code to a blocking thread.

use std::{fmt, io::Read};

use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use tokio::sync::mpsc;

/// Checks that `reader` holds exactly one JSON object and returns its top-level `_rev`,
/// without keeping anything else of it.
pub fn doc_rev<R: JsonSource>(reader: R) -> Result<Option<String>, serde_json::Error> {
    reader.parse_head().map(|h| h.0)
}

/// Something a whole JSON document can be read from.
pub trait JsonSource {
    fn parse_head(self) -> Result<Head, serde_json::Error>;
}

impl JsonSource for &[u8] {
    fn parse_head(self) -> Result<Head, serde_json::Error> {
        serde_json::from_slice(self)
    }
}

impl JsonSource for ChannelReader {
    fn parse_head(self) -> Result<Head, serde_json::Error> {
        serde_json::from_reader(self)
    }
}

/// The top-level `_rev` of a document; every other value is checked and dropped.
pub struct Head(Option<String>);

impl<'de> serde::Deserialize<'de> for Head {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeadVisitor;
        impl<'de> Visitor<'de> for HeadVisitor {
            type Value = Head;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object (a packument)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
                let mut rev = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "_rev" {
                        rev = map.next_value::<Option<String>>()?;
                        let len = rev.as_ref().map_or(0, String::len);
                        if len > crate::source::all_docs::MAX_REV_BYTES {
                            // Nothing this size is a CouchDB revision; it must not reach
                            // the checkpoint.
                            return Err(serde::de::Error::custom(format_args!(
                                "the document's `_rev` is {len} bytes, over {}",
                                crate::source::all_docs::MAX_REV_BYTES
                            )));
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Head(rev))
            }
        }
        d.deserialize_map(HeadVisitor)
    }
}

/// A blocking `Read` over chunks sent from async code.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub(in crate::source) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
