//! The on-disk format: segment header and record, drawn here next to the offsets that implement them.
//!
//! All integers are little-endian. Checksums are CRC-32C (Castagnoli).
//!
//! # Segment file `log.SSSSSSS.RRRRR`
//!
//! ```text
//!  0        8       10      12          16          20          24          28          32
//! ┌────────┬───────┬───────┬───────────┬───────────┬───────────┬───────────┬───────────┬──────────────┐
//! │ magic  │version│ flags │ session   │ roll      │ reserved  │ reserved  │ crc32c    │ records …    │
//! │QMESHLOG│ u16=1 │ u16=0 │ u32       │ u32       │ u32 = 0   │ u32 = 0   │ of 0..28  │              │
//! └────────┴───────┴───────┴───────────┴───────────┴───────────┴───────────┴───────────┴──────────────┘
//! ```
//!
//! Records follow back to back, no padding. A position's byte offset counts from byte 32 of the file (the first
//! record is offset 0). The session and roll in the header must match the file name.
//!
//! # Record
//!
//! ```text
//!  0        4        8        12   13    14     15      16       24       32       40
//! ┌────────┬────────┬────────┬────┬─────┬──────┬───────┬────────┬────────┬────────┬─────┬────────┬──────────┐
//! │ crc32c │ len    │ !len   │kind│flags│on_len│ddp_len│ ts     │ id     │ to     │ on  │ dedup  │ payload  │
//! │ of 4.. │ u32    │ u32    │ =1 │     │ u8   │ u8    │ i64    │ i64    │ i64    │     │        │          │
//! └────────┴────────┴────────┴────┴─────┴──────┴───────┴────────┴────────┴────────┴─────┴────────┴──────────┘
//! ```
//!
//! - `crc32c` covers every byte of the record after it (4..len): header, symbols and payload.
//! - `len` is the whole record's length in bytes, prefix included; `!len` is its bitwise complement, so a damaged
//!   length is told apart from a torn (short) write: a record whose `len` and `!len` agree but whose bytes run past
//!   the end of the file was torn; one whose `len` and `!len` disagree is corrupt.
//! - `kind` is 1 (a message). `flags` bit 0 says a dedup key is present (it may be empty); bit 1 says a source
//!   block follows the symbols; other bits are 0.
//! - `on` (origin) and `dedup` are symbols, raw bytes as q holds them, at most [`MAX_SYMBOL_LEN`] bytes each.
//! - the optional **source block** (flag bit 1) says where a shipped record came from: `src_len u8`, the source
//!   key (at most [`MAX_SYMBOL_LEN`] bytes: a publisher's directory name `$publisher_id.$hostname.$stream`) and
//!   `src_pos u64`, the record's position in that publisher's local log ([`Source`]). The node keeps it so that
//!   what it acknowledged to a publisher can be rebuilt from the merged log alone after a crash.
//!
//! ```text
//!  … on │ dedup │ src_len u8 │ source key │ src_pos u64 │ payload
//! ```
//! - `ts` is a kdb+ timestamp (nanoseconds since 2000.01.01; `0Np` = `i64::MIN`), `id` the message id, `to`
//!   reserved (RT: "reserved for future use").
//! - `payload` is the kdb+ message body exactly as the publisher's serializer wrote it; the log never looks inside.
//!
//! # Badtail mark
//!
//! A copy of a log (a subscriber's local copy of the node's merged log) cannot copy a corrupt record: when its
//! source's reader reports `badtail` at position `P` (the rest of that segment is unreadable), the copy writes the
//! 16 bytes [`BADTAIL_MARK`] at `P` and continues in the next roll
//! ([`Log::mark_badtail`](crate::Log::mark_badtail)), so its own readers report `badtail` with the same two
//! positions:
//!
//! ```text
//!  P        P+4      P+8      P+12     P+16
//! ┌────────┬────────┬────────┬────────┐
//! │ "QMES" │ "H:BA" │ "DTAI" │ "L:!!" │   `len` ("H:BA") and `!len` ("DTAI") disagree: corrupt, never torn
//! └────────┴────────┴────────┴────────┘
//! ```
//!
//! The mark is not a record (no reader or recovery ever takes it for one) and needs no version bump: a reader of
//! any version sees a corrupt record there. Recovery keeps it when it ends the last segment (a crash before the
//! next roll was created): a corrupt record that is not torn and not zeros seals its segment.

