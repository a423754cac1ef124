//! Times qmesh-codec on the three benchmark cases and prints one JSON line
//! per case: `{"case", "encode_ns", "decode_ns", "memcpy_ns", "bytes"}`,
//! each time the best of several runs. `memcpy_ns` copies the same number
//! of bytes into a fresh allocation (what an encoder at memcpy speed would
//! cost, allocation included). Run by bench/codec.py:
//!
//!     cargo run --release --example codec_bench -p qmesh-codec [-- RUNS]
#![allow(clippy::print_stdout)]

#[path = "../benches/support/objects.rs"]
mod objects;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use qmesh_codec::{EncodeOptions, K, Message, MsgType, encode_message};

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .min()
        .expect("at least one run")
}

fn memcpy(runs: usize, bytes: &[u8]) -> Duration {
    best_of(runs, || bytes.to_vec())
}

fn report(case: &str, encode: Duration, decode: Duration, memcpy: Duration, bytes: usize) {
    println!(
        "{{\"case\":\"{case}\",\"encode_ns\":{},\"decode_ns\":{},\"memcpy_ns\":{},\"bytes\":{bytes}}}",
        encode.as_nanos(),
        decode.as_nanos(),
        memcpy.as_nanos()
    );
}

fn single(case: &str, runs: usize, k: &K) {
    let opts = EncodeOptions::default();
    let enc = best_of(runs, || encode_message(MsgType::Async, k, opts).expect("encodes"));
    let wire = Bytes::from(encode_message(MsgType::Async, k, opts).expect("encodes"));
    let dec = best_of(runs, || {
        Message::from_frame(wire.clone(), u64::MAX).expect("frame").decode().expect("decodes")
    });
    let back = Message::from_frame(wire.clone(), u64::MAX).expect("frame").decode().expect("decodes");
    assert!(back == *k, "{case}: round trip changed the value");
    report(case, enc, dec, memcpy(runs, &wire), wire.len());
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    single("table_1m", runs, &objects::trade_table());
    single("long_10m", runs, &objects::long_vector());

    let msgs = objects::upd_messages();
    let opts = EncodeOptions::default();
    let enc = best_of(runs, || {
        msgs.iter().map(|k| encode_message(MsgType::Async, k, opts).expect("encodes").len()).sum::<usize>()
    });
    let wires: Vec<Bytes> =
        msgs.iter().map(|k| Bytes::from(encode_message(MsgType::Async, k, opts).expect("encodes"))).collect();
    let dec = best_of(runs, || {
        wires.iter().for_each(|w| {
            black_box(Message::from_frame(w.clone(), u64::MAX).expect("frame").decode().expect("decodes"));
        })
    });
    let total: usize = wires.iter().map(Bytes::len).sum();
    let all: Vec<u8> = wires.iter().flat_map(|w| w.iter().copied()).collect();
    report("upd_100k", enc, dec, memcpy(runs, &all), total);
}
