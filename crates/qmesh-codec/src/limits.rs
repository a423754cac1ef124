//! Every limit the codec enforces, with its reason and unit.
//!
//! The decoder reads untrusted bytes. Each of these is checked *before* the
//! memory it guards is allocated, so a small hostile message can never make
//! the decoder reserve a large buffer.

/// Default refuse-above size for one whole message, header included, in
/// bytes (after decompression). 1 GiB: far above any request or result a
/// gateway should relay in one piece, far below the 1 TB the kdb+ header can
/// express. Callers that need more pass their own `max_len`.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 30;

/// Largest total length the 8-byte header can carry, in bytes: byte 3 holds
/// bits 32..39 of the length (capability 5/6), so 40 bits in all.
pub const MAX_WIRE_LENGTH: u64 = (1 << 40) - 1;

/// Deepest nesting of lists, dictionaries, tables and function arguments the
/// decoder follows, in levels. Decoding recurses once per level; 128 levels
/// keep the stack well under 1 MiB on a 2 MiB tokio worker thread, while q
/// data is rarely nested more than a handful of levels.
pub const MAX_DEPTH: usize = 128;

/// Largest symbol vector region (the names and their NULs), in bytes.
/// [`crate::Symbols`] stores name offsets as `u32`.
pub const MAX_SYMBOL_VECTOR_BYTES: usize = u32::MAX as usize;

/// Messages longer than this (total, header included, in bytes) are
/// compressed only by peers that negotiated capability 5 or 6, as q refuses
/// messages above 2 GiB below that.
pub const MAX_LENGTH_BELOW_CAP5: u64 = (1 << 31) - 1;

/// Largest vector count that fits the 4-byte count field, in elements;
/// longer vectors need capability 6 and the 8-byte count form.
pub const MAX_SHORT_COUNT: u64 = i32::MAX as u64;

/// Messages at or below this size (total, header included, in bytes) are
/// never compressed, as in q.
pub const COMPRESS_MIN_BYTES: usize = 2000;

/// Largest output a compressed stream can produce per input byte: a
/// back-reference of 2 bytes (plus 1/8 of a flag byte) yields up to 257
/// bytes. A compressed message claiming more than this ratio of its own
/// length is rejected before its buffer is allocated.
pub const MAX_DECOMPRESSION_RATIO: u64 = 129;
