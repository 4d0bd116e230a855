//! One coordinator per checkpoint: an exclusive lock on `<db>.lock`, held for the life of
//! the job, that names its holder so a second coordinator can say who has it.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// Why the checkpoint could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the checkpoint {db} is in use by another coordinator ({holder}); stop that one first, or pass another --db for a separate snapshot")]
    Held { db: String, holder: String },
    #[error("cannot lock the checkpoint {db} through {lock}: {source}; check the path and its permissions, or choose another --db")]
    Io {
        db: String,
        lock: String,
        #[source]
        source: std::io::Error,
    },
}

/// The lock; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct CheckpointLock {
    _file: File,
    path: PathBuf,
}

impl CheckpointLock {
    /// Takes the lock of the checkpoint `db` for a coordinator listening on `listen`, or
    /// says who holds it. Writes nothing to the checkpoint itself.
    pub fn acquire(db: &Path, listen: SocketAddr) -> Result<Self, LockError> {
        let path = lock_path(db);
        let io = |source| LockError::Io {
            db: db.display().to_string(),
            lock: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "it has not said who it is yet".to_string(),
                    h => h.to_string(),
                };
                return Err(LockError::Held {
                    db: db.display().to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let holder = format!(
            "pid {}, listening on {listen}, since {}",
            std::process::id(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(holder.as_bytes()).map_err(io)?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `<db>.lock`, beside the checkpoint.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.sqlite");
        let first = CheckpointLock::acquire(&db, "127.0.0.1:7001".parse().unwrap()).unwrap();
        let err = CheckpointLock::acquire(&db, "127.0.0.1:7002".parse().unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("in use by another coordinator")
                && msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains("127.0.0.1:7001")
                && msg.contains("another --db"),
            "{msg}"
        );
        assert!(
            !db.exists(),
            "locking writes nothing to the checkpoint itself"
        );
        drop(first);
        let again = CheckpointLock::acquire(&db, "127.0.0.1:7002".parse().unwrap()).unwrap();
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert!(
            text.contains("127.0.0.1:7002") && !text.contains("7001"),
            "{text}"
        );
    }
}
