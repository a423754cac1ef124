//! Log shipping over kdb+ IPC: how a publisher's local log reaches the node and how the node's merged log reaches
//! a subscriber's local copy (rt.qpk's `push_client`/`pull_client` replicators, spoken on one kdb+ handle).
//! Sans-IO: messages in, messages out.
//!
//! # Publisher → node
//!
//! ```q
//! h(`.rt.ship.hello;`trades;`pub_a.host1.trades;17592186044416) / sync: where to resume; the last argument
//!                                                        / (optional) is the first position of the publisher's session
//! 17592186044516                                         / the last local position the node holds (0N: none)
//! neg[h](`.rt.ship.recs;`trades;`pub_a.host1.trades;0x…) / async: a batch of local records
//! / the node, once the batch is durable in its merged log:
//! (`.rt.ship.ack;`trades;`pub_a.host1.trades;17592186044600)   / the last local position it now holds
//! ```
//!
//! The key is the publisher's directory name (`$publisher_id.$hostname.$stream`, or `….$dedup_id.dedup`), unique
//! per publisher and stable across its restarts. A batch ([`Batch`]) is records of the publisher's local log
//! exactly as they are stored there ([`qmesh_log::Entry::raw`]), each behind its local position. The node appends
//! each record's header and payload to the merged log with a [`qmesh_log::Source`] block naming the key and the
//! local position, and drops a record whose local position is at or below the last one it holds for the key — so
//! after any disconnect or crash the publisher resends from the node's answer and nothing acknowledged is lost or
//! duplicated. A publisher's local positions only grow (a new session per start), which is what makes one mark per
//! key enough.
//!
//! One connection at a time ships a key. A hello that names its session is refused while another open connection
//! ships the same key from the same or a newer session (two publishers with one id — the same `publisher_id` on
//! one host with another `path` — would otherwise interleave their positions under one mark, and the node would
//! drop one's records as already held); a newer session (the publisher restarted while the node still holds its
//! old connection) takes over and the old connection is closed.
//!
//! ## Rebase: a publisher whose local log was wiped or replaced
//!
//! ```q
//! h(`.rt.ship.rebase;`trades;`pub_a.host1.trades;17592186044600;17592186044416) / sync: forget the mark
//! 0N                                                     / the mark is forgotten, durably: ship everything
//! ```
//!
//! A publisher whose directory was deleted or replaced (an operator wiped it, a new disk, a container without a
//! volume) starts again at a low session, so its new local positions may be at or below the node's mark for its key:
//! both sides would take them for records the node holds, and they would be lost. A normal restart always starts a
//! session above every position the node can hold for the key (a log that lost only its unsynced tail under a
//! weaker durability too: its new session is still above the lost records), so the publisher tells this case at the
//! handshake ([`resume`]): the node's mark is at or beyond the start of the publisher's current session, and beyond
//! anything it shipped in this run. It then sends `.rt.ship.rebase` with the mark it was told and its session's
//! first position, and ships its whole local log once the node answers `0N`. The node, on its writer thread (after
//! the batches queued before it), refuses the request (`'bad request`: the publisher says hello again) unless the
//! key's mark is exactly the one the publisher was told (nothing was shipped for the key in between) and at or
//! beyond that session start; otherwise it forgets the mark, stores its watermarks file at once (so that a
//! restart, which raises marks only from the records after the file's position, does not raise it back from the old
//! records), logs a warning and counts it. Records the wiped log had not shipped are lost with it; a log restored
//! from an older copy of itself is shipped whole again (its old records are duplicated); a log wiped and then
//! restarted so often, away from the node, that its session passes the old mark is not seen (its records at or
//! below the mark are skipped).
//!
//! # Node → subscriber
//!
//! ```q
//! h(`.rt.ship.pull;`trades;pos)         / sync: ship the merged log from pos (::, `latest or a position)
//! 17592186044416                        / where shipping starts: the start of pos's segment
//! / then, as the log grows:
//! (`.rt.ship.raw;`trades;first;0x…)     / async: first unarchived position on the node, then a batch of records
//! ```
//!
//! `pos` must be a restart point, as for `.rt.sub`: past the latest position or inside a record it is refused
//! (`'bad request: position … is not the start of a record …`).
//!
//! Shipping starts at the start of the segment holding `pos`, so the subscriber's copy holds whole segments and
//! every record lands at the node's position, byte for byte ([`qmesh_log::Log::append_raw`],
//! [`qmesh_log::Log::continue_at`] when the next record starts another segment). `first` lets a subscriber that
//! follows the node's archiver drop its own copies of archived segments.
//!
//! A corrupt record in the node's log cannot be shipped: where the node's reader reports `badtail` (the record at
//! `at` is corrupt, the rest of its segment is skipped, reading continues at `next`, the start of the next roll),
//! the node pushes, after the records before it and before those after it:
//!
//! ```q
//! (`.rt.ship.badtail;`trades;at;next)   / async: the record at `at` is corrupt; continue at `next`
//! ```
//!
//! and the copy records the same event ([`qmesh_log::Log::mark_badtail`]: a mark at `at` that its readers report
//! as `badtail` with the same two positions, then the next roll), so a subscriber reading its copy sees the
//! event a direct `.rt.sub` subscriber sees. A copy pulled after the damage gets the same push when the node's
//! reader crosses the damage again; a copy that holds the mark pulls from after it and is not sent it twice.
//!
//! When the damage lies before the pull's position in the same segment, the records from that position on are
//! readable (a direct `.rt.sub` from there reads them), so the node reopens its reader there and `next` is that
//! position, in the same segment: a copy that holds the segment up to there already takes the records that follow;
//! a fresh copy marks `at` and fills the gap up to `next` ([`qmesh_log::Log::fill_badtail`]), so its readers see
//! what the node's see: `badtail` at `at` reading from before it, the records reading from `next`.

