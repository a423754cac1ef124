//! The writer ([`Log`]), its options, recovery on open, and the shared read side ([`LogHandle`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::{
    BADTAIL_MARK, DecodeError, MAX_PAYLOAD, MAX_SYMBOL_LEN, NULL_TIMESTAMP, RecordHeader, SEGMENT_HEADER_LEN,
    SegmentHeader, Source, decode_record, encode_record_head,
};
use crate::position::{MAX_OFFSET, Position, SegmentId};
use crate::reader::{Reader, Start, Window};
use crate::storage::{FileStorage, Storage, read_exact_at};

/// Default segment size, in bytes: 1 GiB, RT's roll point (a position's offset has 30 bits).
pub const DEFAULT_SEGMENT_SIZE: u64 = 1 << 30;
/// Largest segment size, in bytes: 2^30, the reach of a position's 30-bit offset.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Smallest segment size, in bytes (tests use small segments to exercise rolls; a record larger than the segment
/// size still gets a segment of its own).
pub const MIN_SEGMENT_SIZE: u64 = 64;
/// Bytes of appended records held in memory before they are written to storage (without fsync), in bytes; a
/// record larger than this is written straight from the caller's payload, never copied.
pub const WRITE_BUFFER: usize = 1 << 20;

const HDR: u64 = SEGMENT_HEADER_LEN as u64;

/// When [`Log::sync`] makes appended records durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fdatasync` at every [`Log::sync`]: a record acknowledged after `sync` returns survives a crash or power
    /// loss, and every position handed out stays valid. The default (the issue's `always`; NATS's
    /// `sync_interval: always`, Redis's `appendfsync always`).
    #[default]
    Always,
    /// [`Log::sync`] writes records to the OS and makes them readable, but `fdatasync`s only when this much time
    /// has passed since the last one (NATS's `sync_interval`, default 2 min there). A power loss may lose the
    /// records of the last interval, and positions handed out in it may then be reused.
    Interval(Duration),
    /// Never `fdatasync`; the OS writes back when it likes (kdb+tick's TP log). A process crash loses nothing
    /// written, a power loss may lose anything not yet written back.
    Never,
}

/// How the log is laid out and made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// Roll point in bytes of records per segment ([`MIN_SEGMENT_SIZE`]..=[`MAX_SEGMENT_SIZE`], default
    /// [`DEFAULT_SEGMENT_SIZE`]). A record that does not fit goes to the next segment; a record larger than the
    /// size gets a segment of its own. Keep it the same for logs that must hand out the same positions.
    pub segment_size: u64,
    /// When records become durable.
    pub durability: Durability,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self { segment_size: DEFAULT_SEGMENT_SIZE, durability: Durability::Always }
    }
}

/// What [`Log::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments present after recovery.
    pub segments: usize,
    /// Whole records found in the last segment.
    pub records_in_last_segment: u64,
    /// A torn or corrupt tail cut from the last segment.
    pub cut: Option<Cut>,
    /// A corrupt record in the last segment followed by more data: the segment was kept as it is (readers get
    /// `badtail` there) and writing continues in a new segment.
    pub sealed: Option<Sealed>,
    /// The last segment's header was torn (a crash while creating it) and was written again.
    pub header_rewritten: bool,
    /// Where the next record goes.
    pub end: Position,
}

/// A cut tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The position the log was cut back to (the end of the last whole record).
    pub at: Position,
    /// Bytes removed.
    pub bytes: u64,
    /// Why (torn record, corrupt last record, zeros).
    pub reason: String,
}

/// A sealed segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The corrupt record's position.
    pub at: Position,
    /// What was wrong.
    pub reason: String,
}

/// How much of a segment's time range is known (for the archiver's age policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MaxTs {
    /// Not scanned yet (a segment found on open).
    Unknown,
    /// No record with a non-null timestamp.
    Empty,
    /// The largest record `ts`.
    At(i64),
}

