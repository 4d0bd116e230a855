//! Durable, atomic writes into a local store directory, with directory fsyncs shared by concurrent writers.
//!
//! An object is written as an unnamed file in its directory (`O_TMPFILE`), its data
//! synced, then linked into place under its name: one directory operation, and nothing
//! is ever visible half-written. Where a file is already there (a rerun replacing it), or
//! the file system has no `O_TMPFILE`, it goes through a staged name beside its
//! destination instead (`<name>#<n>`, the naming object_store's `LocalFileSystem` uses and
//! skips when listing) and is renamed over it. The new name is durable once the directory
//! is synced. Many objects land in one directory (`packuments/`) at once, so directory
//! syncs are grouped: a writer whose rename is done waits for the next sync of that
//! directory to *start* after it (a group commit) instead of running its own, and the
//! writer that starts a sync first yields its CPU once, so that writers already runnable
//! join it. Every writer still returns only once its own
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
    /// Whether new objects are written unnamed and linked (until the file system says it
    /// cannot do that).
    unnamed: AtomicBool,
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
            unnamed: AtomicBool::new(true),
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
        let linked = if self.unnamed.load(Ordering::Relaxed) {
            write_unnamed(file, parent, bytes)
        } else {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        };
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                self.unnamed.store(false, Ordering::Relaxed);
                write_staged(file, parent, bytes)?;
            }
            Err(e) => return Err(e),
        }
        self.sync_dir(parent)
    }

    /// Writes through staged names only, as on a file system without `O_TMPFILE`.
    #[cfg(test)]
    fn without_unnamed_files(self) -> Self {
        self.unnamed.store(false, Ordering::Relaxed);
        self
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
                // Let writers that are runnable right now finish their link first, so this
                // sync covers them too (returns at once on an idle machine): on a busy one
                // a third as many directory syncs.
                drop(state);
                std::thread::yield_now();
                state = self.state.lock().expect("directory sync state");
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

/// Writes and syncs `bytes` as an unnamed file in `parent`, then links it at `file` (or,
/// if a file is there, renames it over that one). `Unsupported` when the file system (or a
/// missing `/proc`) does not allow it; nothing is left behind then.
fn write_unnamed(file: &Path, parent: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut unnamed = open_unnamed(parent)?;
    unnamed.write_all(bytes)?;
    unnamed.sync_data()?;
    place_unnamed(&unnamed, file)
}

/// An unnamed file in `parent` (`O_TMPFILE`), creating `parent` if needed; `Unsupported`
/// where the file system cannot make one.
fn open_unnamed(parent: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let open = || {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(parent)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(parent)?;
            open()
        }
        opened => opened,
    }
    .map_err(unsupported_if(&[
        libc::EOPNOTSUPP,
        libc::EISDIR,
        libc::EINVAL,
    ]))
}

/// Names a synced unnamed file `file`: linked there, or, if a file is there, linked under
/// a free staged name and renamed over it (atomic).
fn place_unnamed(unnamed: &File, file: &Path) -> io::Result<()> {
    let unsupported = unsupported_if(&[libc::ENOENT, libc::EXDEV, libc::EPERM, libc::ENOTDIR]);
    match link_unnamed(unnamed, file) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        linked => return linked.map_err(unsupported),
    }
    let mut suffix = 1u32;
    loop {
        let staged = staged_path(file, suffix);
        match link_unnamed(unnamed, &staged) {
            Ok(()) => {
                return std::fs::rename(&staged, file).inspect_err(|_| {
                    let _ = std::fs::remove_file(&staged);
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => suffix += 1,
            Err(e) => return Err(unsupported(e)),
        }
    }
}

/// A local object being written piece by piece: an unnamed file in its directory (or,
/// without `O_TMPFILE`, a staged one beside it). Nothing is at its name until
/// [`LocalDir::finish`]; dropped unfinished, it leaves nothing behind.
#[derive(Debug)]
pub struct Unfinished {
    file: File,
    /// The staged name, when the file has one.
    staged: Option<PathBuf>,
    target: PathBuf,
}

impl Unfinished {
    /// Appends `bytes`. Blocks.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(staged) = self.staged.take() {
            let _ = std::fs::remove_file(staged);
        }
    }
}

