//! Every limit of the stream protocol, with its reason and unit.

/// Largest payload a message may have, in bytes of its kdb+ serialization:
/// RT's documented ceiling ("the upper limit is 1073741783 bytes"). A position
/// locates a record in a segment by a 30-bit byte offset, so a record (its
/// header and payload) must fit in one 1 GiB segment. Larger messages fail
/// with `'message too large` and nothing is written.
pub const MAX_PAYLOAD_BYTES: u64 = 1_073_741_783;

/// Bytes a request may carry around its payload (the function name, the
/// stream name, the header dictionary and the list framing): the node's IPC
/// size limit is [`MAX_PAYLOAD_BYTES`] plus this, so a payload at the limit
/// is still read and the exact check is made on its own length.
pub const MAX_ENVELOPE_BYTES: u64 = 64 * 1024;

/// Longest stream name, in bytes (it names a directory on disk).
pub const MAX_STREAM_NAME_BYTES: usize = 128;

/// Longest origin (`on`) and dedup key, in bytes: both are stored in every
/// record header.
pub const MAX_HEADER_SYM_BYTES: usize = 255;

/// Longest callback name a subscriber may give (`msg`/`event` options), in bytes.
pub const MAX_CALLBACK_NAME_BYTES: usize = 255;

/// Most symbols a subscription filter may hold.
pub const MAX_FILTER_SYMBOLS: usize = 4096;

/// Most symbol pairs a cached subscriber filter ([`crate::filter::Predicate::cached`]) keeps an answer for. A
/// stream has a handful of functions and tables, so this is never reached in normal use; a stream whose leading
/// symbols are unbounded (an id per message) would otherwise grow the cache without end. When full, the cache is
/// cleared and refilled: every answer can be asked again.
pub const MAX_FILTER_CACHE_PAIRS: usize = 65_536;

/// Longest symbol pair a cached subscriber filter keeps an answer for, in bytes of both names (plus one
/// separator): bounds the cache's memory at about [`MAX_FILTER_CACHE_PAIRS`] times this. Longer pairs are asked
/// every time.
pub const MAX_FILTER_CACHED_SYMBOL_BYTES: usize = 512;