impl MaxTs {
    pub(crate) fn add(self, ts: i64) -> Self {
        match self {
            _ if ts == NULL_TIMESTAMP => self,
            MaxTs::At(t) => MaxTs::At(t.max(ts)),
            _ => MaxTs::At(ts),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SegMeta {
    /// Record-area bytes readers may read (the whole segment once rolled).
    pub(crate) visible: u64,
    /// Rolled: no record will be added.
    pub(crate) rolled: bool,
    pub(crate) max_ts: MaxTs,
}

#[derive(Debug)]
pub(crate) struct Index {
    pub(crate) segments: BTreeMap<SegmentId, SegMeta>,
    /// Where the next visible record goes: the latest position.
    pub(crate) latest: Position,
}

#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub(crate) storage: S,
    index: Mutex<Index>,
}

impl<S> Shared<S> {
    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One segment as [`LogHandle::segments`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Which segment.
    pub id: SegmentId,
    /// Bytes on storage that readers may read, segment header included.
    pub bytes: u64,
    /// Whether it is rolled (complete; only rolled segments are archived).
    pub rolled: bool,
    /// Position of its first record.
    pub start: Position,
    /// Position after its last visible record.
    pub end: Position,
}

/// The read side of a log: cheap to clone, `Send + Sync`, usable from any thread while the [`Log`] appends.
#[derive(Debug)]
pub struct LogHandle<S: Storage = FileStorage> {
    pub(crate) shared: Arc<Shared<S>>,
}

impl<S: Storage> Clone for LogHandle<S> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<S: Storage> LogHandle<S> {
    /// A reader from `start`. [`Start::At`] a position that [`LogHandle::check_position`] refuses fails with its
    /// error ([`Error::PositionAhead`], [`Error::NotARecordStart`]); a position in an archived segment is accepted
    /// and the reader's first item is a `skip-forward` event.
    pub fn reader(&self, start: Start) -> Result<Reader<S>> {
        let pos = match start {
            Start::Oldest => first_of(&self.shared.index()),
            Start::Latest => self.shared.index().latest,
            Start::At(p) => {
                crate::reader::check_position(&self.shared, p)?;
                p
            }
        };
        Ok(Reader::new(self.shared.clone(), pos))
    }

    /// Whether `pos` is a valid restart point, as [`Start::At`] requires: every position the log hands out is.
    ///
    /// - After [`LogHandle::latest_position`]: [`Error::PositionAhead`].
    /// - In an archived segment (before the first one): accepted, it cannot be checked (a reader skips forward).
    /// - A segment's start, or the end of a segment's records: accepted (a reader moves on to the next segment;
    ///   the start of a segment that is not there is where a `badtail` before a reset continues).
    /// - Inside a segment's records: accepted if a whole record decodes there (length, its complement, checksum).
    ///   Otherwise the segment's record lengths are walked from its start (reads of
    ///   [`READ_CHUNK`](crate::READ_CHUNK) bytes, lengths checked against their complements, no checksums):
    ///   landing exactly on `pos` means a genuine record that is corrupt (accepted: a reader reports `badtail`
    ///   there, as it would reaching it from before); stepping over `pos` means it lies inside a record:
    ///   [`Error::NotARecordStart`]. A length that does not check out before `pos` leaves nothing to say
    ///   (accepted: `badtail` at `pos`).
    /// - Past the end of a rolled segment's records, or inside a segment that is not there (between segments that
    ///   are): [`Error::NotARecordStart`].
    ///
    /// The walk reads at most the segment's bytes before `pos`, and only for a position where no record decodes (a
    /// client's typo, or damage). A position's offset counts from the end of the segment header, so no position
    /// names a byte of the header. A record whose bytes happen to hold another whole record (a payload that is an
    /// encoded record) would accept a position inside it: the checksum makes that a deliberate act, not a typo.
    pub fn check_position(&self, pos: Position) -> Result<()> {
        crate::reader::check_position(&self.shared, pos)
    }

    /// The first unarchived position: the start of the oldest segment (`::` in `.rt.sub`).
    pub fn first_position(&self) -> Position {
        first_of(&self.shared.index())
    }

    /// The latest position: where the next readable record will be (`` `latest `` in `.rt.sub`,
    /// `.rt.get_latest_position`). A reader started here sees only records synced afterwards.
    pub fn latest_position(&self) -> Position {
        self.shared.index().latest
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.shared
            .index()
            .segments
            .iter()
            .map(|(id, m)| SegmentInfo {
                id: *id,
                bytes: HDR + m.visible,
                rolled: m.rolled,
                start: id.start(),
                end: Position::after(*id, m.visible),
            })
            .collect()
    }

    /// Total bytes of all segments readers may read, headers included.
    pub fn total_bytes(&self) -> u64 {
        self.shared.index().segments.values().map(|m| HDR + m.visible).sum()
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.shared.storage
    }
}

fn first_of(idx: &Index) -> Position {
    idx.segments.keys().next().map_or(idx.latest, |s| s.start())
}

/// The writer of one log: a directory (or other [`Storage`]) of segments.
///
/// What a split sync must make durable ([`Log::begin_sync`]): the active segment up to its written end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPoint {
    segment: SegmentId,
    /// Record-area bytes of `segment` written out.
    upto: u64,
    /// Whether the durability policy wants an fsync now.
    fsync: bool,
}

impl SyncPoint {
    /// The fsync of a split sync (`fdatasync` of the point's segment when the [`Durability`] wants one), run
    /// without holding the [`Log`], on its [`LogHandle`]; pass the result to [`Log::finish_sync`].
    pub fn fsync<S: Storage>(&self, handle: &LogHandle<S>) -> std::io::Result<()> {
        if self.fsync { handle.shared.storage.sync(self.segment) } else { Ok(()) }
    }
}

/// One `Log` per storage (a file log holds a lock on its directory). Appends are buffered; [`Log::sync`] writes
/// them out, makes them durable per [`Durability`], and makes them visible to readers — group commit is many
/// `append`s, one `sync`, then acknowledging them all. Readers come from [`Log::handle`].
#[derive(Debug)]
pub struct Log<S: Storage = FileStorage> {
    handle: LogHandle<S>,
    options: LogOptions,
    active: SegmentId,
    /// Record-area bytes of the active segment on storage.
    written: u64,
    /// Record-area bytes published to readers.
    synced: u64,
    /// Record-area bytes made durable by the last fsync.
    fsynced: u64,
    /// Where the next record goes: `written` + `pending.len()`.
    end: u64,
    pending: Vec<u8>,
    active_max_ts: MaxTs,
    synced_max_ts: MaxTs,
    last_fsync: Instant,
    poisoned: Option<String>,
}

impl Log<FileStorage> {
    /// Opens the log in directory `dir` (created if missing; locked against a second writer), recovering its last
    /// segment: a torn tail is cut back to the last whole record (see [`RecoveryReport`]).
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<(Self, RecoveryReport)> {
        let dir = dir.as_ref();
        let storage =
            FileStorage::open(dir).map_err(|source| Error::Dir { path: dir.to_path_buf(), source })?;
        Self::open_with(storage, options)
    }
}

fn io(op: &'static str, segment: SegmentId) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, segment, source }
}

fn create_segment<S: Storage>(storage: &S, id: SegmentId) -> Result<()> {
    storage.create(id).map_err(io("create", id))?;
    let res = storage.append(id, &SegmentHeader::encode(id)).and_then(|()| storage.sync(id));
    if let Err(e) = res {
        let _ = storage.remove(id);
        return Err(io("create", id)(e));
    }
    Ok(())
}

/// True if every byte of the segment from record offset `from` to `to` is zero.
fn all_zero<S: Storage>(storage: &S, id: SegmentId, from: u64, to: u64) -> Result<bool> {
    let mut buf = vec![0u8; 1 << 16];
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        read_exact_at(storage, id, HDR + at, &mut buf[..n]).map_err(io("read", id))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

impl<S: Storage> Log<S> {
    /// Opens a log on any [`Storage`], recovering it as [`Log::open`] does.
    pub fn open_with(storage: S, options: LogOptions) -> Result<(Self, RecoveryReport)> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&options.segment_size) {
            return Err(Error::Options(format!(
                "segment size {} outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                options.segment_size
            )));
        }
        let ids = storage.list().map_err(io("list", SegmentId::default()))?;
        let mut report = RecoveryReport::default();
        let mut segments = BTreeMap::new();
        let (mut active, mut end, mut max_ts) = (SegmentId::default(), 0u64, MaxTs::Empty);
        match ids.split_last() {
            None => create_segment(&storage, active)?,
            Some((&last, rolled)) => {
                for &id in rolled {
                    let len = storage.len(id).map_err(io("len", id))?;
                    segments.insert(
                        id,
                        SegMeta { visible: len.saturating_sub(HDR), rolled: true, max_ts: MaxTs::Unknown },
                    );
                }
                active = last;
                match recover_last(&storage, last, &mut report)? {
                    Recovered::Continue { end: e, max_ts: m } => (end, max_ts) = (e, m),
                    Recovered::Seal { visible } => {
                        segments.insert(last, SegMeta { visible, rolled: true, max_ts: MaxTs::Unknown });
                        active = last.next_roll().ok_or(Error::PositionSpaceExhausted(last))?;
                        create_segment(&storage, active)?;
                    }
                }
            }
        }
        segments.insert(active, SegMeta { visible: end, rolled: false, max_ts });
        report.segments = segments.len();
        report.end = Position::after(active, end);
        let latest = report.end;
        let shared = Arc::new(Shared { storage, index: Mutex::new(Index { segments, latest }) });
        let log = Self {
            handle: LogHandle { shared },
            options,
            active,
            written: end,
            synced: end,
            fsynced: end,
            end,
            pending: Vec::new(),
            active_max_ts: max_ts,
            synced_max_ts: max_ts,
            last_fsync: Instant::now(),
            poisoned: None,
        };
        tracing::debug!(segments = report.segments, end = %report.end, "log opened");
        Ok((log, report))
    }

    /// The read side, for readers on other threads.
    pub fn handle(&self) -> LogHandle<S> {
        self.handle.clone()
    }

    /// A reader from `start` (as [`LogHandle::reader`]).
    pub fn reader(&self, start: Start) -> Result<Reader<S>> {
        self.handle.reader(start)
    }

    /// The options the log was opened with.
    pub fn options(&self) -> LogOptions {
        self.options
    }

    /// The segment being appended to.
    pub fn active_segment(&self) -> SegmentId {
        self.active
    }

    /// Where the next appended record goes (counting appends not yet synced). [`LogHandle::latest_position`] is
    /// the same after [`Log::sync`].
    pub fn end_position(&self) -> Position {
        Position::after(self.active, self.end)
    }

    /// The first unarchived position.
    pub fn first_position(&self) -> Position {
        self.handle.first_position()
    }

    /// The latest position readers see (see [`LogHandle::latest_position`]).
    pub fn latest_position(&self) -> Position {
        self.handle.latest_position()
    }

    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Appends one record and returns its position. The record is buffered: it is readable and (per
    /// [`Durability`]) durable only after the next [`Log::sync`] returns. Refuses, before writing anything, a
    /// payload over [`MAX_PAYLOAD`] ([`Error::PayloadTooLarge`]) or a symbol over [`MAX_SYMBOL_LEN`].
    pub fn append(&mut self, header: &RecordHeader<'_>, payload: &[u8]) -> Result<Position> {
        self.append_with_source(header, None, payload)
    }

    /// As [`Log::append`], with a [`Source`] block saying where a shipped record came from (a publisher's key and
    /// the record's position in its local log); readers see it as [`Entry::source`](crate::Entry::source). The
    /// source key is limited to [`MAX_SYMBOL_LEN`] bytes like the symbols.
    pub fn append_with_source(
        &mut self,
        header: &RecordHeader<'_>,
        source: Option<Source<'_>>,
        payload: &[u8],
    ) -> Result<Position> {
        self.check()?;
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::PayloadTooLarge { len: payload.len(), max: MAX_PAYLOAD });
        }
        for (field, sym) in
            [("on", Some(header.on)), ("dedup", header.dedup), ("source", source.map(|s| s.key))]
        {
            if let Some(s) = sym.filter(|s| s.len() > MAX_SYMBOL_LEN) {
                return Err(Error::SymbolTooLong { field, len: s.len(), max: MAX_SYMBOL_LEN });
            }
        }
        let len = (header.record_len(payload.len()) + source.map_or(0, |s| s.block_len())) as u64;
        let start = self.place(len)?;
        if len as usize > WRITE_BUFFER {
            self.write_out()?;
            let mut head = Vec::with_capacity(len as usize - payload.len());
            encode_record_head(header, source, payload, &mut head);
            self.write_direct(&[&head, payload])?;
        } else {
            encode_record_head(header, source, payload, &mut self.pending);
            self.pending.extend_from_slice(payload);
        }
        self.appended(len, header.ts)?;
        Ok(Position::after(self.active, start))
    }

