//! The bounded deserializer of one `_all_docs` page: seeds that read `offset` and `rows`
//! and refuse, as it arrives, a row past the `limit` asked for, or an id, key or revision
//! over its bound, naming the row; everything else in the page is skipped unread.

use std::{cell::Cell, fmt};

use serde::{
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};

use super::{Page, PageError, Row, RowValue, MAX_ID_BYTES, MAX_JSON_STRING_BYTES, MAX_REV_BYTES};

/// Where the parse is, for reasons that name a row; and a refusal decided while parsing.
#[derive(Default)]
pub(super) struct Position {
    /// 1-based row being read; 0 outside `rows`.
    row: Cell<usize>,
    field: Cell<&'static str>,
    limit: Cell<usize>,
    pub(super) refused: Cell<Option<PageError>>,
}

impl Position {
    pub(super) fn too_long(&self, bytes: String) -> PageError {
        if self.row.get() == 0 {
            return PageError::StringTooLong;
        }
        PageError::FieldTooLong {
            row: self.row.get(),
            field: self.field.get(),
            limit: self.limit.get(),
            bytes,
        }
    }

    /// Records a refusal and returns the error that stops the parse.
    fn refuse<E: de::Error>(&self, refusal: PageError) -> E {
        let e = E::custom(&refusal);
        self.refused.set(Some(refusal));
        e
    }

    /// Reads a field's name (bounded like any string).
    fn naming<T>(&self, read: impl FnOnce() -> T) -> T {
        self.enter("field name", MAX_JSON_STRING_BYTES);
        read()
    }

    fn enter(&self, field: &'static str, limit: usize) {
        self.field.set(field);
        self.limit.set(limit);
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum PageField {
    Offset,
    Rows,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum RowField {
    Id,
    Key,
    Value,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ValueField {
    Rev,
    #[serde(other)]
    Other,
}

pub(super) struct PageSeed<'a> {
    pub(super) limit: u32,
    pub(super) at: &'a Position,
}

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = Page;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Page, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_> {
    type Value = Page;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an `_all_docs` object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Page, A::Error> {
        let mut page = Page::default();
        while let Some(field) = map.next_key::<PageField>()? {
            match field {
                PageField::Offset => page.offset = map.next_value()?,
                PageField::Rows => {
                    page.rows = map.next_value_seed(RowsSeed {
                        limit: self.limit,
                        at: self.at,
                    })?;
                    self.at.row.set(0);
                }
                PageField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(page)
    }
}

struct RowsSeed<'a> {
    limit: u32,
    at: &'a Position,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = Vec<Row>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Row>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = Vec<Row>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Row>, A::Error> {
        let mut rows = Vec::new();
        loop {
            self.at.row.set(rows.len() + 1);
            self.at.enter("row", MAX_JSON_STRING_BYTES);
            if rows.len() >= self.limit as usize {
                return match seq.next_element::<IgnoredAny>()? {
                    None => Ok(rows),
                    Some(_) => Err(self.at.refuse(PageError::TooManyRows { limit: self.limit })),
                };
            }
            match seq.next_element_seed(RowSeed(self.at))? {
                Some(row) => rows.push(row),
                None => return Ok(rows),
            }
        }
    }
}

struct RowSeed<'a>(&'a Position);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Row;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Row, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Row;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an `_all_docs` row")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
        let at = self.0;
        let mut row = Row::default();
        while let Some(field) = at.naming(|| map.next_key::<RowField>())? {
            match field {
                RowField::Id => row.id = map.next_value_seed(Bounded::new(at, "id"))?,
                RowField::Key => row.key = map.next_value_seed(Bounded::new(at, "key"))?,
                RowField::Value => row.value = map.next_value_seed(ValueSeed(at))?,
                RowField::Other => {
                    at.enter("unknown field", MAX_JSON_STRING_BYTES);
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }
}

struct ValueSeed<'a>(&'a Position);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Option<RowValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Option<RowValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row's value")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut value = RowValue::default();
        while let Some(field) = self.0.naming(|| map.next_key::<ValueField>())? {
            match field {
                ValueField::Rev => value.rev = map.next_value_seed(Bounded::new(self.0, "rev"))?,
                ValueField::Other => {
                    self.0.enter("value", MAX_JSON_STRING_BYTES);
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(value))
    }
}

/// An optional string field of a row, refused past its bound.
struct Bounded<'a> {
    at: &'a Position,
    field: &'static str,
    limit: usize,
}

impl<'a> Bounded<'a> {
    fn new(at: &'a Position, field: &'static str) -> Self {
        let limit = if field == "rev" {
            MAX_REV_BYTES
        } else {
            MAX_ID_BYTES
        };
        at.enter(field, limit);
        Self { at, field, limit }
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "`{}` as a string", self.field)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        if s.len() > self.limit {
            return Err(self.at.refuse(self.at.too_long(s.len().to_string())));
        }
        Ok(Some(s.to_owned()))
    }
}