use crate::position::SegmentId;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"QMESHLOG";
/// The format version this code writes and reads (segment header bytes 8..10). Bump it for any change to the layout
/// drawn in the [module docs](self).
pub const FORMAT_VERSION: u16 = 1;
/// Length of the segment header, in bytes; the first record starts here.
pub const SEGMENT_HEADER_LEN: usize = 32;

const SEG_VERSION: usize = 8;
const SEG_FLAGS: usize = 10;
const SEG_SESSION: usize = 12;
const SEG_ROLL: usize = 16;
const SEG_RESERVED: usize = 20;
const SEG_CRC: usize = 28;

/// Offset of the record's checksum.
const REC_CRC: usize = 0;
/// Offset of the record's length.
const REC_LEN: usize = 4;
/// Offset of the complement of the record's length.
const REC_NOT_LEN: usize = 8;
const REC_KIND: usize = 12;
const REC_FLAGS: usize = 13;
const REC_ON_LEN: usize = 14;
const REC_DEDUP_LEN: usize = 15;
const REC_TS: usize = 16;
const REC_ID: usize = 24;
const REC_TO: usize = 32;
/// Length of a record's fixed part (everything before the `on` symbol), in bytes.
pub const RECORD_FIXED_LEN: usize = 40;
/// Bytes needed to read a record's length and tell torn from corrupt.
pub const RECORD_PREFIX_LEN: usize = 12;

/// `kind` of a message record.
const KIND_MESSAGE: u8 = 1;
/// `flags` bit: a dedup key is present.
const FLAG_DEDUP: u8 = 1;
/// `flags` bit: a source block follows the symbols.
const FLAG_SOURCE: u8 = 2;
/// Bytes of a source block besides its key: `src_len` (1) and `src_pos` (8).
const SOURCE_FIXED_LEN: usize = 9;

/// Where a shipped record came from (the record's source block): the publisher's key and the record's position in
/// the publisher's local log. Written by [`Log::append_with_source`](crate::Log::append_with_source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Source<'a> {
    /// The publisher's key (its local log directory's name), at most [`MAX_SYMBOL_LEN`] bytes.
    pub key: &'a [u8],
    /// The record's position in the publisher's local log (a [`Position`](crate::Position)'s raw value).
    pub pos: u64,
}

impl Source<'_> {
    /// Bytes the source block takes in a record.
    pub fn block_len(&self) -> usize {
        SOURCE_FIXED_LEN + self.key.len()
    }
}

/// What a copy writes where its source had a corrupt record (see [Badtail mark](crate::format#badtail-mark)): 16
/// bytes whose `len` and `!len` fields disagree, so every reader reports `badtail` there and recovery seals the
/// segment rather than cutting it.
pub const BADTAIL_MARK: [u8; 16] = *b"QMESH:BADTAIL:!!";

/// Largest payload, in bytes: 1073741783, rt.qpk's limit ("the upper limit is 1073741783 bytes"), so that a
/// message fits a segment whose offsets have 30 bits. A larger message is refused before anything is written.
pub const MAX_PAYLOAD: usize = 1_073_741_783;
/// Longest `on` or `dedup` symbol, in bytes (the length is one byte).
pub const MAX_SYMBOL_LEN: usize = 255;
/// Longest possible record, in bytes: fixed part, two longest symbols and the largest payload. A length field above
/// this is corrupt; nothing larger is ever allocated for one record.
pub const MAX_RECORD_LEN: usize = RECORD_FIXED_LEN + 2 * MAX_SYMBOL_LEN + MAX_PAYLOAD;

/// The kdb+ null timestamp `0Np`.
pub const NULL_TIMESTAMP: i64 = i64::MIN;

/// A record's header: everything but the payload. Symbols are borrowed raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RecordHeader<'a> {
    /// The origin (RT's `on`): a symbol naming who originated the message, at most [`MAX_SYMBOL_LEN`] bytes.
    pub on: &'a [u8],
    /// When the message was recorded: a kdb+ timestamp, nanoseconds since 2000.01.01 ([`NULL_TIMESTAMP`] = `0Np`).
    pub ts: i64,
    /// The message id (RT's `id`: unique per origin, its distance from zero increasing by one per message).
    pub id: i64,
    /// Reserved (RT's `to`); stored and returned as given.
    pub to: i64,
    /// The dedup key (`dedup_id`) when the message is deduplicated, at most [`MAX_SYMBOL_LEN`] bytes.
    pub dedup: Option<&'a [u8]>,
}

