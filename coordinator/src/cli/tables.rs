//! The Parquet tables of `export --format parquet`: their columns, and each written as
//! rows arrive, a record batch at a time (encoded, compressed and written on a thread of
//! its own), in zstd-compressed row groups flushed when they reach [`ROW_GROUP_BYTES`], so
//! memory stays bounded whatever the snapshot's size. Each file is written as
//! `.NAME.parquet.partial` and renamed to `NAME.parquet` when complete.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use arrow_array::{
    builder::{
        ArrayBuilder, BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
        TimestampMillisecondBuilder,
    },
    ArrayRef, RecordBatch,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, ZstdLevel},
    file::properties::WriterProperties,
};

/// Rows gathered before they go to the writer as one record batch.
const BATCH_ROWS: usize = 8192;

/// A row group is closed once its encoded columns hold this much (or it has
/// [`ROW_GROUP_ROWS`] rows); with six tables, what an export holds is a few times this.
const ROW_GROUP_BYTES: usize = 16 << 20;
const ROW_GROUP_ROWS: usize = 512 * 1024;

/// Record batches waiting for a table's writer thread.
const WRITER_QUEUE: usize = 2;

/// A column's type.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Str,
    I64,
    I32,
    /// Milliseconds since the Unix epoch, UTC.
    Ts,
    Bool,
    /// A list of strings.
    StrList,
}

/// One value of a row, of its column's [`Kind`].
pub enum Cell<'a> {
    Str(Option<&'a str>),
    I64(Option<i64>),
    I32(Option<i32>),
    Ts(Option<i64>),
    Bool(bool),
    StrList(&'a [String]),
}

enum Col {
    Str(StringBuilder),
    I64(Int64Builder),
    I32(Int32Builder),
    Ts(TimestampMillisecondBuilder),
    Bool(BooleanBuilder),
    StrList(ListBuilder<StringBuilder>),
}

impl Col {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Str => Col::Str(StringBuilder::new()),
            Kind::I64 => Col::I64(Int64Builder::new()),
            Kind::I32 => Col::I32(Int32Builder::new()),
            Kind::Ts => Col::Ts(TimestampMillisecondBuilder::new().with_timezone("UTC")),
            Kind::Bool => Col::Bool(BooleanBuilder::new()),
            Kind::StrList => Col::StrList(ListBuilder::new(StringBuilder::new())),
        }
    }

    fn push(&mut self, cell: &Cell) {
        match (self, cell) {
            (Col::Str(b), Cell::Str(v)) => b.append_option(*v),
            (Col::I64(b), Cell::I64(v)) => b.append_option(*v),
            (Col::I32(b), Cell::I32(v)) => b.append_option(*v),
            (Col::Ts(b), Cell::Ts(v)) => b.append_option(*v),
            (Col::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Col::StrList(b), Cell::StrList(items)) => {
                for item in items.iter() {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            _ => unreachable!("a cell of another kind than its column"),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::Str(b) => Arc::new(b.finish()),
            Col::I64(b) => Arc::new(b.finish()),
            Col::I32(b) => Arc::new(b.finish()),
            Col::Ts(b) => Arc::new(b.finish()),
            Col::Bool(b) => Arc::new(b.finish()),
            Col::StrList(b) => ArrayBuilder::finish(b),
        }
    }
}

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Str => DataType::Utf8,
        Kind::I64 => DataType::Int64,
        Kind::I32 => DataType::Int32,
        Kind::Ts => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Kind::Bool => DataType::Boolean,
        Kind::StrList => DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
    }
}

/// One Parquet file being written.
pub struct Table {
    name: &'static str,
    schema: SchemaRef,
    cols: Vec<Col>,
    pending: usize,
    rows: u64,
    /// Record batches to the thread that encodes, compresses and writes them, so the
    /// file is written while the next rows are parsed.
    batches: Option<std::sync::mpsc::SyncSender<RecordBatch>>,
    writer: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    partial: PathBuf,
    done: PathBuf,
    finished: bool,
}

