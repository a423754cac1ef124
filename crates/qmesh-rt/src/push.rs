//! The messages the node pushes to a subscriber, built as whole wire frames
//! around the stored payload bytes without decoding or re-encoding them.
//!
//! * a message: `` (`.rt.msg;`stream;msg;pos) `` — `msg` is the payload as
//!   its publisher serialized it, `pos` a long, the position to resubscribe
//!   from to receive the *next* message;
//! * an event: `` (`.rt.event;`stream;`event;(p1;p2)) ``.
//!
//! The callback names default to [`DEFAULT_MSG_CALLBACK`] and
//! [`DEFAULT_EVENT_CALLBACK`]; a subscriber may name others in `.rt.sub`'s
//! options.

use bytes::{BufMut, Bytes, BytesMut};
use qmesh_codec::{HEADER_LEN, Header, MsgType, types};

use crate::event::Event;

/// The function the node calls with each message.
pub const DEFAULT_MSG_CALLBACK: &str = ".rt.msg";

/// The function the node calls with each event.
pub const DEFAULT_EVENT_CALLBACK: &str = ".rt.event";

/// Bytes of a general list's header: type, attribute, 4-byte count.
const LIST_HEADER: usize = 6;

fn sym_len(s: &str) -> usize {
    2 + s.len()
}

fn put_sym(b: &mut BytesMut, s: &str) {
    b.put_i8(-types::SYMBOL);
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn start(total: usize, items: i32) -> BytesMut {
    let mut b = BytesMut::with_capacity(total);
    b.put_slice(&Header::new(MsgType::Async, total as u64).to_bytes());
    b.put_i8(types::LIST);
    b.put_u8(0);
    b.put_i32_le(items);
    b
}

/// Bytes of the frame [`msg_frame`] builds.
pub fn msg_frame_len(callback: &str, stream: &str, payload_len: usize) -> usize {
    HEADER_LEN + LIST_HEADER + sym_len(callback) + sym_len(stream) + payload_len + 9
}

/// `` (`callback;`stream;payload;pos) `` as one async wire frame;
/// `payload` is one little-endian kdb+ object, copied as it is.
pub fn msg_frame(callback: &str, stream: &str, payload: &[u8], pos: i64) -> Bytes {
    let total = msg_frame_len(callback, stream, payload.len());
    let mut b = start(total, 4);
    put_sym(&mut b, callback);
    put_sym(&mut b, stream);
    b.put_slice(payload);
    b.put_i8(-types::LONG);
    b.put_i64_le(pos);
    debug_assert_eq!(b.len(), total);
    b.freeze()
}

/// `` (`callback;`stream;`event;(p1;p2)) `` as one async wire frame.
pub fn event_frame(callback: &str, stream: &str, event: Event, p1: i64, p2: i64) -> Bytes {
    let total =
        HEADER_LEN + LIST_HEADER + sym_len(callback) + sym_len(stream) + sym_len(event.name()) + 6 + 16;
    let mut b = start(total, 4);
    put_sym(&mut b, callback);
    put_sym(&mut b, stream);
    put_sym(&mut b, event.name());
    b.put_i8(types::LONG);
    b.put_u8(0);
    b.put_i32_le(2);
    b.put_i64_le(p1);
    b.put_i64_le(p2);
    debug_assert_eq!(b.len(), total);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{Atom, Attr, K, Message, RawObject, Vector};

    #[test]
    fn msg_frame_decodes_as_the_four_item_list() {
        let payload = K::list(vec![K::sym("upd"), K::sym("trade"), K::long(7)]);
        let raw = RawObject::encode(&payload);
        let f = msg_frame(".rt.msg", "trades", raw.bytes(), 17_592_186_044_416);
        let m = Message::from_frame(f, u64::MAX).expect("frame");
        assert_eq!(m.msg_type(), MsgType::Async);
        assert_eq!(
            m.decode().expect("decode"),
            K::list(vec![K::sym(".rt.msg"), K::sym("trades"), payload, K::long(17_592_186_044_416)])
        );
    }

    #[test]
    fn event_frame_decodes_with_a_long_pair() {
        let f = event_frame("onEvent", "s", Event::SkipForward, 1, 2);
        let m = Message::from_frame(f, u64::MAX).expect("frame");
        assert_eq!(
            m.decode().expect("decode"),
            K::list(vec![
                K::sym("onEvent"),
                K::sym("s"),
                K::sym("skip-forward"),
                K::Vector(Attr::None, Vector::Long(vec![1, 2])),
            ])
        );
        let _ = Atom::Long(0);
    }
}