impl LocalDir {
    /// Starts writing `file` (under the root). Blocks.
    pub fn begin(&self, file: &Path) -> io::Result<Unfinished> {
        let parent = self.parent_of(file)?;
        if self.unnamed.load(Ordering::Relaxed) {
            match open_unnamed(parent) {
                Ok(unnamed) => {
                    return Ok(Unfinished {
                        file: unnamed,
                        staged: None,
                        target: file.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    self.unnamed.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let (staged_file, staged) = stage(file, parent)?;
        Ok(Unfinished {
            file: staged_file,
            staged: Some(staged),
            target: file.to_path_buf(),
        })
    }

    /// Makes what `unfinished` holds the object at its name, durably: its data synced,
    /// named, its directory synced (grouped with concurrent writers). Blocks.
    pub fn finish(&self, mut unfinished: Unfinished) -> io::Result<()> {
        unfinished.file.sync_data()?;
        let target = unfinished.target.clone();
        match unfinished.staged.take() {
            None => place_unnamed(&unfinished.file, &target).inspect_err(|e| {
                if e.kind() == io::ErrorKind::Unsupported {
                    // Named files from now on (this object is tried again by its lease).
                    self.unnamed.store(false, Ordering::Relaxed);
                }
            })?,
            Some(staged) => std::fs::rename(&staged, &target).inspect_err(|_| {
                let _ = std::fs::remove_file(&staged);
            })?,
        }
        self.sync_dir(self.parent_of(&target)?)
    }
}

/// Gives a name to an `O_TMPFILE` file (through `/proc/self/fd`, which needs no privilege,
/// unlike `AT_EMPTY_PATH`).
fn link_unnamed(unnamed: &File, to: &Path) -> io::Result<()> {
    use std::os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _};
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", unnamed.as_raw_fd()))
        .expect("no NUL in a /proc path");
    let to = std::ffi::CString::new(to.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: both are valid NUL-terminated paths for the duration of the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Maps the given OS errors to `Unsupported` (the caller falls back to staged writes).
fn unsupported_if(codes: &'static [i32]) -> impl Fn(io::Error) -> io::Error {
    move |e| match e.raw_os_error() {
        Some(code) if codes.contains(&code) => io::Error::new(io::ErrorKind::Unsupported, e),
        _ => e,
    }
}

/// Writes `bytes` to a staged file beside `file`, syncs it and renames it into place.
fn write_staged(file: &Path, parent: &Path, bytes: &[u8]) -> io::Result<()> {
    let (mut staged_file, staged) = stage(file, parent)?;
    let written = staged_file
        .write_all(bytes)
        .and_then(|()| staged_file.sync_data());
    drop(staged_file);
    written
        .and_then(|()| std::fs::rename(&staged, file))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&staged);
        })
}

/// `<file>#<suffix>`.
fn staged_path(file: &Path, suffix: u32) -> PathBuf {
    let mut staged = file.as_os_str().to_owned();
    staged.push(format!("#{suffix}"));
    PathBuf::from(staged)
}

/// Creates a new staged file beside `file` (creating its directories if needed).
fn stage(file: &Path, parent: &Path) -> io::Result<(File, PathBuf)> {
    let mut suffix = 1u32;
    let mut created_parent = false;
    loop {
        let staged = staged_path(file, suffix);
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

    /// A store in a new temporary directory, writing unnamed files and linking them, or
    /// (`staged`) through staged names as on a file system without `O_TMPFILE`.
    fn local_dir(staged: bool) -> (tempfile::TempDir, PathBuf, LocalDir) {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let dir = LocalDir::new(root.clone());
        let dir = if staged {
            dir.without_unnamed_files()
        } else {
            dir
        };
        (tmp, root, dir)
    }

    #[test]
    fn concurrent_writers_store_every_object_whole_with_at_most_one_directory_sync_each() {
        for staged in [false, true] {
            concurrent_writers(staged);
        }
    }

    fn concurrent_writers(staged: bool) {
        let (_tmp, root, dir) = local_dir(staged);
        let dir = Arc::new(dir);
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
        // This machine's file system (the temporary directory's) has O_TMPFILE: the
        // unnamed path was taken, not silently given up.
        assert_eq!(dir.unnamed.load(Ordering::Relaxed), !staged);
    }

    #[test]
    fn an_object_is_replaced_whole_and_a_crash_leftover_does_not_block_it() {
        for staged in [false, true] {
            replaced(staged);
        }
    }

    fn replaced(staged: bool) {
        let (tmp, root, dir) = local_dir(staged);
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
        let mut names: Vec<_> = std::fs::read_dir(root.join("packuments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["left-pad.json", "left-pad.json#1"],
            "nothing else left"
        );
        let outside = tmp.path().parent().unwrap().join("elsewhere.json");
        let err = dir.write(&outside, b"{}").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!outside.exists());
    }
}
