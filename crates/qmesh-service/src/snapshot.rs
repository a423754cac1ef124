//! A stream-fed service's tables and stream position on disk, in one file.
//!
//! One file, `DIR/snapshot.qmsnap`, holds every table and the position after
//! the last message those tables contain, so the two can never disagree: a
//! restarted service loads the tables and resubscribes from exactly that
//! position (no gap, no duplicate).
//!
//! # Layout
//!
//! ```text
//!  0        8        12       16               24
//!  ┌────────┬────────┬────────┬────────────────┬──────────── … ─┐
//!  │ magic  │version │ crc32c │ body length    │ body            │
//!  │QMSNAP\0\n│ u32 LE │ of body│ u64 LE         │                 │
//!  └────────┴────────┴────────┴────────────────┴──────────── … ─┘
//!
//!  body:
//!  ┌──────────┬──────────┬────────┬──────────┬─ per table ──────────────────────────────┐
//!  │ position │ name len │ stream │ tables   │ name len │ name │ ipc len │ Arrow IPC   │
//!  │ i64 LE   │ u16 LE   │ name   │ u32 LE   │ u16 LE   │      │ u64 LE  │ stream      │
//!  └──────────┴──────────┴────────┴──────────┴──────────┴──────┴─────────┴─────────────┘
//! ```
//!
//! Each table is one Arrow IPC *stream* (schema, then its record batches), so
//! the field metadata carrying the kdb+ types (`kdb.type`) and dictionary
//! (symbol) columns come back exactly. The position is RT's
//! `session << 44 | roll << 30 | offset`; [`NO_POSITION`] means "nothing
//! applied yet" (subscribe from the start).
//!
//! # Writing
//!
//! [`write()`] is atomic: the bytes go to `snapshot.qmsnap.tmp`, which is
//! fsynced, renamed over `snapshot.qmsnap`, and the directory is fsynced.
//! A crash at any point leaves either the old snapshot or the new one whole.
//!
//! # Reading
//!
//! [`read`] ignores (and removes) a leftover temporary file: it is a write
//! that did not finish, and the snapshot before it is still whole beside
//! it. A `snapshot.qmsnap` that fails its checks (length, checksum, layout)
//! is **an error, not a silent replay**: the rename made the file whole, so
//! damage there is the disk's or an operator's doing, and replaying from
//! the start may not rebuild the tables (the node may have archived the
//! start of the stream). The error names the file; removing it makes the
//! service replay the stream from its start.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::store::COMPACT_ROWS;

/// The snapshot's file name inside the data directory.
pub const FILE_NAME: &str = "snapshot.qmsnap";

/// The temporary file a snapshot is written to before the rename.
pub const TMP_NAME: &str = "snapshot.qmsnap.tmp";

/// First 8 bytes of a snapshot file.
pub const MAGIC: [u8; 8] = *b"QMSNAP\0\n";

/// The layout version this code writes and reads.
pub const VERSION: u32 = 1;

/// Bytes before the body: magic, version, checksum, body length.
pub const HEADER_BYTES: usize = 24;

/// The position meaning "no message applied": subscribe from the start.
pub const NO_POSITION: i64 = 0;

/// Most tables one snapshot may hold: far above any service's, low enough
/// that a corrupt count cannot make the reader loop for long.
pub const MAX_TABLES: u32 = 65_536;

/// Longest stream or table name, in bytes (the service's name bound).
pub const MAX_NAME_BYTES: usize = crate::store::MAX_TABLE_NAME;

/// Errors reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file is damaged or not a snapshot; nothing was loaded.
    #[error(
        "snapshot {path} is corrupt ({detail}); remove it to rebuild the tables by replaying the stream from its start"
    )]
    Corrupt { path: PathBuf, detail: String },
    /// The snapshot was written for another stream.
    #[error("snapshot {path} holds stream `{found}`, not `{expected}`; use another --data directory")]
    OtherStream { path: PathBuf, found: String, expected: String },
    #[error("snapshot: arrow: {0}")]
    Arrow(String),
}