use bytes::{BufMut, Bytes, BytesMut};
use qmesh_codec::{Atom, K, Message, RawObject, types};
use qmesh_log::format::{MAX_RECORD_LEN, RECORD_PREFIX_LEN, record_len};

use crate::request::{From, RequestError};

/// `` h(`.rt.ship.hello;`stream;`key;session) ``: a publisher's handshake (`session` optional); answers the last local
/// position held (`0N`: none).
pub const HELLO: &str = ".rt.ship.hello";
/// `` neg[h](`.rt.ship.recs;`stream;`key;bytes) ``: a batch of a publisher's local records.
pub const RECS: &str = ".rt.ship.recs";
/// `` (`.rt.ship.ack;`stream;`key;pos) ``: pushed to a publisher once its records up to local `pos` are durable.
pub const ACK: &str = ".rt.ship.ack";
/// `` h(`.rt.ship.pull;`stream;pos) ``: a subscriber's copy request; answers where shipping starts.
pub const PULL: &str = ".rt.ship.pull";
/// `` (`.rt.ship.raw;`stream;first;bytes) ``: pushed to a subscriber: merged-log records.
pub const RAW: &str = ".rt.ship.raw";
/// `` (`.rt.ship.badtail;`stream;at;next) ``: pushed to a subscriber: the node's record at `at` is corrupt, the
/// copy continues at `next` (the next roll's start).
pub const BADTAIL: &str = ".rt.ship.badtail";
/// `` h(`.rt.ship.rebase;`stream;`key;mark;session) ``: a publisher whose local log was wiped asks the node to
/// forget its mark; answers `0N` (see [Rebase](self#rebase-a-publisher-whose-local-log-was-wiped-or-replaced)).
pub const REBASE: &str = ".rt.ship.rebase";

/// Bytes of records a shipper puts in one batch before sending it (a single larger record still goes alone).
/// Large enough that one batch's fsync is shared by thousands of 100-byte messages, small enough to bound the
/// memory each shipping connection holds.
pub const BATCH_BYTES: usize = 1 << 20;

/// Bytes before each record in a batch: its position (u64, little-endian).
pub const POS_LEN: usize = 8;

/// Longest publisher key, in bytes (it is stored in every merged record's source block).
pub const MAX_KEY_BYTES: usize = qmesh_log::MAX_SYMBOL_LEN;