    /// Appends a whole record shipped from another log (an [`Entry::raw`](crate::Entry::raw)), byte for byte,
    /// after verifying its checksum and structure; returns its position here, which equals its position in the
    /// source log when both logs have had the same records, session changes and segment size.
    pub fn append_raw(&mut self, record: &[u8]) -> Result<Position> {
        self.check()?;
        let v = decode_record(record).map_err(Error::BadRecord)?;
        if v.raw.len() != record.len() {
            return Err(Error::BadRecord(DecodeError::Corrupt(crate::format::Corruption::Length(
                record.len() as u32,
            ))));
        }
        if v.payload.len() > MAX_PAYLOAD {
            return Err(Error::PayloadTooLarge { len: v.payload.len(), max: MAX_PAYLOAD });
        }
        let len = record.len() as u64;
        let start = self.place(len)?;
        if record.len() > WRITE_BUFFER {
            self.write_out()?;
            self.write_direct(&[record])?;
        } else {
            self.pending.extend_from_slice(record);
        }
        self.appended(len, v.header.ts)?;
        Ok(Position::after(self.active, start))
    }

    /// Chooses where a record of `len` bytes goes, rolling first if it does not fit; returns its offset.
    fn place(&mut self, len: u64) -> Result<u64> {
        if self.end > 0 && self.end + len > self.options.segment_size {
            let next = self.active.next_roll().ok_or(Error::PositionSpaceExhausted(self.active))?;
            self.roll_to(next)?;
        }
        if self.end + len > MAX_OFFSET + 1 && self.active.next_roll().is_none() {
            return Err(Error::PositionSpaceExhausted(self.active));
        }
        Ok(self.end)
    }

