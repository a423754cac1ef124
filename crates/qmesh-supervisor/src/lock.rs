//! One `qmesh up` per process and data directory: before starting anything,
//! the supervisor takes an exclusive, non-blocking `flock` on
//! `DATA/.locks/<name>` for every process it will run, and holds them until
//! it returns. A second `qmesh up` on the same data directory that would run
//! any of the same processes is refused before it starts one (two
//! supervisors would each restart their own copy of a process whose state
//! the other is writing); two `--only` runs with disjoint names share a data
//! directory freely.
//!
//! The locks are kernel `flock`s, as the stream log's directory lock
//! (`qmesh-log`'s `LOCK` file): released when the supervisor exits however it
//! exits (a SIGKILL included), so a stale lock file never keeps an estate
//! down. The file holds the holder's pid (text), for the refusal's message
//! only; the lock, not the file's content, is what counts.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::Error;
use crate::config::ProcessSpec;
use crate::launch;

/// The directory under `DATA` holding the lock files.
pub const LOCK_DIR: &str = ".locks";

/// Most bytes of a lock file read for the holder's pid (a pid in decimal is
/// at most 10 digits; the rest is ignored).
const MAX_PID_BYTES: u64 = 32;

/// The locks of one running `qmesh up`: held while this lives.
#[derive(Debug)]
pub struct Locks {
    _files: Vec<File>,
}

/// The lock file of the process called `name` under `data`.
pub fn lock_file(data: &Path, name: &str) -> PathBuf {
    data.join(LOCK_DIR).join(name)
}

/// Takes the lock of every process in `selected` under `data`; the first
/// one held by another `qmesh up` is [`Error::InUse`] (and the locks taken
/// so far are released).
pub fn lock(data: &Path, selected: &[&ProcessSpec]) -> Result<Locks, Error> {
    let dir = data.join(LOCK_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let mut files = Vec::with_capacity(selected.len());
    for p in selected {
        let path = lock_file(data, &p.name);
        let io = |source| Error::Io { path: path.clone(), source };
        let mut f =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if std::io::Error::from(e).kind() == ErrorKind::WouldBlock => {
                return Err(Error::InUse {
                    name: p.name.clone(),
                    dir: launch::data_dir(data, p),
                    holder: holder_pid(&mut f),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        // ours now: the pid for whoever is refused next
        f.set_len(0).map_err(io)?;
        f.rewind().map_err(io)?;
        f.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io)?;
        files.push(f);
    }
    Ok(Locks { _files: files })
}

/// `pid N` of the lock's holder as its file says, or words saying it is not
/// known (the holder may not have written it yet).
fn holder_pid(f: &mut File) -> String {
    let mut text = String::new();
    let _ = f.take(MAX_PID_BYTES).read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("pid {pid}"),
        Err(_) => "pid unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Estate;

    #[test]
    fn overlapping_selections_are_refused_disjoint_ones_are_not() {
        let data = std::env::temp_dir().join(format!("qmesh-supervisor-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let e = Estate::default_layout(5000).unwrap();
        let pick = |names: &[&str]| -> Vec<&ProcessSpec> {
            e.processes.iter().filter(|p| names.contains(&p.name.as_str())).collect()
        };
        // flock is per open file: a second lock() in one process is refused
        // as a second `qmesh up` would be
        let first = lock(&data, &pick(&["discovery", "rdb1"])).unwrap();
        let err = lock(&data, &pick(&["rdb2", "rdb1"])).unwrap_err().to_string();
        let want = format!(
            "process rdb1's data directory {} is in use by another `qmesh up` (pid {})",
            data.join("rdb1").display(),
            std::process::id()
        );
        assert_eq!(err, want);
        // rdb2's lock, taken before rdb1 was refused, was let go
        let other = lock(&data, &pick(&["rdb2", "feed"])).unwrap();
        drop(first);
        let again = lock(&data, &pick(&["discovery", "rdb1"])).unwrap();
        drop((other, again));
        let _ = std::fs::remove_dir_all(&data);
    }
}
