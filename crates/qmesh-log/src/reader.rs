//! Reading the log from any position: entries and events.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{
    DecodeError, RECORD_FIXED_LEN, RECORD_PREFIX_LEN, RecordHeader, RecordView, SEGMENT_HEADER_LEN,
    SegmentHeader, Source, decode_record, record_len,
};
use crate::log::Shared;
use crate::position::{MAX_OFFSET, Position, SegmentId};
use crate::storage::{FileStorage, Storage, read_exact_at};

const HDR: u64 = SEGMENT_HEADER_LEN as u64;
/// Bytes a reader reads from storage at a time (more when one record is larger), in bytes.
pub const READ_CHUNK: usize = 256 << 10;

/// Where a [`Reader`] starts (`.rt.sub`'s `pos`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The oldest unarchived record (`::`).
    Oldest,
    /// Only records synced from now on (`` `latest ``).
    Latest,
    /// A position handed out earlier: the record starting there (or the next one, if it is a segment's end, or
    /// the start of a segment). A position where no record starts is refused ([`Error::NotARecordStart`], see
    /// [`LogHandle::check_position`](crate::LogHandle::check_position)).
    At(Position),
}

/// A record read from the log.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record's position.
    pub position: Position,
    /// The position after it: where a reader resumes to get the following item.
    pub next: Position,
    raw: Vec<u8>,
    ts: i64,
    id: i64,
    to: i64,
    on_len: usize,
    dedup_len: Option<usize>,
    /// The source block's key length and position.
    source: Option<(usize, u64)>,
}

impl Entry {
    fn from_view(position: Position, next: Position, v: &RecordView<'_>) -> Self {
        Self {
            position,
            next,
            raw: v.raw.to_vec(),
            ts: v.header.ts,
            id: v.header.id,
            to: v.header.to,
            on_len: v.header.on.len(),
            dedup_len: v.header.dedup.map(<[u8]>::len),
            source: v.source.map(|s| (s.key.len(), s.pos)),
        }
    }

    /// The record's header.
    pub fn header(&self) -> RecordHeader<'_> {
        let on_end = RECORD_FIXED_LEN + self.on_len;
        RecordHeader {
            on: &self.raw[RECORD_FIXED_LEN..on_end],
            ts: self.ts,
            id: self.id,
            to: self.to,
            dedup: self.dedup_len.map(|d| &self.raw[on_end..on_end + d]),
        }
    }

    /// The payload: the kdb+ message body as published. Its first bytes are enough to decide a filter on the
    /// leading symbols of `` (`upd;`table;data) `` without decoding the rest.
    pub fn payload(&self) -> &[u8] {
        let src = self.source.map_or(0, |(k, _)| k + 9);
        &self.raw[RECORD_FIXED_LEN + self.on_len + self.dedup_len.unwrap_or(0) + src..]
    }

    /// Where a shipped record came from: the publisher's key and the record's position in its local log.
    pub fn source(&self) -> Option<Source<'_>> {
        let (klen, pos) = self.source?;
        let at = RECORD_FIXED_LEN + self.on_len + self.dedup_len.unwrap_or(0) + 1;
        Some(Source { key: &self.raw[at..at + klen], pos })
    }

    /// The whole record, byte for byte: ship it and [`Log::append_raw`](crate::Log::append_raw) it elsewhere.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The whole record, owned.
    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("position", &self.position)
            .field("next", &self.next)
            .field("header", &self.header())
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

/// Something a subscriber must be told besides records (the spec's events, with its two positions each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A corrupt record mid-log: the rest of its segment is skipped. `at` is the corrupt record's position, `next`
    /// the start of the next segment. There is always data loss.
    Badtail {
        /// The corrupt record.
        at: Position,
        /// The start of the next segment.
        next: Position,
    },
    /// The position asked for was archived: the reader skips to the first unarchived segment. There is always
    /// data loss.
    SkipForward {
        /// The archived position.
        from: Position,
        /// The start of the first unarchived segment.
        to: Position,
    },
    /// A new session started (a hard reset). `from` is the end of the previous session's last record, `to` the
    /// first position of the new session.
    Reset {
        /// End of the last record before the reset.
        from: Position,
        /// First position after it.
        to: Position,
    },
}