impl Drop for Table {
    /// An export that stopped leaves no partial file behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.join_writer();
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

impl Table {
    /// Starts `dir/NAME.parquet` with `columns` (name, kind; every column but the first
    /// nullable).
    pub fn create(
        dir: &Path,
        name: &'static str,
        columns: &[(&str, Kind)],
    ) -> anyhow::Result<Self> {
        let fields: Vec<Field> = (columns.iter().enumerate())
            .map(|(i, (col, kind))| Field::new(*col, data_type(*kind), i > 0))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let partial = dir.join(format!(".{name}.parquet.partial"));
        let done = dir.join(format!("{name}.parquet"));
        let file = File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .set_created_by(format!("alldocs {}", env!("CARGO_PKG_VERSION")))
            .build();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        let (batches, received) = std::sync::mpsc::sync_channel::<RecordBatch>(WRITER_QUEUE);
        let what = partial.display().to_string();
        let writer = std::thread::Builder::new()
            .name(format!("parquet-{name}"))
            .spawn(move || {
                for batch in received {
                    writer
                        .write(&batch)
                        .with_context(|| format!("writing {what}"))?;
                    if writer.in_progress_size() >= ROW_GROUP_BYTES {
                        writer.flush().with_context(|| format!("writing {what}"))?;
                    }
                }
                writer
                    .finish()
                    .with_context(|| format!("finishing {what}"))?;
                Ok(())
            })?;
        Ok(Self {
            name,
            cols: columns.iter().map(|(_, k)| Col::new(*k)).collect(),
            schema,
            pending: 0,
            rows: 0,
            batches: Some(batches),
            writer: Some(writer),
            partial,
            done,
            finished: false,
        })
    }

    /// Adds one row, its cells in the columns' order.
    pub fn push(&mut self, cells: &[Cell]) -> anyhow::Result<()> {
        debug_assert_eq!(cells.len(), self.cols.len(), "{}", self.name);
        for (col, cell) in self.cols.iter_mut().zip(cells) {
            col.push(cell);
        }
        self.pending += 1;
        if self.pending >= BATCH_ROWS {
            self.write_batch()?;
        }
        Ok(())
    }

    fn write_batch(&mut self) -> anyhow::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let arrays = self.cols.iter_mut().map(Col::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        let sent = self.batches.as_ref().map(|b| b.send(batch).is_ok());
        if sent != Some(true) {
            // The writer stopped: its error says why.
            return Err(self.join_writer().err().unwrap_or_else(|| {
                anyhow::anyhow!("the writer of {} stopped", self.partial.display())
            }));
        }
        self.rows += self.pending as u64;
        self.pending = 0;
        Ok(())
    }

    /// Ends the writer thread (the file's footer written): its outcome.
    fn join_writer(&mut self) -> anyhow::Result<()> {
        self.batches.take();
        match self.writer.take().map(std::thread::JoinHandle::join) {
            Some(Ok(written)) => written,
            Some(Err(_)) => anyhow::bail!("the writer of {} panicked", self.partial.display()),
            None => Ok(()),
        }
    }

    /// Writes what is left and the footer, and renames the file into place: its rows.
    pub fn finish(mut self) -> anyhow::Result<(u64, PathBuf)> {
        self.write_batch()?;
        self.join_writer()?;
        std::fs::rename(&self.partial, &self.done)
            .with_context(|| format!("renaming {} into place", self.partial.display()))?;
        self.finished = true;
        Ok((self.rows, self.done.clone()))
    }
}

/// The tables, their columns and their kinds, in the order the files are listed.
pub const PACKAGES: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("rev", Kind::Str),
    ("created", Kind::Ts),
    ("modified", Kind::Ts),
    ("latest", Kind::Str),
    ("description", Kind::Str),
    ("license", Kind::Str),
    ("repository", Kind::Str),
    ("homepage", Kind::Str),
    ("versions", Kind::I32),
    ("maintainers", Kind::StrList),
    ("bytes", Kind::I64),
    ("sha256", Kind::Str),
];
pub const VERSIONS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("version", Kind::Str),
    ("published", Kind::Ts),
    ("deprecated", Kind::Str),
    ("license", Kind::Str),
    ("tarball", Kind::Str),
    ("integrity", Kind::Str),
    ("shasum", Kind::Str),
    ("unpacked_size", Kind::I64),
    ("file_count", Kind::I64),
    ("install_scripts", Kind::Bool),
    ("engines", Kind::Str),
    ("npm_user", Kind::Str),
];
pub const DEPENDENCIES: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("version", Kind::Str),
    ("kind", Kind::Str),
    ("dependency", Kind::Str),
    ("range", Kind::Str),
];
pub const MAINTAINERS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("maintainer", Kind::Str),
    ("email", Kind::Str),
];
pub const DIST_TAGS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("tag", Kind::Str),
    ("version", Kind::Str),
];
pub const PROBLEMS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("version", Kind::Str),
    ("field", Kind::Str),
    ("kind", Kind::Str),
    ("detail", Kind::Str),
];
