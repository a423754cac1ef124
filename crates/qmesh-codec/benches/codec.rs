//! Criterion benchmarks: encode and decode of a 1,000,000-row trade table,
//! a 10,000,000-long vector and 100,000 small `upd` messages.
//!
//!     cargo bench -p qmesh-codec --bench codec

#[path = "support/objects.rs"]
mod objects;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qmesh_codec::{EncodeOptions, K, Message, MsgType, encode_message};

fn one(c: &mut Criterion, name: &str, k: &K) {
    let opts = EncodeOptions::default();
    let wire = Bytes::from(encode_message(MsgType::Async, k, opts).expect("encodes"));
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| encode_message(MsgType::Async, black_box(k), opts).expect("encodes"))
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            Message::from_frame(black_box(wire.clone()), u64::MAX).expect("frame").decode().expect("decodes")
        })
    });
    g.bench_function("memcpy", |b| b.iter(|| black_box(&wire[..]).to_vec()));
    g.finish();
}

fn codec(c: &mut Criterion) {
    one(c, "table_1m", &objects::trade_table());
    one(c, "long_10m", &objects::long_vector());

    let msgs = objects::upd_messages();
    let opts = EncodeOptions::default();
    let wires: Vec<Bytes> =
        msgs.iter().map(|k| Bytes::from(encode_message(MsgType::Async, k, opts).expect("encodes"))).collect();
    let mut g = c.benchmark_group("upd_100k");
    g.sample_size(10);
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| {
            msgs.iter()
                .map(|k| encode_message(MsgType::Async, k, opts).expect("encodes").len())
                .sum::<usize>()
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            wires.iter().for_each(|w| {
                black_box(
                    Message::from_frame(w.clone(), u64::MAX).expect("frame").decode().expect("decodes"),
                );
            })
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