impl Event {
    /// The event's name as the spec spells it (`badtail`, `skip-forward`, `reset`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Badtail { .. } => "badtail",
            Event::SkipForward { .. } => "skip-forward",
            Event::Reset { .. } => "reset",
        }
    }

    /// The event's two positions, as the spec's `(p1;p2)`.
    pub fn positions(&self) -> (Position, Position) {
        match *self {
            Event::Badtail { at, next } => (at, next),
            Event::SkipForward { from, to } | Event::Reset { from, to } => (from, to),
        }
    }

    /// Where reading continues after the event.
    pub fn next(&self) -> Position {
        self.positions().1
    }
}

/// What a [`Reader`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A record.
    Entry(Entry),
    /// An event; reading continues at [`Event::next`].
    Event(Event),
}

/// A buffered window over one segment's record area.
#[derive(Default)]
pub(crate) struct Window {
    seg: Option<SegmentId>,
    /// Record-area offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

impl Window {
    fn ensure<S: Storage + ?Sized>(
        &mut self,
        s: &S,
        seg: SegmentId,
        off: u64,
        need: usize,
        limit: u64,
    ) -> io::Result<()> {
        if self.seg == Some(seg)
            && off >= self.start
            && off + need as u64 <= self.start + self.buf.len() as u64
        {
            return Ok(());
        }
        let want = need.max(READ_CHUNK.min((limit - off) as usize));
        self.seg = None;
        if self.buf.capacity() > 4 * READ_CHUNK && want <= READ_CHUNK {
            self.buf = Vec::new();
        }
        self.buf.resize(want, 0);
        read_exact_at(s, seg, HDR + off, &mut self.buf)?;
        (self.seg, self.start) = (Some(seg), off);
        Ok(())
    }

    /// The record at record-area offset `off` of `seg`, reading no byte at or past `limit`. A record running past
    /// `limit` is `Incomplete`; storage shorter than `limit` is `Incomplete` too.
    pub(crate) fn record<S: Storage + ?Sized>(
        &mut self,
        s: &S,
        seg: SegmentId,
        off: u64,
        limit: u64,
    ) -> io::Result<Result<RecordView<'_>, DecodeError>> {
        let avail = limit.saturating_sub(off);
        if avail < RECORD_PREFIX_LEN as u64 {
            return Ok(Err(DecodeError::Incomplete { needed: RECORD_PREFIX_LEN }));
        }
        let short = |e: io::Error| if e.kind() == io::ErrorKind::UnexpectedEof { Ok(()) } else { Err(e) };
        if let Err(e) = self.ensure(s, seg, off, RECORD_PREFIX_LEN, limit) {
            short(e)?;
            return Ok(Err(DecodeError::Incomplete { needed: RECORD_PREFIX_LEN }));
        }
        let at = (off - self.start) as usize;
        let len = match record_len(&self.buf[at..]) {
            Ok(len) => len,
            Err(e) => return Ok(Err(e)),
        };
        if len as u64 > avail {
            return Ok(Err(DecodeError::Incomplete { needed: len }));
        }
        if let Err(e) = self.ensure(s, seg, off, len, limit) {
            short(e)?;
            return Ok(Err(DecodeError::Incomplete { needed: len }));
        }
        let at = (off - self.start) as usize;
        Ok(decode_record(&self.buf[at..at + len]))
    }

    /// The length the record at `off` declares, if the window holds its prefix and the length checks out.
    pub(crate) fn declared_len(&self, off: u64) -> Option<usize> {
        let at = usize::try_from(off.checked_sub(self.start)?).ok()?;
        record_len(self.buf.get(at..)?).ok()
    }
}

