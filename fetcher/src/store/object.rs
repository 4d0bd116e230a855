//! An object written piece by piece and seen by nobody until it is whole: a local one as
//! an unnamed file synced and linked into place ([`LocalDir::begin`]), one in a bucket as
//! a single PUT or, once it is larger than its buffer, a multipart upload completed at
//! the end. Dropped before [`ObjectWriter::commit`] (a lease cut short), it leaves no
//! file, temp file or pending upload behind.

use object_store::{buffered::BufWriter, path::Path};
use tokio::io::AsyncWriteExt;

use super::{
    durable::{LocalDir, Unfinished},
    Store,
};

/// Bytes held before they go to a local file: small, since every lease in flight holds
/// one such buffer.
const LOCAL_BUFFER: usize = 1 << 20;
/// Bytes held before an upload goes multipart (parts of at least 5 MiB for S3).
pub const REMOTE_BUFFER: usize = 8 << 20;

/// One object being written.
pub struct ObjectWriter {
    inner: Inner,
    uri: String,
    written: u64,
}

enum Inner {
    Local {
        dir: std::sync::Arc<LocalDir>,
        file: std::path::PathBuf,
        /// Opened at the first flush (an object under the buffer's size is written in one
        /// call at the end).
        unfinished: Option<Unfinished>,
        buf: Vec<u8>,
    },
    Remote(Option<BufWriter>),
}

impl Store {
    /// Starts the object at `path`; nothing is there until [`ObjectWriter::commit`].
    pub fn create(&self, path: &Path) -> Result<ObjectWriter, object_store::Error> {
        let inner = match self.local() {
            Some((fs, dir)) => Inner::Local {
                dir: dir.clone(),
                file: fs.path_to_filesystem(path)?,
                unfinished: None,
                buf: Vec::new(),
            },
            None => Inner::Remote(Some(self.writer(path, REMOTE_BUFFER))),
        };
        Ok(ObjectWriter {
            inner,
            uri: self.uri(path),
            written: 0,
        })
    }
}

impl ObjectWriter {
    /// The URI the object will have.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Appends `bytes`.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.written += bytes.len() as u64;
        match &mut self.inner {
            Inner::Local { buf, .. } => {
                if buf.capacity() == 0 {
                    buf.reserve_exact(LOCAL_BUFFER.max(bytes.len()));
                }
                buf.extend_from_slice(bytes);
                if buf.len() >= LOCAL_BUFFER {
                    self.flush_local().await?;
                }
                Ok(())
            }
            Inner::Remote(writer) => {
                let writer = writer.as_mut().expect("an open upload");
                writer.write_all(bytes).await
            }
        }
    }

    /// Moves the local buffer to the unnamed file (opening it first).
    async fn flush_local(&mut self) -> std::io::Result<()> {
        let Inner::Local {
            dir,
            file,
            unfinished,
            buf,
        } = &mut self.inner
        else {
            return Ok(());
        };
        let (dir, file, open, data) = (
            dir.clone(),
            file.clone(),
            unfinished.take(),
            std::mem::take(buf),
        );
        let written = tokio::task::spawn_blocking(move || {
            let mut open = match open {
                Some(open) => open,
                None => dir.begin(&file)?,
            };
            open.write_all(&data)?;
            Ok::<_, std::io::Error>(open)
        })
        .await
        .map_err(std::io::Error::other)??;
        if let Inner::Local { unfinished, .. } = &mut self.inner {
            *unfinished = Some(written);
        }
        Ok(())
    }

    /// Makes the object whole and durable at its name: when this returns, it survives a
    /// power loss (locally: its data and directory synced; in a bucket: the upload done).
    pub async fn commit(mut self) -> std::io::Result<()> {
        match &mut self.inner {
            Inner::Local {
                dir,
                file,
                unfinished,
                buf,
            } => {
                let (dir, file, open, data) = (
                    dir.clone(),
                    file.clone(),
                    unfinished.take(),
                    std::mem::take(buf),
                );
                tokio::task::spawn_blocking(move || match open {
                    Some(mut open) => {
                        open.write_all(&data)?;
                        dir.finish(open)
                    }
                    None => dir.write(&file, &data),
                })
                .await
                .map_err(std::io::Error::other)?
            }
            Inner::Remote(writer) => {
                let mut writer = writer.take().expect("an open upload");
                writer.shutdown().await
            }
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        // A local unnamed file vanishes when closed (a staged one is removed by its own
        // drop); an upload not completed is aborted.
        if let Inner::Remote(Some(mut writer)) =
            std::mem::replace(&mut self.inner, Inner::Remote(None))
        {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = writer.abort().await;
                });
            }
        }
    }
}
