//! Whole messages, keeping their raw bytes so a router can pass a payload on
//! without decoding and re-encoding it.

use bytes::Bytes;

use crate::decode::{decode_body, object_extent};
use crate::encode::{EncodeOptions, encode_message};
use crate::error::{DecodeError, EncodeError};
use crate::header::{Compression, HEADER_LEN, Header, MsgType};
use crate::value::{K, types};

/// One encoded kdb+ object: its bytes and their byte order.
///
/// [`K::Raw`] carries one of these through the encoder: little-endian bytes
/// are copied as they are, big-endian ones are rewritten little-endian.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawObject {
    bytes: Bytes,
    little_endian: bool,
}

impl RawObject {
    /// Wraps bytes that hold exactly one encoded object. They are not
    /// checked here (see [`RawObject::parse`]); [`RawObject::decode`] checks
    /// them, and the encoder refuses invalid big-endian ones.
    pub fn new(bytes: Bytes, little_endian: bool) -> RawObject {
        RawObject { bytes, little_endian }
    }

    /// Wraps bytes after checking that they hold exactly one object.
    pub fn parse(bytes: Bytes, little_endian: bool) -> Result<RawObject, DecodeError> {
        let n = object_extent(&bytes, little_endian)?;
        if n != bytes.len() {
            return Err(DecodeError::TrailingBytes { extra: bytes.len() - n });
        }
        Ok(RawObject { bytes, little_endian })
    }

    /// The encoding of `k` (little-endian).
    pub fn encode(k: &K) -> RawObject {
        let mut out = Vec::new();
        crate::encode::encode_body_into(k, &mut out);
        RawObject { bytes: Bytes::from(out), little_endian: true }
    }

    /// Decodes the object.
    pub fn decode(&self) -> Result<K, DecodeError> {
        decode_body(&self.bytes, self.little_endian)
    }

    /// The object's kdb+ type (`type x`), from its first byte.
    pub fn ty(&self) -> i16 {
        self.bytes.first().map_or(0, |&b| i16::from(b as i8))
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Whether the bytes are little-endian.
    pub fn is_little_endian(&self) -> bool {
        self.little_endian
    }

    /// Splits the object into its items without decoding them, if it is a
    /// general list (type 0).
    pub fn list_items(&self) -> Result<Vec<RawObject>, DecodeError> {
        list_items(&self.bytes, self.little_endian)
    }
}

fn list_items(body: &Bytes, le: bool) -> Result<Vec<RawObject>, DecodeError> {
    let Some(&first) = body.first() else {
        return Err(DecodeError::Truncated { offset: 0, needed: 1 });
    };
    if first as i8 != types::LIST {
        return Err(DecodeError::NotAList { ty: i16::from(first as i8) });
    }
    let (n, mut pos) = list_count(body, le)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let len = object_extent(&body[pos..], le)?;
        items.push(RawObject { bytes: body.slice(pos..pos + len), little_endian: le });
        pos += len;
    }
    if pos != body.len() {
        return Err(DecodeError::TrailingBytes { extra: body.len() - pos });
    }
    Ok(items)
}

/// The count of the general list at the start of `body` and where its first
/// item starts; the count is checked against the bytes that follow.
fn list_count(body: &[u8], le: bool) -> Result<(usize, usize), DecodeError> {
    let attr = *body.get(1).ok_or(DecodeError::Truncated { offset: 1, needed: 1 })?;
    if crate::Attr::from_byte(attr & 0x7f).is_none() {
        return Err(DecodeError::BadAttribute { byte: attr, offset: 1 });
    }
    let width = if attr & 0x80 != 0 { 8 } else { 4 };
    let field = body.get(2..2 + width).ok_or(DecodeError::Truncated { offset: 2, needed: width as u64 })?;
    let n: i64 = match (width, le) {
        (4, true) => i64::from(i32::from_le_bytes(field.try_into().expect("4 bytes"))),
        (4, false) => i64::from(i32::from_be_bytes(field.try_into().expect("4 bytes"))),
        (_, true) => i64::from_le_bytes(field.try_into().expect("8 bytes")),
        (_, false) => i64::from_be_bytes(field.try_into().expect("8 bytes")),
    };
    let start = 2 + width;
    let n =
        u64::try_from(n).map_err(|_| DecodeError::Malformed { what: "list", detail: "negative count" })?;
    let left = (body.len() - start) as u64;
    if n > left {
        return Err(DecodeError::Truncated { offset: start, needed: n - left });
    }
    Ok((n as usize, start))
}

/// A whole message: its header and its (uncompressed) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header of the message as decoded: after decompression it says
    /// `Compression::None` and gives the uncompressed length (see
    /// [`Message::wire_len`] for the length that travelled).
    pub header: Header,
    body: Bytes,
    wire_len: u64,
}