/// A shipping request the node receives.
#[derive(Debug, Clone, PartialEq)]
pub enum ShipRequest {
    /// A publisher's handshake. `session` (optional third argument) is the first position of the publisher's
    /// current session: the node lets one connection at a time ship a key, and a newer session (a restarted
    /// publisher) takes over from an older one, while an older or equal one is refused.
    Hello { stream: String, key: String, session: Option<u64> },
    /// A publisher's batch.
    Recs { stream: String, key: String, batch: Bytes },
    /// A subscriber's copy request.
    Pull { stream: String, from: From },
    /// A publisher whose local log was wiped: forget `key`'s mark, which must be `mark` and at or beyond `session`
    /// (the first position of the publisher's current session).
    Rebase { stream: String, key: String, mark: u64, session: u64 },
}

/// What the node pushes back on a shipping connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ShipPush {
    /// Records of the publisher `key` are durable up to local position `pos`.
    Ack { stream: String, key: String, pos: u64 },
    /// Merged-log records for a subscriber's copy; `first` is the node's first unarchived position.
    Raw { stream: String, first: u64, batch: Bytes },
    /// The node's reader reported `badtail`: the record at `at` is corrupt, shipping continues at `next` (the next
    /// roll's start, or the pull's position when that lies after `at` in the same segment).
    Badtail { stream: String, at: u64, next: u64 },
}

fn bad(s: impl Into<String>) -> RequestError {
    RequestError::BadRequest(s.into())
}

fn sym_of(raw: &RawObject) -> Option<&[u8]> {
    let b = raw.bytes();
    if b.first().map(|&t| t as i8) != Some(-types::SYMBOL) {
        return None;
    }
    let n = b[1..].iter().position(|&c| c == 0)?;
    Some(&b[1..1 + n])
}

fn name(raw: &RawObject, what: &str, max: usize) -> Result<String, RequestError> {
    let s = sym_of(raw).ok_or_else(|| bad(format!("{what} is a symbol")))?;
    if s.is_empty() || s.len() > max {
        return Err(bad(format!("{what} is 1 to {max} bytes")));
    }
    Ok(String::from_utf8_lossy(s).into_owned())
}

/// The bytes of a byte vector (`4h`) object, shared, not copied.
fn byte_vector(raw: &RawObject) -> Option<Bytes> {
    (raw.ty() == i16::from(types::BYTE) && raw.is_little_endian()).then(|| raw.bytes().slice(6..))
}

fn long_of(raw: &RawObject) -> Option<i64> {
    match raw.decode().ok()? {
        K::Atom(Atom::Long(j)) => Some(j),
        _ => None,
    }
}

/// The function name a message calls, if it is a list led by a symbol.
fn function(msg: &Message) -> Option<(Vec<u8>, Vec<RawObject>)> {
    let items = msg.list_items().ok()?;
    let f = sym_of(items.first()?)?.to_vec();
    Some((f, items))
}