/// A tailing reader: yields every record and event from its start in log order, then `None` ("no more for now")
/// at the latest position; call [`Reader::next`] again after the writer syncs. Follows rolls and sessions, and
/// skips forward over segments archived under it.
///
/// Reading again from any position an earlier reading passed yields the same entries and events (unless segments
/// were archived in between, which shows as `skip-forward`).
pub struct Reader<S: Storage = FileStorage> {
    shared: Arc<Shared<S>>,
    pos: Position,
    window: Window,
    header_ok: Option<SegmentId>,
}

impl<S: Storage> fmt::Debug for Reader<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").field("pos", &self.pos).finish()
    }
}

fn next_roll_start(seg: SegmentId) -> Position {
    Position::after(seg, MAX_OFFSET + 1)
}

/// What walking a segment's record lengths from its start says about an offset.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// A record (whole or corrupt) starts exactly there.
    Landed,
    /// The offset falls inside the record at `record`, which ends at `end`.
    Inside { record: u64, end: u64 },
    /// A length before the offset does not check out (corruption before it): nothing can be said.
    Unknown,
}

/// Steps through the record lengths of `seg` from offset 0 towards `off` (reading [`READ_CHUNK`] bytes at a time,
/// checking each length against its complement, not the checksums), never reading at or past `visible`.
fn walk<S: Storage + ?Sized>(s: &S, seg: SegmentId, off: u64, visible: u64) -> io::Result<Walk> {
    let mut buf = Vec::new();
    let mut buf_at = 0u64;
    let mut at = 0u64;
    while at < off {
        if at + RECORD_PREFIX_LEN as u64 > visible {
            return Ok(Walk::Unknown);
        }
        if at < buf_at || at + RECORD_PREFIX_LEN as u64 > buf_at + buf.len() as u64 {
            buf.resize(READ_CHUNK.min((visible - at) as usize), 0);
            read_exact_at(s, seg, HDR + at, &mut buf)?;
            buf_at = at;
        }
        let Ok(len) = record_len(&buf[(at - buf_at) as usize..]) else { return Ok(Walk::Unknown) };
        let end = at + len as u64;
        if end > off {
            // a record running past the readable bytes is itself damaged: no claim about what follows
            return Ok(if end <= visible { Walk::Inside { record: at, end } } else { Walk::Unknown });
        }
        at = end;
    }
    Ok(Walk::Landed)
}

/// Whether a reader may start at `pos` (see [`LogHandle::check_position`](crate::LogHandle::check_position)).
pub(crate) fn check_position<S: Storage>(shared: &Shared<S>, pos: Position) -> Result<()> {
    let seg = pos.segment();
    let (meta, first, later, latest) = {
        let idx = shared.index();
        let later = idx.segments.range((Bound::Excluded(seg), Bound::Unbounded)).next().map(|(k, _)| *k);
        (idx.segments.get(&seg).copied(), idx.segments.keys().next().copied(), later, idx.latest)
    };
    if pos > latest {
        return Err(Error::PositionAhead { pos, latest });
    }
    let off = pos.offset();
    let Some(meta) = meta else {
        // archived (the reader skips forward), or the start of a segment that is not there (a reader moves on
        // from it with `skip-forward` or `reset`: a `badtail`'s next position before a reset, say)
        if off == 0 || first.is_none_or(|f| seg < f) {
            return Ok(());
        }
        return Err(Error::NotARecordStart {
            pos,
            inside: None,
            next: later.map_or(latest, SegmentId::start),
        });
    };
    if off == 0 || off == meta.visible {
        return Ok(()); // a segment's start or end
    }
    if off > meta.visible {
        // past the end of a rolled segment (past the active one's end is past `latest`)
        return Err(Error::NotARecordStart { pos, inside: None, next: next_roll_start(seg) });
    }
    let storage = &shared.storage;
    let gone = |e: &io::Error| matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof);
    match Window::default().record(storage, seg, off, meta.visible) {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(_)) => {}
        // archived under us: the reader skips forward
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(Error::Io { op: "read", segment: seg, source: e }),
    }
    match walk(storage, seg, off, meta.visible) {
        // a genuine record that is corrupt (the reader reports `badtail` there), or damage before it
        Ok(Walk::Landed | Walk::Unknown) => Ok(()),
        Ok(Walk::Inside { record, end }) => Err(Error::NotARecordStart {
            pos,
            inside: Some(Position::after(seg, record)),
            next: Position::after(seg, end),
        }),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(Error::Io { op: "read", segment: seg, source: e }),
    }
}

