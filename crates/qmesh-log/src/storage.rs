//! Where segment bytes live: the [`Storage`] trait, its file implementation ([`FileStorage`]) and an in-memory one
//! ([`MemStorage`], which can also simulate a crash). The [`Log`](crate::Log) does everything through this trait,
//! so a consensus layer or a simulation can drive the same log code; `tests/conformance.rs` runs one suite against
//! both implementations.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::position::SegmentId;

/// How full the device holding the log is (for the archiver's disk-use policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes in use on the device.
    pub used: u64,
    /// Bytes in use plus bytes available to an unprivileged writer (as `df` counts).
    pub total: u64,
}

impl DiskUsage {
    /// Percentage in use, 0.0–100.0 (as `df`'s Use%).
    pub fn percent(&self) -> f64 {
        if self.total == 0 { 100.0 } else { self.used as f64 * 100.0 / self.total as f64 }
    }
}

/// A set of append-only segment files named by [`SegmentId`].
///
/// Offsets are file offsets (the segment header included). Reads may run concurrently with one writer; the
/// [`Log`](crate::Log) serializes all writes (`create`, `append`, `truncate`, `sync`, `remove`).
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// The segments present, in log order.
    fn list(&self) -> io::Result<Vec<SegmentId>>;
    /// Creates an empty segment; an error if it exists. Once [`Storage::sync`] returns for it, the segment's
    /// existence is durable too.
    fn create(&self, id: SegmentId) -> io::Result<()>;
    /// The segment's length in bytes.
    fn len(&self, id: SegmentId) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at the end).
    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Appends all of `data` at the end of the segment (not yet durable).
    fn append(&self, id: SegmentId, data: &[u8]) -> io::Result<()>;
    /// Cuts the segment to `len` bytes.
    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()>;
    /// Makes everything appended to the segment (and its creation) durable: `fdatasync` for files.
    fn sync(&self, id: SegmentId) -> io::Result<()>;
    /// Removes the segment. Readers that reach it afterwards get `NotFound`.
    fn remove(&self, id: SegmentId) -> io::Result<()>;
    /// How full the device is; `None` when unknown.
    fn disk_usage(&self) -> io::Result<Option<DiskUsage>>;
}

/// Reads exactly `buf.len()` bytes at `offset` or fails with `UnexpectedEof`.
pub(crate) fn read_exact_at<S: Storage + ?Sized>(
    s: &S,
    id: SegmentId,
    mut offset: u64,
    mut buf: &mut [u8],
) -> io::Result<()> {
    while !buf.is_empty() {
        let n = s.read_at(id, offset, buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{id}: short read at {offset}"),
            ));
        }
        offset += n as u64;
        buf = &mut buf[n..];
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Name of the lock file that keeps a second writer out of a log directory.
pub const LOCK_FILE: &str = "LOCK";

/// Segments as files `log.SSSSSSS.RRRRR` in one directory (the stream's), which holds an exclusive `flock` on
/// [`LOCK_FILE`] while open, so two processes never write one log.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    files: Mutex<HashMap<SegmentId, Arc<File>>>,
    _lock: File,
}

impl FileStorage {
    /// Opens (creating if needed) the log directory `dir` and locks it. Fails with `WouldBlock` if another process
    /// holds the lock.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{}: log directory in use ({e})", dir.display()),
            )
        })?;
        Ok(Self { dir, files: Mutex::new(HashMap::new()), _lock: lock })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a segment's file.
    pub fn path(&self, id: SegmentId) -> PathBuf {
        self.dir.join(id.file_name())
    }

    fn file(&self, id: SegmentId) -> io::Result<Arc<File>> {
        let mut files = lock(&self.files);
        if let Some(f) = files.get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(OpenOptions::new().read(true).append(true).open(self.path(id))?);
        files.insert(id, f.clone());
        Ok(f)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Storage for FileStorage {
    fn list(&self) -> io::Result<Vec<SegmentId>> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Some(id) = e?.file_name().to_str().and_then(SegmentId::parse_file_name) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn create(&self, id: SegmentId) -> io::Result<()> {
        let f = OpenOptions::new().read(true).append(true).create_new(true).open(self.path(id))?;
        lock(&self.files).insert(id, Arc::new(f));
        self.sync_dir()
    }

    fn len(&self, id: SegmentId) -> io::Result<u64> {
        Ok(self.file(id)?.metadata()?.len())
    }

    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file(id)?.read_at(buf, offset)
    }

    fn append(&self, id: SegmentId, data: &[u8]) -> io::Result<()> {
        (&*self.file(id)?).write_all(data)
    }

    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()> {
        self.file(id)?.set_len(len)
    }

    fn sync(&self, id: SegmentId) -> io::Result<()> {
        self.file(id)?.sync_data()
    }

    fn remove(&self, id: SegmentId) -> io::Result<()> {
        lock(&self.files).remove(&id);
        std::fs::remove_file(self.path(id))
    }

    fn disk_usage(&self) -> io::Result<Option<DiskUsage>> {
        let st = rustix::fs::statvfs(&self.dir).map_err(io::Error::from)?;
        let frsize = st.f_frsize;
        let used = st.f_blocks.saturating_sub(st.f_bfree) * frsize;
        let avail = st.f_bavail * frsize;
        Ok(Some(DiskUsage { used, total: used + avail }))
    }
}

