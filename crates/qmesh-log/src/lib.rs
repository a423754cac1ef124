//! The stream's segment log: one code for the RT node's merged log, a publisher's local log and a subscriber's
//! local copy. No sockets, no async: `std` files (or memory) only.
//!
//! - **Records** carry a header (origin `on`, timestamp `ts`, `id`, reserved `to`, optional `dedup` key) and the
//!   payload — the kdb+ message body exactly as the publisher serialized it, never re-encoded — under a CRC-32C
//!   checksum. Layout: [`format`](mod@format) (byte diagrams next to the offsets).
//! - **Segments** `log.SSSSSSS.RRRRR` roll at [`LogOptions::segment_size`] (1 GiB by default); each starts with a
//!   versioned header naming its session and roll.
//! - **Positions** are RT's `session << 44 | roll << 30 | offset` ([`Position`]); any position handed out is a
//!   valid restart point, and positions depend only on the records, never on which node wrote them.
//! - **Writing**: [`Log::append`] buffers, [`Log::sync`] writes and `fdatasync`s ([`Durability::Always`]) and makes
//!   the records visible — many appends, one sync, then acknowledge them all (group commit). Threads sharing a
//!   log behind a lock split it ([`Log::begin_sync`], [`SyncPoint::fsync`] unlocked, [`Log::finish_sync`]) so
//!   appends go on during the fsync.
//!   [`Log::new_session`] is a hard reset. [`Log::append_raw`] takes records shipped from another log;
//!   [`Log::continue_at`] and [`Log::mark_badtail`] (or [`Log::fill_badtail`]) let such a copy mirror its
//!   source's segment boundaries and its `badtail`s (a corrupt record in the source), so the copy's readers see
//!   what the source's see.
//! - **Recovery**: [`Log::open`] checks the last segment record by record and cuts a torn tail back to the last
//!   whole record ([`RecoveryReport`]).
//! - **Reading**: [`Reader`] (from [`LogHandle::reader`]) yields [`Item::Entry`] and [`Item::Event`] (`badtail`,
//!   `skip-forward`, `reset`), tails the writer across rolls, and replays identically from any earlier position.
//!   A start position where no record starts (inside a record: a typo) is refused
//!   ([`Error::NotARecordStart`], [`LogHandle::check_position`]), never read as a corrupt record.
//! - **Archiving**: [`Log::archive`] with an [`ArchivePolicy`] (age by record `ts`, total bytes, disk use %), and
//!   [`Log::prune`] for a lead subscriber. Only rolled segments are removed.
//! - **Storage**: everything goes through the [`Storage`] trait: [`FileStorage`] and [`MemStorage`] (which can
//!   [simulate a crash](MemStorage::crash)) pass one conformance suite (`tests/conformance.rs`).
//!
//! ```
//! use qmesh_log::{Item, Log, LogOptions, MemStorage, RecordHeader, Start};
//!
//! let (mut log, _report) = Log::open_with(MemStorage::new(), LogOptions::default())?;
//! let mut reader = log.reader(Start::Oldest)?;
//! let header = RecordHeader { on: b"feed", ts: 0, id: 1, to: 0, dedup: None };
//! let pos = log.append(&header, b"\x00\x00\x00\x00")?; // the kdb+ message body, as published
//! log.sync()?; // durable and visible: acknowledge now
//! match reader.next()? {
//!     Some(Item::Entry(e)) => assert_eq!((e.position, e.payload()), (pos, &b"\x00\x00\x00\x00"[..])),
//!     other => panic!("{other:?}"),
//! }
//! assert!(reader.next()?.is_none()); // tailing: nothing more for now
//! # Ok::<(), qmesh_log::Error>(())
//! ```

mod archive;
mod error;
pub mod format;
mod log;
mod position;
mod reader;
mod storage;

pub use archive::{ArchivePolicy, ArchiveReport};
pub use error::{Error, Result};
pub use format::{MAX_PAYLOAD, MAX_SYMBOL_LEN, NULL_TIMESTAMP, RecordHeader, Source};
pub use log::{
    Cut, DEFAULT_SEGMENT_SIZE, Durability, Log, LogHandle, LogOptions, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
    RecoveryReport, Sealed, SegmentInfo, SyncPoint, WRITE_BUFFER,
};
pub use position::{MAX_OFFSET, MAX_ROLL, MAX_SESSION, Position, ROLL_SHIFT, SESSION_SHIFT, SegmentId};
pub use reader::{Entry, Event, Item, READ_CHUNK, Reader, Start};
pub use storage::{DiskUsage, FileStorage, LOCK_FILE, MemStorage, Storage};