impl ShipRequest {
    /// Parses a shipping request; `None` when `msg` is not one (another protocol's request).
    pub fn parse(msg: &Message) -> Option<Result<ShipRequest, RequestError>> {
        let (f, items) = function(msg)?;
        let stream_max = crate::limits::MAX_STREAM_NAME_BYTES;
        let args = &items[1..];
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(bad(format!("{}: takes {n} arguments, got {}", String::from_utf8_lossy(&f), args.len())))
            }
        };
        let r = match f.as_slice() {
            b".rt.ship.hello" => (if args.len() == 3 { Ok(()) } else { arity(2) }).and_then(|()| {
                let session = match args.get(2).map(RawObject::decode) {
                    None => None,
                    Some(Ok(K::Atom(Atom::Long(p)))) if p >= 0 => Some(p as u64),
                    Some(_) => return Err(bad(".rt.ship.hello: the session is a position (a long)")),
                };
                Ok(ShipRequest::Hello {
                    stream: name(&args[0], "the stream", stream_max)?,
                    key: name(&args[1], "the publisher key", MAX_KEY_BYTES)?,
                    session,
                })
            }),
            b".rt.ship.recs" => arity(3).and_then(|()| {
                Ok(ShipRequest::Recs {
                    stream: name(&args[0], "the stream", stream_max)?,
                    key: name(&args[1], "the publisher key", MAX_KEY_BYTES)?,
                    batch: byte_vector(&args[2])
                        .ok_or_else(|| bad(".rt.ship.recs: the batch is a byte vector"))?,
                })
            }),
            b".rt.ship.pull" => arity(2).and_then(|()| {
                let from = match args[1].decode() {
                    Ok(K::GenericNull) => From::Start,
                    Ok(K::Atom(Atom::Symbol(s))) if s.as_ref() == b"latest" => From::Latest,
                    Ok(K::Atom(Atom::Long(p))) if p >= 0 => From::Position(p),
                    _ => return Err(bad(".rt.ship.pull: pos is ::, `latest or a position")),
                };
                Ok(ShipRequest::Pull { stream: name(&args[0], "the stream", stream_max)?, from })
            }),
            b".rt.ship.rebase" => arity(4).and_then(|()| {
                let pos = |raw: &RawObject, what: &str| {
                    long_of(raw).and_then(|j| u64::try_from(j).ok()).ok_or_else(|| {
                        bad(format!(".rt.ship.rebase: {what} is a position (a non-negative long)"))
                    })
                };
                Ok(ShipRequest::Rebase {
                    stream: name(&args[0], "the stream", stream_max)?,
                    key: name(&args[1], "the publisher key", MAX_KEY_BYTES)?,
                    mark: pos(&args[2], "the mark")?,
                    session: pos(&args[3], "the session start")?,
                })
            }),
            _ => return None,
        };
        Some(r)
    }

    /// The message a client sends for this request (`Recs` keeps the batch as one byte vector).
    pub fn to_k(&self) -> K {
        match self {
            ShipRequest::Hello { stream, key, session } => {
                let mut items = vec![K::sym(HELLO), K::sym(stream), K::sym(key)];
                items.extend(session.map(|p| K::long(p as i64)));
                K::list(items)
            }
            ShipRequest::Recs { stream, key, batch } => K::list(vec![
                K::sym(RECS),
                K::sym(stream),
                K::sym(key),
                K::Vector(qmesh_codec::Attr::None, qmesh_codec::Vector::Byte(batch.to_vec())),
            ]),
            ShipRequest::Pull { stream, from } => K::list(vec![
                K::sym(PULL),
                K::sym(stream),
                match from {
                    From::Start => K::GenericNull,
                    From::Latest => K::sym("latest"),
                    From::Position(p) => K::long(*p),
                },
            ]),
            ShipRequest::Rebase { stream, key, mark, session } => K::list(vec![
                K::sym(REBASE),
                K::sym(stream),
                K::sym(key),
                K::long(*mark as i64),
                K::long(*session as i64),
            ]),
        }
    }
}

