//! The 8-byte kdb+ IPC message header.
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | endianness of the whole message: 1 little, 0 big |
//! | 1 | message type: 0 async, 1 sync, 2 response |
//! | 2 | compression: 0 none, 1 compressed (4-byte uncompressed length), 2 compressed with an 8-byte uncompressed length |
//! | 3 | bits 32..39 of the total length (capability 5/6); 0 otherwise |
//! | 4..8 | bits 0..31 of the total length, header included, in the message's endianness |

use crate::error::DecodeError;
use crate::limits::MAX_WIRE_LENGTH;

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 8;

/// What a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// Fire and forget (`neg[h] x`).
    Async = 0,
    /// A request that expects a [`MsgType::Response`] (`h x`).
    Sync = 1,
    /// The answer to a sync request.
    Response = 2,
}

impl MsgType {
    /// The message type for header byte 1.
    pub fn from_byte(b: u8) -> Option<MsgType> {
        match b {
            0 => Some(MsgType::Async),
            1 => Some(MsgType::Sync),
            2 => Some(MsgType::Response),
            _ => None,
        }
    }
}

/// Whether and how the message body is compressed (header byte 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Not compressed.
    #[default]
    None,
    /// Compressed; the uncompressed length follows the header in 4 bytes.
    Compressed,
    /// Compressed; the uncompressed length follows the header in 8 bytes
    /// (capability 5/6, messages of 4 GiB and more).
    CompressedLong,
}

impl Compression {
    /// The header byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Compressed => 1,
            Compression::CompressedLong => 2,
        }
    }

    /// Bytes between the header and the compressed stream (the uncompressed
    /// length field).
    pub fn length_field_len(self) -> usize {
        match self {
            Compression::None => 0,
            Compression::Compressed => 4,
            Compression::CompressedLong => 8,
        }
    }
}

/// A parsed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Byte 0: whether every number in the message is little-endian.
    pub little_endian: bool,
    /// Byte 1.
    pub msg_type: MsgType,
    /// Byte 2.
    pub compression: Compression,
    /// Total length of the message on the wire, header included:
    /// `byte3 << 32 | u32(bytes 4..8)`.
    pub length: u64,
}

impl Header {
    /// A little-endian uncompressed header.
    pub fn new(msg_type: MsgType, length: u64) -> Header {
        Header { little_endian: true, msg_type, compression: Compression::None, length }
    }

    /// Parses and checks a header. The length is checked only for being at
    /// least the header (plus the uncompressed-length field when compressed);
    /// callers compare it with their own limit.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let little_endian = match bytes[0] {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::BadHeader("endianness byte is neither 0 nor 1")),
        };
        let msg_type =
            MsgType::from_byte(bytes[1]).ok_or(DecodeError::BadHeader("message type is not 0, 1 or 2"))?;
        let compression = match bytes[2] {
            0 => Compression::None,
            1 => Compression::Compressed,
            2 => Compression::CompressedLong,
            _ => return Err(DecodeError::BadHeader("compression byte is not 0, 1 or 2")),
        };
        let low: [u8; 4] = [bytes[4], bytes[5], bytes[6], bytes[7]];
        let low = if little_endian { u32::from_le_bytes(low) } else { u32::from_be_bytes(low) };
        let length = (u64::from(bytes[3]) << 32) | u64::from(low);
        let min = (HEADER_LEN + compression.length_field_len()) as u64;
        if length < min {
            return Err(DecodeError::BadHeader("length shorter than the header"));
        }
        Ok(Header { little_endian, msg_type, compression, length })
    }

    /// The 8 header bytes, in the header's own endianness. The length is
    /// truncated to the 40 bits the header holds (see
    /// [`crate::limits::MAX_WIRE_LENGTH`]; the encoder refuses longer).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let length = self.length & MAX_WIRE_LENGTH;
        let low = length as u32;
        let low = if self.little_endian { low.to_le_bytes() } else { low.to_be_bytes() };
        [
            u8::from(self.little_endian),
            self.msg_type as u8,
            self.compression.to_byte(),
            (length >> 32) as u8,
            low[0],
            low[1],
            low[2],
            low[3],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_headers() {
        let h = Header::parse(&[1, 0, 0, 0, 0x11, 0, 0, 0]).unwrap();
        assert_eq!(h, Header::new(MsgType::Async, 17));
        let h = Header::parse(&[1, 2, 0, 0, 0x11, 0, 0, 0]).unwrap();
        assert_eq!(h.msg_type, MsgType::Response);
        assert_eq!(h.to_bytes(), [1, 2, 0, 0, 0x11, 0, 0, 0]);
    }

    #[test]
    fn big_endian_and_long_length() {
        let h = Header::parse(&[0, 1, 0, 0, 0, 0, 0, 0x11]).unwrap();
        assert!(!h.little_endian);
        assert_eq!(h.length, 17);
        assert_eq!(h.to_bytes(), [0, 1, 0, 0, 0, 0, 0, 0x11]);
        // byte 3 carries bits 32..39 (capability 6)
        let h = Header::parse(&[1, 1, 0, 2, 8, 0, 0, 0x80]).unwrap();
        assert_eq!(h.length, (2 << 32) | 0x8000_0008);
        assert_eq!(h.to_bytes(), [1, 1, 0, 2, 8, 0, 0, 0x80]);
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(Header::parse(&[2, 0, 0, 0, 9, 0, 0, 0]).is_err());
        assert!(Header::parse(&[1, 3, 0, 0, 9, 0, 0, 0]).is_err());
        assert!(Header::parse(&[1, 0, 3, 0, 9, 0, 0, 0]).is_err());
        assert!(Header::parse(&[1, 0, 0, 0, 7, 0, 0, 0]).is_err());
        assert!(Header::parse(&[1, 0, 1, 0, 11, 0, 0, 0]).is_err());
        assert!(Header::parse(&[1, 0, 1, 0, 12, 0, 0, 0]).is_ok());
    }
}
