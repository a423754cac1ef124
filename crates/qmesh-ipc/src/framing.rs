//! Splitting a byte stream into kdb+ messages.
//!
//! [`IpcCodec`] is a `tokio_util::codec` [`Decoder`]/[`Encoder`]. The decoder
//! parses the 8-byte header first and refuses a message longer than its
//! limit *before* any of the body is read or buffer space reserved for it;
//! while a body arrives, buffer space grows with the bytes actually received
//! ([`RESERVE_CHUNK`] at a time), never to the announced length at once.
//!
//! Each message is decompressed if needed and, unless disabled, checked to
//! hold exactly one well-formed object (the walk does not build the value),
//! so a malformed body is refused at the connection, as q's `'badmsg`.

use bytes::{Buf, Bytes, BytesMut};
use qmesh_codec::{DecodeError, HEADER_LEN, Header, Message, MsgType, object_extent};
use tokio_util::codec::{Decoder, Encoder};

/// Most buffer space reserved ahead of the bytes received while a long
/// message arrives, in bytes. A peer announcing a 1 GiB message costs memory
/// only as fast as it sends.
pub const RESERVE_CHUNK: usize = 4 * 1024 * 1024;

/// Why the byte stream could not be split into messages.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announces more bytes than allowed (the body has not been
    /// read), or a compressed message inflates past the limit. The
    /// connection must be closed (after an error response, for a sync
    /// request).
    #[error("message too large: {len} bytes announced, limit {max}")]
    TooLarge {
        /// The announced total length.
        len: u64,
        /// The limit in force.
        max: u64,
        /// The message type from the header.
        msg_type: MsgType,
    },
    /// A header or body that is not a kdb+ message.
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    /// The socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The kdb+ message codec.
#[derive(Debug, Clone, Copy)]
pub struct IpcCodec {
    /// Largest message accepted (total bytes, header included, after
    /// decompression).
    pub max_message_bytes: u64,
    /// Whether each body is checked to hold exactly one valid object.
    pub validate: bool,
}

impl IpcCodec {
    /// A codec refusing messages above `max_message_bytes`, validating bodies.
    pub fn new(max_message_bytes: u64) -> IpcCodec {
        IpcCodec { max_message_bytes, validate: true }
    }

    /// Parses and checks the header at the start of `src`, if 8 bytes are
    /// there.
    pub fn peek_header(&self, src: &[u8]) -> Result<Option<Header>, FrameError> {
        let Some(head) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let head: &[u8; HEADER_LEN] = head.try_into().expect("slice of HEADER_LEN bytes");
        let header = Header::parse(head)?;
        if header.length > self.max_message_bytes {
            return Err(FrameError::TooLarge {
                len: header.length,
                max: self.max_message_bytes,
                msg_type: header.msg_type,
            });
        }
        Ok(Some(header))
    }
}

impl Decoder for IpcCodec {
    type Item = Message;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        let Some(header) = self.peek_header(src)? else {
            return Ok(None);
        };
        // `peek_header` bounded the length by `max_message_bytes`, a u64 that
        // may exceed usize only on 32-bit targets.
        let len = usize::try_from(header.length)
            .map_err(|_| DecodeError::TooLarge { len: header.length, max: usize::MAX as u64 })?;
        if src.len() < len {
            src.reserve((len - src.len()).min(RESERVE_CHUNK));
            return Ok(None);
        }
        let frame = src.split_to(len).freeze();
        let msg = Message::from_frame(frame, self.max_message_bytes).map_err(|e| match e {
            // A compressed message that inflates past the limit.
            DecodeError::TooLarge { len, max } => {
                FrameError::TooLarge { len, max, msg_type: header.msg_type }
            }
            e => FrameError::Malformed(e),
        })?;
        if self.validate {
            check_body(msg.body(), msg.header.little_endian)?;
        }
        Ok(Some(msg))
    }
}

/// Checks that `body` holds exactly one well-formed object.
pub fn check_body(body: &[u8], little_endian: bool) -> Result<(), DecodeError> {
    let n = object_extent(body, little_endian)?;
    if n != body.len() {
        return Err(DecodeError::TrailingBytes { extra: body.len() - n });
    }
    Ok(())
}

/// Encodes whole wire messages (header included), as produced by
/// [`Message::encode`], by appending them.
impl Encoder<Bytes> for IpcCodec {
    type Error = FrameError;

