//! Replays the checked-in fuzz corpus (fuzz/corpus/<target>/) through the
//! fuzz targets' own code on the stable toolchain, so CI exercises it
//! without nightly or libFuzzer. `cargo test -p qmesh-codec --test
//! fuzz_corpus -- --ignored` rewrites the corpus seeds from the golden
//! fixtures.

mod common;

#[path = "../../../fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

use qmesh_codec::{Attr, EncodeOptions, K, MsgType, Vector, encode_message};

fn corpus_dir(target: &str) -> PathBuf {
    common::manifest_dir().join("../../fuzz/corpus").join(target)
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        run(&data);
        n += 1;
    }
    n
}

#[test]
fn decode_message_corpus_replays() {
    let n = replay("decode_message", targets::decode_message);
    assert!(n >= 10, "only {n} corpus files");
}

#[test]
fn decompress_corpus_replays() {
    let n = replay("decompress", targets::decompress_target);
    assert!(n >= 5, "only {n} corpus files");
}

/// The golden cases seeded into the decode_message corpus.
const DECODE_SEEDS: &[&str] = &[
    "bool_vec",
    "guid",
    "short_vec",
    "int_vec",
    "long_vec",
    "long_vec_empty",
    "real_vec",
    "float_vec",
    "char_vec",
    "symbol",
    "symbol_vec_nulls",
    "timestamp_vec",
    "datetime_vec",
    "attr_sorted_long_vec",
    "list_mixed",
    "list_nested",
    "generic_null",
    "dict",
    "sorted_dict",
    "table",
    "keyed_table_sorted",
    "upd_message",
    "error",
    "lambda_ctx",
    "composition",
    "projection",
    "be_list_mixed",
    "be_dict_ints",
    "longcount_long_vec",
    "compressed_bool_2000",
];

#[test]
#[ignore = "rewrites fuzz/corpus from the golden fixtures"]
fn regenerate_corpus() {
    let golden = common::golden();
    let dir = corpus_dir("decode_message");
    std::fs::create_dir_all(&dir).unwrap();
    for name in DECODE_SEEDS {
        std::fs::write(dir.join(name), &golden[*name]).unwrap();
    }
    let dir = corpus_dir("decompress");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compressed_bool_2000"), &golden["compressed_bool_2000"]).unwrap();
    let zip = EncodeOptions { capability: 6, compress: true };
    let compressed = [
        ("til_1000", K::Vector(Attr::None, Vector::Long((0..1000).collect()))),
        (
            "strings",
            K::list((0..200).map(|i| K::string(format!("trade AAPL 100.25 buy {}", i % 10))).collect()),
        ),
        ("symbols", K::syms((0..600).map(|i| ["AAPL", "MSFT", "IBM"][i % 3]))),
        ("floats", K::Vector(Attr::None, Vector::Float((0..400).map(|i| (i % 7) as f64).collect()))),
    ];
    for (name, k) in compressed {
        let bytes = encode_message(MsgType::Async, &k, zip).unwrap();
        assert_eq!(bytes[2], 1, "{name} did not compress");
        std::fs::write(dir.join(format!("compressed_{name}")), bytes).unwrap();
    }
    // bodies for the compress → decompress half of the target
    std::fs::write(dir.join("body_repeats"), b"abcabcabc".repeat(300)).unwrap();
    std::fs::write(dir.join("body_short"), b"xy").unwrap();
}
