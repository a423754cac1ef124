//! KX's own deserializer (PyKX `kx.deserialize`, unlicensed) reads what our
//! encoder writes, and KX's serializer writes what it read back as exactly
//! our bytes: scripts/check_decode.py, run through the PyKX venv
//! (found by the test kit: `QMESH_PYTHON` or the default venvs; with
//! `QMESH_REQUIRE_PYTHON` set, as in CI, a missing one fails the test).

mod common;

use std::collections::BTreeMap;

use common::{arb, golden, hex};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use qmesh_codec::{Atom, Attr, EncodeOptions, K, Message, MsgType, Table, Vector, encode_message};

fn trade(rows: usize) -> K {
    let names = ["AAPL", "MSFT", "IBM", "GOOG", "AMZN"];
    K::Table(Table {
        attr: Attr::None,
        names: ["time", "sym", "price", "size"].into_iter().collect(),
        columns: vec![
            K::Vector(Attr::Sorted, Vector::Timestamp((0..rows as i64).map(|i| i * 1_000_000).collect())),
            K::syms((0..rows).map(|i| names[i % names.len()])),
            K::Vector(Attr::None, Vector::Float((0..rows).map(|i| 100.0 + (i % 17) as f64 * 0.25).collect())),
            K::Vector(Attr::None, Vector::Long((0..rows as i64).map(|i| (i % 10) * 100).collect())),
        ],
    })
}

#[test]
fn kx_reads_what_we_write() {
    let Some(python) = common::python() else { return };
    let mut cases: BTreeMap<String, (K, EncodeOptions)> = BTreeMap::new();
    let plain = EncodeOptions { capability: 6, compress: false };
    let zip = EncodeOptions { capability: 6, compress: true };

    // every golden value, decoded by us and re-encoded (compressed too)
    for (name, bytes) in golden() {
        let k = Message::from_frame(bytes.into(), u64::MAX).unwrap().decode().unwrap();
        let readable = !matches!(k, K::Error(_)) && !name.starts_with("lambda") && name != "projection";
        if readable {
            cases.insert(format!("golden_{name}"), (k.clone(), plain));
            cases.insert(format!("golden_{name}_zip"), (k, zip));
        }
    }
    // values built here, compressed where it halves
    cases.insert("til_1000_zip".into(), (K::Vector(Attr::None, Vector::Long((0..1000).collect())), zip));
    cases.insert("bools_2000_zip".into(), (K::Vector(Attr::None, Vector::Boolean(vec![true; 2000])), zip));
    cases.insert("trade_5000_zip".into(), (trade(5000), zip));
    cases.insert("trade_5000".into(), (trade(5000), plain));
    cases.insert("upd_zip".into(), (K::list(vec![K::sym("upd"), K::sym("trade"), trade(300)]), zip));
    cases.insert(
        "strings_zip".into(),
        (K::list((0..400).map(|i| K::string(format!("row {i} of many"))).collect()), zip),
    );
    cases.insert("guid_atom".into(), (K::Atom(Atom::Guid(*b"0123456789abcdef")), plain));
    cases.insert("non_utf8_symbols".into(), (K::syms([&b"\xff\xfe"[..], b"caf\xc3\xa9", b""]), plain));

    // random values (no errors or lambdas: KX cannot hand those back unlicensed)
    let mut runner = TestRunner::deterministic();
    let strategy = arb::k(true);
    for i in 0..300 {
        let k = strategy.new_tree(&mut runner).unwrap().current();
        cases.insert(format!("random_{i:03}"), (k, if i % 3 == 0 { zip } else { plain }));
    }

    let mut json = serde_json::Map::new();
    for (name, (k, opts)) in &cases {
        let ours = encode_message(MsgType::Async, k, *opts).unwrap();
        let expect = encode_message(MsgType::Async, k, plain).unwrap();
        json.insert(name.clone(), serde_json::json!({ "hex": hex(&ours), "expect": hex(&expect) }));
    }
    let dir = std::env::temp_dir().join(format!("qmesh-codec-kx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ours.json");
    std::fs::write(&path, serde_json::Value::Object(json).to_string()).unwrap();

    let script = common::manifest_dir().join("../../scripts/check_decode.py");
    let out = qmesh_testkit::python_command(&python)
        .arg(&script)
        .arg(&path)
        .env("PYKX_UNLICENSED", "true")
        .env("PYKX_SUPPRESS_WARNINGS", "true")
        .output()
        .expect("run check_decode.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "check_decode.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim_end());
    assert!(stdout.contains(&format!("{} passed, 0 failed", cases.len())), "{stdout}");
}