impl RecordHeader<'_> {
    /// The whole record's length for a payload of `payload_len` bytes.
    pub fn record_len(&self, payload_len: usize) -> usize {
        RECORD_FIXED_LEN + self.on.len() + self.dedup.map_or(0, <[u8]>::len) + payload_len
    }
}

/// A segment's header, as stored in its first [`SEGMENT_HEADER_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format version ([`FORMAT_VERSION`]).
    pub version: u16,
    /// Which segment this is; must match the file name.
    pub segment: SegmentId,
}

/// Why a segment header is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    #[error("segment header short: {0} bytes")]
    Short(usize),
    /// Not a qmesh log segment.
    #[error("bad segment magic")]
    Magic,
    /// The header's checksum does not match.
    #[error("segment header checksum mismatch")]
    Checksum,
    /// Written by a format this code does not read.
    #[error("segment format version {0} (this build reads {FORMAT_VERSION})")]
    Version(u16),
    /// Reserved bytes or flags not zero, or session/roll out of range.
    #[error("segment header has unknown flags or out-of-range fields")]
    Fields,
}

impl SegmentHeader {
    /// The header bytes for `segment`.
    pub fn encode(segment: SegmentId) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[..8].copy_from_slice(&SEGMENT_MAGIC);
        b[SEG_VERSION..SEG_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[SEG_SESSION..SEG_SESSION + 4].copy_from_slice(&segment.session.to_le_bytes());
        b[SEG_ROLL..SEG_ROLL + 4].copy_from_slice(&segment.roll.to_le_bytes());
        let crc = crc32c::crc32c(&b[..SEG_CRC]);
        b[SEG_CRC..SEG_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, SegmentHeaderError> {
        let b = buf.get(..SEGMENT_HEADER_LEN).ok_or(SegmentHeaderError::Short(buf.len()))?;
        if b[..8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::Magic);
        }
        if crc32c::crc32c(&b[..SEG_CRC]) != u32_at(b, SEG_CRC) {
            return Err(SegmentHeaderError::Checksum);
        }
        let version = u16::from_le_bytes([b[SEG_VERSION], b[SEG_VERSION + 1]]);
        if version != FORMAT_VERSION {
            return Err(SegmentHeaderError::Version(version));
        }
        if b[SEG_FLAGS..SEG_FLAGS + 2] != [0, 0] || b[SEG_RESERVED..SEG_CRC].iter().any(|&x| x != 0) {
            return Err(SegmentHeaderError::Fields);
        }
        let segment =
            SegmentId::new(u32_at(b, SEG_SESSION), u32_at(b, SEG_ROLL)).ok_or(SegmentHeaderError::Fields)?;
        Ok(Self { version, segment })
    }
}

/// Why bytes are not a whole record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the record does: `needed` bytes (from the record's start) are required. At the end of a
    /// file this is a torn write.
    #[error("record incomplete: {needed} bytes needed")]
    Incomplete {
        /// Bytes needed from the record's start: [`RECORD_PREFIX_LEN`], or the record's whole length.
        needed: usize,
    },
    /// The bytes are not a valid record.
    #[error("corrupt record: {0}")]
    Corrupt(Corruption),
}

/// What is wrong with a corrupt record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// `len` and `!len` disagree.
    #[error("length check mismatch")]
    LengthCheck,
    /// `len` is below the fixed part or above [`MAX_RECORD_LEN`].
    #[error("length {0} out of range")]
    Length(u32),
    /// The checksum does not match the bytes.
    #[error("checksum mismatch")]
    Checksum,
    /// Unknown kind, unknown flags, or symbols longer than the record.
    #[error("bad header fields")]
    Fields,
}

/// A whole, checksummed record borrowed from a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The header.
    pub header: RecordHeader<'a>,
    /// The payload: the kdb+ message body as published.
    pub payload: &'a [u8],
    /// The whole record, byte for byte (what [`Log::append_raw`](crate::Log::append_raw) takes).
    pub raw: &'a [u8],
    /// The source block of a shipped record.
    pub source: Option<Source<'a>>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(x)
}

