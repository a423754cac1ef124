//! The last-known registry on disk, in an embedded redb database
//! (`DIR/registry.redb`), so a restarted registry shows every process it
//! knew (marked stale) until their heartbeats resume.
//!
//! One table, `processes`: the process name → one record:
//!
//! ```text
//!  offset  size  field
//!  0       1     format version (RECORD_VERSION = 2; version 1 used CRC-32 IEEE)
//!  1       4     CRC-32C (Castagnoli, as qmesh-log) of the body, little-endian
//!  5       n     body: the row as JSON (registry::Process, camelCase keys)
//! ```
//!
//! redb makes each write transaction atomic and durable; the record's own
//! version and checksum let a reader refuse a row it cannot trust (a newer
//! format, a flipped byte) without refusing the rest. A database file redb
//! finds damaged is moved aside (`registry.redb.corrupt-<ms>`) and the
//! registry starts empty: its rows are a cache of what heartbeats will tell
//! it again within one heartbeat interval, not a source of truth. A file
//! another process has open (redb's exclusive lock: a second registry on
//! the same `--data`), or one that cannot be read at all (permissions), is
//! not damaged: [`Store::open`] refuses it ([`StoreError::InUse`],
//! [`StoreError::Io`]) and leaves it where it is.
//!
//! Writes are batched by the server: changed rows (state, status,
//! metadata) every [`crate::PERSIST_INTERVAL`], rows that only beat every
//! [`crate::PERSIST_BEATS_INTERVAL`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::warn;

use crate::registry::Process;

/// The file inside `--data DIR`.
pub const FILE_NAME: &str = "registry.redb";

/// The version byte of a record.
pub const RECORD_VERSION: u8 = 2;

/// Bytes before a record's body.
pub const RECORD_HEADER: usize = 5;

/// Largest record body accepted when reading, in bytes (a row at every
/// limit is under 32 KiB).
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

const PROCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("processes");

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the database open (redb holds an exclusive
    /// lock on it while open): a second registry on the same `--data`.
    #[error("registry store {} is in use by another process", path.display())]
    InUse { path: PathBuf },
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store: {0}")]
    Db(String),
}

fn db_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Why a record was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record format {0}, this build reads {RECORD_VERSION}")]
    Version(u8),
    #[error("record body of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record body: {0}")]
    Body(String),
}

/// Encodes one row as a record.
pub fn encode_record(p: &Process) -> Vec<u8> {
    // A Process always serializes (strings, numbers, maps of strings).
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut out = Vec::with_capacity(RECORD_HEADER + body.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes one record; never panics on any input.
pub fn decode_record(bytes: &[u8]) -> Result<Process, RecordError> {
    if bytes.len() < RECORD_HEADER {
        return Err(RecordError::Short(bytes.len()));
    }
    if bytes[0] != RECORD_VERSION {
        return Err(RecordError::Version(bytes[0]));
    }
    let body = &bytes[RECORD_HEADER..];
    if body.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge(body.len()));
    }
    let want = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    if crc32c::crc32c(body) != want {
        return Err(RecordError::Checksum);
    }
    serde_json::from_slice(body).map_err(|e| RecordError::Body(e.to_string()))
}

/// Whether an I/O error opening the database says the file is damaged (cut
/// short, unreadable bytes) rather than that it cannot be reached.
fn damaged(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData)
}