    fn appended(&mut self, len: u64, ts: i64) -> Result<()> {
        self.end += len;
        self.active_max_ts = self.active_max_ts.add(ts);
        if self.pending.len() >= WRITE_BUFFER { self.write_out() } else { Ok(()) }
    }

    fn write_out(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.handle.shared.storage.append(self.active, &self.pending) {
            Ok(()) => {
                self.written += self.pending.len() as u64;
                self.pending.clear();
                Ok(())
            }
            Err(e) => Err(self.fail("append", e)),
        }
    }

    fn write_direct(&mut self, parts: &[&[u8]]) -> Result<()> {
        for part in parts {
            if let Err(e) = self.handle.shared.storage.append(self.active, part) {
                return Err(self.fail("append", e));
            }
            self.written += part.len() as u64;
        }
        Ok(())
    }

    /// A storage failure: cut the active segment back to what readers see, void every later append.
    fn fail(&mut self, op: &'static str, e: std::io::Error) -> Error {
        self.pending.clear();
        let storage = &self.handle.shared.storage;
        match storage.truncate(self.active, HDR + self.synced) {
            Ok(()) => {
                self.written = self.synced;
                self.fsynced = self.fsynced.min(self.synced);
                self.end = self.synced;
                self.active_max_ts = self.synced_max_ts;
            }
            Err(e2) => {
                let why = format!("{op} {}: {e}; then cutting back failed: {e2}", self.active);
                tracing::error!(%why, "log poisoned");
                self.poisoned = Some(why);
            }
        }
        tracing::warn!(segment = %self.active, op, error = %e, "log write failed; unsynced appends voided");
        Error::Io { op, segment: self.active, source: e }
    }