fn put_sym(b: &mut BytesMut, s: &str) {
    b.put_i8(-types::SYMBOL);
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// `(sym;sym;x;bytes)` as one encoded object, the batch copied once behind the list header.
fn four(f: &str, a: &str, third: impl FnOnce(&mut BytesMut), batch: &[u8]) -> RawObject {
    let mut b = BytesMut::with_capacity(6 + f.len() + a.len() + 4 + 300 + 6 + batch.len());
    b.put_i8(types::LIST);
    b.put_u8(0);
    b.put_i32_le(4);
    put_sym(&mut b, f);
    put_sym(&mut b, a);
    third(&mut b);
    b.put_i8(types::BYTE);
    b.put_u8(0);
    b.put_i32_le(batch.len() as i32);
    b.put_slice(batch);
    RawObject::new(b.freeze(), true)
}

/// A publisher's batch message `` (`.rt.ship.recs;`stream;`key;bytes) `` as one encoded object (send it with
/// `send_raw`, no re-encoding).
pub fn recs_object(stream: &str, key: &str, batch: &[u8]) -> RawObject {
    four(RECS, stream, |b| put_sym(b, key), batch)
}

/// The node's push `` (`.rt.ship.raw;`stream;first;bytes) `` as one encoded object.
pub fn raw_object(stream: &str, first: u64, batch: &[u8]) -> RawObject {
    four(
        RAW,
        stream,
        |b| {
            b.put_i8(-types::LONG);
            b.put_i64_le(first as i64);
        },
        batch,
    )
}

/// The node's acknowledgement `` (`.rt.ship.ack;`stream;`key;pos) ``.
pub fn ack_k(stream: &str, key: &str, pos: u64) -> K {
    K::list(vec![K::sym(ACK), K::sym(stream), K::sym(key), K::long(pos as i64)])
}

/// The node's push `` (`.rt.ship.badtail;`stream;at;next) ``.
pub fn badtail_k(stream: &str, at: u64, next: u64) -> K {
    K::list(vec![K::sym(BADTAIL), K::sym(stream), K::long(at as i64), K::long(next as i64)])
}

impl ShipPush {
    /// Parses a push from the node; `None` when `msg` is not one.
    pub fn parse(msg: &Message) -> Option<Result<ShipPush, RequestError>> {
        let (f, items) = function(msg)?;
        let args = &items[1..];
        let r = match f.as_slice() {
            b".rt.ship.ack" if args.len() == 3 => (|| {
                Ok(ShipPush::Ack {
                    stream: name(&args[0], "the stream", usize::MAX)?,
                    key: name(&args[1], "the key", usize::MAX)?,
                    pos: long_of(&args[2]).ok_or_else(|| bad(".rt.ship.ack: pos is a long"))? as u64,
                })
            })(),
            b".rt.ship.raw" if args.len() == 3 => (|| {
                Ok(ShipPush::Raw {
                    stream: name(&args[0], "the stream", usize::MAX)?,
                    first: long_of(&args[1]).ok_or_else(|| bad(".rt.ship.raw: first is a long"))? as u64,
                    batch: byte_vector(&args[2]).ok_or_else(|| bad(".rt.ship.raw: a byte vector"))?,
                })
            })(),
            b".rt.ship.badtail" if args.len() == 3 => (|| {
                Ok(ShipPush::Badtail {
                    stream: name(&args[0], "the stream", usize::MAX)?,
                    at: long_of(&args[1]).ok_or_else(|| bad(".rt.ship.badtail: at is a long"))? as u64,
                    next: long_of(&args[2]).ok_or_else(|| bad(".rt.ship.badtail: next is a long"))? as u64,
                })
            })(),
            b".rt.ship.ack" | b".rt.ship.raw" | b".rt.ship.badtail" => {
                Err(bad("a shipping push has 4 items"))
            }
            _ => return None,
        };
        Some(r)
    }
}

/// Why a batch is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch cut inside a record at byte {0}")]
    Truncated(usize),
    #[error("record at byte {at}: {why}")]
    Record { at: usize, why: String },
}

/// A batch being built: records behind their positions, back to back.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    count: usize,
    last: Option<u64>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a whole record (as [`qmesh_log::Entry::raw`] gives it) at position `pos`.
    pub fn push(&mut self, pos: u64, raw: &[u8]) {
        self.buf.extend_from_slice(&pos.to_le_bytes());
        self.buf.extend_from_slice(raw);
        self.count += 1;
        self.last = Some(pos);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Records so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The position of the last record added.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// The bytes, leaving the batch empty.
    pub fn take(&mut self) -> Vec<u8> {
        self.count = 0;
        self.last = None;
        std::mem::take(&mut self.buf)
    }
}

/// The records of a batch, `(position, raw record)`, split by each record's own length field (checked against its
/// complement and [`MAX_RECORD_LEN`]); the records' checksums are checked by whoever appends them.
pub fn records(batch: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), BatchError>> {
    let mut at = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= batch.len() {
            return None;
        }
        let start = at;
        let fail = |e| Some(Err(e));
        if batch.len() - at < POS_LEN + RECORD_PREFIX_LEN {
            failed = true;
            return fail(BatchError::Truncated(start));
        }
        let pos = u64::from_le_bytes(batch[at..at + POS_LEN].try_into().unwrap_or_default());
        let rec = &batch[at + POS_LEN..];
        let len = match record_len(rec) {
            Ok(n) if n <= MAX_RECORD_LEN => n,
            Ok(n) => {
                failed = true;
                return fail(BatchError::Record { at: start, why: format!("length {n}") });
            }
            Err(e) => {
                failed = true;
                return fail(BatchError::Record { at: start, why: e.to_string() });
            }
        };
        if rec.len() < len {
            failed = true;
            return fail(BatchError::Truncated(start));
        }
        at += POS_LEN + len;
        Some(Ok((pos, &rec[..len])))
    })
}