impl<S: Storage> Reader<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>, pos: Position) -> Self {
        Self { shared, pos, window: Window::default(), header_ok: None }
    }

    /// Where the next item starts: a valid restart point.
    pub fn position(&self) -> Position {
        self.pos
    }

    fn event(&mut self, e: Event) -> Result<Option<Item>> {
        self.pos = e.next();
        Ok(Some(Item::Event(e)))
    }

    /// The next entry or event, or `None` when nothing more is readable yet.
    #[allow(clippy::should_implement_trait)] // fallible and resumable after `None`: not an `Iterator`
    pub fn next(&mut self) -> Result<Option<Item>> {
        let mut gone_retries = 0;
        loop {
            let seg = self.pos.segment();
            let (meta, after, first) = {
                let idx = self.shared.index();
                let after =
                    idx.segments.range((Bound::Excluded(seg), Bound::Unbounded)).next().map(|(k, _)| *k);
                (idx.segments.get(&seg).copied(), after, idx.segments.keys().next().copied())
            };
            let Some(meta) = meta else {
                if let Some(first) = first.filter(|f| seg < *f) {
                    return self.event(Event::SkipForward { from: self.pos, to: first.start() });
                }
                return match after {
                    Some(n) if n.session != seg.session => {
                        self.event(Event::Reset { from: self.pos, to: n.start() })
                    }
                    Some(n) => self.event(Event::SkipForward { from: self.pos, to: n.start() }),
                    None => Ok(None),
                };
            };
            let storage = &self.shared.storage;
            let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
            if self.header_ok != Some(seg) {
                let mut head = [0u8; SEGMENT_HEADER_LEN];
                match read_exact_at(storage, seg, 0, &mut head) {
                    Ok(()) if matches!(SegmentHeader::decode(&head), Ok(h) if h.segment == seg) => {
                        self.header_ok = Some(seg);
                    }
                    Err(e) if gone(&e) && gone_retries < 2 => {
                        gone_retries += 1;
                        continue;
                    }
                    Err(e) if e.kind() != io::ErrorKind::UnexpectedEof => {
                        return Err(Error::Io { op: "read", segment: seg, source: e });
                    }
                    _ => return self.event(Event::Badtail { at: self.pos, next: next_roll_start(seg) }),
                }
            }
            let off = self.pos.offset();
            if off < meta.visible {
                match self.window.record(storage, seg, off, meta.visible) {
                    Ok(Ok(v)) => {
                        let next = Position::after(seg, off + v.raw.len() as u64);
                        let entry = Entry::from_view(self.pos, next, &v);
                        self.pos = next;
                        return Ok(Some(Item::Entry(entry)));
                    }
                    Ok(Err(_)) => {
                        return self.event(Event::Badtail { at: self.pos, next: next_roll_start(seg) });
                    }
                    Err(e) if gone(&e) && gone_retries < 2 => {
                        gone_retries += 1;
                        continue;
                    }
                    Err(e) => return Err(Error::Io { op: "read", segment: seg, source: e }),
                }
            }
            if !meta.rolled {
                return Ok(None);
            }
            match after {
                None => return Ok(None),
                Some(n) if n.session != seg.session => {
                    return self.event(Event::Reset { from: self.pos, to: n.start() });
                }
                Some(n) if n.roll != seg.roll + 1 => {
                    return self.event(Event::SkipForward { from: self.pos, to: n.start() });
                }
                Some(n) => self.pos = n.start(),
            }
        }
    }
}