    fn fsync_if(&mut self, due: bool) -> Result<()> {
        if due && self.fsynced < self.written {
            if let Err(e) = self.handle.shared.storage.sync(self.active) {
                return Err(self.fail("sync", e));
            }
            self.fsynced = self.written;
            self.last_fsync = Instant::now();
        }
        Ok(())
    }

    fn publish(&mut self, rolled: bool) {
        self.synced = self.written;
        self.synced_max_ts = self.active_max_ts;
        let mut idx = self.handle.shared.index();
        if let Some(m) = idx.segments.get_mut(&self.active) {
            m.visible = self.synced;
            m.rolled = rolled;
            m.max_ts = self.synced_max_ts;
        }
        idx.latest = Position::after(self.active, self.synced);
    }

    /// Writes out every appended record, makes them durable per [`Durability`] (`fdatasync` for
    /// [`Durability::Always`]) and visible to readers; returns the latest position. Acknowledge the appends only
    /// after this returns `Ok`. On `Err` every append since the previous successful `sync` is void.
    pub fn sync(&mut self) -> Result<Position> {
        self.check()?;
        self.write_out()?;
        let due = match self.options.durability {
            Durability::Always => true,
            Durability::Interval(d) => self.last_fsync.elapsed() >= d,
            Durability::Never => false,
        };
        self.fsync_if(due)?;
        self.publish(false);
        Ok(self.handle.latest_position())
    }

    /// The first half of a [`Log::sync`] split so that the fsync runs while other threads go on appending (group
    /// commit across callers who share the log behind a lock): writes out every appended record and returns the
    /// point to make durable. Then, without holding the log, [`SyncPoint::fsync`] on its handle, and
    /// [`Log::finish_sync`] with the result. Records appended in between are not covered by this point: the next
    /// sync takes them.
    pub fn begin_sync(&mut self) -> Result<SyncPoint> {
        self.check()?;
        self.write_out()?;
        let due = match self.options.durability {
            Durability::Always => true,
            Durability::Interval(d) => self.last_fsync.elapsed() >= d,
            Durability::Never => false,
        };
        Ok(SyncPoint { segment: self.active, upto: self.written, fsync: due && self.fsynced < self.written })
    }

