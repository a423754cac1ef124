//! The log's errors.

use std::io;

use crate::format::DecodeError;
use crate::position::{Position, SegmentId};

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage failed (`op` says what the log was doing). After a failed `append`/`sync` every append since the
    /// last successful [`Log::sync`](crate::Log::sync) is void: it was cut from the log and its position will be
    /// handed out again.
    #[error("{op} {segment}: {source}")]
    Io {
        /// What the log was doing (`append`, `sync`, `create`, `read`, …).
        op: &'static str,
        /// The segment involved.
        segment: SegmentId,
        /// The storage's error.
        #[source]
        source: io::Error,
    },
    /// A payload above [`MAX_PAYLOAD`](crate::MAX_PAYLOAD) bytes (rt.qpk: `'message too large`); nothing was
    /// written.
    #[error("message too large: {len} bytes (limit {max})")]
    PayloadTooLarge {
        /// The payload's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An `on` or `dedup` symbol above [`MAX_SYMBOL_LEN`](crate::MAX_SYMBOL_LEN) bytes; nothing was written.
    #[error("{field} symbol too long: {len} bytes (limit {max})")]
    SymbolTooLong {
        /// `on` or `dedup`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A shipped record ([`Log::append_raw`](crate::Log::append_raw)) is not one whole valid record.
    #[error("bad shipped record: {0}")]
    BadRecord(DecodeError),
    /// The session (20 bits) or roll (14 bits) space is used up: start a new session, or the log is full.
    #[error("position space exhausted after segment {0}")]
    PositionSpaceExhausted(SegmentId),
    /// A reader was asked to start after the latest position: the position was not handed out by this log (or the
    /// log lost it, e.g. its directory was replaced).
    #[error("position {pos} is ahead of the log's latest position {latest}")]
    PositionAhead {
        /// The position asked for.
        pos: Position,
        /// The log's latest position.
        latest: Position,
    },
    /// A reader was asked to start at a position where no record starts: a byte inside a record, past the end of
    /// a rolled segment, or inside a segment that does not exist between segments that do. No such position is
    /// ever handed out (a typo, or arithmetic on an opaque position); reading there would take a record's inner
    /// bytes for a corrupt record and skip the rest of its segment (`badtail`). `inside` is the record the position
    /// falls in, when there is one; `next` the first restart point after the position.
    #[error(
        "position {pos} is not the start of a record{}; the next record boundary is {next}",
        inside_note(.inside)
    )]
    NotARecordStart {
        /// The position asked for.
        pos: Position,
        /// The record it falls inside, if any.
        inside: Option<Position>,
        /// The first valid restart point after it.
        next: Position,
    },
    /// [`Log::mark_badtail`](crate::Log::mark_badtail) was asked to mark a position other than where the next record
    /// goes: a copy must hold every record before the mark, and the mark goes right after them.
    #[error("badtail mark at {at}: the log's end is {end}")]
    MarkNotAtEnd {
        /// The position to mark.
        at: Position,
        /// Where the log's next record goes.
        end: Position,
    },
    /// An earlier storage failure left the log in a state it could not repair; reopen it.
    #[error("log unusable after an earlier failure: {0}")]
    Poisoned(String),
    /// The log directory could not be opened or locked (another process holds it: `WouldBlock`).
    #[error("log directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Bad [`LogOptions`](crate::LogOptions).
    #[error("invalid log options: {0}")]
    Options(String),
}

fn inside_note(inside: &Option<Position>) -> String {
    inside.map(|r| format!(" (it falls inside the record at {r})")).unwrap_or_default()
}

/// The log's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