/// Reads the record length from a record's first [`RECORD_PREFIX_LEN`] bytes, checking it against its complement
/// and the limits.
pub fn record_len(buf: &[u8]) -> Result<usize, DecodeError> {
    if buf.len() < RECORD_PREFIX_LEN {
        return Err(DecodeError::Incomplete { needed: RECORD_PREFIX_LEN });
    }
    let len = u32_at(buf, REC_LEN);
    if len != !u32_at(buf, REC_NOT_LEN) {
        return Err(DecodeError::Corrupt(Corruption::LengthCheck));
    }
    if (len as usize) < RECORD_FIXED_LEN || len as usize > MAX_RECORD_LEN {
        return Err(DecodeError::Corrupt(Corruption::Length(len)));
    }
    Ok(len as usize)
}

/// Decodes the record at the start of `buf` (trailing bytes are ignored), verifying its checksum.
pub fn decode_record(buf: &[u8]) -> Result<RecordView<'_>, DecodeError> {
    let len = record_len(buf)?;
    let raw = buf.get(..len).ok_or(DecodeError::Incomplete { needed: len })?;
    if crc32c::crc32c(&raw[REC_LEN..]) != u32_at(raw, REC_CRC) {
        return Err(DecodeError::Corrupt(Corruption::Checksum));
    }
    let flags = raw[REC_FLAGS];
    if raw[REC_KIND] != KIND_MESSAGE || flags & !(FLAG_DEDUP | FLAG_SOURCE) != 0 {
        return Err(DecodeError::Corrupt(Corruption::Fields));
    }
    let on_len = raw[REC_ON_LEN] as usize;
    let dedup_len = raw[REC_DEDUP_LEN] as usize;
    if flags & FLAG_DEDUP == 0 && dedup_len != 0 {
        return Err(DecodeError::Corrupt(Corruption::Fields));
    }
    let syms_end = RECORD_FIXED_LEN + on_len + dedup_len;
    if syms_end > len {
        return Err(DecodeError::Corrupt(Corruption::Fields));
    }
    let (source, payload_at) = if flags & FLAG_SOURCE != 0 {
        let klen = *raw.get(syms_end).ok_or(DecodeError::Corrupt(Corruption::Fields))? as usize;
        let end = syms_end + SOURCE_FIXED_LEN + klen;
        if end > len {
            return Err(DecodeError::Corrupt(Corruption::Fields));
        }
        let key = &raw[syms_end + 1..syms_end + 1 + klen];
        (Some(Source { key, pos: i64_at(raw, syms_end + 1 + klen) as u64 }), end)
    } else {
        (None, syms_end)
    };
    let on = &raw[RECORD_FIXED_LEN..RECORD_FIXED_LEN + on_len];
    let dedup = (flags & FLAG_DEDUP != 0).then(|| &raw[RECORD_FIXED_LEN + on_len..syms_end]);
    let header =
        RecordHeader { on, ts: i64_at(raw, REC_TS), id: i64_at(raw, REC_ID), to: i64_at(raw, REC_TO), dedup };
    Ok(RecordView { header, payload: &raw[payload_at..], raw, source })
}

