//! Typed errors of the codec.

/// Why bytes could not be decoded as a kdb+ message or object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header is not a kdb+ IPC header.
    #[error("bad header: {0}")]
    BadHeader(&'static str),
    /// The message ends before the object it announces.
    #[error("message truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Offset in the body where the read started.
        offset: usize,
        /// Bytes the read needed beyond the end.
        needed: u64,
    },
    /// Bytes left over after the one object a body holds.
    #[error("{extra} trailing bytes after the object")]
    TrailingBytes {
        /// How many bytes were not consumed.
        extra: usize,
    },
    /// A type byte that is not a kdb+ IPC type.
    #[error("unknown type {ty} at offset {offset}")]
    UnknownType {
        /// The type byte, signed as q prints it.
        ty: i8,
        /// Offset in the body.
        offset: usize,
    },
    /// A type that exists in kdb+ but that this codec does not decode.
    #[error("unsupported type {ty}: {reason}")]
    Unsupported {
        /// The type byte, signed.
        ty: i8,
        /// Why it is not supported.
        reason: &'static str,
    },
    /// An attribute byte other than 0..=4 (plus the long-count flag 0x80).
    #[error("bad attribute byte {byte:#04x} at offset {offset}")]
    BadAttribute {
        /// The byte.
        byte: u8,
        /// Offset in the body.
        offset: usize,
    },
    /// Nesting deeper than [`crate::limits::MAX_DEPTH`].
    #[error("nesting deeper than {limit} levels")]
    TooDeep {
        /// The limit in force.
        limit: usize,
    },
    /// A message longer than the caller's limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The frame's length disagrees with its header.
    #[error("header says {header} bytes but the frame has {actual}")]
    LengthMismatch {
        /// Length from the header.
        header: u64,
        /// Length of the bytes given.
        actual: u64,
    },
    /// Well-formed bytes that do not make a valid object (a table whose
    /// dictionary is not symbols → columns, columns of different lengths…).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// A compressed stream that does not decompress.
    #[error("bad compressed message: {0}")]
    Decompress(&'static str),
    /// The operation needs a general list (type 0).
    #[error("expected a general list, found type {ty}")]
    NotAList {
        /// The type found.
        ty: i16,
    },
}

/// Why a value could not be encoded for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The value needs a newer protocol than the peer negotiated.
    #[error("{what} needs capability {needed}, the peer has {capability}")]
    CapabilityTooLow {
        /// What needs it (`guid`, `timestamp`, …).
        what: &'static str,
        /// The lowest capability that carries it.
        needed: u8,
        /// The peer's capability.
        capability: u8,
    },
    /// The message is longer than the header can express.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A value that has no wire form this codec can produce.
    #[error("cannot encode {0}")]
    Unsupported(&'static str),
    /// A [`crate::RawObject`] whose bytes are not one valid object.
    #[error("invalid raw object: {0}")]
    InvalidRaw(DecodeError),
}
