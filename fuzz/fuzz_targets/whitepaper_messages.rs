#![no_main]
//! Any bytes as a message of the query-routing protocol (qmesh-whitepaper):
//! every reading of it must return, never panic; what parses as a typed
//! message must build back into a message that parses to the same thing.

use bytes::Bytes;
use qmesh_codec::{EncodeOptions, Message, MsgType};
use qmesh_whitepaper::{ToGateway, ToLb, call_of, service_reply, user_query};

/// Largest message accepted, in bytes (as the codec targets).
const FUZZ_MAX_LEN: u64 = 1 << 24;

fn again(k: &qmesh_codec::K) -> Message {
    let frame = Message::encode(MsgType::Async, k, EncodeOptions::default()).expect("encodes");
    Message::from_frame(frame, FUZZ_MAX_LEN).expect("whole")
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::from_frame(Bytes::copy_from_slice(data), FUZZ_MAX_LEN) else { return };
    let _ = service_reply(&msg);
    let Some(call) = call_of(&msg) else { return };
    let _ = user_query(&call.args);
    if let Some(Ok(m)) = ToLb::parse(&call) {
        let back = call_of(&again(&m.to_k())).expect("a call");
        assert_eq!(ToLb::parse(&back), Some(Ok(m)));
    }
    if let Ok(m) = ToGateway::parse(&call) {
        let back = call_of(&again(&m.to_k())).expect("a call");
        assert_eq!(ToGateway::parse(&back), Ok(m));
    }
});