impl Message {
    /// Takes one whole wire message (header included), checks its header and
    /// length (at most `max_len` bytes, compressed or not) and decompresses it
    /// if needed. The body is not decoded.
    pub fn from_frame(frame: Bytes, max_len: u64) -> Result<Message, DecodeError> {
        let header: &[u8; HEADER_LEN] =
            frame.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(DecodeError::Truncated {
                offset: 0,
                needed: (HEADER_LEN - frame.len().min(HEADER_LEN)) as u64,
            })?;
        let header = Header::parse(header)?;
        if header.length != frame.len() as u64 {
            return Err(DecodeError::LengthMismatch { header: header.length, actual: frame.len() as u64 });
        }
        if header.length > max_len {
            return Err(DecodeError::TooLarge { len: header.length, max: max_len });
        }
        let wire_len = header.length;
        if header.compression == Compression::None {
            return Ok(Message { header, body: frame.slice(HEADER_LEN..), wire_len });
        }
        let full = crate::compress::decompress(&frame, max_len)?;
        let header = Header { compression: Compression::None, length: full.len() as u64, ..header };
        let body = Bytes::from(full).slice(HEADER_LEN..);
        Ok(Message { header, body, wire_len })
    }

    /// A message from a header and an uncompressed body.
    pub fn from_parts(msg_type: MsgType, body: Bytes, little_endian: bool) -> Message {
        let length = (HEADER_LEN + body.len()) as u64;
        let header = Header { little_endian, msg_type, compression: Compression::None, length };
        Message { header, body, wire_len: length }
    }

    /// The message type.
    pub fn msg_type(&self) -> MsgType {
        self.header.msg_type
    }

    /// The length the message had on the wire (compressed, if it was).
    pub fn wire_len(&self) -> u64 {
        self.wire_len
    }

    /// Decodes the body.
    pub fn decode(&self) -> Result<K, DecodeError> {
        decode_body(&self.body, self.header.little_endian)
    }

    /// The uncompressed body (after the header).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body as one raw object, without decoding it.
    pub fn as_object(&self) -> RawObject {
        RawObject { bytes: self.body.clone(), little_endian: self.header.little_endian }
    }

    /// If the body is a general list, its items as raw objects, without
    /// decoding them (each is only walked to find where it ends).
    pub fn list_items(&self) -> Result<Vec<RawObject>, DecodeError> {
        list_items(&self.body, self.header.little_endian)
    }

    /// Encodes a whole message (see [`encode_message`]).
    pub fn encode(msg_type: MsgType, k: &K, opts: EncodeOptions) -> Result<Bytes, EncodeError> {
        encode_message(msg_type, k, opts).map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Attr, Vector};

    #[test]
    fn frame_round_trip_and_items() {
        let k = K::list(vec![K::sym("upd"), K::sym("trade"), K::long(7)]);
        let bytes = Message::encode(MsgType::Async, &k, EncodeOptions::default()).unwrap();
        let m = Message::from_frame(bytes.clone(), 1 << 20).unwrap();
        assert_eq!(m.decode().unwrap(), k);
        let items = m.list_items().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].decode().unwrap(), K::sym("upd"));
        assert_eq!(items[2].ty(), -7);
        // raw objects re-encode byte for byte
        let again = K::list(items.into_iter().map(K::Raw).collect());
        assert_eq!(Message::encode(MsgType::Async, &again, EncodeOptions::default()).unwrap(), bytes);
    }

    #[test]
    fn compressed_frames_are_inflated() {
        let k = K::Vector(Attr::None, Vector::Long((0..1000).collect()));
        let opts = EncodeOptions { capability: 3, compress: true };
        let bytes = Message::encode(MsgType::Sync, &k, opts).unwrap();
        assert_eq!(bytes[2], 1);
        let m = Message::from_frame(bytes, 1 << 20).unwrap();
        assert_eq!(m.wire_len(), 3276);
        assert_eq!(m.header.length, 8014);
        assert_eq!(m.decode().unwrap(), k);
        assert!(Message::from_frame(Message::encode(MsgType::Sync, &k, opts).unwrap(), 4000).is_err());
    }

    #[test]
    fn big_endian_raw_is_rewritten() {
        let mut be = vec![0x07u8, 0, 0, 0, 0, 2];
        be.extend_from_slice(&1i64.to_be_bytes());
        be.extend_from_slice(&2i64.to_be_bytes());
        let raw = RawObject::parse(Bytes::from(be), false).unwrap();
        let le = RawObject::encode(&K::Raw(raw.clone()));
        assert_eq!(le.decode().unwrap(), raw.decode().unwrap());
    }

    #[test]
    fn frame_errors() {
        assert!(Message::from_frame(Bytes::from_static(&[1, 0, 0]), 100).is_err());
        assert!(matches!(
            Message::from_frame(Bytes::from_static(&[1, 0, 0, 0, 11, 0, 0, 0, 0xf5, 0]), 100),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let m = Message::from_frame(Bytes::from_static(&[1, 0, 0, 0, 10, 0, 0, 0, 0xf5, 0]), 100).unwrap();
        assert_eq!(m.decode().unwrap(), K::sym(""));
        assert!(matches!(m.list_items(), Err(DecodeError::NotAList { ty: -11 })));
    }
}