/// The open store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `dir/registry.redb`. A file redb finds damaged is
    /// moved aside and a new one created; a file another process has open
    /// is [`StoreError::InUse`], one that cannot be read
    /// [`StoreError::Io`], both left as they are.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        let path = dir.join(FILE_NAME);
        // redb asserts on some damaged files (a file cut shorter than its
        // header says) instead of returning an error: a panic there is a
        // damaged file too, not a reason to stop.
        let opened = std::panic::catch_unwind(|| Database::create(&path)).unwrap_or_else(|_| {
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                "redb panicked opening the file".into(),
            )))
        });
        let database = match opened {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse { path }),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))) if !damaged(&source) => {
                return Err(StoreError::Io { path, source });
            }
            Err(e) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let aside = dir.join(format!("{FILE_NAME}.corrupt-{now}"));
                warn!(path = %path.display(), aside = %aside.display(), error = %e,
                    "the registry's store cannot be opened; moved aside, starting empty");
                std::fs::rename(&path, &aside)
                    .map_err(|source| StoreError::Io { path: path.clone(), source })?;
                Database::create(&path).map_err(db_err)?
            }
        };
        let tx = database.begin_write().map_err(db_err)?;
        tx.open_table(PROCESSES).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Store { db: database, path })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every row that reads back whole; rows that do not are logged and
    /// skipped (their count is the second value).
    pub fn load(&self) -> Result<(Vec<Process>, usize), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(PROCESSES).map_err(db_err)?;
        let mut rows = Vec::new();
        let mut bad = 0;
        for item in table.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            match decode_record(v.value()) {
                Ok(p) if *p.name == *k.value() => rows.push(p),
                Ok(_) => {
                    bad += 1;
                    warn!(key = k.value(), "stored row names another process; skipped");
                }
                Err(e) => {
                    bad += 1;
                    warn!(key = k.value(), error = %e, "stored row unreadable; skipped");
                }
            }
        }
        Ok((rows, bad))
    }

    /// Writes `changed` and deletes `removed`, in one transaction.
    pub fn write(&self, changed: &[Arc<Process>], removed: &[Arc<str>]) -> Result<(), StoreError> {
        if changed.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(PROCESSES).map_err(db_err)?;
            for p in changed {
                table.insert(&*p.name, encode_record(p).as_slice()).map_err(db_err)?;
            }
            for name in removed {
                table.remove(&**name).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Config, Heartbeat, Registry, State};

    fn rows() -> Vec<Arc<Process>> {
        let mut r = Registry::new(Config::default(), 0);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let hb = Heartbeat {
                name: name.into(),
                address: format!(":h:{}", 5000 + i),
                attrs: [("region".to_string(), "ldn".to_string())].into(),
                ..Heartbeat::default()
            };
            r.heartbeat(1_000, i as u64, hb).unwrap();
        }
        r.take_dirty(true).0
    }

    #[test]
    fn rows_survive_a_reopen_and_removals_stick() {
        let dir = tempdir();
        let rows = rows();
        {
            let s = Store::open(&dir).unwrap();
            s.write(&rows, &[]).unwrap();
            s.write(&[], &[Arc::from("b")]).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let (mut back, bad) = s.load().unwrap();
        back.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(bad, 0);
        assert_eq!(back.iter().map(|p| &*p.name).collect::<Vec<_>>(), vec!["a", "c"]);
        assert_eq!(back[0], *rows.iter().find(|p| &*p.name == "a").unwrap().clone());
        assert_eq!(back[0].state, State::Starting);
    }

    #[test]
    fn every_cut_and_every_flipped_byte_of_a_record_is_refused_cleanly() {
        let p = rows().remove(0);
        let rec = encode_record(&p);
        assert_eq!(decode_record(&rec).as_ref(), Ok(&*p));
        for cut in 0..rec.len() {
            assert!(decode_record(&rec[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..rec.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = rec.clone();
                bad[i] ^= bit;
                assert!(decode_record(&bad).is_err(), "flip {bit:#x} at {i}");
            }
        }
    }

    #[test]
    fn a_damaged_database_file_is_moved_aside() {
        let dir = tempdir();
        {
            let s = Store::open(&dir).unwrap();
            s.write(&rows(), &[]).unwrap();
        }
        let path = dir.join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        // Cut the file at several points (every byte would take minutes on
        // a file of redb's page size): each either opens with whole rows or
        // is moved aside; never a panic, never a half row.
        for cut in [0, 1, 7, 100, 511, 4096, len / 2, len - 1] {
            let bytes = std::fs::read(&path).unwrap();
            let keep = (cut as usize).min(bytes.len());
            std::fs::write(&path, &bytes[..keep]).unwrap();
            let s = Store::open(&dir).unwrap();
            let (back, _) = s.load().unwrap();
            assert!(back.iter().all(|p| ["a", "b", "c"].contains(&&*p.name)));
            // restore a good file for the next cut
            s.write(&rows(), &[]).unwrap();
        }
        // Garbage of the same size.
        std::fs::write(&path, vec![0xA5u8; len as usize]).unwrap();
        let s = Store::open(&dir).unwrap();
        assert!(s.load().unwrap().0.is_empty());
        assert!(
            std::fs::read_dir(&dir)
                .unwrap()
                .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with("registry.redb.corrupt-") })
        );
    }

    #[test]
    fn a_store_open_elsewhere_is_refused_and_left_alone() {
        let dir = tempdir();
        let first = Store::open(&dir).unwrap();
        first.write(&rows(), &[]).unwrap();
        // a second open of the same file: what a second registry on the same
        // --data does (redb's lock is per open file description)
        let e = Store::open(&dir).unwrap_err();
        assert!(matches!(e, StoreError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("is in use by another process"), "{e}");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [FILE_NAME], "nothing moved aside");
        assert_eq!(first.load().unwrap().0.len(), 3);
        drop(first);
        assert_eq!(Store::open(&dir).unwrap().load().unwrap().0.len(), 3);
    }

    fn tempdir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "qmesh-discovery-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