    fn encode(&mut self, mut frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.reserve(frame.len());
        while frame.has_remaining() {
            let chunk = frame.chunk();
            dst.extend_from_slice(chunk);
            let n = chunk.len();
            frame.advance(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{EncodeOptions, K};

    fn frame(k: &K, t: MsgType) -> Bytes {
        Message::encode(t, k, EncodeOptions::default()).unwrap()
    }

    #[test]
    fn byte_by_byte_and_several_in_one_buffer() {
        let a = frame(&K::long(1), MsgType::Sync);
        let b = frame(&K::string("hello"), MsgType::Async);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        // byte by byte
        let mut c = IpcCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = vec![];
        for &byte in &all {
            buf.extend_from_slice(&[byte]);
            while let Some(m) = c.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].decode().unwrap(), K::long(1));
        assert_eq!(got[0].msg_type(), MsgType::Sync);
        assert_eq!(got[1].decode().unwrap(), K::string("hello"));
        // both at once
        let mut buf = BytesMut::from(&all[..]);
        assert!(c.decode(&mut buf).unwrap().is_some());
        assert!(c.decode(&mut buf).unwrap().is_some());
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn too_large_is_refused_from_the_header_alone() {
        let mut c = IpcCodec::new(1000);
        // sync, announced length 1 GiB, no body at all
        let mut buf = BytesMut::from(&[1u8, 1, 0, 0, 0, 0, 0, 0x40][..]);
        match c.decode(&mut buf) {
            Err(FrameError::TooLarge { len, max: 1000, msg_type: MsgType::Sync }) => assert_eq!(len, 1 << 30),
            other => panic!("{other:?}"),
        }
        assert!(buf.capacity() < 1 << 20, "nothing reserved for the body");
    }

    #[test]
    fn reserve_grows_with_data_not_with_announcement() {
        let mut c = IpcCodec::new(1 << 40);
        let mut buf = BytesMut::from(&[1u8, 1, 0, 0, 0, 0, 0, 0x40][..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= RESERVE_CHUNK + 64);
    }

    #[test]
    fn malformed_headers_and_bodies() {
        let mut c = IpcCodec::new(1 << 20);
        for bad in [
            &[2u8, 0, 0, 0, 9, 0, 0, 0, 0][..], // endianness byte 2
            &[1u8, 3, 0, 0, 9, 0, 0, 0, 0][..], // message type 3
            &[1u8, 0, 0, 0, 4, 0, 0, 0][..],    // length below the header
        ] {
            assert!(matches!(c.decode(&mut BytesMut::from(bad)), Err(FrameError::Malformed(_))), "{bad:?}");
        }
        // a long atom with a byte missing, inside a frame that is complete
        let mut bad = frame(&K::long(1), MsgType::Async).to_vec();
        bad.pop();
        bad[4] -= 1;
        assert!(matches!(c.decode(&mut BytesMut::from(&bad[..])), Err(FrameError::Malformed(_))));
        // trailing garbage after one object
        let mut bad = frame(&K::long(1), MsgType::Async).to_vec();
        bad.push(0);
        bad[4] += 1;
        assert!(matches!(c.decode(&mut BytesMut::from(&bad[..])), Err(FrameError::Malformed(_))));
        // a compressed message inflating past the limit is "too large"
        let big = Message::encode(
            MsgType::Sync,
            &K::Vector(qmesh_codec::Attr::None, qmesh_codec::Vector::Long(vec![0; 1000])),
            EncodeOptions { capability: 6, compress: true },
        )
        .unwrap();
        assert!(big.len() < 1000);
        let mut small = IpcCodec::new(1000);
        assert!(matches!(
            small.decode(&mut BytesMut::from(&big[..])),
            Err(FrameError::TooLarge { len: 8014, max: 1000, msg_type: MsgType::Sync })
        ));
        // ...which passes when validation is off
        let mut lax = IpcCodec { validate: false, ..c };
        assert!(lax.decode(&mut BytesMut::from(&bad[..])).unwrap().is_some());
    }

    #[test]
    fn big_endian_input() {
        // `1 2i` as a big-endian async message
        let be = [0u8, 0, 0, 0, 0, 0, 0, 0x16, 6, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        let m = IpcCodec::new(1 << 20).decode(&mut BytesMut::from(&be[..])).unwrap().unwrap();
        assert!(!m.header.little_endian);
        assert_eq!(
            m.decode().unwrap(),
            K::Vector(qmesh_codec::Attr::None, qmesh_codec::Vector::Int(vec![1, 2]))
        );
    }

    #[test]
    fn encoder_appends_frames() {
        let mut c = IpcCodec::new(1 << 20);
        let f = frame(&K::long(1), MsgType::Async);
        let mut dst = BytesMut::new();
        c.encode(f.clone(), &mut dst).unwrap();
        c.encode(f.clone(), &mut dst).unwrap();
        assert_eq!(dst.len(), 2 * f.len());
    }
}