#[derive(Debug, Default, Clone)]
struct MemSegment {
    data: Vec<u8>,
    /// Bytes made durable by `sync`; a simulated crash keeps only these.
    synced: usize,
    /// Whether the segment's creation was synced.
    created_synced: bool,
}

#[derive(Debug, Default)]
struct MemInner {
    segments: BTreeMap<SegmentId, MemSegment>,
    capacity: Option<u64>,
}

/// Segments in memory. Clones share the same segments. Tracks what was synced, so [`MemStorage::crash`] gives what
/// a machine would find after losing power: the simulation and the conformance suite use it.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    inner: Arc<Mutex<MemInner>>,
}

impl MemStorage {
    /// An empty storage with no capacity limit ([`Storage::disk_usage`] is `None`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a device capacity in bytes: [`Storage::disk_usage`] then reports the bytes held against it.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        lock(&self.inner).capacity = capacity;
    }

    /// A new, independent storage holding what survived a crash now: every segment whose creation was synced, cut
    /// to its synced length.
    pub fn crash(&self) -> MemStorage {
        let inner = lock(&self.inner);
        let segments = inner
            .segments
            .iter()
            .filter(|(_, s)| s.created_synced)
            .map(|(id, s)| {
                (
                    *id,
                    MemSegment { data: s.data[..s.synced].to_vec(), synced: s.synced, created_synced: true },
                )
            })
            .collect();
        MemStorage { inner: Arc::new(Mutex::new(MemInner { segments, capacity: inner.capacity })) }
    }

    /// A copy of a segment's bytes (tests).
    pub fn bytes(&self, id: SegmentId) -> Option<Vec<u8>> {
        lock(&self.inner).segments.get(&id).map(|s| s.data.clone())
    }

    /// Replaces a segment's bytes, creating it if needed, as synced (tests: damage a log, or load an image).
    pub fn put(&self, id: SegmentId, data: Vec<u8>) {
        let synced = data.len();
        lock(&self.inner).segments.insert(id, MemSegment { data, synced, created_synced: true });
    }
}

fn not_found(id: SegmentId) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{id}: no such segment"))
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<SegmentId>> {
        Ok(lock(&self.inner).segments.keys().copied().collect())
    }

    fn create(&self, id: SegmentId) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        if inner.segments.contains_key(&id) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{id} exists")));
        }
        inner.segments.insert(id, MemSegment::default());
        Ok(())
    }

    fn len(&self, id: SegmentId) -> io::Result<u64> {
        lock(&self.inner).segments.get(&id).map(|s| s.data.len() as u64).ok_or_else(|| not_found(id))
    }

    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let inner = lock(&self.inner);
        let s = inner.segments.get(&id).ok_or_else(|| not_found(id))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(s.data.len());
        let n = buf.len().min(s.data.len() - start);
        buf[..n].copy_from_slice(&s.data[start..start + n]);
        Ok(n)
    }

    fn append(&self, id: SegmentId, data: &[u8]) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        let held: u64 = inner.segments.values().map(|s| s.data.len() as u64).sum();
        if inner.capacity.is_some_and(|c| held + data.len() as u64 > c) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "memory storage full"));
        }
        inner.segments.get_mut(&id).ok_or_else(|| not_found(id))?.data.extend_from_slice(data);
        Ok(())
    }

    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        let s = inner.segments.get_mut(&id).ok_or_else(|| not_found(id))?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        s.data.resize(len, 0);
        s.synced = s.synced.min(len);
        Ok(())
    }

    fn sync(&self, id: SegmentId) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        let s = inner.segments.get_mut(&id).ok_or_else(|| not_found(id))?;
        s.synced = s.data.len();
        s.created_synced = true;
        Ok(())
    }

    fn remove(&self, id: SegmentId) -> io::Result<()> {
        lock(&self.inner).segments.remove(&id).map(drop).ok_or_else(|| not_found(id))
    }

    fn disk_usage(&self) -> io::Result<Option<DiskUsage>> {
        let inner = lock(&self.inner);
        Ok(inner.capacity.map(|total| DiskUsage {
            used: inner.segments.values().map(|s| s.data.len() as u64).sum(),
            total,
        }))
    }
}
