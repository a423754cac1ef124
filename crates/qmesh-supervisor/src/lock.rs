//! One `qmesh up` per process and data directory: before starting anything,
//! the supervisor takes an exclusive, non-blocking `flock` on
//! `DATA/.locks/<name>` for every process it will run, and holds them until
//! it returns. A second `qmesh up` on the same data directory that would run
//! any of the same processes is refused before it starts one (two
//! supervisors would each restart their own copy of a process whose state
//! the other is writing); two `--only` runs with disjoint names share a data
//! directory freely.
//!
//! The locks are [`qmesh_process::dirlock`]'s kernel `flock`s: released when
//! the supervisor exits however it exits (a SIGKILL included), so a stale lock
//! file never keeps an estate down; the file holds the holder's pid, for the
//! refusal's message only.

use std::path::{Path, PathBuf};

use qmesh_process::dirlock::{DirLock, DirLockError};

use crate::Error;
use crate::config::ProcessSpec;
use crate::launch;

/// The directory under `DATA` holding the lock files.
pub const LOCK_DIR: &str = ".locks";

/// The locks of one running `qmesh up`: held while this lives.
#[derive(Debug)]
pub struct Locks {
    _held: Vec<DirLock>,
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
    let mut held = Vec::with_capacity(selected.len());
    for p in selected {
        match DirLock::take(&dir, &p.name) {
            Ok(l) => held.push(l),
            Err(DirLockError::InUse { pid, .. }) => {
                return Err(Error::InUse {
                    name: p.name.clone(),
                    dir: launch::data_dir(data, p),
                    holder: pid.map_or_else(|| "pid unknown".into(), |pid| format!("pid {pid}")),
                });
            }
            Err(DirLockError::Io { source, .. }) => {
                return Err(Error::Io { path: lock_file(data, &p.name), source });
            }
        }
    }
    Ok(Locks { _held: held })
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
