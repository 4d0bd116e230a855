//! Durable, atomic writes into a local store directory, with directory fsyncs shared by concurrent writers.
//!
//! An object is written to a staged file beside its destination (`<name>#<n>`, the naming
//! object_store's `LocalFileSystem` uses and skips when listing), its data synced, then
//! renamed into place; the rename is durable once the directory is synced. Many objects
//! land in one directory (`packuments/`) at once, so directory syncs are grouped: a writer
//! whose rename is done waits for the next sync of that directory to *start* after it (a
//! group commit) instead of running its own. Every writer still returns only once its own
//! file and directory entry are on disk. A directory's own entry in its parent (a scope
//! directory just created) is synced once per process, up to the store's root.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
};

/// A local store directory and what is known to be durable in it.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    dirs: Mutex<HashMap<PathBuf, Arc<DirSync>>>,
    /// Directory fsyncs run (for tests and figures).
    dir_syncs: AtomicU64,
}

/// Group-commit state of one directory.
#[derive(Debug, Default)]
struct DirSync {
    state: Mutex<SyncState>,
    synced: Condvar,
    /// Whether this directory's own entry in its parent is known to be durable.
    entry_durable: AtomicBool,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Tickets handed out: one per writer whose change to the directory is done.
    requested: u64,
    /// Every ticket up to this one is covered by a completed fsync.
    synced: u64,
    syncing: bool,
}

impl LocalDir {
    /// A store rooted at `root` (an existing, canonical directory).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            dirs: Mutex::default(),
            dir_syncs: AtomicU64::new(0),
        }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory fsyncs run so far.
    pub fn dir_syncs(&self) -> u64 {
        self.dir_syncs.load(Ordering::Relaxed)
    }

    /// Writes `bytes` at `file` (under the root), replacing any file there: nothing is
    /// visible at `file` until it holds all of `bytes`, and when this returns the file and
    /// its directory entries survive a power loss. Blocks: call it off the async threads.
    pub fn write(&self, file: &Path, bytes: &[u8]) -> io::Result<()> {
        let parent = self.parent_of(file)?;
        let (mut staged_file, staged) = stage(file, parent)?;
        let written = staged_file
            .write_all(bytes)
            .and_then(|()| staged_file.sync_data());
        drop(staged_file);
        if let Err(e) = written.and_then(|()| std::fs::rename(&staged, file)) {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        self.sync_dir(parent)
    }

    /// Makes a file already renamed into place durable: its data, then its directory
    /// entries. Blocks.
    pub fn make_durable(&self, file: &Path) -> io::Result<()> {
        File::open(file)?.sync_all()?;
        self.sync_dir(self.parent_of(file)?)
    }

    fn parent_of<'a>(&self, file: &'a Path) -> io::Result<&'a Path> {
        file.parent()
            .filter(|p| p.starts_with(&self.root))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not under {}", file.display(), self.root.display()),
                )
            })
    }

    /// Syncs `dir` (grouped with concurrent writers), then, once per process, its entry
    /// in each parent up to the root.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let state = self.state_of(dir);
        state.sync(dir, &self.dir_syncs)?;
        if dir != self.root && !state.entry_durable.load(Ordering::Acquire) {
            if let Some(parent) = dir.parent().filter(|p| p.starts_with(&self.root)) {
                self.sync_dir(parent)?;
            }
            state.entry_durable.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn state_of(&self, dir: &Path) -> Arc<DirSync> {
        let mut dirs = self.dirs.lock().expect("directory states");
        if let Some(state) = dirs.get(dir) {
            return state.clone();
        }
        dirs.entry(dir.to_path_buf()).or_default().clone()
    }
}

impl DirSync {
    /// Returns once an fsync of `dir` that started after this call began has completed:
    /// the one this writer runs, or one a concurrent writer runs for everyone waiting.
    fn sync(&self, dir: &Path, counter: &AtomicU64) -> io::Result<()> {
        let mut state = self.state.lock().expect("directory sync state");
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if !state.syncing {
                state.syncing = true;
                let covers = state.requested;
                drop(state);
                counter.fetch_add(1, Ordering::Relaxed);
                let result = File::open(dir).and_then(|d| d.sync_all());
                state = self.state.lock().expect("directory sync state");
                state.syncing = false;
                if result.is_ok() {
                    state.synced = state.synced.max(covers);
                }
                // On failure a waiter takes over and tries again for itself.
                self.synced.notify_all();
                return result;
            }
            state = self.synced.wait(state).expect("directory sync state");
        }
    }
}

/// Creates a new staged file beside `file` (creating its directories if needed).
fn stage(file: &Path, parent: &Path) -> io::Result<(File, PathBuf)> {
    let mut suffix = 1u32;
    let mut created_parent = false;
    loop {
        let mut staged = file.as_os_str().to_owned();
        staged.push(format!("#{suffix}"));
        let staged = PathBuf::from(staged);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged)
        {
            Ok(f) => return Ok((f, staged)),
            // Left by a crash, or another writer of the same object right now.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => suffix += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !created_parent => {
                std::fs::create_dir_all(parent)?;
                created_parent = true;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                out.extend(files_under(&entry.path()));
            } else {
                out.push(entry.path().display().to_string());
            }
        }
        out
    }

    #[test]
    fn concurrent_writers_store_every_object_whole_with_at_most_one_directory_sync_each() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let dir = Arc::new(LocalDir::new(root.clone()));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let name = if i % 10 == 0 {
                            format!("packuments/@s{t}/p{i}.json")
                        } else {
                            format!("packuments/p{t}-{i}.json")
                        };
                        let body = format!("{{\"t\":{t},\"i\":{i}}}");
                        dir.write(&dir.root().join(name), body.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let files = files_under(&root);
        assert_eq!(files.len(), 16 * 50, "no staged file is left behind");
        let body = std::fs::read_to_string(root.join("packuments/@s3/p20.json")).unwrap();
        assert_eq!(body, r#"{"t":3,"i":20}"#);
        // 800 writes, each waiting for a sync of its directory (shared when they overlap):
        // never more than one per write, plus one per new directory's entry (16 scopes,
        // packuments/); syncing every directory up to the root each time would be 1,680+.
        let syncs = dir.dir_syncs();
        assert!(syncs <= 800 + 18, "{syncs} directory syncs");
    }

    #[test]
    fn an_object_is_replaced_whole_and_a_crash_leftover_does_not_block_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let dir = LocalDir::new(root.clone());
        let file = root.join("packuments/left-pad.json");
        dir.write(&file, b"{\"v\":1}").unwrap();
        // A staged file a crash left behind.
        std::fs::write(root.join("packuments/left-pad.json#1"), b"{\"v\":").unwrap();
        dir.write(&file, b"{\"v\":2}").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"{\"v\":2}");
        assert_eq!(
            std::fs::read(root.join("packuments/left-pad.json#1")).unwrap(),
            b"{\"v\":",
            "the leftover is not mistaken for this write's staged file"
        );
        let outside = tmp.path().parent().unwrap().join("elsewhere.json");
        let err = dir.write(&outside, b"{}").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!outside.exists());
    }
}
