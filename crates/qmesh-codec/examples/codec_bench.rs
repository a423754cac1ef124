//! Times qmesh-codec on the three benchmark cases and prints one JSON line
//! per case, each time the best of several runs (ns):
//!
//! - `encode_fresh_ns`: [`encode_message`], a new `Vec` per message (for the
//!   10M long vector glibc maps 80 MB afresh each time, so this is mostly
//!   page faults);
//! - `encode_reused_ns`: [`encode_message_into`] into one buffer cleared
//!   between messages and already grown by an untimed first call (what a
//!   connection's writer does in the steady state);
//! - `decode_ns`: `Message::from_frame` + `decode`; always into fresh
//!   allocations, because decoding builds a new value (the frame itself is
//!   shared, not copied);
//! - `memcpy_fresh_ns` / `memcpy_reused_ns`: the same bytes copied into a new
//!   `Vec` / into one reused, already grown `Vec` (for `upd_100k` one copy
//!   per message, like the encoder), so `encode_fresh / memcpy_fresh` and
//!   `encode_reused / memcpy_reused` compare like with like;
//! - `bytes`: total message bytes.
//!
//! Results are dropped after the clock stops (freeing 80 MB of mapped
//! memory costs several ms and is not part of encoding). Run by
//! bench/codec.py:
//!
//!     cargo run --release --example codec_bench -p qmesh-codec [-- RUNS]
#![allow(clippy::print_stdout)]

#[path = "../benches/support/objects.rs"]
mod objects;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use qmesh_codec::encode::encode_message_into;
use qmesh_codec::{EncodeOptions, K, Message, MsgType, encode_message};

/// The best of `runs` timings of `f`; its result is dropped untimed.
fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let r = black_box(f());
            let e = t.elapsed();
            drop(r);
            e
        })
        .min()
        .expect("at least one run")
}

struct Times {
    encode_fresh: Duration,
    encode_reused: Duration,
    decode: Duration,
    memcpy_fresh: Duration,
    memcpy_reused: Duration,
    bytes: usize,
}

fn report(case: &str, t: &Times) {
    println!(
        "{{\"case\":\"{case}\",\"encode_fresh_ns\":{},\"encode_reused_ns\":{},\"decode_ns\":{},\
         \"memcpy_fresh_ns\":{},\"memcpy_reused_ns\":{},\"bytes\":{}}}",
        t.encode_fresh.as_nanos(),
        t.encode_reused.as_nanos(),
        t.decode.as_nanos(),
        t.memcpy_fresh.as_nanos(),
        t.memcpy_reused.as_nanos(),
        t.bytes
    );
}

/// Times the cases on a list of messages: each is encoded, decoded and
/// copied one by one (a single message is a list of one).
fn measure(case: &str, runs: usize, msgs: &[K]) -> Times {
    let opts = EncodeOptions::default();
    let wires: Vec<Bytes> =
        msgs.iter().map(|k| Bytes::from(encode_message(MsgType::Async, k, opts).expect("encodes"))).collect();
    for (k, w) in msgs.iter().zip(&wires) {
        let back = Message::from_frame(w.clone(), u64::MAX).expect("frame").decode().expect("decodes");
        assert!(back == *k, "{case}: round trip changed the value");
    }
    let largest = wires.iter().map(Bytes::len).max().unwrap_or(0);

    let encode_fresh = best_of(runs, || {
        msgs.iter().map(|k| encode_message(MsgType::Async, k, opts).expect("encodes")).collect::<Vec<_>>()
    });
    let mut buf = Vec::with_capacity(largest);
    let encode_reused_once = |buf: &mut Vec<u8>| {
        msgs.iter()
            .map(|k| {
                buf.clear();
                encode_message_into(MsgType::Async, k, opts, buf).expect("encodes")
            })
            .sum::<usize>()
    };
    encode_reused_once(&mut buf); // grow and fault in the buffer, untimed
    let encode_reused = best_of(runs, || encode_reused_once(&mut buf));
    let decode = best_of(runs, || {
        wires
            .iter()
            .map(|w| Message::from_frame(w.clone(), u64::MAX).expect("frame").decode().expect("decodes"))
            .collect::<Vec<_>>()
    });
    let memcpy_fresh = best_of(runs, || wires.iter().map(|w| w.to_vec()).collect::<Vec<_>>());
    let mut dst: Vec<u8> = Vec::with_capacity(largest);
    let copy_reused_once = |dst: &mut Vec<u8>| {
        wires
            .iter()
            .map(|w| {
                dst.clear();
                dst.extend_from_slice(w);
                black_box(dst.len())
            })
            .sum::<usize>()
    };
    copy_reused_once(&mut dst); // fault in the destination, untimed
    let memcpy_reused = best_of(runs, || copy_reused_once(&mut dst));
    Times {
        encode_fresh,
        encode_reused,
        decode,
        memcpy_fresh,
        memcpy_reused,
        bytes: wires.iter().map(Bytes::len).sum(),
    }
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    report("table_1m", &measure("table_1m", runs, &[objects::trade_table()]));
    report("long_10m", &measure("long_10m", runs, &[objects::long_vector()]));
    report("upd_100k", &measure("upd_100k", runs, &objects::upd_messages()));
}