/// One table of a snapshot: its schema and batches (possibly none).
#[derive(Debug, Clone, PartialEq)]
pub struct TableSnapshot {
    pub name: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Tables and the stream position right after the last message they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream the tables were built from.
    pub stream: String,
    /// RT position to resubscribe from ([`NO_POSITION`]: the start).
    pub position: i64,
    pub tables: Vec<TableSnapshot>,
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), SnapshotError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(SnapshotError::Arrow(format!("name of {} bytes is above {MAX_NAME_BYTES}", name.len())));
    }
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Runs of small batches (a stream brings a few rows a message) joined into
/// batches of up to [`COMPACT_ROWS`] rows, so the file does not carry
/// per-batch overhead for every message and loads as few large batches.
fn coalesce(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, SnapshotError> {
    let mut out = Vec::new();
    let mut run: Vec<RecordBatch> = Vec::new();
    let mut rows = 0;
    let flush = |run: &mut Vec<RecordBatch>, out: &mut Vec<RecordBatch>| -> Result<(), SnapshotError> {
        match run.len() {
            0 => {}
            1 => out.append(run),
            _ => {
                out.push(
                    concat_batches(schema, run.iter()).map_err(|e| SnapshotError::Arrow(e.to_string()))?,
                );
                run.clear();
            }
        }
        Ok(())
    };
    for b in batches {
        if rows + b.num_rows() > COMPACT_ROWS {
            flush(&mut run, &mut out)?;
            rows = 0;
        }
        rows += b.num_rows();
        run.push(b.clone());
    }
    flush(&mut run, &mut out)?;
    Ok(out)
}

/// The file's bytes.
pub fn encode(snap: &Snapshot) -> Result<Vec<u8>, SnapshotError> {
    let mut body = Vec::new();
    body.extend_from_slice(&snap.position.to_le_bytes());
    put_name(&mut body, &snap.stream)?;
    body.extend_from_slice(&(snap.tables.len() as u32).to_le_bytes());
    for t in &snap.tables {
        put_name(&mut body, &t.name)?;
        let len_at = body.len();
        body.extend_from_slice(&0u64.to_le_bytes());
        let start = body.len();
        let mut w =
            StreamWriter::try_new(&mut body, &t.schema).map_err(|e| SnapshotError::Arrow(e.to_string()))?;
        for b in coalesce(&t.schema, &t.batches)? {
            w.write(&b).map_err(|e| SnapshotError::Arrow(e.to_string()))?;
        }
        w.finish().map_err(|e| SnapshotError::Arrow(e.to_string()))?;
        drop(w);
        let len = (body.len() - start) as u64;
        body[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A cursor over the body that refuses to read past its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("{n} bytes wanted at body offset {}, {} left", self.at, self.bytes.len() - self.at)
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn name(&mut self) -> Result<String, String> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        if len > MAX_NAME_BYTES {
            return Err(format!("name of {len} bytes is above {MAX_NAME_BYTES}"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "a name that is not UTF-8".to_string())
    }
}

/// Reads a snapshot from its bytes; `Err` carries what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", bytes.len()));
    }
    if bytes[..8] != MAGIC {
        return Err("not a snapshot file (bad magic)".into());
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != VERSION {
        return Err(format!("layout version {version}, this build reads {VERSION}"));
    }
    let crc = word(12);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let body_len = u64::from_le_bytes(len8);
    let body = &bytes[HEADER_BYTES..];
    if body.len() as u64 != body_len {
        return Err(format!("body of {} bytes, header says {body_len}", body.len()));
    }
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let mut c = Cursor { bytes: body, at: 0 };
    let position = i64::from_le_bytes(c.array()?);
    let stream = c.name()?;
    let count = u32::from_le_bytes(c.array()?);
    if count > MAX_TABLES {
        return Err(format!("{count} tables, above {MAX_TABLES}"));
    }
    let mut tables = Vec::new();
    for _ in 0..count {
        let name = c.name()?;
        let len = u64::from_le_bytes(c.array()?);
        let len = usize::try_from(len).map_err(|_| format!("table `{name}`: length {len}"))?;
        let ipc = c.take(len)?;
        let reader = StreamReader::try_new(ipc, None).map_err(|e| format!("table `{name}`: arrow: {e}"))?;
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<RecordBatch>, _>>()
            .map_err(|e| format!("table `{name}`: arrow: {e}"))?;
        tables.push(TableSnapshot { name, schema: Arc::clone(&schema), batches });
    }
    if c.at != body.len() {
        return Err(format!("{} bytes after the last table", body.len() - c.at));
    }
    Ok(Snapshot { stream, position, tables })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

/// Writes `snap` into `dir` atomically (temporary file, fsync, rename,
/// directory fsync). Returns the bytes written.
pub fn write(dir: &Path, snap: &Snapshot) -> Result<u64, SnapshotError> {
    let bytes = encode(snap)?;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(TMP_NAME);
    let path = dir.join(FILE_NAME);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    Ok(bytes.len() as u64)
}

/// Reads the snapshot in `dir` for `stream`: `Ok(None)` when there is none
/// (a first start). A leftover temporary file is removed.
pub fn read(dir: &Path, stream: &str) -> Result<Option<Snapshot>, SnapshotError> {
    let tmp = dir.join(TMP_NAME);
    match fs::remove_file(&tmp) {
        Ok(()) => tracing::warn!(file = %tmp.display(), "removed an unfinished snapshot write"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(SnapshotError::Io { path: tmp, source: e }),
    }
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SnapshotError::Io { path, source: e }),
    };
    let snap = decode(&bytes).map_err(|detail| SnapshotError::Corrupt { path: path.clone(), detail })?;
    if snap.stream != stream {
        return Err(SnapshotError::OtherStream { path, found: snap.stream, expected: stream.to_string() });
    }
    Ok(Some(snap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Ingest, Store};
    use qmesh_codec::{Attr, K, Table, Vector};

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("qmesh-snapshot-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("dir");
        d
    }

    fn sample(position: i64) -> Snapshot {
        let store = Store::default();
        let t = K::Table(Table {
            attr: Attr::None,
            names: ["sym", "time", "price", "size"].into_iter().collect(),
            columns: vec![
                K::syms(["a", "b", "a"]),
                K::from(Vector::Time(vec![1, 2, 3])),
                K::from(Vector::Float(vec![1.5, f64::NAN, 3.0])),
                K::from(Vector::Long(vec![100, 200, 300])),
            ],
        });
        store.upd("trade", t).expect("upd");
        let tables = store
            .names()
            .into_iter()
            .filter_map(|n| store.table(&n))
            .map(|t| TableSnapshot { name: t.name().to_string(), schema: t.schema(), batches: t.snapshot() })
            .collect();
        Snapshot { stream: "trades".into(), position, tables }
    }

    #[test]
    fn round_trip_keeps_types_and_metadata() {
        let snap = sample(17_592_186_044_500);
        let back = decode(&encode(&snap).expect("encode")).expect("decode");
        assert_eq!(back.position, snap.position);
        assert_eq!(back.stream, "trades");
        assert_eq!(back.tables.len(), 1);
        assert_eq!(back.tables[0].schema, snap.tables[0].schema, "kdb.type metadata kept");
        // NaN != NaN, so compare through the kdb+ mapping's bytes
        let a = crate::mapping::batches_to_table(&snap.tables[0].schema, &snap.tables[0].batches).expect("a");
        let b = crate::mapping::batches_to_table(&back.tables[0].schema, &back.tables[0].batches).expect("b");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        // and back into a store as the same table
        let store = Store::default();
        for b in back.tables[0].batches.clone() {
            store.append("trade", b).expect("append");
        }
        use crate::mapping::KdbType;
        let t = store.table("trade").expect("t");
        assert_eq!(t.kdb_types(), &[KdbType::Symbol, KdbType::Time, KdbType::Float, KdbType::Long]);
        assert_eq!(t.rows(), 3);
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = tmpdir("rw");
        assert!(read(&dir, "trades").expect("empty").is_none());
        write(&dir, &sample(10)).expect("write");
        write(&dir, &sample(20)).expect("write again");
        let back = read(&dir, "trades").expect("read").expect("some");
        assert_eq!(back.position, 20);
        assert!(!dir.join(TMP_NAME).exists());
        let err = read(&dir, "quotes").unwrap_err();
        assert!(matches!(err, SnapshotError::OtherStream { .. }), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// A write that died before its rename leaves a temporary file, whole or
    /// torn at any byte: it is ignored (and removed), the snapshot before it
    /// is what loads.
    #[test]
    fn a_torn_temporary_file_is_ignored() {
        let dir = tmpdir("torn");
        write(&dir, &sample(10)).expect("write");
        let newer = encode(&sample(20)).expect("encode");
        for cut in [0, 1, HEADER_BYTES - 1, HEADER_BYTES, newer.len() / 2, newer.len() - 1, newer.len()] {
            fs::write(dir.join(TMP_NAME), &newer[..cut]).expect("tmp");
            let back = read(&dir, "trades").expect("read").expect("some");
            assert_eq!(back.position, 10, "cut at {cut}");
            assert!(!dir.join(TMP_NAME).exists());
        }
        // a torn temporary file and no snapshot at all: a first start
        fs::remove_file(dir.join(FILE_NAME)).expect("rm");
        fs::write(dir.join(TMP_NAME), &newer[..newer.len() / 3]).expect("tmp");
        assert!(read(&dir, "trades").expect("read").is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    /// A damaged snapshot file — cut at every byte, or any byte flipped — is
    /// a clear error naming the file, never a partial load or a panic.
    #[test]
    fn a_corrupt_snapshot_is_a_clear_error() {
        let bytes = encode(&sample(10)).expect("encode");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "byte {i} flipped");
        }
        let dir = tmpdir("corrupt");
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(dir.join(FILE_NAME), &b).expect("write");
        let err = read(&dir, "trades").unwrap_err();
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(FILE_NAME) && text.contains("checksum") && text.contains("remove it"),
            "{text}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
