//! The bodies of the fuzz targets, shared with the stable-toolchain corpus
//! replay test (crates/qmesh-codec/tests/fuzz_corpus.rs), which includes this
//! file with `#[path]`.

#![allow(dead_code)] // each target uses one of the two functions

use bytes::Bytes;
use qmesh_codec::{
    EncodeOptions, HEADER_LEN, Header, Message, MsgType, compress, decode_body, decompress, encode_body_into,
    object_extent,
};

/// Largest message the targets accept, in bytes: enough for every corpus
/// entry, small enough that a lying header cannot make a run slow.
pub const FUZZ_MAX_LEN: u64 = 1 << 24;

/// Any bytes, as a whole message and as a bare body in both byte orders.
/// Whatever decodes must re-encode to bytes that decode to the same
/// encoding again, and its extent must be the whole body.
pub fn decode_message(data: &[u8]) {
    if let Ok(m) = Message::from_frame(Bytes::copy_from_slice(data), FUZZ_MAX_LEN) {
        if let Ok(k) = m.decode() {
            let _ = Message::encode(MsgType::Response, &k, EncodeOptions { capability: 6, compress: true });
        }
        let _ = m.list_items();
    }
    for le in [true, false] {
        let extent = object_extent(data, le);
        if let Ok(k) = decode_body(data, le) {
            assert_eq!(extent, Ok(data.len()), "object_extent disagrees with decode_body");
            let mut once = Vec::new();
            encode_body_into(&k, &mut once);
            let again = decode_body(&once, true).expect("our own encoding decodes");
            let mut twice = Vec::new();
            encode_body_into(&again, &mut twice);
            assert_eq!(once, twice, "encode/decode is not stable");
            if le {
                // little-endian input with 4-byte counts re-encodes to itself
                // (booleans are 0/1, symbols NUL-free, and so on)
                let long_counts = data.len() > 1 && data[1] & 0x80 != 0;
                if !long_counts && once != data {
                    let again = decode_body(&once, true).expect("decodes");
                    assert_eq!(format!("{again:?}"), format!("{k:?}"), "re-encoding changed the value");
                }
            }
        }
    }
}

/// Any bytes as a compressed message; and as the body of a message to
/// compress, which must decompress to itself.
pub fn decompress_target(data: &[u8]) {
    if let Ok(out) = decompress(data, FUZZ_MAX_LEN) {
        assert!(out.len() >= HEADER_LEN);
        assert_eq!(out[2], 0);
    }
    let mut msg = Header::new(MsgType::Async, (HEADER_LEN + data.len()) as u64).to_bytes().to_vec();
    msg.extend_from_slice(data);
    if let Some(c) = compress(&msg) {
        assert!(c.len() <= msg.len() / 2);
        assert_eq!(decompress(&c, u64::MAX).expect("our own compression decompresses"), msg);
    }
}
