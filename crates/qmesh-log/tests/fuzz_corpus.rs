//! Replays the checked-in corpus of the `decode_log` fuzz target (fuzz/corpus/decode_log/) through the target's own
//! code on the stable toolchain, so CI exercises it without nightly or libFuzzer. `cargo test -p qmesh-log --test
//! fuzz_corpus -- --ignored` writes the corpus seeds again.

#[path = "../../../fuzz/log_targets.rs"]
mod log_targets;

use std::path::PathBuf;

use qmesh_log::format::{SegmentHeader, encode_record};
use qmesh_log::{RecordHeader, SegmentId};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode_log")
}

/// Seeds: whole records, a log image, torn and flipped variants.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let h = RecordHeader { on: b"pub", ts: 5, id: 9, to: 0, dedup: Some(b"trade") };
    let a = encode_record(&h, b"\x00\x00\x00\x00\x0b\x00\x03\x00\x00\x00upd\x00trade\x00");
    let b = encode_record(&RecordHeader { dedup: None, ..h }, &[7u8; 100]);
    let log = [&[0u8][..], &a, &b].concat(); // first byte even: the target prepends a segment header
    let mut out = vec![
        ("record".to_string(), a.clone()),
        ("log_two".to_string(), log.clone()),
        ("log_torn".to_string(), log[..log.len() - 7].to_vec()),
        ("segment_header".to_string(), SegmentHeader::encode(SegmentId::default()).to_vec()),
    ];
    let mut flipped = log.clone();
    flipped[20] ^= 0x40;
    out.push(("log_flipped".to_string(), flipped));
    let marked = [&log[..], &qmesh_log::format::BADTAIL_MARK, &b].concat();
    out.push(("log_badtail_mark".to_string(), marked));
    let mut zeros = log;
    zeros.extend_from_slice(&[0u8; 64]);
    out.push(("log_zeros".to_string(), zeros));
    out
}

#[test]
fn decode_log_corpus_replays() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).expect("fuzz/corpus/decode_log") {
        let data = std::fs::read(entry.expect("corpus entry").path()).expect("read corpus file");
        log_targets::decode_log(&data);
        n += 1;
    }
    assert!(n >= 6, "only {n} corpus files");
    for (_, data) in seeds() {
        log_targets::decode_log(&data);
    }
}

#[test]
#[ignore = "writes the corpus seeds"]
fn write_seeds() {
    std::fs::create_dir_all(corpus_dir()).expect("mkdir");
    for (name, data) in seeds() {
        std::fs::write(corpus_dir().join(name), data).expect("write seed");
    }
}