/// What a publisher does with the node's answer to its handshake ([`resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Ship the records after the node's mark (everything when `None`).
    After(Option<u64>),
    /// The mark is not one of this log's: ask the node to forget it ([`REBASE`]), then ship everything.
    Rebase {
        /// The mark the node answered, which the rebase names.
        mark: u64,
    },
}

/// Decides, from the node's mark for the publisher's key (`.rt.ship.hello`'s answer), where shipping resumes.
/// `session` is the first position of the publisher's current session (every start begins a new one, above
/// every position of its earlier sessions); `sent` is the last local position it shipped in this run (`None`:
/// nothing yet). A mark at or beyond `session` and beyond `sent` names a position this log never shipped: the log
/// was wiped or replaced, and the publisher rebases (see [Rebase](self#rebase-a-publisher-whose-local-log-was-wiped-or-replaced)).
pub fn resume(mark: Option<u64>, session: u64, sent: Option<u64>) -> Resume {
    match mark {
        Some(m) if m >= session && sent.is_none_or(|s| m > s) => Resume::Rebase { mark: m },
        m => Resume::After(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{EncodeOptions, MsgType};
    use qmesh_log::RecordHeader;
    use qmesh_log::format::encode_record;

    fn msg_of(obj: RawObject) -> Message {
        let k = obj.decode().expect("decodes");
        let frame = Message::encode(MsgType::Async, &k, EncodeOptions::default()).expect("encode");
        Message::from_frame(frame, u64::MAX).expect("frame")
    }

    fn rec(n: u8) -> Vec<u8> {
        encode_record(&RecordHeader { on: b"p", ts: 1, id: i64::from(n), to: 0, dedup: None }, &[n; 10])
    }

    #[test]
    fn batches_split_back_into_records() {
        let mut b = Batch::new();
        b.push(7, &rec(1));
        b.push(99, &rec(2));
        assert_eq!((b.count(), b.last()), (2, Some(99)));
        let bytes = b.take();
        assert!(b.is_empty());
        let got: Vec<_> = records(&bytes).collect::<Result<_, _>>().expect("whole");
        assert_eq!(got, vec![(7, &rec(1)[..]), (99, &rec(2)[..])]);
        for cut in 1..bytes.len() {
            let r: Result<Vec<_>, _> = records(&bytes[..cut]).collect();
            assert!(r.is_err() || cut == 8 + rec(1).len(), "cut {cut}");
        }
        let mut bad = bytes.clone();
        bad[12] ^= 0xff; // a record's length
        assert!(records(&bad).any(|r| r.is_err()));
    }

    #[test]
    fn requests_and_pushes_round_trip() {
        let recs = recs_object("s", "a.h.s", b"\x01\x02");
        let m = msg_of(recs);
        assert_eq!(
            ShipRequest::parse(&m),
            Some(Ok(ShipRequest::Recs {
                stream: "s".into(),
                key: "a.h.s".into(),
                batch: Bytes::from_static(b"\x01\x02")
            }))
        );
        for r in [
            ShipRequest::Hello { stream: "s".into(), key: "k".into(), session: None },
            ShipRequest::Hello { stream: "s".into(), key: "k".into(), session: Some(1 << 44) },
            ShipRequest::Pull { stream: "s".into(), from: From::Latest },
            ShipRequest::Pull { stream: "s".into(), from: From::Start },
            ShipRequest::Pull { stream: "s".into(), from: From::Position(5) },
        ] {
            let frame = Message::encode(MsgType::Sync, &r.to_k(), EncodeOptions::default()).expect("encode");
            let m = Message::from_frame(frame, u64::MAX).expect("frame");
            assert_eq!(ShipRequest::parse(&m), Some(Ok(r)));
        }
        let m = msg_of(raw_object("s", 42, b"xyz"));
        assert_eq!(
            ShipPush::parse(&m),
            Some(Ok(ShipPush::Raw { stream: "s".into(), first: 42, batch: Bytes::from_static(b"xyz") }))
        );
        let frame =
            Message::encode(MsgType::Async, &ack_k("s", "k", 9), EncodeOptions::default()).expect("e");
        let m = Message::from_frame(frame, u64::MAX).expect("frame");
        assert_eq!(
            ShipPush::parse(&m),
            Some(Ok(ShipPush::Ack { stream: "s".into(), key: "k".into(), pos: 9 }))
        );
        let frame = Message::encode(MsgType::Async, &badtail_k("s", 7, 1 << 30), EncodeOptions::default())
            .expect("e");
        let m = Message::from_frame(frame, u64::MAX).expect("frame");
        assert_eq!(
            ShipPush::parse(&m),
            Some(Ok(ShipPush::Badtail { stream: "s".into(), at: 7, next: 1 << 30 }))
        );
        let short = K::list(vec![K::sym(BADTAIL), K::sym("s"), K::long(7)]);
        let frame = Message::encode(MsgType::Async, &short, EncodeOptions::default()).expect("e");
        let m = Message::from_frame(frame, u64::MAX).expect("frame");
        assert!(matches!(ShipPush::parse(&m), Some(Err(_))));
        // not ours: another protocol's request
        let frame = Message::encode(
            MsgType::Sync,
            &K::list(vec![K::sym(".rt.pub"), K::sym("s"), K::long(1)]),
            EncodeOptions::default(),
        )
        .expect("encode");
        assert_eq!(ShipRequest::parse(&Message::from_frame(frame, u64::MAX).expect("f")), None);
    }

    #[test]
    fn rebase_round_trips_and_refuses_bad_positions() {
        let r = ShipRequest::Rebase {
            stream: "s".into(),
            key: "a.h.s".into(),
            mark: (1 << 44) + 99,
            session: 1 << 44,
        };
        let frame = Message::encode(MsgType::Sync, &r.to_k(), EncodeOptions::default()).expect("encode");
        let m = Message::from_frame(frame, u64::MAX).expect("frame");
        assert_eq!(ShipRequest::parse(&m), Some(Ok(r)));
        for bad in [
            vec![K::sym(REBASE), K::sym("s"), K::sym("k"), K::long(-1), K::long(0)],
            vec![K::sym(REBASE), K::sym("s"), K::sym("k"), K::long(5), K::Atom(Atom::Int(0))],
            vec![K::sym(REBASE), K::sym("s"), K::sym("k"), K::long(5)],
        ] {
            let frame = Message::encode(MsgType::Sync, &K::list(bad), EncodeOptions::default()).expect("e");
            let m = Message::from_frame(frame, u64::MAX).expect("frame");
            assert!(matches!(ShipRequest::parse(&m), Some(Err(_))));
        }
    }

    #[test]
    fn a_mark_this_log_never_shipped_is_rebased() {
        let session = |n: u64| n << 44;
        // a first start, or a node that holds nothing of the key
        assert_eq!(resume(None, session(1), None), Resume::After(None));
        // a normal restart: every position the node holds is below the new session
        assert_eq!(resume(Some(session(3) + 500), session(4), None), Resume::After(Some(session(3) + 500)));
        // a log that lost its unsynced tail still starts above what the node holds
        assert_eq!(resume(Some(session(2) + 9000), session(3), None), Resume::After(Some(session(2) + 9000)));
        // a reconnect in the same run: the node holds what this run shipped
        assert_eq!(
            resume(Some(session(4) + 80), session(4), Some(session(4) + 160)),
            Resume::After(Some(session(4) + 80))
        );
        assert_eq!(
            resume(Some(session(4) + 160), session(4), Some(session(4) + 160)),
            Resume::After(Some(session(4) + 160))
        );
        // a wiped log starts again at session 1, at or below the old mark
        assert_eq!(
            resume(Some(session(1) + 4000), session(1), None),
            Resume::Rebase { mark: session(1) + 4000 }
        );
        assert_eq!(resume(Some(session(1)), session(1), None), Resume::Rebase { mark: session(1) });
        assert_eq!(resume(Some(session(6)), session(1), None), Resume::Rebase { mark: session(6) });
        // beyond anything this run shipped (its first connection ended before the rebase was answered)
        assert_eq!(
            resume(Some(session(1) + 4000), session(1), Some(session(1) + 80)),
            Resume::Rebase { mark: session(1) + 4000 }
        );
    }
}