    /// The second half of a split sync: `fsynced` is [`SyncPoint::fsync`]'s result. On success the records up to
    /// the point are durable (per [`Durability`]) and visible to readers; returns the latest position (at or after
    /// the point: acknowledge the appends made before [`Log::begin_sync`]). On `Err` every append since the previous
    /// successful sync is void, as for [`Log::sync`]. If the log rolled in between, the roll already made the
    /// point's segment durable and visible (and a segment removed since, by [`Log::prune`] or the archiver, is no
    /// failure).
    pub fn finish_sync(&mut self, point: SyncPoint, fsynced: std::io::Result<()>) -> Result<Position> {
        self.check()?;
        match fsynced {
            Ok(()) => {}
            // rolled (the roll made it durable) and then archived or pruned during the fsync
            Err(e) if point.segment != self.active && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.fail("sync", e)),
        }
        if point.segment == self.active && point.upto > self.synced {
            if point.fsync {
                self.fsynced = self.fsynced.max(point.upto);
                self.last_fsync = Instant::now();
            }
            // visible up to the point only; the max timestamp may count records appended after it
            self.synced = point.upto;
            self.synced_max_ts = self.active_max_ts;
            let mut idx = self.handle.shared.index();
            if let Some(m) = idx.segments.get_mut(&self.active) {
                m.visible = self.synced;
                m.max_ts = self.synced_max_ts;
            }
            idx.latest = Position::after(self.active, self.synced);
        }
        Ok(self.handle.latest_position())
    }

    /// Seals the active segment (synced and visible) and continues in `next`.
    fn roll_to(&mut self, next: SegmentId) -> Result<()> {
        self.write_out()?;
        self.fsync_if(self.options.durability != Durability::Never)?;
        create_segment(&self.handle.shared.storage, next)?;
        self.publish(true);
        {
            let mut idx = self.handle.shared.index();
            idx.segments.insert(next, SegMeta { visible: 0, rolled: false, max_ts: MaxTs::Empty });
            idx.latest = next.start();
        }
        tracing::debug!(from = %self.active, to = %next, "log rolled");
        self.active = next;
        (self.written, self.synced, self.fsynced, self.end) = (0, 0, 0, 0);
        (self.active_max_ts, self.synced_max_ts) = (MaxTs::Empty, MaxTs::Empty);
        Ok(())
    }

    /// Starts a new session (a hard reset, the node's `reset`): syncs and seals the active segment and continues
    /// in roll 0 of the next session; returns its first position. Earlier segments stay until archived; a reader
    /// crossing into the new session gets a `reset` event.
    pub fn new_session(&mut self) -> Result<Position> {
        self.check()?;
        let next = self.active.next_session().ok_or(Error::PositionSpaceExhausted(self.active))?;
        self.roll_to(next)?;
        Ok(next.start())
    }

    /// Continues writing in segment `next`, which must come after the active one: a replica mirroring its
    /// source's segment boundaries (a subscriber's local copy of the node's log) calls this when the next shipped
    /// record starts in another segment, so every record lands at its source position. The active segment is
    /// sealed as at a roll (readers cross into `next` with `skip-forward` or `reset` as they would in the source),
    /// except in a log that holds no record at all, whose empty segment is removed so the copy starts at `next`.
    pub fn continue_at(&mut self, next: SegmentId) -> Result<Position> {
        self.check()?;
        if next <= self.active {
            return Err(Error::Options(format!(
                "continue at {next}: not after the active segment {}",
                self.active
            )));
        }
        let fresh = self.end == 0 && self.handle.shared.index().segments.len() == 1;
        if !fresh {
            self.roll_to(next)?;
            return Ok(next.start());
        }
        create_segment(&self.handle.shared.storage, next)?;
        let old = self.active;
        {
            let mut idx = self.handle.shared.index();
            idx.segments.remove(&old);
            idx.segments.insert(next, SegMeta { visible: 0, rolled: false, max_ts: MaxTs::Empty });
            idx.latest = next.start();
        }
        self.active = next;
        (self.written, self.synced, self.fsynced, self.end) = (0, 0, 0, 0);
        (self.active_max_ts, self.synced_max_ts) = (MaxTs::Empty, MaxTs::Empty);
        self.pending.clear();
        self.handle.shared.storage.remove(old).map_err(io("remove", old))?;
        Ok(next.start())
    }

    /// Records, in a copy of another log, that the source's reader reported `badtail` at `at` (a corrupt record
    /// there; the rest of its segment unreadable): writes [`BADTAIL_MARK`] at `at`, which must be where the next
    /// record goes ([`Log::end_position`]; [`Error::MarkNotAtEnd`] otherwise — call [`Log::continue_at`] first when
    /// `at` is in a later segment), then syncs and seals the segment and continues in the next roll, whose start
    /// it returns. A reader of this log then reports `badtail` at `at` with the next roll's start, the same two
    /// positions as the source's reader, and reads on from the records copied into the next roll.
    ///
    /// The mark survives a crash: written and synced before the next roll is created, and kept by recovery if it
    /// ends the last segment (a corrupt record that is neither torn nor zeros seals the segment, and writing
    /// continues in the next roll). A mark torn by a crash is cut, and the copy's end is `at` again, so a copy
    /// re-pulling from its end receives the event again. See [Badtail mark](crate::format#badtail-mark).
    pub fn mark_badtail(&mut self, at: Position) -> Result<Position> {
        self.check()?;
        let end = self.end_position();
        if at != end || at.segment() != self.active {
            return Err(Error::MarkNotAtEnd { at, end });
        }
        let next = self.active.next_roll().ok_or(Error::PositionSpaceExhausted(self.active))?;
        self.pending.extend_from_slice(&BADTAIL_MARK);
        self.end += BADTAIL_MARK.len() as u64;
        self.roll_to(next)?;
        tracing::warn!(%at, next = %next.start(), "badtail marked in the copy: the source's record there is corrupt");
        Ok(next.start())
    }

    /// As [`Log::mark_badtail`], for a copy that starts (or resumes) at `resume`, later in the same segment as
    /// `at`: its source's records from `resume` on are readable (the damage lies behind it). Writes
    /// [`BADTAIL_MARK`] at `at` and zeros up to `resume`, syncs, and stays in the segment: copied records go on at
    /// `resume`. Readers reaching `at` report `badtail` there and skip to the next roll, as the source's do; readers
    /// starting at `resume` read on, as the source's do. `at` must be [`Log::end_position`] and `resume` at least
    /// [`BADTAIL_MARK`]'s length after it in the active segment ([`Error::MarkNotAtEnd`] otherwise). Returns
    /// `resume`.
    ///
    /// Unlike [`Log::mark_badtail`]'s, this mark is not crash-proof for readers starting at `resume`: if the copy
    /// crashes before records follow it, recovery seals the segment at its end (a corrupt record with data after
    /// it), and the copy continues in the next roll.
    pub fn fill_badtail(&mut self, at: Position, resume: Position) -> Result<Position> {
        self.check()?;
        let end = self.end_position();
        let fits =
            resume.segment() == self.active && resume.offset() >= at.offset() + BADTAIL_MARK.len() as u64;
        if at != end || at.segment() != self.active || !fits {
            return Err(Error::MarkNotAtEnd { at, end });
        }
        let gap = resume.offset() - at.offset();
        self.pending.extend_from_slice(&BADTAIL_MARK);
        self.write_out()?;
        // the zeros go out a buffer's worth at a time: the gap may be most of a segment
        let zeros = vec![0u8; WRITE_BUFFER.min((gap - BADTAIL_MARK.len() as u64) as usize)];
        let mut left = gap - BADTAIL_MARK.len() as u64;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.write_direct(&[&zeros[..n]])?;
            left -= n as u64;
        }
        self.end += gap;
        self.sync()?;
        tracing::warn!(%at, %resume, "badtail marked in the copy; the copy resumes after it in the segment");
        Ok(resume)
    }

    /// Removes segment `id` (never the active one): from the index first, so readers skip forward, then storage.
    pub(crate) fn remove_segment(&mut self, id: SegmentId) -> Result<u64> {
        if id == self.active {
            return Ok(0);
        }
        let Some(meta) = self.handle.shared.index().segments.remove(&id) else { return Ok(0) };
        if let Err(e) = self.handle.shared.storage.remove(id) {
            self.handle.shared.index().segments.insert(id, meta);
            return Err(io("remove", id)(e));
        }
        tracing::info!(segment = %id, bytes = HDR + meta.visible, "log segment archived");
        Ok(HDR + meta.visible)
    }

    /// The largest record `ts` in a rolled segment, scanning it once if unknown.
    pub(crate) fn max_ts_of(&mut self, id: SegmentId) -> Result<MaxTs> {
        let Some(meta) = self.handle.shared.index().segments.get(&id).copied() else {
            return Ok(MaxTs::Empty);
        };
        if meta.max_ts != MaxTs::Unknown {
            return Ok(meta.max_ts);
        }
        let mut w = Window::default();
        let (mut off, mut max) = (0u64, MaxTs::Empty);
        while off < meta.visible {
            match w.record(&self.handle.shared.storage, id, off, meta.visible).map_err(io("read", id))? {
                Ok(v) => {
                    max = max.add(v.header.ts);
                    off += v.raw.len() as u64;
                }
                Err(_) => break,
            }
        }
        if let Some(m) = self.handle.shared.index().segments.get_mut(&id) {
            m.max_ts = max;
        }
        Ok(max)
    }
}