/// The bytes of a record's fixed part and symbols (everything before the payload) with the checksum filled in:
/// write these, then the payload. The caller has checked the limits ([`MAX_SYMBOL_LEN`], [`MAX_PAYLOAD`]).
pub(crate) fn encode_record_head(
    header: &RecordHeader<'_>,
    source: Option<Source<'_>>,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let len = (header.record_len(payload.len()) + source.map_or(0, |s| s.block_len())) as u32;
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_FIXED_LEN]);
    let b = &mut out[start..];
    b[REC_LEN..REC_LEN + 4].copy_from_slice(&len.to_le_bytes());
    b[REC_NOT_LEN..REC_NOT_LEN + 4].copy_from_slice(&(!len).to_le_bytes());
    b[REC_KIND] = KIND_MESSAGE;
    b[REC_FLAGS] =
        if header.dedup.is_some() { FLAG_DEDUP } else { 0 } | if source.is_some() { FLAG_SOURCE } else { 0 };
    b[REC_ON_LEN] = header.on.len() as u8;
    b[REC_DEDUP_LEN] = header.dedup.map_or(0, <[u8]>::len) as u8;
    b[REC_TS..REC_TS + 8].copy_from_slice(&header.ts.to_le_bytes());
    b[REC_ID..REC_ID + 8].copy_from_slice(&header.id.to_le_bytes());
    b[REC_TO..REC_TO + 8].copy_from_slice(&header.to.to_le_bytes());
    out.extend_from_slice(header.on);
    if let Some(d) = header.dedup {
        out.extend_from_slice(d);
    }
    if let Some(s) = source {
        out.push(s.key.len() as u8);
        out.extend_from_slice(s.key);
        out.extend_from_slice(&s.pos.to_le_bytes());
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start + REC_LEN..]), payload);
    out[start + REC_CRC..start + REC_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A whole record as one buffer (header, symbols, payload). Tests and tools use it; the log writes the head and
/// payload without copying the payload.
pub fn encode_record(header: &RecordHeader<'_>, payload: &[u8]) -> Vec<u8> {
    encode_record_with_source(header, None, payload)
}

/// A whole record with an optional [`Source`] block, as one buffer.
pub fn encode_record_with_source(
    header: &RecordHeader<'_>,
    source: Option<Source<'_>>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.record_len(payload.len()) + source.map_or(0, |s| s.block_len()));
    encode_record_head(header, source, payload, &mut out);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let h = RecordHeader { on: b"pub1", ts: 42, id: -7, to: 0, dedup: Some(b"trade") };
        let rec = encode_record(&h, b"payload bytes");
        assert_eq!(rec.len(), h.record_len(13));
        let v = decode_record(&rec).expect("whole record");
        assert_eq!(v.header, h);
        assert_eq!(v.payload, b"payload bytes");
        assert_eq!(v.raw, &rec[..]);
        let empty_dedup = RecordHeader { dedup: Some(b""), ..h };
        assert_eq!(decode_record(&encode_record(&empty_dedup, b"")).map(|v| v.header), Ok(empty_dedup));
    }

    #[test]
    fn source_block_round_trip() {
        let h = RecordHeader { on: b"pub1", ts: 42, id: -7, to: 0, dedup: Some(b"trade") };
        let src = Source { key: b"a.host.trades", pos: 17_592_186_044_416 };
        let rec = encode_record_with_source(&h, Some(src), b"payload");
        let v = decode_record(&rec).expect("whole record");
        assert_eq!((v.header, v.source, v.payload), (h, Some(src), &b"payload"[..]));
        assert_eq!(rec.len(), h.record_len(7) + src.block_len());
        let plain_bytes = encode_record(&h, b"p");
        let plain = decode_record(&plain_bytes).expect("record");
        assert_eq!(plain.source, None);
    }

    #[test]
    fn torn_and_corrupt_are_told_apart() {
        let src = Source { key: b"k", pos: 5 };
        for rec in [
            encode_record(&RecordHeader { on: b"x", ..Default::default() }, &[1, 2, 3]),
            encode_record_with_source(
                &RecordHeader { on: b"x", ..Default::default() },
                Some(src),
                &[1, 2, 3],
            ),
        ] {
            for cut in 0..rec.len() {
                assert!(
                    matches!(decode_record(&rec[..cut]), Err(DecodeError::Incomplete { .. })),
                    "cut {cut}"
                );
            }
            for i in 0..rec.len() {
                for bit in 0..8 {
                    let mut bad = rec.clone();
                    bad[i] ^= 1 << bit;
                    assert!(
                        matches!(decode_record(&bad), Err(DecodeError::Corrupt(_))),
                        "byte {i} bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn badtail_mark_is_corrupt_not_torn() {
        assert_eq!(record_len(&BADTAIL_MARK), Err(DecodeError::Corrupt(Corruption::LengthCheck)));
        assert!(matches!(decode_record(&BADTAIL_MARK), Err(DecodeError::Corrupt(_))));
        assert!(BADTAIL_MARK.len() >= RECORD_PREFIX_LEN);
    }

    #[test]
    fn segment_header_round_trip() {
        let id = SegmentId { session: 9, roll: 3 };
        let b = SegmentHeader::encode(id);
        assert_eq!(SegmentHeader::decode(&b), Ok(SegmentHeader { version: FORMAT_VERSION, segment: id }));
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(SegmentHeaderError::Short(10)));
        let mut bad = b;
        bad[13] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(SegmentHeaderError::Checksum));
    }
}
