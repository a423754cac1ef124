//! An exclusive lock on a directory that one process owns (a stream-fed service's data directory: its snapshot
//! and its subscriber's local copy; each process `qmesh up` runs, under `DATA/.locks`), so a second process started
//! on it refuses at once, naming the first, instead of starting and then failing on every step.
//!
//! The lock is an exclusive `flock` on a file in the directory, held while the [`DirLock`] lives and released by
//! the kernel when the process ends, however it ends (a SIGKILLed holder leaves no stale lock). The holder writes
//! its process id into the file, so the refusal says who holds it. The same mechanism as the log's own `LOCK`
//! file (`qmesh_log::LOCK_FILE`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Most bytes of a lock file read back for the holder's process id (a decimal `u32` and a newline).
const MAX_PID_BYTES: u64 = 32;

/// Errors taking a [`DirLock`].
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another process holds the directory.
    #[error("data directory {} is in use by another process{}", .dir.display(), .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's process id, when its lock file says it.
        pid: Option<u32>,
    },
    /// The directory or its lock file could not be created or opened.
    #[error("data directory {}: {source}", .dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// An exclusive lock on a directory, held until dropped (see the [module docs](self)).
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it through its file `name`; fails at once with
    /// [`DirLockError::InUse`] (with the holder's pid) when another process holds it.
    pub fn take(dir: &Path, name: &str) -> Result<DirLock, DirLockError> {
        let io = |source| DirLockError::Io { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(name))
            .map_err(io)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = (&file).take(MAX_PID_BYTES).read_to_string(&mut text);
                return Err(DirLockError::InUse { dir: dir.to_path_buf(), pid: text.trim().parse().ok() });
            }
            Err(e) => return Err(io(e.into())),
        }
        // ours: say who holds it
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { dir: dir.to_path_buf(), _file: file })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `flock` locks belong to the open file: a second open in the same process conflicts like another process.
    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = std::env::temp_dir().join(format!("qmesh-dirlock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let held = DirLock::take(&dir, "service.lock").expect("first");
        let e = DirLock::take(&dir, "service.lock").unwrap_err();
        assert!(matches!(e, DirLockError::InUse { pid: Some(p), .. } if p == std::process::id()), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "data directory {} is in use by another process (pid {})",
                dir.display(),
                std::process::id()
            )
        );
        drop(held);
        DirLock::take(&dir, "service.lock").expect("free again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