enum Recovered {
    Continue { end: u64, max_ts: MaxTs },
    Seal { visible: u64 },
}

/// Checks the last segment: header, then every record; cuts a torn tail or decides to seal.
fn recover_last<S: Storage>(storage: &S, id: SegmentId, report: &mut RecoveryReport) -> Result<Recovered> {
    let len = storage.len(id).map_err(io("len", id))?;
    let mut head = vec![0u8; len.min(HDR) as usize];
    read_exact_at(storage, id, 0, &mut head).map_err(io("read", id))?;
    let header = SegmentHeader::decode(&head);
    let header_ok = matches!(header, Ok(h) if h.segment == id);
    if !header_ok {
        // Torn while being created: a prefix of the right header, or nothing but zeros.
        let torn = if len < HDR {
            SegmentHeader::encode(id).starts_with(&head) || head.iter().all(|&b| b == 0)
        } else {
            head.iter().all(|&b| b == 0) && all_zero(storage, id, 0, len - HDR)?
        };
        if !torn {
            let reason = match header {
                Ok(h) => format!("segment header names {}", h.segment),
                Err(e) => e.to_string(),
            };
            tracing::warn!(segment = %id, %reason, "last segment's header is corrupt; sealing it");
            report.sealed = Some(Sealed { at: id.start(), reason });
            return Ok(Recovered::Seal { visible: len.saturating_sub(HDR) });
        }
        tracing::warn!(segment = %id, bytes = len, "last segment's header torn; writing it again");
        storage.truncate(id, 0).map_err(io("truncate", id))?;
        storage.append(id, &SegmentHeader::encode(id)).map_err(io("append", id))?;
        storage.sync(id).map_err(io("sync", id))?;
        report.header_rewritten = true;
        return Ok(Recovered::Continue { end: 0, max_ts: MaxTs::Empty });
    }
    let area = len - HDR;
    let mut w = Window::default();
    let (mut off, mut max_ts, mut records) = (0u64, MaxTs::Empty, 0u64);
    let mut cut_reason = None;
    while off < area {
        match w.record(storage, id, off, area).map_err(io("read", id))? {
            Ok(v) => {
                max_ts = max_ts.add(v.header.ts);
                off += v.raw.len() as u64;
                records += 1;
            }
            Err(DecodeError::Incomplete { needed }) => {
                cut_reason = Some(format!("torn record: {needed} bytes needed, {} present", area - off));
                break;
            }
            Err(DecodeError::Corrupt(c)) => {
                let rec_end = w.declared_len(off).map(|l| off + l as u64);
                if rec_end == Some(area) {
                    cut_reason = Some(format!("last record corrupt ({c})"));
                } else if all_zero(storage, id, off, area)? {
                    cut_reason = Some("zeros after the last record".to_string());
                } else {
                    let at = Position::after(id, off);
                    tracing::warn!(segment = %id, %at, corruption = %c, "corrupt record mid-segment; sealing it");
                    report.sealed = Some(Sealed { at, reason: c.to_string() });
                    report.records_in_last_segment = records;
                    return Ok(Recovered::Seal { visible: area });
                }
                break;
            }
        }
    }
    report.records_in_last_segment = records;
    if let Some(reason) = cut_reason {
        let at = Position::after(id, off);
        let bytes = area - off;
        tracing::warn!(segment = %id, %at, bytes, %reason, "cut the log's tail back to the last whole record");
        storage.truncate(id, HDR + off).map_err(io("truncate", id))?;
        report.cut = Some(Cut { at, bytes, reason });
    }
    // Records found whole may not have been fsynced before the crash: make them durable before readers see them.
    storage.sync(id).map_err(io("sync", id))?;
    Ok(Recovered::Continue { end: off, max_ts })
}
